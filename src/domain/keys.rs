//! The JWT signing keys: derived from the server key and a stored salt (so a copy of the data
//! directory cannot sign), rotated on a schedule with the successor published ahead of use, and
//! kept published until every token they signed has expired.

use std::sync::{Arc, RwLock};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::{Map, Value};

use super::error::{Error, Result};
use super::model::{HOUR, Millis, SigningKeyRecord};
use super::store::Store;
use crate::crypto::{ServerKey, random_bytes};
use crate::jwt::{self, Jwk, JwtError, TokenType};

const DERIVATION_LABEL: &str = "latchkey/jwt-signing-key/v1";
/// How long before it signs a successor key is published, at most.
const PREPUBLISH: Millis = 24 * HOUR;

#[derive(Clone, Copy, Debug)]
pub struct KeyPolicy {
    /// How long a key signs before its successor takes over.
    pub signing_lifetime: Millis,
    /// The longest lifetime of any token a key signs.
    pub max_token_lifetime: Millis,
}

impl KeyPolicy {
    fn prepublish(&self) -> Millis {
        PREPUBLISH.min(self.signing_lifetime / 2)
    }

    /// A retired key is published until its last token has expired, with an hour of slack for
    /// clock skew and a rotation check that runs late.
    fn unpublish_at(&self, record: &SigningKeyRecord) -> Millis {
        record.retire_at + self.max_token_lifetime + HOUR
    }
}

struct Key {
    record: SigningKeyRecord,
    signing: SigningKey,
    verifying: VerifyingKey,
}

struct KeySet {
    keys: Vec<Key>,
    jwks: Vec<Jwk>,
    jwks_json: Arc<str>,
}

impl KeySet {
    /// The key that signs at `now`: the latest whose signing period has begun.
    fn signer(&self, now: Millis) -> &Key {
        let started = self.keys.iter().filter(|k| k.record.signs_from <= now);
        let current = started
            .clone()
            .filter(|k| now < k.record.retire_at)
            .max_by_key(|k| k.record.signs_from);
        current
            .or_else(|| started.max_by_key(|k| k.record.signs_from))
            .or_else(|| self.keys.iter().min_by_key(|k| k.record.signs_from))
            .expect("a key set has at least one key")
    }
}

pub struct KeyRing {
    server_key: ServerKey,
    store: Arc<dyn Store>,
    policy: KeyPolicy,
    current: RwLock<Arc<KeySet>>,
}

fn derive(server_key: &ServerKey, salt: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(&server_key.derive(DERIVATION_LABEL, salt))
}

fn new_record(server_key: &ServerKey, created_at: Millis, signs_from: Millis, policy: KeyPolicy) -> SigningKeyRecord {
    let salt = random_bytes();
    SigningKeyRecord {
        kid: jwt::key_id(&derive(server_key, &salt).verifying_key()),
        salt,
        created_at,
        signs_from,
        retire_at: signs_from + policy.signing_lifetime,
    }
}

/// The key set as it should be at `now`: unpublished keys dropped, a signer present, and a
/// successor published once the signer nears retirement.
fn plan(server_key: &ServerKey, stored: &[SigningKeyRecord], policy: KeyPolicy, now: Millis) -> Vec<SigningKeyRecord> {
    let mut records: Vec<SigningKeyRecord> = stored
        .iter()
        .filter(|r| now < policy.unpublish_at(r))
        .cloned()
        .collect();
    let signer = records
        .iter()
        .filter(|r| r.signs_from <= now && now < r.retire_at)
        .max_by_key(|r| r.signs_from)
        .cloned();
    match signer {
        None => records.push(new_record(server_key, now, now, policy)),
        Some(signer) => {
            let has_successor = records.iter().any(|r| r.signs_from > signer.signs_from);
            if !has_successor && now >= signer.retire_at - policy.prepublish() {
                records.push(new_record(server_key, now, signer.retire_at, policy));
            }
        }
    }
    records
}

impl KeyRing {
    /// Loads the key set, adding a signing key when none is current.
    pub async fn load(server_key: ServerKey, store: Arc<dyn Store>, policy: KeyPolicy, now: Millis) -> Result<Self> {
        let records = Self::rotated(&server_key, store.as_ref(), policy, now).await?.0;
        let set = Self::build(&server_key, records)?;
        Ok(Self {
            server_key,
            store,
            policy,
            current: RwLock::new(Arc::new(set)),
        })
    }

