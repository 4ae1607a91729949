//! The kernel's own counters of a host (`nstat -az` inside its namespace): TCP retransmissions, SACK recoveries,
//! DSACKs, undos, checksum errors, challenge ACKs. Each namespace counts from zero, so the values read at the
//! end of a run are what the run made the kernel count.

use std::collections::BTreeMap;

use crate::error::{Context, Result};

/// `cat /proc/net/snmp /proc/net/netstat` of the calling thread's namespace, as nstat names the counters
/// (`TcpRetransSegs`, `TcpExtTCPDSACKRecv`): every counter that is not zero.
pub fn read_counters() -> Result<BTreeMap<String, u64>> {
    let mut counters = BTreeMap::new();
    for file in ["/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat"] {
        let text = std::fs::read_to_string(file).context(|| format!("read the kernel's counters (cat {file})"))?;
        counters.extend(parse(&text).into_iter().filter(|(_, value)| *value != 0));
    }
    Ok(counters)
}

/// The counters of a /proc/net/snmp or /proc/net/netstat text: pairs of lines, names then values, each starting
/// with its group (`Tcp:`, `TcpExt:`).
pub fn parse(text: &str) -> Vec<(String, u64)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut counters = Vec::new();
    for pair in lines.chunks_exact(2) {
        let (mut names, mut values) = (pair[0].split_whitespace(), pair[1].split_whitespace());
        let (Some(group), Some(same)) = (names.next(), values.next()) else { continue };
        if group != same {
            continue;
        }
        let group = group.trim_end_matches(':');
        for (name, value) in names.zip(values) {
            // Counters are unsigned; a few gauges (`TcpMaxConn` -1) are not, and are not counted.
            if let Ok(value) = value.parse::<u64>() {
                counters.push((format!("{group}{name}"), value));
            }
        }
    }
    counters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_as_nstat_names_them() {
        let text = "Tcp: RtoAlgorithm RtoMin MaxConn RetransSegs\nTcp: 1 200 -1 12\nUdp: InDatagrams\nUdp: 3\n";
        assert_eq!(
            parse(text),
            vec![
                ("TcpRtoAlgorithm".into(), 1),
                ("TcpRtoMin".into(), 200),
                ("TcpRetransSegs".into(), 12),
                ("UdpInDatagrams".into(), 3)
            ]
        );
    }

    #[test]
    fn a_fresh_namespace_counts_from_zero() {
        let ns = crate::run::netns::Netns::new_anonymous().unwrap();
        let counters = ns.run(read_counters).unwrap();
        assert_eq!(counters.get("TcpRetransSegs"), None, "{counters:?}");
        assert_eq!(counters.get("TcpRtoMin"), Some(&200), "a constant the kernel reports: {counters:?}");
    }
}
