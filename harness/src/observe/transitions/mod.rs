//! Every TCP state transition in the run's namespaces, from the kernel's own event: a BPF program at the
//! `sock:inet_sock_set_state` tracepoint (what `bpftrace -e 'tracepoint:sock:inet_sock_set_state'` would
//! print), filtered by network namespace, stamped by the kernel at the transition, read from a ring buffer by a
//! thread that turns each into an `EventKind::Transition`. Sampling (`observe::sockets`) misses states that last
//! microseconds and stamps what it sees when it asks; this sees each change when the kernel makes it.
//!
//! Needs root (CAP_BPF and CAP_PERFMON in the initial user namespace), Linux >= 5.8 and the kernel's BTF.
//! Where any of that is missing (rootless mode) [`Tracer::start`] says why, and the run's socket states are
//! sampled instead.
//!
//! A connecting socket enters SYN-SENT before it has a local port, and a listener's new connection enters
//! SYN-RECV before it has its peer's address: such a transition is held back until a later one of the same
//! socket names its four-tuple, and is then recorded with its own time; one still unnamed when the run stops is
//! recorded with port 0.

pub(crate) mod bpf;
mod btf;
pub(crate) mod program;

use crate::run::handoff;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use bpf::{Map, Program, RingReader};
use program::{namespace_entry, record, Instance, Maps, SharedMaps, SkbLayout, SockLayout};

use crate::error::{Context, Error, Result};
use crate::observe::decode::Decoder;
use crate::record::TracerStats;
use crate::run::clock::{monotonic_ns, EventSink};
use crate::run::netns::Netns;
use crate::scenario::plan::{Action, HostId, Plan, TcpState};
use crate::timeline::{DroppedBy, EventKind, TransitionEvent};

#[cfg(any(test, feature = "bench"))]
pub use bpf::run_time_stats;

/// The environment variables a runner passes the running kernel's [`SockLayout`] and [`SkbLayout`] in to the
/// scenario processes it starts, so that each does not read the kernel's 5 MB of type information again.
pub const LAYOUT_ENV: &str = "NETFAULT_SOCK_LAYOUT";
/// See [`LAYOUT_ENV`].
pub const SKB_LAYOUT_ENV: &str = "NETFAULT_SKB_LAYOUT";

/// The running kernel's layouts, or why each cannot be had (the first reading's error, word for word: it says
/// what is missing).
struct Layouts {
    sock: std::result::Result<SockLayout, String>,
    skb: std::result::Result<SkbLayout, String>,
}

/// From [`LAYOUT_ENV`] and [`SKB_LAYOUT_ENV`] when the runner passed them, else from the [`LayoutCache`] of this
/// boot, else from one reading of the kernel's type information (which then fills the cache); once per process.
fn running_layouts() -> &'static Layouts {
    static LAYOUTS: OnceLock<Layouts> = OnceLock::new();
    LAYOUTS.get_or_init(|| {
        let passed = |name: &str| std::env::var(name).ok();
        let sock = passed(LAYOUT_ENV).and_then(|text| SockLayout::parse(&text));
        let skb = passed(SKB_LAYOUT_ENV).and_then(|text| SkbLayout::parse(&text));
        if let (Some(sock), Some(skb)) = (sock, skb) {
            return Layouts { sock: Ok(sock), skb: Ok(skb) };
        }
        let cache = LayoutCache::of_running_kernel();
        if let Some((cached_sock, cached_skb)) = cache.as_ref().and_then(LayoutCache::read) {
            return Layouts { sock: Ok(sock.unwrap_or(cached_sock)), skb: Ok(skb.unwrap_or(cached_skb)) };
        }
        match btf::Btf::of_running_kernel() {
            Ok(btf) => {
                let layouts = Layouts {
                    sock: sock.map_or_else(|| SockLayout::of(&btf).map_err(|e| e.to_string()), Ok),
                    skb: skb.map_or_else(|| SkbLayout::of(&btf).map_err(|e| e.to_string()), Ok),
                };
                if let (Some(cache), Ok(sock), Ok(skb)) = (&cache, &layouts.sock, &layouts.skb) {
                    // Best effort: without a writable cache the next process reads the BTF again.
                    let _ = cache.write(sock, skb);
                }
                layouts
            }
            Err(e) => Layouts { sock: sock.ok_or_else(|| e.to_string()), skb: skb.ok_or_else(|| e.to_string()) },
        }
    })
}

/// The running kernel's layouts kept in a file between processes, so that only the first run after a boot reads
/// the kernel's 5 MB of type information (7 ms of every `netfault run` otherwise). The file names the boot it
/// was written in (`/proc/sys/kernel/random/boot_id`) and the size of the kernel's BTF: the layouts of a kernel
/// cannot change while it runs, and another kernel, or the same one booted again, is another boot. The file is
/// `$XDG_CACHE_HOME/netfault/kernel-layouts` (else `~/.cache/netfault/`), as cargo keeps its caches per user.
struct LayoutCache {
    path: PathBuf,
    /// `boot <boot_id> btf <bytes>`: the first line of a file that holds this kernel's layouts.
    key: String,
}

impl LayoutCache {
    fn of_running_kernel() -> Option<LayoutCache> {
        let dir =
            std::env::var_os("XDG_CACHE_HOME").filter(|dir| !dir.is_empty()).map(PathBuf::from).or_else(|| {
                std::env::var_os("HOME").filter(|dir| !dir.is_empty()).map(|home| Path::new(&home).join(".cache"))
            })?;
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let btf_bytes = std::fs::metadata(btf::VMLINUX).ok()?.len();
        Some(LayoutCache {
            path: dir.join("netfault").join("kernel-layouts"),
            key: layout_cache_key(boot.trim(), btf_bytes),
        })
    }

