//! `cargo xtask repro`: build the same targets twice, each run in its own
//! directory with its own empty cache and a different environment, then
//! compare every artifact and name what differs (`diff.rs`).
//!
//! A run is this binary started again (`build TARGET…`) on a copy of the
//! project, so the two builds share nothing but the host's tools and the
//! pinned inputs. What varies between the runs is listed in [`Variation`]s
//! and printed, with any variation this host cannot apply.

pub mod diff;
pub mod inputs;

use fs_err as fs;
use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::store::Digest;

/// One thing that differs between the two runs.
#[derive(Debug, Clone)]
pub struct Variation {
    pub name: &'static str,
    pub run1: String,
    pub run2: String,
    /// Why it could not be applied here, if it could not.
    pub skipped: Option<String>,
}

/// How one run is set up.
#[derive(Debug, Clone)]
pub struct Run {
    pub number: u8,
    /// Everything of this run lives under here.
    pub dir: PathBuf,
    /// The copy of the project (the recipes directory's parent).
    pub project: PathBuf,
    pub jobs: usize,
    pub tz: String,
    pub lang: String,
    pub umask: u32,
    /// Drop to this user (uid, gid) before running.
    pub user: Option<(u32, u32, String)>,
    /// Run in a new UTS namespace with this host name.
    pub hostname: Option<String>,
    /// Create each directory's entries in reverse name order.
    pub reverse: bool,
    pub vars: Vec<(String, String)>,
    /// A cache to build with instead of the run's own empty one.
    pub given_cache: Option<PathBuf>,
}

impl Run {
    pub fn output(&self) -> PathBuf {
        self.dir.join("output")
    }
    pub fn cache(&self) -> PathBuf {
        self.given_cache
            .clone()
            .unwrap_or_else(|| self.dir.join("cache"))
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("build.log")
    }
}

/// The two runs and what differs between them, for a work directory and
/// this host. Run 2 sits deeper, under another zone, locale, umask and job
/// count, as another user and host name when this process may switch them.
pub fn plan_runs(work: &Path, project_name: &str, jobs: usize) -> (Run, Run, Vec<Variation>) {
    let dir1 = work.join("run1");
    let dir2 = work.join("run2/a/much/deeper/build/directory");
    let jobs2 = if jobs > 1 { 1 } else { 2 };
    let lang2 = installed_locale().unwrap_or_else(|| "C.UTF-8".to_string());
    let root = is_root();
    let user = root.then(nobody).flatten();
    let (hostname, host_note) = if root {
        match probe_uts() {
            Ok(()) => (Some("kiln-repro-2".to_string()), None),
            Err(e) => (None, Some(format!("no UTS namespace here: {e}"))),
        }
    } else {
        (None, Some("needs root (unshare --uts)".to_string()))
    };
    let here = host_name();
    let run1 = Run {
        number: 1,
        project: dir1.join(project_name),
        dir: dir1,
        jobs,
        tz: "UTC".to_string(),
        lang: "C".to_string(),
        umask: 0o022,
        user: None,
        hostname: None,
        reverse: false,
        vars: Vec::new(),
        given_cache: None,
    };
    let run2 = Run {
        number: 2,
        project: dir2.join(project_name),
        dir: dir2,
        jobs: jobs2,
        tz: "Pacific/Kiritimati".to_string(),
        lang: lang2.clone(),
        umask: 0o077,
        user: user.clone(),
        hostname: hostname.clone(),
        reverse: true,
        vars: Vec::new(),
        given_cache: None,
    };
    let me = current_user();
    let variations = vec![
        Variation {
            name: "directory",
            run1: run1.dir.display().to_string(),
            run2: run2.dir.display().to_string(),
            skipped: None,
        },
        Variation {
            name: "TZ",
            run1: run1.tz.clone(),
            run2: run2.tz.clone(),
            skipped: None,
        },
        Variation {
            name: "LANG, LC_ALL",
            run1: run1.lang.clone(),
            run2: lang2,
            skipped: None,
        },
        Variation {
            name: "umask",
            run1: format!("{:03o}", run1.umask),
            run2: format!("{:03o}", run2.umask),
            skipped: None,
        },
        Variation {
            name: "jobs",
            run1: run1.jobs.to_string(),
            run2: run2.jobs.to_string(),
            skipped: None,
        },
        Variation {
            name: "file creation order",
            run1: "by name".to_string(),
            run2: "reversed".to_string(),
            skipped: None,
        },
        Variation {
            name: "user",
            run1: me.clone(),
            run2: user.as_ref().map_or(me, |u| u.2.clone()),
            skipped: match (&user, root) {
                (Some(_), _) => None,
                (None, true) => Some("no `nobody` user".to_string()),
                (None, false) => Some("needs root".to_string()),
            },
        },
        Variation {
            name: "hostname",
            run1: here.clone(),
            run2: hostname.unwrap_or(here),
            skipped: host_note,
        },
    ];
    (run1, run2, variations)
}

