//! Identifiers: operation ids, user ids, tiers. All bounded (TigerBeetle style: a limit on
//! everything) and free of control characters so they are safe in logs and messages.

use crate::error::{QuotaError, Result};

pub const OPERATION_ID_LEN_MAX: usize = 255;
pub const USER_ID_LEN_MAX: usize = 255;
pub const TIER_LEN_MAX: usize = 64;
pub const TEXT_LEN_MAX: usize = 1024;

fn validate_text(field: &str, value: &str, max_chars: usize) -> Result<()> {
    let n = value.chars().count();
    if n == 0 {
        return Err(QuotaError::invalid(format!("{field} must not be empty")).with("field", field));
    }
    if n > max_chars {
        return Err(QuotaError::invalid(format!(
            "{field} must be at most {max_chars} characters, got {n}"
        ))
        .with("field", field));
    }
    if value.chars().any(char::is_control) {
        return Err(QuotaError::invalid(format!("{field} must not contain control characters"))
            .with("field", field));
    }
    Ok(())
}

pub fn validate_operation_id(operation_id: &str) -> Result<()> {
    validate_text("operation_id", operation_id, OPERATION_ID_LEN_MAX)
}

pub fn validate_user_id(user_id: &str) -> Result<()> {
    validate_text("user_id", user_id, USER_ID_LEN_MAX)
}

pub fn validate_tier(tier: &str) -> Result<()> {
    validate_text("tier", tier, TIER_LEN_MAX)
}

/// Free text (descriptions, labels, payment method ids): bounded, may be empty.
pub fn validate_free_text(field: &str, value: &str) -> Result<()> {
    let n = value.chars().count();
    if n > TEXT_LEN_MAX {
        return Err(QuotaError::invalid(format!(
            "{field} must be at most {TEXT_LEN_MAX} characters, got {n}"
        ))
        .with("field", field));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_id_of_255_chars_is_accepted_and_256_rejected() {
        assert!(validate_operation_id(&"x".repeat(255)).is_ok());
        let e = validate_operation_id(&"x".repeat(256)).unwrap_err();
        assert!(e.message.contains("at most 255"), "{}", e.message);
        // Characters, not bytes.
        assert!(validate_operation_id(&"é".repeat(255)).is_ok());
    }

    #[test]
    fn empty_and_control_characters_are_rejected() {
        assert!(validate_user_id("").is_err());
        assert!(validate_user_id("a\nb").is_err());
        assert!(validate_tier(&"t".repeat(65)).is_err());
    }
}
