//! One-time codes beside email links, and VerifyOtp. A code belongs to one link of its email (a
//! magic link, or an enchanted email's right link): the code and the links are one credential, so
//! verifying either sets the link's `used_at` and the other is refused from then on.
//!
//! The code is never stored: the mail worker derives it again from the link's seed under the
//! server key, and the link keeps only an HMAC of it (a plain hash of a 6-digit code would be
//! reversed in a moment), compared in constant time. Wrong codes are counted on the link inside the
//! store's atomic redemption, so racing guesses cannot count past the limit.

use super::error::{Error, Reason, Result};
use super::links::{
    SESSION_MAX_MINUTES, SESSION_MIN_MINUTES, Verification, VerifyOutcome, check_attempt_open, check_may_use_links,
    check_pkce, check_usable, signed_in,
};
use super::model::{Attempt, AttemptStatus, ClientInfo, Link, LinkOtp, Millis, OTP_MAX_FAILURES, Session, User};
use super::store::Redemption;
use super::wakeups::Topic;
use super::{Domain, validate};
use crate::crypto::{Digest32, constant_time_eq};

const CODE_LABEL: &str = "latchkey/link-otp/v1";
const DIGEST_LABEL: &str = "latchkey/link-otp-digest/v1";
/// A code's length, whether the config or a stored link sets it.
pub const OTP_MIN_DIGITS: u8 = 6;
pub const OTP_MAX_DIGITS: u8 = 10;

#[derive(Debug, Default)]
pub struct VerifyOtp {
    pub email_id: String,
    pub otp: String,
    pub code_verifier: String,
    pub session_minutes: u32,
    pub client: Option<ClientInfo>,
}

fn attempts_exceeded() -> Error {
    Error::new(
        Reason::OTP_ATTEMPTS_EXCEEDED,
        "too many wrong codes were tried: this email's code and links no longer work; ask for a new email",
    )
}

/// What a person typed: digits only (spaces around them are dropped), 6-10 of them.
fn typed_code(raw: &str) -> Result<&str> {
    let code = raw.trim();
    if code.is_empty() {
        return Err(Error::missing("otp"));
    }
    let digits = OTP_MIN_DIGITS as usize..=OTP_MAX_DIGITS as usize;
    if !digits.contains(&code.len()) || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::field(
            Reason::INVALID_VALUE,
            "otp",
            "otp is 6 to 10 digits, as the email shows it",
        ));
    }
    Ok(code)
}

impl Domain {
    /// The code of a link that carries one: `digits` decimal digits taken from HMAC(server key,
    /// seed). The bias of reducing 64 bits modulo at most 10^10 is below 10^-9.
    pub(crate) fn otp_code(&self, link: &Link, digits: u8) -> String {
        let mac = self.server_key.derive(CODE_LABEL, &link.seed);
        let value = u64::from_be_bytes(mac[..8].try_into().expect("8 bytes")) % 10u64.pow(u32::from(digits));
        format!("{value:0width$}", width = usize::from(digits))
    }

    /// The keyed digest a link keeps of its code, bound to the link.
    fn otp_digest(&self, link: &Link, code: &str) -> Digest32 {
        let mut data = Vec::with_capacity(32 + code.len());
        data.extend_from_slice(link.token_digest.as_bytes());
        data.extend_from_slice(code.as_bytes());
        Digest32(self.server_key.derive(DIGEST_LABEL, &data))
    }

    /// Whether an email carries a code: the request's choice, else the config's default.
    pub(crate) fn include_otp(&self, requested: Option<bool>) -> bool {
        requested.unwrap_or(self.settings.otp_by_default)
    }

    /// Gives a new link a code of the configured length.
    pub(crate) fn attach_otp(&self, link: &mut Link) {
        let digits = self.settings.otp_digits;
        let code = self.otp_code(link, digits);
        link.otp = Some(LinkOtp {
            digest: self.otp_digest(link, &code),
            digits,
            failures: 0,
        });
    }

    /// The code to show in a link's email, if the link carries one.
    pub fn link_otp(&self, link: &Link) -> Option<String> {
        link.otp.map(|otp| self.otp_code(link, otp.digits))
    }

