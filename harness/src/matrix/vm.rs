//! One kernel's column of the matrix: boot it in qemu (`qemu-system-x86_64 -kernel ... -initrd ...`) with the
//! guest image, follow its serial console, and take its reports off its second disk, which the guest writes
//! as one tar archive (`tar -cf /dev/vda`): no file system, network or shared folder is needed in the guest,
//! and the cloud kernels have no 9p.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};
use crate::run::supervise::Supervisor;

/// How the guest says where it is, on its console.
pub const MARKER: &str = "netfault-guest:";

/// What the guest prints once its init runs.
const UP: &str = "netfault-guest: up";

/// What the guest prints once its reports are on the disk.
const WRITTEN: &str = "netfault-guest: written";

/// How long KVM may take to reach the guest's init before the matrix gives up on it: with KVM an init runs
/// in about a second; a kernel that hangs under this machine's nested KVM prints nothing at all.
const KVM_PROBE: Duration = Duration::from_secs(20);

/// How long the emulated (TCG) machine may take to reach init (measured: 6-9 s on 2 busy vCPUs).
pub const BOOT_LIMIT: Duration = Duration::from_secs(120);

/// Size of the sparse disk the guest writes its reports to (bytes the archive does not use cost nothing).
const REPORTS_DISK_BYTES: u64 = 2 << 30;

/// The nice value qemu runs at: the guest's clock is this machine's, so every time slice this machine gives
/// other work while a vCPU has something to run is time the guest's timers, packets and wire threads see pass
/// without running. Its suite measures times to the millisecond, so the VM is a measuring instrument, like
/// the harness's own real-time threads. Measured: in a 6.1 TCG VM at nice 0 on this 2-CPU machine, with other
/// sessions' compilers busy, impair/rate's 10 Mbit/s link sat idle for 0.62 s of a 4.19 s transfer (3.51 s
/// due), its wire thread not running for up to 60 ms at a time. At -20 a busy vCPU has 87 times the weight
/// of an ordinary process (CFS), not a real-time policy: this machine's own threads still run.
const VM_NICE: libc::c_int = -20;

/// qemu's acceleration: KVM, or TCG (emulation: slower, but works everywhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The machine the guest runs on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub image: PathBuf,
    pub initramfs: PathBuf,
    pub cpus: u32,
    pub memory_mib: u32,
}

/// What a finished boot left: the guest's output folder (unpacked from its disk), its console and times.
#[derive(Debug)]
pub struct Booted {
    pub out: PathBuf,
    pub console: String,
    /// From qemu's start to the guest's init running.
    pub boot: Duration,
    /// From qemu's start to its exit.
    pub total: Duration,
    pub accel: Accel,
}

/// Where `qemu-system-x86_64` is, or what to install.
pub fn qemu() -> Result<PathBuf> {
    let name = "qemu-system-x86_64";
    find_program(name).ok_or_else(|| Error::Missing {
        what: name.into(),
        hint: "apt-get install qemu-system-x86 (bash ci/setup.sh installs it)".into(),
    })
}