    /// Publishes a successor, or drops keys whose tokens have all expired, when due. Returns
    /// whether the key set changed. Call it periodically.
    pub async fn rotate_if_due(&self, now: Millis) -> Result<bool> {
        let (records, changed) = Self::rotated(&self.server_key, self.store.as_ref(), self.policy, now).await?;
        let current = self.snapshot();
        let loaded: Vec<&SigningKeyRecord> = current.keys.iter().map(|k| &k.record).collect();
        if changed || records.iter().collect::<Vec<_>>() != loaded {
            let set = Self::build(&self.server_key, records)?;
            *self.current.write().expect("key set lock") = Arc::new(set);
        }
        Ok(changed)
    }

    /// Applies `plan` to the stored records with a compare-and-swap, retrying if another writer
    /// got there first.
    async fn rotated(
        server_key: &ServerKey,
        store: &dyn Store,
        policy: KeyPolicy,
        now: Millis,
    ) -> Result<(Vec<SigningKeyRecord>, bool)> {
        loop {
            let stored = store.signing_keys().await?;
            let records = plan(server_key, &stored, policy, now);
            if records == stored {
                return Ok((records, false));
            }
            if store.replace_signing_keys(&stored, &records).await? {
                return Ok((records, true));
            }
        }
    }

    fn build(server_key: &ServerKey, records: Vec<SigningKeyRecord>) -> Result<KeySet> {
        let mut keys = Vec::with_capacity(records.len());
        for record in records {
            let signing = derive(server_key, &record.salt);
            let verifying = signing.verifying_key();
            if jwt::key_id(&verifying) != record.kid {
                return Err(Error::internal(
                    "the server key does not match the store: its signing keys were made with another server key; \
                     start with the key the store was created with (server_key_file or LATCHKEY_SERVER_KEY)",
                ));
            }
            keys.push(Key {
                record,
                signing,
                verifying,
            });
        }
        let jwks: Vec<Jwk> = keys.iter().map(|k| Jwk::ed25519(&k.record.kid, &k.verifying)).collect();
        let jwks_json = jwt::jwks_document(&jwks).into();
        Ok(KeySet { keys, jwks, jwks_json })
    }

    fn snapshot(&self) -> Arc<KeySet> {
        self.current.read().expect("key set lock").clone()
    }

    pub fn sign(&self, kind: TokenType, claims: &Map<String, Value>, now: Millis) -> String {
        let set = self.snapshot();
        let signer = set.signer(now);
        jwt::sign(&signer.signing, &signer.record.kid, kind, claims)
    }

    pub fn verify(&self, token: &str, kind: TokenType) -> Result<Map<String, Value>, JwtError> {
        let set = self.snapshot();
        jwt::verify(token, kind, |kid| {
            set.keys.iter().find(|k| k.record.kid == kid).map(|k| &k.verifying)
        })
    }

    pub fn jwks(&self) -> (Vec<Jwk>, Arc<str>) {
        let set = self.snapshot();
        (set.jwks.clone(), set.jwks_json.clone())
    }

    pub fn signing_kid(&self, now: Millis) -> String {
        self.snapshot().signer(now).record.kid.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::MINUTE;

    const DAY: Millis = 24 * HOUR;

    fn policy() -> KeyPolicy {
        KeyPolicy {
            signing_lifetime: 30 * DAY,
            max_token_lifetime: 5 * MINUTE,
        }
    }

    #[test]
    fn successor_is_published_a_day_early_and_the_old_key_lingers() {
        let key = ServerKey::parse(&ServerKey::generate_encoded()).unwrap();
        let first = plan(&key, &[], policy(), 0);
        assert_eq!(first.len(), 1);
        assert_eq!(plan(&key, &first, policy(), 28 * DAY), first, "nothing due yet");
        let with_successor = plan(&key, &first, policy(), 29 * DAY);
        assert_eq!(with_successor.len(), 2);
        assert_eq!(with_successor[1].signs_from, 30 * DAY);
        assert_eq!(
            plan(&key, &with_successor, policy(), 30 * DAY + HOUR),
            with_successor,
            "old key still published"
        );
        let later = plan(&key, &with_successor, policy(), 30 * DAY + HOUR + 6 * MINUTE);
        assert_eq!(later, vec![with_successor[1].clone()]);
    }
}
