//! `sysctl -w` inside a host's namespace, refusing any name that is not per-network-namespace.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag, AT_FDCWD};
use nix::sys::stat::Mode;
use nix::unistd::read;

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

    /// The error, naming the namespace it happened in (`client`, `server`, `the wire`), at the line of the
    /// scenario that sets the sysctl when it is the scenario's.
    pub(super) fn into_error_in(self, host: &str) -> Error {
        let (sysctl, error) = match self {
            SysctlError::Absent(s) => {
                let message = format!(
                    "sysctl {} does not exist in a network namespace on this kernel (not per-namespace?) (in {host})",
                    s.name
                );
                (s, Error::sys(message, io::Error::from(io::ErrorKind::NotFound)))
            }
            SysctlError::NotNamespaced(s) => {
                let message = format!(
                    "sysctl {} of {host} is not a net.* sysctl: only per-namespace network sysctls can be set for one \
                     scenario host",
                    s.name
                );
                (s, Error::Internal(message))
            }
            SysctlError::Write(s, e) => {
                let message = format!("set sysctl in {host} (sysctl -w {}={})", s.name, s.value);
                (s, Error::sys(message, e))
            }
        };
        match sysctl.location {
            Some(location) => error.at(location),
            None => error,
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
/// each of `tcp_files` ([`tcp_sysctl_files`]), `net.core.somaxconn`, and each of `also` (the host's own). A value
/// of several fields (`tcp_rmem`) keeps one space between them. What a run reports reads less (see
/// [`differing_sysctls`]); this is what that must equal.
#[cfg(test)]
pub fn effective_sysctls(tcp_files: &[String], also: &[Sysctl]) -> crate::error::Result<BTreeMap<String, String>> {
    let mut values = common_sysctls(tcp_files)?;
    values.extend(named_sysctls(also)?);
    Ok(values)
}

/// `net.core.somaxconn`, which the report gives with the TCP sysctls.
const SOMAXCONN: &str = "net.core.somaxconn";

/// The TCP sysctls whose value one namespace has of its own however it was made: the TCP Fast Open key is
/// drawn at random when a namespace first needs one.
const OWN_IN_EACH_NAMESPACE: [&str; 1] = ["tcp_fastopen_key"];

/// `sysctl net.ipv4.tcp_ net.core.somaxconn` in the calling thread's namespace: each of `tcp_files`
/// ([`tcp_sysctl_files`]) and `net.core.somaxconn`. A value of several fields (`tcp_rmem`) keeps one space
/// between them.
pub fn common_sysctls(tcp_files: &[String]) -> crate::error::Result<BTreeMap<String, String>> {
    let ipv4 = Ipv4Sysctls::open()?;
    let mut values = BTreeMap::new();
    for file in tcp_files {
        values.insert(format!("net.ipv4.{file}"), ipv4.read(file)?);
    }
    values.extend(named_sysctls(&[Sysctl { name: SOMAXCONN.into(), value: String::new(), location: None }])?);
    Ok(values)
}

/// What one host of a scenario reads of its own for the report, besides the [`common_sysctls`] that one host
/// reads for all: every namespace of a scenario is made the same way (by its own thread, from the same parent,
/// within the same milliseconds) and starts with the same values (those derived from how it was made too:
/// the hash table's size, and with it `tcp_max_syn_backlog` and `tcp_max_tw_buckets`). What can differ is
/// what the scenario writes in one host and not in another, and what each draws for itself
/// (`OWN_IN_EACH_NAMESPACE`). So each host reads the sysctls of its own, every TCP one (and
/// `net.core.somaxconn`) the scenario sets in any host, and those drawn per namespace (when the kernel has
/// them); `tcp_files` is [`tcp_sysctl_files`].
pub fn differing_sysctls(
    own: &[Sysctl],
    set_in_any_host: &[Sysctl],
    tcp_files: &[String],
) -> crate::error::Result<BTreeMap<String, String>> {
    let common = |sysctl: &&Sysctl| sysctl.name.starts_with("net.ipv4.tcp_") || sysctl.name == SOMAXCONN;
    let mut names: Vec<Sysctl> = own.iter().chain(set_in_any_host.iter().filter(common)).cloned().collect();
    for file in OWN_IN_EACH_NAMESPACE.into_iter().filter(|file| tcp_files.iter().any(|listed| listed == file)) {
        names.push(Sysctl { name: format!("net.ipv4.{file}"), value: String::new(), location: None });
    }
    named_sysctls(&names)
}

/// A host's sysctls in force: the [`common_sysctls`] one host of its scenario read, with what the host read of
/// its own ([`differing_sysctls`]) over them.
pub fn host_sysctls(
    common: &BTreeMap<String, String>,
    differing: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut values = common.clone();
    values.extend(differing);
    values
}

/// `sysctl -n` of each of `sysctls`, by name, in the calling thread's namespace.
fn named_sysctls(sysctls: &[Sysctl]) -> crate::error::Result<BTreeMap<String, String>> {
    let mut values = BTreeMap::new();
    for sysctl in sysctls {
        if values.contains_key(&sysctl.name) {
            continue;
        }
        let path = sysctl.proc_path();
        let value = fs::read_to_string(&path)
            .map_err(|e| Error::sys(format!("read sysctl {} ({})", sysctl.name, path.display()), e))?;
        values.insert(sysctl.name.clone(), one_line(&value));
    }
    Ok(values)
}

/// The `tcp_*` files of /proc/sys/net/ipv4 (`sysctl -a`), listed once per process: listing makes the kernel build
/// an entry for each of the directory's 200-odd files, and the set is the kernel's, the same in every namespace
/// but the host's own (which also has the machine-wide ones, `tcp_mem`): netfault's processes never list there.
pub fn tcp_sysctl_files() -> crate::error::Result<&'static [String]> {
    // The first caller lists; one calling meanwhile (the other host's reader) waits for that listing.
    static FILES: OnceLock<std::result::Result<Vec<String>, String>> = OnceLock::new();
    match FILES.get_or_init(|| list_tcp_sysctl_files().map_err(|e| e.to_string())) {
        Ok(files) => Ok(files),
        Err(e) => Err(Error::Internal(e.clone())),
    }
}

fn list_tcp_sysctl_files() -> crate::error::Result<Vec<String>> {
    let listing = fs::read_dir(IPV4_DIR).map_err(|e| Error::sys("list /proc/sys/net/ipv4 (sysctl -a)", e))?;
    let mut files = Vec::new();
    for entry in listing {
        let file = entry.map_err(|e| Error::sys("list /proc/sys/net/ipv4 (sysctl -a)", e))?.file_name();
        if let Some(name) = file.to_str().filter(|name| name.starts_with("tcp_")) {
            files.push(name.to_string());
        }
    }
    files.sort();
    Ok(files)
}

const IPV4_DIR: &str = "/proc/sys/net/ipv4";

/// /proc/sys/net/ipv4 of the calling thread's namespace, open: each file is then one `openat` away instead of a
/// walk from /proc (the kernel matches every /proc/sys name against the caller's namespace on the way).
pub struct Ipv4Sysctls {
    dir: OwnedFd,
}

impl Ipv4Sysctls {
    pub fn open() -> crate::error::Result<Ipv4Sysctls> {
        let dir = openat(AT_FDCWD, IPV4_DIR, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| Error::sys(format!("open {IPV4_DIR}"), e))?;
        Ok(Ipv4Sysctls { dir })
    }

    /// `sysctl -n net.ipv4.<file>`, fields joined by one space.
    pub fn read(&self, file: &str) -> crate::error::Result<String> {
        let failed = |e| Error::sys(format!("read sysctl net.ipv4.{file} ({IPV4_DIR}/{file})"), e);
        let fd = openat(&self.dir, file, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(failed)?;
        // The kernel hands a value over whole, newline last, in one read if the buffer holds it, and allocates
        // (and zeroes) a buffer the size asked for on every read: ask for little, and stop at the newline
        // instead of reading again for the end of the file.
        let mut buffer = vec![0u8; 256];
        let mut len = 0;
        loop {
            match read(&fd, &mut buffer[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(failed(e)),
            }
            if buffer[..len].ends_with(b"\n") {
                break;
            }
            if len == buffer.len() {
                buffer.resize(len * 2, 0);
            }
        }
        Ok(one_line(&String::from_utf8_lossy(&buffer[..len])))
    }
}

/// A sysctl's value with its fields (`4096 131072 6291456`) separated by one space.
fn one_line(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}