/// Copies the project (less `skip` and build products) and the local
/// sources into the run's directory, hands it to the run's user, and builds
/// `targets` there with this binary. The build's output goes to `run.log()`;
/// with `progress`, its latest line is shown on a terminal as it runs.
#[allow(clippy::too_many_arguments)]
pub fn build(
    run: &Run,
    progress: bool,
    exe: &Path,
    project: &Path,
    recipes_rel: &Path,
    sources: &[(String, PathBuf)],
    targets: &[String],
    skip: &BTreeSet<PathBuf>,
) -> Result<()> {
    fs::create_dir_all(&run.dir)?;
    let mut skip = skip.clone();
    skip.extend(skip_in(project));
    copy_tree(project, &run.project, run.reverse, &skip)
        .with_context(|| format!("copying {} for run {}", project.display(), run.number))?;
    let mut cmd = crate::tools::command_at(exe);
    cmd.arg("--recipes")
        .arg(run.project.join(recipes_rel))
        .arg("--output")
        .arg(run.output())
        .arg("--cache")
        .arg(run.cache())
        .arg("-j")
        .arg(run.jobs.to_string());
    for (name, path) in sources {
        let copy = run.dir.join("sources").join(name);
        fs::create_dir_all(copy.parent().expect("has a parent"))?;
        if path.is_dir() {
            copy_tree(path, &copy, run.reverse, &BTreeSet::new())?;
        } else {
            fs::copy(path, &copy).with_context(|| format!("copying {}", path.display()))?;
        }
        cmd.arg("--source")
            .arg(format!("{name}={}", copy.display()));
    }
    for (name, value) in &run.vars {
        cmd.arg("--var").arg(format!("{name}={value}"));
    }
    cmd.arg("build").args(targets);
    let home = run.dir.join("home");
    fs::create_dir_all(&home)?;
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KILN_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("HOME", &home)
        .env("TZ", &run.tz)
        .env("LANG", &run.lang)
        .env("LC_ALL", &run.lang);
    if let Some((uid, gid, name)) = &run.user {
        cmd.env("USER", name).env("LOGNAME", name);
        chown_tree(&run.dir, *uid, *gid)?;
    }
    let log = run.log();
    if let Some((uid, gid, _)) = &run.user {
        fs::File::create(&log)?;
        fs_err::os::unix::fs::chown(&log, Some(*uid), Some(*gid))?;
    }
    let setup = Setup {
        umask: run.umask,
        hostname: run.hostname.clone(),
        user: run.user.as_ref().map(|u| (u.0, u.1)),
    };
    // SAFETY: between fork and exec `apply` makes only async-signal-safe
    // system calls (umask, unshare, sethostname, setgroups, setgid,
    // setuid) on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || setup.apply());
    }
    let label = format!("run {}: building {}", run.number, targets.join(" "));
    match progress {
        true => crate::tools::run_logged_with_progress(cmd, &log, &label),
        false => crate::tools::run_logged(cmd, &log),
    }
    .with_context(|| format!("run {} failed", run.number))
}

/// What a run's process changes about itself before it starts.
struct Setup {
    umask: u32,
    hostname: Option<String>,
    user: Option<(u32, u32)>,
}

impl Setup {
    fn apply(&self) -> std::io::Result<()> {
        let check = |r: libc::c_int| {
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        // SAFETY: plain system calls on values owned by `self`.
        unsafe {
            libc::umask(self.umask as libc::mode_t);
            if let Some(name) = &self.hostname {
                check(libc::unshare(libc::CLONE_NEWUTS))?;
                check(libc::sethostname(name.as_ptr().cast(), name.len()))?;
            }
            if let Some((uid, gid)) = self.user {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
            }
        }
        Ok(())
    }
}

/// Whether a child may enter a new UTS namespace and name its host.
fn probe_uts() -> Result<()> {
    let setup = Setup {
        umask: 0o022,
        hostname: Some("kiln-probe".to_string()),
        user: None,
    };
    let mut cmd = crate::tools::command("true")?;
    // SAFETY: as in `build`.
    unsafe {
        cmd.pre_exec(move || setup.apply());
    }
    crate::tools::capture_bytes(cmd).context("unshare(CLONE_NEWUTS)")?;
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of `nobody`, from /etc/passwd.
fn nobody() -> Option<(u32, u32, String)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() > 3 && f[0] == "nobody" {
            Some((f[2].parse().ok()?, f[3].parse().ok()?, "nobody".to_string()))
        } else {
            None
        }
    })
}

