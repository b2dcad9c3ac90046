//! The only place that runs external programs.
//!
//! Architecture invariant: no other module spawns a process. Each tool run
//! here has its output captured to a log file; a failure becomes an error
//! naming the tool, its exit status, the last lines of output and the log.
//! `version` gives the string recorded in step keys.
//!
//! std::process is used rather than xshell because Kiln needs process
//! groups (Ctrl-C must stop a whole `make`) and output teed to logs.

// The one module allowed to start processes (clippy.toml says why).
#![allow(clippy::disallowed_methods)]

pub mod apt;

use fs_err::{self as fs, File};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};

/// Lines of a failed tool's output shown in the error.
const TAIL_LINES: usize = 40;

/// One line of `ci/packages.txt`: the single list of host packages, read by
/// `.ci/run` (to install) and by `doctor` (to report).
#[derive(Debug, Clone)]
pub struct HostTool {
    pub package: String,
    pub command: String,
    pub purpose: String,
}

pub fn host_tools() -> Vec<HostTool> {
    include_str!("../../ci/packages.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let package = parts.next()?.to_string();
            let command = parts.next()?.to_string();
            let purpose = parts.collect::<Vec<_>>().join(" ");
            Some(HostTool {
                package,
                command,
                purpose,
            })
        })
        .collect()
}

