//! Credit arithmetic of seed 004, exactly: `round_half_even(usd * rate * base_rate)` computed in
//! IEEE double in that order (SPEC 2). The float product is the contract, not an accident: the
//! worked cases (0.0123 at 1.5 gives 184) only hold for this evaluation order.

use crate::error::{ErrorKind, QuotaError, Result};

/// The largest number of credits one operation may move. Far below i64::MAX so that balances and
/// totals cannot overflow after many operations.
pub const CREDITS_PER_OPERATION_MAX: i64 = 1_000_000_000_000_000; // 1e15
/// The largest USD amount one operation (a charge, an add, a payment) accepts.
pub const USD_PER_OPERATION_MAX: f64 = 1_000_000.0; // $1M
/// Bounds of the exchange rate (credits per USD).
pub const BASE_RATE_MIN: i64 = 1;
pub const BASE_RATE_MAX: i64 = 1_000_000_000;
/// Bounds of a plan's charge multiplier: a multiplier of 1e-320 would make every charge free.
pub const MULTIPLIER_MIN: f64 = 0.001;
pub const MULTIPLIER_MAX: f64 = 1000.0;
/// Bounds of a plan's purchase rate (credits per USD bought, relative to base_rate).
pub const PURCHASE_RATE_MIN: f64 = 1.0;
pub const PURCHASE_RATE_MAX: f64 = 1000.0;
/// The largest balance a wallet may hold, and the largest lifetime totals (earned, spent). Far
/// below i64::MAX (9.2e18), so no sum in SQL overflows and a full wallet is refused by name
/// instead of failing with "bigint out of range".
pub const BALANCE_MAX: i64 = 1_000_000_000_000_000_000; // 1e18
pub const TOTAL_MAX: i64 = 9_000_000_000_000_000_000; // 9e18

