//! The domain's errors: a stable reason (docs/api.md lists them) and a message for people.
//!
//! Each reason belongs to exactly one gRPC code, so `Reason::code` is the whole reason table; the
//! api layer turns an `Error` into a `Status` in one place.

use std::time::Duration;

/// The gRPC codes the domain speaks, without depending on tonic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    Internal,
}

macro_rules! reasons {
    ($($code:ident => [$($reason:ident),* $(,)?]),* $(,)?) => {
        /// Stable, upper-case error reasons carried in `google.rpc.ErrorInfo`.
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason { $($($reason,)*)* }

        impl Reason {
            pub fn code(self) -> Code {
                match self { $($(Reason::$reason => Code::$code,)*)* }
            }

            pub fn as_str(self) -> &'static str {
                match self { $($(Reason::$reason => stringify!($reason),)*)* }
            }
        }
    };
}

reasons! {
    InvalidArgument => [
        INVALID_EMAIL, INVALID_URL, REDIRECT_NOT_ALLOWED, EXPIRATION_OUT_OF_RANGE,
        INVALID_CODE_CHALLENGE, INVALID_CODE_VERIFIER, TEMPLATE_NOT_FOUND, UNSUPPORTED_GRANT_TYPE,
        MISSING_FIELD, INVALID_PAGE_TOKEN,
        // Beyond the product's original reason table; documented in docs/api.md.
        INVALID_VALUE, INVALID_FIELD_MASK, INVALID_SCOPE, MALFORMED_REQUEST, INVALID_IDEMPOTENCY_KEY,
        IDEMPOTENCY_KEY_REUSED, INVALID_LOCALE,
    ],
    Unauthenticated => [API_KEY_INVALID],
    PermissionDenied => [SCOPE_MISSING, STAFF_USER, CLIENT_NOT_ALLOWED],
    NotFound => [
        USER_NOT_FOUND, TOKEN_NOT_FOUND, PENDING_REF_NOT_FOUND, CODE_NOT_FOUND, SESSION_NOT_FOUND,
        EMAIL_NOT_FOUND,
    ],
    AlreadyExists => [USER_EXISTS],
    FailedPrecondition => [
        TOKEN_EXPIRED, TOKEN_ALREADY_USED, PKCE_REQUIRED, PKCE_MISMATCH, MFA_ENABLED, USER_DISABLED,
        WRONG_ENCHANTED_LINK, CODE_EXPIRED, CODE_ALREADY_USED, REDIRECT_URI_MISMATCH, CLIENT_MISMATCH,
        NO_REDIRECT_URL, SESSION_EXPIRED, SESSION_REVOKED, OTP_INVALID, OTP_ATTEMPTS_EXCEEDED,
    ],
    ResourceExhausted => [RATE_LIMITED, OUTBOX_FULL],
    Unavailable => [SHUTTING_DOWN, STORE_UNAVAILABLE, IDEMPOTENCY_KEY_IN_USE],
    Internal => [INTERNAL],
}

#[derive(Debug)]
pub enum Error {
    /// A failure the caller can act on.
    Rejected {
        reason: Reason,
        message: String,
        /// The request field at fault, reported as a `BadRequest` field violation.
        field: Option<&'static str>,
    },
    /// Too many requests; try again after the delay (`RetryInfo`).
    RateLimited { retry_after: Duration },
    /// The outbox holds more than `mail.outbox_limit` emails; try again after the delay.
    OutboxFull { retry_after: Duration },
    /// Something broke inside. The detail is logged, never shown to the caller.
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Error::Rejected {
            reason,
            message: message.into(),
            field: None,
        }
    }

    /// A problem with one request field.
    pub fn field(reason: Reason, field: &'static str, message: impl Into<String>) -> Self {
        Error::Rejected {
            reason,
            message: message.into(),
            field: Some(field),
        }
    }

    pub fn missing(field: &'static str) -> Self {
        Self::field(Reason::MISSING_FIELD, field, format!("{field} is required"))
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Error::Internal(detail.to_string())
    }

    pub fn reason(&self) -> Reason {
        match self {
            Error::Rejected { reason, .. } => *reason,
            Error::RateLimited { .. } => Reason::RATE_LIMITED,
            Error::OutboxFull { .. } => Reason::OUTBOX_FULL,
            Error::Internal(_) => Reason::INTERNAL,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Rejected { reason, message, .. } => write!(f, "{}: {message}", reason.as_str()),
            Error::RateLimited { retry_after } => write!(f, "rate limited for {retry_after:?}"),
            Error::OutboxFull { retry_after } => write!(f, "outbox full; retry in {retry_after:?}"),
            Error::Internal(detail) => write!(f, "internal: {detail}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_map_to_the_spec_codes() {
        assert_eq!(Reason::TOKEN_EXPIRED.code(), Code::FailedPrecondition);
        assert_eq!(Reason::TOKEN_NOT_FOUND.code(), Code::NotFound);
        assert_eq!(Reason::STAFF_USER.code(), Code::PermissionDenied);
        assert_eq!(Reason::USER_EXISTS.code(), Code::AlreadyExists);
        assert_eq!(Reason::RATE_LIMITED.code(), Code::ResourceExhausted);
        assert_eq!(Reason::STORE_UNAVAILABLE.as_str(), "STORE_UNAVAILABLE");
    }
}
