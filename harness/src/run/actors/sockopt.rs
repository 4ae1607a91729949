//! Socket options: the table from an option's Linux name to its `setsockopt` level, number and value type,
//! and the `setsockopt` / `getsockopt` calls that use it.

use std::io;
use std::mem;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::scenario::plan::{SockOpt, SockOptName, SockOptValue, CONGESTION_CONTROLS};
use crate::scenario::tcp_info;

/// How the kernel takes and gives an option's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A C `int`.
    Int,
    /// `struct linger { int l_onoff; int l_linger; }`.
    Linger,
    /// `struct timeval { tv_sec; tv_usec; }`.
    Timeval,
    /// A NUL-padded name of at most `TCP_CA_NAME_MAX` (16) bytes.
    Name,
}

/// `TCP_CA_NAME_MAX`: the longest congestion control name the kernel keeps, with its NUL.
const CA_NAME_MAX: usize = 16;

/// Where an option lives: `setsockopt(fd, level, optname, ...)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionSpec {
    pub level: libc::c_int,
    pub optname: libc::c_int,
    pub kind: ValueKind,
}

/// The level, number and value type of an option, as in `man 7 socket` and `man 7 tcp`.
pub fn spec(name: SockOptName) -> OptionSpec {
    use SockOptName::*;
    let (level, optname, kind) = match name {
        SO_KEEPALIVE => (libc::SOL_SOCKET, libc::SO_KEEPALIVE, ValueKind::Int),
        SO_RCVBUF => (libc::SOL_SOCKET, libc::SO_RCVBUF, ValueKind::Int),
        SO_SNDBUF => (libc::SOL_SOCKET, libc::SO_SNDBUF, ValueKind::Int),
        SO_LINGER => (libc::SOL_SOCKET, libc::SO_LINGER, ValueKind::Linger),
        SO_REUSEADDR => (libc::SOL_SOCKET, libc::SO_REUSEADDR, ValueKind::Int),
        SO_REUSEPORT => (libc::SOL_SOCKET, libc::SO_REUSEPORT, ValueKind::Int),
        SO_ERROR => (libc::SOL_SOCKET, libc::SO_ERROR, ValueKind::Int),
        TCP_NODELAY => (libc::IPPROTO_TCP, libc::TCP_NODELAY, ValueKind::Int),
        TCP_KEEPIDLE => (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, ValueKind::Int),
        TCP_KEEPINTVL => (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, ValueKind::Int),
        TCP_KEEPCNT => (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, ValueKind::Int),
        TCP_USER_TIMEOUT => (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ValueKind::Int),
        TCP_SYNCNT => (libc::IPPROTO_TCP, libc::TCP_SYNCNT, ValueKind::Int),
        TCP_DEFER_ACCEPT => (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, ValueKind::Int),
        TCP_LINGER2 => (libc::IPPROTO_TCP, libc::TCP_LINGER2, ValueKind::Int),
        TCP_MAXSEG => (libc::IPPROTO_TCP, libc::TCP_MAXSEG, ValueKind::Int),
        TCP_QUICKACK => (libc::IPPROTO_TCP, libc::TCP_QUICKACK, ValueKind::Int),
        TCP_NOTSENT_LOWAT => (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, ValueKind::Int),
        SO_RCVTIMEO => (libc::SOL_SOCKET, libc::SO_RCVTIMEO, ValueKind::Timeval),
        SO_SNDTIMEO => (libc::SOL_SOCKET, libc::SO_SNDTIMEO, ValueKind::Timeval),
        SO_RCVLOWAT => (libc::SOL_SOCKET, libc::SO_RCVLOWAT, ValueKind::Int),
        TCP_CORK => (libc::IPPROTO_TCP, libc::TCP_CORK, ValueKind::Int),
        TCP_WINDOW_CLAMP => (libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, ValueKind::Int),
        TCP_THIN_LINEAR_TIMEOUTS => (libc::IPPROTO_TCP, libc::TCP_THIN_LINEAR_TIMEOUTS, ValueKind::Int),
        TCP_FASTOPEN => (libc::IPPROTO_TCP, libc::TCP_FASTOPEN, ValueKind::Int),
        TCP_FASTOPEN_CONNECT => (libc::IPPROTO_TCP, libc::TCP_FASTOPEN_CONNECT, ValueKind::Int),
        IP_TOS => (libc::IPPROTO_IP, libc::IP_TOS, ValueKind::Int),
        TCP_CONGESTION => (libc::IPPROTO_TCP, libc::TCP_CONGESTION, ValueKind::Name),
        IP_RECVERR => (libc::IPPROTO_IP, libc::IP_RECVERR, ValueKind::Int),
        IP_TTL => (libc::IPPROTO_IP, libc::IP_TTL, ValueKind::Int),
        SO_OOBINLINE => (libc::SOL_SOCKET, libc::SO_OOBINLINE, ValueKind::Int),
        IPV6_V6ONLY => (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, ValueKind::Int),
    };
    OptionSpec { level, optname, kind }
}

