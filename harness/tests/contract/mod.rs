//! result.json as a contract, for the tests that read one: it is read only after it validates against the
//! checked-in JSON Schema (`netfault::report::result::SCHEMA`).

use std::path::Path;
use std::sync::OnceLock;

/// Reads `path` (a result.json) and validates it; `Err` says which file and every way it breaks the schema.
pub fn checked_result(path: &Path) -> Result<serde_json::Value, String> {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        let schema = serde_json::from_str(netfault::report::result::SCHEMA).expect("the schema is JSON");
        jsonschema::validator_for(&schema).expect("the schema is a JSON Schema")
    });
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let errors: Vec<String> =
        validator.iter_errors(&value).map(|error| format!("  at {}: {error}", error.instance_path())).collect();
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(format!("{} does not match result.schema.json:\n{}", path.display(), errors.join("\n")))
    }
}
