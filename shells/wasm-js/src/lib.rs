//! kura as a wasm-bindgen package: JavaScript supplies storage and `fetch`,
//! the core answers `Request`s. Not built yet: see README.md in this directory.
