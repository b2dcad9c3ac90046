//! `repro`: build targets twice, each run with an empty cache of its own in
//! another directory and environment, and compare every artifact.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::Settings;
use crate::repro::{self, diff, Row};

#[derive(Debug, Args)]
#[command(
    long_about = "Builds the targets twice, each run in its own directory with its own \
empty cache, so the runs share nothing but the host's tools and the pinned inputs. Run 2 sits \
deeper in the file system, under another time zone, locale, umask and job count, creates its \
files in reverse order, and, when started as root, runs as `nobody` under another host name (a \
UTS namespace). SOURCE_DATE_EPOCH (or each recipe's epoch) is the same in both.\n\n\
Then every artifact and the manifest are compared: a table gives each one's sha256 in both runs, \
and for each difference the smallest part that differs: the cpio member and field, the file in an \
ISO or FAT image, the PE section or header field, the bzImage's setup header or compressed \
payload and then its embedded initramfs member, or else the first differing offset. Exit status \
1 when anything differs.\n\n\
`--against DIR` builds once, as run 2, and compares with DIR in place of run 1: an output \
directory built earlier by a plain `build`, by CI, or downloaded from a release. Only the \
artifacts run 2 makes are compared (DIR may hold more); DIR's manifest is compared by those \
artifacts' entries. `--run1-cache DIR` lets run 1 build with an existing cache (the project's, \
CI's shared one), which is then checked against run 2's build from nothing; both runs still \
build at the same time. `--compare RUN1 RUN2` builds nothing and compares two output directories \
(or files) built earlier."
)]
pub struct ReproArgs {
    /// Targets built in both runs: recipe names or `<recipe>/<file>`, as for `build`.
    #[arg(value_name = "TARGET")]
    pub targets: Vec<String>,
    /// Keep both runs' directories (project copy, cache, output, build log) and print where.
    #[arg(long)]
    pub keep: bool,
    /// Also run diffoscope on each differing artifact, when it is installed; its report goes to
    /// output/logs/diffoscope/.
    #[arg(long)]
    pub diffoscope: bool,
    /// Where the runs are made (default: a new directory under $TMPDIR). Must not exist yet.
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// Give a recipe variable another value in each run, e.g. `--vary release=a,b`: a planted
    /// difference, to see which artifacts the variable reaches and how repro reports it.
    #[arg(long, value_name = "NAME=RUN1,RUN2", value_parser = parse_vary)]
    pub vary: Vec<(String, String, String)>,
    /// Build the targets once, as run 2, and compare with DIR (an output directory built
    /// earlier: `output/`, CI's, a release's) in place of building run 1.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["vary", "run1_cache"])]
    pub against: Option<PathBuf>,
    /// Run 1 builds with this cache (the project's, or CI's shared one) instead of an empty
    /// one: what the cache already holds is then checked against run 2's build from nothing.
    #[arg(long, value_name = "DIR")]
    pub run1_cache: Option<PathBuf>,
    /// Build nothing: compare two output directories (or two files) built earlier.
    #[arg(long, num_args = 2, value_names = ["RUN1", "RUN2"],
          conflicts_with_all = ["targets", "vary", "keep", "work", "against", "run1_cache"])]
    pub compare: Option<Vec<PathBuf>>,
}

fn parse_vary(s: &str) -> Result<(String, String, String), String> {
    let (name, values) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=RUN1,RUN2, got `{s}`"))?;
    let (one, two) = values
        .split_once(',')
        .ok_or_else(|| format!("expected two values separated by a comma in `{s}`"))?;
    if name.is_empty() || one == two {
        return Err(format!("`{s}`: give a name and two different values"));
    }
    Ok((name.to_string(), one.to_string(), two.to_string()))
}

pub fn repro(s: &Settings, a: &ReproArgs) -> Result<ExitCode> {
    if let Some(dirs) = &a.compare {
        let rows = compare(&dirs[0], &dirs[1])?;
        return report(s, a, &rows, (&dirs[0], &dirs[1]), None);
    }
    if let Some(dir) = &a.against {
        if !dir.join("manifest.json").is_file() {
            bail!(
                "--against {}: no manifest.json there; give an output directory Kiln built",
                dir.display()
            );
        }
    }
    if a.targets.is_empty() {
        bail!("name the targets to build twice, e.g. `cargo xtask repro stage2 modules` (the recipes in {})", s.recipes_dir.display());
    }
    // An unknown target or a recipe error fails here, naming the real files,
    // not later in a copy.
    let mut first = s.clone();
    for (name, one, _) in &a.vary {
        first.vars.insert(name.clone(), one.clone());
    }
    super::session::check_targets(&first, &a.targets)?;
    let recipes = s
        .recipes_dir
        .canonicalize()
        .with_context(|| format!("recipes directory {}", s.recipes_dir.display()))?;
    let project = recipes
        .parent()
        .context("the recipes directory has no parent")?;
    let recipes_rel = Path::new(recipes.file_name().context("recipes directory name")?);
    let project_name = project
        .file_name()
        .map_or("project".to_string(), |n| n.to_string_lossy().into_owned());
    let work = make_work_dir(a.work.as_deref())?;
    let result = build_and_compare(s, a, &work, project, recipes_rel, &project_name);
    match &result {
        Ok(_) if !a.keep => {
            let _ = fs_err::remove_dir_all(&work);
        }
        Ok(_) => match a.against {
            None => println!("kept both runs in {}", work.display()),
            Some(_) => println!("kept run 2 in {}", work.display()),
        },
        Err(_) => {
            for run in ["run1", "run2/a/much/deeper/build/directory"] {
                let _ = fs_err::remove_dir_all(work.join(run).join("cache"));
            }
            eprintln!(
                "kept {} for inspection (caches removed; each run's build.log is there)",
                work.display()
            );
        }
    }
    result
}