fn current_user() -> String {
    // SAFETY: geteuid cannot fail and touches no memory.
    let uid = unsafe { libc::geteuid() };
    fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// A UTF-8 locale other than C that this host has, for run 2's LANG.
fn installed_locale() -> Option<String> {
    let mut locale = crate::tools::command("locale").ok()?;
    locale.arg("-a");
    let text = crate::tools::capture(locale).ok()?;
    let have: Vec<&str> = text.lines().collect();
    ["fr_FR.utf8", "de_DE.utf8", "en_US.utf8", "C.utf8"]
        .iter()
        .find(|l| have.contains(l))
        .map(|l| l.replace(".utf8", ".UTF-8"))
}

/// Names never copied with the project: build products and VCS data.
fn skip_in(project: &Path) -> BTreeSet<PathBuf> {
    ["target", "output", ".git", "node_modules"]
        .iter()
        .map(|n| project.join(n))
        .collect()
}

/// Copies `src` to `dst` (modes and symlinks kept, `.git` and `skip`
/// left out), creating each directory's entries in name order or in
/// reverse.
pub fn copy_tree(src: &Path, dst: &Path, reverse: bool, skip: &BTreeSet<PathBuf>) -> Result<()> {
    fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut entries: Vec<_> = fs::read_dir(src)
        .with_context(|| format!("listing {}", src.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    if reverse {
        entries.reverse();
    }
    for entry in entries {
        let from = entry.path();
        if skip.contains(&from) || entry.file_name() == ".git" {
            continue;
        }
        let to = dst.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            fs_err::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else if kind.is_dir() {
            copy_tree(&from, &to, reverse, skip)?;
            fs::set_permissions(&to, fs::metadata(&from)?.permissions())?;
        } else if kind.is_file() {
            fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        }
    }
    Ok(())
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry?;
        fs_err::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))
            .with_context(|| format!("chown {}", entry.path().display()))?;
    }
    Ok(())
}

/// Lays out in `view` what `--against DIR` compares with run 2's `output`:
/// DIR's copy of each file run 2 made (logs aside), and DIR's manifest cut
/// down to run 2's artifacts (DIR may hold more, from other builds).
/// Returns how many of DIR's files are left out.
pub fn against_view(dir: &Path, output: &Path, view: &Path) -> Result<usize> {
    use crate::output::manifest::Manifest;
    let made = files(output)?;
    for name in &made {
        let (from, to) = (dir.join(name), view.join(name));
        if name == "manifest.json" || !from.is_file() {
            continue;
        }
        fs::create_dir_all(to.parent().expect("under the view"))
            .with_context(|| format!("creating {}", view.display()))?;
        // A link costs nothing and the view is only read; copied across
        // file systems.
        fs::hard_link(&from, &to)
            .or_else(|_| fs::copy(&from, &to).map(drop))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    let theirs = dir.join("manifest.json");
    let bytes = fs::read(&theirs).with_context(|| format!("reading {}", theirs.display()))?;
    let ours = Manifest::read_or_empty(&output.join("manifest.json"));
    let names: BTreeSet<&str> = ours.artifacts.iter().map(|a| a.name.as_str()).collect();
    // Unchanged bytes when DIR names the same artifacts; else DIR's entries
    // for run 2's artifacts, written as Kiln writes a manifest.
    let cut = match serde_json::from_slice::<Manifest>(&bytes) {
        Ok(mut m) if m.artifacts.iter().any(|a| !names.contains(a.name.as_str())) => {
            m.artifacts.retain(|a| names.contains(a.name.as_str()));
            m.to_bytes()
        }
        _ => bytes,
    };
    fs::create_dir_all(view).with_context(|| format!("creating {}", view.display()))?;
    fs::write(view.join("manifest.json"), cut)
        .with_context(|| format!("writing {}", view.display()))?;
    Ok(files(dir)?.difference(&made).count())
}

/// One artifact in the comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Relative to the output directory.
    pub artifact: String,
    pub run1: Option<Digest>,
    pub run2: Option<Digest>,
    /// Different bytes, but only by Authenticode signatures: a signed
    /// release against an unsigned rebuild.
    pub signatures_only: bool,
}

impl Row {
    pub fn identical(&self) -> bool {
        self.run1.is_some() && self.run1 == self.run2
    }