    /// The layouts the file holds for this kernel; `None` if it holds none, another kernel's, or anything else.
    fn read(&self) -> Option<(SockLayout, SkbLayout)> {
        parse_layout_cache(&std::fs::read_to_string(&self.path).ok()?, &self.key)
    }

    /// Replaces the file whole (written aside, then renamed), so a reader never sees half of it.
    fn write(&self, sock: &SockLayout, skb: &SkbLayout) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let aside = dir.join(format!(".kernel-layouts.{}", std::process::id()));
        std::fs::write(&aside, format!("{}\n{sock}\n{skb}\n", self.key))?;
        std::fs::rename(&aside, &self.path).inspect_err(|_| {
            let _ = std::fs::remove_file(&aside);
        })
    }
}

fn layout_cache_key(boot_id: &str, btf_bytes: u64) -> String {
    format!("boot {boot_id} btf {btf_bytes}")
}

/// The layouts of a [`LayoutCache`] file's text if its first line is `key` and both layouts read back whole.
fn parse_layout_cache(text: &str, key: &str) -> Option<(SockLayout, SkbLayout)> {
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    let (sock, skb) = (SockLayout::parse(lines.next()?)?, SkbLayout::parse(lines.next()?)?);
    lines.next().is_none().then_some((sock, skb))
}

fn running_kernel_layout() -> Result<SockLayout> {
    running_layouts().sock.clone().map_err(Error::Internal)
}

fn running_skb_layout() -> Result<SkbLayout> {
    running_layouts().skb.clone().map_err(Error::Internal)
}

/// The running kernel's layouts as [`LAYOUT_ENV`] and [`SKB_LAYOUT_ENV`] carry them to the scenario processes:
/// those the kernel's type information has (the scenario processes say themselves why one is missing).
pub fn layouts_for_children() -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    if let Ok(layout) = running_kernel_layout() {
        env.push((LAYOUT_ENV, layout.to_string()));
    }
    if let Ok(layout) = running_skb_layout() {
        env.push((SKB_LAYOUT_ENV, layout.to_string()));
    }
    env
}

/// Ring buffer size: 9,300 records waiting, two for each transition (a run makes about ten transitions per
/// connection); kernel memory held by every scenario running.
const RING_BYTES: u32 = 512 << 10;
/// The longest the reader sleeps between looks at the ring (records and `stop` wake it at once).
const READ_TICK: Duration = Duration::from_millis(100);
/// After reading records, how long the reader lets more gather before it waits to be woken again.
const READ_GAP: Duration = Duration::from_millis(1);
/// How long `stop` waits for the reader's last pass.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// The kernel's `TCP_CLOSE` and `TCP_LISTEN`.
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;
/// Every BPF program the kernel accepts with `bpf_probe_read_kernel` must say it is GPL-compatible.
const LICENSE: &std::ffi::CStr = c"Dual MIT/GPL";

/// Why the kernel refused the tracer `what`: no permission (rootless mode) or no support.
fn refused(what: &str, e: std::io::Error) -> Error {
    if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
        Error::Missing {
            what: format!("permission to load BPF programs ({what}: {e})"),
            hint: "run as root (CAP_BPF and CAP_PERFMON in the initial user namespace); rootless mode cannot".into(),
        }
    } else {
        Error::Missing {
            what: format!("kernel support for the transition tracer ({what}: {e})"),
            hint: "Linux >= 5.8 with BPF ring buffers and raw tracepoints".into(),
        }
    }
}

/// How many namespaces the shared maps hold at once: three per scenario (two hosts and a router), for more
/// scenarios than a process runs at once (the CPU gate admits a few per CPU; `bench suite --concurrent 500`
/// runs each in a process of its own).
const NAMESPACES_MAX: u32 = 8192;

/// How many ring slots ([`Shared`]) `netfault run`'s runner makes for the scenario processes its fork server
/// forks: a scenario beyond them (all taken) loads a program of its own ([`RingMaps::create`]). Each ring is
/// [`RING_BYTES`] of kernel memory for the runner's life, and making one took about 0.1 ms (`bench setup`'s
/// load row), paid once per run while the scenarios load.
pub const RUNNER_SLOTS: usize = 8;

/// How many ring slots any other process's [`shared`] program has: an executed scenario process
/// (`__run-one`) runs one scenario. The library's tests run many tracers at once in one process.
const PROCESS_SLOTS: usize = if cfg!(test) { 8 } else { 1 };

/// The transition program's two instances ([`Instance`]), loaded and attached once per process and shared by
/// every scenario it runs: the program holds no namespace, it looks each socket's up in a hash map
/// ([`SharedMaps::namespaces`]) where each scenario registers its hosts' namespaces, each with the scenario's
/// ring slot, and writes the record into that slot's ring buffer, one of a fixed set made with the program and
/// named in it. A scenario claims a free slot ([`RingMaps::create`]) and reads only the records its claim's
/// token marks. No map of maps: every change of one waits for an RCU grace period in the kernel
/// (`maybe_wait_bpf_programs`, 8-16 ms here), and a design that added each scenario's ring to one, then
/// waited for it at real-time priority, was reverted after a stalled CI run. Every change here is to plain
/// hash maps, which wait for nothing.
///
/// Loading (mostly the verifier) and attaching (each attachment, and later each detach, rewrites the
/// tracepoint's call sites on every CPU) were 0.8-1.5 ms of every scenario's set-up CPU, and as much again at
/// its teardown. `netfault run` loads them in the runner while it loads the scenarios, before it forks its fork
/// server: the scenario processes inherit the descriptors (`fork`), and the server holds them until it exits.
/// An executed scenario process (`__run-one`: the test drivers, `matrix`, `bench suite`) loads them itself on
/// its first use ([`shared`]).
pub struct Shared {
    namespaces: Map,
    /// Which slots are claimed: slot -> the claim's token (`BPF_NOEXIST` adds one only if free).
    slots: Map,
    /// One ring buffer per slot.
    rings: Vec<Map>,
    /// The two instances, kept for their statistics (the attachments hold the programs themselves).
    programs: Vec<Program>,
    /// The attachments: the programs run at the tracepoint while any copy of these is open.
    links: Vec<OwnedFd>,
}

