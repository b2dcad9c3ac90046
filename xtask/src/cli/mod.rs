//! `cargo xtask …`: argument parsing and the commands. Each command calls
//! into the layers below and prints results; no build logic lives here.

mod bench;
mod boot;
mod build;
mod doctor;
mod gc;
mod ipxe;
mod plan;
mod publish;
mod repro;
mod serve;
mod session;
mod sources;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    version,
    about = "Kiln: reproducible, content-addressed builds of network-boot artifacts",
    long_about = "Kiln turns the TOML recipes in recipes/ into boot artifacts under output/. \
Every step is cached in the store by the sha256 of its inputs, parameters and tools, so a \
rebuild with nothing changed runs nothing, and a clean rebuild gives the same bytes."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Directory of recipe files (default: recipes/ at the workspace root).
    #[arg(long, global = true, value_name = "DIR")]
    pub recipes: Option<PathBuf>,
    /// Where artifacts and manifest.json are written (default: output/ at the workspace root).
    #[arg(long, global = true, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// The local store (default: $KILN_CACHE, else ~/.cache/kiln).
    #[arg(long, global = true, value_name = "DIR", env = "KILN_CACHE")]
    pub cache: Option<PathBuf>,
    /// Use a local file or tree instead of a pinned source, e.g. --source ipxe=/src/ipxe.
    /// Also KILN_SOURCE_<NAME>=PATH.
    #[arg(long = "source", global = true, value_name = "NAME=PATH", value_parser = parse_pair)]
    pub sources: Vec<(String, String)>,
    /// Set a recipe variable, e.g. --var release=2026.11.
    #[arg(long = "var", global = true, value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub vars: Vec<(String, String)>,
    /// Steps run in parallel, and threads a step may use (default: number of CPUs).
    #[arg(short = 'j', long, global = true, value_name = "N")]
    pub jobs: Option<usize>,
    /// Print only errors and the final summary.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// A cache shared between machines: s3://bucket/prefix, gs://bucket/prefix
    /// or file:///dir. A step missing locally is taken from it (checked by
    /// digest); a step built here is uploaded to it. Credentials come from the
    /// standard AWS/Google environment variables and files.
    #[arg(long, global = true, value_name = "URL", env = "KILN_REMOTE_CACHE")]
    pub remote_cache: Option<String>,
    /// Only read from the remote cache, never write (untrusted jobs such as
    /// pull requests).
    #[arg(long, global = true, env = "KILN_REMOTE_CACHE_READONLY")]
    pub remote_cache_readonly: bool,
    /// Sign the records this build uploads to the remote cache with this
    /// Ed25519 private key (PEM, as `openssl genpkey -algorithm ed25519`
    /// writes it). Readers that trust its public key use only signed records.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "KILN_REMOTE_CACHE_SIGNING_KEY"
    )]
    pub remote_cache_signing_key: Option<PathBuf>,
    /// Use only remote-cache records signed by this Ed25519 public key (PEM,
    /// as `openssl pkey -pubout` writes it); others are ignored and their
    /// steps built here. See docs/REMOTE_CACHE.md.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "KILN_REMOTE_CACHE_TRUST"
    )]
    pub remote_cache_trust: Option<PathBuf>,
    /// Sign what the recipes' `[signing]` names with this private key: a PEM
    /// file (PKCS#8, encrypted or not, or an unencrypted PKCS#1 RSA key), or
    /// a key in a PKCS#11 token (an HSM) as an RFC 7512 URI, e.g.
    /// 'pkcs11:token=kiln;object=sign?module-path=/usr/lib/softhsm/libsofthsm2.so'
    /// (or the module in KILN_PKCS11_MODULE). An encrypted key's passphrase,
    /// or the token's PIN, comes from KILN_SIGN_PASSPHRASE or
    /// --sign-passphrase-file, never from the command line. Without a key,
    /// what recipes ask to sign is built unsigned, with a warning.
    #[arg(
        long,
        global = true,
        value_name = "FILE|URI",
        env = "KILN_SIGN_KEY",
        requires = "sign_cert"
    )]
    pub sign_key: Option<PathBuf>,
    /// The certificate of --sign-key (PEM, optionally followed by its chain,
    /// or DER). Its SHA-256 goes into step keys and the manifest; the key
    /// never does.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "KILN_SIGN_CERT",
        requires = "sign_key"
    )]
    pub sign_cert: Option<PathBuf>,
    /// A file whose first line is the passphrase of --sign-key (a token's PIN).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "KILN_SIGN_PASSPHRASE_FILE"
    )]
    pub sign_passphrase_file: Option<PathBuf>,
    /// Fail before building when a recipe asks for signatures and no key is
    /// given (release builds), instead of building those files unsigned.
    #[arg(long, global = true, env = "KILN_REQUIRE_SIGNING")]
    pub require_signing: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build targets (recipe names, e.g. `stage2`) into the output directory.
    Build(build::BuildArgs),
    /// Show every step of the targets: cached (hit), to run (miss) or waiting on another step.
    Plan(plan::PlanArgs),
    /// Boot an artifact in QEMU and wait for its serial marker (e.g. `stage2-initramfs`).
    BootTest(boot::BootTestArgs),
    /// List the host tools Kiln uses, their versions, and how to install what is missing.
    Doctor,
    /// Manage pinned sources (recipes/sources.toml).
    Sources {
        #[command(subcommand)]
        command: sources::SourcesCommand,
    },
    /// Remove store entries no action record references, and stale scratch directories.
    Gc(gc::GcArgs),
    /// Benchmarks against the tools an operator would otherwise use.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Upload the built output/ to object storage as one release:
    /// <URL>/<VERSION>/… with manifest.json written last.
    Publish(publish::PublishArgs),
    /// Build targets twice with empty caches in different directories and
    /// environments, and name what differs between the artifacts.
    Repro(repro::ReproArgs),
    /// Build stage1 iPXE binaries and ROMs for one architecture
    /// (`output/stage1/<arch>/<file>`) and each inventory host's
    /// (`output/stage1/hosts/<hostname>/<file>`), patched from one compile;
    /// needs the iPXE source (pinned URL, or a checkout with `--source
    /// ipxe=PATH`).
    Ipxe(ipxe::IpxeArgs),
    /// Serve the built output directory to machines booting over the
    /// network: HTTP with every artifact and per-machine iPXE scripts
    /// (`/ipxe?mac=<mac>` from the inventory); `--print-dnsmasq` writes the
    /// matching dnsmasq configuration.
    Serve(serve::ServeArgs),
    /// Copy stdin/stdout to a TCP address: QEMU runs this for each guest
    /// connection to the chain-boot test server (`guestfwd=…-cmd:`).
    #[command(hide = true)]
    Relay { addr: String },
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got `{s}`"))?;
    if k.is_empty() {
        return Err(format!("empty name in `{s}`"));
    }
    Ok((k.to_string(), v.to_string()))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| "warn,fatfs=error".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
    quiet_on_closed_stdout();
    crate::tools::interrupt::install();
    // The caller's umask is not an input: tools write step outputs (kernel
    // objects, depmod indexes) with modes that end up in tree digests, so
    // a umask of 077 would change keys and the manifest (found by repro).
    // SAFETY: umask cannot fail and touches no memory.
    unsafe { libc::umask(0o022) };
    match run(cli) {
        Ok(code) => code,
        Err(_) if crate::tools::interrupt::interrupted() => {
            eprintln!(
                "interrupted: the running tools were stopped; output/ and the cache keep the last good build"
            );
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {}", format_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask plan | head`: once the reader is gone, printing panics with
/// EPIPE (Rust ignores SIGPIPE, so that a closed socket or tool pipe is an
/// error to handle rather than a silent death). Only that panic, from the
/// commands' printing to stdout, ends Kiln quietly, with the status a shell
/// reports for a process SIGPIPE ended (141); any other panic is reported.
fn quiet_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}

/// The error and its causes, one per line, recipe errors rendered whole.
pub fn format_error(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        out.push_str(&format!("\n  caused by: {cause}"));
    }
    out
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Relay { addr } = &cli.command {
        crate::verify::http::relay(addr)?;
        return Ok(ExitCode::SUCCESS);
    }
    let ctx = Settings::new(&cli.global)?;
    match cli.command {
        Command::Build(a) => build::build(&ctx, &a),
        Command::Plan(a) => plan::plan(&ctx, &a),
        Command::BootTest(a) => boot::boot_test(&ctx, &a),
        Command::Doctor => doctor::doctor(&ctx),
        Command::Sources { command } => sources::run(&ctx, &command),
        Command::Gc(a) => gc::gc(&ctx, &a),
        Command::Bench { command } => bench::bench(&ctx, &command),
        Command::Ipxe(a) => ipxe::ipxe(&ctx, &a),
        Command::Publish(a) => publish::publish(&ctx, &a),
        Command::Repro(a) => repro::repro(&ctx, &a),
        Command::Serve(a) => serve::serve(&ctx, &a),
        Command::Relay { .. } => unreachable!("handled before settings"),
    }
}

