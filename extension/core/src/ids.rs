//! Identifiers: operation ids, payment ids, user ids, tiers. All bounded (TigerBeetle style: a
//! limit on everything) and made only of visible characters, so an id that looks equal on screen
//! is equal in the database, and ids are safe in logs and messages.
//!
//! An id must be 1 to its maximum of characters (not bytes), must not start or end with
//! whitespace, and must not hold control characters, other whitespace than the ASCII space, or
//! invisible characters (Unicode's Default_Ignorable_Code_Point set: zero-width spaces and
//! joiners, bidirectional controls, the BOM, variation selectors, tags, ...). Two ids that differ
//! only by such characters would otherwise be two idempotency keys that look like one.

use crate::error::{QuotaError, Result};

pub const OPERATION_ID_LEN_MAX: usize = 255;
pub const PAYMENT_ID_LEN_MAX: usize = 255;
pub const USER_ID_LEN_MAX: usize = 255;
pub const ORG_ID_LEN_MAX: usize = 255;
pub const TIER_LEN_MAX: usize = 64;
pub const TEXT_LEN_MAX: usize = 1024;
/// The largest `metadata` document a ledger entry or payment keeps (its JSON text, in bytes).
pub const METADATA_BYTES_MAX: usize = 64 * 1024;

/// Unicode 15 Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt), plus the line and
/// paragraph separators: characters that render as nothing.
const INVISIBLE: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x2028, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
];

/// Whether `c` renders as nothing (see [`INVISIBLE`]).
pub fn is_invisible(c: char) -> bool {
    let c = c as u32;
    INVISIBLE.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// The first character that may not appear in an id, if any: a control character, whitespace
/// other than the ASCII space, or an invisible character.
fn forbidden_char(value: &str) -> Option<char> {
    value.chars().find(|&c| {
        if c.is_ascii() {
            // The common case (every id a service makes): no table lookups.
            c.is_ascii_control() || (c.is_ascii_whitespace() && c != ' ')
        } else {
            c.is_control() || c.is_whitespace() || is_invisible(c)
        }
    })
}

fn describe(c: char) -> String {
    format!("U+{:04X}", c as u32)
}

/// Validates an identifier (see the module documentation).
pub fn validate_id(field: &str, value: &str, max_chars: usize) -> Result<()> {
    let invalid =
        |why: String| Err(QuotaError::invalid(format!("{field} {why}")).with("field", field));
    let n = value.chars().count();
    if n == 0 {
        return invalid("must not be empty".into());
    }
    if n > max_chars {
        return invalid(format!("must be at most {max_chars} characters, got {n}"));
    }
    if value.trim().is_empty() {
        return invalid("must not be blank".into());
    }
    if value.trim() != value {
        return invalid("must not start or end with whitespace".into());
    }
    if let Some(c) = forbidden_char(value) {
        return invalid(format!(
            "must hold only visible characters, found {}",
            describe(c)
        ));
    }
    Ok(())
}

pub fn validate_operation_id(operation_id: &str) -> Result<()> {
    validate_id("operation_id", operation_id, OPERATION_ID_LEN_MAX)
}

pub fn validate_payment_id(payment_id: &str) -> Result<()> {
    validate_id("payment_id", payment_id, PAYMENT_ID_LEN_MAX)
}

pub fn validate_user_id(user_id: &str) -> Result<()> {
    validate_id("user_id", user_id, USER_ID_LEN_MAX)
}

pub fn validate_org_id(org_id: &str) -> Result<()> {
    validate_id("org_id", org_id, ORG_ID_LEN_MAX)
}

pub fn validate_tier(tier: &str) -> Result<()> {
    validate_id("tier", tier, TIER_LEN_MAX)
}

/// The most rows a listing returns per page.
pub const PAGE_LIMIT_MAX: i32 = 1000;

/// A listing's page: `limit` 1..=1000, `offset` >= 0.
pub fn validate_page(limit: i32, offset: i32) -> Result<()> {
    if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
        return Err(QuotaError::invalid(format!(
            "limit must be between 1 and {PAGE_LIMIT_MAX}, got {limit}"
        ))
        .with("field", "limit"));
    }
    if offset < 0 {
        return Err(
            QuotaError::invalid(format!("offset must be at least 0, got {offset}"))
                .with("field", "offset"),
        );
    }
    Ok(())
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
    if value.contains('\0') {
        return Err(
            QuotaError::invalid(format!("{field} must not contain NUL characters"))
                .with("field", field),
        );
    }
    Ok(())
}

/// Bounds a metadata document by its size in bytes.
pub fn validate_metadata_size(bytes: usize) -> Result<()> {
    if bytes > METADATA_BYTES_MAX {
        return Err(QuotaError::invalid(format!(
            "metadata must be at most {METADATA_BYTES_MAX} bytes, got {bytes}"
        ))
        .with("field", "metadata"));
    }
    Ok(())
}

/// Bounds a metadata document given as JSON.
pub fn validate_metadata(metadata: Option<&serde_json::Value>) -> Result<()> {
    match metadata {
        None => Ok(()),
        Some(v) => validate_metadata_size(v.to_string().len()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pages_are_bounded() {
        assert!(validate_page(1, 0).is_ok());
        assert!(validate_page(1000, 5).is_ok());
        assert_eq!(validate_page(0, 0).unwrap_err().fields["field"], "limit");
        assert_eq!(validate_page(1001, 0).unwrap_err().fields["field"], "limit");
        assert_eq!(validate_page(10, -1).unwrap_err().fields["field"], "offset");
    }

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

    #[test]
    fn blank_padded_and_invisible_ids_are_rejected() {
        for bad in [
            " ",
            "   ",
            "\t",
            " op-1",
            "op-1 ",
            "op\u{00A0}1",    // no-break space
            "op\u{200B}1",    // zero-width space
            "op-1\u{200D}",   // zero-width joiner
            "\u{FEFF}op-1",   // byte order mark
            "op\u{202E}1",    // right-to-left override
            "op\u{2066}1",    // left-to-right isolate
            "op\u{FE0F}1",    // variation selector
            "op\u{E0041}1",   // tag letter
            "op\u{2028}1",    // line separator
            "op\u{0085}1",    // next line (a control character)
            "op\u{001B}[31m", // an escape sequence
            "op\u{00AD}1",    // soft hyphen
        ] {
            let e = validate_operation_id(bad).expect_err(&format!("{bad:?} must be refused"));
            assert_eq!(e.kind.sqlstate(), "22023", "{bad:?}");
        }
    }

    #[test]
    fn visible_ids_with_inner_spaces_and_any_script_are_accepted() {
        for good in [
            "op-1",
            "req 42",
            "заказ-7",
            "注文:8",
            "a/b:c#d",
            "emoji-🎉",
            "x",
        ] {
            assert!(validate_operation_id(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn metadata_is_bounded() {
        let small = serde_json::json!({"k": "v"});
        assert!(validate_metadata(Some(&small)).is_ok());
        assert!(validate_metadata(None).is_ok());
        let big = serde_json::json!({"k": "x".repeat(METADATA_BYTES_MAX)});
        assert_eq!(
            validate_metadata(Some(&big)).unwrap_err().kind.sqlstate(),
            "22023"
        );
    }

    #[test]
    fn the_message_names_the_character() {
        let e = validate_operation_id("a\u{200B}b").unwrap_err();
        assert!(e.message.contains("U+200B"), "{}", e.message);
    }
}
