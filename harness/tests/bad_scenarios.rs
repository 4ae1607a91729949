//! Every file under tests/bad-scenarios/ must be refused by `netfault::scenario::load` with the error its
//! first line announces: `# error: LINE:COLUMN: part of the message`.

use std::path::{Path, PathBuf};

use netfault::scenario::{discover, load};

struct Expected {
    line: usize,
    column: usize,
    message: String,
}

fn expected_error(file: &Path) -> Result<Expected, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    let header = text.lines().next().unwrap_or("");
    let rest = header
        .strip_prefix("# error: ")
        .ok_or("first line must be `# error: LINE:COLUMN: message`")?;
    let mut parts = rest.splitn(3, ':');
    let line = parts
        .next()
        .and_then(|n| n.trim().parse().ok())
        .ok_or("bad LINE in header")?;
    let column = parts
        .next()
        .and_then(|n| n.trim().parse().ok())
        .ok_or("bad COLUMN in header")?;
    let message = parts
        .next()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .ok_or("empty message in header")?;
    Ok(Expected {
        line,
        column,
        message: message.to_string(),
    })
}

fn corpus() -> (PathBuf, Vec<PathBuf>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-scenarios");
    let files = discover(&root).expect("list tests/bad-scenarios");
    (root, files)
}

#[test]
fn every_bad_scenario_fails_with_its_announced_error() {
    let (root, files) = corpus();
    assert!(
        files.len() >= 30,
        "the corpus holds {} files; it must keep at least 30",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let expected = match expected_error(file) {
            Ok(expected) => expected,
            Err(problem) => {
                failures.push(format!("{}: {problem}", file.display()));
                continue;
            }
        };
        let error = match load(&root, file) {
            Ok(_) => {
                failures.push(format!("{}: loaded without error", file.display()));
                continue;
            }
            Err(error) => error,
        };
        let shown = error.to_string();
        let prefix = format!("{}:{}:{}: ", file.display(), expected.line, expected.column);
        if error.file != *file
            || !shown.starts_with(&prefix)
            || !error.message.contains(&expected.message)
        {
            failures.push(format!(
                "{}\n    expected: {}:{}: ...{}...\n    got:      {}",
                file.display(),
                expected.line,
                expected.column,
                expected.message,
                shown
                    .strip_prefix(&format!("{}:", file.display()))
                    .unwrap_or(&shown)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad scenarios differ:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
