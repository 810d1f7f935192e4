//! Hosted repositories: what a registry that accepts pushes does beyond
//! the shared storage operations of [`crate::store`]: manifest pushes and
//! deletes ([`push`]) and blob upload sessions ([`uploads`]).

mod push;
mod uploads;
