//! The flows of latchkey — login links, sessions, users — free of tonic and of any storage
//! backend. The domain owns the ports it needs (`store::Store`, `wakeups::Wakeups`,
//! `clock::Clock`); `crate::store` implements the first two.

pub mod clock;
pub mod emails;
pub mod enchanted;
pub mod error;
pub mod keys;
pub mod links;
pub mod locale;
pub mod magic;
pub mod model;
pub mod oauth;
pub mod otp;
pub mod outbox_limit;
pub mod page_token;
pub mod rate_limit;
pub mod redirect;
pub mod sessions;
pub mod store;
pub mod userinfo;
pub mod users;
pub mod validate;
pub mod wakeups;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use clock::Clock;
use keys::KeyRing;
use outbox_limit::OutboxLimit;
use rate_limit::RateLimit;
use redirect::RedirectPolicy;
use store::Store;
use wakeups::Wakeups;

use crate::crypto::ServerKey;

/// The domain's settings, taken from the validated config.
#[derive(Clone, Debug)]
pub struct Settings {
    pub redirects: RedirectPolicy,
    pub default_redirect_url: Option<String>,
    /// The hosted confirm page: where IssueLoginLink's OAuth links point when the caller names
    /// no landing page.
    pub sign_in_confirm_url: Option<String>,
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
    /// Whether emails carry a one-time code when the request does not say (`otp.include_by_default`).
    pub otp_by_default: bool,
    /// How many digits a new one-time code has (6-10).
    pub otp_digits: u8,
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

/// What the flows that send email need: the template ids, the per-recipient limit, the
/// outbox's admission limit and the language of emails when neither request nor user names one.
pub struct Mail {
    pub templates: Arc<dyn TemplateCatalog>,
    pub rate_limit: RateLimit,
    pub outbox_limit: OutboxLimit,
    /// `mail.default_locale`, a canonical BCP 47 tag.
    pub default_locale: String,
}

/// What the domain is plugged into.
pub struct Ports {
    pub store: Arc<dyn Store>,
    pub wakeups: Arc<dyn Wakeups>,
    pub clock: Arc<dyn Clock>,
    /// Cancelled as shutdown starts.
    pub stopping: tokio_util::sync::CancellationToken,
}

/// Everything a flow needs, shared by every RPC.
pub struct Domain {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub keys: KeyRing,
    pub mail: Mail,
    /// Reaches long-polls and the mail worker when what they wait for changes.
    pub wakeups: Arc<dyn Wakeups>,
    /// PollSession calls waiting now (a metric).
    pub live_polls: AtomicUsize,
    /// Cancelled as shutdown starts: long-polls answer at once with the current status.
    pub stopping: tokio_util::sync::CancellationToken,
    pub(crate) server_key: ServerKey,
    pub(crate) settings: Settings,
}

impl Domain {
    /// `stopping` is the server's shutdown token.
    pub fn new(ports: Ports, keys: KeyRing, mail: Mail, server_key: ServerKey, settings: Settings) -> Self {
        Self {
            store: ports.store,
            clock: ports.clock,
            keys,
            mail,
            wakeups: ports.wakeups,
            live_polls: AtomicUsize::new(0),
            stopping: ports.stopping,
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

/// Runs a flow's body (an `async` block), and once more if it fails `USER_EXISTS`: a concurrent
/// call may create the same new user between the look-up and the write, and the second run
/// finds that user. A second `USER_EXISTS` is the answer. (A macro, not a function taking an
/// async closure: such closures' futures are not provably `Send` for tonic.)
macro_rules! user_may_appear {
    ($body:expr) => {{
        let first: $crate::domain::error::Result<_> = $body.await;
        match first {
            Err(error) if error.reason() == $crate::domain::error::Reason::USER_EXISTS => $body.await,
            outcome => outcome,
        }
    }};
}
pub(crate) use user_may_appear;

/// Ids that grow with time, so listing by id is listing by creation.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7())
}
