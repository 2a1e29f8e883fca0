//! Secrets: OS-random tokens, their digests, values derived from the server key, and PKCE.
//!
//! Nothing usable is ever stored: a token's digest indexes its record, and a secret that must be
//! shown again (a reused link) is re-derived as an HMAC of a stored random seed under the server
//! key, which lives outside the data directory.
//!
//! Secrets are stamped: their first six bytes are their creation time, which is no secret. The
//! digest that keys a stamped secret's record keeps the stamp in front, so new records land at the
//! end of their sled tree. sled then appends to the tree's last leaf; with keys spread over the
//! whole tree (a plain SHA-256), every insert rewrote some leaf somewhere, and the superseded
//! copies filled the log (bench/RESULTS.md, step 8).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// 256-bit secrets for every token, ref and code (docs/security.md).
pub const SECRET_BYTES: usize = 32;

/// Fills `N` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS RNG failing means the machine cannot make secrets at all: nothing sensible remains.
    getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
    bytes
}

/// A uniformly random number in `low..=high` (rejection sampling, so no modulo bias).
pub fn random_in_range(low: u32, high: u32) -> u32 {
    let span = high - low + 1;
    let zone = u32::MAX - (u32::MAX % span);
    loop {
        let value = u32::from_le_bytes(random_bytes::<4>());
        if value < zone {
            return low + value % span;
        }
    }
}

pub fn base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Serde for fixed-size byte values in stored records (32-byte digests and salts, 16-byte
/// claimant ids): raw bytes in the store's binary records, base64url text in JSON (a third the
/// size of JSON's array of numbers). Every form earlier versions wrote still reads: text, and the
/// array of numbers.
pub mod fixed_bytes {
    use std::fmt;

    use base64::Engine;
    use serde::de::{self, SeqAccess, Visitor};

    /// Text in JSON; raw bytes in the store's binary records.
    pub fn serialize<S: serde::Serializer, const N: usize>(bytes: &[u8; N], serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&super::base64url(bytes))
        } else {
            serializer.serialize_bytes(bytes)
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>, const N: usize>(deserializer: D) -> Result<[u8; N], D::Error> {
        deserializer.deserialize_any(FixedBytes::<N>)
    }

    struct FixedBytes<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for FixedBytes<N> {
        type Value = [u8; N];

        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            write!(formatter, "{N} bytes, raw or as base64url text")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<[u8; N], E> {
            let bytes = super::URL_SAFE_NO_PAD.decode(text).map_err(E::custom)?;
            let length = bytes.len();
            bytes.try_into().map_err(|_| E::invalid_length(length, &self))
        }

        fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<[u8; N], E> {
            bytes.try_into().map_err(|_| E::invalid_length(bytes.len(), &self))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
            let mut bytes = [0u8; N];
            for (index, byte) in bytes.iter_mut().enumerate() {
                *byte = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(index, &self))?;
            }
            if seq.next_element::<u8>()?.is_some() {
                return Err(de::Error::invalid_length(N + 1, &self));
            }
            Ok(bytes)
        }
    }
}

/// Bytes of creation time that lead a stamped secret: milliseconds since the epoch, big-endian
/// (48 bits last until the year 10889).
const STAMP_BYTES: usize = 6;
/// The stamp's base64url characters: 6 bytes are exactly 8 characters, so the rest of a stamped
/// secret is the base64url of its body alone.
const STAMP_CHARS: usize = 8;
/// Characters of a stamped secret: 6 + 32 bytes in base64url.
pub const STAMPED_SECRET_CHARS: usize = 51;
/// Characters of a secret handed out before stamps (32 bytes in base64url); still accepted.
pub const PLAIN_SECRET_CHARS: usize = 43;

/// `body` led by the stamp of `created_at_ms`, base64url without padding (51 characters).
pub fn stamped_secret(created_at_ms: i64, body: &[u8; SECRET_BYTES]) -> String {
    let millis = created_at_ms.clamp(0, (1 << 48) - 1) as u64;
    let mut bytes = [0u8; STAMP_BYTES + SECRET_BYTES];
    bytes[..STAMP_BYTES].copy_from_slice(&millis.to_be_bytes()[8 - STAMP_BYTES..]);
    bytes[STAMP_BYTES..].copy_from_slice(body);
    base64url(&bytes)
}

