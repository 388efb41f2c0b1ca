//! Subscription plan input: creation (all fields) and partial update, validated here so SQL and
//! REST callers meet the same rules (SPEC 2: multiplier > 0, purchase_rate >= 1).

use crate::error::{QuotaError, Result};
use crate::ids::{validate_free_text, validate_tier};
use crate::pricing::{validate_credits, validate_multiplier, validate_purchase_rate};
use serde::Deserialize;

pub const NAME_LEN_MAX: usize = 255;
pub const MONEY_MAX: f64 = 1_000_000_000.0;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanInput {
    pub tier: String,
    pub name: String,
    #[serde(default)]
    pub monthly_cost: f64,
    #[serde(default)]
    pub fixed_cost: f64,
    #[serde(default)]
    pub credits_included: i64,
    #[serde(default)]
    pub bonus_credits: i64,
    #[serde(default = "one")]
    pub multiplier: f64,
    #[serde(default = "one")]
    pub purchase_rate: f64,
    #[serde(default = "yes")]
    pub active: bool,
}

fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}

/// A partial update: absent fields stay as they are. The tier is the key and cannot change.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanPatch {
    pub name: Option<String>,
    pub monthly_cost: Option<f64>,
    pub fixed_cost: Option<f64>,
    pub credits_included: Option<i64>,
    pub bonus_credits: Option<i64>,
    pub multiplier: Option<f64>,
    pub purchase_rate: Option<f64>,
    pub active: Option<bool>,
    /// Accepted only when equal to the plan's own tier (clients often echo the whole object).
    pub tier: Option<String>,
}

fn validate_money(field: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && (0.0..=MONEY_MAX).contains(&v)) {
        return Err(QuotaError::invalid(format!(
            "{field} must be between 0 and {MONEY_MAX}, got {v}"
        ))
        .with("field", field));
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<()> {
    let n = name.trim().chars().count();
    if n == 0 || n > NAME_LEN_MAX {
        return Err(QuotaError::invalid(format!(
            "name must be 1 to {NAME_LEN_MAX} characters, got {n}"
        ))
        .with("field", "name"));
    }
    validate_free_text("name", name)
}

/// Parses JSON into `T`, turning serde's complaint (unknown field, wrong type) into 22023.
pub fn from_json<T: serde::de::DeserializeOwned>(
    what: &str,
    value: serde_json::Value,
) -> Result<T> {
    // `field` names the body as a whole: its fields are what is invalid.
    if !value.is_object() {
        return Err(
            QuotaError::invalid(format!("{what} must be a JSON object")).with("field", what)
        );
    }
    serde_json::from_value(value)
        .map_err(|e| QuotaError::invalid(format!("invalid {what}: {e}")).with("field", what))
}

impl PlanInput {
    pub fn parse(value: serde_json::Value) -> Result<Self> {
        let p: PlanInput = from_json("plan", value)?;
        p.validate()?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<()> {
        validate_tier(&self.tier)?;
        validate_name(&self.name)?;
        validate_money("monthly_cost", self.monthly_cost)?;
        validate_money("fixed_cost", self.fixed_cost)?;
        validate_credits("credits_included", self.credits_included, true)?;
        validate_credits("bonus_credits", self.bonus_credits, true)?;
        validate_multiplier(self.multiplier)?;
        validate_purchase_rate(self.purchase_rate)
    }
}

impl PlanPatch {
    pub fn parse(tier: &str, value: serde_json::Value) -> Result<Self> {
        let p: PlanPatch = from_json("plan update", value)?;
        if let Some(t) = &p.tier {
            if t != tier {
                return Err(QuotaError::invalid(format!(
                    "tier cannot be changed (plan '{tier}', body says '{t}')"
                ))
                .with("field", "tier"));
            }
        }
        if let Some(n) = &p.name {
            validate_name(n)?;
        }
        if let Some(v) = p.monthly_cost {
            validate_money("monthly_cost", v)?;
        }
        if let Some(v) = p.fixed_cost {
            validate_money("fixed_cost", v)?;
        }
        if let Some(v) = p.credits_included {
            validate_credits("credits_included", v, true)?;
        }
        if let Some(v) = p.bonus_credits {
            validate_credits("bonus_credits", v, true)?;
        }
        if let Some(v) = p.multiplier {
            validate_multiplier(v)?;
        }
        if let Some(v) = p.purchase_rate {
            validate_purchase_rate(v)?;
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_plan_parses_with_defaults() {
        let p = PlanInput::parse(json!({"tier":"basic","name":"Basic","credits_included":100}))
            .unwrap();
        assert_eq!(p.multiplier, 1.0);
        assert_eq!(p.purchase_rate, 1.0);
        assert!(p.active);
    }

    #[test]
    fn multiplier_must_be_positive_and_purchase_rate_at_least_one() {
        let e = PlanInput::parse(json!({"tier":"b","name":"B","multiplier":0})).unwrap_err();
        assert!(e.message.contains("multiplier"), "{}", e.message);
        let e = PlanInput::parse(json!({"tier":"b","name":"B","purchase_rate":0.5})).unwrap_err();
        assert!(e.message.contains("purchase_rate"), "{}", e.message);
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_rejected() {
        assert!(PlanInput::parse(json!({"tier":"b","name":"B","colour":"red"})).is_err());
        assert!(PlanInput::parse(json!({"tier":"b","name":"B","multiplier":"2"})).is_err());
        assert!(PlanInput::parse(json!([1, 2])).is_err());
        assert!(PlanPatch::parse("b", json!({"monthly_cost": -1})).is_err());
        assert!(PlanPatch::parse("b", json!({"tier": "c"})).is_err());
        assert_eq!(
            PlanPatch::parse("b", json!({"tier": "b"}))
                .unwrap()
                .tier
                .as_deref(),
            Some("b")
        );
    }
}
