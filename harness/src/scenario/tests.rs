//! Unit tests of the scenario loader: good files to plans, bad files to positioned messages.

use std::path::Path;

use super::*;

#[test]
fn debug_complete() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/good-scenarios");
    let plan = load(&root, &root.join("complete.yaml"));
    println!("{plan:#?}");
}
