//! Variables in exec steps: `${CARGO_BIN_EXE_<name>}`, `${env:NAME}` and `${scenario_dir}`, what is set, and
//! their substitution into a string (the shell's `${NAME}`, resolved once at validation, never by a shell).

use std::collections::BTreeMap;
use std::path::Path;

use crate::scenario::names::closest;

/// The prefix of a binary's variable, as cargo names it for integration tests (`env!("CARGO_BIN_EXE_<name>")`).
pub const BIN_PREFIX: &str = "CARGO_BIN_EXE_";
/// The prefix of an environment variable's variable.
pub const ENV_PREFIX: &str = "env:";
/// The folder holding the scenario file, absolute.
pub const SCENARIO_DIR: &str = "scenario_dir";

/// What `${...}` may name in a scenario: binaries by their cargo name and the environment of the process that
/// validates the scenario. (`${scenario_dir}` is per file: see [`Scope`].)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variables {
    bins: BTreeMap<String, String>,
    /// `None`: set, but not UTF-8 (program arguments are text).
    env: BTreeMap<String, Option<String>>,
}

impl Variables {
    /// The process environment (`${env:NAME}`), and for each environment variable `CARGO_BIN_EXE_<name>` the
    /// binary `<name>`: what `netfault run` and `netfault check` resolve against.
    pub fn from_environment() -> Variables {
        Variables::from_pairs(std::env::vars_os())
    }

    fn from_pairs(pairs: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>) -> Variables {
        let mut variables = Variables::default();
        for (name, value) in pairs {
            let Some(name) = name.to_str() else { continue };
            let value = value.into_string().ok();
            if let (Some(bin), Some(path)) = (name.strip_prefix(BIN_PREFIX), &value) {
                variables.bins.insert(bin.to_string(), path.clone());
            }
            variables.env.insert(name.to_string(), value);
        }
        variables
    }

    /// Sets `${CARGO_BIN_EXE_<name>}` to `path` (replacing what the environment said).
    pub fn bin(mut self, name: &str, path: impl AsRef<Path>) -> Variables {
        self.bins.insert(name.to_string(), path.as_ref().to_string_lossy().into_owned());
        self
    }

    /// Sets `${env:<name>}` to `value`, as if the environment held it.
    pub fn env(mut self, name: &str, value: &str) -> Variables {
        self.env.insert(name.to_string(), Some(value.to_string()));
        self
    }

    /// The names of the binaries set, sorted.
    pub fn bin_names(&self) -> impl Iterator<Item = &str> {
        self.bins.keys().map(String::as_str)
    }
}

/// A `${...}` that cannot be resolved: where it starts in the string (byte offset), how it is written there,
/// and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    pub offset: usize,
    pub reference: String,
    pub message: String,
}

/// The variables one scenario file resolves against: the [`Variables`] and the file's own folder.
pub struct Scope<'a> {
    variables: &'a Variables,
    /// Absolute; `Err` says why there is none.
    scenario_dir: Result<String, String>,
}

