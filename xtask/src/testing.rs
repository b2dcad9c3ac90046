//! Whether a test's prerequisite is on this machine: the one place that
//! decides to run, skip or fail, for the unit tests here and the end-to-end
//! tests in `xtask/tests/it` alike. Test support only: no build path uses it.
//!
//! `KILN_TEST_REQUIRE=all` (set by `.ci/run` and both CI pipelines) turns a
//! missing prerequisite into a failure naming it and how to get it: in CI
//! nothing skips. Without
//! it the test returns early and says so twice where `cargo test`'s output
//! capture cannot hide it: a `SKIPPED` line on stderr when it happens, and a
//! summary of every skip when the test binary exits.

use std::io::Write;
use std::sync::{Mutex, Once};

/// Skips so far: (test, prerequisite, how to get it).
static SKIPPED: Mutex<Vec<(String, &'static str, String)>> = Mutex::new(Vec::new());
static SUMMARY: Once = Once::new();

/// Whether every prerequisite must be present (`KILN_TEST_REQUIRE=all`).
fn required() -> bool {
    std::env::var("KILN_TEST_REQUIRE").is_ok_and(|v| v == "all")
}

/// The running test's name (libtest names each test's thread after it).
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string()
}

/// `present`, after failing (when required) or reporting the skip when the
/// prerequisite `name` is missing; `how` tells how to get it.
pub fn have(name: &'static str, present: bool, how: &str) -> bool {
    if present {
        return true;
    }
    let test = test_name();
    assert!(
        !required(),
        "{test} needs {name}, which is missing: {how} (KILN_TEST_REQUIRE=all makes this a failure)"
    );
    // Written to the stream itself: `println!` and `eprintln!` are captured.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: no {name} ({how})");
    SKIPPED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((test, name, how.to_string()));
    SUMMARY.call_once(|| {
        // SAFETY: registers a plain function with no preconditions.
        unsafe { libc::atexit(print_summary) };
    });
    false
}

/// Runs at exit, after the harness's own summary.
extern "C" fn print_summary() {
    let skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    let mut text = format!(
        "\n{} test(s) SKIPPED for missing prerequisites (KILN_TEST_REQUIRE=all makes each a failure):\n",
        skipped.len()
    );
    for (test, name, how) in skipped.iter() {
        text.push_str(&format!("  {test}: no {name} ({how})\n"));
    }
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// A program on PATH, named `program` in reports.
pub fn program(program: &'static str, how: &str) -> bool {
    have(program, crate::tools::find(program).is_some(), how)
}
