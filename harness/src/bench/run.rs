//! `netfault bench run`: a trivial scenario (one fault, a listener, a connect, both ends captured, socket
//! observers, reports) through `netfault run` end to end, from the user's command to its exit, against a shell
//! script doing the same job (`ip netns`, veth, addresses, `nft`, `tcpdump` on both ends, `socat`, `ss`, teardown),
//! alternating in one run; and where netfault's time goes, from its report.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::recipe::{self, NamedNamespaces};
use super::{interrupted, millis, Comparison, Distribution, Report, ScratchDir, FIXTURE};
use crate::error::{Context, Error, Result};
use crate::run::runner::wait_with_timeout;

/// What `netfault bench run` repeats.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub repetitions: usize,
    /// The netfault binary to time; `None`: this one. Another build (main's, say) measured by the same code.
    pub netfault: Option<std::path::PathBuf>,
}

/// Repetitions of each side run first and not counted: they fault in the binaries and warm the caches.
const WARM_UP: usize = 3;
/// Target of the issue: `netfault run` of the trivial scenario at most this (median) ...
const TARGET_WALL_MS: f64 = 8.0;
/// ... and at least this many times faster than the script.
const TARGET_SPEEDUP: f64 = 25.0;
/// Pause after each repetition of either side. The kernel destroys a network namespace in a work queue once
/// its last user is gone, holding the RTNL lock for parts of it, and creating a namespace waits for that lock:
/// without the pause, each repetition's set-up would wait for the teardown of the one before, whichever side
/// that was (a user's single run starts from a settled kernel).
const SETTLE: Duration = Duration::from_millis(100);
/// Longest either side may take; both take milliseconds.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The job of the fixture as a shell script, as one would write it by hand: named namespaces, a veth pair
/// moved into them, addresses, `lo` and the ends up, the fault's table (off), tcpdump on both ends (waited for
/// until it listens), a socat listener (waited for until it listens), a socat connect, the fault switched on
/// after the connect, one `ss -tanoi` per host for the socket states, then everything stopped and deleted.
/// Arguments: client namespace, server namespace, client link, server link, folder for its files.
const SCRIPT: &str = r#"set -e
c=$1 s=$2 a=$3 b=$4 dir=$5
ip netns add "$c"
ip netns add "$s"
ip link add "$a" type veth peer name "$b"
ip link set "$a" netns "$c"
ip link set "$b" netns "$s"
ip -n "$c" link set lo up
ip -n "$s" link set lo up
ip -n "$c" addr add 10.0.0.1/24 dev "$a"
ip -n "$s" addr add 10.0.0.2/24 dev "$b"
ip -n "$c" link set "$a" up
ip -n "$s" link set "$b" up
ip netns exec "$s" nft -f "$dir/table.nft"
ip netns exec "$c" tcpdump -n -Z root -i "$a" -w "$dir/client.pcap" 2>"$dir/client.log" &
tc=$!
ip netns exec "$s" tcpdump -n -Z root -i "$b" -w "$dir/server.pcap" 2>"$dir/server.log" &
ts=$!
until grep -q "listening on" "$dir/client.log" && grep -q "listening on" "$dir/server.log"; do sleep 0.001; done
ip netns exec "$s" socat -u TCP-LISTEN:9000,bind=10.0.0.2 /dev/null &
l=$!
until ip netns exec "$s" ss -Hltn | grep -q ":9000 "; do sleep 0.001; done
ip netns exec "$c" socat -u /dev/null TCP:10.0.0.2:9000
ip netns exec "$s" nft add rule inet netfault input tcp dport 9000 drop
ip netns exec "$c" ss -tanoi >/dev/null
ip netns exec "$s" ss -tanoi >/dev/null
wait "$l"
kill "$tc" "$ts"
wait "$tc" "$ts"
ip netns del "$c"
ip netns del "$s"
"#;

/// The fault's table and chain, switched off (no rule yet), as `nft -f` reads them.
const TABLE: &str = "\
table inet netfault {
    chain input {
        type filter hook input priority filter; policy accept;
    }
}
";

/// One `netfault run` of the fixture: its wall time, and what its report says of its own phases.
struct NetfaultRun {
    wall: f64,
    /// CPU time of all its processes (user + system): the runner, the fork server and the scenario process.
    cpu: f64,
    setup: f64,
    scenario: f64,
    teardown: f64,
}

