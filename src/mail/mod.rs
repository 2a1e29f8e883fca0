//! Mail: the built-in and custom templates, the transports (SMTP or files) and the SMTP
//! connection pool, the worker that drains the outbox the store keeps (on a runtime thread of its
//! own), and the sampler behind the outbox's admission limit.

pub mod outbox_sampler;
pub mod runtime;
pub mod smtp;
pub mod templates;
pub mod transport;
pub mod worker;
