//! How records are laid out in sled: compact values and order-preserving keys.
//!
//! Values are MessagePack with each struct as an array of its fields in declaration order, and
//! 32-byte digests as raw bytes: about half the size of the JSON this store wrote before, and sled's
//! disk, cache and recovery time all grow with the bytes written. Rules this imposes on the records
//! (`records`, and the domain types sled stores as they are; the unit tests below hold them):
//! - a new field goes last, with `#[serde(default)]`: a shorter array from an older version then
//!   reads with the default;
//! - fields are never removed or reordered; enum variants are written by name, so they may be.
//!
//! Records written as JSON by earlier versions (they start with `{` or `[`, which no MessagePack
//! array or map does) still read, and are rewritten in the compact form when next updated.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain::error::Error;
use crate::domain::model::Millis;

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    rmp_serde::to_vec(record).expect("records always serialize")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let corrupt = |error: &dyn std::fmt::Display| Error::internal(format!("corrupt record: {error}"));
    match bytes.first() {
        Some(b'{' | b'[') => serde_json::from_slice(bytes).map_err(|error| corrupt(&error)),
        _ => rmp_serde::from_slice(bytes).map_err(|error| corrupt(&error)),
    }
}

/// `parent \0 child`, so all children of one parent are one prefix scan.
pub fn child_key(parent: &str, child: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parent.len() + 1 + child.len());
    key.extend_from_slice(parent.as_bytes());
    key.push(0);
    key.extend_from_slice(child);
    key
}

pub fn child_prefix(parent: &str) -> Vec<u8> {
    child_key(parent, &[])
}

/// What an expiry-index entry points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiring {
    Link = b'L' as isize,
    Session = b'S' as isize,
    Email = b'E' as isize,
    Attempt = b'A' as isize,
    Code = b'C' as isize,
    RateBucket = b'R' as isize,
    IdempotencyKey = b'I' as isize,
}

/// `purge_at (big-endian, sign-flipped) | kind | record key`: a range scan up to now finds every
/// record whose retention has ended, oldest first.
pub fn expiry_key(purge_at: Millis, kind: Expiring, record_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + record_key.len());
    key.extend_from_slice(&((purge_at as u64) ^ (1 << 63)).to_be_bytes());
    key.push(kind as u8);
    key.extend_from_slice(record_key);
    key
}

/// `due (big-endian, sign-flipped) | email id`: the outbox in the order emails fall due.
pub fn outbox_key(due: Millis, email_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + email_id.len());
    key.extend_from_slice(&expiry_bound(due));
    key.extend_from_slice(email_id.as_bytes());
    key
}

pub fn parse_outbox_key(key: &[u8]) -> Option<(Millis, &str)> {
    let due: [u8; 8] = key.get(..8)?.try_into().ok()?;
    let due = (u64::from_be_bytes(due) ^ (1 << 63)) as Millis;
    Some((due, std::str::from_utf8(&key[8..]).ok()?))
}

