//! Kiln: declarative recipes in, reproducible network-boot artifacts out.
//!
//! Layers, one way down (see docs/ARCHITECTURE.md):
//! `cli → plan → steps → archive / store / tools`.

pub mod archive;
pub mod cli;