/// `name=value` as a step's detail shows it, e.g. `TCP_KEEPIDLE=5` or `SO_LINGER={on,0}`.
pub fn describe(option: &SockOpt) -> String {
    format!("{:?}={}", option.name, option.value)
}

/// `setsockopt(fd, level, name, &value, sizeof value)`. A value whose shape does not fit the option (an
/// int for SO_LINGER) is passed as the kernel would receive it from C: ints as `int`, linger as `struct
/// linger`; the kernel then answers (EINVAL for a too-short SO_LINGER).
pub fn set(fd: RawFd, option: &SockOpt) -> io::Result<()> {
    let spec = spec(option.name);
    let rc = match option.value {
        SockOptValue::Int(value) => raw_set(fd, spec, &value),
        SockOptValue::Linger { on, seconds } => {
            let linger = libc::linger { l_onoff: libc::c_int::from(on), l_linger: seconds };
            raw_set(fd, spec, &linger)
        }
        SockOptValue::Timeout(duration) => raw_set(fd, spec, &timeval_of(duration)),
        SockOptValue::Algorithm(name) => {
            let mut padded = [0u8; CA_NAME_MAX];
            let length = name.len().min(CA_NAME_MAX - 1);
            padded[..length].copy_from_slice(&name.as_bytes()[..length]);
            raw_set(fd, spec, &padded)
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A timeout as the kernel takes it; one longer than `time_t` seconds holds cannot be written in a scenario.
fn timeval_of(duration: Duration) -> libc::timeval {
    libc::timeval {
        tv_sec: libc::time_t::try_from(duration.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(duration.subsec_micros()),
    }
}

fn raw_set<T>(fd: RawFd, spec: OptionSpec, value: &T) -> libc::c_int {
    // SAFETY: `value` points to a live `T` of exactly the length passed.
    unsafe {
        libc::setsockopt(
            fd,
            spec.level,
            spec.optname,
            (value as *const T).cast::<libc::c_void>(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    }
}

/// `getsockopt(fd, level, name, ...)`, read with the option's own value type.
pub fn get(fd: RawFd, name: SockOptName) -> io::Result<SockOptValue> {
    let spec = spec(name);
    match spec.kind {
        ValueKind::Int => raw_get::<libc::c_int>(fd, spec, 0).map(SockOptValue::Int),
        ValueKind::Linger => raw_get(fd, spec, libc::linger { l_onoff: 0, l_linger: 0 })
            .map(|l| SockOptValue::Linger { on: l.l_onoff != 0, seconds: l.l_linger }),
        ValueKind::Timeval => raw_get(fd, spec, timeval_of(Duration::ZERO)).map(|t| {
            let micros = Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0));
            SockOptValue::Timeout(Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0)) + micros)
        }),
        ValueKind::Name => raw_get(fd, spec, [0u8; CA_NAME_MAX]).and_then(|padded| {
            let name = padded.split(|&byte| byte == 0).next().unwrap_or_default();
            CONGESTION_CONTROLS
                .iter()
                .find(|known| known.as_bytes() == name)
                .map(|known| SockOptValue::Algorithm(known))
                .ok_or_else(|| {
                    io::Error::other(format!(
                        "congestion control {:?} is not one netfault knows",
                        String::from_utf8_lossy(name)
                    ))
                })
        }),
    }
}

/// `getsockopt(fd, IPPROTO_TCP, TCP_INFO)`: every field of `struct tcp_info` this kernel fills, by name.
pub fn get_tcp_info(fd: RawFd) -> io::Result<std::collections::BTreeMap<String, u64>> {
    let mut buffer = [0u8; tcp_info::READ_LEN];
    let mut len = buffer.len() as libc::socklen_t;
    // SAFETY: `buffer` is live and `len` tells the kernel its size; it writes at most that much and says how
    // much it wrote.
    let rc = unsafe {
        libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, buffer.as_mut_ptr().cast::<libc::c_void>(), &mut len)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let filled = usize::try_from(len).unwrap_or(0).min(buffer.len());
    Ok(tcp_info::decode(&buffer[..filled]))
}

fn raw_get<T: Copy>(fd: RawFd, spec: OptionSpec, mut value: T) -> io::Result<T> {
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a live `T` and `len` tells the kernel its size.
    let rc = unsafe {
        libc::getsockopt(fd, spec.level, spec.optname, (&mut value as *mut T).cast::<libc::c_void>(), &mut len)
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::*;
    use crate::run::netns::Netns;

    /// Runs `f` with a fresh TCP socket made inside a new namespace (nothing is created in the host's).
    fn with_tcp_socket(f: impl FnOnce(RawFd) + Send) {
        let netns = Netns::new_anonymous().unwrap();
        netns
            .run(|| {
                let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
                assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
                let socket = unsafe { OwnedFd::from_raw_fd(fd) };
                f(socket.as_raw_fd());
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn every_option_has_the_level_of_its_prefix() {
        use SockOptName::*;
        // Every option a scenario can name, under the name the enum gives it.
        for &(written, name) in crate::scenario::names::SOCKOPT_NAMES {
            assert_eq!(format!("{name:?}"), written);
            let expected = match format!("{name:?}") {
                so if so.starts_with("SO_") => libc::SOL_SOCKET,
                ip if ip.starts_with("IP_") => libc::IPPROTO_IP,
                ipv6 if ipv6.starts_with("IPV6_") => libc::IPPROTO_IPV6,
                _ => libc::IPPROTO_TCP,
            };
            assert_eq!(spec(name).level, expected, "{name:?}");
        }
        assert_eq!(spec(SO_LINGER).kind, ValueKind::Linger);
        assert_eq!(spec(TCP_USER_TIMEOUT).optname, 18);
        assert_eq!(spec(TCP_KEEPIDLE).optname, 4);
    }

    #[test]
    fn values_set_are_read_back() {
        with_tcp_socket(|fd| {
            let options = [
                SockOpt { name: SockOptName::TCP_KEEPIDLE, value: SockOptValue::Int(7) },
                SockOpt { name: SockOptName::TCP_USER_TIMEOUT, value: SockOptValue::Int(2500) },
                SockOpt { name: SockOptName::SO_LINGER, value: SockOptValue::Linger { on: true, seconds: 3 } },
                SockOpt { name: SockOptName::TCP_NODELAY, value: SockOptValue::Int(1) },
                SockOpt { name: SockOptName::SO_RCVTIMEO, value: SockOptValue::Timeout(Duration::from_millis(1500)) },
                SockOpt { name: SockOptName::SO_SNDTIMEO, value: SockOptValue::Timeout(Duration::from_millis(40)) },
                SockOpt { name: SockOptName::SO_RCVLOWAT, value: SockOptValue::Int(100) },
                SockOpt { name: SockOptName::TCP_CORK, value: SockOptValue::Int(1) },
                SockOpt { name: SockOptName::TCP_WINDOW_CLAMP, value: SockOptValue::Int(8192) },
                SockOpt { name: SockOptName::TCP_THIN_LINEAR_TIMEOUTS, value: SockOptValue::Int(1) },
                SockOpt { name: SockOptName::TCP_FASTOPEN_CONNECT, value: SockOptValue::Int(1) },
                SockOpt { name: SockOptName::IP_TOS, value: SockOptValue::Int(0x10) },
                SockOpt { name: SockOptName::TCP_CONGESTION, value: SockOptValue::Algorithm("reno") },
                SockOpt { name: SockOptName::IP_RECVERR, value: SockOptValue::Int(1) },
                SockOpt { name: SockOptName::IP_TTL, value: SockOptValue::Int(3) },
                SockOpt { name: SockOptName::SO_OOBINLINE, value: SockOptValue::Int(1) },
            ];
            for option in &options {
                set(fd, option).unwrap();
                assert_eq!(get(fd, option.name).unwrap(), option.value, "{}", describe(option));
            }
            assert_eq!(get(fd, SockOptName::SO_ERROR).unwrap(), SockOptValue::Int(0));
            // The kernel keeps a timeout in jiffies, rounded up (`sock_set_timeout`): 250 us reads back as one
            // jiffy, 1 to 10 ms whatever HZ the kernel was built with.
            let short =
                SockOpt { name: SockOptName::SO_RCVTIMEO, value: SockOptValue::Timeout(Duration::from_micros(250)) };
            set(fd, &short).unwrap();
            let SockOptValue::Timeout(kept) = get(fd, SockOptName::SO_RCVTIMEO).unwrap() else {
                panic!("not a timeout")
            };
            assert!((Duration::from_millis(1)..=Duration::from_millis(10)).contains(&kept), "{kept:?}");
        });
    }

    #[test]
    fn tcp_info_of_a_new_socket_is_the_kernel_s_initial_state() {
        with_tcp_socket(|fd| {
            let read = get_tcp_info(fd).unwrap();
            // TCP_CLOSE, the initial window of 10 segments (TCP_INIT_CWND) and the initial RTO of 1 s.
            assert_eq!(read["state"], 7);
            assert_eq!(read["snd_cwnd"], 10);
            assert_eq!(read["rto"], 1_000_000);
            assert_eq!(read["total_retrans"], 0);
            assert!(read.contains_key("snd_wnd"), "every kernel netfault runs on fills up to snd_wnd: {read:?}");
        });
    }

    #[test]
    fn kernel_refusals_come_back_as_errno() {
        with_tcp_socket(|fd| {
            let zero_idle = SockOpt { name: SockOptName::TCP_KEEPIDLE, value: SockOptValue::Int(0) };
            assert_eq!(set(fd, &zero_idle).unwrap_err().raw_os_error(), Some(libc::EINVAL));
            let read_only = SockOpt { name: SockOptName::SO_ERROR, value: SockOptValue::Int(0) };
            assert_eq!(set(fd, &read_only).unwrap_err().raw_os_error(), Some(libc::ENOPROTOOPT));
        });
    }

    #[test]
    fn descriptions() {
        let linger = SockOpt { name: SockOptName::SO_LINGER, value: SockOptValue::Linger { on: true, seconds: 0 } };
        assert_eq!(describe(&linger), "SO_LINGER={on,0}");
        assert_eq!(SockOptValue::Int(5).to_string(), "5");
        assert_eq!(SockOptValue::Linger { on: false, seconds: 9 }.to_string(), "{off,9}");
        assert_eq!(SockOptValue::Algorithm("cubic").to_string(), "cubic");
        let timeout =
            SockOpt { name: SockOptName::SO_RCVTIMEO, value: SockOptValue::Timeout(Duration::from_millis(500)) };
        assert_eq!(describe(&timeout), "SO_RCVTIMEO=500ms");
        assert_eq!(SockOptValue::Timeout(Duration::ZERO).to_string(), "0s");
    }
}