impl Shared {
    /// Makes the maps and `slots` rings, loads and attaches the two instances (`bpftool prog load` + attach to
    /// `raw_tracepoint/inet_sock_set_state`). `Err` says why the kernel's transitions cannot be recorded here.
    pub fn load(slots: usize) -> Result<Shared> {
        let layout = running_kernel_layout()?;
        let entry = namespace_entry::LEN as u32;
        let namespaces = Map::create_with(bpf::MAP_TYPE_HASH, [4, entry, NAMESPACES_MAX], bpf::NO_PREALLOC)
            .map_err(|e| refused("bpf(BPF_MAP_CREATE) of a hash", e))?;
        let count = slots.clamp(1, program::SLOTS_MAX);
        let claims = Map::create(bpf::MAP_TYPE_HASH, 4, 8, count as u32)
            .map_err(|e| refused("bpf(BPF_MAP_CREATE) of a hash", e))?;
        let rings = (0..count)
            .map(|_| {
                Map::create(bpf::MAP_TYPE_RINGBUF, 0, 0, RING_BYTES)
                    .map_err(|e| refused("bpf(BPF_MAP_CREATE) of a ring buffer", e))
            })
            .collect::<Result<Vec<_>>>()?;
        let maps = SharedMaps { namespaces: namespaces.fd(), rings: rings.iter().map(Map::fd).collect() };
        let mut programs = Vec::with_capacity(Instance::BOTH.len());
        let mut links = Vec::with_capacity(Instance::BOTH.len());
        for instance in Instance::BOTH {
            let insns = program::instructions(&layout, &maps, instance);
            let program =
                Program::load(bpf::PROG_TYPE_RAW_TRACEPOINT, "netfault_tcp", &insns, LICENSE).map_err(|refusal| {
                    let log: String = refusal.log.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
                    refused(&format!("the transition tracer's BPF program (verifier: {log})"), refusal.error)
                })?;
            links.push(
                program
                    .attach_raw_tracepoint(c"inet_sock_set_state")
                    .map_err(|e| refused("attach to the tracepoint sock:inet_sock_set_state", e))?,
            );
            programs.push(program);
        }
        Ok(Shared { namespaces, slots: claims, rings, programs, links })
    }

    /// Claims a free slot for `token` (`bpftool map update ... noexist`): its number, `None` when all are taken.
    fn claim(&self, token: u64) -> Result<Option<u32>> {
        for slot in 0..self.rings.len() as u32 {
            match self.slots.update_with(&slot.to_ne_bytes(), &token.to_ne_bytes(), bpf::NOEXIST) {
                Ok(()) => return Ok(Some(slot)),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => return Err(refused("bpf(BPF_MAP_UPDATE_ELEM) of a ring slot", e)),
            }
        }
        Ok(None)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // A scenario's own program (all slots were taken): detached on a thread of its own, newest first, as
        // the drop program is (see `Attachments`); the process's shared one lives as long as the process.
        let attachments = Attachments { links: std::mem::take(&mut self.links) };
        let _ = thread::Builder::new().name("tracer-detach".into()).spawn(move || drop(attachments));
    }
}

/// This process's [`Shared`] tracer, or why it has none: loaded by the first caller.
static SHARED: OnceLock<std::result::Result<Arc<Shared>, String>> = OnceLock::new();

/// This process's [`Shared`] tracer, loaded now with [`PROCESS_SLOTS`] slots if no one did before (a runner
/// loads it with [`RUNNER_SLOTS`] before its fork server forks: its scenario processes then find it loaded).
/// `Err` says why there is none.
pub fn shared() -> Result<Arc<Shared>> {
    load_shared(PROCESS_SLOTS)
}

/// [`shared`], made with `slots` ring slots if no one loaded it before.
pub fn load_shared(slots: usize) -> Result<Arc<Shared>> {
    SHARED.get_or_init(|| Shared::load(slots).map(Arc::new).map_err(|e| e.to_string())).clone().map_err(Error::Internal)
}

/// Which scenario process of its fork server this one is (0 for any other process): its claims and
/// namespaces' entries say so, and the server removes those a process killed before its teardown left
/// ([`forget_owner`]).
static OWNER: AtomicU32 = AtomicU32::new(0);

/// Called in a process the fork server forked, with the number the server knows it by.
pub fn set_owner(owner: u32) {
    OWNER.store(owner, Ordering::Relaxed);
}

/// The token of a new claim: its owner ([`OWNER`]) in the high half, this process's count of claims in the
/// low half, so that no two claims of the processes sharing a [`Shared`] have the same.
fn next_token() -> u64 {
    static CLAIMS: AtomicU32 = AtomicU32::new(0);
    let count = CLAIMS.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    (u64::from(OWNER.load(Ordering::Relaxed)) << 32) | u64::from(count)
}

