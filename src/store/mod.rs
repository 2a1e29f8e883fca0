//! Storage: the sled implementation of `domain::store::Store`, its group commit, its record
//! codec, and the background sweeper that purges expired records.

pub mod codec;
pub mod commit;
pub mod sled_store;
pub mod sweeper;
pub mod writer;

pub use commit::Durability;
pub use sled_store::{OpenError, SledOptions, SledStore};
