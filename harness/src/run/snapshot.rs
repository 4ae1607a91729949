//! What each thread of a scenario process tree was doing, read from /proc by the runner just before it kills a
//! scenario process that outlived its deadline and grace (`ps -L -o pid,tid,comm,stat,cls,rtprio,time,wchan`
//! and `cat /proc/<pid>/task/<tid>/stack` for each): the evidence of what it was stuck in, kept in its report
//! folder as killed.txt. Every read is of one small /proc file, and the walk is bounded.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use crate::run::procstat::ProcStat;

/// At most this many processes and threads are read: a tree that forks without end is described in part.
const MAX_PROCESSES: usize = 64;
const MAX_THREADS: usize = 512;
/// The kernel stack of a thread is cut after this many lines.
const MAX_STACK_LINES: usize = 24;

/// One thread as /proc/<pid>/task/<tid>/stat describes it.
#[derive(Debug, PartialEq)]
struct ThreadStat {
    comm: String,
    state: char,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
    rt_priority: u64,
    policy: u64,
    nice: i64,
}

/// Parses a thread's stat line ([`ProcStat`]).
fn parse_stat(line: &str) -> Option<ThreadStat> {
    let stat = ProcStat::parse(line)?;
    Some(ThreadStat {
        comm: stat.comm.to_string(),
        state: stat.field(3)?.chars().next()?,
        cpu_ticks: stat.number(14)? + stat.number(15)?,
        nice: stat.field(19)?.parse().ok()?,
        rt_priority: stat.number(40)?,
        policy: stat.number(41)?,
    })
}

/// `chrt`'s name of a scheduling policy.
fn policy_name(policy: u64) -> &'static str {
    match policy {
        0 => "OTHER",
        1 => "FIFO",
        2 => "RR",
        3 => "BATCH",
        5 => "IDLE",
        6 => "DEADLINE",
        _ => "?",
    }
}

/// The processes of the tree under `root` (itself first), from each thread's `children` file (`pgrep -P`),
/// at most [`MAX_PROCESSES`].
fn tree(proc: &Path, root: u32) -> Vec<u32> {
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() && found.len() < MAX_PROCESSES {
        let pid = found[next];
        next += 1;
        let Ok(tasks) = fs::read_dir(proc.join(pid.to_string()).join("task")) else { continue };
        for task in tasks.flatten() {
            let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|pid| pid.parse::<u32>().ok()) {
                if !found.contains(&child) && found.len() < MAX_PROCESSES {
                    found.push(child);
                }
            }
        }
    }
    found
}

/// The threads of the process tree under `root`, one block each: pid, tid, name, state, scheduling, CPU time,
/// wchan and the kernel stack (root may read it; otherwise said so).
pub fn describe(root: u32) -> String {
    describe_in(Path::new("/proc"), root)
}

fn describe_in(proc: &Path, root: u32) -> String {
    // SAFETY: sysconf takes and returns plain integers.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    let mut text = String::new();
    let mut threads = 0;
    for pid in tree(proc, root) {
        let Ok(tasks) = fs::read_dir(proc.join(pid.to_string()).join("task")) else {
            let _ = writeln!(text, "pid {pid}: gone before it could be read");
            continue;
        };
        let mut tids: Vec<u32> = tasks.flatten().filter_map(|task| task.file_name().to_str()?.parse().ok()).collect();
        tids.sort_unstable();
        for tid in tids {
            if threads == MAX_THREADS {
                let _ = writeln!(text, "... more threads not read (at most {MAX_THREADS})");
                return text;
            }
            threads += 1;
            let task = proc.join(pid.to_string()).join("task").join(tid.to_string());
            let Some(stat) = fs::read_to_string(task.join("stat")).ok().as_deref().and_then(parse_stat) else {
                let _ = writeln!(text, "pid {pid} tid {tid}: gone before it could be read");
                continue;
            };
            let wchan = fs::read_to_string(task.join("wchan")).unwrap_or_default();
            let wchan = if wchan.trim().is_empty() || wchan.trim() == "0" { "-" } else { wchan.trim() };
            let scheduling = match stat.policy {
                1 | 2 => format!("{} {}", policy_name(stat.policy), stat.rt_priority),
                _ => format!("{} nice {}", policy_name(stat.policy), stat.nice),
            };
            let _ = writeln!(
                text,
                "pid {pid} tid {tid} {:?} state {} {scheduling} cpu {:.2}s wchan {wchan}",
                stat.comm,
                stat.state,
                stat.cpu_ticks as f64 / ticks as f64
            );
            match fs::read_to_string(task.join("stack")) {
                Ok(stack) => {
                    for line in stack.lines().take(MAX_STACK_LINES) {
                        let _ = writeln!(text, "    {line}");
                    }
                }
                Err(e) => {
                    let _ = writeln!(text, "    (kernel stack not readable: {e})");
                }
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_from_the_end_of_its_name() {
        let line = "4242 (wire (x) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 -51 0 3 0 12345 0 0 \
                    18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 50 1 0 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            ThreadStat { comm: "wire (x) 1".into(), state: 'S', cpu_ticks: 325, rt_priority: 50, policy: 1, nice: 0 }
        );
        assert_eq!(parse_stat("4242 (cut"), None);
    }

    #[test]
    fn this_process_and_its_child_are_described_thread_by_thread() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        // Until it has exec'd sleep and sleeps in it (at most 5 s).
        let stat = format!("/proc/{}/stat", child.id());
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !fs::read_to_string(&stat).unwrap_or_default().contains("(sleep) S") {
            assert!(std::time::Instant::now() < until, "{}", fs::read_to_string(&stat).unwrap_or_default());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let me = std::process::id();
        let text = describe(me);
        child.kill().unwrap();
        child.wait().unwrap();
        let line = format!("pid {me} tid {me} ");
        assert!(text.lines().any(|l| l.starts_with(&line)), "{text}");
        assert!(text.contains(&format!("pid {} tid {} \"sleep\" state S", child.id(), child.id())), "{text}");
    }
}
