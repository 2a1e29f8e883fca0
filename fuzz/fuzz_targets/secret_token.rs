//! Secrets handed back by callers: `validate::secret` accepts exactly the stamped (51-character) and
//! plain (43-character) base64url forms, never repeats the secret in its error, and
//! `Digest32::of_secret` keys a stamped secret by its stamp.
#![no_main]

use latchkey::crypto::{Digest32, PLAIN_SECRET_CHARS, STAMPED_SECRET_CHARS, stamped_secret};
use latchkey::domain::error::Reason;
use latchkey::domain::validate;
use libfuzzer_sys::fuzz_target;

fn base64url_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fuzz_target!(|raw: &str| {
    let digest = Digest32::of_secret(raw);
    let trimmed = raw.trim();
    match validate::secret("token", raw, Reason::TOKEN_NOT_FOUND) {
        Ok(secret) => {
            assert_eq!(secret, trimmed);
            assert!(
                [STAMPED_SECRET_CHARS, PLAIN_SECRET_CHARS].contains(&secret.len())
                    && secret.bytes().all(base64url_char),
                "{raw:?} accepted"
            );
        }
        Err(error) => {
            let expected = if trimmed.is_empty() {
                Reason::MISSING_FIELD
            } else {
                Reason::TOKEN_NOT_FOUND
            };
            assert_eq!(error.reason(), expected, "{raw:?}");
            // The message is the same for every malformed secret, so it cannot repeat one.
            let reference = if trimmed.is_empty() { " " } else { "not a secret" };
            let same = validate::secret("token", reference, Reason::TOKEN_NOT_FOUND).unwrap_err();
            assert_eq!(error.to_string(), same.to_string(), "the error depends on {raw:?}");
        }
    }
    if raw.len() == STAMPED_SECRET_CHARS && raw.bytes().take(8).all(base64url_char) {
        // A stamped secret's key starts with its 6-byte stamp (its first 8 characters, exactly 48
        // bits), then 26 bytes of its SHA-256: the stamp encoded again gives those 8 characters.
        let stamp = &digest.as_bytes()[..6];
        let millis = u64::from_be_bytes([0, 0, stamp[0], stamp[1], stamp[2], stamp[3], stamp[4], stamp[5]]);
        let again = stamped_secret(millis as i64, &[0; 32]);
        assert_eq!(&again[..8], &raw[..8], "{raw:?}: the key's stamp reads as {millis} ms");
        assert_eq!(&digest.as_bytes()[6..], &Digest32::of(raw).as_bytes()[..26], "{raw:?}");
    } else {
        assert_eq!(
            digest,
            Digest32::of(raw),
            "{raw:?} is not stamped and is keyed by its SHA-256"
        );
    }
});