/// Finds a program on PATH, then in the sbin directories root's PATH has.
/// An absolute path (a header a build needs, in `ci/packages.txt`) is found
/// when the file exists.
pub fn find(program: &str) -> Option<PathBuf> {
    if program.starts_with('/') {
        return Some(PathBuf::from(program)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The first line of `program --version`, cached per process. Recorded in
/// the keys of steps that run the program.
pub fn version(program: &str) -> Result<String> {
    static CACHE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().expect("version cache").get(program) {
        return Ok(v.clone());
    }
    let path = find(program).with_context(|| missing(program))?;
    if program.starts_with('/') {
        return Ok("present".to_string());
    }
    let out = Command::new(&path)
        .arg(version_arg(program))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --version", path.display()))?;
    // Some tools (fsck.fat) have no version option and print their usage
    // as an error: the installed package's version says the same thing.
    if !out.status.success() {
        if let Some(v) = package_version(program) {
            cache
                .lock()
                .expect("version cache")
                .insert(program.to_string(), v.clone());
            return Ok(v);
        }
    }
    let text = String::from_utf8_lossy(if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    })
    .into_owned();
    // perl starts with an empty line.
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown")
        .to_string();
    cache
        .lock()
        .expect("version cache")
        .insert(program.to_string(), line.clone());
    Ok(line)
}

/// `<package> <version>` from dpkg for a host tool whose package is known.
fn package_version(program: &str) -> Option<String> {
    let tool = host_tools().into_iter().find(|t| t.command == program)?;
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", &tool.package])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !version.is_empty()).then(|| format!("{} {version}", tool.package))
}

/// The argument that makes `program` print its version.
fn version_arg(program: &str) -> &'static str {
    match program {
        "openssl" => "version",
        _ => "--version",
    }
}

pub fn missing(program: &str) -> String {
    match host_tools().into_iter().find(|t| t.command == program) {
        Some(t) => format!(
            "`{program}` is not installed: run `apt-get install {}` (see `cargo xtask doctor`)",
            t.package
        ),
        None => format!("`{program}` is not installed (see `cargo xtask doctor`)"),
    }
}

/// A command to run: built here so that callers never touch `Command`.
pub fn command(program: &str) -> Result<Command> {
    let path = find(program).with_context(|| missing(program))?;
    let mut cmd = Command::new(path);
    cmd.stdin(Stdio::null());
    own_group_dying_with_kiln(&mut cmd);
    Ok(cmd)
}

/// Its own process group, so that an interrupt can stop the tool and all
/// its children; and killed when Kiln dies, even by SIGKILL, which no
/// handler sees (`PR_SET_PDEATHSIG`, fired when the thread that started it
/// ends: Kiln waits for a tool on the thread that started it).
fn own_group_dying_with_kiln(cmd: &mut Command) {
    cmd.process_group(0);
    let kiln = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec only async-signal-safe calls (prctl,
    // getppid, raise) run.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Kiln died before the request took effect.
            if libc::getppid() != kiln {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }
}

/// `command(program)` with a clean environment for build tools whose output
/// must not depend on the caller: only PATH survives, HOME is `home` (a
/// scratch directory, so no user startup file is read), the locale is C,
/// the zone UTC, and `SOURCE_DATE_EPOCH` is the only time.
pub fn clean_command(program: &str, home: &Path, epoch: u64) -> Result<Command> {
    let mut cmd = command(program)?;
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .env("SOURCE_DATE_EPOCH", epoch.to_string());
    Ok(cmd)
}

/// A PATH whose `gcc` and `cc` (wrappers written to `wrappers`) run the
/// real gcc with `-ffile-prefix-map=<tree>/=`, for builds whose `-g`
/// objects end up in stored outputs: gcc records the working directory and
/// source paths in debug info, and the tree is in a scratch directory with
/// a random name. A wrapper named `gcc` changes neither `CC` nor
/// `gcc --version`, which build systems record (the kernel's Kconfig).
/// With `cross` (`aarch64-linux-gnu-`), the cross compiler `<cross>gcc` is
/// wrapped the same way beside the host's.
pub fn path_mapping_gcc(
    wrappers: &Path,
    tree: &Path,
    cross: Option<&str>,
) -> Result<std::ffi::OsString> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(wrappers).with_context(|| format!("creating {}", wrappers.display()))?;
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let map = quote(&format!("-ffile-prefix-map={}/=", tree.display()));
    let mut names = vec![("gcc".to_string(), "gcc"), ("gcc".to_string(), "cc")];
    let cross_gcc = cross.map(|c| format!("{c}gcc"));
    if let Some(gcc) = &cross_gcc {
        names.push((gcc.clone(), gcc));
    }
    for (real, name) in names {
        let gcc = find(&real).with_context(|| missing(&real))?;
        let script = format!(
            "#!/bin/sh\nexec {} {map} \"$@\"\n",
            quote(&gcc.to_string_lossy())
        );
        let path = wrappers.join(name);
        fs::write(&path, &script).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut path = std::ffi::OsString::from(wrappers.as_os_str());
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    Ok(path)
}

/// A command for a program given by path (e.g. a binary from a step input).
pub fn command_at(path: &Path) -> Command {
    let mut cmd = Command::new(path);
    cmd.stdin(Stdio::null());
    own_group_dying_with_kiln(&mut cmd);
    cmd
}

/// Ctrl-C (SIGINT) or SIGTERM while tools run: every running tool's process
/// group is stopped, the step fails with `Interrupted`, no further step
/// starts, and the error path removes scratch directories as usual. With no
/// tool running (Rust-only work) or on a second signal, Kiln exits at once:
/// the store is consistent at every instant (temp file + rename), and `gc`
/// removes any scratch directory left behind.
pub mod interrupt {
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};

    /// Process groups of running tools (0 = free slot). A fixed array of
    /// atomics, because the signal handler may only touch such memory.
    static GROUPS: [AtomicI32; 64] = [const { AtomicI32::new(0) }; 64];
    static INTERRUPTED: AtomicBool = AtomicBool::new(false);
    /// A long-running command (`serve`) that polls [`interrupted`] and stops by itself.
    static POLLED: AtomicBool = AtomicBool::new(false);

    /// The step was stopped by an interrupt.
    #[derive(Debug, thiserror::Error)]
    #[error("interrupted")]
    pub struct Interrupted;

    pub fn install() {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: `on_signal` only uses async-signal-safe calls (kill,
        // write, _exit) and atomics.
        unsafe {
            libc::signal(libc::SIGINT, handler);
            libc::signal(libc::SIGTERM, handler);
        }
    }

    pub fn interrupted() -> bool {
        INTERRUPTED.load(SeqCst)
    }

    /// The first signal only sets [`interrupted`], which the caller polls to stop cleanly (a
    /// second one still exits at once).
    pub fn poll_instead_of_exiting() {
        POLLED.store(true, SeqCst);
    }

    extern "C" fn on_signal(_: libc::c_int) {
        let say = |msg: &str| {
            // SAFETY: write(2) on stderr with a valid buffer.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
        };
        if INTERRUPTED.swap(true, SeqCst) {
            say("\ninterrupted again: exiting now\n");
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(130) };
        }
        let mut stopped = 0;
        for group in &GROUPS {
            let pgid = group.load(SeqCst);
            if pgid > 0 {
                // SAFETY: kill(2) with a negative pid signals that group.
                unsafe { libc::kill(-pgid, libc::SIGTERM) };
                stopped += 1;
            }
        }
        if stopped == 0 && POLLED.load(SeqCst) {
            say("\ninterrupted: stopping\n");
            return;
        }
        if stopped == 0 {
            say("\ninterrupted: no tool was running; output/ and the cache keep the last good build (`cargo xtask gc` removes leftover scratch)\n");
            // SAFETY: as above.
            unsafe { libc::_exit(130) };
        }
        say("\ninterrupted: stopping the running tools…\n");
    }

    /// Records a tool's process group (its pid: tools run in their own
    /// group) until the returned guard drops.
    pub fn track(pid: u32) -> Tracked {
        let pid = i32::try_from(pid).unwrap_or(0);
        let slot = GROUPS
            .iter()
            .position(|g| g.compare_exchange(0, pid, SeqCst, SeqCst).is_ok());
        Tracked { slot }
    }

    pub struct Tracked {
        slot: Option<usize>,
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            if let Some(i) = self.slot {
                GROUPS[i].store(0, SeqCst);
            }
        }
    }
}

