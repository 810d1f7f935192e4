//! Hosted repositories: what a registry that accepts pushes does beyond
//! the shared storage operations of [`crate::store`]: manifest pushes and
//! deletes ([`push`]) and blob upload sessions ([`uploads`]).

pub(crate) mod gc;
mod push;
pub(crate) mod retention;
mod uploads;

pub use gc::{Garbage, GcOptions, GcReport};
pub use retention::{ImmutableTags, RetentionRule};