    /// Uses an email's code up: a session for the caller, as VerifyToken gives for the link (for an
    /// enchanted email too: its attempt is then COLLECTED). Reasons, in order: MISSING_FIELD,
    /// INVALID_VALUE, INVALID_CODE_VERIFIER, EXPIRATION_OUT_OF_RANGE, EMAIL_NOT_FOUND,
    /// OTP_INVALID (no code in this email), TOKEN_NOT_FOUND (the user was deleted),
    /// OTP_ATTEMPTS_EXCEEDED, TOKEN_ALREADY_USED,
    /// TOKEN_EXPIRED, WRONG_ENCHANTED_LINK, then OTP_INVALID for a wrong code (counted; the 5th
    /// burns the code and links: OTP_ATTEMPTS_EXCEEDED), then USER_DISABLED, MFA_ENABLED,
    /// STAFF_USER, PKCE_REQUIRED, PKCE_MISMATCH (these do not use the code up).
    pub async fn verify_otp(&self, request: VerifyOtp) -> Result<Verification> {
        let email_id = request.email_id.trim();
        if email_id.is_empty() {
            return Err(Error::missing("email_id"));
        }
        let code = typed_code(&request.otp)?;
        let verifier = validate::code_verifier("code_verifier", &request.code_verifier)?;
        let session_minutes = validate::minutes(
            "session_duration_minutes",
            request.session_minutes,
            self.settings.session_default_minutes,
            SESSION_MIN_MINUTES,
            SESSION_MAX_MINUTES,
        )?;
        let client = request.client.map(ClientInfo::validated).transpose()?;
        let email = self.store.email(email_id).await?;
        let email = email.ok_or_else(|| Error::new(Reason::EMAIL_NOT_FOUND, "no email with this email_id"))?;
        let carrier = email
            .links
            .iter()
            .find(|link| link.otp)
            .ok_or_else(|| Error::new(Reason::OTP_INVALID, "this email was sent without a code: use its link"))?;
        let now = self.clock.now();
        // Made before the atomic step: a store may run the decision more than once, and each run
        // must hand out the same session.
        let (session, session_token) = self.new_session_record(now, session_minutes);
        let decide = |link: &Link, user: &User, attempt: Option<&Attempt>| -> Result<Redemption> {
            let otp = link
                .otp
                .ok_or_else(|| Error::internal("the email's code link has no code"))?;
            if otp.failures >= OTP_MAX_FAILURES {
                return Err(attempts_exceeded());
            }
            check_usable(link, now)?;
            if let Some(attempt) = attempt {
                check_attempt_open(attempt, now)?;
            }
            if !constant_time_eq(self.otp_digest(link, code).as_bytes(), otp.digest.as_bytes()) {
                return Ok(self.wrong_code(link, otp, user, attempt, now));
            }
            check_may_use_links(user)?;
            check_pkce(link, verifier)?;
            let mut link = link.clone();
            link.used_at = Some(now);
            let (user, user_activated) = signed_in(user, now);
            let session = Session {
                user_id: user.id.clone(),
                link_kind: link.kind,
                via_otp: true,
                client: client.clone(),
                claims: attempt.map(|attempt| attempt.claims.clone()).unwrap_or_default(),
                ..session.clone()
            };
            // An enchanted email's code signs in the device that typed it: the attempt is over,
            // and the starting device's poll sees COLLECTED.
            let attempt = attempt.map(|attempt| Attempt {
                status: AttemptStatus::Collected,
                verified_at: Some(now),
                session_id: Some(session.id.clone()),
                ..attempt.clone()
            });
            Ok(Redemption {
                link,
                user,
                attempt,
                code: None,
                refusal: None,
                user_activated,
                session: Some(session),
            })
        };
        let redemption = self.store.redeem_link(&carrier.token_digest, &decide).await?;
        if let Some(attempt) = &redemption.attempt {
            self.wakeups.notify(Topic::Attempt(attempt.ref_digest));
        }
        if let Some(refusal) = redemption.refusal {
            return Err(refusal);
        }
        let session = redemption
            .session
            .ok_or_else(|| Error::internal("a verified code made no session"))?;
        Ok(Verification {
            outcome: VerifyOutcome::Session(Box::new(self.issue_session_jwt(
                session,
                session_token,
                &redemption.user,
                now,
            ))),
            user: redemption.user,
            user_activated: redemption.user_activated,
            kind: redemption.link.kind,
        })
    }

    /// A wrong code, written: one more failure on the link; the last allowed one burns the link
    /// (and fails an enchanted attempt, so its other links and its poll stop too).
    fn wrong_code(&self, link: &Link, otp: LinkOtp, user: &User, attempt: Option<&Attempt>, now: Millis) -> Redemption {
        let failures = otp.failures + 1;
        let mut link = link.clone();
        link.otp = Some(LinkOtp { failures, ..otp });
        let (attempt, refusal) = if failures >= OTP_MAX_FAILURES {
            link.used_at = Some(now);
            let attempt = attempt.map(|attempt| Attempt {
                status: AttemptStatus::Failed,
                ..attempt.clone()
            });
            (attempt, attempts_exceeded())
        } else {
            let left = OTP_MAX_FAILURES - failures;
            let refusal = Error::field(
                Reason::OTP_INVALID,
                "otp",
                format!(
                    "that is not the code in the email; {left} more wrong {} and it stops working",
                    if left == 1 { "try" } else { "tries" }
                ),
            );
            (None, refusal)
        };
        Redemption {
            link,
            user: user.clone(),
            attempt,
            code: None,
            refusal: Some(refusal),
            user_activated: false,
            session: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_codes_are_digits_of_a_valid_length() {
        assert_eq!(typed_code(" 012345 ").unwrap(), "012345");
        assert_eq!(typed_code("0123456789").unwrap(), "0123456789");
        assert_eq!(typed_code("").unwrap_err().reason(), Reason::MISSING_FIELD);
        for bad in ["12345", "01234567890", "12345a", "123 456", "１２３４５６"] {
            assert_eq!(typed_code(bad).unwrap_err().reason(), Reason::INVALID_VALUE, "{bad}");
        }
    }
}
