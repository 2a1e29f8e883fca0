//! The one place a domain error becomes a gRPC status: the code from the reason table, a
//! `google.rpc.ErrorInfo` (domain `latchkey`), `BadRequest` field violations, `RetryInfo` for rate
//! limits, and a request id for internal errors (whose detail is logged, never returned).

use std::collections::HashMap;

use tonic::{Code as GrpcCode, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::error::{Code, Error, Reason};

pub const ERROR_DOMAIN: &str = "latchkey";

fn grpc_code(code: Code) -> GrpcCode {
    match code {
        Code::InvalidArgument => GrpcCode::InvalidArgument,
        Code::Unauthenticated => GrpcCode::Unauthenticated,
        Code::PermissionDenied => GrpcCode::PermissionDenied,
        Code::NotFound => GrpcCode::NotFound,
        Code::AlreadyExists => GrpcCode::AlreadyExists,
        Code::FailedPrecondition => GrpcCode::FailedPrecondition,
        Code::ResourceExhausted => GrpcCode::ResourceExhausted,
        Code::Unavailable => GrpcCode::Unavailable,
        Code::Internal => GrpcCode::Internal,
    }
}

fn status(reason: Reason, message: String, mut details: ErrorDetails, metadata: HashMap<String, String>) -> Status {
    details.set_error_info(reason.as_str(), ERROR_DOMAIN, metadata);
    Status::with_error_details(grpc_code(reason.code()), message, details)
}

pub fn to_status(error: Error) -> Status {
    match error {
        Error::Rejected { reason, message, field } => {
            let mut details = ErrorDetails::new();
            if let Some(field) = field {
                details.add_bad_request_violation(field, message.clone());
            }
            tracing::debug!(reason = reason.as_str(), %message, "request rejected");
            status(reason, message, details, HashMap::new())
        }
        Error::RateLimited { retry_after } => {
            let details = ErrorDetails::with_retry_info(Some(retry_after));
            let message = format!("too many requests; retry in {} s", retry_after.as_secs().max(1));
            status(Reason::RATE_LIMITED, message, details, HashMap::new())
        }
        Error::OutboxFull { retry_after } => {
            let details = ErrorDetails::with_retry_info(Some(retry_after));
            let message = format!(
                "too much mail is waiting to be sent (over mail.outbox_limit); nothing was queued; retry in {} s",
                retry_after.as_secs().max(1)
            );
            status(Reason::OUTBOX_FULL, message, details, HashMap::new())
        }
        Error::Internal(detail) => {
            let request_id = uuid::Uuid::now_v7().to_string();
            tracing::error!(%request_id, %detail, "internal error");
            let mut details = ErrorDetails::new();
            details.set_request_info(request_id.clone(), "");
            let metadata = HashMap::from([("request_id".to_string(), request_id.clone())]);
            status(
                Reason::INTERNAL,
                format!("internal error (request id {request_id})"),
                details,
                metadata,
            )
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        to_status(error)
    }
}
