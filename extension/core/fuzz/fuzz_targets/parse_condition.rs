//! Fuzz target for the condition parser: any UTF-8 input must either fail with a position inside
//! the input, or parse to a tree whose canonical text parses back to the same tree, compiles to
//! SQL whose only values are parameters, and evaluates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quota_core::condition::{eval, parse, to_sql, UserFacts};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    match parse(input) {
        Ok(e) => {
            let text = e.to_string();
            let back = parse(&text).expect("the canonical text parses");
            assert_eq!(back, e, "canonical text changes the tree: {text}");
            assert_eq!(back.to_string(), text);
            let (sql, params) = to_sql(&e, 1);
            assert!(
                !sql.contains('\'') && !sql.contains('"') && !sql.contains(';'),
                "{sql}"
            );
            assert_eq!(sql.matches('$').count(), params.len());
            let _ = eval(&e, &UserFacts::default());
        }
        Err(err) => {
            assert!(err.position <= input.len());
            assert!(input.is_char_boundary(err.position));
        }
    }
});
