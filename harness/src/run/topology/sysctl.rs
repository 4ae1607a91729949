//! `sysctl -w` inside a host's namespace, refusing any name that is not per-network-namespace.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};

use crate::error::Error;
use crate::scenario::plan::{HostId, Sysctl};

pub(super) enum SysctlError {
    /// The file does not exist in this namespace.
    Absent(Sysctl),
    /// Not a `net.*` name: it would change the whole machine, not the scenario's namespace.
    NotNamespaced(Sysctl),
    Write(Sysctl, io::Error),
}

impl SysctlError {
    pub(super) fn into_error(self, host: HostId) -> Error {
        self.into_error_in(host.name())
    }

    /// The error, naming the namespace it happened in (`client`, `server`, `the wire`).
    pub(super) fn into_error_in(self, host: &str) -> Error {
        match self {
            SysctlError::Absent(s) => Error::sys(
                format!(
                    "sysctl {} does not exist in a network namespace on this kernel (not per-namespace?) \
                     (in {host})",
                    s.name
                ),
                io::Error::from(io::ErrorKind::NotFound),
            ),
            SysctlError::NotNamespaced(s) => Error::Internal(format!(
                "sysctl {} of {host} is not a net.* sysctl: only per-namespace network sysctls can be set \
                 for one scenario host",
                s.name
            )),
            SysctlError::Write(s, e) => {
                Error::sys(format!("set sysctl in {host} (sysctl -w {}={})", s.name, s.value), e)
            }
        }
    }
}

/// `sysctl -w name=value` for the calling thread's network namespace.
pub(super) fn write_sysctl(sysctl: &Sysctl) -> std::result::Result<(), SysctlError> {
    let namespaced = sysctl.name.starts_with("net.")
        && !sysctl.name.contains('/')
        && sysctl.name.split('.').all(|part| !part.is_empty());
    if !namespaced {
        return Err(SysctlError::NotNamespaced(sysctl.clone()));
    }
    let mut file = OpenOptions::new().write(true).open(sysctl.proc_path()).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => SysctlError::Absent(sysctl.clone()),
        _ => SysctlError::Write(sysctl.clone(), e),
    })?;
    file.write_all(format!("{}\n", sysctl.value).as_bytes()).map_err(|e| SysctlError::Write(sysctl.clone(), e))
}

/// The TCP settings in force in the calling thread's namespace (`sysctl net.ipv4.tcp_ net.core.somaxconn`):
/// every `net.ipv4.tcp_*` this kernel has, `net.core.somaxconn`, and each of `also` (the host's own). A value of
/// several fields (`tcp_rmem`) keeps one space between them.
pub fn effective_sysctls(also: &[Sysctl]) -> crate::error::Result<BTreeMap<String, String>> {
    let listing =
        fs::read_dir("/proc/sys/net/ipv4").map_err(|e| Error::sys("list /proc/sys/net/ipv4 (sysctl -a)", e))?;
    let mut names = vec!["net.core.somaxconn".to_string()];
    for entry in listing {
        let file = entry.map_err(|e| Error::sys("list /proc/sys/net/ipv4 (sysctl -a)", e))?.file_name();
        if let Some(name) = file.to_str().filter(|name| name.starts_with("tcp_")) {
            names.push(format!("net.ipv4.{name}"));
        }
    }
    names.extend(also.iter().map(|sysctl| sysctl.name.clone()));
    let mut values = BTreeMap::new();
    for name in names {
        let path = Sysctl { name: name.clone(), value: String::new() }.proc_path();
        let value =
            fs::read_to_string(&path).map_err(|e| Error::sys(format!("read sysctl {name} ({})", path.display()), e))?;
        values.insert(name, value.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    Ok(values)
}
