//! The registry's vocabulary as pure types: names and references, digests,
//! manifests, upload sessions. No I/O and nothing above this module.

pub mod digest;
pub mod manifest;
pub mod pattern;
pub mod reference;
pub(crate) mod upload;
