//! Proof that artifacts work: boot tests in QEMU (and, later,
//! reproducibility), with a small HTTP server for chain boots.

pub mod boot;
pub mod http;