/// Runs `cmd` with stdout and stderr appended to `log`. On failure the error
/// names the tool, its exit status, the last lines and the log path.
pub fn run_logged(mut cmd: Command, log: &Path) -> Result<()> {
    let what = describe(&cmd);
    if let Some(dir) = log.parent() {
        fs_err::create_dir_all(dir)
            .with_context(|| format!("creating log directory {}", dir.display()))?;
    }
    let file = File::create(log).with_context(|| format!("creating log {}", log.display()))?;
    let err = file
        .try_clone()
        .context("duplicating the log file handle")?;
    if interrupt::interrupted() {
        return Err(interrupt::Interrupted.into());
    }
    cmd.stdout(file.into_file()).stderr(err.into_file());
    let mut child = spawn(&mut cmd).with_context(|| format!("starting {what}"))?;
    let tracked = interrupt::track(child.id());
    let status = child.wait().with_context(|| format!("waiting for {what}"));
    drop(tracked);
    if interrupt::interrupted() {
        return Err(interrupt::Interrupted.into());
    }
    let status = status?;
    if status.success() {
        return Ok(());
    }
    let tail = tail(log, TAIL_LINES);
    bail!(
        "{what} failed ({status}); last {TAIL_LINES} lines:\n{tail}\nfull log: {}",
        log.display()
    )
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--quiet`: no spinners, only errors and summaries.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

/// `run_logged` for long tools (make): on a terminal, a spinner shows
/// `label` and the tool's latest output line, read back from the log; on a
/// pipe or with `--quiet` it is exactly `run_logged`.
pub fn run_logged_with_progress(cmd: Command, log: &Path, label: &str) -> Result<()> {
    with_progress(label, || last_line(log), || run_logged(cmd, log))
}

/// Runs `work` while, on a terminal, a spinner shows `label` and what
/// `status` says (polled five times a second, from another thread). On a
/// pipe or with `--quiet` it just runs `work`.
pub fn with_progress<R>(
    label: &str,
    status: impl Fn() -> Option<String> + Sync,
    work: impl FnOnce() -> R,
) -> R {
    use std::io::IsTerminal;
    use std::sync::atomic::{AtomicBool, Ordering};
    if QUIET.load(Ordering::Relaxed) || !std::io::stderr().is_terminal() {
        return work();
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {elapsed} {wide_msg}") {
        // wide_msg is cut to the terminal's width: one line, never wrapped.
        spinner.set_style(style);
    }
    spinner.set_message(label.to_string());
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Some(now) = status() {
                    spinner.set_message(format!("{label}: {now}"));
                }
                spinner.tick();
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        let result = work();
        done.store(true, Ordering::Relaxed);
        spinner.finish_and_clear();
        result
    })
}

/// A reader that counts the bytes read through it, for progress on a
/// stream whose total size is known (a compressed archive being unpacked).
pub struct Counting<R> {
    inner: R,
    pub read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R> Counting<R> {
    pub fn new(inner: R) -> Self {
        Counting {
            inner,
            read: Default::default(),
        }
    }
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// `done of total` in human units, for progress messages.
pub fn progress_of(done: u64, total: u64) -> String {
    format!("{} of {}", human_bytes(done), human_bytes(total))
}

/// The last non-empty line of a log (read from its last 4 KiB).
fn last_line(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(line.trim().chars().take(100).collect())
}

/// Runs `cmd` and returns its stdout; stderr goes into the error on failure.
pub fn capture(cmd: Command) -> Result<String> {
    let what = describe(&cmd);
    String::from_utf8(capture_bytes(cmd)?)
        .with_context(|| format!("{what} printed non-UTF-8 output"))
}

/// Runs `cmd` and returns its stdout as bytes (a tool that writes a binary
/// file there, such as iPXE's `zbin`); stderr goes into the error on
/// failure. An interrupt stops it like any other tool.
pub fn capture_bytes(mut cmd: Command) -> Result<Vec<u8>> {
    let what = describe(&cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = spawn(&mut cmd).with_context(|| format!("starting {what}"))?;
    let _tracked = interrupt::track(child.id());
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {what}"))?;
    if interrupt::interrupted() {
        return Err(interrupt::Interrupted.into());
    }
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("{what} failed ({}): {}", out.status, stderr.trim());
    }
    Ok(out.stdout)
}

/// Starts `cmd`, retrying for a while when the kernel says its program is
/// busy (ETXTBSY). A program a step has just written (busybox copied into
/// scratch) is still open for writing in any child another thread forked
/// meanwhile, until that child execs: a race of milliseconds.
fn spawn(cmd: &mut Command) -> std::io::Result<std::process::Child> {
    let mut delay = std::time::Duration::from_millis(5);
    for _ in 0..10 {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(delay);
                delay *= 2;
            }
            started => return started,
        }
    }
    cmd.spawn()
}

fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program());
    let args: Vec<_> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("`{} {}`", program.to_string_lossy(), args.join(" ")).replace(" `", "`")
}

/// Starts `cmd` with stdout piped (stderr inherited) for a caller that
/// reads it as it comes, such as a serial console.
/// The child is tracked for interrupts until the guard drops.
pub fn spawn_reading_stdout(mut cmd: Command) -> Result<(std::process::Child, interrupt::Tracked)> {
    let what = describe(&cmd);
    cmd.stdout(Stdio::piped());
    let child = spawn(&mut cmd).with_context(|| format!("starting {what}"))?;
    let tracked = interrupt::track(child.id());
    Ok((child, tracked))
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(file) = File::open(path) else {
        return String::new();
    };
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `1.5 MiB` style sizes for messages.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", UNITS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_list_names_a_command_for_every_package() {
        let tools = host_tools();
        assert!(tools
            .iter()
            .any(|t| t.package == "qemu-system-x86" && t.command == "qemu-system-x86_64"));
        assert!(tools.iter().all(|t| !t.purpose.is_empty()));
    }

    #[test]
    fn failing_tool_error_has_status_tail_and_log_path() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("t.log");
        let mut cmd = command("sh").unwrap();
        cmd.args(["-c", "for i in $(seq 1 50); do echo line$i; done; exit 3"]);
        let err = format!("{:#}", run_logged(cmd, &log).unwrap_err());
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(
            err.contains("line50") && err.contains("line11") && !err.contains("line10\n"),
            "{err}"
        );
        assert!(err.contains(&log.display().to_string()), "{err}");
    }
}
