//! The alternative the benchmarks measure netfault against: the shell recipe of `ip netns add`, `ip link`,
//! `nft -f` and `tcpdump -w` run as processes, with guards that delete its named namespaces and stop tcpdump
//! whatever happens.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};
use crate::run::runner::wait_with_timeout;

/// Longest a single recipe command (`ip ...`, `nft -f`) may take; they take milliseconds.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for tcpdump to print `listening on`, and to exit after SIGTERM (it writes out its buffer first).
const TCPDUMP_TIMEOUT: Duration = Duration::from_secs(10);
/// Prefix of every namespace the recipe names: `nfbench-<pid>-<i>-<host>`.
const NAME_PREFIX: &str = "nfbench-";
const NAMED_NETNS_DIR: &str = "/run/netns";

/// Runs `program args...` and waits for it (at most `COMMAND_TIMEOUT`); fails with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    let line = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context(|| format!("start {line}"))?;
    let status = wait_with_timeout(&mut child, COMMAND_TIMEOUT)?;
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    match status {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(Error::Internal(format!("{line}: {status}: {}", stderr.trim()))),
        None => Err(Error::Internal(format!("{line}: still running after {COMMAND_TIMEOUT:?}: killed"))),
    }
}

/// Named namespaces (`ip netns add <name>`) that are deleted (`ip netns del`) when this guard goes, even on
/// an error or a panic.
#[derive(Debug, Default)]
pub struct NamedNamespaces {
    names: Vec<String>,
}

impl NamedNamespaces {
    /// `nfbench-<pid>-<tag>`: unique to this process, and recognisable as a leftover if it were killed.
    pub fn name(tag: &str) -> String {
        format!("{NAME_PREFIX}{}-{tag}", std::process::id())
    }

    /// `ip netns add <name>`.
    pub fn add(&mut self, name: &str) -> Result<()> {
        run("ip", &["netns", "add", name])?;
        self.names.push(name.to_string());
        Ok(())
    }

    /// `ip netns del <name>` for each, in order.
    pub fn delete_all(&mut self) -> Result<()> {
        while let Some(name) = self.names.first() {
            run("ip", &["netns", "del", name])?;
            self.names.remove(0);
        }
        Ok(())
    }
}

impl Drop for NamedNamespaces {
    fn drop(&mut self) {
        for name in &self.names {
            if let Err(e) = run("ip", &["netns", "del", name]) {
                eprintln!("netfault bench: cannot delete namespace {name}: {e}");
            }
        }
    }
}

/// Deletes `nfbench-<pid>-*` namespaces left by a benchmark process that no longer exists (killed with
/// SIGKILL, where no guard runs).
pub fn remove_stale_namespaces() -> Result<()> {
    let Ok(entries) = std::fs::read_dir(NAMED_NETNS_DIR) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(NAME_PREFIX).and_then(|rest| rest.split('-').next()) else {
            continue;
        };
        let alive = pid.parse::<u32>().is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            run("ip", &["netns", "del", &name])?;
        }
    }
    Ok(())
}

/// What tcpdump says when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TcpdumpStats {
    /// `N packets captured`: written to the pcap.
    pub captured: u64,
    /// `N packets received by filter`.
    pub received: u64,
    /// `N packets dropped by kernel`: the ring was full.
    pub dropped: u64,
}

impl TcpdumpStats {
    fn parse(lines: &[String]) -> TcpdumpStats {
        let mut stats = TcpdumpStats::default();
        for line in lines {
            let mut words = line.split_whitespace();
            let Some(count) = words.next().and_then(|w| w.parse().ok()) else {
                continue;
            };
            let rest: Vec<&str> = words.collect();
            match rest.as_slice() {
                ["packets" | "packet", "captured"] => stats.captured = count,
                ["packets" | "packet", "received", "by", "filter"] => stats.received = count,
                ["packets" | "packet", "dropped", "by", "kernel"] => stats.dropped = count,
                _ => {}
            }
        }
        stats
    }
}

/// `tcpdump -i <ifname> -w <pcap> &` started through a namespace-entering prefix (`ip netns exec <name>` or
/// `nsenter --net=<path>`), and known to be capturing (its `listening on` line was read).
#[derive(Debug)]
pub struct Tcpdump {
    command: String,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
}

impl Tcpdump {
    /// Starts tcpdump and waits until it prints `listening on` (at most `TCPDUMP_TIMEOUT`). `-Z root` keeps it
    /// root, so it may write wherever the benchmark does; `-n` spares it name lookups.
    pub fn start(enter: &[&str], ifname: &str, pcap: &Path) -> Result<Tcpdump> {
        Tcpdump::start_with(enter, &[], ifname, pcap)
    }

    /// [`Tcpdump::start`] with more tcpdump options (`-B 32768`).
    pub fn start_with(enter: &[&str], options: &[&str], ifname: &str, pcap: &Path) -> Result<Tcpdump> {
        let pcap_text = pcap.to_string_lossy();
        let mut args: Vec<&str> = enter.to_vec();
        args.extend(["tcpdump", "-n", "-Z", "root"]);
        args.extend(options);
        args.extend(["-i", ifname, "-w", &pcap_text]);
        let command = args.join(" ");
        let mut child = Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context(|| format!("start {command}"))?;
        let (tx, lines) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let tcpdump = Tcpdump { command, child: Some(child), lines };
        let deadline = Instant::now() + TCPDUMP_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            match tcpdump.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("listening on") => return Ok(tcpdump),
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(Error::Internal(format!(
                        "{}: no `listening on` within {TCPDUMP_TIMEOUT:?}: {}",
                        tcpdump.command,
                        seen.join(" | ")
                    )))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Error::Internal(format!("{} exited: {}", tcpdump.command, seen.join(" | "))))
                }
            }
        }
    }

    /// `kill -TERM` and wait (bounded) until tcpdump has written out its pcap and exited; its counts.
    pub fn stop(mut self) -> Result<TcpdumpStats> {
        let mut child =
            self.child.take().ok_or_else(|| Error::Internal(format!("{} already stopped", self.command)))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .context(|| format!("kill -TERM {}", self.command))?;
        let status = wait_with_timeout(&mut child, TCPDUMP_TIMEOUT)?;
        if status.is_none() {
            return Err(Error::Internal(format!(
                "{}: did not exit within {TCPDUMP_TIMEOUT:?} of SIGTERM",
                self.command
            )));
        }
        // The reader thread ends at EOF, which follows the exit; its last lines are the counts.
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
            lines.push(line);
        }
        Ok(TcpdumpStats::parse(&lines))
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcpdump_counts_are_read_from_its_exit_lines() {
        let lines: Vec<String> = [
            "tcpdump: listening on nf0, link-type EN10MB (Ethernet), snapshot length 262144 bytes",
            "1455 packets captured",
            "1460 packets received by filter",
            "5 packets dropped by kernel",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(TcpdumpStats::parse(&lines), TcpdumpStats { captured: 1455, received: 1460, dropped: 5 });
        let one = vec!["1 packet captured".to_string()];
        assert_eq!(TcpdumpStats::parse(&one).captured, 1);
    }

    #[test]
    fn a_failing_command_reports_its_stderr() {
        let err = run("ls", &["/no-such-file-nfbench"]).unwrap_err();
        assert!(err.to_string().contains("ls /no-such-file-nfbench: exit status: 2"), "{err}");
        assert!(err.to_string().contains("No such file"), "{err}");
    }
}
