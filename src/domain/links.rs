//! Login links: IssueLoginLink, InspectToken and VerifyToken.

use super::error::{Error, Reason, Result};
use super::model::{
    Attempt, AttemptStatus, ClientInfo, Link, LinkKind, MINUTE, Millis, Role, Session, User, UserStatus,
};
use super::oauth::{OAuthParams, callback_url};
use super::redirect::link_with_token;
use super::sessions::NewSession;
use super::store::{LinkInsert, Redemption};
use super::validate;
use super::wakeups::Topic;
use super::{Domain, UserRef, user_may_appear};
use crate::crypto::{Digest32, base64url, new_secret, pkce, random_bytes, stamped_secret};

const TOKEN_LABEL: &str = "latchkey/link-token/v1";
pub(crate) const TOKEN_PARAMETER: &str = "token";
/// Enchanted links carry their token as `t` (Descope's name).
pub(crate) const ENCHANTED_TOKEN_PARAMETER: &str = "t";

pub(crate) fn token_parameter(kind: LinkKind) -> &'static str {
    match kind {
        LinkKind::Enchanted => ENCHANTED_TOKEN_PARAMETER,
        LinkKind::Login | LinkKind::Magic => TOKEN_PARAMETER,
    }
}
const LOGIN_LINK_DEFAULT_MINUTES: u32 = 120;
/// A link's lifetime, whether a request or the config sets it.
pub const LINK_MIN_MINUTES: u32 = 5;
pub const LINK_MAX_MINUTES: u32 = 10_080;
/// A session's lifetime, whether a request or the config sets it.
pub const SESSION_MIN_MINUTES: u32 = 5;
pub const SESSION_MAX_MINUTES: u32 = 525_600;

#[derive(Debug, Default)]
pub struct IssueLoginLink {
    pub user: Option<UserRef>,
    pub first_name: String,
    pub last_name: String,
    pub redirect_url: String,
    pub expiration_minutes: u32,
    pub code_challenge: String,
    /// An OAuth authorization request: verifying the link then yields an authorization code.
    pub oauth: Option<OAuthParams>,
}

#[derive(Debug)]
pub struct IssuedLink {
    pub link: String,
    pub user_id: String,
    pub user_created: bool,
    pub expires_at: Millis,
    pub reused: bool,
}

#[derive(Debug)]
pub struct Inspection {
    pub kind: LinkKind,
    pub masked_email: String,
    pub expires_at: Millis,
    pub pkce_required: bool,
    /// The user has signed in before (false for a sign-up still to be confirmed).
    pub user_exists: bool,
    /// The link ends in an OAuth authorization code.
    pub oauth: bool,
    /// The enchanted link's attempt (its pending ref's digest).
    pub attempt: Option<Digest32>,
}

#[derive(Debug)]
pub struct Verification {
    pub user: User,
    pub user_activated: bool,
    pub kind: LinkKind,
    pub outcome: VerifyOutcome,
}

#[derive(Debug)]
pub enum VerifyOutcome {
    /// Login and magic links: a session for the device that clicked.
    Session(Box<NewSession>),
    /// Enchanted links: confirmation only; the starting device collects the session.
    Enchanted { verified_at: Millis },
    /// OAuth login links: an authorization code for the client.
    Authorization {
        code: String,
        redirect_url: String,
        expires_at: Millis,
    },
}

/// Email links are for client users in good standing: not disabled, no second factor, not staff.
pub(crate) fn check_may_use_links(user: &User) -> Result<()> {
    if user.status == UserStatus::Disabled {
        return Err(Error::new(Reason::USER_DISABLED, "this user is disabled"));
    }
    if user.mfa_enabled {
        return Err(Error::new(
            Reason::MFA_ENABLED,
            "this user has two-factor authentication and cannot use email links",
        ));
    }
    if user.role == Role::Staff {
        return Err(Error::new(
            Reason::STAFF_USER,
            "staff users cannot sign in with email links",
        ));
    }
    Ok(())
}

impl Domain {
    /// A link's token: HMAC(server key, seed), stamped with the link's creation time. A link stored
    /// before stamps keeps its unstamped token, which its key (a plain SHA-256) was made from.
    fn link_token(&self, link: &Link) -> String {
        let body = self.server_key.derive(TOKEN_LABEL, &link.seed);
        let stamped = stamped_secret(link.created_at, &body);
        if Digest32::of_secret(&stamped) == link.token_digest {
            stamped
        } else {
            base64url(&body)
        }
    }