    /// The row of the file `artifact` at `one` and at `two` (either may be
    /// missing); only files that differ are read whole, to see whether their
    /// signatures are all that differs.
    pub fn of_files(artifact: String, one: &Path, two: &Path) -> Result<Row> {
        let digest = |p: &Path| -> Result<Option<Digest>> {
            match p.is_file() {
                true => Ok(Some(Digest::of_file(p)?.0)),
                false => Ok(None),
            }
        };
        let (run1, run2) = (digest(one)?, digest(two)?);
        let signatures_only = match (run1, run2) {
            (Some(a), Some(b)) if a != b => {
                diff::differ_only_by_signatures(&fs::read(one)?, &fs::read(two)?)
            }
            _ => false,
        };
        Ok(Row {
            artifact,
            run1,
            run2,
            signatures_only,
        })
    }
}

/// The files under an output directory, relative to it: the artifacts and
/// the manifest, not what Kiln keeps there for itself (tool logs, the
/// install lock and staging).
fn files(dir: &Path) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let rel = entry
            .path()
            .strip_prefix(dir)?
            .to_string_lossy()
            .into_owned();
        let own = rel != crate::layout::MANIFEST && crate::layout::reserved(&rel).is_some();
        if entry.file_type().is_file() && !own {
            names.insert(rel);
        }
    }
    Ok(names)
}

/// Every file under either output directory (tool logs aside), with its
/// sha256 in each.
pub fn compare_outputs(a: &Path, b: &Path) -> Result<Vec<Row>> {
    let mut names = files(a)?;
    names.extend(files(b)?);
    if names.is_empty() {
        bail!("neither {} nor {} holds any file", a.display(), b.display());
    }
    names
        .into_iter()
        .map(|name| Row::of_files(name.clone(), &a.join(&name), &b.join(&name)))
        .collect()
}

/// The table: artifact, sha256 of each run (12 digits), identical or not.
pub fn table(rows: &[Row]) -> String {
    let width = rows
        .iter()
        .map(|r| r.artifact.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let short = |d: &Option<Digest>| d.map_or("(missing)".to_string(), |d| d.short());
    let mut out = format!(
        "{:width$}  {:12}  {:12}  result\n",
        "artifact", "run 1", "run 2"
    );
    for r in rows {
        let result = if r.identical() {
            "identical"
        } else if r.signatures_only {
            "identical but for signatures"
        } else {
            "DIFFERS"
        };
        out.push_str(&format!(
            "{:width$}  {:12}  {:12}  {result}\n",
            r.artifact,
            short(&r.run1),
            short(&r.run2)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::manifest::{Artifact, Manifest};

    fn artifact(name: &str, bytes: &[u8]) -> Artifact {
        Artifact {
            name: name.into(),
            path: name.into(),
            kind: "initramfs".into(),
            arch: "x86_64".into(),
            sha256: Digest::of_bytes(bytes),
            size: bytes.len() as u64,
            recipe: "r".into(),
            step_key: Digest::of_bytes(b"key"),
            inputs: Default::default(),
            details: None,
        }
    }

    fn output(dir: &Path, files: &[(&str, &[u8])]) {
        let mut m = Manifest::new(1);
        for (name, bytes) in files {
            fs::create_dir_all(dir.join(name).parent().unwrap()).unwrap();
            fs::write(dir.join(name), bytes).unwrap();
            m.merge(vec![artifact(name, bytes)]);
        }
        fs::create_dir_all(dir.join("logs")).unwrap();
        fs::write(dir.join("logs/step.log"), "not compared").unwrap();
        m.write(&dir.join("manifest.json")).unwrap();
    }

    #[test]
    fn against_compares_only_what_run_2_made_and_their_manifest_entries() {
        let t = tempfile::tempdir().unwrap();
        let (dir, run2, view) = (t.path().join("dir"), t.path().join("o"), t.path().join("v"));
        output(&dir, &[("a/x.img", b"x"), ("b/y.img", b"y")]);
        output(&run2, &[("a/x.img", b"x")]);
        assert_eq!(against_view(&dir, &run2, &view).unwrap(), 1);
        let rows = compare_outputs(&view, &run2).unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r.artifact.as_str()).collect();
        assert_eq!(names, ["a/x.img", "manifest.json"]);
        assert!(rows.iter().all(Row::identical), "{rows:?}");
        // Other bytes in DIR are a difference.
        fs::write(dir.join("a/x.img"), b"z").unwrap();
        let view2 = t.path().join("v2");
        against_view(&dir, &run2, &view2).unwrap();
        let rows = compare_outputs(&view2, &run2).unwrap();
        assert!(!rows[0].identical());
    }
}