/// A number for a message: plain decimals, but exponent notation for the very small or large
/// (a multiplier of 1e-320 is "1e-320", not 320 zeros).
pub fn show(v: f64) -> String {
    if v != 0.0 && v.is_finite() && (v.abs() < 1e-6 || v.abs() >= 1e16) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// Validates a USD amount: finite, > 0, at most `USD_PER_OPERATION_MAX`.
pub fn validate_usd(field: &str, usd: f64) -> Result<()> {
    if !usd.is_finite() {
        return Err(QuotaError::invalid(format!(
            "{field} must be a finite number, got {}",
            show(usd)
        ))
        .with("field", field));
    }
    if usd <= 0.0 {
        return Err(QuotaError::invalid(format!(
            "{field} must be greater than 0, got {}",
            show(usd)
        ))
        .with("field", field));
    }
    if usd > USD_PER_OPERATION_MAX {
        return Err(QuotaError::invalid(format!(
            "{field} must be at most {USD_PER_OPERATION_MAX}, got {}",
            show(usd)
        ))
        .with("field", field));
    }
    Ok(())
}

/// Validates a credit amount given directly (bonus, refund, subscription credits).
pub fn validate_credits(field: &str, credits: i64, allow_zero: bool) -> Result<()> {
    let low = if allow_zero { 0 } else { 1 };
    if credits < low || credits > CREDITS_PER_OPERATION_MAX {
        return Err(QuotaError::invalid(format!(
            "{field} must be between {low} and {CREDITS_PER_OPERATION_MAX}, got {credits}"
        ))
        .with("field", field));
    }
    Ok(())
}

pub fn validate_multiplier(multiplier: f64) -> Result<()> {
    if !(multiplier.is_finite() && (MULTIPLIER_MIN..=MULTIPLIER_MAX).contains(&multiplier)) {
        return Err(QuotaError::invalid(format!(
            "multiplier must be between {MULTIPLIER_MIN} and {MULTIPLIER_MAX}, got {}",
            show(multiplier)
        ))
        .with("field", "multiplier"));
    }
    Ok(())
}

pub fn validate_purchase_rate(purchase_rate: f64) -> Result<()> {
    if !(purchase_rate.is_finite()
        && (PURCHASE_RATE_MIN..=PURCHASE_RATE_MAX).contains(&purchase_rate))
    {
        return Err(QuotaError::invalid(format!(
            "purchase_rate must be between {PURCHASE_RATE_MIN} and {PURCHASE_RATE_MAX}, got {}",
            show(purchase_rate)
        ))
        .with("field", "purchase_rate"));
    }
    Ok(())
}

/// Whether a wallet can take `credits` more: the balance stays within [`BALANCE_MAX`] and the
/// lifetime total earned within [`TOTAL_MAX`]. Refused by name (SQLSTATE 22003), not by an
/// overflow.
pub fn check_room(
    user_id: &str,
    balance: i64,
    total_earned: i64,
    credits: i64,
    earned: i64,
) -> Result<()> {
    let fits = balance
        .checked_add(credits)
        .is_some_and(|b| b <= BALANCE_MAX)
        && total_earned
            .checked_add(earned)
            .is_some_and(|t| t <= TOTAL_MAX);
    if fits {
        return Ok(());
    }
    Err(QuotaError::new(
        ErrorKind::BalanceLimit,
        format!(
            "user '{user_id}' has {balance} credits ({total_earned} earned in all); {credits} more would pass the \
             limit of {BALANCE_MAX} (balance) or {TOTAL_MAX} (total earned)"
        ),
    )
    .with("user_id", user_id)
    .with("current_balance", balance)
    .with("credits", credits)
    .with("balance_max", BALANCE_MAX))
}

pub fn validate_base_rate(base_rate: i64) -> Result<()> {
    if !(BASE_RATE_MIN..=BASE_RATE_MAX).contains(&base_rate) {
        return Err(QuotaError::invalid(format!(
            "base_rate must be between {BASE_RATE_MIN} and {BASE_RATE_MAX}, got {base_rate}"
        ))
        .with("field", "base_rate"));
    }
    Ok(())
}

/// `round_half_even(usd * rate * base_rate)`, rejecting results beyond one operation's maximum.
fn credits_of(field: &str, usd: f64, rate: f64, base_rate: i64) -> Result<i64> {
    validate_usd(field, usd)?;
    let credits = (usd * rate * base_rate as f64).round_ties_even();
    if !credits.is_finite() || credits > CREDITS_PER_OPERATION_MAX as f64 {
        return Err(QuotaError::invalid(format!(
            "{field} {usd} is worth more than {CREDITS_PER_OPERATION_MAX} credits"
        ))
        .with("field", field));
    }
    Ok(credits as i64)
}

/// Credits charged for a cost: `round_half_even(cost_usd * multiplier * base_rate)`.
pub fn charge_credits(cost_usd: f64, multiplier: f64, base_rate: i64) -> Result<i64> {
    credits_of("cost_usd", cost_usd, multiplier, base_rate)
}

/// Credits bought with money: `round_half_even(amount_usd * purchase_rate * base_rate)`.
pub fn purchase_credits(amount_usd: f64, purchase_rate: f64, base_rate: i64) -> Result<i64> {
    credits_of("amount_usd", amount_usd, purchase_rate, base_rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The worked cases of SPEC 2, one line each.
    #[test]
    fn spec_worked_cases() {
        let cases: &[(f64, f64, i64)] = &[
            (0.0123, 1.5, 184),
            (0.00025, 1.0, 2),
            (0.00035, 1.0, 4),
            (0.00045, 1.0, 4),
            (0.00015, 1.0, 1),
        ];
        for &(cost, m, want) in cases {
            assert_eq!(
                charge_credits(cost, m, 10_000).unwrap(),
                want,
                "cost {cost} x {m}"
            );
        }
        assert_eq!(purchase_credits(10.0, 1.2, 10_000).unwrap(), 120_000);
    }

    #[test]
    fn half_even_rounds_ties_to_even() {
        assert_eq!(charge_credits(0.00005, 1.0, 10_000).unwrap(), 0); // 0.5 -> 0
        assert_eq!(charge_credits(0.00015, 1.0, 10_000).unwrap(), 1); // 1.4999.. -> 1
        assert_eq!(charge_credits(0.00025, 1.0, 10_000).unwrap(), 2); // 2.5 -> 2
    }

    #[test]
    fn rejects_non_finite_zero_negative_and_huge() {
        for bad in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -1.0,
            1e300,
            2e9,
        ] {
            let e = charge_credits(bad, 1.0, 10_000).unwrap_err();
            assert_eq!(e.kind.sqlstate(), "22023", "{bad}");
        }
    }

    #[test]
    fn rejects_results_beyond_one_operation() {
        // $1e6 at rate 1000 and base 1e9 is 1e18 credits.
        assert!(charge_credits(1e6, 1000.0, 1_000_000_000).is_err());
        assert_eq!(
            charge_credits(1e6, 1.0, 1_000_000_000).unwrap(),
            1_000_000_000_000_000
        );
        // More than $1M in one operation is refused whatever it would be worth.
        assert!(charge_credits(1e6 + 0.01, 1.0, 1).is_err());
    }

    #[test]
    fn room_is_bounded_by_balance_and_total_earned() {
        assert!(check_room("u", 0, 0, 100, 100).is_ok());
        assert!(check_room("u", BALANCE_MAX - 100, 0, 100, 100).is_ok());
        let e = check_room("u", BALANCE_MAX - 99, 0, 100, 100).unwrap_err();
        assert_eq!(e.kind.sqlstate(), "22003");
        assert!(e.message.contains("user 'u'"), "{}", e.message);
        assert!(check_room("u", 0, TOTAL_MAX, 1, 1).is_err());
        assert!(check_room("u", i64::MAX, i64::MAX, i64::MAX, i64::MAX).is_err());
        // A refund moves the balance but not total_earned.
        assert!(check_room("u", 0, TOTAL_MAX, 5, 0).is_ok());
    }

    #[test]
    fn plan_rates_are_validated() {
        assert!(validate_multiplier(0.0).is_err());
        assert!(validate_multiplier(1e-320).is_err());
        assert!(validate_multiplier(f64::NAN).is_err());
        assert!(validate_multiplier(0.01).is_ok());
        assert!(validate_multiplier(1000.0).is_ok());
        assert!(validate_multiplier(1000.5).is_err());
        assert!(validate_purchase_rate(1001.0).is_err());
        assert!(validate_purchase_rate(0.99).is_err());
        assert!(validate_purchase_rate(1.0).is_ok());
        assert!(validate_base_rate(0).is_err());
        assert!(validate_base_rate(10_000).is_ok());
    }
}