/// Both sides `repetitions` times, alternating; the table of each, and netfault's time split by its report.
pub fn bench_run(options: &RunOptions) -> Result<Report> {
    recipe::remove_stale_namespaces()?;
    let exe = match &options.netfault {
        Some(exe) => exe.clone(),
        None => std::env::current_exe().context(|| "find the netfault binary (/proc/self/exe)".to_string())?,
    };
    // The processes a run leaves behind it (its fork server, which reaps the scenario process and exits once it
    // has) become this process's children, so that their CPU time is counted when they are reaped.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(Error::last_os("prctl(PR_SET_CHILD_SUBREAPER)"));
    }
    let scratch = ScratchDir::new("run")?;
    let scenario = scratch.path().join("trivial.yaml");
    let script = scratch.path().join("trivial.sh");
    let script_files = scratch.path().join("script");
    std::fs::create_dir_all(&script_files).context(|| format!("mkdir -p {}", script_files.display()))?;
    for (path, text) in [(&scenario, FIXTURE), (&script, SCRIPT), (&script_files.join("table.nft"), TABLE)] {
        std::fs::write(path, text).context(|| format!("write {}", path.display()))?;
    }

    let mut report = Report::new("run");
    let mut ours: Vec<NetfaultRun> = Vec::new();
    let mut theirs: Vec<f64> = Vec::new();
    for i in 0..WARM_UP + options.repetitions {
        if interrupted() {
            report.note("interrupted", format!("after {} repetitions", ours.len()));
            break;
        }
        let run = netfault_once(&exe, &scenario, scratch.path())?;
        std::thread::sleep(SETTLE);
        let script_wall = script_once(i, &script, &script_files)?;
        std::thread::sleep(SETTLE);
        if i >= WARM_UP {
            ours.push(run);
            theirs.push(script_wall);
        }
    }

    let walls: Vec<f64> = ours.iter().map(|r| r.wall).collect();
    let outside: Vec<f64> = ours.iter().map(|r| r.wall - r.setup - r.scenario - r.teardown).collect();
    report.row("netfault run: wall, start to exit", "ms", &walls);
    report.row(
        "netfault run: CPU of all its processes (runner, fork server, scenario)",
        "ms",
        &ours.iter().map(|r| r.cpu).collect::<Vec<_>>(),
    );
    report.row(
        "  of which the scenario's set-up (result.json)",
        "ms",
        &ours.iter().map(|r| r.setup).collect::<Vec<_>>(),
    );
    report.row("  of which the scenario itself, t0 to end", "ms", &ours.iter().map(|r| r.scenario).collect::<Vec<_>>());
    report.row("  of which its teardown (result.json)", "ms", &ours.iter().map(|r| r.teardown).collect::<Vec<_>>());
    report.row("  the rest: process starts, load, report, exit", "ms", &outside);
    report.row("shell script: wall, start to exit", "ms", &theirs);
    if let (Some(netfault), Some(script)) = (Distribution::of(&walls), Distribution::of(&theirs)) {
        let ratio = script.median / netfault.median;
        report.compare(Comparison {
            what: "trivial scenario end to end (median)".into(),
            netfault: format!("{:.2} ms (p10 {:.2}, p90 {:.2})", netfault.median, netfault.p10, netfault.p90),
            alternative: format!("{:.1} ms (p10 {:.1}, p90 {:.1})", script.median, script.p10, script.p90),
            ratio: Some(ratio),
            target: format!("netfault < {TARGET_WALL_MS} ms and >= {TARGET_SPEEDUP}x faster"),
            met: netfault.median < TARGET_WALL_MS && ratio >= TARGET_SPEEDUP,
        });
    }
    report.note(
        "method",
        format!(
            "{WARM_UP} warm-up repetitions of each side not counted, then the two alternate, {} ms apart (the \
             kernel's teardown of the namespaces before them done); netfault: `netfault run --reports DIR \
             trivial.yaml` started as a process ({}), wall time from spawn to its exit, which must be 0, split by \
             the set-up, scenario and teardown times of its result.json; its CPU: user + system time of the \
             runner and of every process it left (this process is their subreaper and reaps them, at most {} s \
             after the runner's exit, outside the wall time); the script: `sh trivial.sh` (printed by \
             `--keep`), each command a process, tcpdump and the listener waited for by polling every 1 ms",
            SETTLE.as_millis(),
            exe.display(),
            LEFT_BEHIND_WAIT.as_secs(),
        ),
    );
    report.extra = json!({
        "netfault": exe.display().to_string(),
        "netfault_wall_ms": walls,
        "netfault_cpu_ms": ours.iter().map(|r| r.cpu).collect::<Vec<_>>(),
        "netfault_setup_ms": ours.iter().map(|r| r.setup).collect::<Vec<_>>(),
        "netfault_scenario_ms": ours.iter().map(|r| r.scenario).collect::<Vec<_>>(),
        "netfault_teardown_ms": ours.iter().map(|r| r.teardown).collect::<Vec<_>>(),
        "script_wall_ms": theirs,
    });
    drop(scratch);
    Ok(report.finish())
}

