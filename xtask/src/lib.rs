//! Kiln: declarative recipes in, reproducible network-boot artifacts out.
//!
//! Layers, one way down (see docs/ARCHITECTURE.md; `xtask/tests/it/tidy.rs`
//! checks them): `cli → plan → steps → archive / elf / store / tools`, with
//! `recipe` feeding `plan`, `exec` running a plan's steps, `output`
//! installing a build's artifacts, `verify` proving them, and `arch`,
//! `layout` and `template` as leaves any module may use.

pub mod arch;
pub mod archive;
pub mod bench;
pub mod cli;
pub mod elf;
pub mod exec;
pub mod layout;
pub mod output;
pub mod plan;
pub mod publish;
pub mod recipe;
pub mod repro;
pub mod serve;
pub mod sign;
pub mod steps;
pub mod store;
pub mod template;
#[doc(hidden)]
pub mod testing;
pub mod tools;
pub mod verify;