    /// A new, unused link and its token (which `link_token` derives again later).
    pub(crate) fn new_link(
        &self,
        kind: LinkKind,
        user_id: &str,
        redirect: &url::Url,
        minutes: u32,
        code_challenge: Option<String>,
        now: Millis,
    ) -> (Link, String) {
        let seed = random_bytes();
        let token = stamped_secret(now, &self.server_key.derive(TOKEN_LABEL, &seed));
        let link = Link {
            token_digest: Digest32::of_secret(&token),
            seed,
            kind,
            user_id: user_id.to_string(),
            redirect_url: redirect.to_string(),
            created_at: now,
            expires_at: now + Millis::from(minutes) * MINUTE,
            used_at: None,
            code_challenge,
            reuse_key: None,
            attempt: None,
            oauth: None,
            otp: None,
        };
        (link, token)
    }

    /// The URL a person clicks: the link's redirect URL with its token, derived again from the
    /// server key (the mail worker renders emails with it).
    pub fn link_url(&self, link: &Link) -> String {
        link_with_token(&link.redirect_url, token_parameter(link.kind), &self.link_token(link))
    }

    /// The request's redirect URL, or the configured default, checked against the allow-list;
    /// `token_parameter` is the query parameter the token will go in.
    pub(crate) fn redirect_with_default(
        &self,
        field: &'static str,
        raw: &str,
        token_parameter: &str,
    ) -> Result<url::Url> {
        let raw = match (raw.trim(), &self.settings.default_redirect_url) {
            ("", Some(default)) => default.as_str(),
            ("", None) => {
                return Err(Error::new(
                    Reason::NO_REDIRECT_URL,
                    format!("no {field} given and none configured"),
                ));
            }
            (raw, _) => raw,
        };
        self.settings.redirects.check(field, raw, token_parameter)
    }

    pub async fn issue_login_link(&self, request: IssueLoginLink) -> Result<IssuedLink> {
        let oauth = request
            .oauth
            .as_ref()
            .map(|params| self.validate_oauth(params, super::oauth::Pkce::Required))
            .transpose()?;
        let minutes = validate::minutes(
            "expiration_minutes",
            request.expiration_minutes,
            LOGIN_LINK_DEFAULT_MINUTES,
            LINK_MIN_MINUTES,
            LINK_MAX_MINUTES,
        )?;
        // An OAuth link needs no landing page of the caller's: the hosted confirm page turns it
        // into the authorization code.
        let redirect = match (&oauth, request.redirect_url.trim(), &self.settings.sign_in_confirm_url) {
            (Some(_), "", Some(confirm)) => self
                .settings
                .redirects
                .check("redirect_url", confirm, TOKEN_PARAMETER)?,
            _ => self.redirect_with_default("redirect_url", &request.redirect_url, TOKEN_PARAMETER)?,
        };
        let code_challenge = validate::code_challenge("code_challenge", &request.code_challenge)?;
        let user_ref = request.user.clone().ok_or_else(|| Error::missing("user_id"))?;
        // A concurrent call may create the same new user first; then this one links to it.
        user_may_appear!(async {
            let (user, new_user) = self.resolve_link_user(&user_ref, &request).await?;
            check_may_use_links(&user)?;
            let now = self.clock.now();
            // The same user, redirect URL, challenge, lifetime and OAuth request: the same link.
            let reuse_key = Digest32::of(&format!(
                "login\0{}\0{}\0{}\0{minutes}\0{}",
                user.id,
                redirect.as_str(),
                code_challenge.as_deref().unwrap_or_default(),
                oauth
                    .as_ref()
                    .map(|o| serde_json::to_string(o).expect("serializes"))
                    .unwrap_or_default()
            ));
            let (mut link, token) = self.new_link(
                LinkKind::Login,
                &user.id,
                &redirect,
                minutes,
                code_challenge.clone(),
                now,
            );
            link.reuse_key = Some(reuse_key);
            link.oauth = oauth.clone();
            let created = new_user.is_some();
            match self.store.insert_link(&link, new_user.as_ref(), now).await? {
                LinkInsert::Inserted => Ok(IssuedLink {
                    link: link_with_token(&link.redirect_url, TOKEN_PARAMETER, &token),
                    user_id: user.id,
                    user_created: created,
                    expires_at: link.expires_at,
                    reused: false,
                }),
                LinkInsert::Existing(existing) => {
                    let token = self.link_token(&existing);
                    Ok(IssuedLink {
                        link: link_with_token(&existing.redirect_url, TOKEN_PARAMETER, &token),
                        user_id: user.id,
                        user_created: false,
                        expires_at: existing.expires_at,
                        reused: true,
                    })
                }
            }
        })
    }

