//! Kiln's end-to-end tests, one module per area, in one test binary: one
//! link instead of one per file, and one process whose locks (QEMU one guest
//! at a time) and caches (the iPXE placeholder build, fetched debs) every
//! module shares.
//!
//! A test whose prerequisite is missing (the iPXE source, QEMU, a test
//! server) skips and says so, unless `KILN_TEST_REQUIRE=all` (CI) makes that
//! a failure: see `common::prereq`.

// The tests run Kiln's binary, the oracles (cpio, modprobe, make) and
// servers as an operator would: directly, not through Kiln's `tools`.
#![allow(clippy::disallowed_methods)]

mod common;

mod ci_configs;
mod ci_repro;
mod cpio_oracle;
mod explain;
mod fleet;
mod fuzz;
mod kernel;
mod media;
mod modules;
mod modules_oracle;
mod noop;
mod publish;
mod recipe_errors;
mod remote;
mod repro;
mod security;
mod serve;
mod signing;
mod sources;
mod stage1;
mod stage2;
mod stage2_arm64;
mod stage3;
mod tidy;
mod zbin_oracle;