/// A new secret: 256 bits from the OS CSPRNG, stamped with `now_ms`.
pub fn new_secret(now_ms: i64) -> String {
    stamped_secret(now_ms, &random_bytes())
}

/// A 32-byte digest. Of a secret (`of_secret`), it is the only form in which the secret reaches
/// the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Digest32(#[serde(with = "fixed_bytes")] pub [u8; 32]);

impl Digest32 {
    /// The SHA-256 of `text`.
    pub fn of(text: &str) -> Self {
        Self(Sha256::digest(text.as_bytes()).into())
    }

    /// The key a secret's record is stored under. For a stamped secret: its stamp, then the first
    /// 26 bytes (208 bits) of its SHA-256, so keys sort by creation time. For any other text (a
    /// secret handed out before stamps): its SHA-256.
    pub fn of_secret(secret: &str) -> Self {
        let text = secret.as_bytes();
        if text.len() != STAMPED_SECRET_CHARS {
            return Self::of(secret);
        }
        let Ok(stamp) = URL_SAFE_NO_PAD.decode(&text[..STAMP_CHARS]) else {
            return Self::of(secret);
        };
        let mut key = [0u8; 32];
        key[..STAMP_BYTES].copy_from_slice(&stamp);
        key[STAMP_BYTES..].copy_from_slice(&Sha256::digest(text)[..32 - STAMP_BYTES]);
        Self(key)
    }

    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Digest32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest is not a secret, but a short prefix is all a log ever needs.
        write!(f, "Digest32({}…)", &hex::encode(&self.0[..4]))
    }
}

/// Constant-time equality for secrets and their digests.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The server key: the root of every derived secret and of the JWT signing keys. Never printed.
#[derive(Clone)]
pub struct ServerKey(Vec<u8>);

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerKeyError {
    #[error("the server key is not base64 (standard or URL-safe) or hex")]
    Encoding,
    #[error("the server key has {0} bytes; it needs at least 32")]
    TooShort(usize),
}

impl ServerKey {
    /// A fresh key, encoded as a key file holds it.
    pub fn generate_encoded() -> String {
        base64url(&random_bytes::<SECRET_BYTES>())
    }