pub fn expiry_bound(now: Millis) -> [u8; 8] {
    ((now as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn parse_expiry_key(key: &[u8]) -> Option<(Expiring, &[u8])> {
    let kind = match *key.get(8)? {
        b'L' => Expiring::Link,
        b'S' => Expiring::Session,
        b'E' => Expiring::Email,
        b'A' => Expiring::Attempt,
        b'C' => Expiring::Code,
        b'R' => Expiring::RateBucket,
        b'I' => Expiring::IdempotencyKey,
        _ => return None,
    };
    Some((kind, &key[9..]))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::crypto::Digest32;
    use crate::domain::model::fixtures::{link, user};
    use crate::domain::model::{
        Attempt, AttemptStatus, ClientInfo, Email, EmailKind, EmailLink, EmailStatus, Link, LinkKind, Role, Session,
        SigningKeyRecord, UserStatus,
    };
    use crate::domain::store::Claimant;
    use crate::store::sled_store::records::{
        IdempotencyRecord, KeyRecord, LinkNote, LinkRecord, SessionRecord, UserRecord,
    };

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(record: T) -> Vec<u8> {
        let bytes = encode(&record);
        assert_eq!(decode::<T>(&bytes).unwrap(), record);
        let json = serde_json::to_vec(&record).unwrap();
        assert_eq!(
            decode::<T>(&json).unwrap(),
            record,
            "the JSON an earlier version wrote still reads"
        );
        assert!(
            bytes.len() * 3 < json.len() * 2,
            "{} bytes against {} in JSON",
            bytes.len(),
            json.len()
        );
        bytes
    }

    #[test]
    fn every_record_round_trips_compactly_and_json_still_reads() {
        round_trip(UserRecord::new(&user(), Vec::new()));
        round_trip(UserRecord::new(
            &user(),
            vec![
                LinkNote::of(&link()),
                LinkNote::of(&Link {
                    reuse_key: None,
                    ..link()
                }),
            ],
        ));
        round_trip(LinkRecord::from(&link()));
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"amr":["email"],"n":-3,"f":1.5,"nested":{"ok":true,"none":null}}"#).unwrap();
        let session = Session {
            id: "session-01a20ed6-aac1-734f-a09a-382b9c108d6b".into(),
            user_id: user().id,
            token_digest: Digest32::of("session token"),
            created_at: 1,
            expires_at: 2,
            revoked_at: Some(3),
            link_kind: LinkKind::Login,
            claims: claims.clone(),
            via_otp: true,
            client: Some(ClientInfo {
                ip_address: "2001:db8::1".into(),
                user_agent: "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0".into(),
            }),
            last_authenticated_at: Some(2),
        };
        round_trip(SessionRecord::from(&session));
        round_trip(Attempt {
            ref_digest: Digest32::of("ref"),
            user_id: user().id,
            status: AttemptStatus::Verified,
            right_link: Digest32::of("right"),
            created_at: 1,
            expires_at: 2,
            verified_at: Some(2),
            claims,
            session_id: None,
        });
        round_trip(Email {
            id: "email-01a20ed6-aac1-734f-a09a-382b9c108d6b".into(),
            recipient: "ada@example.com".into(),
            user_id: user().id,
            first_name: "Ada".into(),
            last_name: String::new(),
            kind: EmailKind::Enchanted,
            template_id: None,
            links: vec![EmailLink {
                token_digest: Digest32::of("a"),
                number: Some(42),
                otp: true,
            }],
            link_expires_at: 9,
            status: EmailStatus::Queued,
            attempts: 0,
            last_error: Some("451 try again".into()),
            created_at: 1,
            next_attempt_at: 1,
            sent_at: None,
            locale: "fr-CA".into(),
        });
        round_trip(vec![KeyRecord::from(&SigningKeyRecord {
            kid: "vDp3APMOea6K4_yR".into(),
            salt: [9; 32],
            created_at: 1,
            signs_from: 1,
            retire_at: 2,
        })]);
        round_trip(IdempotencyRecord {
            request: Digest32::of("request"),
            answer: Some(vec![7; 64]),
            lease_until: 1,
            expires_at: 2,
            claimant: Some(Claimant([3; 16])),
        });
    }

    #[test]
    fn a_record_from_before_a_field_was_added_reads_with_its_default() {
        // User as it was before `sessions_revoked_at`, `links` and `locale` (the last fields,
        // `#[serde(default)]`).
        #[derive(Serialize, Deserialize)]
        struct UserBefore {
            id: String,
            email: String,
            first_name: String,
            last_name: String,
            status: UserStatus,
            role: Role,
            mfa_enabled: bool,
            email_verified: bool,
            created_at: Millis,
            updated_at: Millis,
            last_login_at: Option<Millis>,
        }
        let now = user();
        let before = UserBefore {
            id: now.id.clone(),
            email: now.email.clone(),
            first_name: now.first_name.clone(),
            last_name: now.last_name.clone(),
            status: now.status,
            role: now.role,
            mfa_enabled: now.mfa_enabled,
            email_verified: now.email_verified,
            created_at: now.created_at,
            updated_at: now.updated_at,
            last_login_at: now.last_login_at,
        };
        assert_eq!(
            decode::<UserRecord>(&encode(&before)).unwrap().user(),
            crate::domain::model::User { locale: None, ..now }
        );
        assert!(
            decode::<UserRecord>(b"\x93\x01").is_err(),
            "garbage is an error, not a panic"
        );

        // An idempotency key as it was before claimants: it reads without one, which no
        // claimant's settle matches.
        #[derive(Serialize)]
        struct IdempotencyBefore {
            request: Digest32,
            answer: Option<Vec<u8>>,
            lease_until: Millis,
            expires_at: Millis,
        }
        let before = IdempotencyBefore {
            request: Digest32::of("request"),
            answer: None,
            lease_until: 1,
            expires_at: 2,
        };
        for bytes in [encode(&before), serde_json::to_vec(&before).unwrap()] {
            let record: IdempotencyRecord = decode(&bytes).unwrap();
            assert_eq!(
                (record.request, record.answer, record.lease_until, record.expires_at),
                (before.request, None, 1, 2)
            );
            assert_eq!(record.claimant, None);
        }
    }

    #[test]
    fn expiry_keys_sort_by_time() {
        let early = expiry_key(1_000, Expiring::Session, b"z");
        let late = expiry_key(2_000, Expiring::Link, b"a");
        assert!(early < late);
        assert!(early.as_slice() < expiry_bound(1_001).as_slice());
        assert!(late.as_slice() > expiry_bound(1_001).as_slice());
        assert_eq!(parse_expiry_key(&late), Some((Expiring::Link, &b"a"[..])));
        assert_eq!(parse_outbox_key(&outbox_key(-5, "email-1")), Some((-5, "email-1")));
        assert!(outbox_key(1, "b") < outbox_key(2, "a"));
    }
}