/// `command -v NAME`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Boots the machine and waits for the guest to power off, at most `limit` after its init runs, or until
/// `supervisor` says stop (SIGINT, SIGTERM); `on_line` sees every console line the guest prints once its init
/// runs. `work` holds the disk and receives the guest's output in `work/out`. With `accel: None` KVM is tried
/// first when /dev/kvm exists, then TCG.
pub fn boot(
    machine: &Machine,
    work: &Path,
    accel: Option<Accel>,
    limit: Duration,
    supervisor: &Supervisor,
    mut on_line: impl FnMut(&str),
) -> Result<Booted> {
    let mut candidates = match accel {
        Some(accel) => vec![accel],
        None if Path::new("/dev/kvm").exists() => vec![Accel::Kvm, Accel::Tcg],
        None => vec![Accel::Tcg],
    };
    // An emulated kernel that dies before its init runs is booted once more: one of eleven TCG boots of 6.12
    // here (2026-12-05) panicked at 3.3 s ("Fatal exception in interrupt"), before the suite started, so a
    // second boot throws nothing measured away.
    if candidates.last() == Some(&Accel::Tcg) {
        candidates.push(Accel::Tcg);
    }
    let mut notes = Vec::new();
    for (i, accel) in candidates.iter().copied().enumerate() {
        let last = i + 1 == candidates.len();
        let boot_limit = if accel == Accel::Kvm && !last { KVM_PROBE } else { BOOT_LIMIT };
        match boot_with(machine, work, accel, boot_limit, limit, supervisor, &mut on_line) {
            Ok(booted) => return Ok(booted),
            Err(NotBooted { reason, init_ran })
                if !last && supervisor.stop_reason().is_none() && (accel == Accel::Kvm || !init_ran) =>
            {
                on_line(&format!(
                    "{MARKER} {} did not boot ({reason}); trying {}",
                    accel.name(),
                    candidates[i + 1].name()
                ));
                notes.push(reason);
            }
            Err(NotBooted { reason, .. }) => {
                notes.push(reason);
                return Err(Error::Internal(format!("the VM did not run to its end: {}", notes.join("; then "))));
            }
        }
    }
    Err(Error::Internal("no accelerator to try".into()))
}

/// Why a boot gave no result, and whether the guest's init had run (its suite started): such a boot is not
/// tried again.
struct NotBooted {
    reason: String,
    init_ran: bool,
}

fn boot_with(
    machine: &Machine,
    work: &Path,
    accel: Accel,
    boot_limit: Duration,
    limit: Duration,
    supervisor: &Supervisor,
    on_line: &mut impl FnMut(&str),
) -> std::result::Result<Booted, NotBooted> {
    let failed = |e: Error| NotBooted { reason: e.to_string(), init_ran: false };
    let disk = work.join("reports.disk");
    make_sparse_disk(&disk).map_err(failed)?;
    let mut child = start_qemu(machine, &disk, accel).map_err(failed)?;
    let started = Instant::now();
    let lines = console_lines(&mut child);
    let mut console = String::new();
    let mut up_at = None;
    let mut written = false;
    let result = loop {
        let waited = started.elapsed();
        let allowed = match up_at {
            None => boot_limit,
            Some(up) => up + limit,
        };
        if let Some(reason) = supervisor.stop_reason() {
            break Err(format!("{reason}: the VM was stopped"));
        }
        if waited >= allowed {
            break Err(match up_at {
                None => format!("{} printed nothing of its init within {}s", accel.name(), boot_limit.as_secs()),
                Some(_) => format!("the guest was still running {}s after its init started: killed", limit.as_secs()),
            });
        }
        match lines.recv_timeout((allowed - waited).min(Duration::from_millis(500))) {
            Ok(line) => {
                console.push_str(&line);
                console.push('\n');
                if line.starts_with(UP) && up_at.is_none() {
                    up_at = Some(started.elapsed());
                }
                written |= line.starts_with(WRITTEN);
                if up_at.is_some() {
                    on_line(&line);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break Ok(()),
        }
    };
    let status = match result {
        Ok(()) => child.wait().ok(),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    };
    let total = started.elapsed();
    let init_ran = up_at.is_some();
    if let Err(reason) = result {
        return Err(NotBooted { reason, init_ran });
    }
    let Some(boot) = up_at else {
        return Err(NotBooted {
            reason: format!("qemu exited ({}) before the guest's init ran: {}", describe(status), tail(&console)),
            init_ran,
        });
    };
    if !written {
        return Err(NotBooted {
            reason: format!("the guest powered off without writing its reports: {}", tail(&console)),
            init_ran,
        });
    }
    let out = work.join("out");
    unpack(&disk, &out).map_err(|e| NotBooted { reason: e.to_string(), init_ran })?;
    let _ = std::fs::remove_file(&disk);
    Ok(Booted { out, console, boot, total, accel })
}

fn describe(status: Option<std::process::ExitStatus>) -> String {
    status.map_or_else(|| "no status".into(), |s| s.to_string())
}

/// The last lines of the console, for a message.
fn tail(console: &str) -> String {
    let lines: Vec<&str> = console.lines().filter(|l| !l.trim().is_empty()).collect();
    match lines.len() {
        0 => "the console stayed empty".into(),
        n => format!("console ends with: {}", lines[n.saturating_sub(6)..].join(" | ")),
    }
}

/// `truncate -s 2G reports.disk`.
fn make_sparse_disk(disk: &Path) -> Result<()> {
    let file = File::create(disk).context(|| format!("create {}", disk.display()))?;
    file.set_len(REPORTS_DISK_BYTES).context(|| format!("truncate -s {REPORTS_DISK_BYTES} {}", disk.display()))
}

fn start_qemu(machine: &Machine, disk: &Path, accel: Accel) -> Result<Child> {
    let qemu = qemu()?;
    let mut command = Command::new(&qemu);
    command
        .args(["-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none", "-serial", "stdio"])
        .arg("-machine")
        .arg(format!("q35,accel={}", accel.name()))
        .args(["-cpu", "max", "-smp"])
        .arg(machine.cpus.to_string())
        .arg("-m")
        .arg(machine.memory_mib.to_string())
        .arg("-kernel")
        .arg(&machine.image)
        .arg("-initrd")
        .arg(&machine.initramfs)
        // quiet: the console is the guest's output; panic=-1 and -no-reboot: a kernel panic ends qemu.
        .args(["-append", "console=ttyS0 quiet panic=-1 tsc=reliable rdinit=/init"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // qemu must not outlive the matrix, whatever ends it; and its vCPU threads come before this machine's
    // other work (`nice -n -20`).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Refused without CAP_SYS_NICE: the VM then runs at the ordinary weight, as any other process.
            libc::setpriority(libc::PRIO_PROCESS, 0, VM_NICE);
            Ok(())
        });
    }
    command.spawn().context(|| format!("start {}", qemu.display()))
}

/// The console's lines (and qemu's own messages) as they come, without carriage returns and terminal escapes;
/// the channel closes when qemu has closed both.
fn console_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let streams: Vec<Box<dyn std::io::Read + Send>> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for stream in streams {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut raw = Vec::new();
            while reader.read_until(b'\n', &mut raw).is_ok_and(|n| n > 0) {
                if tx.send(printable(&raw)).is_err() {
                    break;
                }
                raw.clear();
            }
        });
    }
    rx
}

