//! `netfault bench transitions`: the kernel's state transitions as the tracer records them, against sock_diag
//! sampling (the observer every run also has) in the same run: how many of a short-lived state each sees, how
//! late each stamps what it sees, what the tracer's BPF program costs per run, what it adds to a connection,
//! and how long it takes to start and stop.

use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::{interrupted, millis, Comparison, Report};
use crate::error::{Context, Error, Result};
use crate::observe::sockets::Observer;
use crate::observe::transitions::{run_time_stats, QueueDrops, RingMaps, Tracer};
use crate::run::clock::{Clock, EventSink};
use crate::run::netns::Netns;
use crate::scenario::plan::{HostId, TcpState};
use crate::timeline::{Event, EventKind};

/// `netfault bench transitions --n N`.
pub struct TransitionOptions {
    /// Connections made (each one ESTABLISHED for microseconds).
    pub connections: usize,
    /// The sampling interval of the observer it is compared with.
    pub sample: Duration,
}

/// Connections per timed batch of the overhead comparison.
const BATCH: usize = 200;
/// Tracer starts and stops timed.
const STARTS: usize = 20;

/// `ip link set lo up` in `ns`.
fn loopback_up(ns: &Netns) -> Result<()> {
    ns.run(|| {
        let status = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status();
        match status {
            Ok(status) if status.success() => Ok(()),
            other => Err(Error::Internal(format!("ip link set lo up: {other:?}"))),
        }
    })
}

/// `n` connections over loopback in `ns`, each shut down by the client as soon as it is connected and then
/// closed by both: ESTABLISHED lasts microseconds on the client. Returns the time each took.
fn short_connections(ns: &Netns, port: u16, n: usize) -> Result<Vec<Duration>> {
    ns.run(|| {
        let listener = TcpListener::bind(("127.0.0.1", port)).context(|| format!("bind 127.0.0.1:{port}"))?;
        let mut took = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            let client = TcpStream::connect(("127.0.0.1", port)).context(|| "connect".to_string())?;
            client.shutdown(Shutdown::Write).context(|| "shutdown".to_string())?;
            let (mut server, _) = listener.accept().context(|| "accept".to_string())?;
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).context(|| "read".to_string())?;
            drop(server);
            drop(client);
            took.push(started.elapsed());
        }
        Ok(took)
    })
}

/// The client sockets' (remote port 9000) ESTABLISHED as each source recorded it: (transitions, samples).
fn established_seen(events: &[Event], port: u16) -> (usize, usize) {
    let client = |socket: &str| socket.ends_with(&format!("-> 127.0.0.1:{port}"));
    let traced = events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Transition(t) if t.to == TcpState::Established && client(&t.socket)))
        .count();
    let sampled = events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Socket(s) if s.state == TcpState::Established && client(&s.socket)))
        .count();
    (traced, sampled)
}

/// How late the sampler stamped the client's FIN-WAIT-2 after the kernel's transition into it, per socket
/// both saw, in milliseconds.
fn sampling_lateness(events: &[Event]) -> Vec<f64> {
    let first = |traced: bool, socket: &str| {
        events.iter().find_map(|e| match &e.kind {
            EventKind::Transition(t) if traced && t.to == TcpState::FinWait2 && t.socket == socket => Some(e.t),
            EventKind::Socket(s) if !traced && s.state == TcpState::FinWait2 && s.socket == socket => Some(e.t),
            _ => None,
        })
    };
    let sockets: std::collections::BTreeSet<&str> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Transition(t) if t.to == TcpState::FinWait2 => Some(t.socket.as_str()),
            _ => None,
        })
        .collect();
    sockets
        .into_iter()
        .filter_map(|socket| Some(millis(first(false, socket)?.checked_sub(first(true, socket)?)?)))
        .collect()
}