/// Resolved global settings shared by the commands.
#[derive(Debug, Clone)]
pub struct Settings {
    pub recipes_dir: PathBuf,
    pub output_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub source_overrides: BTreeMap<String, PathBuf>,
    pub vars: BTreeMap<String, String>,
    pub jobs: usize,
    pub quiet: bool,
    pub remote: Option<std::sync::Arc<crate::store::remote::Remote>>,
    /// The operator's signing key (`--sign-key`), checked at start.
    pub signing: Option<std::sync::Arc<crate::sign::SigningKey>>,
    pub require_signing: bool,
}

impl Settings {
    /// The recipes, loaded for this build (its `--var`s, and whether a signing key is given).
    pub fn recipes(&self) -> Result<crate::recipe::Recipes> {
        crate::recipe::load_for(&self.recipes_dir, &self.vars, self.signing.is_some())
    }

    fn new(g: &Global) -> Result<Settings> {
        let root = workspace_root();
        let cache_dir = match &g.cache {
            Some(c) => c.clone(),
            None => home_cache()?,
        };
        crate::tools::set_quiet(g.quiet);
        let mut source_overrides: BTreeMap<String, PathBuf> = env_source_overrides();
        source_overrides.extend(g.sources.iter().map(|(k, v)| (k.clone(), PathBuf::from(v))));
        let jobs = g.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        Ok(Settings {
            recipes_dir: g.recipes.clone().unwrap_or_else(|| root.join("recipes")),
            output_dir: g.output.clone().unwrap_or_else(|| root.join("output")),
            cache_dir,
            source_overrides,
            vars: g.vars.iter().cloned().collect(),
            jobs: jobs.max(1),
            quiet: g.quiet,
            remote: match &g.remote_cache {
                Some(url) if !url.is_empty() => {
                    use crate::store::signing::{Signer, Trust};
                    let auth = crate::store::remote::Auth {
                        signer: g
                            .remote_cache_signing_key
                            .as_deref()
                            .map(Signer::load)
                            .transpose()?,
                        trust: g
                            .remote_cache_trust
                            .as_deref()
                            .map(Trust::load)
                            .transpose()?,
                    };
                    Some(std::sync::Arc::new(crate::store::remote::Remote::open(
                        url,
                        g.remote_cache_readonly,
                        auth,
                    )?))
                }
                _ => None,
            },
            signing: signing_key(g)?.map(std::sync::Arc::new),
            require_signing: g.require_signing,
        })
    }
}

