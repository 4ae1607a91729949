//! Name tables of the scenario format (socket options, shutdown modes, TCP flags, actions) and the
//! "did you mean" suggestion every unknown-name error carries.

use crate::scenario::plan::SockOptName;

/// Socket options by their Linux names (`setsockopt(2)`, `socket(7)`, `tcp(7)`).
pub const SOCKOPT_NAMES: &[(&str, SockOptName)] = &[
    ("SO_KEEPALIVE", SockOptName::SO_KEEPALIVE),
    ("SO_RCVBUF", SockOptName::SO_RCVBUF),
    ("SO_SNDBUF", SockOptName::SO_SNDBUF),
    ("SO_LINGER", SockOptName::SO_LINGER),
    ("SO_REUSEADDR", SockOptName::SO_REUSEADDR),
    ("SO_REUSEPORT", SockOptName::SO_REUSEPORT),
    ("SO_ERROR", SockOptName::SO_ERROR),
    ("TCP_NODELAY", SockOptName::TCP_NODELAY),
    ("TCP_KEEPIDLE", SockOptName::TCP_KEEPIDLE),
    ("TCP_KEEPINTVL", SockOptName::TCP_KEEPINTVL),
    ("TCP_KEEPCNT", SockOptName::TCP_KEEPCNT),
    ("TCP_USER_TIMEOUT", SockOptName::TCP_USER_TIMEOUT),
    ("TCP_SYNCNT", SockOptName::TCP_SYNCNT),
    ("TCP_DEFER_ACCEPT", SockOptName::TCP_DEFER_ACCEPT),
    ("TCP_LINGER2", SockOptName::TCP_LINGER2),
    ("TCP_MAXSEG", SockOptName::TCP_MAXSEG),
    ("TCP_QUICKACK", SockOptName::TCP_QUICKACK),
    ("TCP_NOTSENT_LOWAT", SockOptName::TCP_NOTSENT_LOWAT),
    ("SO_RCVTIMEO", SockOptName::SO_RCVTIMEO),
    ("SO_SNDTIMEO", SockOptName::SO_SNDTIMEO),
    ("SO_RCVLOWAT", SockOptName::SO_RCVLOWAT),
    ("TCP_CORK", SockOptName::TCP_CORK),
    ("TCP_WINDOW_CLAMP", SockOptName::TCP_WINDOW_CLAMP),
    ("TCP_THIN_LINEAR_TIMEOUTS", SockOptName::TCP_THIN_LINEAR_TIMEOUTS),
    ("TCP_FASTOPEN", SockOptName::TCP_FASTOPEN),
    ("TCP_FASTOPEN_CONNECT", SockOptName::TCP_FASTOPEN_CONNECT),
    ("IP_TOS", SockOptName::IP_TOS),
    ("TCP_CONGESTION", SockOptName::TCP_CONGESTION),
    ("IP_RECVERR", SockOptName::IP_RECVERR),
    ("IP_TTL", SockOptName::IP_TTL),
    ("SO_OOBINLINE", SockOptName::SO_OOBINLINE),
    ("IPV6_V6ONLY", SockOptName::IPV6_V6ONLY),
];

/// The Linux name of a socket option, e.g. `TCP_KEEPIDLE`.
pub fn sockopt_name(option: SockOptName) -> &'static str {
    SOCKOPT_NAMES.iter().find(|(_, o)| *o == option).map(|(name, _)| *name).unwrap_or("?")
}

/// TCP header flag bits by the letters tcpdump prints (`.` is ACK; `A` is accepted too).
pub const TCP_FLAG_LETTERS: &[(char, u8)] = &[
    ('F', 0x01),
    ('S', 0x02),
    ('R', 0x04),
    ('P', 0x08),
    ('.', 0x10),
    ('A', 0x10),
    ('U', 0x20),
    ('E', 0x40),
    ('W', 0x80),
];

/// Every action key of a step, in the order messages list them.
pub const ACTION_KEYS: &[&str] = &[
    "socket",
    "setsockopt",
    "bind",
    "listen",
    "accept",
    "connect",
    "poll",
    "send",
    "write",
    "recv",
    "read",
    "shutdown",
    "close",
    "sleep",
    "getsockopt",
    "wait",
    "exec",
];

/// Actions that may be written as a bare name (`- close`) because every parameter has a default.
pub const BARE_ACTIONS: &[&str] = &["socket", "listen", "accept", "recv", "read", "close"];

/// The allowed name closest to `given`, if it is close enough to be a likely typo.
pub fn closest<'a>(given: &str, allowed: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let given_lower = given.to_lowercase();
    let given_length = given_lower.chars().count();
    let limit = (given.chars().count() / 3).max(1);
    let mut best: Option<(usize, &str)> = None;
    for candidate in allowed {
        let candidate_lower = candidate.to_lowercase();
        // The difference in length is a lower bound of the distance: skipping what cannot come close enough keeps
        // a long given name (up to the whole file) from costing length x length per candidate.
        if given_length.abs_diff(candidate_lower.chars().count()) > limit {
            continue;
        }
        let distance = edit_distance(&given_lower, &candidate_lower);
        if best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    let (distance, candidate) = best?;
    (distance <= limit).then_some(candidate)
}

/// `; did you mean X? ` or `; `: goes between what is wrong and the list of what is allowed.
pub fn suggestion<'a>(given: &str, allowed: impl IntoIterator<Item = &'a str>) -> String {
    match closest(given, allowed) {
        Some(name) => format!("; did you mean {name}? "),
        None => "; ".to_string(),
    }
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of neighbours cost 1.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best =
                (d[(i - 1) * width + j] + 1).min(d[i * width + j - 1] + 1).min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_typos() {
        let errnos = ["ETIMEDOUT", "ECONNRESET", "EPIPE"];
        assert_eq!(closest("ETIMEOUT", errnos), Some("ETIMEDOUT"));
        assert_eq!(closest("etimedout", errnos), Some("ETIMEDOUT"));
        assert_eq!(closest("ECONNRSET", errnos), Some("ECONNRESET"));
        assert_eq!(closest("srever", ["client", "server"]), Some("server"));
        assert_eq!(closest("tolerence", ["tolerance", "timeout"]), Some("tolerance"));
        assert_eq!(closest("banana", errnos), None);
        assert_eq!(suggestion("EPIEP", errnos), "; did you mean EPIPE? ");
        assert_eq!(suggestion("XYZZY", errnos), "; ");
    }

    #[test]
    fn names_far_longer_than_every_candidate_are_not_compared() {
        // Found probing 1 MiB files: a 1 MB unknown errno took 9 s, a full edit distance against each of the 38 names.
        let started = std::time::Instant::now();
        assert_eq!(closest(&"E".repeat(1_000_000), ["EPIPE", "EIO"]), None);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(closest("EPIPEXX", ["EPIPE"]), Some("EPIPE"));
        assert_eq!(closest("EPIPEXXX", ["EPIPE"]), None);
    }

    #[test]
    fn distance_counts_swaps_once() {
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn every_sockopt_has_a_name() {
        for (name, option) in SOCKOPT_NAMES {
            assert_eq!(sockopt_name(*option), *name);
            assert_eq!(format!("{option:?}"), *name);
        }
    }
}
