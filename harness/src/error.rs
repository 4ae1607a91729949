//! Harness errors: something broke (bad YAML, a failed system call), as opposed to a verdict failure.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::thread::ScopedJoinHandle;

use crate::scenario::plan::Location;

/// A scenario file that cannot be run: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    pub file: PathBuf,
    pub location: Option<Location>,
    pub message: String,
}

impl ScenarioError {
    pub fn new(file: &Path, location: Option<Location>, message: impl Into<String>) -> ScenarioError {
        ScenarioError { file: file.to_path_buf(), location, message: message.into() }
    }
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = crate::scenario::printable_path(&self.file);
        match self.location {
            Some(loc) => write!(f, "{file}:{}:{}: {}", loc.line, loc.column, self.message),
            None => write!(f, "{file}: {}", self.message),
        }
    }
}

impl std::error::Error for ScenarioError {}

/// Anything that stops the harness from running a scenario to its verdict.
#[derive(Debug)]
pub enum Error {
    Scenario(ScenarioError),
    /// A system call or netlink request failed; `what` says which, with its `ip` / `nft` / `ss` equivalent.
    Sys {
        what: String,
        source: io::Error,
    },
    /// The machine lacks something netfault needs (privileges, a kernel feature, a program).
    Missing {
        what: String,
        hint: String,
    },
    /// Anything else that went wrong inside the harness.
    Internal(String),
    /// What the part of the scenario at `location` asked for could not be done (a fault rule or a sysctl the
    /// kernel refused); [`Error::in_file`] names the file.
    Located {
        location: Location,
        error: Box<Error>,
    },
}

impl Error {
    pub fn sys(what: impl Into<String>, source: impl Into<io::Error>) -> Error {
        Error::Sys { what: what.into(), source: source.into() }
    }

    /// Wraps the last OS error (after a libc call returned -1).
    pub fn last_os(what: impl Into<String>) -> Error {
        Error::sys(what, io::Error::last_os_error())
    }

    /// This error, caused by what the scenario writes at `location`.
    pub fn at(self, location: Location) -> Error {
        Error::Located { location, error: Box::new(self) }
    }

    /// A located error as `file:line:column: what`; any other error as it is.
    pub fn in_file(self, file: &Path) -> Error {
        match self {
            Error::Located { location, error } => {
                Error::Scenario(ScenarioError::new(file, Some(location), error.to_string()))
            }
            other => other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Scenario(e) => e.fmt(f),
            Error::Sys { what, source } => write!(f, "{what}: {source}"),
            Error::Missing { what, hint } => write!(f, "missing {what}: {hint}"),
            Error::Internal(msg) => f.write_str(msg),
            Error::Located { location, error } => write!(f, "line {location}: {error}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Sys { source, .. } => Some(source),
            Error::Located { error, .. } => Some(error.as_ref()),
            _ => None,
        }
    }
}

impl From<ScenarioError> for Error {
    fn from(e: ScenarioError) -> Error {
        Error::Scenario(e)
    }
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Error {
        Error::sys("system call", io::Error::from(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds the `what` of a failed call to a nix or io result.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<io::Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::sys(what(), e))
    }
}

/// What a scoped thread returned, or a harness error naming `what` if it could not start or panicked.
pub fn joined<T>(spawned: io::Result<ScopedJoinHandle<'_, Result<T>>>, what: &str) -> Result<T> {
    match spawned {
        Ok(handle) => handle.join().unwrap_or_else(|_| Err(Error::Internal(format!("{what} thread panicked")))),
        Err(e) => Err(Error::sys(format!("spawn {what} thread"), e)),
    }
}