/// Loads and checks `--sign-key`/`--sign-cert` before anything is built: a key that does not
/// match its certificate, an expired certificate or a wrong passphrase stops here.
fn signing_key(g: &Global) -> Result<Option<crate::sign::SigningKey>> {
    use crate::sign::{KeySpec, Passphrase, SigningKey};
    let (Some(key), Some(cert)) = (&g.sign_key, &g.sign_cert) else {
        return Ok(None);
    };
    let passphrase = match &g.sign_passphrase_file {
        Some(file) => {
            let text = fs_err::read_to_string(file)?;
            Some(Passphrase(
                text.lines().next().unwrap_or_default().to_string(),
            ))
        }
        None => std::env::var("KILN_SIGN_PASSPHRASE").ok().map(Passphrase),
    };
    let spec = KeySpec {
        key: key.clone(),
        cert: cert.clone(),
        passphrase,
    };
    SigningKey::load(&spec).map(Some)
}

/// `cargo run` sets CARGO_MANIFEST_DIR (xtask/) for the process; the
/// workspace root is its parent. Falls back to the current directory.
fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

fn home_cache() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("neither --cache, KILN_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/kiln"))
}

/// `KILN_SOURCE_<NAME>=PATH` (name upper-cased, `-` as `_`).
fn env_source_overrides() -> BTreeMap<String, PathBuf> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k
                .to_str()?
                .strip_prefix("KILN_SOURCE_")?
                .to_ascii_lowercase()
                .replace('_', "-");
            Some((k, PathBuf::from(v)))
        })
        .collect()
}
