//! The kernel-module closure with kmod's semantics: given what a recipe
//! wants (module names, modaliases, path globs) and its modprobe.d
//! snippets, which module files, firmware and builtins an initramfs needs
//! so that `modprobe` at boot finds everything it would load.
//!
//! kmod (`libkmod-module.c`, `tools/modprobe.c`) is the reference and
//! `modprobe --show-depends` the test oracle. Following it exactly:
//! - names are normalized (`-` → `_`) and looked up in kmod's order:
//!   modprobe.d aliases, modules.dep, modules.alias (every matching
//!   pattern), modules.builtin, builtin aliases; the first source that
//!   knows the name wins;
//! - a module brings its modules.dep list and, for it and each of those,
//!   the `pre:` and `post:` modules of the *first* softdep rule matching
//!   its name, with config files (the recipe's and depmod's
//!   modules.softdep) ordered by base name; recursively;
//! - the blacklist only stops modules reached through an alias (or glob).
//!
//! Beyond modprobe: weak dependencies (modules.weakdep, modprobe.d
//! `weakdep`, `.modinfo` `weakdep=`) are included, since an initramfs must
//! carry what the module may request later; `firmware=` names are
//! collected. `install`/`remove` lines are errors: Kiln cannot run them.
//!
//! Architecture invariant: nothing here spawns a process; the tree must
//! already carry depmod's indexes (the step runs depmod through `tools`).

pub mod closure;
pub mod config;
pub mod depmod;
pub mod index;
pub mod modinfo;
pub mod step;

pub use closure::{resolve, Closure, Wanted};
pub use config::{parse_modprobe_d, ModprobeConfig};
pub use index::ModuleIndex;
pub use modinfo::{read_modinfo, ModInfo};
