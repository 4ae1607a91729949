//! Scenario files: the YAML wire schema, its validation into a [`plan::Plan`], and discovery on disk.
//!
//! `load` = read bytes -> refuse oversized or non-UTF-8 files -> index node positions (one document, bounded
//! nesting, unique keys) -> serde into [`schema::ScenarioWire`] -> [`validate::validate`] into a `Plan`.
//! Every error names the file, line and column, what is wrong and what is allowed.

pub mod duration;
pub mod impairment;
pub mod locate;
pub mod names;
pub mod plan;
pub mod schema;
pub mod size;
pub mod tcp_info;
pub mod validate;
pub mod variables;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use serde::de::IgnoredAny;

use crate::error::ScenarioError;
use crate::scenario::locate::{location_of_offset, SourceIndex, StructureError, MAX_DEPTH};
use crate::scenario::names::{closest, suggestion};
use crate::scenario::plan::{Location, Plan};
use crate::scenario::schema::{describe_expected, ScenarioWire};
use crate::scenario::variables::Variables;

/// Largest scenario file accepted; real ones are a few KiB.
pub const MAX_FILE_SIZE: usize = 1024 * 1024;

/// Reads, parses and validates `file`, resolving the `${...}` of its exec steps against `variables`; the plan is
/// named by the path of `file` relative to `root`, without `.yaml` / `.yml`, with `/` separators (the file stem
/// when `file` is not under `root`).
pub fn load(root: &Path, file: &Path, variables: &Variables) -> Result<Plan, ScenarioError> {
    let unreadable = |e: std::io::Error| {
        ScenarioError::new(file, None, format!("cannot read the scenario file (cat {}): {e}", file.display()))
    };
    // Opened without blocking, so that a FIFO (which would wait for a writer forever) is refused, not read.
    let opened = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(file).map_err(unreadable)?;
    let kind = opened.metadata().map_err(unreadable)?.file_type();
    if !kind.is_file() {
        return Err(ScenarioError::new(
            file,
            None,
            format!("not a regular file ({}): a scenario is a YAML file", file_kind(kind)),
        ));
    }
    // Reading one byte past the limit is enough to refuse a file without reading all of a huge one.
    let mut bytes = Vec::new();
    opened.take(MAX_FILE_SIZE as u64 + 1).read_to_end(&mut bytes).map_err(unreadable)?;
    parse_bytes(&scenario_name(root, file), file, &bytes, variables)
}

/// What `ls -l` would say a file that is not a regular file is.
fn file_kind(kind: std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a folder"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Refuses oversized or non-UTF-8 `bytes` read from `file`, then parses and validates them into a plan called
/// `name`: all of [`load`] but the reading.
pub fn parse_bytes(name: &str, file: &Path, bytes: &[u8], variables: &Variables) -> Result<Plan, ScenarioError> {
    check_size(file, bytes.len())?;
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let offset = e.valid_up_to();
        ScenarioError::new(
            file,
            Some(location_of_offset(bytes, offset)),
            format!(
                "not UTF-8: byte 0x{:02x} at offset {offset} is not valid UTF-8; scenario files must be UTF-8 text",
                bytes[offset]
            ),
        )
    })?;
    parse_with(name, file, text, variables)
}

/// Parses and validates scenario `text` read from `file` into a plan called `name`, with no variable set but
/// `${scenario_dir}`.
pub fn parse(name: &str, file: &Path, text: &str) -> Result<Plan, ScenarioError> {
    parse_with(name, file, text, &Variables::default())
}

/// Parses and validates scenario `text` read from `file` into a plan called `name`, resolving variables against
/// `variables`.
pub fn parse_with(name: &str, file: &Path, text: &str, variables: &Variables) -> Result<Plan, ScenarioError> {
    // A byte order mark may open a YAML stream; it sits before column 1 of line 1, so positions stay as they are.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    parse_text(name, file, text, variables).map_err(|mut error| {
        error.message = printable(&error.message);
        error.location = error.location.map(|at| within(text, at));
        error
    })
}

/// Each line of `text` made [`printable`], the line breaks kept.
pub fn printable_lines(text: &str) -> String {
    text.split('\n').map(printable).collect::<Vec<_>>().join("\n")
}

/// `at` moved back inside `text` if a parser put it past the end of its line (yaml-rust2 does at the end of
/// the file): at most one column past the line's last character, or column 1 just past the last line.
fn within(text: &str, at: Location) -> Location {
    let mut lines = text.split('\n');
    match lines.nth(at.line.saturating_sub(1)) {
        Some(line) => Location { line: at.line.max(1), column: at.column.clamp(1, line.chars().count() + 1) },
        None => {
            let last = text.split('\n').count();
            Location { line: last + 1, column: 1 }
        }
    }
}