    /// The link's user, and the user to create with the link when the email is unknown
    /// (Zapier's quick account creation).
    async fn resolve_link_user(&self, user_ref: &UserRef, request: &IssueLoginLink) -> Result<(User, Option<User>)> {
        match user_ref {
            UserRef::Id(id) => {
                let user = self.store.user(id.trim()).await?;
                let user = user.ok_or_else(|| Error::new(Reason::USER_NOT_FOUND, "no user with this user_id"))?;
                Ok((user, None))
            }
            UserRef::Email(raw) => {
                let email = validate::email("email", raw)?;
                if let Some(user) = self.store.user_by_email(&email).await? {
                    return Ok((user, None));
                }
                let first_name = validate::name("first_name", &request.first_name)?;
                let last_name = validate::name("last_name", &request.last_name)?;
                if first_name.is_empty() {
                    return Err(Error::field(
                        Reason::MISSING_FIELD,
                        "first_name",
                        "first_name is required to create a user",
                    ));
                }
                if last_name.is_empty() {
                    return Err(Error::field(
                        Reason::MISSING_FIELD,
                        "last_name",
                        "last_name is required to create a user",
                    ));
                }
                let user = self.new_user(email, first_name, last_name, UserStatus::Pending);
                Ok((user.clone(), Some(user)))
            }
        }
    }

    pub(crate) fn new_user(&self, email: String, first_name: String, last_name: String, status: UserStatus) -> User {
        let now = self.clock.now();
        User {
            id: super::new_id("user"),
            email,
            first_name,
            last_name,
            status,
            role: Role::Client,
            mfa_enabled: false,
            email_verified: false,
            created_at: now,
            updated_at: now,
            last_login_at: None,
            sessions_revoked_at: None,
            locale: None,
        }
    }

    async fn find_link(&self, raw_token: &str) -> Result<Link> {
        let token = validate::secret("token", raw_token, Reason::TOKEN_NOT_FOUND)?;
        let link = self.store.link(&Digest32::of_secret(token)).await?;
        link.ok_or_else(|| Error::new(Reason::TOKEN_NOT_FOUND, "no such token"))
    }

    pub async fn inspect_token(&self, raw_token: &str) -> Result<Inspection> {
        let link = self.find_link(raw_token).await?;
        check_usable(&link, self.clock.now())?;
        let user = self.store.user(&link.user_id).await?;
        let user = user.ok_or_else(|| Error::new(Reason::TOKEN_NOT_FOUND, "no such token"))?;
        if let Some(ref_digest) = &link.attempt {
            let attempt = self.store.attempt(ref_digest).await?;
            check_attempt_open(
                &attempt.ok_or_else(|| Error::new(Reason::TOKEN_NOT_FOUND, "no such token"))?,
                self.clock.now(),
            )?;
        }
        // A landing page should not offer a button that VerifyToken would refuse.
        check_may_use_links(&user)?;
        Ok(Inspection {
            kind: link.kind,
            masked_email: validate::mask_email(&user.email),
            expires_at: link.expires_at,
            pkce_required: link.code_challenge.is_some(),
            user_exists: user.status != UserStatus::Pending,
            oauth: link.oauth.is_some(),
            attempt: link.attempt,
        })
    }

