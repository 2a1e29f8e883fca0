//! The gRPC edge: one file per service, request conversion, the API-key check, and the one place
//! domain errors become statuses. Nothing below this module sees a proto type.

pub mod auth;
pub mod codec;
pub mod convert;
pub mod emails;
pub mod error;
pub mod idempotency;
pub mod passwordless;
pub mod sessions;
pub mod users;

/// The generated `latchkey.v1` types, clients and servers.
#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("latchkey.v1");

    /// Everything reflection serves about latchkey.v1.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("latchkey_descriptor");
    /// google/rpc/status.proto and error_details.proto, so reflection clients can decode details.
    pub const GOOGLE_RPC_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("google_rpc_descriptor");
}

/// Full service names, as clients, probes and health checks use them.
pub const SERVICE_NAMES: [&str; 4] = [
    "latchkey.v1.Passwordless",
    "latchkey.v1.Sessions",
    "latchkey.v1.Users",
    "latchkey.v1.Emails",
];