/// `text` with control and other invisible characters escaped as Rust writes them (`\u{1b}`, `\t`): messages
/// quote names and values from the file, which must not move the terminal's cursor or hide text.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\'' | '\\' => c.to_string(),
            _ => c.escape_debug().to_string(),
        })
        .collect()
}

fn parse_text(name: &str, file: &Path, text: &str, variables: &Variables) -> Result<Plan, ScenarioError> {
    check_size(file, text.len())?;
    check_characters(file, text)?;
    let index = SourceIndex::build(text).map_err(|e| structure_error(file, text, e))?;
    let wire: ScenarioWire = serde_norway::from_str(text).map_err(|e| serde_error(file, text, &index, &e))?;
    validate::validate(name, file, &wire, &index, text, variables)
}

/// What [`discover`] found under a path.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// Scenario files, sorted by path.
    pub files: Vec<PathBuf>,
    /// What was left out and why, one line each: `*.yaml` entries that are not regular files (a FIFO would
    /// block the reader forever), and folders reached a second time (a symlink loop would be searched forever
    /// and its files run many times).
    pub skipped: Vec<String>,
}

/// Every `*.yaml` / `*.yml` file under `root`, recursively (`find -L root -name '*.yaml' -type f`), sorted by
/// path, each folder searched once however many links lead to it; just `root` if it is not a folder.
pub fn discover(root: &Path) -> std::io::Result<Discovered> {
    let mut discovered = Discovered::default();
    if !std::fs::metadata(root)?.is_dir() {
        discovered.files.push(root.to_path_buf());
        return Ok(discovered);
    }
    let mut searched: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let metadata = std::fs::metadata(&dir)?;
        if let Some(first) = searched.get(&(metadata.dev(), metadata.ino())) {
            discovered.skipped.push(format!(
                "{}: skipped: the same folder as {} (searched once; a symlink loop or a second link to it)",
                printable_path(&dir),
                printable_path(first)
            ));
            continue;
        }
        searched.insert((metadata.dev(), metadata.ino()), dir.clone());
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            match std::fs::metadata(&path) {
                Ok(metadata) if metadata.is_dir() => pending.push(path),
                Ok(metadata) if is_scenario_file(&path) && !metadata.is_file() => discovered.skipped.push(format!(
                    "{}: skipped: not a regular file ({})",
                    printable_path(&path),
                    file_kind(metadata.file_type())
                )),
                // A link to nowhere is listed: loading it says why it cannot be read.
                _ if is_scenario_file(&path) => discovered.files.push(path),
                _ => {}
            }
        }
    }
    discovered.files.sort();
    Ok(discovered)
}

/// A path as messages show it: control and other invisible characters escaped as Rust writes them, so that a
/// file name cannot move the cursor or print a line of its own (a forged `PASS`).
pub fn printable_path(path: &Path) -> String {
    printable(&path.to_string_lossy())
}

/// Whether the path names a scenario file (`*.yaml`, `*.yml`).
pub fn is_scenario_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// `keepalive/idle` for `root/keepalive/idle.yaml`, and for `root/keepalive/../keepalive/./idle.yaml` too: `.`
/// and `..` that stay under `root` are resolved by name.
pub fn scenario_name(root: &Path, file: &Path) -> String {
    let stem_of = |mut parts: Vec<String>| {
        if let Some(last) = parts.last_mut() {
            for extension in [".yaml", ".yml"] {
                if let Some(stem) = last.strip_suffix(extension) {
                    *last = stem.to_string();
                    break;
                }
            }
        }
        parts.join("/")
    };
    let as_given = |path: &Path| path.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    match file.strip_prefix(root) {
        // A `..` out of the root stays in the name, which `report::report_dir` refuses.
        Ok(relative) if !relative.as_os_str().is_empty() => {
            stem_of(under_root(relative).unwrap_or_else(|| as_given(relative)))
        }
        _ => stem_of(as_given(Path::new(file.file_name().unwrap_or(file.as_os_str())))),
    }
}

/// The components of a path relative to a root with `.` dropped and `..` taking back the one before it; `None`
/// when a `..` would leave the root.
fn under_root(relative: &Path) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts)
}