/// `netfault run --reports <dir>/reports <scenario>`, timed from spawn to exit; the run must pass.
fn netfault_once(exe: &Path, scenario: &Path, dir: &Path) -> Result<NetfaultRun> {
    let reports = dir.join("reports");
    let cpu_before = children_cpu()?;
    let started = Instant::now();
    let mut child = Command::new(exe)
        .arg("run")
        .arg("--reports")
        .arg(&reports)
        .arg(scenario)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context(|| format!("start {} run", exe.display()))?;
    let status = wait_with_timeout(&mut child, RUN_TIMEOUT)?;
    let wall = millis(started.elapsed());
    reap_left_behind()?;
    let cpu = millis(children_cpu()?.saturating_sub(cpu_before));
    if !status.is_some_and(|status| status.success()) {
        return Err(Error::Internal(format!(
            "`netfault run {}` did not pass ({status:?}); see {}",
            scenario.display(),
            reports.display()
        )));
    }
    let result = reports.join("trivial").join("result.json");
    let text = std::fs::read_to_string(&result).context(|| format!("read {}", result.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Internal(format!("{}: {e}", result.display())))?;
    let figure = |key: &str| {
        value[key].as_f64().ok_or_else(|| Error::Internal(format!("{}: no number `{key}`", result.display())))
    };
    Ok(NetfaultRun {
        wall,
        cpu,
        setup: figure("setup_ms")?,
        scenario: figure("duration")? * 1e3,
        teardown: figure("teardown_ms")?,
    })
}

/// How long the processes a run left behind may take to exit: its fork server exits once its scenario process
/// has, which waits for the kernel's release of its packet sockets.
const LEFT_BEHIND_WAIT: Duration = Duration::from_secs(10);

/// Reaps every child of this process (the processes a run left, reparented here), waiting at most
/// [`LEFT_BEHIND_WAIT`] for them to exit.
fn reap_left_behind() -> Result<()> {
    let until = Instant::now() + LEFT_BEHIND_WAIT;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on any child, WNOHANG; `status` is a valid place for the kernel to write.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match pid {
            0 if Instant::now() < until => std::thread::sleep(Duration::from_micros(500)),
            0 => return Err(Error::Internal("a run's processes were still alive 10 s after it exited".into())),
            pid if pid > 0 => {}
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) => return Ok(()),
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => return Err(Error::last_os("waitpid(-1)")),
        }
    }
}

/// User + system time of this process's reaped children and their reaped descendants (`getrusage(RUSAGE_CHILDREN)`).
fn children_cpu() -> Result<Duration> {
    Ok(super::cpu_of(&super::rusage(libc::RUSAGE_CHILDREN, "RUSAGE_CHILDREN")?))
}

/// `sh trivial.sh ...` in a process group of its own, timed from spawn to exit; it must succeed. A failed run's
/// processes (its whole group) and namespaces are removed. `files` holds table.nft and gets its pcaps and logs.
fn script_once(repetition: usize, script: &Path, files: &Path) -> Result<f64> {
    let tag = repetition % 1000;
    let namespaces = [NamedNamespaces::name(&format!("run{tag}c")), NamedNamespaces::name(&format!("run{tag}s"))];
    // Interface names have at most 15 bytes; they are created in the bench's own namespace, then moved.
    let links = [format!("nfr{tag}c"), format!("nfr{tag}s")];
    let started = Instant::now();
    let mut child = Command::new("sh")
        .arg(script)
        .args(&namespaces)
        .args(&links)
        .arg(files)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .context(|| format!("start sh {}", script.display()))?;
    let group = i32::try_from(child.id()).ok();
    let status = wait_with_timeout(&mut child, RUN_TIMEOUT)?;
    let wall = millis(started.elapsed());
    if status.is_some_and(|status| status.success()) {
        return Ok(wall);
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    if let Some(group) = group {
        // SAFETY: plain system call on the script's own process group (tcpdump, socat), just after its end.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
    for name in namespaces.iter().filter(|name| Path::new("/run/netns").join(name).exists()) {
        recipe::run("ip", &["netns", "del", name])?;
    }
    Err(Error::Internal(format!("sh {}: {status:?}: {}", script.display(), stderr.trim())))
}
