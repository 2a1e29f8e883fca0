//! The flows of latchkey — login links, sessions, users — free of tonic and sled. The domain owns
//! the traits it needs (`store::Store`, `clock::Clock`); `crate::store` implements them.

pub mod clock;
pub mod emails;
pub mod enchanted;
pub mod error;
pub mod keys;
pub mod links;
pub mod magic;
pub mod model;
pub mod oauth;
pub mod pollers;
pub mod rate_limit;
pub mod redirect;
pub mod sessions;
pub mod store;
pub mod users;
pub mod validate;

use std::sync::Arc;

use clock::Clock;
use keys::KeyRing;
use rate_limit::RateLimit;
use redirect::RedirectPolicy;
use store::Store;

use crate::crypto::ServerKey;

/// The domain's settings, taken from the validated config.
#[derive(Clone, Debug)]
pub struct Settings {
    pub redirects: RedirectPolicy,
    pub default_redirect_url: Option<String>,
    pub session_default_minutes: u32,
    /// Session JWTs live this long (capped by the session's own expiry).
    pub session_jwt_minutes: u32,
    /// `iss` of every JWT.
    pub issuer: String,
    /// `aud` of session JWTs.
    pub audience: String,
    /// LoginOrCreate's defaults; `default_redirect_url` when unset.
    pub login_magic_link_url: Option<String>,
    pub signup_magic_link_url: Option<String>,
    /// SendEnchantedLink's default link lifetime.
    pub enchanted_default_minutes: u32,
    pub oauth_clients: Vec<oauth::OAuthClient>,
    /// Lifetime of OAuth access and ID tokens.
    pub access_token_minutes: u32,
    /// The `aud` of access tokens (RFC 9068: the resource, not the client).
    pub access_token_audience: String,
}

/// Which custom email templates exist (the mail module loads them).
pub trait TemplateCatalog: Send + Sync + 'static {
    fn contains(&self, template_id: &str) -> bool;
}

/// What the flows that send email need: the template ids, the per-recipient limit, and a way to
/// wake the mail worker once an email is queued.
pub struct Mail {
    pub templates: Arc<dyn TemplateCatalog>,
    pub rate_limit: RateLimit,
    pub outbox: Arc<tokio::sync::Notify>,
}

/// Everything a flow needs, shared by every RPC.
pub struct Domain {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub keys: KeyRing,
    pub mail: Mail,
    pub pollers: pollers::Pollers,
    /// Cancelled as shutdown starts: long-polls answer at once with the current status.
    pub stopping: tokio_util::sync::CancellationToken,
    pub(crate) server_key: ServerKey,
    pub(crate) settings: Settings,
}

impl Domain {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        keys: KeyRing,
        mail: Mail,
        server_key: ServerKey,
        settings: Settings,
    ) -> Self {
        Self {
            store,
            clock,
            keys,
            mail,
            pollers: pollers::Pollers::default(),
            stopping: tokio_util::sync::CancellationToken::new(),
            server_key,
            settings,
        }
    }
}

/// Who a request is about.
#[derive(Clone, Debug)]
pub enum UserRef {
    Id(String),
    Email(String),
}

/// Ids that grow with time, so listing by id is listing by creation.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7())
}