fn check_size(file: &Path, size: usize) -> Result<(), ScenarioError> {
    if size <= MAX_FILE_SIZE {
        return Ok(());
    }
    Err(ScenarioError::new(
        file,
        Some(Location { line: 1, column: 1 }),
        format!(
            "file is larger than 1 MiB ({MAX_FILE_SIZE} bytes), the limit for a scenario file; real ones are a few KiB"
        ),
    ))
}

/// Refuses characters YAML does not allow in a file (control characters other than tab and line breaks,
/// U+FFFE, U+FFFF), which libyaml reports by byte offset only, and line breaks other than `\n` and `\r\n`: the
/// YAML parsers start a new line at a lone `\r` (and libyaml at U+0085, U+2028 and U+2029), most editors do not,
/// so every position after one would point elsewhere.
fn check_characters(file: &Path, text: &str) -> Result<(), ScenarioError> {
    let mut chars = text.char_indices().peekable();
    while let Some((offset, c)) = chars.next() {
        let message = match c {
            '\t' | '\n' => continue,
            '\r' if chars.peek().is_some_and(|(_, next)| *next == '\n') => continue,
            '\r' | '\u{85}' | '\u{2028}' | '\u{2029}' => {
                let what = match c {
                    '\r' => "a carriage return (\\r) without a line feed",
                    '\u{85}' => "a next-line character (U+0085)",
                    '\u{2028}' => "a line separator (U+2028)",
                    _ => "a paragraph separator (U+2029)",
                };
                format!(
                    "{what} breaks the line here for YAML but not in most editors; end lines with \\n (Unix) or \\r\\n (Windows) only"
                )
            }
            _ if c.is_control() || c == '\u{fffe}' || c == '\u{ffff}' => {
                let code = u32::from(c);
                let escape = if code <= 0xff { format!("\\x{code:02x}") } else { format!("\\u{code:04x}") };
                format!(
                    "character U+{code:04X} is not allowed in YAML: remove it, or write it as the escape \"{escape}\" \
                     inside a double-quoted string"
                )
            }
            _ => continue,
        };
        return Err(ScenarioError::new(file, Some(location_of_offset(text.as_bytes(), offset)), message));
    }
    Ok(())
}

/// A structural error of the index; for plain syntax errors libyaml (what serde reads with) says more, such as
/// where an unclosed bracket opened, so its message wins when it has one.
fn structure_error(file: &Path, text: &str, error: StructureError) -> ScenarioError {
    // libyaml checks each token against every open flow collection, so deep nesting (which yaml-rust2 may not
    // have reached when it stopped) costs it minutes per megabyte: it is asked only when the nesting is shallow.
    if error.syntax && flow_depth_bound(text) <= 2 * MAX_DEPTH {
        if let Err(libyaml) = serde_norway::from_str::<IgnoredAny>(text) {
            if let Some(location) = libyaml.location() {
                let location = Location { line: location.line(), column: location.column() };
                return ScenarioError::new(file, Some(location), syntax_message(text, location, &libyaml.to_string()));
            }
        }
    }
    ScenarioError::new(file, Some(error.location), error.message)
}

