//! Mail: the built-in and custom templates, the transports (SMTP or files), and the worker that
//! drains the outbox the store keeps.

pub mod templates;
pub mod transport;
pub mod worker;
