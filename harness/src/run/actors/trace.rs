//! `strace -f -yy` around the program of an exec step with `trace: true`: the socket calls it (or a process
//! it starts) made that failed, and the errors it read with `getsockopt(SO_ERROR)`, each with its socket's
//! addresses, its errno, when it returned and how long it took.
//!
//! strace writes one line per call as the call returns (a call interrupted by another thread's is split into
//! `<unfinished ...>` and `<... name resumed>`), so the trace of a killed program holds every call that
//! returned before the kill.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regex::Regex;

use crate::error::{Error, Result};

/// The calls traced: every socket call, and the read / write family that programs also use on sockets.
const TRACED_CALLS: &str = "%network,read,write,readv,writev,sendfile";

/// Most errno events kept per program: a program looping on a nonblocking socket fails millions of times.
pub const MAX_EVENTS: usize = 10_000;

/// A call of the traced program that gave an errno.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedError {
    pub pid: u32,
    /// When the call returned (strace's wall-clock entry time plus the call's duration).
    pub returned: SystemTime,
    pub took: Duration,
    /// `recvfrom`, `connect`, or `getsockopt SO_ERROR`.
    pub call: String,
    pub errno: String,
    pub local: Option<SocketAddrV4>,
    pub remote: Option<SocketAddrV4>,
}

/// strace on the PATH, or what is missing.
pub fn strace() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join("strace")).find(|candidate| candidate.is_file()).ok_or_else(|| {
        Error::Missing {
            what: "strace, which exec steps with `trace: true` run their program under".into(),
            hint: "install it (apt-get install strace) or take `trace: true` off the exec step".into(),
        }
    })
}

/// strace's arguments before the program: follow forks, quiet, wall-clock entry times in microseconds, call
/// durations, sockets decorated with their addresses, the trace into `log`.
pub fn strace_args(log: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> =
        ["-f", "-qq", "-ttt", "-T", "-yy", "-e", &format!("trace={TRACED_CALLS}"), "-e", "signal=none", "-o"]
            .map(OsString::from)
            .to_vec();
    args.push(log.as_os_str().to_owned());
    args.push("--".into());
    args
}

static CALL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(\w+)\((.*)\) += (-?\d+|\?)(?: (E[A-Z0-9]+) \([^)]*\))?(?: <(\d+\.\d+)>)?$").expect("constant")
});
/// The first argument when it is a TCP socket: `3<TCP:[10.0.0.1:43574->10.0.0.2:7000]>` or `3<TCP:[604295]>`.
static SOCKET: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\d+<TCP:\[([^\]]*)\]>").expect("constant"));
static SOCKADDR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"sin_port=htons\((\d+)\), sin_addr=inet_addr\("([\d.]+)"\)"#).expect("constant"));
static SO_ERROR: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"SO_ERROR, \[(E[A-Z0-9]+)\]").expect("constant"));

/// The errno events of a trace, in the order the calls returned; at most [`MAX_EVENTS`], and how many more
/// there were.
pub fn parse(text: &str) -> (Vec<TracedError>, usize) {
    let mut events = Vec::new();
    let mut more = 0;
    // Per process: the start of a call another call interrupted, and when it began.
    let mut unfinished: HashMap<u32, (SystemTime, String)> = HashMap::new();
    // Per socket inode: the peer a connect named, for calls on the socket before it has addresses.
    let mut peers: HashMap<String, SocketAddrV4> = HashMap::new();
    for line in text.lines() {
        // strace pads the pid column: `22    1796420958.121786 socket(...`.
        let mut fields = line.split_whitespace();
        let (Some(pid), Some(time)) = (fields.next(), fields.next()) else { continue };
        let (Ok(pid), Some(started)) = (pid.parse::<u32>(), seconds(time).map(|t| UNIX_EPOCH + t)) else { continue };
        let rest = line[line.find(time).map_or(0, |at| at + time.len())..].trim_start();
        let (started, call) = if let Some(head) = rest.strip_suffix("<unfinished ...>") {
            unfinished.insert(pid, (started, head.trim_end().to_string()));
            continue;
        } else if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((_, tail)) = resumed.split_once(" resumed>") else { continue };
            let Some((began, head)) = unfinished.remove(&pid) else { continue };
            (began, format!("{head}{tail}"))
        } else {
            (started, rest.to_string())
        };
        let Some(event) = errno_event(pid, started, &call, &mut peers) else { continue };
        if events.len() < MAX_EVENTS {
            events.push(event);
        } else {
            more += 1;
        }
    }
    events.sort_by_key(|e| e.returned);
    (events, more)
}

/// `1796420468.507688` seconds (strace prints microseconds).
fn seconds(text: &str) -> Option<Duration> {
    let (secs, fraction) = text.split_once('.')?;
    let micros: u32 = format!("{fraction:0<6}").get(..6)?.parse().ok()?;
    Some(Duration::new(secs.parse().ok()?, micros * 1000))
}