/// An upper bound of how deep `[` and `{` nest in `text`: brackets inside strings and comments count too.
fn flow_depth_bound(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0);
    for byte in text.bytes() {
        match byte {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// `not valid YAML: <libyaml's words>`, positions as `line:column`, with a hint for tab indentation.
fn syntax_message(text: &str, location: Location, libyaml: &str) -> String {
    let own_position = format!(" at line {} column {}", location.line, location.column);
    let message = libyaml.replacen(&own_position, "", 1);
    let mut message = MARK.replace_all(&message, " at $1:$2").into_owned();
    let rest_of_line =
        text.lines().nth(location.line.saturating_sub(1)).map(|l| l.chars().skip(location.column.saturating_sub(1)));
    let offending = rest_of_line.clone().and_then(|mut rest| rest.next());
    if offending == Some('\t') {
        message.push_str("; YAML indents with spaces, not tabs");
    }
    if message.starts_with("unknown anchor") && offending == Some('*') {
        let alias: String = rest_of_line
            .into_iter()
            .flatten()
            .skip(1)
            .take_while(|c| !c.is_whitespace() && !",[]{}".contains(*c))
            .collect();
        message = format!("unknown anchor: the alias *{alias} refers to no `&{alias}` given before it in the file");
    }
    if let Some(step) = bare_step_above(text, location.line) {
        message.push_str(&format!(
            "; a bare step like `- {step}` cannot take keys: write it as a map, `- {step}: {{}}`, to add name, on, as or expect"
        ));
    }
    format!("not valid YAML: {message}")
}

/// The action of a bare list item (`- close`) on the last non-blank line before `line`, if `line` is indented
/// under it (as keys meant for that step would be).
fn bare_step_above(text: &str, line: usize) -> Option<&str> {
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let offending = text.lines().nth(line.checked_sub(1)?)?;
    let above = text.lines().take(line.saturating_sub(1)).filter(|l| !l.trim().is_empty()).last()?;
    if indent(offending) <= indent(above) {
        return None;
    }
    let item = above.trim().strip_prefix("- ")?.trim();
    (!item.is_empty() && item.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')).then_some(item)
}

static MARK: LazyLock<Regex> = LazyLock::new(|| Regex::new(r" at line (\d+) column (\d+)").expect("constant pattern"));

/// Turns a serde_norway error into one that says where, what is wrong and what is allowed.
fn serde_error(file: &Path, text: &str, index: &SourceIndex, error: &serde_norway::Error) -> ScenarioError {
    let location = error.location().map(|l| Location { line: l.line(), column: l.column() });
    let full = error.to_string();
    let without_position = match full.rfind(" at line ") {
        Some(cut) if location.is_some() => &full[..cut],
        _ => full.as_str(),
    };
    let (path, message) = match without_position.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => (path, rest),
        _ => ("", without_position),
    };
    let context = describe_path(path);
    let message = if let Some(rest) = message.strip_prefix("unknown field `") {
        let (given, allowed) = rest.split_once('`').unwrap_or((rest, ""));
        let allowed: Vec<&str> = allowed.split('`').skip(1).step_by(2).collect();
        if allowed.is_empty() {
            format!("unknown key \"{given}\" in {context}; it takes no keys: write nothing or {{}}")
        } else {
            let mut text = format!(
                "unknown key \"{given}\" in {context}{}allowed: {}",
                suggestion(given, allowed.iter().copied()),
                allowed.join(", ")
            );
            if given == "<<" {
                text.push_str(" (merge keys are not supported: write the keys out)");
            }
            if allowed.contains(&"expect") {
                if let Some(inner) = closest(given, STEP_EXPECT_KEYS) {
                    text.push_str(&format!(
                        " (`{inner}` goes inside the step's expect, e.g. expect: {{ {inner}: ... }})"
                    ));
                }
            }
            text
        }
    } else if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, "something else"));
        let found = if found == "enum" { "a YAML tag (!name), which scenarios do not use" } else { found };
        format!("wrong type for {context}: found {found}, expected {}", describe_expected(expected))
    } else if message == "repetition limit exceeded" {
        return ScenarioError::new(
            file,
            index.first_alias().or(location),
            "aliases (*name) expand to more than 100 times the file's size; write the values out instead",
        );
    } else if path.is_empty() {
        match location {
            Some(at) => syntax_message(text, at, &full),
            None => message.to_string(),
        }
    } else {
        format!("{context}: {message}")
    };
    ScenarioError::new(file, location.or(Some(Location { line: 1, column: 1 })), message)
}

/// Keys of a step's `expect:` map, suggested when one of them is written on the step itself.
const STEP_EXPECT_KEYS: [&str; 7] = ["result", "events", "events_include", "exit", "after", "at", "tolerance"];

/// How messages name the node at a serde path: `step client[2]`, `fault faults[0]`, `the top level`.
fn describe_path(path: &str) -> String {
    if path.is_empty() || path == "." {
        return "the top level".into();
    }
    let last = path.rsplit('.').next().unwrap_or(path);
    let noun = match last.split_once('[') {
        Some((list, _)) => match list {
            "client" | "server" => "step",
            "faults" => "fault",
            "packets" => "packet expectation",
            "states" => "state expectation",
            "timers" => "timer expectation",
            "errors" => "errors expectation",
            "sequence" => "state step",
            _ => "item",
        },
        None if path.starts_with("sysctl.") && path.matches('.').count() > 1 => "sysctl value",
        None => match (last, path.matches('.').count()) {
            ("hosts" | "link" | "capture" | "sysctl" | "expect", 0) => last,
            (_, 1) if path.starts_with("hosts.") => "host",
            (_, 1) if path.starts_with("sysctl.") => "sysctl host",
            ("expect", _) => "step expect",
            ("from" | "until", _) => "trigger",
            ("packet", _) => "packet filter",
            ("action", _) => "fault action",
            _ => last,
        },
    };
    if noun == path {
        format!("`{path}`")
    } else {
        format!("{noun} `{path}`")
    }
}

#[cfg(test)]
mod tests;