/// Removes from the shared maps what the scenario process `owner` registered and did not remove (it was
/// killed): its slots, which would otherwise stay taken until the server exits, and its namespaces, a later one
/// of which given the same inode number would be traced into its slot. Plain hash map deletes: nothing waits.
/// (A scenario that registers a namespace with that number between this look and the removal loses its entry:
/// the kernel frees a dead namespace's number only after its last process has been reaped, in a work queue.)
pub fn forget_owner(owner: u32) {
    let Some(Ok(shared)) = SHARED.get() else { return };
    if let Ok(keys) = shared.namespaces.keys_u32(NAMESPACES_MAX as usize) {
        for inode in keys {
            let mut entry = [0u8; namespace_entry::LEN];
            if shared.namespaces.lookup(&inode.to_ne_bytes(), &mut entry).is_ok()
                && entry[namespace_entry::OWNER..namespace_entry::OWNER + 4] == owner.to_ne_bytes()
            {
                let _ = shared.namespaces.delete(&inode.to_ne_bytes());
            }
        }
    }
    if let Ok(slots) = shared.slots.keys_u32(shared.rings.len()) {
        for slot in slots {
            let mut token = [0u8; 8];
            if shared.slots.lookup(&slot.to_ne_bytes(), &mut token).is_ok()
                && u64::from_ne_bytes(token) >> 32 == u64::from(owner)
            {
                let _ = shared.slots.delete(&slot.to_ne_bytes());
            }
        }
    }
}

/// A scenario's slot in a [`Shared`] program: released (the slot's entry deleted) when the last of its
/// scenario's [`RingMaps`] and [`Registration`] goes.
struct Claim {
    shared: Arc<Shared>,
    slot: u32,
    token: u64,
}

impl Claim {
    /// Claims a slot of the process's [`shared`] program; when all are taken, of a program of the scenario's
    /// own (loaded and attached now, as every scenario did before, detached when the scenario is done). The
    /// ring's records of earlier claims are skipped: they are not this scenario's.
    fn new() -> Result<Claim> {
        let token = next_token();
        if let Some(claim) = Claim::in_shared(shared()?, token)? {
            return Ok(claim);
        }
        let own = Arc::new(Shared::load(1)?);
        Claim::in_shared(own, token)?.ok_or_else(|| Error::Internal("a new ring slot was taken".into()))
    }

    /// A free slot of `shared` claimed for `token`, its ring's earlier records skipped; `None` if all are taken.
    fn in_shared(shared: Arc<Shared>, token: u64) -> Result<Option<Claim>> {
        let Some(slot) = shared.claim(token)? else { return Ok(None) };
        let claim = Claim { shared, slot, token };
        let ring = claim.ring()?;
        RingReader::new(ring, RING_BYTES as usize).map_err(|e| refused("map the BPF ring buffer", e))?.skip_all();
        Ok(Some(claim))
    }

    /// The slot's ring buffer, under a new descriptor.
    fn ring(&self) -> Result<Map> {
        let ring = self.shared.rings.get(self.slot as usize);
        let ring = ring.ok_or_else(|| Error::Internal(format!("no ring slot {}", self.slot)))?;
        ring.try_clone().context(|| "dup a BPF map's descriptor".to_string())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Only its own claim: after a kill the fork server may have released the slot to another scenario.
        let mut token = [0u8; 8];
        let key = self.slot.to_ne_bytes();
        if self.shared.slots.lookup(&key, &mut token).is_ok() && u64::from_ne_bytes(token) == self.token {
            let _ = self.shared.slots.delete(&key);
        }
    }
}

/// A scenario's namespaces in the [`Shared`] maps, each with its host's number, the scenario's slot and token;
/// dropping it removes them (`bpftool map delete`), then the claim goes when nothing else holds it.
struct Registration {
    inodes: Vec<u32>,
    claim: Arc<Claim>,
}

impl Registration {
    /// Registers `namespaces` (inode number, host number) with `claim`'s slot and token: the program writes
    /// their transitions into the slot's ring from here on.
    fn new(claim: Arc<Claim>, namespaces: &[(u32, u32)]) -> Result<Registration> {
        let mut registration = Registration { inodes: Vec::with_capacity(namespaces.len()), claim };
        let owner = OWNER.load(Ordering::Relaxed);
        for &(inode, host) in namespaces {
            let entry = namespace_entry_of(host, owner, registration.claim.slot, registration.claim.token);
            registration
                .claim
                .shared
                .namespaces
                .update(&inode.to_ne_bytes(), &entry)
                .map_err(|e| refused("bpf(BPF_MAP_UPDATE_ELEM) of a namespace", e))?;
            registration.inodes.push(inode);
        }
        Ok(registration)
    }

    fn shared(&self) -> &Shared {
        &self.claim.shared
    }

    /// The records of its namespaces the ring had no room for.
    fn lost(&self) -> Result<u64> {
        let mut total = 0;
        for inode in &self.inodes {
            let mut entry = [0u8; namespace_entry::LEN];
            self.shared()
                .namespaces
                .lookup(&inode.to_ne_bytes(), &mut entry)
                .map_err(|e| Error::sys("read a namespace's lost count (bpftool map lookup)", e))?;
            let lost = &entry[namespace_entry::LOST..namespace_entry::LOST + 8];
            total += u64::from_ne_bytes(lost.try_into().unwrap_or_default());
        }
        Ok(total)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        for inode in &self.inodes {
            let _ = self.shared().namespaces.delete(&inode.to_ne_bytes());
        }
    }
}

/// A [`SharedMaps::namespaces`] value as [`Registration::new`] writes it.
fn namespace_entry_of(host: u32, owner: u32, slot: u32, token: u64) -> [u8; namespace_entry::LEN] {
    let mut entry = [0u8; namespace_entry::LEN];
    entry[namespace_entry::HOST..namespace_entry::HOST + 4].copy_from_slice(&host.to_ne_bytes());
    entry[namespace_entry::OWNER..namespace_entry::OWNER + 4].copy_from_slice(&owner.to_ne_bytes());
    entry[namespace_entry::SLOT..namespace_entry::SLOT + 4].copy_from_slice(&slot.to_ne_bytes());
    entry[namespace_entry::TOKEN..namespace_entry::TOKEN + 8].copy_from_slice(&token.to_ne_bytes());
    entry
}

