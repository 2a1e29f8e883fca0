//! The JWT signing keys: derived from the server key and a stored salt (so a copy of the data
//! directory cannot sign), rotated on a schedule, and published until every token they signed has
//! expired.

use std::sync::{Arc, RwLock};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::{Map, Value};

use super::error::{Error, Result};
use super::model::{HOUR, Millis, SigningKeyRecord};
use super::store::Store;
use crate::crypto::{ServerKey, random_bytes};
use crate::jwt::{self, Jwk, JwtError};

const DERIVATION_LABEL: &str = "latchkey/jwt-signing-key/v1";

#[derive(Clone, Copy, Debug)]
pub struct KeyPolicy {
    /// How long a key signs before the next one takes over.
    pub signing_lifetime: Millis,
    /// The longest lifetime of any token a key signs.
    pub max_token_lifetime: Millis,
}

struct Published {
    kid: String,
    key: VerifyingKey,
}

struct KeySet {
    records: Vec<SigningKeyRecord>,
    signer: (String, SigningKey),
    published: Vec<Published>,
    jwks: Vec<Jwk>,
    jwks_json: Arc<str>,
}

pub struct KeyRing {
    server_key: ServerKey,
    store: Arc<dyn Store>,
    policy: KeyPolicy,
    current: RwLock<Arc<KeySet>>,
}

fn derive(server_key: &ServerKey, record: &SigningKeyRecord) -> SigningKey {
    SigningKey::from_bytes(&server_key.derive(DERIVATION_LABEL, &record.salt))
}

fn new_record(server_key: &ServerKey, now: Millis, policy: KeyPolicy) -> SigningKeyRecord {
    let mut record = SigningKeyRecord {
        kid: String::new(),
        salt: random_bytes(),
        created_at: now,
        retire_at: now + policy.signing_lifetime,
        // An hour of slack covers a rotation check that runs late.
        unpublish_at: now + policy.signing_lifetime + policy.max_token_lifetime + HOUR,
    };
    record.kid = jwt::key_id(&derive(server_key, &record).verifying_key());
    record
}

impl KeyRing {
    /// Loads the key set, adding a signing key when none is current.
    pub async fn load(server_key: ServerKey, store: Arc<dyn Store>, policy: KeyPolicy, now: Millis) -> Result<Self> {
        let (records, _) = Self::rotated(&server_key, store.as_ref(), policy, now).await?;
        let set = Self::build(&server_key, records)?;
        Ok(Self {
            server_key,
            store,
            policy,
            current: RwLock::new(Arc::new(set)),
        })
    }

    /// Rotates if the signing key is due; call it periodically.
    pub async fn rotate_if_due(&self, now: Millis) -> Result<bool> {
        let (records, changed) = Self::rotated(&self.server_key, self.store.as_ref(), self.policy, now).await?;
        if changed || records != self.snapshot().records {
            let set = Self::build(&self.server_key, records)?;
            *self.current.write().expect("key set lock") = Arc::new(set);
        }
        Ok(changed)
    }

    /// Reads the stored records, drops unpublished keys and adds a signer if needed, retrying the
    /// compare-and-swap if another writer got there first.
    async fn rotated(
        server_key: &ServerKey,
        store: &dyn Store,
        policy: KeyPolicy,
        now: Millis,
    ) -> Result<(Vec<SigningKeyRecord>, bool)> {
        loop {
            let stored = store.signing_keys().await?;
            let mut records: Vec<SigningKeyRecord> = stored.iter().filter(|r| r.unpublish_at > now).cloned().collect();
            if !records.iter().any(|r| r.retire_at > now && r.created_at <= now) {
                records.push(new_record(server_key, now, policy));
            }
            if records == stored {
                return Ok((records, false));
            }
            if store.replace_signing_keys(&stored, &records).await? {
                return Ok((records, true));
            }
        }
    }

    fn build(server_key: &ServerKey, records: Vec<SigningKeyRecord>) -> Result<KeySet> {
        let mut published = Vec::with_capacity(records.len());
        for record in &records {
            let key = derive(server_key, record).verifying_key();
            if jwt::key_id(&key) != record.kid {
                return Err(Error::internal(
                    "the server key does not match the data directory: its stored signing keys were made with another server key",
                ));
            }
            published.push(Published {
                kid: record.kid.clone(),
                key,
            });
        }
        let newest = records.iter().max_by_key(|r| r.created_at).expect("at least one key");
        let signer = (newest.kid.clone(), derive(server_key, newest));
        let jwks: Vec<Jwk> = published.iter().map(|p| Jwk::ed25519(&p.kid, &p.key)).collect();
        let jwks_json = jwt::jwks_document(&jwks).into();
        Ok(KeySet {
            records,
            signer,
            published,
            jwks,
            jwks_json,
        })
    }

    fn snapshot(&self) -> Arc<KeySet> {
        self.current.read().expect("key set lock").clone()
    }

    pub fn sign(&self, claims: &Map<String, Value>) -> String {
        let set = self.snapshot();
        jwt::sign(&set.signer.1, &set.signer.0, claims)
    }

    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, JwtError> {
        let set = self.snapshot();
        jwt::verify(token, |kid| set.published.iter().find(|p| p.kid == kid).map(|p| &p.key))
    }

    pub fn jwks(&self) -> (Vec<Jwk>, Arc<str>) {
        let set = self.snapshot();
        (set.jwks.clone(), set.jwks_json.clone())
    }

    pub fn signing_kid(&self) -> String {
        self.snapshot().signer.0.clone()
    }
}