/// A console line as text: no `\r`, no escape sequences (the firmware's screen codes).
fn printable(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut line = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ parameters final-letter; anything else: ESC and one character.
                if chars.next_if_eq(&'[').is_some() {
                    while chars.next().is_some_and(|p| !p.is_ascii_alphabetic()) {}
                } else {
                    chars.next();
                }
            }
            '\r' | '\n' => {}
            c if c.is_control() => {}
            c => line.push(c),
        }
    }
    line
}

/// `tar -xf reports.disk -C out`: the archive the guest wrote at the start of its disk.
fn unpack(disk: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        std::fs::remove_dir_all(out).context(|| format!("rm -r {}", out.display()))?;
    }
    std::fs::create_dir_all(out).context(|| format!("mkdir -p {}", out.display()))?;
    let output = Command::new("tar")
        .arg("-xf")
        .arg(disk)
        .arg("-C")
        .arg(out)
        .output()
        .map_err(|e| Error::Missing { what: "tar".into(), hint: format!("{e}; apt-get install tar") })?;
    if !output.status.success() {
        return Err(Error::Internal(format!(
            "tar -xf {}: {}",
            disk.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// Modules loaded before the suite (`modprobe` names or aliases): veth, nf_tables with the expressions the
/// faults use (objref for named counters, reject), the TCP sock_diag handler the observers dump through, and
/// the qdiscs impairments use. (nft_compat and xt_bpf, which egress faults record their drops with, are not
/// here: the firewall asks for them as `iptables` would, and the guest loads them then.)
/// Those a kernel builds into another module (6.12 has objref inside nf_tables) are left out by the caller.
pub const PRELOAD: [&str; 8] =
    ["rtnl-link-veth", "nf_tables", "nft_objref", "nft_reject_inet", "inet_diag", "tcp_diag", "sch_netem", "sch_tbf"];

/// The guest's `/init`: mounts, the disk driver, the suite, the reports onto the disk, power off. `command`
/// is the netfault command line to run, from `/netfault`.
pub fn init_script(command: &str, preload: &[&str]) -> String {
    let preload = preload.join(" ");
    let read_load = super::load::READ_LOAD;
    format!(
        r#"#!/bin/busybox sh
# netfault matrix guest: run the suite, write everything under /out to the second disk as one tar, power off.
/bin/busybox --install -s
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo "{UP} $(cut -d' ' -f1 /proc/uptime)"
/sbin/modprobe virtio_pci
/sbin/modprobe virtio_blk
n=0
while [ ! -b /dev/vda ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
[ -b /dev/vda ] || echo "{MARKER} no reports disk (/dev/vda) after 30s"
uname -r > /out/release
# What every scenario uses, loaded before the first one starts: a module the kernel loads on first use
# (0.1-0.3 s each under emulation) would otherwise land inside the first scenarios' timings.
for module in {preload}; do /sbin/modprobe "$module" || echo "{MARKER} cannot load $module"; done
echo "{MARKER} modules $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
cat /sys/devices/system/clocksource/clocksource0/current_clocksource > /out/clocksource
{read_load}
read_load before > /out/load
cd /netfault
{command} 2>&1
echo "$?" > /out/exit-status
read_load after >> /out/load
# The guest kernel's own messages (RT throttling, stalls, oopses) beside its reports.
mkdir -p /out/reports && dmesg > /out/reports/kernel.log
[ -b /dev/vda ] && tar -cf /dev/vda -C /out . && sync && echo "{WRITTEN} $(cut -d' ' -f1 /proc/uptime)"
poweroff -f
"#
    )
}

/// The guest's `/sbin/modprobe`, which the kernel runs as `modprobe -q -- NAME` when it needs a module
/// (`request_module`): nothing for a module built into the kernel; else the module whose name or alias
/// matches NAME, after the modules it depends on.
pub const MODPROBE: &str = r#"#!/bin/sh
for name; do :; done
grep -qx "$name" /modules/builtin && exit 0
load() {
  [ -d "/sys/module/$1" ] && return 0
  for dependency in $(grep "^$1 " /modules/depends | cut -d' ' -f2-); do load "$dependency" || return 1; done
  insmod "/modules/$1.ko" 2>/dev/null || [ -d "/sys/module/$1" ]
}
while read -r pattern module; do
  case "$name" in $pattern) load "$module"; exit $? ;; esac
done < /modules/aliases
exit 1
"#;

/// Writes `text` to `path` (the console log beside a kernel's reports).
pub fn save(path: &Path, text: &str) -> Result<()> {
    let mut file = File::create(path).context(|| format!("create {}", path.display()))?;
    file.write_all(text.as_bytes()).context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_lose_carriage_returns_and_screen_codes() {
        assert_eq!(printable(b"\x1bc\x1b[?7l\x1b[2Jnetfault-guest: up 6.18\r\n"), "netfault-guest: up 6.18");
        assert_eq!(printable(b"PASS  keepalive/idle   14.3s\r\n"), "PASS  keepalive/idle   14.3s");
    }

    #[test]
    fn the_init_script_runs_the_command_and_writes_the_disk_after_it() {
        let script = init_script("./netfault __matrix-guest --out /out scenarios", &["veth"]);
        let run = script.find("./netfault __matrix-guest").unwrap();
        let tar = script.find("tar -cf /dev/vda -C /out .").unwrap();
        assert!(script.starts_with("#!/bin/busybox sh\n"));
        assert!(script.find(UP).unwrap() < run && run < tar && tar < script.find("poweroff -f").unwrap());
    }
}
