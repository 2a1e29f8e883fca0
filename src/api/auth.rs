//! API keys (docs/api.md, "API keys"): `authorization: Bearer <key>` or `x-api-key: <key>`, checked against the
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
use crate::reload::Shared;

/// The name of the key that made a call, for logs.
#[derive(Clone, Debug)]
pub struct Caller(pub String);

#[derive(Clone)]
pub struct ApiKeyCheck {
    /// Replaced whole when the config is reloaded; each call checks against the keys of its start.
    keys: Arc<Shared<Vec<ApiKey>>>,
    required: bool,
    scope: Scope,
}

impl ApiKeyCheck {
    pub fn new(keys: Arc<Shared<Vec<ApiKey>>>, required: bool, scope: Scope) -> Self {
        Self { keys, required, scope }
    }

    /// `Some("")` when a credential was sent in a form that cannot be a key (e.g. `Basic ...`):
    /// that is a bad key, not a missing one.
    fn presented_key<T>(request: &Request<T>) -> Option<String> {
        let metadata = request.metadata();
        let bearer = metadata.get("authorization").map(|value| {
            let value = value.to_str().unwrap_or_default().trim();
            match value.split_once(' ') {
                Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => key.trim().to_string(),
                _ => String::new(),
            }
        });
        let header = metadata
            .get("x-api-key")
            .map(|value| value.to_str().unwrap_or_default().trim().to_string());
        match (bearer, header) {
            (Some(bearer), _) if !bearer.is_empty() => Some(bearer),
            (_, Some(header)) if !header.is_empty() => Some(header),
            (None, None) => None,
            _ => Some(String::new()),
        }
    }

    /// Compares against every key, whatever matches first, so timing says nothing about which.
    fn find<'k>(keys: &'k [ApiKey], presented: &str) -> Option<&'k ApiKey> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in keys {
            if constant_time_eq(&key.digest, &digest) && found.is_none() {
                found = Some(key);
            }
        }
        found
    }
}

impl Interceptor for ApiKeyCheck {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        // With auth off (loopback only) keys are not checked at all, so a client configured with
        // a key works against a development server too.
        if !self.required {
            return Ok(request);
        }
        let Some(presented) = Self::presented_key(&request) else {
            return Err(to_status(Error::new(
                Reason::API_KEY_INVALID,
                "an API key is required (authorization: Bearer <key> or x-api-key)",
            )));
        };
        let keys = self.keys.get();
        let Some(key) = Self::find(&keys, &presented) else {
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