impl<'a> Scope<'a> {
    pub fn new(variables: &'a Variables, file: &Path) -> Scope<'a> {
        let folder = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let scenario_dir = std::path::absolute(folder)
            .map_err(|e| format!("the scenario's folder {} has no absolute path: {e}", folder.display()))
            .and_then(|dir| {
                dir.into_os_string()
                    .into_string()
                    .map_err(|dir| format!("the scenario's folder {} is not UTF-8", Path::new(&dir).display()))
            });
        Scope { variables, scenario_dir }
    }

    /// `text` with every `${NAME}` replaced by its value and every `$${` by `${`.
    pub fn substitute(&self, text: &str) -> Result<String, Unresolved> {
        let mut result = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(dollar) = rest.find('$') {
            result.push_str(&rest[..dollar]);
            let offset = text.len() - rest.len() + dollar;
            let after = &rest[dollar..];
            if let Some(escaped) = after.strip_prefix("$${") {
                result.push_str("${");
                rest = escaped;
            } else if let Some(inner) = after.strip_prefix("${") {
                let Some(end) = inner.find('}') else {
                    return Err(Unresolved {
                        offset,
                        reference: after.to_string(),
                        message: "`${` opens a variable that no `}` closes; write `$${` for a literal `${`".into(),
                    });
                };
                let name = &inner[..end];
                let reference = format!("${{{name}}}");
                let value = self.value(name).map_err(|message| Unresolved { offset, reference, message })?;
                result.push_str(&value);
                rest = &inner[end + 1..];
            } else {
                result.push('$');
                rest = &after[1..];
            }
        }
        result.push_str(rest);
        Ok(result)
    }

    fn value(&self, name: &str) -> Result<String, String> {
        if name == SCENARIO_DIR {
            return self.scenario_dir.clone();
        }
        if let Some(bin) = name.strip_prefix(BIN_PREFIX) {
            if let Some(path) = self.variables.bins.get(bin) {
                return Ok(path.clone());
            }
            let hint = match closest(bin, self.variables.bin_names()) {
                Some(near) => format!("did you mean ${{{BIN_PREFIX}{near}}}? "),
                None => String::new(),
            };
            return Err(format!(
                "unknown variable ${{{name}}}: no binary \"{bin}\" is set; {hint}{}; `cargo test` (cargo >= 1.94) \
                 sets CARGO_BIN_EXE_<name> for each binary of the test's own package; otherwise name it in \
                 `netfault::scenarios!(\"...\", bins = [\"{bin}\"])` or set the environment variable {BIN_PREFIX}{bin}",
                self.set_list(false)
            ));
        }
        if let Some(env) = name.strip_prefix(ENV_PREFIX) {
            return match self.variables.env.get(env) {
                Some(Some(value)) => Ok(value.clone()),
                Some(None) => Err(format!(
                    "environment variable {env} is set but not UTF-8, and program arguments are text; {}",
                    self.set_list(false)
                )),
                None => {
                    let hint = match closest(env, self.variables.env.keys().map(String::as_str)) {
                        Some(near) => format!("did you mean ${{{ENV_PREFIX}{near}}}? "),
                        None => String::new(),
                    };
                    Err(format!("environment variable {env} is not set (${{{name}}}); {hint}{}", self.set_list(true)))
                }
            };
        }
        let kinds = format!("${{{BIN_PREFIX}<name>}}, ${{{ENV_PREFIX}NAME}} or ${{{SCENARIO_DIR}}}");
        if name.is_empty() {
            return Err(format!("empty variable ${{}}; a variable is {kinds}; write `$${{` for a literal `${{`"));
        }
        let mut known: Vec<String> = vec![SCENARIO_DIR.to_string()];
        known.extend(self.variables.bin_names().map(|bin| format!("{BIN_PREFIX}{bin}")));
        let hint = match closest(name, known.iter().map(String::as_str)) {
            Some(near) => format!("did you mean ${{{near}}}? "),
            None if self.variables.env.contains_key(name) => format!("did you mean ${{{ENV_PREFIX}{name}}}? "),
            None => String::new(),
        };
        Err(format!(
            "unknown variable ${{{name}}}; a variable is {kinds} (`$${{` for a literal `${{`); {hint}{}",
            self.set_list(false)
        ))
    }

    /// `variables set: ${scenario_dir}, ${CARGO_BIN_EXE_a}, ..., ${env:NAME} for the N environment variables`,
    /// with their names when `env_names`.
    fn set_list(&self, env_names: bool) -> String {
        let mut set = vec![format!("${{{SCENARIO_DIR}}}")];
        set.extend(self.variables.bin_names().map(|bin| format!("${{{BIN_PREFIX}{bin}}}")));
        let count = self.variables.env.len();
        let env = if env_names && count > 0 {
            let names: Vec<&str> = self.variables.env.keys().map(String::as_str).collect();
            format!("${{{ENV_PREFIX}NAME}} for the {count} environment variables set: {}", names.join(", "))
        } else {
            format!("${{{ENV_PREFIX}NAME}} for the {count} environment variables set")
        };
        set.push(env);
        format!("variables set: {}", set.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variables() -> Variables {
        Variables::default().bin("client", "/t/debug/client").bin("server", "/t/debug/server").env("PORT", "7000")
    }

    fn substitute(text: &str) -> Result<String, Unresolved> {
        let variables = variables();
        Scope::new(&variables, Path::new("/s/example/blackhole.yaml")).substitute(text)
    }

    #[test]
    fn every_kind_is_replaced_where_it_stands() {
        assert_eq!(substitute("${CARGO_BIN_EXE_client}").unwrap(), "/t/debug/client");
        assert_eq!(substitute("10.0.0.2:${env:PORT}").unwrap(), "10.0.0.2:7000");
        assert_eq!(substitute("${scenario_dir}/data.txt").unwrap(), "/s/example/data.txt");
        assert_eq!(
            substitute("${CARGO_BIN_EXE_server} ${CARGO_BIN_EXE_server}").unwrap(),
            "/t/debug/server /t/debug/server"
        );
        assert_eq!(substitute("no variables: $HOME $ $$ }").unwrap(), "no variables: $HOME $ $$ }");
    }

    #[test]
    fn a_doubled_dollar_before_a_brace_is_a_literal_brace() {
        assert_eq!(substitute("echo $${HOME}").unwrap(), "echo ${HOME}");
        assert_eq!(substitute("$${env:PORT}=${env:PORT}").unwrap(), "${env:PORT}=7000");
    }

    #[test]
    fn scenario_dir_is_absolute_for_a_relative_file() {
        let variables = Variables::default();
        let dir = Scope::new(&variables, Path::new("scenarios/x.yaml")).substitute("${scenario_dir}").unwrap();
        let expected = std::env::current_dir().unwrap().join("scenarios");
        assert_eq!(Path::new(&dir), expected);
        let bare = Scope::new(&variables, Path::new("x.yaml")).substitute("${scenario_dir}").unwrap();
        assert_eq!(Path::new(&bare), std::env::current_dir().unwrap());
    }

    #[test]
    fn an_unset_variable_says_where_it_starts_and_what_is_set() {
        let error = substitute("--port=${env:PROT}").unwrap_err();
        assert_eq!((error.offset, error.reference.as_str()), (7, "${env:PROT}"));
        assert!(error
            .message
            .starts_with("environment variable PROT is not set (${env:PROT}); did you mean ${env:PORT}?"));
        assert!(error.message.contains("variables set: ${scenario_dir}, ${CARGO_BIN_EXE_client}, ${CARGO_BIN_EXE_server}, ${env:NAME} for the 1 environment variables set: PORT"), "{}", error.message);

        let error = substitute("${CARGO_BIN_EXE_clinet}").unwrap_err();
        assert_eq!(error.offset, 0);
        assert!(
            error.message.contains("no binary \"clinet\" is set; did you mean ${CARGO_BIN_EXE_client}?"),
            "{}",
            error.message
        );

        let error = substitute("a ${scenario_dri}").unwrap_err();
        assert_eq!((error.offset, error.reference.as_str()), (2, "${scenario_dri}"));
        assert!(error.message.contains("did you mean ${scenario_dir}?"), "{}", error.message);

        let error = substitute("${PORT}").unwrap_err();
        assert!(error.message.contains("did you mean ${env:PORT}?"), "{}", error.message);
    }

    #[test]
    fn malformed_references_are_refused() {
        let error = substitute("ok ${env:PORT} then ${env:PORT").unwrap_err();
        assert_eq!((error.offset, error.reference.as_str()), (20, "${env:PORT"));
        assert!(error.message.contains("no `}` closes"), "{}", error.message);
        let error = substitute("x${}").unwrap_err();
        assert_eq!(error.offset, 1);
        assert!(error.message.starts_with("empty variable ${}"), "{}", error.message);
    }

    #[test]
    fn offsets_are_bytes_of_the_decoded_string() {
        let error = substitute("é ${env:NOPE}").unwrap_err();
        assert_eq!(error.offset, 3);
    }

    #[test]
    fn the_environment_gives_env_and_bins() {
        let pairs = [("CARGO_BIN_EXE_fetch", "/bin/fetch"), ("LANG", "C.UTF-8")]
            .map(|(name, value)| (name.into(), value.into()))
            .into_iter()
            .chain([("RAW".into(), std::os::unix::ffi::OsStringExt::from_vec(vec![0xff]))]);
        let variables = Variables::from_pairs(pairs);
        let scope = Scope::new(&variables, Path::new("/x.yaml"));
        assert_eq!(scope.substitute("${CARGO_BIN_EXE_fetch} ${env:LANG}").unwrap(), "/bin/fetch C.UTF-8");
        assert_eq!(scope.substitute("${env:CARGO_BIN_EXE_fetch}").unwrap(), "/bin/fetch");
        let error = scope.substitute("${env:RAW}").unwrap_err();
        assert!(error.message.starts_with("environment variable RAW is set but not UTF-8"), "{}", error.message);

        let path = std::env::var("PATH").unwrap();
        let process = Variables::from_environment();
        assert_eq!(Scope::new(&process, Path::new("/x.yaml")).substitute("${env:PATH}").unwrap(), path);
    }
}
