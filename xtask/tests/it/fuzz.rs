//! The readers of outside bytes under a bounded fuzzing run (`kiln::bench::fuzz`):
//! a fixed number of mutated cases per reader from a fixed seed, and every
//! input that ever crashed one, kept in `tests/data/fuzz/<reader>/`.
//! `cargo xtask bench fuzz` runs the same readers for longer.

use std::path::Path;
use std::time::Duration;

use kiln::bench::fuzz;

/// Cases per reader; the unpackers write files, so fewer.
fn cases(reader: &str) -> u64 {
    match reader {
        "deb" | "tar" => 300,
        _ => 3000,
    }
}

#[test]
fn no_reader_panics_on_mutated_inputs_or_on_any_input_that_once_crashed_one() {
    let work = tempfile::tempdir().unwrap();
    let (targets, missing) = fuzz::targets(work.path());
    for name in missing {
        let how = match name {
            "iso9660" => "apt-get install xorriso",
            "pe" => "apt-get install systemd-boot-efi",
            "optrom" => "apt-get install ipxe-qemu (comes with qemu-system-x86)",
            _ => "see kiln::bench::fuzz",
        };
        if !kiln::testing::have(
            "a seed input for the fuzzing",
            false,
            &format!("{name}: {how}"),
        ) {
            return;
        }
    }
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz");
    let mut failures = Vec::new();
    let mut total = 0;
    for target in &targets {
        let found = fuzz::fuzz(
            target,
            1,
            cases(target.name),
            Duration::from_secs(120),
            work.path(),
        );
        total += found.executions;
        for (input, message) in &found.crashes {
            let digest = kiln::store::Digest::of_bytes(input).hex();
            failures.push(format!(
                "{}: {message} (a {}-byte input, sha256 {digest})",
                target.name,
                input.len()
            ));
        }
        let saved = std::fs::read_dir(corpus.join(target.name))
            .into_iter()
            .flatten();
        for file in saved.filter_map(Result::ok) {
            let input = std::fs::read(file.path()).unwrap();
            if let Err(message) = fuzz::run_one(target, &input, work.path()) {
                failures.push(format!(
                    "{}: {message} ({})",
                    target.name,
                    file.path().display()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "readers panicked:\n{}",
        failures.join("\n")
    );
    eprintln!(
        "fuzzing: {total} cases over {} readers, no panic",
        targets.len()
    );
}
