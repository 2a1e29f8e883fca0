//! `validate::email` on arbitrary UTF-8: never panics; what it accepts is its own canonical form
//! (validating it again gives the same string) and fits in 254 bytes.
#![no_main]

use latchkey::domain::validate::{self, MAX_EMAIL_LENGTH};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    let Ok(canonical) = validate::email("email", raw) else {
        return;
    };
    assert!(
        canonical.len() <= MAX_EMAIL_LENGTH,
        "{raw:?} was accepted as {canonical:?}, {} bytes (at most {MAX_EMAIL_LENGTH})",
        canonical.len()
    );
    match validate::email("email", &canonical) {
        Ok(again) => assert_eq!(
            again, canonical,
            "not idempotent: {raw:?} -> {canonical:?} -> {again:?}"
        ),
        Err(error) => panic!("{raw:?} was accepted as {canonical:?}, which is then refused: {error}"),
    }
});
