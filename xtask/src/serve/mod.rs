//! `cargo xtask serve`: a boot server for a lab, over a built `output/`, read-only. HTTP serves
//! every artifact (HEAD and Range too, nothing outside `output/`), `manifest.json`, and
//! `/ipxe?mac=<mac>`: the iPXE script of the inventory host with that MAC (the `[ipxe]`
//! recipe's host script, with its static identity), or the recipe's own script for a machine
//! the inventory does not know. A rebuilt `output/` is served as it is on disk, and an edited
//! recipe or inventory is loaded again at the next script request. One log line per request;
//! Ctrl-C stops.
//!
//! `dnsmasq.rs` writes the configuration for operators who keep dnsmasq as their DHCP and TFTP
//! server, from the same inventory.

pub mod dnsmasq;
mod http;
mod scripts;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};

pub use scripts::{Loader, Scripts};

/// What `serve` serves, and where.
pub struct Options {
    /// The built `output/` directory.
    pub root: PathBuf,
    /// The HTTP listening address.
    pub http: SocketAddr,
}

/// Serves until Ctrl-C (SIGINT or SIGTERM).
pub fn run(options: &Options, scripts: Scripts) -> Result<()> {
    let root = options
        .root
        .canonicalize()
        .with_context(|| format!("{}: no built output to serve", options.root.display()))?;
    crate::tools::interrupt::poll_instead_of_exiting();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    runtime.block_on(http::serve(options.http, root, scripts))
}
