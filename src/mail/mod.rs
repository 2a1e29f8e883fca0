//! Mail: the built-in and custom templates, the transports (SMTP or files) and the SMTP
//! connection pool, the worker that drains the outbox the store keeps, and the sampler behind
//! the outbox's admission limit.

pub mod outbox_sampler;
pub mod smtp;
pub mod templates;
pub mod transport;
pub mod worker;
