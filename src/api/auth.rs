//! API keys (SPEC §2): `authorization: Bearer <key>` or `x-api-key: <key>`, checked against the
//! configured SHA-256 digests in constant time, each key limited to its scopes. Applied per
//! service as a tonic interceptor; health and reflection have none.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::error::to_status;
use crate::config::{ApiKey, Scope};
use crate::crypto::constant_time_eq;
use crate::domain::error::{Error, Reason};

/// The name of the key that made a call, for logs.
#[derive(Clone, Debug)]
pub struct Caller(pub String);

#[derive(Clone)]
pub struct ApiKeyCheck {
    keys: Arc<Vec<ApiKey>>,
    required: bool,
    scope: Scope,
}

impl ApiKeyCheck {
    pub fn new(keys: Arc<Vec<ApiKey>>, required: bool, scope: Scope) -> Self {
        Self { keys, required, scope }
    }

    fn presented_key<T>(request: &Request<T>) -> Option<String> {
        let metadata = request.metadata();
        if let Some(value) = metadata.get("authorization").and_then(|v| v.to_str().ok()) {
            let (scheme, key) = value.trim().split_once(' ')?;
            return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim().to_string());
        }
        metadata
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(|key| key.trim().to_string())
    }

    /// Compares against every key, whatever matches first, so timing says nothing about which.
    fn find(&self, presented: &str) -> Option<&ApiKey> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in self.keys.iter() {
            if constant_time_eq(&key.digest, &digest) && found.is_none() {
                found = Some(key);
            }
        }
        found
    }
}

impl Interceptor for ApiKeyCheck {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let presented = Self::presented_key(&request).filter(|key| !key.is_empty());
        let Some(presented) = presented else {
            if !self.required {
                return Ok(request);
            }
            return Err(to_status(Error::new(
                Reason::API_KEY_INVALID,
                "an API key is required (authorization: Bearer <key> or x-api-key)",
            )));
        };
        let Some(key) = self.find(&presented) else {
            return Err(to_status(Error::new(Reason::API_KEY_INVALID, "unknown API key")));
        };
        if !key.scopes.contains(&self.scope) {
            return Err(to_status(Error::new(
                Reason::SCOPE_MISSING,
                format!("the API key {:?} lacks the {:?} scope", key.name, self.scope),
            )));
        }
        request.extensions_mut().insert(Caller(key.name.clone()));
        Ok(request)
    }
}
