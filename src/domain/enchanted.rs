//! Enchanted links (Descope-style): one email with three numbered links, of which only the one
//! whose number the starting device shows signs in; and PollSession, where the starting device
//! long-polls for the click and collects the session exactly once.

use std::time::Duration;

use serde_json::{Map, Value};

use super::error::{Error, Reason, Result};
use super::links::{ENCHANTED_TOKEN_PARAMETER, LINK_MAX_MINUTES, LINK_MIN_MINUTES, check_may_use_links};
use super::magic::{Wording, rate_key};
use super::model::{Attempt, AttemptStatus, ClientInfo, EmailKind, EmailLink, LinkKind, Millis, User, UserStatus};
use super::sessions::NewSession;
use super::store::{Collection, NewEmail, RateCharge};
use super::wakeups::Topic;
use super::{Domain, user_may_appear, validate};
use crate::crypto::{Digest32, new_secret, random_in_range};

const MAX_CUSTOM_CLAIMS_BYTES: usize = 4096;
const MAX_ID_LENGTH: usize = 200;
const MAX_WAIT_SECONDS: u32 = 30;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    SignInOrUp,
    SignUp,
    SignIn,
}

#[derive(Debug, Default)]
pub struct SendEnchantedLink {
    pub login_id: String,
    pub redirect_url: String,
    pub stepup: bool,
    pub mfa: bool,
    pub custom_claims: Map<String, Value>,
    pub provider_id: String,
    pub sso_app_id: String,
    pub mode: Mode,
    pub expiration_minutes: u32,
    pub template_id: String,
    /// The email's language (BCP 47); empty: the user's, else the default. Stored on a new user.
    pub locale: String,
    /// Show a one-time code in the email, which signs in whoever types it (the right link's
    /// twin); unset: `otp.include_by_default`.
    pub include_otp: Option<bool>,
}

#[derive(Debug)]
pub struct SentEnchantedLink {
    /// The number of the right link, "10" to "99".
    pub link_id: String,
    pub pending_ref: String,
    pub masked_email: String,
    pub expires_at: Millis,
    pub user_id: String,
    pub user_created: bool,
    pub email_id: String,
}

#[derive(Debug)]
pub enum PollOutcome {
    Pending,
    Verified { user: User, session: Box<NewSession> },
    Expired,
    Failed,
    Collected,
}

/// Three distinct numbers in 10..=99.
fn three_numbers() -> [u8; 3] {
    let mut numbers = [0u8; 3];
    let mut chosen = 0;
    while chosen < 3 {
        let candidate = random_in_range(10, 99) as u8;
        if !numbers[..chosen].contains(&candidate) {
            numbers[chosen] = candidate;
            chosen += 1;
        }
    }
    numbers
}

fn short_id(field: &'static str, raw: &str) -> Result<Option<String>> {
    let value = raw.trim();
    if value.chars().count() > MAX_ID_LENGTH || value.chars().any(char::is_control) {
        return Err(Error::field(
            Reason::INVALID_VALUE,
            field,
            format!("{field} has at most 200 printable characters"),
        ));
    }
    Ok((!value.is_empty()).then(|| value.to_string()))
}

/// The claims the attempt's session will carry.
fn session_claims(request: &SendEnchantedLink) -> Result<Map<String, Value>> {
    const FIELD: &str = "login_options.custom_claims";
    if let Some(reserved) = request
        .custom_claims
        .keys()
        .find(|k| crate::jwt::RESERVED_CLAIMS.contains(&k.as_str()))
    {
        return Err(Error::field(
            Reason::INVALID_VALUE,
            FIELD,
            format!("{reserved:?} is set by latchkey and cannot be a custom claim"),
        ));
    }
    if serde_json::to_vec(&request.custom_claims).map_or(0, |bytes| bytes.len()) > MAX_CUSTOM_CLAIMS_BYTES {
        return Err(Error::field(
            Reason::INVALID_VALUE,
            FIELD,
            "custom claims take at most 4096 bytes of JSON",
        ));
    }
    let mut claims = request.custom_claims.clone();
    if request.stepup {
        claims.insert("stepup".into(), Value::Bool(true));
    }
    if request.mfa {
        claims.insert("mfa".into(), Value::Bool(true));
    }
    if let Some(provider_id) = short_id("provider_id", &request.provider_id)? {
        claims.insert("provider_id".into(), Value::String(provider_id));
    }
    if let Some(sso_app_id) = short_id("sso_app_id", &request.sso_app_id)? {
        claims.insert("sso_app_id".into(), Value::String(sso_app_id));
    }
    Ok(claims)
}

