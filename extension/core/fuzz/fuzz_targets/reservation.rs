//! Fuzz the reservation arithmetic and the organization input parser: a settle never charges
//! more than the hold plus the free room, never a negative amount, and adds up; any JSON either
//! parses into valid organization fields or is a 22023 error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quota_core::reservation::{settle_split, OrgInput};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 24 {
        let n = |i: usize| i64::from_le_bytes(data[i..i + 8].try_into().unwrap());
        let (hold, actual, free) = (n(0).unsigned_abs() as i64 & i64::MAX, n(8) & i64::MAX, n(16));
        let s = settle_split(hold, actual, free);
        assert!(s.charged >= 0 && s.returned >= 0 && s.uncollected >= 0);
        assert_eq!(s.charged as i128 + s.uncollected as i128, actual as i128);
        assert!(s.charged as i128 <= (hold as i128 + free as i128).max(0));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
            if let Err(e) = OrgInput::parse(v) {
                assert_eq!(e.kind.sqlstate(), "22023");
            }
        }
    }
});