fn build_and_compare(
    s: &Settings,
    a: &ReproArgs,
    work: &Path,
    project: &Path,
    recipes_rel: &Path,
    project_name: &str,
) -> Result<ExitCode> {
    let exe = work.join("bin/xtask");
    fs_err::create_dir_all(work.join("bin"))?;
    fs_err::copy(std::env::current_exe()?, &exe).context("copying this program for the runs")?;
    let (mut run1, mut run2, mut variations) = repro::plan_runs(work, project_name, s.jobs);
    run1.given_cache.clone_from(&a.run1_cache);
    for (name, value) in &s.vars {
        for run in [&mut run1, &mut run2] {
            run.vars.push((name.clone(), value.clone()));
        }
    }
    for (name, one, two) in &a.vary {
        run1.vars.push((name.clone(), one.clone()));
        run2.vars.push((name.clone(), two.clone()));
        variations.push(repro::Variation {
            name: "recipe variable (--vary)",
            run1: format!("{name}={one}"),
            run2: format!("{name}={two}"),
            skipped: None,
        });
    }
    let against = a.against.as_deref();
    println!("variations between the runs:");
    if let Some(dir) = against {
        println!(
            "  (run 1 is {}, built earlier: its side is what it was built under)",
            dir.display()
        );
    }
    for v in &variations {
        let one = match against {
            Some(_) => "(as built)",
            None => &v.run1,
        };
        match &v.skipped {
            None => println!("  {:26} {one}  |  {}", v.name, v.run2),
            Some(why) => println!("  {:26} not varied: {why}", v.name),
        }
    }
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .map_or("unset (each recipe's epoch)".to_string(), |e| e.to_string());
    match &a.run1_cache {
        None => println!("  held fixed: SOURCE_DATE_EPOCH {epoch}; no cache shared, no remote cache"),
        Some(c) => println!(
            "  held fixed: SOURCE_DATE_EPOCH {epoch}; run 1 builds with the cache {}, run 2 from an empty one; no remote cache",
            c.display()
        ),
    }
    let sources: Vec<(String, PathBuf)> = s
        .source_overrides
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // This output and cache, and the work directory, when inside the project.
    let skip = [
        Some(&s.output_dir),
        Some(&s.cache_dir),
        Some(&work.to_path_buf()),
        a.run1_cache.as_ref(),
    ]
    .into_iter()
    .flatten()
    .filter_map(|p| p.canonicalize().ok())
    .collect();
    let build = |run: &repro::Run| {
        let start = std::time::Instant::now();
        println!(
            "run {}: building {} with -j{} (log: {})",
            run.number,
            a.targets.join(" "),
            run.jobs,
            run.log().display()
        );
        // One run shows its progress on a terminal: run 1, or run 2 alone.
        let progress = run.number == 1 || against.is_some();
        let built = repro::build(
            run,
            progress,
            &exe,
            project,
            recipes_rel,
            &sources,
            &a.targets,
            &skip,
        );
        if built.is_ok() {
            println!(
                "run {} built {} in {:.1}s",
                run.number,
                a.targets.join(" "),
                start.elapsed().as_secs_f64()
            );
        }
        built
    };
    if let Some(dir) = against {
        build(&run2)?;
        let view = work.join("against");
        let left_out = repro::against_view(dir, &run2.output(), &view)?;
        if left_out > 0 {
            println!(
                "{left_out} file(s) of {} not among run 2's artifacts: not compared",
                dir.display()
            );
        }
        // DIR's store is this cache when DIR came from it; opened only if it
        // exists, to explain a differing manifest.
        let mine = match s.cache_dir.is_dir() {
            true => Some(crate::store::Store::open(&s.cache_dir)?),
            false => None,
        };
        let theirs = crate::store::Store::open(&run2.cache())?;
        let rows = repro::compare_outputs(&view, &run2.output())?;
        let stores = mine.as_ref().map(|m| (m, &theirs));
        return report(s, a, &rows, (&view, &run2.output()), stores);
    }
    // The runs share nothing, so they build at the same time: run 2's
    // smaller job count then leaves no CPU idle, and the check takes about
    // as long as one build of both.
    let (built1, built2) = std::thread::scope(|scope| {
        let second = scope.spawn(|| build(&run2));
        let first = build(&run1);
        (first, second.join().expect("run 2's thread panicked"))
    });
    built1?;
    built2?;
    // Both stores stay until the report: a manifest that differs is
    // explained by opening the differing step inputs in each (the caller
    // removes them afterwards unless --keep).
    let stores = (
        crate::store::Store::open(&run1.cache())?,
        crate::store::Store::open(&run2.cache())?,
    );
    let rows = repro::compare_outputs(&run1.output(), &run2.output())?;
    report(
        s,
        a,
        &rows,
        (&run1.output(), &run2.output()),
        Some((&stores.0, &stores.1)),
    )
}