impl Domain {
    pub async fn send_enchanted_link(&self, request: SendEnchantedLink) -> Result<SentEnchantedLink> {
        let email = validate::email("login_id", &request.login_id)?;
        let redirect = self.redirect_with_default("redirect_url", &request.redirect_url, ENCHANTED_TOKEN_PARAMETER)?;
        let minutes = validate::minutes(
            "expiration_minutes",
            request.expiration_minutes,
            self.settings.enchanted_default_minutes,
            LINK_MIN_MINUTES,
            LINK_MAX_MINUTES,
        )?;
        let template_id = self.template_id("template_id", &request.template_id)?;
        let claims = session_claims(&request)?;
        let locale = super::locale::tag("locale", &request.locale)?;
        let include_otp = self.include_otp(request.include_otp);
        self.mail.outbox_limit.admit()?;
        let rate_limit = self.mail.rate_limit;
        let rate = (!rate_limit.is_off()).then(|| rate_key(&email));

        // A concurrent call may create the same new user first; then this one signs that user in.
        user_may_appear!(async {
            let (user, new_user) = match self.store.user_by_email(&email).await? {
                Some(_) if request.mode == Mode::SignUp => {
                    return Err(Error::new(
                        Reason::USER_EXISTS,
                        "a user with this email exists (mode SIGN_UP)",
                    ));
                }
                Some(user) => {
                    check_may_use_links(&user)?;
                    (user, None)
                }
                None if request.mode == Mode::SignIn => {
                    return Err(Error::new(
                        Reason::USER_NOT_FOUND,
                        "no user with this email (mode SIGN_IN)",
                    ));
                }
                None => {
                    let user = User {
                        locale: locale.clone(),
                        ..self.new_user(email.clone(), String::new(), String::new(), UserStatus::Pending)
                    };
                    (user.clone(), Some(user))
                }
            };
            let now = self.clock.now();
            let pending_ref = new_secret(now);
            let ref_digest = Digest32::of_secret(&pending_ref);
            let numbers = three_numbers();
            let right = random_in_range(0, 2) as usize;
            let mut links: Vec<_> = (0..3)
                .map(|_| {
                    let (mut link, _) = self.new_link(LinkKind::Enchanted, &user.id, &redirect, minutes, None, now);
                    link.attempt = Some(ref_digest);
                    link
                })
                .collect();
            if include_otp {
                self.attach_otp(&mut links[right]);
            }
            let expires_at = links[0].expires_at;
            let attempt = Attempt {
                ref_digest,
                user_id: user.id.clone(),
                status: AttemptStatus::Pending,
                right_link: links[right].token_digest,
                created_at: now,
                expires_at,
                verified_at: None,
                claims: claims.clone(),
                session_id: None,
            };
            let email_links = links
                .iter()
                .zip(numbers)
                .map(|(link, number)| EmailLink {
                    token_digest: link.token_digest,
                    number: Some(number),
                    otp: link.otp.is_some(),
                })
                .collect();
            let wording = Wording {
                kind: EmailKind::Enchanted,
                template_id: template_id.clone(),
                locale: locale.as_deref(),
            };
            let queued = self.queue_email(&user, wording, now, email_links, expires_at);
            let rate = rate.as_deref().map(|key| RateCharge {
                key,
                limit: &rate_limit,
            });
            self.store
                .insert_email(NewEmail {
                    links: &links,
                    attempt: Some(&attempt),
                    new_user: new_user.as_ref(),
                    email: &queued,
                    rate,
                    now,
                })
                .await?;
            self.wakeups.notify(Topic::Outbox);
            Ok(SentEnchantedLink {
                link_id: numbers[right].to_string(),
                pending_ref,
                masked_email: validate::mask_email(&user.email),
                expires_at,
                user_id: user.id,
                user_created: new_user.is_some(),
                email_id: queued.id,
            })
        })
    }

