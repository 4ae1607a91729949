//! The kernel's own counters of a host (`nstat -az` inside its namespace): TCP retransmissions, SACK recoveries,
//! DSACKs, undos, checksum errors, challenge ACKs. Each namespace counts from zero, so the values read at the
//! end of a run are what the run made the kernel count.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::{Context, Result};

/// The counter files, as `nstat` reads them.
const FILES: [&str; 2] = ["/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat"];

/// `/proc/net/snmp` and `/proc/net/netstat` of the namespace of the thread that opened them. A descriptor of one
/// keeps the namespace it was opened in, and each read from its start shows the counters of that moment: the
/// files are opened once during a host's set-up, inside its namespace, and read from any thread at the end (no
/// thread entering the namespace after the scenario, on the way to its teardown).
pub struct CounterFiles {
    files: [File; 2],
}

impl CounterFiles {
    /// Opens the counters of the calling thread's namespace.
    pub fn open() -> Result<CounterFiles> {
        let open = |file: &str| File::open(file).context(|| format!("open the kernel's counters (cat {file})"));
        Ok(CounterFiles { files: [open(FILES[0])?, open(FILES[1])?] })
    }

    /// `nstat -az` of the namespace the files were opened in, now: every counter that is not zero.
    pub fn read(&self) -> Result<BTreeMap<String, u64>> {
        let mut counters = BTreeMap::new();
        for (file, name) in self.files.iter().zip(FILES) {
            let text = read_from_start(file).context(|| format!("read the kernel's counters (cat {name})"))?;
            counters.extend(parse(&text).into_iter().filter(|(_, value)| *value != 0));
        }
        Ok(counters)
    }
}

/// The whole of a /proc file, from its start whatever was read before (the kernel writes it anew then).
fn read_from_start(file: &File) -> std::io::Result<String> {
    let mut bytes = vec![0u8; 8192];
    let mut len = 0;
    loop {
        if len == bytes.len() {
            bytes.resize(len * 2, 0);
        }
        match file.read_at(&mut bytes[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    bytes.truncate(len);
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
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
    fn a_fresh_namespace_counts_from_zero_and_its_files_keep_it_when_read_from_outside() {
        let ns = crate::run::netns::Netns::new_anonymous().unwrap();
        let files = ns.run(CounterFiles::open).unwrap();
        // Read here, in the test's own namespace, whose counters are the machine's.
        let before = files.read().unwrap();
        assert_eq!(before.get("TcpAttemptFails"), None, "{before:?}");
        assert_eq!(before.get("TcpRtoMin"), Some(&200), "a constant the kernel reports: {before:?}");
        // One connect to a closed port of the namespace's own loopback: refused with a RST, which the
        // namespace counts once, as a failed attempt and as a RST sent.
        ns.run(|| {
            // `ip` runs in the namespace of the thread that starts it.
            let up = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status().unwrap();
            assert!(up.success(), "ip link set lo up: {up}");
            let refused = std::net::TcpStream::connect("127.0.0.1:1").unwrap_err();
            assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
            Ok(())
        })
        .unwrap();
        let after = files.read().unwrap();
        assert_eq!(after.get("TcpAttemptFails"), Some(&1), "{after:?}");
        assert_eq!(after.get("TcpOutRsts"), Some(&1), "{after:?}");
    }
}
