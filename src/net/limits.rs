//! What one peer may hold on either port (`[limits]` in the config): connections, streams, header
//! and message sizes, and how long a connection may stay silent. The defaults suit production;
//! each is a config key, documented in docs/configuration.md.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections per port; past it the port stops accepting until one closes.
    pub max_connections: usize,
    /// HTTP/2 streams one connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// The largest HTTP/2 header list (`SETTINGS_MAX_HEADER_LIST_SIZE`), in bytes.
    pub max_header_list_bytes: u32,
    /// The largest gRPC request message, in bytes.
    pub max_request_bytes: usize,
    /// A new connection must complete its handshake within this: on the gRPC port the TLS
    /// handshake and the HTTP/2 client preface, on the HTTP port its first request head.
    pub handshake_timeout_seconds: u64,
    /// A connection from which nothing arrives for this long is closed (HTTP/2 peers answer the
    /// keep-alive pings, so a live client is never idle this long).
    pub idle_timeout_seconds: u64,
    /// The server pings an HTTP/2 peer this often...
    pub keepalive_interval_seconds: u64,
    /// ...and closes the connection when a ping is not answered within this.
    pub keepalive_timeout_seconds: u64,
    /// The longest a unary call may take (long polls wait at most 30 s, so at least 35).
    pub request_timeout_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_concurrent_streams: 128,
            max_header_list_bytes: 16 * 1024,
            max_request_bytes: 64 * 1024,
            handshake_timeout_seconds: 10,
            idle_timeout_seconds: 300,
            keepalive_interval_seconds: 60,
            keepalive_timeout_seconds: 20,
            request_timeout_seconds: 60,
        }
    }
}

impl Limits {
    /// The first problem found, as (key under `limits.`, what is wrong).
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        let checks: [(bool, &'static str, &'static str); 9] = [
            (
                (1..=1_000_000).contains(&self.max_connections),
                "max_connections",
                "must be between 1 and 1000000",
            ),
            (
                (1..=10_000).contains(&self.max_concurrent_streams),
                "max_concurrent_streams",
                "must be between 1 and 10000",
            ),
            (
                (1024..=1024 * 1024).contains(&self.max_header_list_bytes),
                "max_header_list_bytes",
                "must be between 1024 and 1048576",
            ),
            (
                (4096..=16 * 1024 * 1024).contains(&self.max_request_bytes),
                "max_request_bytes",
                "must be between 4096 and 16777216",
            ),
            (
                (1..=300).contains(&self.handshake_timeout_seconds),
                "handshake_timeout_seconds",
                "must be between 1 and 300",
            ),
            (
                self.idle_timeout_seconds > self.keepalive_interval_seconds + self.keepalive_timeout_seconds
                    && self.idle_timeout_seconds <= 86_400,
                "idle_timeout_seconds",
                "must exceed keepalive_interval_seconds + keepalive_timeout_seconds (live clients answer pings) and be at most 86400",
            ),
            (
                (1..=3600).contains(&self.keepalive_interval_seconds),
                "keepalive_interval_seconds",
                "must be between 1 and 3600",
            ),
            (
                (1..=600).contains(&self.keepalive_timeout_seconds),
                "keepalive_timeout_seconds",
                "must be between 1 and 600",
            ),
            (
                (35..=3600).contains(&self.request_timeout_seconds),
                "request_timeout_seconds",
                "must be between 35 (a long poll waits up to 30 s) and 3600",
            ),
        ];
        match checks.into_iter().find(|(ok, _, _)| !ok) {
            Some((_, key, problem)) => Err((key, problem)),
            None => Ok(()),
        }
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_seconds)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_seconds)
    }

    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_secs(self.keepalive_interval_seconds)
    }

    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_secs(self.keepalive_timeout_seconds)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_each_bound_is_checked() {
        assert_eq!(Limits::default().check(), Ok(()));
        let idle = Limits {
            idle_timeout_seconds: 60,
            ..Limits::default()
        };
        assert_eq!(idle.check().unwrap_err().0, "idle_timeout_seconds");
        let poll = Limits {
            request_timeout_seconds: 30,
            ..Limits::default()
        };
        assert_eq!(poll.check().unwrap_err().0, "request_timeout_seconds");
    }
}