pub fn bench_transitions(options: &TransitionOptions) -> Result<Report> {
    let mut report = Report::new("transitions");
    let namespaces = [Netns::new_anonymous()?, Netns::new_anonymous()?];
    let elsewhere = Netns::new_anonymous()?;
    for ns in namespaces.iter().chain([&elsewhere]) {
        loopback_up(ns)?;
    }

    // Both sources on the same connections: the tracer and a sampling observer of the client's namespace.
    let clock = Clock::started();
    let (sink, received) = EventSink::new(clock);
    let stats_on = run_time_stats().context(|| "bpf(BPF_ENABLE_STATS) (sysctl kernel.bpf_stats_enabled)".into())?;
    let tracer =
        Tracer::start(HostId::ALL.into_iter().zip(&namespaces), RingMaps::create()?, sink.clone(), QueueDrops::Traced)?;
    let observer = Observer::start(&namespaces[0], HostId::Client, options.sample, sink)?;
    short_connections(&namespaces[0], 9000, options.connections)?;
    // Transitions elsewhere on the machine run the program too, and are left out by its namespace filter.
    short_connections(&elsewhere, 9001, options.connections)?;
    let (runs, run_time) = tracer.run_stats()?;
    observer.stop()?;
    let stats = tracer.stop()?;
    drop(stats_on);
    let events: Vec<Event> = received.try_iter().collect();
    let (traced, sampled) = established_seen(&events, 9000);
    let n = options.connections;
    report.note(
        "connections",
        format!("{n} in the traced namespace, {n} in another; sampling every {:?}", options.sample),
    );
    report.compare(Comparison {
        what: "client ESTABLISHED (lasting microseconds) recorded, of the connections".into(),
        netfault: format!("{traced} of {n} (tracepoint)"),
        alternative: format!("{sampled} of {n} (sock_diag every {:?})", options.sample),
        ratio: None,
        target: format!("{n} of {n}"),
        met: traced == n,
    });
    report.row("sampler's stamp of FIN-WAIT-2 minus the kernel's transition", "ms", &sampling_lateness(&events));
    report.note("transitions recorded", stats.transitions.to_string());
    report.note("transitions lost (ring buffer full)", stats.lost.to_string());
    report.note(
        "tracer latency (kernel transition to the reader holding it)",
        format!("median {:.1} us, max {:.1} us", stats.median_latency_us, stats.max_latency_us),
    );
    let per_run = if runs == 0 { 0.0 } else { run_time.as_nanos() as f64 / runs as f64 };
    report.note(
        "BPF program cost (kernel's own count, every transition on the machine)",
        format!("{runs} runs, {per_run:.0} ns per run (mean)"),
    );

    // What the tracer adds to a connection: the same batches with and without it, alternating.
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..10 {
        if interrupted() {
            break;
        }
        let traced = round % 2 == 0;
        let (sink, _received) = EventSink::new(Clock::started());
        let tracer = if traced {
            Some(Tracer::start(
                HostId::ALL.into_iter().zip(&namespaces),
                RingMaps::create()?,
                sink,
                QueueDrops::Traced,
            )?)
        } else {
            None
        };
        let took = short_connections(&namespaces[0], 9002 + round as u16, BATCH)?;
        drop(tracer);
        let per_connection: Vec<f64> = took.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        if traced {
            with.extend(per_connection)
        } else {
            without.extend(per_connection)
        }
    }
    report.row("one short connection, tracer attached", "us", &with);
    report.row("one short connection, no tracer", "us", &without);

    // Started right after the previous tracer stopped, and 50 ms after (as a scenario's is, next to others'):
    // attaching to a tracepoint whose last probe just went waits for the kernel (an RCU grace period).
    let (mut starts, mut starts_apart, mut stops) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..2 * STARTS {
        let apart = round % 2 == 1;
        if apart {
            std::thread::sleep(Duration::from_millis(50));
        }
        let (sink, _received) = EventSink::new(Clock::started());
        let started = Instant::now();
        let tracer =
            Tracer::start(HostId::ALL.into_iter().zip(&namespaces), RingMaps::create()?, sink, QueueDrops::Traced)?;
        if apart { &mut starts_apart } else { &mut starts }.push(millis(started.elapsed()));
        let stopping = Instant::now();
        tracer.stop()?;
        stops.push(millis(stopping.elapsed()));
    }
    report.row("Tracer::start right after a stop (maps, programs, attach)", "ms", &starts);
    report.row("Tracer::start 50 ms after a stop", "ms", &starts_apart);
    report.row("Tracer::stop (last read, detach)", "ms", &stops);
    report.note(
        "method",
        "the tracer (BPF at sock:inet_sock_set_state) and a sock_diag observer run on the same connections: \
         connect, shutdown(SHUT_WR) at once, accept, read to EOF, close; the observer samples on its interval \
         only (a run also samples after SYN, FIN and RST packets and step ends); program cost from \
         BPF_ENABLE_STATS; per-connection times alternate batches with and without the tracer",
    );
    Ok(report.finish())
}
