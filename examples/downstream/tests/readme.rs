//! The README's "Test your own program" shows this crate: its test target, its one-line `tests/faults.rs` and
//! its blackhole scenario, verbatim.

use std::path::Path;

fn read(path: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
}

/// The fenced block of `language` whose first line is `first_line`, without that line.
fn block_after(readme: &str, language: &str, first_line: &str) -> String {
    let opening = format!("```{language}\n{first_line}\n");
    let start = readme.find(&opening).unwrap_or_else(|| panic!("README has no block opening with {first_line:?}"))
        + opening.len();
    let end = readme[start..].find("```\n").expect("the block is closed") + start;
    readme[start..end].to_string()
}

#[test]
fn the_readme_shows_this_crate_verbatim() {
    let readme = read("../../README.md");
    let scenario = block_after(
        &readme,
        "yaml",
        "# tests/faults/blackhole-mid-request.yaml: the crate's binaries are ${CARGO_BIN_EXE_<name>}",
    );
    assert_eq!(scenario, read("tests/faults/blackhole-mid-request.yaml"));
    assert_eq!(block_after(&readme, "rust", "// tests/faults.rs"), read("tests/faults.rs"));
    let manifest = block_after(&readme, "toml", "# Cargo.toml");
    let test_target = &manifest[manifest.find("[[test]]").expect("the README's manifest has a [[test]]")..];
    assert!(read("Cargo.toml").contains(test_target), "Cargo.toml lacks the README's {test_target}");
}