    /// Parses a key as written in a key file or environment variable: base64 (either alphabet,
    /// padded or not) or hex, at least 32 bytes.
    pub fn parse(text: &str) -> Result<Self, ServerKeyError> {
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
        let text = text.trim();
        let bytes = if text.len() >= 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|_| ServerKeyError::Encoding)?
        } else {
            [URL_SAFE_NO_PAD, URL_SAFE, STANDARD, STANDARD_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(text).ok())
                .ok_or(ServerKeyError::Encoding)?
        };
        if bytes.len() < SECRET_BYTES {
            return Err(ServerKeyError::TooShort(bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// HMAC-SHA256 of `data` under the server key, domain-separated by `label`.
    pub fn derive(&self, label: &str, data: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

/// Hex SHA-256 of an API key, as config stores it (`latchkey hash-key`).
pub fn api_key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// PKCE (RFC 7636) with S256 only.
pub mod pkce {
    use super::*;

    /// BASE64URL(SHA-256(verifier)).
    pub fn s256(verifier: &str) -> String {
        base64url(&Sha256::digest(verifier.as_bytes()))
    }

    /// 43–128 characters of `[A-Za-z0-9-._~]` (RFC 7636 §4.1).
    pub fn is_valid_verifier(verifier: &str) -> bool {
        (43..=128).contains(&verifier.len())
            && verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    }

    /// An S256 challenge is the 43-character base64url encoding of 32 bytes.
    pub fn is_valid_challenge(challenge: &str) -> bool {
        challenge.len() == 43 && URL_SAFE_NO_PAD.decode(challenge).is_ok_and(|bytes| bytes.len() == 32)
    }

    pub fn matches(challenge: &str, verifier: &str) -> bool {
        constant_time_eq(s256(verifier).as_bytes(), challenge.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_stored_as_base64url_and_the_array_form_still_reads() {
        let digest = Digest32::of("a secret");
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{}\"", base64url(digest.as_bytes())));
        assert_eq!(serde_json::from_str::<Digest32>(&json).unwrap(), digest);
        let array = serde_json::to_string(digest.as_bytes()).unwrap();
        assert_eq!(serde_json::from_str::<Digest32>(&array).unwrap(), digest);
        assert!(serde_json::from_str::<Digest32>("\"AAAA\"").is_err(), "too short");
        assert!(serde_json::from_str::<Digest32>(&format!("[{}]", ["1"; 33].join(","))).is_err());
    }

    #[test]
    fn rfc7636_appendix_b_vector() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(pkce::s256(verifier), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert!(pkce::is_valid_verifier(verifier));
        assert!(pkce::is_valid_challenge("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
        assert!(pkce::matches("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", verifier));
        assert!(!pkce::matches("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cN", verifier));
    }

    #[test]
    fn verifier_rules() {
        assert!(!pkce::is_valid_verifier(&"a".repeat(42)));
        assert!(pkce::is_valid_verifier(&"a".repeat(128)));
        assert!(!pkce::is_valid_verifier(&"a".repeat(129)));
        assert!(!pkce::is_valid_verifier(&format!("{}+", "a".repeat(43))));
        assert!(!pkce::is_valid_challenge("plain-challenge"));
    }

    #[test]
    fn secrets_are_256_bit_stamped_and_distinct() {
        let a = new_secret(1_795_545_262_253);
        assert_eq!(a.len(), STAMPED_SECRET_CHARS);
        assert_ne!(a, new_secret(1_795_545_262_253));
        let body = random_bytes::<SECRET_BYTES>();
        assert_eq!(
            stamped_secret(1_795_545_262_253, &body)[STAMP_CHARS..],
            base64url(&body),
            "the body follows the stamp unchanged"
        );
    }

    #[test]
    fn a_stamped_secret_is_keyed_in_creation_order_and_a_plain_one_by_its_sha256() {
        let earlier = new_secret(1_795_545_262_253);
        let later = new_secret(1_795_545_262_254);
        let (earlier_key, later_key) = (Digest32::of_secret(&earlier), Digest32::of_secret(&later));
        assert!(earlier_key < later_key, "keys sort by the stamp");
        assert_eq!(
            earlier_key.as_bytes()[..STAMP_BYTES],
            1_795_545_262_253u64.to_be_bytes()[2..]
        );
        assert_eq!(earlier_key.as_bytes()[STAMP_BYTES..], Sha256::digest(&earlier)[..26]);
        assert_ne!(Digest32::of_secret(&new_secret(1_795_545_262_253)), earlier_key);
        let plain = base64url(&random_bytes::<SECRET_BYTES>());
        assert_eq!(plain.len(), PLAIN_SECRET_CHARS);
        assert_eq!(Digest32::of_secret(&plain), Digest32::of(&plain));
        // Text that only looks stamped (a caller's garbage, multi-byte characters) hashes whole.
        let garbage = format!("é{}", "a".repeat(STAMPED_SECRET_CHARS - 2));
        assert_eq!(Digest32::of_secret(&garbage), Digest32::of(&garbage));
    }

    #[test]
    fn server_key_parsing() {
        let encoded = ServerKey::generate_encoded();
        let key = ServerKey::parse(&format!("{encoded}\n")).unwrap();
        assert_eq!(
            key.derive("x", b"1"),
            ServerKey::parse(&encoded).unwrap().derive("x", b"1")
        );
        assert_ne!(key.derive("x", b"1"), key.derive("y", b"1"));
        assert!(matches!(ServerKey::parse("c2hvcnQ"), Err(ServerKeyError::TooShort(_))));
        assert!(matches!(
            ServerKey::parse("not base64 !!"),
            Err(ServerKeyError::Encoding)
        ));
        assert!(ServerKey::parse(&"ab".repeat(32)).is_ok());
        assert!(!format!("{key:?}").contains(&encoded));
    }

    #[test]
    fn random_range_stays_in_bounds() {
        for _ in 0..1000 {
            assert!((10..=99).contains(&random_in_range(10, 99)));
        }
    }
}
