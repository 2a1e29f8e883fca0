//! PKCE S256: the validators agree with the predicates, and every valid verifier matches its own
//! challenge and no other.
#![no_main]

use latchkey::crypto::pkce::{is_valid_challenge, is_valid_verifier, matches, s256};
use latchkey::domain::validate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    let valid_verifier = is_valid_verifier(raw);
    match validate::code_verifier("code_verifier", raw) {
        Ok(Some(verifier)) => assert!(valid_verifier && verifier == raw, "{raw:?}"),
        Ok(None) => assert!(raw.is_empty(), "{raw:?} read as no verifier"),
        Err(_) => assert!(!raw.is_empty() && !valid_verifier, "{raw:?} refused"),
    }
    let valid_challenge = is_valid_challenge(raw);
    match validate::code_challenge("code_challenge", raw) {
        Ok(Some(challenge)) => assert!(valid_challenge && challenge == raw, "{raw:?}"),
        Ok(None) => assert!(raw.is_empty(), "{raw:?} read as no challenge"),
        Err(_) => assert!(!raw.is_empty() && !valid_challenge, "{raw:?} refused"),
    }
    if valid_verifier {
        let challenge = s256(raw);
        assert!(is_valid_challenge(&challenge), "s256({raw:?}) = {challenge:?}");
        assert!(matches(&challenge, raw), "s256({raw:?}) does not match");
        assert!(!matches(raw, raw) || raw == challenge, "{raw:?} matches itself");
    }
    // Any split of the input into challenge and verifier: a match means the challenge is the
    // verifier's S256.
    for at in (0..=raw.len()).filter(|&at| raw.is_char_boundary(at)).step_by(7) {
        let (challenge, verifier) = raw.split_at(at);
        if matches(challenge, verifier) {
            assert_eq!(challenge, s256(verifier), "{challenge:?} / {verifier:?}");
        }
    }
});