fn make_work_dir(work: Option<&Path>) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match work {
        Some(dir) => {
            if dir.exists() {
                bail!(
                    "--work {} already exists: give a new directory",
                    dir.display()
                );
            }
            fs_err::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.canonicalize()?
        }
        None => tempfile::Builder::new()
            .prefix("kiln-repro-")
            .tempdir()
            .context("creating a work directory under $TMPDIR")?
            .keep(),
    };
    // Run 2 may run as another user: it must reach its own directory.
    fs_err::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    if repro::is_root() {
        let mut at = dir.parent();
        while let Some(parent) = at {
            let mode = fs_err::metadata(parent)?.permissions().mode();
            if mode & 0o001 == 0 {
                bail!(
                    "run 2 runs as `nobody`, who cannot enter {} (mode {:o}): give --work under a directory anyone can enter, such as /tmp",
                    parent.display(),
                    mode & 0o7777
                );
            }
            at = parent.parent();
        }
    }
    Ok(dir)
}

/// Rows for two directories, or for two files.
fn compare(one: &Path, two: &Path) -> Result<Vec<Row>> {
    for p in [one, two] {
        if !p.exists() {
            bail!("{} does not exist", p.display());
        }
    }
    if one.is_file() && two.is_file() {
        let name = one.file_name().unwrap_or_default().to_string_lossy();
        return Ok(vec![Row::of_files(name.into_owned(), one, two)?]);
    }
    repro::compare_outputs(one, two)
}

fn report(
    s: &Settings,
    a: &ReproArgs,
    rows: &[Row],
    (one, two): (&Path, &Path),
    stores: repro::inputs::Stores,
) -> Result<ExitCode> {
    println!();
    print!("{}", repro::table(rows));
    let differing: Vec<&Row> = rows.iter().filter(|r| !r.identical()).collect();
    let path = |dir: &Path, r: &Row| {
        if dir.is_file() {
            dir.to_path_buf()
        } else {
            dir.join(&r.artifact)
        }
    };
    for r in &differing {
        println!("\n{}:", r.artifact);
        if r.run1.is_none() || r.run2.is_none() {
            let only = if r.run1.is_some() { 1 } else { 2 };
            println!("  only run {only} made it");
            continue;
        }
        let (x, y) = (fs_err::read(path(one, r))?, fs_err::read(path(two, r))?);
        let findings =
            repro::inputs::explain(&x, &y, stores).unwrap_or_else(|| diff::explain(&x, &y));
        for finding in findings {
            println!("  {finding}");
        }
        if a.diffoscope {
            diffoscope(s, &r.artifact, &path(one, r), &path(two, r))?;
        }
    }
    println!();
    let signed = differing.iter().filter(|r| r.signatures_only).count();
    let mut differ = differing.len() - signed;
    // The manifests of a signed and an unsigned build differ in exactly
    // those artifacts' entries (sha256, step key, signature).
    let manifest_follows = signed > 0
        && differ == 1
        && differing
            .iter()
            .any(|r| r.artifact == crate::layout::MANIFEST);
    if manifest_follows {
        differ = 0;
    }
    if differing.is_empty() {
        println!(
            "reproducible: all {} artifacts identical in both runs",
            rows.len()
        );
        Ok(ExitCode::SUCCESS)
    } else if differ == 0 {
        println!(
            "reproducible: all {} artifacts identical, {signed} of them once their Authenticode signatures are stripped",
            rows.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "NOT reproducible: {differ} of {} artifacts differ{}",
            rows.len(),
            match signed {
                0 => String::new(),
                n => format!(" ({n} more only by their signatures)"),
            }
        );
        Ok(ExitCode::FAILURE)
    }
}

fn diffoscope(s: &Settings, artifact: &str, one: &Path, two: &Path) -> Result<()> {
    let Ok(mut cmd) = crate::tools::command("diffoscope") else {
        println!("  diffoscope is not installed (apt-get install diffoscope); the lines above are Kiln's own diff");
        return Ok(());
    };
    let dir = s.output_dir.join("logs/diffoscope");
    fs_err::create_dir_all(&dir)?;
    let report = dir.join(format!("{}.txt", artifact.replace('/', "_")));
    cmd.arg("--text").arg(&report).arg(one).arg(two);
    // diffoscope exits 1 when it finds differences: that is its answer.
    let status = cmd.status().context("running diffoscope")?;
    match status.code() {
        Some(0 | 1) => println!("  diffoscope: {}", report.display()),
        _ => println!("  diffoscope failed ({status}); Kiln's diff above stands"),
    }
    Ok(())
}