/// The tracer's ring buffer (a slot's, claimed: [`Claim`]) and its lost count (`bpftool map create ... type
/// array`), had before the run's hosts are set up: the `tc` programs of `qdisc-drop` faults, loaded during the
/// set-up, write their drops into the same ring ([`program::tc_drop_marked_instructions`]), which
/// [`Tracer::start`] then reads.
pub struct RingMaps {
    ring: Map,
    lost: Map,
    claim: Arc<Claim>,
}

impl RingMaps {
    /// The maps of a slot the scenario claims ([`Claim`]): one of the process's [`shared`] program if one is
    /// free, else of a program of the scenario's own.
    pub fn create() -> Result<RingMaps> {
        RingMaps::of_claim(Claim::new()?)
    }

    fn of_claim(claim: Claim) -> Result<RingMaps> {
        Ok(RingMaps {
            ring: claim.ring()?,
            lost: Map::create(bpf::MAP_TYPE_ARRAY, 4, 8, 1)
                .map_err(|e| refused("bpf(BPF_MAP_CREATE) of an array", e))?,
            claim: Arc::new(claim),
        })
    }

    /// The same maps under new descriptors, for a host's set-up thread (the maps live while any is open, and
    /// while a program that uses them is loaded).
    pub fn try_clone(&self) -> Result<RingMaps> {
        let clone = |map: &Map| map.try_clone().context(|| "dup a BPF map's descriptor".to_string());
        Ok(RingMaps { ring: clone(&self.ring)?, lost: clone(&self.lost)?, claim: Arc::clone(&self.claim) })
    }

    /// The descriptors, as a program loaded now refers to the maps, and the token its records must carry.
    pub fn fds(&self) -> Maps {
        Maps { ring: self.ring.fd(), lost: self.lost.fd(), token: self.claim.token }
    }
}

/// Whether the tracer keeps the packets a queueing discipline drops of itself (the drop program at
/// `skb:kfree_skb`, drop reason QDISC_DROP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueDrops {
    /// A host may have a queue that drops: a program's `exec` step can add one (`tc qdisc add dev nf0 root tbf`).
    Traced,
    /// No host can have one: netfault's set-up leaves every interface without a queue (veth and `lo` are
    /// `noqueue`, see the topology's kernel tests) and adds none (a `qdisc-drop` fault's `clsact` holds no
    /// packets, and its program records its own drops), so the kernel makes no such drop. The drop program is
    /// not loaded: its two loads and two attachments (each attachment, and later each detach, rewrites the
    /// tracepoint's call sites on every CPU) were 0.6-0.8 ms of a scenario's set-up CPU.
    NoQueues,
}

impl QueueDrops {
    /// [`QueueDrops::Traced`] when any host's program has an `exec` step, else [`QueueDrops::NoQueues`].
    pub fn of(plan: &Plan) -> QueueDrops {
        let exec = plan.hosts.iter().flat_map(|host| &host.steps).any(|step| matches!(step.action, Action::Exec(_)));
        if exec {
            QueueDrops::Traced
        } else {
            QueueDrops::NoQueues
        }
    }
}

/// The transition tracer of one run. Dropping it stops the reader, removes the run's namespaces from the
/// [`Shared`] maps and detaches the drop program.
pub struct Tracer {
    /// The drop program's two attachments, when the kernel has what it needs.
    drop_links: Vec<OwnedFd>,
    /// Its two instances, kept for their recursion misses.
    drop_programs: Vec<Program>,
    /// Why packets dropped inside a host cannot be shown, if they cannot.
    drops_untraced: Option<String>,
    /// The run's namespaces in the shared maps.
    registration: Registration,
    /// The shared program's skipped runs when the run's namespaces were registered.
    skipped_before: u64,
    lost: Map,
    stop: Arc<AtomicBool>,
    /// Readable once `stop` is set: wakes the reader at once.
    wake: Arc<OwnedFd>,
    finished: handoff::Receiver<Result<TracerStats>>,
}

