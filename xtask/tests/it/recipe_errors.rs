//! Golden tests: each directory under tests/data/recipe-errors is a broken
//! recipe set; the exact error text an operator sees is in `expected.txt`.
//! `KILN_BLESS=1 cargo test --test recipe_errors` rewrites the goldens.

use std::collections::BTreeMap;
use std::path::Path;

fn error_text(dir: &Path) -> String {
    let store_dir = tempfile::tempdir().unwrap();
    let result = kiln::recipe::load(dir, &BTreeMap::new()).and_then(|recipes| {
        let store = kiln::store::Store::open(store_dir.path())?;
        kiln::plan::plan(
            &recipes,
            &["stage2".to_string()],
            &store,
            &Default::default(),
        )
        .map(|_| ())
    });
    match result {
        Ok(()) => panic!("{} loaded without error", dir.display()),
        Err(e) => kiln::cli::format_error(&e),
    }
}

fn check(case: &str) {
    let dir = Path::new("tests/data/recipe-errors").join(case);
    let actual = error_text(&dir);
    let golden = dir.join("expected.txt");
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(&golden, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    assert_eq!(
        actual, expected,
        "error text for {case} changed; run with KILN_BLESS=1 to accept:\n{actual}"
    );
}

#[test]
fn unknown_key_names_file_line_column_and_nearest_key() {
    check("unknown-key");
}

#[test]
fn wrong_type_names_the_field() {
    check("wrong-type");
}

#[test]
fn unknown_variable_in_a_template_names_the_template_line() {
    check("unknown-variable");
}

#[test]
fn missing_source_names_the_recipe_line() {
    check("missing-source");
}

#[test]
fn out_of_range_level_names_the_compressor_and_range() {
    check("bad-level");
}

#[test]
fn bad_rom_entries_name_each_field() {
    check("bad-rom");
}

#[test]
fn rom_versions_and_combined_roms_that_cannot_be_made_name_the_field() {
    check("bad-rom-layout");
}

#[test]
fn a_kernel_or_iso_that_contradicts_the_recipe_arch_names_the_field() {
    check("bad-arch");
}

#[test]
fn signing_kinds_must_be_known_built_and_named_once() {
    check("bad-signing");
}
