//! Property tests of everything in sluice-core that reads untrusted bytes: request bodies, SSE
//! streams and response usage, keys and credentials, timestamps and durations, config documents.
//!
//! Each property runs a bounded number of cases by default (see [`common::config`]), so the
//! suite stays fast in CI; `PROPTEST_CASES=N` overrides every count, and `cargo xtask fuzz`
//! runs them at volume. A failure prints the minimal input proptest shrank it to: keep that as
//! a plain unit test next to the fix.
//!
//! The same tests also run compiled to wasm32-wasip1 under Node's WASI (no `fork`, no files).

#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

mod common;
mod config;
mod conversion;
mod keys_time;
mod request;
mod sse;
