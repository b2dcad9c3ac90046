//! Proof that artifacts work: boot tests in QEMU (and, later, reproducibility).

pub mod boot;