impl Tracer {
    /// Registers the namespaces of the run's hosts (a router's too) with the process's [`Shared`] program
    /// (loading it if nothing did before), loads and attaches the drop program if `queue_drops` says so, and
    /// starts the reader that sends their transitions, and the drops recorded in `maps`, to `sink`. `Err` says
    /// why the kernel's transitions cannot be recorded here.
    pub fn start<'a>(
        namespaces: impl IntoIterator<Item = (HostId, &'a Netns)>,
        maps: RingMaps,
        sink: EventSink,
        queue_drops: QueueDrops,
    ) -> Result<Tracer> {
        let inodes = namespaces
            .into_iter()
            .map(|(host, namespace)| Ok((namespace_inode(namespace)?, host.index() as u32)))
            .collect::<Result<Vec<_>>>()?;
        let fds = maps.fds();
        let RingMaps { ring, lost, claim } = maps;
        let token = claim.token;
        let skipped_before = recursion_misses(&claim.shared.programs)?.iter().sum();
        let registration = Registration::new(claim, &inodes)?;
        let drops = match queue_drops {
            QueueDrops::Traced => {
                running_kernel_layout().map_err(|e| e.to_string()).and_then(|layout| drop_tracer(&layout, &inodes, fds))
            }
            QueueDrops::NoQueues => Ok(Vec::new()),
        };
        let reader = RingReader::new(ring, RING_BYTES as usize).map_err(|e| refused("map the BPF ring buffer", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(bpf::wake_event().context(|| "eventfd for the transition tracer".to_string())?);
        let (finished_tx, finished) = handoff::channel();
        let (told_to_stop, woken) = (Arc::clone(&stop), Arc::clone(&wake));
        thread::Builder::new()
            .name("transitions".into())
            .spawn(move || {
                // An ordinary thread, unlike the observers: a real-time reader woken by every record preempts the
                // programs at every transition (measured: a short connection took 80 us instead of 37 us). The
                // records carry the kernel's own times, so reading them late changes nothing but when a `state`
                // trigger sees them, and the observers' samples fire those as fast as before.
                let _ = finished_tx.send(read_until_stopped(reader, token, &sink, &told_to_stop, woken.as_raw_fd()));
            })
            .context(|| "spawn the transition tracer's reader thread".to_string())?;
        let (drop_links, drop_programs, drops_untraced) = match drops {
            Ok(attached) => {
                let (links, programs) = attached.into_iter().unzip();
                (links, programs, None)
            }
            Err(reason) => (Vec::new(), Vec::new(), Some(reason)),
        };
        Ok(Tracer {
            drop_links,
            drop_programs,
            drops_untraced,
            registration,
            skipped_before,
            lost,
            stop,
            wake,
            finished,
        })
    }

    /// Reads what is left, stops the reader and detaches the program.
    pub fn stop(self) -> Result<TracerStats> {
        self.stop.store(true, Ordering::SeqCst);
        bpf::signal(&self.wake);
        let mut stats = match self.finished.recv_timeout(STOP_TIMEOUT) {
            Ok(result) => result?,
            Err(_) => return Err(Error::Internal("the transition tracer's reader did not stop".into())),
        };
        let mut lost = [0u8; 8];
        self.lost
            .lookup(&0u32.to_ne_bytes(), &mut lost)
            .map_err(|e| Error::sys("read the transition tracer's lost count (bpftool map lookup)", e))?;
        stats.lost = u64::from_ne_bytes(lost) + self.registration.lost()?;
        let skipped_now: u64 = self.skipped_runs()?.iter().sum();
        stats.skipped_runs = skipped_now.saturating_sub(self.skipped_before);
        stats.drop_skipped_runs = recursion_misses(&self.drop_programs)?.iter().sum();
        stats.drops_untraced.clone_from(&self.drops_untraced);
        Ok(stats)
    }

    /// Runs of the transition program's two instances so far and their total time, as the kernel counts them
    /// while a [`run_time_stats`] descriptor is held (the process's shared program: every scenario's runs).
    #[cfg(any(test, feature = "bench"))]
    pub fn run_stats(&self) -> Result<(u64, Duration)> {
        let mut total = (0, Duration::ZERO);
        for program in &self.registration.shared().programs {
            let (runs, time) =
                program.run_stats().map_err(|e| Error::sys("read the tracer program's run statistics", e))?;
            total = (total.0 + runs, total.1 + time);
        }
        Ok(total)
    }

    /// Runs of each instance of the (shared) transition program the kernel skipped so far, because the hit came
    /// in an interrupt of that instance's run on the same CPU (see [`Program::recursion_misses`]).
    pub fn skipped_runs(&self) -> Result<Vec<u64>> {
        recursion_misses(&self.registration.shared().programs)
    }
}

/// Each program's runs the kernel skipped so far (see [`Program::recursion_misses`]).
fn recursion_misses(programs: &[Program]) -> Result<Vec<u64>> {
    programs
        .iter()
        .map(|program| {
            program.recursion_misses().map_err(|e| Error::sys("read a tracer program's recursion misses", e))
        })
        .collect()
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        bpf::signal(&self.wake);
        if self.drop_links.is_empty() {
            return;
        }
        // Every detach rewrites the tracepoint's call sites on each CPU (0.1 ms apiece): done on a thread of its
        // own, so that a run's teardown does not wait for them.
        let attachments = Attachments { links: std::mem::take(&mut self.drop_links) };
        // Should the thread not start, the closure is dropped here, and with it the attachments, in order.
        let _ = thread::Builder::new().name("tracer-detach".into()).spawn(move || drop(attachments));
    }
}

/// The drop program's attachments, in the order they were made; dropping this detaches them.
struct Attachments {
    links: Vec<OwnedFd>,
}

impl Drop for Attachments {
    fn drop(&mut self) {
        // Closed newest first. The kernel keeps a tracepoint's programs in the order they were attached, and
        // removing the first while another stays makes the removal wait for an RCU grace period
        // (kernel/tracepoint.c, the 2->1 transition with a new first function): closing the first instance before
        // the second cost one grace period per tracepoint, 20 ms of every `Tracer::stop` (median of 100 in
        // `netfault bench setup`). Removing the last one of a tracepoint's programs waits for nothing.
        while let Some(link) = self.links.pop() {
            drop(link);
        }
    }
}

/// Loads and attaches the two instances of the drop program (`skb:kfree_skb`, Linux >= 5.17 for drop reasons),
/// writing into the transition program's maps: each attachment with its program; `Err` says why it cannot be.
fn drop_tracer(
    sock: &SockLayout,
    namespaces: &[(u32, u32)],
    maps: Maps,
) -> std::result::Result<Vec<(OwnedFd, Program)>, String> {
    let skb = running_skb_layout().map_err(|e| e.to_string())?;
    Instance::BOTH
        .into_iter()
        .map(|instance| {
            let insns = program::drop_instructions(sock, &skb, namespaces, maps, instance);
            let program =
                Program::load(bpf::PROG_TYPE_RAW_TRACEPOINT, "netfault_drop", &insns, LICENSE).map_err(|refusal| {
                    let log: String = refusal.log.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
                    format!("the drop tracer's BPF program was refused: {} (verifier: {log})", refusal.error)
                })?;
            let link = program
                .attach_raw_tracepoint(c"kfree_skb")
                .map_err(|e| format!("attach to the tracepoint skb:kfree_skb: {e}"))?;
            Ok((link, program))
        })
        .collect()
}

/// The inode number of a network namespace (`ls -iL /proc/<pid>/ns/net`), as the kernel's `net->ns.inum`.
fn namespace_inode(ns: &Netns) -> Result<u32> {
    let inode = nix::sys::stat::fstat(ns.fd()).context(|| "fstat a network namespace".to_string())?.st_ino;
    u32::try_from(inode).map_err(|_| Error::Internal(format!("namespace inode {inode} over 32 bits")))
}

/// One transition record as the program wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    instance: Instance,
    time_ns: u64,
    sock: u64,
    from: u32,
    to: u32,
    host: u32,
    local: SocketAddr,
    remote: SocketAddr,
}

