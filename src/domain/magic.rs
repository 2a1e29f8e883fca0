//! LoginOrCreate (Stytch-style magic links): email an active user a login link, a new or pending user a
//! sign-up link. The user, the link and the email enter the store in one step; the mail worker
//! sends it.

use super::error::{Error, Reason, Result};
use super::links::{LINK_MAX_MINUTES, LINK_MIN_MINUTES, check_may_use_links};
use super::locale;
use super::model::{Email, EmailKind, EmailLink, LinkKind, User, UserStatus, email_key};
use super::store::{NewEmail, RateCharge};
use super::wakeups::Topic;
use super::{Domain, user_may_appear, validate};

const LOGIN_DEFAULT_MINUTES: u32 = 60;
const SIGNUP_DEFAULT_MINUTES: u32 = 10_080;

#[derive(Debug, Default)]
pub struct LoginOrCreate {
    pub email: String,
    pub login_url: String,
    pub signup_url: String,
    pub login_minutes: u32,
    pub signup_minutes: u32,
    pub login_template: String,
    pub signup_template: String,
    pub create_user_as_pending: bool,
    pub code_challenge: String,
    /// The email's language (BCP 47); empty: the user's, else the default. Stored on a new user.
    pub locale: String,
    /// Show a one-time code beside the link; unset: `otp.include_by_default`.
    pub include_otp: Option<bool>,
}

#[derive(Debug)]
pub struct QueuedEmail {
    pub user_id: String,
    pub user_created: bool,
    pub email_id: String,
}

/// What an email is to say: which template, in which language the request asked for (if any).
pub(crate) struct Wording<'a> {
    pub kind: EmailKind,
    /// A custom template; `None`: the built-in one for `kind`.
    pub template_id: Option<String>,
    pub locale: Option<&'a str>,
}

/// The rate-limit bucket of a recipient.
pub(crate) fn rate_key(email: &str) -> String {
    format!("recipient:{}", email_key(email))
}

impl Domain {
    /// An optional custom template id: empty means the built-in one.
    pub(crate) fn template_id(&self, field: &'static str, raw: &str) -> Result<Option<String>> {
        let id = raw.trim();
        if id.is_empty() {
            return Ok(None);
        }
        if !self.mail.templates.contains(id) {
            return Err(Error::field(
                Reason::TEMPLATE_NOT_FOUND,
                field,
                format!("no email template {id:?}"),
            ));
        }
        Ok(Some(id.to_string()))
    }

    /// A redirect URL from the request (checked against the allow-list), or none.
    fn requested_url(&self, field: &'static str, raw: &str) -> Result<Option<url::Url>> {
        if raw.trim().is_empty() {
            return Ok(None);
        }
        self.settings
            .redirects
            .check(field, raw, super::links::TOKEN_PARAMETER)
            .map(Some)
    }

    fn magic_url_default(&self, signup: bool) -> Result<url::Url> {
        let (field, configured) = if signup {
            ("signup_magic_link_url", &self.settings.signup_magic_link_url)
        } else {
            ("login_magic_link_url", &self.settings.login_magic_link_url)
        };
        let default = configured
            .as_ref()
            .or(self.settings.default_redirect_url.as_ref())
            .ok_or_else(|| Error::new(Reason::NO_REDIRECT_URL, format!("no {field} given and none configured")))?;
        self.settings
            .redirects
            .check(field, default, super::links::TOKEN_PARAMETER)
    }