/// The event one complete strace line stands for, if the call was on a TCP socket and gave an errno.
fn errno_event(
    pid: u32,
    started: SystemTime,
    line: &str,
    peers: &mut HashMap<String, SocketAddrV4>,
) -> Option<TracedError> {
    let call = CALL.captures(line)?;
    let (name, args) = (&call[1], &call[2]);
    let socket = SOCKET.captures(args)?;
    let decoration = &socket[1];
    let (mut local, mut remote) = addresses(decoration);
    if let Some(sockaddr) = SOCKADDR.captures(args) {
        let named = SocketAddrV4::new(sockaddr[2].parse().ok()?, sockaddr[1].parse().ok()?);
        if name == "connect" {
            peers.insert(decoration.to_string(), named);
        }
        remote = remote.or(Some(named));
    }
    remote = remote.or_else(|| peers.get(decoration).copied());
    if local.is_none() && remote.is_some() {
        local = Some(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    }
    let (call_name, errno) = match (call.get(4), SO_ERROR.captures(args)) {
        (Some(errno), _) => (name.to_string(), errno.as_str().to_string()),
        (None, Some(error)) if name == "getsockopt" => ("getsockopt SO_ERROR".to_string(), error[1].to_string()),
        _ => return None,
    };
    let took = call.get(5).and_then(|took| seconds(took.as_str())).unwrap_or_default();
    Some(TracedError { pid, returned: started + took, took, call: call_name, errno, local, remote })
}

/// `10.0.0.1:43574->10.0.0.2:7000` (local, remote), `0.0.0.0:7000` (local only), or an inode (neither).
fn addresses(decoration: &str) -> (Option<SocketAddrV4>, Option<SocketAddrV4>) {
    match decoration.split_once("->") {
        Some((local, remote)) => (local.parse().ok(), remote.parse().ok()),
        None => (decoration.parse().ok(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, micros * 1000)
    }

    fn address(text: &str) -> Option<SocketAddrV4> {
        Some(text.parse().unwrap())
    }

    /// Lines as strace 6.1 wrote them for `fetch`, a refused connect and a read timeout, with a file read, a
    /// call split by another thread's, and the half line of a killed trace.
    const TRACE: &str = "\
31774 1796420468.504761 read(3</usr/lib/x86_64-linux-gnu/libc.so.6>, \"\\177ELF\\2\\1\"..., 832) = 832 <0.000008>
31774 1796420468.506095 connect(3<TCP:[607471]>, {sa_family=AF_INET, sin_port=htons(7000), sin_addr=inet_addr(\"10.0.0.2\")}, 16) = -1 EINPROGRESS (Operation now in progress) <0.000062>
31774 1796420468.507688 getsockopt(3<TCP:[607471]>, SOL_SOCKET, SO_ERROR, [ECONNREFUSED], [4]) = 0 <0.000012>
31774 1796420468.623083 getsockopt(4<TCP:[10.0.0.1:41234->10.0.0.2:7000]>, SOL_SOCKET, SO_ERROR, [0], [4]) = 0 <0.000010>
31775 1796420469.000001 recvfrom(4<TCP:[10.0.0.1:41234->10.0.0.2:7000]>,  <unfinished ...>
31774 1796420469.500000 write(2</dev/pts/0>, \"fetch\", 5) = 5 <0.000020>
31775 1796420471.017072 <... recvfrom resumed>0x7ffd307cd498, 512, 0, NULL, NULL) = -1 EAGAIN (Resource temporarily unavailable) <2.017070>
22    1796420471.100000 read(5<TCP:[0.0.0.0:7000]>, 0x5555, 100) = -1 ETIMEDOUT (Connection timed out) <0.5>
31774 1796420472.000000 +++ exited with 4 +++
31776 1796420472.100000 connect(6<TCP:[7]>, {sa_family=AF_INET, sin_port=htons(7000), sin_addr=inet_addr(\"10.0.0.2\")}, 16";

    #[test]
    fn failed_socket_calls_and_so_errors_with_their_sockets_and_return_times() {
        let (events, more) = parse(TRACE);
        assert_eq!(more, 0);
        let unspecified = address("0.0.0.0:0");
        assert_eq!(
            events,
            vec![
                TracedError {
                    pid: 31774,
                    returned: at(1796420468, 506157),
                    took: Duration::from_micros(62),
                    call: "connect".into(),
                    errno: "EINPROGRESS".into(),
                    local: unspecified,
                    remote: address("10.0.0.2:7000"),
                },
                TracedError {
                    pid: 31774,
                    returned: at(1796420468, 507700),
                    took: Duration::from_micros(12),
                    call: "getsockopt SO_ERROR".into(),
                    errno: "ECONNREFUSED".into(),
                    local: unspecified,
                    remote: address("10.0.0.2:7000"),
                },
                TracedError {
                    pid: 31775,
                    returned: at(1796420471, 17071),
                    took: Duration::from_micros(2_017_070),
                    call: "recvfrom".into(),
                    errno: "EAGAIN".into(),
                    local: address("10.0.0.1:41234"),
                    remote: address("10.0.0.2:7000"),
                },
                TracedError {
                    pid: 22,
                    returned: at(1796420471, 600000),
                    took: Duration::from_millis(500),
                    call: "read".into(),
                    errno: "ETIMEDOUT".into(),
                    local: address("0.0.0.0:7000"),
                    remote: None,
                },
            ]
        );
    }

    #[test]
    fn events_past_the_limit_are_counted_not_kept() {
        let line = "7 1.000000 sendto(3<TCP:[1.2.3.4:5->6.7.8.9:10]>, \"x\", 1, MSG_DONTWAIT, NULL, 0) = -1 EAGAIN \
                    (Resource temporarily unavailable) <0.000001>\n";
        let (events, more) = parse(&line.repeat(MAX_EVENTS + 3));
        assert_eq!((events.len(), more), (MAX_EVENTS, 3));
    }

    #[test]
    fn strace_writes_the_trace_where_asked_and_runs_the_program_after_the_options() {
        let args = strace_args(Path::new("/r/client-2.strace"));
        let tail: Vec<&str> = args.iter().rev().take(3).map(|a| a.to_str().unwrap()).collect();
        assert_eq!(tail, ["--", "/r/client-2.strace", "-o"]);
        assert!(args.iter().any(|a| a == "trace=%network,read,write,readv,writev,sendfile"));
    }
}