/// What a ring buffer record holds.
enum Parsed<'a> {
    Transition(Record),
    /// A packet dropped inside host `host` at `time_ns`, by `by`, from its IPv4 header on. `pair` is what
    /// tells the two records of one drop the kfree_skb program's two instances write from those of other
    /// drops: the instance and the packet's `struct sk_buff` address; `None` for a record the `tc` program of
    /// a `qdisc-drop` fault wrote, the only one of its drop.
    Drop {
        pair: Option<(Instance, u64)>,
        host: u32,
        time_ns: u64,
        by: DroppedBy,
        packet: &'a [u8],
    },
}

/// The record in `bytes` if it carries `token` (is the run's), else `None`.
fn parse(bytes: &[u8], token: u64) -> Option<Parsed<'_>> {
    let u32_at = |at: usize| Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    let kind = u32_at(record::KIND)?;
    let token_at = if kind == record::TRANSITION { record::TRANSITION_TOKEN } else { record::DROP_TOKEN };
    if u64_at(token_at)? != token {
        return None;
    }
    let pair = match kind {
        record::TRANSITION => return Record::parse(bytes).map(Parsed::Transition),
        record::DROP => Some((Instance::of_number(u32_at(record::DROP_INSTANCE)?)?, u64_at(record::SKB)?)),
        record::TC_DROP => None,
        _ => return None,
    };
    Some(Parsed::Drop {
        pair,
        host: u32_at(record::HOST)?,
        time_ns: u64_at(record::TIME_NS)?,
        by: if u32_at(record::DROPPED_BY)? == record::BY_QDISC { DroppedBy::Qdisc } else { DroppedBy::Netfilter },
        packet: bytes.get(record::PACKET..record::PACKET + record::PACKET_BYTES)?,
    })
}

impl Record {
    fn parse(bytes: &[u8]) -> Option<Record> {
        let u64_at = |at: usize| Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
        let u32_at = |at: usize| Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        let ipv6 = u32_at(record::FAMILY)? == program::AF_INET6 as u32;
        let address = |v4: usize, v6: usize| -> Option<IpAddr> {
            Some(if ipv6 {
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes.get(v6..v6 + 16)?).ok()?))
            } else {
                IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes.get(v4..v4 + 4)?).ok()?))
            })
        };
        let remote_port = u16::from_be_bytes(bytes.get(record::REMOTE_PORT..record::REMOTE_PORT + 2)?.try_into().ok()?);
        let local_port = u16::from_ne_bytes(bytes.get(record::LOCAL_PORT..record::LOCAL_PORT + 2)?.try_into().ok()?);
        Some(Record {
            instance: Instance::of_number(u32_at(record::TRANSITION_INSTANCE)?)?,
            time_ns: u64_at(record::TIME_NS)?,
            sock: u64_at(record::SOCK)?,
            from: u32_at(record::OLD_STATE)?,
            to: u32_at(record::NEW_STATE)?,
            host: u32_at(record::HOST)?,
            local: SocketAddr::new(address(record::LOCAL_ADDRESS, record::LOCAL_ADDRESS6)?, local_port),
            remote: SocketAddr::new(address(record::REMOTE_ADDRESS, record::REMOTE_ADDRESS6)?, remote_port),
        })
    }

    fn is_listener(&self) -> bool {
        self.to == TCP_LISTEN || (self.from == TCP_LISTEN && self.to == TCP_CLOSE)
    }

    /// Whether the four-tuple is known: a listener's is its local address; any other socket's needs both ports.
    fn named(&self) -> bool {
        self.is_listener() || (self.local.port() != 0 && self.remote.port() != 0)
    }
}

/// Keeps one record of each pair the two instances of a program wrote for one hit of its tracepoint
/// ([`Instance`]). A record pairs with an earlier record of the other instance with the same key that nothing
/// paired with yet; the two can come in either order, and a hit that one instance was skipped for has one
/// record, kept. A transition's key is its socket's address and its two states, which no later hit repeats
/// before the socket has moved on (a socket makes its transitions one at a time, under its lock); a drop's is
/// its packet's `sk_buff` address and first bytes.
struct Pairs<K> {
    unpaired: HashMap<(Instance, K), u32>,
}

impl<K: Hash + Eq + Clone> Pairs<K> {
    fn new() -> Pairs<K> {
        Pairs { unpaired: HashMap::new() }
    }

    /// Whether a record of `instance` with `key` is the first of its hit's (to be kept).
    fn first_of_hit(&mut self, instance: Instance, key: K) -> bool {
        let partner = (instance.other(), key);
        if let Some(waiting) = self.unpaired.get_mut(&partner) {
            *waiting -= 1;
            if *waiting == 0 {
                self.unpaired.remove(&partner);
            }
            return false;
        }
        *self.unpaired.entry((instance, partner.1)).or_default() += 1;
        true
    }
}

/// Turns records into transition events, each named by its socket's four-tuple: a record that lacks it takes
/// the one its socket had earlier in its life (a socket entering TIME-WAIT leaves as port 0), or is held back
/// until a later record of the socket names it.
#[derive(Default)]
struct Namer {
    /// The last named record of each socket (by kernel address) in its current life.
    names: HashMap<u64, Record>,
    /// Records of a socket waiting for its four-tuple.
    waiting: HashMap<u64, Vec<Record>>,
}