    pub async fn login_or_create(&self, request: LoginOrCreate) -> Result<QueuedEmail> {
        let email = validate::email("email", &request.email)?;
        let login_minutes = validate::minutes(
            "login_expiration_minutes",
            request.login_minutes,
            LOGIN_DEFAULT_MINUTES,
            LINK_MIN_MINUTES,
            LINK_MAX_MINUTES,
        )?;
        let signup_minutes = validate::minutes(
            "signup_expiration_minutes",
            request.signup_minutes,
            SIGNUP_DEFAULT_MINUTES,
            LINK_MIN_MINUTES,
            LINK_MAX_MINUTES,
        )?;
        let login_url = self.requested_url("login_magic_link_url", &request.login_url)?;
        let signup_url = self.requested_url("signup_magic_link_url", &request.signup_url)?;
        let login_template = self.template_id("login_template_id", &request.login_template)?;
        let signup_template = self.template_id("signup_template_id", &request.signup_template)?;
        let code_challenge = validate::code_challenge("code_challenge", &request.code_challenge)?;
        let locale = locale::tag("locale", &request.locale)?;
        let include_otp = self.include_otp(request.include_otp);
        self.mail.outbox_limit.admit()?;
        let rate_limit = self.mail.rate_limit;
        let rate = (!rate_limit.is_off()).then(|| rate_key(&email));

        // A concurrent call may create the same new user first; then this one mails that user.
        user_may_appear!(async {
            let (user, new_user) = match self.store.user_by_email(&email).await? {
                Some(user) => {
                    check_may_use_links(&user)?;
                    (user, None)
                }
                None => {
                    let status = if request.create_user_as_pending {
                        UserStatus::Pending
                    } else {
                        UserStatus::Active
                    };
                    let user = User {
                        locale: locale.clone(),
                        ..self.new_user(email.clone(), String::new(), String::new(), status)
                    };
                    (user.clone(), Some(user))
                }
            };
            let signup = new_user.is_some() || user.status == UserStatus::Pending;
            let (url, minutes, template_id, kind) = if signup {
                (
                    signup_url.clone(),
                    signup_minutes,
                    signup_template.clone(),
                    EmailKind::Signup,
                )
            } else {
                (
                    login_url.clone(),
                    login_minutes,
                    login_template.clone(),
                    EmailKind::Login,
                )
            };
            let url = match url {
                Some(url) => url,
                None => self.magic_url_default(signup)?,
            };
            let now = self.clock.now();
            let (mut link, _) = self.new_link(LinkKind::Magic, &user.id, &url, minutes, code_challenge.clone(), now);
            if include_otp {
                self.attach_otp(&mut link);
            }
            let wording = Wording {
                kind,
                template_id,
                locale: locale.as_deref(),
            };
            let queued = self.queue_email(
                &user,
                wording,
                now,
                vec![EmailLink {
                    token_digest: link.token_digest,
                    number: None,
                    otp: include_otp,
                }],
                link.expires_at,
            );
            let outcome = self
                .store
                .insert_email(NewEmail {
                    links: std::slice::from_ref(&link),
                    attempt: None,
                    new_user: new_user.as_ref(),
                    email: &queued,
                    rate: rate.as_deref().map(|key| RateCharge {
                        key,
                        limit: &rate_limit,
                    }),
                    now,
                })
                .await;
            outcome?;
            self.wakeups.notify(Topic::Outbox);
            Ok(QueuedEmail {
                user_id: user.id,
                user_created: new_user.is_some(),
                email_id: queued.id,
            })
        })
    }

    /// An outbox record for `user`, due now, in the language the request asked for, else the
    /// user's, else the default: the language is settled here, so a later change to the user or
    /// the config does not change an email already queued.
    pub(crate) fn queue_email(
        &self,
        user: &User,
        wording: Wording<'_>,
        now: super::model::Millis,
        links: Vec<EmailLink>,
        link_expires_at: super::model::Millis,
    ) -> Email {
        Email {
            id: super::new_id("email"),
            recipient: user.email.clone(),
            user_id: user.id.clone(),
            first_name: user.first_name.clone(),
            last_name: user.last_name.clone(),
            kind: wording.kind,
            template_id: wording.template_id,
            links,
            link_expires_at,
            status: super::model::EmailStatus::Queued,
            attempts: 0,
            last_error: None,
            created_at: now,
            next_attempt_at: now,
            sent_at: None,
            locale: locale::resolve(wording.locale, user.locale.as_deref(), &self.mail.default_locale),
        }
    }
}
