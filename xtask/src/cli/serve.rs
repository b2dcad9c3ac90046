//! `serve`: the lab boot server over the built output directory (`crate::serve`).

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

use super::Settings;
use crate::serve::{self, Options, Scripts};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port for HTTP: every file of the output directory (GET,
    /// HEAD, Range), `/manifest.json`, and `/ipxe?mac=<mac>`, the iPXE
    /// script of the inventory host with that MAC (its static identity) or
    /// the recipe's own script for any other machine. Scripts take `--var`
    /// values, e.g. `--var stage2_url=http://<this server>/stage2`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// The recipe whose `[ipxe]` scripts and inventory are served.
    #[arg(long, value_name = "NAME", default_value = "stage1")]
    pub recipe: String,
    /// Print a dnsmasq configuration (DHCP boot files by client
    /// architecture, the script URL for iPXE clients, a fixed lease per
    /// inventory host with a MAC; TFTP from the output's `<recipe>/`) and
    /// exit.
    #[arg(long)]
    pub print_dnsmasq: bool,
    /// The base URL machines reach this server at, for `--print-dnsmasq`
    /// (default: `http://` and `--http`, unless that is 0.0.0.0 or ::).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
}

pub fn serve(s: &Settings, a: &ServeArgs) -> Result<ExitCode> {
    if a.print_dnsmasq {
        let url = match (&a.url, a.http.ip().is_unspecified()) {
            (Some(url), _) => url.clone(),
            (None, false) => format!("http://{}", a.http),
            (None, true) => {
                bail!(
                    "--http {} is every interface: say with --url which address machines reach",
                    a.http
                )
            }
        };
        let recipes = s.recipes()?;
        let ipxe = recipes.ipxe(&a.recipe)?;
        let stage1 = std::path::absolute(s.output_dir.join(&a.recipe))?;
        print!("{}", serve::dnsmasq::config(&a.recipe, ipxe, &stage1, &url));
        return Ok(ExitCode::SUCCESS);
    }
    // Scripts served over HTTP go to whatever iPXE asks, not to a stage1 built to trust the
    // operator's CA, so they are rendered as for a build without a key: `{{imgverify}}` empty.
    let loader = {
        let (dir, vars) = (s.recipes_dir.clone(), s.vars.clone());
        Box::new(move || crate::recipe::load(&dir, &vars))
    };
    let scripts = Scripts::new(&a.recipe, s.recipes_dir.clone(), loader)?;
    let options = Options {
        root: s.output_dir.clone(),
        http: a.http,
    };
    serve::run(&options, scripts)?;
    Ok(ExitCode::SUCCESS)
}
