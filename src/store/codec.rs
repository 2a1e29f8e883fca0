//! How records are laid out in sled: self-describing values (so later versions can add fields
//! without breaking an existing data directory) and order-preserving keys.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain::error::Error;
use crate::domain::model::Millis;

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records always serialize")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|error| Error::internal(format!("corrupt record: {error}")))
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
        _ => return None,
    };
    Some((kind, &key[9..]))
}

#[cfg(test)]
mod tests {
    use super::*;

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
