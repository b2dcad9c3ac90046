//! Kiln: declarative recipes in, reproducible network-boot artifacts out.
//!
//! Layers, one way down (see docs/ARCHITECTURE.md):
//! `cli → plan → steps → archive / elf / store / tools`, with `recipe` feeding
//! `plan` and `verify` proving artifacts after a build.

pub mod arch;
pub mod archive;
pub mod bench;
pub mod cli;
pub mod elf;
pub mod exec;
pub mod output;
pub mod plan;
pub mod publish;
pub mod recipe;
pub mod repro;
pub mod steps;
pub mod store;
pub mod template;
#[doc(hidden)]
pub mod testing;
pub mod tools;
pub mod verify;
