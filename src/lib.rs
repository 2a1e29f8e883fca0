//! latchkey: a passwordless identity service over gRPC.
//!
//! Module map:
//! - `cli`, `config`, `telemetry`: the binary's edges — flags, layered config, logs.
//! - `app`: builds everything from a validated config, serves, owns shutdown.
//! - `grpc`: the gRPC port, served in generations so new TLS material needs no restart.
//! - `api`: tonic only — one file per service, the API-key interceptor, the one Error→Status map.
//! - `domain`: the flows (links, sessions, users) and the traits they need (store, clock).
//! - `store`: the sled implementation of the store, group commit, expiry sweeping.
//! - `mail`: templates, transports (SMTP, files) and the worker that drains the outbox.
//! - `http`: the HTTP port (JWKS, OpenID discovery, metrics, liveness and readiness).
//! - `reload`: API keys, TLS material and the SMTP password reloaded without a restart.
//! - `net`: the network edge of both ports — connection and stream limits, deadlines.
//! - `metrics`: Prometheus metrics and the tower layer that counts gRPC calls.
//! - `crypto`, `jwt`: secrets, digests, PKCE, derived keys, EdDSA JWTs.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod grpc;
pub mod http;
pub mod jwt;
pub mod mail;
pub mod metrics;
pub mod net;
pub mod reload;
pub mod store;
pub mod supervise;
pub mod telemetry;