    /// Answers with the attempt's state, holding the call up to `wait_seconds` while it is
    /// PENDING. A VERIFIED attempt is collected here: its session is created and handed to
    /// exactly one poller; later polls say COLLECTED.
    /// `client` is the starting device, kept with the session if this poll collects it.
    pub async fn poll_session(
        &self,
        raw_ref: &str,
        wait_seconds: u32,
        client: Option<ClientInfo>,
    ) -> Result<PollOutcome> {
        let pending_ref = validate::secret("pending_ref", raw_ref, Reason::PENDING_REF_NOT_FOUND)?;
        let client = client.map(ClientInfo::validated).transpose()?;
        if wait_seconds > MAX_WAIT_SECONDS {
            return Err(Error::field(
                Reason::INVALID_VALUE,
                "wait_seconds",
                "wait_seconds is between 0 and 30",
            ));
        }
        let not_found = || Error::new(Reason::PENDING_REF_NOT_FOUND, "no such pending_ref");
        let ref_digest = Digest32::of_secret(pending_ref);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(wait_seconds));
        let _live = LivePoll::new(&self.live_polls);
        loop {
            // Armed before the read, so a click between the read and the wait still wakes us.
            let changed = self.wakeups.watch(Topic::Attempt(ref_digest));
            let attempt = self.store.attempt(&ref_digest).await?.ok_or_else(not_found)?;
            let now = self.clock.now();
            match attempt.status {
                AttemptStatus::Failed => return Ok(PollOutcome::Failed),
                AttemptStatus::Collected => return Ok(PollOutcome::Collected),
                AttemptStatus::Verified => {
                    if let Some(outcome) = self.collect(&attempt, client.as_ref(), now).await? {
                        return Ok(outcome);
                    }
                    continue;
                }
                AttemptStatus::Pending if attempt.expires_at <= now => return Ok(PollOutcome::Expired),
                AttemptStatus::Pending => {}
            }
            let until_expiry = Duration::from_millis((attempt.expires_at - now).max(0) as u64);
            let started = tokio::time::Instant::now();
            if started >= deadline || self.stopping.is_cancelled() {
                return Ok(PollOutcome::Pending);
            }
            // A wake-up lost between processes costs at most one recheck.
            let wake_at = deadline
                .min(started + until_expiry)
                .min(started + self.wakeups.recheck());
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(wake_at) => {}
                () = self.stopping.cancelled() => {}
            }
        }
    }

    /// Creates the session of a VERIFIED attempt if this caller is the one to collect it.
    async fn collect(
        &self,
        attempt: &Attempt,
        client: Option<&ClientInfo>,
        now: Millis,
    ) -> Result<Option<PollOutcome>> {
        let (mut session, token) = self.new_session_record(now, self.settings.session_default_minutes);
        session.user_id = attempt.user_id.clone();
        session.link_kind = LinkKind::Enchanted;
        session.claims = attempt.claims.clone();
        session.client = client.cloned();
        match self.store.collect_attempt(&attempt.ref_digest, &session).await? {
            Some(Collection::Collected(_)) => {
                self.wakeups.notify(Topic::Attempt(attempt.ref_digest));
                let user = self.store.user(&attempt.user_id).await?;
                let user = user.ok_or_else(|| Error::new(Reason::PENDING_REF_NOT_FOUND, "the user was deleted"))?;
                let session = self.issue_session_jwt(session, token, &user, now);
                Ok(Some(PollOutcome::Verified {
                    user,
                    session: Box::new(session),
                }))
            }
            // Another poller collected it first; the next look says COLLECTED.
            Some(Collection::Unchanged(_)) => Ok(None),
            None => Err(Error::new(Reason::PENDING_REF_NOT_FOUND, "no such pending_ref")),
        }
    }
}

/// Counts a PollSession call as waiting until it ends.
struct LivePoll<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> LivePoll<'a> {
    fn new(live: &'a std::sync::atomic::AtomicUsize) -> Self {
        live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(live)
    }
}

impl Drop for LivePoll<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_distinct_two_digit() {
        for _ in 0..1000 {
            let [a, b, c] = three_numbers();
            assert!([a, b, c].iter().all(|n| (10..=99).contains(n)));
            assert!(a != b && b != c && a != c);
        }
    }

    #[test]
    fn custom_claims_cannot_replace_registered_ones() {
        let mut request = SendEnchantedLink {
            stepup: true,
            provider_id: "google".into(),
            ..Default::default()
        };
        request.custom_claims.insert("plan".into(), Value::from("pro"));
        let claims = session_claims(&request).unwrap();
        assert_eq!(claims["plan"], "pro");
        assert_eq!(claims["stepup"], true);
        assert_eq!(claims["provider_id"], "google");
        request.custom_claims.insert("sub".into(), Value::from("someone-else"));
        assert_eq!(session_claims(&request).unwrap_err().reason(), Reason::INVALID_VALUE);
    }
}