    pub async fn verify_token(
        &self,
        raw_token: &str,
        code_verifier: &str,
        session_minutes: u32,
        client: Option<ClientInfo>,
    ) -> Result<Verification> {
        let token = validate::secret("token", raw_token, Reason::TOKEN_NOT_FOUND)?;
        let verifier = validate::code_verifier("code_verifier", code_verifier)?;
        let session_minutes = validate::minutes(
            "session_duration_minutes",
            session_minutes,
            self.settings.session_default_minutes,
            SESSION_MIN_MINUTES,
            SESSION_MAX_MINUTES,
        )?;
        let client = client.map(ClientInfo::validated).transpose()?;
        let now = self.clock.now();
        // Made before the atomic step: a store may run the decision more than once, and each run must
        // hand out the same session.
        let (session, session_token) = self.new_session_record(now, session_minutes);
        let code_secret = new_secret(now);
        let decide = |link: &Link, user: &User, attempt: Option<&Attempt>| -> Result<Redemption> {
            check_usable(link, now)?;
            if let Some(attempt) = attempt {
                check_attempt_open(attempt, now)?;
            }
            check_may_use_links(user)?;
            check_pkce(link, verifier)?;
            let mut link = link.clone();
            link.used_at = Some(now);
            if let Some(attempt) = attempt
                && attempt.right_link != link.token_digest
            {
                // A wrong number: the whole attempt is off, and that is written.
                let mut attempt = attempt.clone();
                attempt.status = AttemptStatus::Failed;
                let refusal = Error::new(
                    Reason::WRONG_ENCHANTED_LINK,
                    "that was not the link with the number shown on the other screen; this sign-in is cancelled",
                );
                let user = user.clone();
                return Ok(Redemption {
                    link,
                    user,
                    attempt: Some(attempt),
                    code: None,
                    refusal: Some(refusal),
                    user_activated: false,
                    session: None,
                });
            }
            let (user, user_activated) = signed_in(user, now);
            let (attempt, code, session) = match (attempt, &link.oauth) {
                // The session goes to whoever polls, not to the device that clicked.
                (Some(attempt), _) => {
                    let mut attempt = attempt.clone();
                    attempt.status = AttemptStatus::Verified;
                    attempt.verified_at = Some(now);
                    (Some(attempt), None, None)
                }
                // The client exchanges the code for tokens and a session.
                (None, Some(request)) => (None, Some(self.new_code(&code_secret, &user, request, now)), None),
                (None, None) => (
                    None,
                    None,
                    Some(Session {
                        user_id: user.id.clone(),
                        link_kind: link.kind,
                        client: client.clone(),
                        ..session.clone()
                    }),
                ),
            };
            Ok(Redemption {
                link,
                user,
                attempt,
                code,
                refusal: None,
                user_activated,
                session,
            })
        };
        let redemption = self.store.redeem_link(&Digest32::of_secret(token), &decide).await?;
        if let Some(attempt) = &redemption.attempt {
            self.wakeups.notify(Topic::Attempt(attempt.ref_digest));
        }
        if let Some(refusal) = redemption.refusal {
            return Err(refusal);
        }
        let outcome = match (redemption.session, &redemption.code) {
            (Some(session), _) => VerifyOutcome::Session(Box::new(self.issue_session_jwt(
                session,
                session_token,
                &redemption.user,
                now,
            ))),
            (None, Some(code)) => VerifyOutcome::Authorization {
                redirect_url: callback_url(&code.request, &code_secret),
                code: code_secret,
                expires_at: code.expires_at,
            },
            (None, None) => VerifyOutcome::Enchanted { verified_at: now },
        };
        Ok(Verification {
            user: redemption.user,
            user_activated: redemption.user_activated,
            kind: redemption.link.kind,
            outcome,
        })
    }
}

/// An enchanted link works only while its attempt waits for a click.
pub(crate) fn check_attempt_open(attempt: &Attempt, now: Millis) -> Result<()> {
    match attempt.status {
        AttemptStatus::Failed => Err(Error::new(
            Reason::WRONG_ENCHANTED_LINK,
            "this sign-in was cancelled: a link with the wrong number was used, or too many wrong codes were tried",
        )),
        AttemptStatus::Verified | AttemptStatus::Collected => Err(Error::new(
            Reason::TOKEN_ALREADY_USED,
            "this sign-in was already completed",
        )),
        AttemptStatus::Pending if attempt.expires_at <= now => {
            Err(Error::new(Reason::TOKEN_EXPIRED, "this link has expired"))
        }
        AttemptStatus::Pending => Ok(()),
    }
}

/// The same-device check of a link issued with a code_challenge.
pub(crate) fn check_pkce(link: &Link, verifier: Option<&str>) -> Result<()> {
    let Some(challenge) = &link.code_challenge else {
        return Ok(());
    };
    let verifier = verifier.ok_or_else(|| {
        Error::new(
            Reason::PKCE_REQUIRED,
            "this link was issued with a code_challenge: send its code_verifier",
        )
    })?;
    if !pkce::matches(challenge, verifier) {
        return Err(Error::new(
            Reason::PKCE_MISMATCH,
            "the code_verifier does not match the link's code_challenge",
        ));
    }
    Ok(())
}

/// The user after proving the email: verified, signed in now, and ACTIVE if it was PENDING
/// (then the flag is true).
pub(crate) fn signed_in(user: &User, now: Millis) -> (User, bool) {
    let mut user = user.clone();
    let activated = user.status == UserStatus::Pending;
    if activated {
        user.status = UserStatus::Active;
    }
    user.email_verified = true;
    user.last_login_at = Some(now);
    user.updated_at = now;
    (user, activated)
}

/// Used before expired: a used link says so even after it would have expired.
pub(crate) fn check_usable(link: &Link, now: Millis) -> Result<()> {
    if link.used_at.is_some() {
        return Err(Error::new(Reason::TOKEN_ALREADY_USED, "this link was already used"));
    }
    if link.expires_at <= now {
        return Err(Error::new(Reason::TOKEN_EXPIRED, "this link has expired"));
    }
    Ok(())
}