impl Namer {
    /// The events `record` makes now: none while its socket's four-tuple is unknown, else its own and those
    /// held back for the socket.
    fn take(&mut self, record: Record) -> Vec<(Record, TransitionEvent)> {
        // Leaving CLOSE, or a listener's clone leaving LISTEN, starts a socket's life (a freed socket's address
        // is reused by a new one).
        if record.from == TCP_CLOSE || (record.from == TCP_LISTEN && record.to != TCP_CLOSE) {
            self.names.remove(&record.sock);
        }
        let name = if record.named() {
            self.names.insert(record.sock, record);
            record
        } else if let Some(known) = self.names.get(&record.sock) {
            *known
        } else {
            self.waiting.entry(record.sock).or_default().push(record);
            return Vec::new();
        };
        let mut ready: Vec<Record> = self.waiting.remove(&record.sock).unwrap_or_default();
        ready.push(record);
        ready.into_iter().filter_map(|held| Some((held, event(&held, &name)?))).collect()
    }

    /// What is still held back at the end of the run, named as it is (port 0 where unknown).
    fn flush(&mut self) -> Vec<(Record, TransitionEvent)> {
        let mut left: Vec<Record> = self.waiting.drain().flat_map(|(_, records)| records).collect();
        left.sort_by_key(|record| record.time_ns);
        left.iter().filter_map(|record| Some((*record, event(record, record)?))).collect()
    }
}

/// The event of `record`, named by the four-tuple of `named` (the same socket, maybe later).
fn event(record: &Record, named: &Record) -> Option<TransitionEvent> {
    let from = TcpState::from_kernel(u8::try_from(record.from).ok()?)?;
    let to = TcpState::from_kernel(u8::try_from(record.to).ok()?)?;
    if from == to {
        return None;
    }
    let socket = if named.is_listener() {
        format!("{} -> *:*", named.local)
    } else {
        format!("{} -> {}", named.local, named.remote)
    };
    Some(TransitionEvent { socket, local_port: named.local.port(), remote_port: named.remote.port(), from, to })
}

/// Sleeps `timeout`, or less if `fd` becomes readable (a stop).
fn wait_readable(fd: RawFd, timeout: Duration) {
    let mut poll = [libc::pollfd { fd, events: libc::POLLIN, revents: 0 }];
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd; an interrupted or failed poll only ends the pause early.
    unsafe { libc::poll(poll.as_mut_ptr(), 1, millis) };
}

/// The reader thread: every record to `sink` until `stop`, then a last pass.
/// Only the records that carry `token` are the run's: the ring's slot may have served another scenario before.
fn read_until_stopped(
    mut reader: RingReader,
    token: u64,
    sink: &EventSink,
    stop: &AtomicBool,
    wake: RawFd,
) -> Result<TracerStats> {
    let mut namer = Namer::default();
    let mut transition_pairs = Pairs::new();
    let mut drop_pairs = Pairs::new();
    let mut decoder = Decoder::sharing(sink.initial_seqs().clone());
    let mut latencies: Vec<u64> = Vec::new();
    let mut transitions = 0;
    let mut dropped_packets = 0;
    let mut emit = |pairs: Vec<(Record, TransitionEvent)>| {
        for (record, event) in pairs {
            let Some(host) = HostId::EVERY.into_iter().find(|host| host.index() as u32 == record.host) else {
                continue;
            };
            transitions += 1;
            sink.emit_at(sink.clock().since_t0_monotonic(record.time_ns), host, EventKind::Transition(event));
        }
    };
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let mut records = Vec::new();
        let mut drops = Vec::new();
        reader
            .read(if stopping { Duration::ZERO } else { READ_TICK }, wake, |bytes| match parse(bytes, token) {
                Some(Parsed::Transition(record))
                    if transition_pairs.first_of_hit(record.instance, (record.sock, record.from, record.to)) =>
                {
                    records.push(record);
                }
                Some(Parsed::Drop { pair: Some((instance, skb)), packet, .. })
                    if !drop_pairs.first_of_hit(instance, (skb, packet.to_vec())) => {}
                Some(Parsed::Drop { host, time_ns, by, packet, .. }) => {
                    let host = HostId::EVERY.into_iter().find(|h| h.index() as u32 == host);
                    let event = decoder.decode_ip(packet, true);
                    if let (Some(host), Some(mut event)) = (host, event) {
                        event.dropped = Some(by);
                        drops.push((host, time_ns, event));
                    }
                }
                Some(Parsed::Transition(_)) | None => {}
            })
            .map_err(|e| Error::sys("read the transition tracer's ring buffer", e))?;
        let now = monotonic_ns();
        let busy = !records.is_empty() || !drops.is_empty();
        for record in records {
            latencies.push(now.saturating_sub(record.time_ns));
            emit(namer.take(record));
        }
        for (host, time_ns, event) in drops {
            dropped_packets += 1;
            sink.emit_at(sink.clock().since_t0_monotonic(time_ns), host, EventKind::Packet(event));
        }
        if stopping {
            emit(namer.flush());
            break;
        }
        if busy {
            // Let the next records gather: the kernel wakes a waiting reader for the first record after it caught
            // up, and every such wakeup costs the CPU making the transition a few microseconds.
            wait_readable(wake, READ_GAP);
        }
    }
    latencies.sort_unstable();
    let micros = |ns: u64| ns as f64 / 1e3;
    Ok(TracerStats {
        transitions,
        dropped_packets,
        drops_untraced: None,
        lost: 0,
        skipped_runs: 0,
        drop_skipped_runs: 0,
        median_latency_us: latencies.get(latencies.len() / 2).copied().map_or(0.0, micros),
        max_latency_us: latencies.last().copied().map_or(0.0, micros),
    })
}

#[cfg(test)]
mod tests;
