//! Actors against the real kernel: two host programs talking over `lo` of one fresh namespace.

use std::fs;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;
use crate::run::clock::Clock;
use crate::run::netns::Netns;
use crate::scenario::plan::{
    CapturePlan, ExecPlan, LinkPlan, Location, Plan, RunExpectations, ShutdownHow, StepExpectation, Tolerance,
};
use crate::timeline::Event;

const PORT: u16 = 9000;
/// Nothing listens there.
const CLOSED_PORT: u16 = 9999;

fn step(action: Action) -> StepPlan {
    StepPlan {
        index: 0,
        name: None,
        socket: None,
        action,
        expect: StepExpectation::default(),
        location: Location::default(),
    }
}

fn named(name: &str, action: Action) -> StepPlan {
    StepPlan { name: Some(name.into()), ..step(action) }
}

fn on_socket(socket: &str, action: Action) -> StepPlan {
    StepPlan { socket: Some(socket.into()), ..step(action) }
}

fn program(id: HostId, steps: Vec<StepPlan>) -> HostPlan {
    let steps = steps.into_iter().enumerate().map(|(index, s)| StepPlan { index, ..s }).collect();
    HostPlan { id, address: Ipv4Addr::LOCALHOST, prefix_len: 8, address6: None, gateway: None, sysctls: vec![], steps }
}

/// The plan of the two programs, with each `wait` pointed at its target's index and each `connect` at the
/// peer's start-up listen, as validation does.
fn plan(client: Vec<StepPlan>, server: Vec<StepPlan>, deadline: Duration) -> Plan {
    let mut hosts = [program(HostId::Client, client), program(HostId::Server, server)];
    let names: Vec<Vec<Option<String>>> =
        hosts.iter().map(|host| host.steps.iter().map(|step| step.name.clone()).collect()).collect();
    for step in hosts.iter_mut().flat_map(|host| host.steps.iter_mut()) {
        if let Action::Wait { step: target, .. } = &mut step.action {
            let names = &names[target.host.index()];
            target.index = names.iter().position(|name| name.as_deref() == Some(&target.name)).expect("wait target");
        }
    }
    let [client, server] = hosts;
    let mut steps = [client.steps, server.steps];
    crate::scenario::validate::link_connects_to_listens(&mut steps, None);
    let [client, server] = steps;
    let hosts = vec![program(HostId::Client, client), program(HostId::Server, server)];
    Plan {
        name: "actors-test".into(),
        file: "actors-test.yaml".into(),
        description: String::new(),
        source: None,
        slow: false,
        deadline,
        tolerance: Tolerance::either_side(Duration::from_millis(100)),
        sample_interval: Duration::from_millis(100),
        link: LinkPlan { mtu: 1500, ipv6: false },
        capture: CapturePlan::default(),
        hosts,
        links: vec![],
        router: None,
        faults: vec![],
        expect: RunExpectations::default(),
        requires: Default::default(),
        conditional: Vec::new(),
        not_applicable: Vec::new(),
    }
}

/// Named `listening`, so that clients can `wait` for it before they connect.
fn listen() -> StepPlan {
    named("listening", Action::Listen { port: Some(PORT), backlog: 4, family: Family::Ipv4 })
}

fn wait_listening() -> StepPlan {
    step(wait(HostId::Server, "listening"))
}

fn accept() -> Action {
    Action::Accept { name: None, nonblocking: false }
}

fn connect() -> Action {
    Action::Connect {
        to: Some(HostId::Server),
        address: Ipv4Addr::LOCALHOST.into(),
        port: PORT,
        nonblocking: false,
        after_listen: None,
    }
}

fn send(bytes: usize) -> Action {
    Action::Send { bytes, repeat: SendRepeat::Times(1), every: None, until: None, flags: Vec::new() }
}

fn recv(max: usize) -> Action {
    Action::Recv { max, until_eof: false, nonblocking: false, flags: Vec::new() }
}

/// Waits for `host`'s step `name` to finish; [`plan`] resolves the name.
fn wait(host: HostId, name: &str) -> Action {
    wait_for(host, name, StepEdge::Finished)
}

fn wait_for(host: HostId, name: &str, edge: StepEdge) -> Action {
    Action::Wait { step: StepRef { host, index: usize::MAX, name: name.into() }, edge }
}

fn sleep(millis: u64) -> Action {
    Action::Sleep { duration: Duration::from_millis(millis) }
}

fn exec(program: &str, args: &[&str]) -> ExecPlan {
    ExecPlan {
        program: program.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![],
        stdin: None,
        timeout: Duration::from_secs(10),
        background: false,
        stdout: vec![],
        stderr: vec![],
        trace: false,
    }
}

/// `ip link set lo up`, with SIOCSIFFLAGS on the calling thread's namespace.
fn lo_up() -> Result<()> {
    let socket = sockets::tcp_socket(Family::Ipv4, false).map_err(|e| Error::sys("socket for SIOCSIFFLAGS", e))?;
    // SAFETY: ifreq is plain old data; all zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `request` is a valid ifreq naming `lo`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } != 0 {
        return Err(Error::last_os("ioctl SIOCGIFFLAGS lo"));
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } != 0 {
        return Err(Error::last_os("ioctl SIOCSIFFLAGS lo up (ip link set lo up)"));
    }
    Ok(())
}

struct Run {
    events: Vec<Event>,
    processes: Arc<ProcessRegistry>,
    netns: Netns,
    /// Where traced exec steps wrote their strace logs; removed with the run.
    report_dir: PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.report_dir);
    }
}

/// A fresh folder for one run's files.
fn report_dir() -> PathBuf {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("netfault-actors-{}-{n}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A step's end as the timeline has it.
#[derive(Debug, Clone)]
struct End {
    t: Duration,
    step: usize,
    outcome: Outcome,
    detail: Option<String>,
    unmatched: Vec<String>,
}

impl Run {
    fn ends(&self, host: HostId) -> Vec<End> {
        self.events
            .iter()
            .filter(|e| e.host == host)
            .filter_map(|e| match &e.kind {
                EventKind::StepEnd { step, outcome, detail, unmatched, .. } => Some(End {
                    t: e.t,
                    step: *step,
                    outcome: outcome.clone(),
                    detail: detail.clone(),
                    unmatched: unmatched.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    fn outcomes(&self, host: HostId) -> Vec<Outcome> {
        self.ends(host).into_iter().map(|e| e.outcome).collect()
    }

    fn start_time(&self, host: HostId, index: usize) -> Duration {
        self.events
            .iter()
            .find(|e| e.host == host && matches!(e.kind, EventKind::StepStart { step, .. } if step == index))
            .map(|e| e.t)
            .unwrap()
    }
}

/// Runs both programs in one new namespace with `lo` up, both hosts on 127.0.0.1, and collects the events.
fn run(client: Vec<StepPlan>, server: Vec<StepPlan>, deadline: Duration) -> Run {
    run_with_server_late(client, server, deadline, Duration::ZERO)
}

/// As `run`, with the server's program started `server_late` after the client's.
fn run_with_server_late(
    client: Vec<StepPlan>,
    server: Vec<StepPlan>,
    deadline: Duration,
    server_late: Duration,
) -> Run {
    let netns = Netns::new_anonymous().expect("new namespace: these tests must run as root");
    netns.run(lo_up).unwrap();
    let report_dir = report_dir();
    let board = StepBoard::new();
    let processes = ProcessRegistry::new();
    let (sink, events) = EventSink::new(Clock::started());
    let plan = plan(client, server, deadline);
    let deadline = Instant::now() + deadline;
    let (done_tx, done_rx) = mpsc::channel();
    let mut handles = Vec::new();
    for host in plan.hosts.clone() {
        let ctx = ActorContext {
            host: host.id,
            own_address: Ipv4Addr::LOCALHOST,
            board: Arc::clone(&board),
            processes: Arc::clone(&processes),
            sink: sink.clone(),
            switches: Arc::new(Switchboard::without_faults(sink.clock().clone())),
            deadline,
            sock_diag: [DiagSocket::open_in(&netns).ok(), DiagSocket::open_in(&netns).ok()],
            report_dir: report_dir.clone(),
            confinement: Some(Arc::new(Confinement::new(&netns, host.id.name()).unwrap())),
        };
        let done = done_tx.clone();
        let late = if host.id == HostId::Server { server_late } else { Duration::ZERO };
        let handle = netns
            .spawn(host.id.name(), move || {
                std::thread::sleep(late);
                let result = run_host(&host, ctx);
                let _ = done.send(());
                result
            })
            .unwrap();
        handles.push(handle);
    }
    drop(sink);
    for _ in 0..2 {
        done_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5))
            .expect("an actor did not finish by the deadline");
    }
    for handle in handles {
        handle.join().unwrap().unwrap();
    }
    board.close();
    let events = events.try_iter().collect();
    Run { events, processes, netns, report_dir }
}

fn error(name: &str) -> Outcome {
    Outcome::Error(name.into())
}

#[test]
fn conversation_then_peer_close_gives_eof() {
    let server = vec![listen(), step(accept()), step(recv(100)), named("closed", Action::Close)];
    let client = vec![
        wait_listening(),
        step(connect()),
        step(send(11)),
        step(wait(HostId::Server, "closed")),
        step(recv(100)),
        step(recv(100)),
    ];
    let run = run(client, server, Duration::from_secs(10));
    assert_eq!(
        run.outcomes(HostId::Client),
        vec![Outcome::Ok, Outcome::Ok, Outcome::Bytes(11), Outcome::Ok, Outcome::Eof, Outcome::Eof]
    );
    assert_eq!(run.outcomes(HostId::Server), vec![Outcome::Ok, Outcome::Ok, Outcome::Bytes(11), Outcome::Ok]);
    let server_ends = run.ends(HostId::Server);
    assert_eq!(server_ends[0].detail.as_deref(), Some("listening on 127.0.0.1:9000"));
    assert!(server_ends[1].detail.as_deref().unwrap().starts_with("from 127.0.0.1:"), "{:?}", server_ends[1]);
    let connect_detail = run.ends(HostId::Client)[1].detail.clone().unwrap();
    assert!(connect_detail.ends_with(" -> 127.0.0.1:9000"), "{connect_detail}");
    // Every step has its start and its end, labelled as the plan labels it.
    assert_eq!(run.ends(HostId::Client).iter().map(|e| e.step).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5]);
    let starts = run.events.iter().filter(|e| matches!(e.kind, EventKind::StepStart { .. })).count();
    assert_eq!(starts, 10);
    assert!(run.events.iter().any(|e| matches!(&e.kind,
        EventKind::StepStart { step: 3, label } if label == "closed (close)")));
}

#[test]
fn connect_waits_for_the_peers_setup_listen() {
    // As scenarios are written: no explicit wait, and here the server's program even starts late.
    let server = vec![
        step(Action::Socket { name: None, family: Family::Ipv4, options: vec![], nonblocking: false }),
        step(Action::Bind { port: PORT, family: Family::Ipv4 }),
        step(Action::Listen { port: None, backlog: 4, family: Family::Ipv4 }),
        step(accept()),
    ];
    let client = vec![step(connect())];
    let run = run_with_server_late(client, server, Duration::from_secs(10), Duration::from_millis(200));
    assert_eq!(run.outcomes(HostId::Client), vec![Outcome::Ok]);
    assert!(
        run.start_time(HostId::Client, 0) >= run.ends(HostId::Server)[2].t,
        "connect started before the listen ended"
    );
}

#[test]
fn connect_does_not_wait_for_a_listen_the_peer_orders_itself() {
    let server = vec![step(sleep(300)), listen()];
    let client = vec![step(connect())];
    let run = run(client, server, Duration::from_secs(10));
    assert_eq!(run.outcomes(HostId::Client), vec![error("ECONNREFUSED")]);
}

#[test]
fn sockets_left_open_are_closed_when_the_program_ends() {
    let server = vec![listen(), step(accept())];
    let client = vec![wait_listening(), step(connect()), step(recv(10))];
    let run = run(client, server, Duration::from_secs(10));
    assert_eq!(run.outcomes(HostId::Client), vec![Outcome::Ok, Outcome::Ok, Outcome::Eof]);
}

#[test]
fn send_to_a_peer_that_closed_with_unread_data_is_reset() {
    // The server closes with 11 unread bytes: the kernel sends RST instead of FIN.
    let server = vec![listen(), step(accept()), step(wait(HostId::Client, "sent")), named("closed", Action::Close)];
    let client = vec![
        wait_listening(),
        step(connect()),
        named("sent", send(11)),
        step(wait(HostId::Server, "closed")),
        step(sleep(100)),
        step(send(11)),
        step(send(11)),
        step(recv(100)),
    ];
    let run = run(client, server, Duration::from_secs(10));
    let outcomes = run.outcomes(HostId::Client);
    assert_eq!(outcomes[..5], [Outcome::Ok, Outcome::Ok, Outcome::Bytes(11), Outcome::Ok, Outcome::Ok]);
    assert_eq!(outcomes[5], error("ECONNRESET"), "RST alone: the first send after it reports ECONNRESET");
    assert_eq!(run.ends(HostId::Client)[5].detail.as_deref(), Some("0 sends ok before (0 bytes)"));
    assert_eq!(outcomes[6], error("EPIPE"), "after the reset is consumed, sends give EPIPE");
    assert_eq!(outcomes[7], Outcome::Eof, "and reads give EOF");
}

/// A socket and its nonblocking connect to a port nobody listens on (EINPROGRESS, then refused).
fn nonblocking_connect_to_closed_port() -> Vec<StepPlan> {
    vec![
        step(Action::Socket { name: Some("c".into()), family: Family::Ipv4, options: vec![], nonblocking: false }),
        step(Action::Connect {
            to: Some(HostId::Server),
            address: Ipv4Addr::LOCALHOST.into(),
            port: CLOSED_PORT,
            nonblocking: true,
            after_listen: None,
        }),
    ]
}

#[test]
fn nonblocking_connect_to_a_closed_port_is_refused_through_so_error() {
    let mut client = nonblocking_connect_to_closed_port();
    client.extend([
        step(Action::Poll { events: vec![PollEvent::Out], timeout: Duration::from_secs(3) }),
        step(Action::GetOpt { option: SockOptName::SO_ERROR }),
        step(Action::GetOpt { option: SockOptName::SO_ERROR }),
    ]);
    let run = run(client, vec![], Duration::from_secs(10));
    let outcomes = run.outcomes(HostId::Client);
    assert_eq!(outcomes[0], Outcome::Ok);
    assert_eq!(outcomes[1], error("EINPROGRESS"));
    assert_eq!(outcomes[2], Outcome::Events(vec!["POLLOUT".into(), "POLLERR".into(), "POLLHUP".into()]));
    assert_eq!(outcomes[3], error("ECONNREFUSED"));
    assert_eq!(run.ends(HostId::Client)[3].detail.as_deref(), Some("SO_ERROR 111"));
    assert_eq!(outcomes[4], Outcome::Ok, "reading SO_ERROR clears it");
    let poll_took = run.ends(HostId::Client)[2].t - run.start_time(HostId::Client, 2);
    assert!(poll_took < Duration::from_secs(1), "poll took {poll_took:?}; the RST should wake it at once");
}

#[test]
fn wait_blocks_until_the_other_hosts_step_finishes() {
    let server = vec![named("nap", sleep(300)), named("second", sleep(10))];
    let client = vec![
        step(wait_for(HostId::Server, "nap", StepEdge::Started)),
        step(wait(HostId::Server, "nap")),
        step(wait_for(HostId::Server, "second", StepEdge::Started)),
    ];
    let run = run(client, server, Duration::from_secs(10));
    assert_eq!(run.outcomes(HostId::Client), vec![Outcome::Ok; 3]);
    let client = run.ends(HostId::Client);
    let nap_end = run.ends(HostId::Server)[0].t;
    assert!(client[0].t < nap_end, "started-edge wait ended at {:?}, after the nap ({nap_end:?})", client[0].t);
    assert!(client[1].t >= nap_end, "finished-edge wait ended at {:?}, before the nap ({nap_end:?})", client[1].t);
    assert!(client[1].t - nap_end < Duration::from_millis(500));
    assert!(client[2].t >= run.start_time(HostId::Server, 1));
}

#[test]
fn wait_for_a_step_never_reached_is_unfinished_at_the_deadline() {
    let server = vec![step(sleep(5000)), named("never", sleep(10))];
    let client = vec![step(wait(HostId::Server, "never")), step(sleep(10))];
    let run = run(client, server, Duration::from_millis(400));
    let client = run.ends(HostId::Client);
    assert_eq!(client.len(), 1, "no step starts after the deadline: {client:?}");
    assert_eq!(client[0].outcome, Outcome::Unfinished);
    assert_eq!(client[0].detail.as_deref(), Some("server.never had not finished by the end of the run"));
    assert!(client[0].t >= Duration::from_millis(350) && client[0].t < Duration::from_secs(2), "{:?}", client[0].t);
    assert_eq!(run.outcomes(HostId::Server), vec![Outcome::Unfinished], "the long sleep is cut at the deadline");
}

#[test]
fn exec_reports_exit_code_output_and_pattern_failures() {
    let mut ok = exec("sh", &["-c", "echo hi; echo there; echo oops >&2; exit 3"]);
    ok.stdout = vec!["^hi$".into(), "there".into()];
    ok.stderr = vec!["oops".into()];
    let mut missing = ok.clone();
    missing.stdout = vec!["^bye$".into()];
    let mut with_input = exec("sh", &["-c", "read line; echo \"got $line $EXTRA\""]);
    with_input.stdin = Some("abc\n".into());
    with_input.env = vec![("EXTRA".into(), "xyz".into())];
    with_input.stdout = vec!["^got abc xyz$".into()];
    let client = vec![
        step(Action::Exec(ok)),
        step(Action::Exec(missing)),
        step(Action::Exec(with_input)),
        step(Action::Exec(exec("/nonexistent/program", &[]))),
    ];
    let run = run(client, vec![], Duration::from_secs(20));
    let ends = run.ends(HostId::Client);
    let exit3 = Outcome::Exit { code: Some(3), signal: None };
    assert_eq!(ends[0].outcome, exit3);
    assert_eq!(ends[0].detail.as_deref(), Some("stdout: hi | there; stderr: oops"));
    assert!(ends[0].unmatched.is_empty(), "{:?}", ends[0]);
    assert_eq!(ends[1].outcome, exit3);
    assert_eq!(ends[1].detail.as_deref(), Some("stdout: hi | there; stderr: oops"));
    assert_eq!(ends[1].unmatched, vec!["stdout /^bye$/".to_string()]);
    assert_eq!(ends[2].outcome, Outcome::Exit { code: Some(0), signal: None });
    assert_eq!(ends[2].detail.as_deref(), Some("stdout: got abc xyz"));
    assert_eq!(ends[3].outcome, error("ENOENT"));
    assert_eq!(run.processes.running(), 0);
}

#[test]
fn exec_runs_inside_the_hosts_namespace() {
    let mut show_namespace = exec("readlink", &["/proc/self/ns/net"]);
    show_namespace.stdout = vec!["^net:\\[[0-9]+\\]$".into()];
    let list_interfaces = exec("sed", &["-n", "s/^ *\\([^:]*\\):.*/\\1/p", "/proc/net/dev"]);
    let client = vec![step(Action::Exec(show_namespace)), step(Action::Exec(list_interfaces))];
    let run = run(client, vec![], Duration::from_secs(20));
    let ends = run.ends(HostId::Client);
    let inode = fs::metadata(format!("/proc/self/fd/{}", run.netns.raw_fd())).unwrap();
    let expected = format!("stdout: net:[{}]", std::os::unix::fs::MetadataExt::ino(&inode));
    assert_eq!(ends[0].outcome, Outcome::Exit { code: Some(0), signal: None });
    assert_eq!(ends[0].detail.as_deref(), Some(expected.as_str()));
    assert_eq!(ends[1].detail.as_deref(), Some("stdout: lo"), "the new namespace has only lo");
}

#[test]
fn exec_timeout_kills_the_program_and_its_group() {
    // The shell prints the pid of its own child, which is in the same process group.
    let mut slow = exec("sh", &["-c", "sleep 100 & echo $!; sleep 100"]);
    slow.timeout = Duration::from_millis(300);
    let client = vec![step(Action::Exec(slow))];
    let run = run(client, vec![], Duration::from_secs(20));
    let end = &run.ends(HostId::Client)[0];
    assert_eq!(end.outcome, Outcome::Exit { code: None, signal: Some(libc::SIGKILL) });
    let detail = end.detail.clone().unwrap();
    let grandchild = detail.strip_prefix("killed (SIGKILL) at its timeout of 300ms; stdout: ").unwrap();
    let took = end.t - run.start_time(HostId::Client, 0);
    assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(run.processes.running(), 0);
    // SIGKILLed with the group, the grandchild may still be on its way out; orphaned, it is reaped by init.
    let dead = |state: Option<char>| matches!(state, None | Some('Z'));
    let give_up = Instant::now() + Duration::from_secs(2);
    while !dead(exec::tests::process_state(grandchild)) && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(10));
    }
    let state = exec::tests::process_state(grandchild);
    assert!(dead(state), "grandchild {grandchild} survived the timeout: state {state:?}");
}

#[test]
fn exec_output_held_by_an_escaped_process_is_reported() {
    // setsid takes the sleeper out of the program's group: it is not killed with it and keeps stdout open.
    let escaping = exec("sh", &["-c", "setsid sleep 2 & sleep 0.3; echo started"]);
    let client = vec![step(Action::Exec(escaping))];
    let run = run(client, vec![], Duration::from_secs(20));
    let end = &run.ends(HostId::Client)[0];
    assert_eq!(end.outcome, Outcome::Exit { code: Some(0), signal: None });
    assert_eq!(
        end.detail.as_deref(),
        Some("output still held open by a process outside the program's group; stdout: started")
    );
    let took = end.t - run.start_time(HostId::Client, 0);
    assert!(took < Duration::from_millis(1800), "waited {took:?} for the escaped process's output");
}

#[test]
fn exec_cut_by_the_scenario_deadline_is_unfinished() {
    let client = vec![step(Action::Exec(exec("sleep", &["100"])))];
    let run = run(client, vec![], Duration::from_millis(300));
    let end = &run.ends(HostId::Client)[0];
    assert_eq!(end.outcome, Outcome::Unfinished);
    assert_eq!(end.detail.as_deref(), Some("killed (SIGKILL) at the scenario deadline"));
}

#[test]
fn background_exec_outlives_its_actor_until_kill_all() {
    let mut server = exec("sleep", &["100"]);
    server.background = true;
    let mut checked = server.clone();
    checked.stdout = vec!["x".into()];
    let client = vec![step(Action::Exec(server)), step(Action::Exec(checked))];
    let run = run(client, vec![], Duration::from_secs(20));
    let ends = run.ends(HostId::Client);
    assert_eq!(ends[0].outcome, Outcome::Ok);
    let detail = ends[0].detail.clone().unwrap();
    let pid = detail.strip_prefix("pid ").unwrap().split(',').next().unwrap().to_string();
    assert_eq!(ends[1].unmatched, vec!["stdout /x/ (output of a background program is not captured)".to_string()]);
    // The actor thread has ended: the keeper thread still holds the programs alive.
    std::thread::sleep(Duration::from_millis(100));
    let state = exec::tests::process_state(&pid);
    assert!(matches!(state, Some(c) if c != 'Z'), "background program {pid} is not running: {state:?}");
    assert_eq!(run.processes.running(), 2);
    run.processes.kill_all();
    assert_eq!(exec::tests::process_state(&pid), None, "background program {pid} still exists after kill_all");
    assert_eq!(run.processes.running(), 0);
}

#[test]
fn socket_options_are_applied_and_refusals_reported() {
    let options = vec![
        SockOpt { name: SockOptName::SO_KEEPALIVE, value: SockOptValue::Int(1) },
        SockOpt { name: SockOptName::TCP_KEEPIDLE, value: SockOptValue::Int(5) },
        SockOpt { name: SockOptName::TCP_USER_TIMEOUT, value: SockOptValue::Int(2500) },
        SockOpt { name: SockOptName::SO_LINGER, value: SockOptValue::Linger { on: true, seconds: 3 } },
    ];
    let client = vec![
        step(Action::Socket { name: Some("a".into()), family: Family::Ipv4, options, nonblocking: false }),
        step(Action::GetOpt { option: SockOptName::SO_KEEPALIVE }),
        step(Action::GetOpt { option: SockOptName::TCP_KEEPIDLE }),
        step(Action::GetOpt { option: SockOptName::TCP_USER_TIMEOUT }),
        step(Action::GetOpt { option: SockOptName::SO_LINGER }),
        step(Action::Socket {
            family: Family::Ipv4,
            name: Some("b".into()),
            options: vec![SockOpt { name: SockOptName::TCP_KEEPCNT, value: SockOptValue::Int(0) }],
            nonblocking: false,
        }),
        on_socket(
            "a",
            Action::SetOpt { options: vec![SockOpt { name: SockOptName::TCP_NODELAY, value: SockOptValue::Int(1) }] },
        ),
        on_socket("a", Action::GetOpt { option: SockOptName::TCP_NODELAY }),
        step(Action::GetOpt { option: SockOptName::TCP_NODELAY }),
    ];
    let run = run(client, vec![], Duration::from_secs(10));
    let ends = run.ends(HostId::Client);
    let details: Vec<Option<&str>> = ends.iter().map(|e| e.detail.as_deref()).collect();
    let value = |text: &str| Outcome::Value(text.into());
    assert_eq!(ends[0].outcome, Outcome::Ok);
    let read: Vec<&Outcome> = ends[1..5].iter().map(|end| &end.outcome).collect();
    assert_eq!(read, [&value("1"), &value("5"), &value("2500"), &value("{on,3}")]);
    assert_eq!(ends[5].outcome, error("EINVAL"));
    assert_eq!(details[5], Some("setsockopt TCP_KEEPCNT=0"));
    assert_eq!(ends[6].outcome, Outcome::Ok);
    assert_eq!(ends[7].outcome, value("1"), "named socket a got TCP_NODELAY");
    assert_eq!(ends[8].outcome, value("0"), "the current socket is b, untouched");
}

#[test]
fn send_until_would_block_fills_the_buffers_and_recv_until_eof_drains() {
    let small_buffer = SockOpt { name: SockOptName::SO_SNDBUF, value: SockOptValue::Int(4096) };
    let server = vec![
        step(Action::Socket { name: None, family: Family::Ipv4, options: vec![small_buffer], nonblocking: false }),
        listen(),
        step(accept()),
        named(
            "full",
            Action::Send {
                bytes: 1000,
                repeat: SendRepeat::Forever,
                every: None,
                until: Some(SendUntil::WouldBlock),
                flags: Vec::new(),
            },
        ),
        step(Action::Shutdown { how: ShutdownHow::Wr }),
        step(Action::Send {
            bytes: 5,
            repeat: SendRepeat::Times(3),
            every: None,
            until: Some(SendUntil::Error),
            flags: Vec::new(),
        }),
    ];
    let client = vec![
        step(Action::Socket {
            family: Family::Ipv4,
            name: None,
            options: vec![SockOpt { name: SockOptName::SO_RCVBUF, value: SockOptValue::Int(4096) }],
            nonblocking: false,
        }),
        wait_listening(),
        step(connect()),
        step(wait(HostId::Server, "full")),
        step(Action::Recv { max: 500, until_eof: true, nonblocking: false, flags: Vec::new() }),
    ];
    let run = run(client, server, Duration::from_secs(10));
    let server = run.ends(HostId::Server);
    let Outcome::Bytes(sent) = server[3].outcome else { panic!("send until would block: {:?}", server[3]) };
    assert!(sent > 1000 && sent < 1_000_000, "sent {sent} bytes before the buffers filled");
    assert!(server[3].detail.as_deref().unwrap().starts_with("would block after "), "{:?}", server[3]);
    assert_eq!(server[4].outcome, Outcome::Ok);
    assert_eq!(server[5].outcome, error("EPIPE"), "send after own shutdown(SHUT_WR)");
    assert_eq!(server[5].detail.as_deref(), Some("0 sends ok before (0 bytes)"));
    let client = run.ends(HostId::Client);
    assert_eq!(client[4].outcome, Outcome::Eof);
    assert_eq!(client[4].detail, Some(format!("{sent} bytes before EOF")));
}

#[test]
fn repeated_sends_are_paced_and_counted() {
    let server = vec![
        listen(),
        step(accept()),
        step(Action::Recv { max: 100, until_eof: true, nonblocking: false, flags: Vec::new() }),
    ];
    let client = vec![
        wait_listening(),
        step(connect()),
        step(Action::Send {
            bytes: 10,
            repeat: SendRepeat::Times(4),
            every: Some(Duration::from_millis(100)),
            until: None,
            flags: Vec::new(),
        }),
        step(Action::Close),
    ];
    let run = run(client, server, Duration::from_secs(10));
    let client = run.ends(HostId::Client);
    assert_eq!(client[2].outcome, Outcome::Bytes(40));
    let took = client[2].t - run.start_time(HostId::Client, 2);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1000),
        "4 sends 100 ms apart took {took:?}"
    );
    assert_eq!(run.ends(HostId::Server)[2].detail.as_deref(), Some("40 bytes before EOF"));
}

#[test]
fn calls_on_a_closed_socket_get_ebadf_and_poll_gets_pollnval() {
    let client = vec![
        step(Action::Recv { max: 10, until_eof: false, nonblocking: false, flags: Vec::new() }),
        step(Action::Socket { name: None, family: Family::Ipv4, options: vec![], nonblocking: false }),
        step(Action::Close),
        step(send(1)),
        step(Action::Close),
        step(Action::Poll { events: vec![PollEvent::In], timeout: Duration::from_secs(5) }),
        // A creating step after a close makes a new socket implicitly.
        step(Action::Bind { port: 0, family: Family::Ipv4 }),
        step(Action::Listen { port: None, backlog: 1, family: Family::Ipv4 }),
        step(Action::Poll { events: vec![PollEvent::In], timeout: Duration::from_millis(50) }),
    ];
    let run = run(client, vec![], Duration::from_secs(10));
    let ends = run.ends(HostId::Client);
    let outcomes: Vec<Outcome> = ends.iter().map(|e| e.outcome.clone()).collect();
    assert_eq!(
        outcomes,
        vec![
            error("EBADF"),
            Outcome::Ok,
            Outcome::Ok,
            error("EBADF"),
            error("EBADF"),
            Outcome::Events(vec!["POLLNVAL".into()]),
            Outcome::Ok,
            Outcome::Ok,
            Outcome::Timeout,
        ]
    );
    assert_eq!(ends[0].detail.as_deref(), Some("no socket yet"));
    assert_eq!(ends[3].detail.as_deref(), Some("0 sends ok before (0 bytes); the current socket was closed"));
}

#[test]
fn a_program_for_the_wrong_host_is_refused() {
    let (sink, _events) = EventSink::new(Clock::started());
    let ctx = ActorContext {
        host: HostId::Client,
        own_address: Ipv4Addr::LOCALHOST,
        board: StepBoard::new(),
        processes: ProcessRegistry::new(),
        switches: Arc::new(Switchboard::without_faults(sink.clock().clone())),
        sink,
        deadline: Instant::now(),
        sock_diag: [None, None],
        report_dir: PathBuf::from("/nonexistent"),
        confinement: None,
    };
    assert!(matches!(run_host(&program(HostId::Server, vec![]), ctx), Err(Error::Internal(_))));
}

#[test]
fn pure_helpers() {
    assert_eq!(send_pattern(28), b"abcdefghijklmnopqrstuvwxyzab");
    assert_eq!(poll_event_names(libc::POLLHUP | libc::POLLIN | libc::POLLNVAL), vec!["POLLIN", "POLLHUP", "POLLNVAL"]);
    assert_eq!(join_detail([None, Some("a".into()), Some("b".into())]).as_deref(), Some("a; b"));
    assert_eq!(join_detail([None]), None);
}

#[test]
fn wait_listening_returns_once_the_port_listens_and_not_before() {
    let server = vec![step(sleep(300)), listen(), step(accept())];
    let client = vec![step(Action::WaitListening { host: HostId::Server, port: PORT }), step(connect())];
    let run = run(client, server, Duration::from_secs(10));
    let ends = run.ends(HostId::Client);
    assert_eq!(run.outcomes(HostId::Client), vec![Outcome::Ok, Outcome::Ok]);
    let listened = run.ends(HostId::Server)[1].t;
    assert!(ends[0].t >= listened, "the wait ended at {:?}, before the listen at {listened:?}", ends[0].t);
    // It looks every 2 ms: it ends at the listen, not at the deadline (10 s). The bound leaves room for a thread
    // that a loaded machine wakes late (120 ms once under `cargo nextest run --profile ci`).
    assert!(
        ends[0].t - listened < Duration::from_secs(1),
        "the wait ended {:?} after the listen",
        ends[0].t - listened
    );
    assert_eq!(ends[0].detail.as_deref(), Some(format!("server listening on 127.0.0.1:{PORT}").as_str()));
}

#[test]
fn wait_listening_for_a_port_nobody_listens_on_ends_unfinished_at_the_deadline() {
    let client = vec![step(Action::WaitListening { host: HostId::Server, port: PORT + 1 })];
    let server = vec![listen()];
    let run = run(client, server, Duration::from_millis(400));
    let ends = run.ends(HostId::Client);
    assert_eq!(run.outcomes(HostId::Client), vec![Outcome::Unfinished]);
    assert!(ends[0].t >= Duration::from_millis(380), "ended at {:?}", ends[0].t);
    let detail = format!("nothing listened on port {} of server by the end of the run", PORT + 1);
    assert_eq!(ends[0].detail.as_deref(), Some(detail.as_str()));
}

#[test]
fn a_traced_program_puts_its_socket_errors_on_the_timeline_when_they_happened() {
    let refused = ExecPlan { trace: true, ..exec("nc", &["-z", "127.0.0.1", &CLOSED_PORT.to_string()]) };
    let client = vec![step(sleep(200)), step(Action::Exec(refused))];
    let run = run(client, vec![], Duration::from_secs(10));
    let ends = run.ends(HostId::Client);
    assert_eq!(ends[1].outcome, Outcome::Exit { code: Some(1), signal: None });
    let detail = ends[1].detail.clone().unwrap_or_default();
    assert!(detail.ends_with("trace client-2.strace: 2 errno event(s)"), "{detail}");
    assert!(run.report_dir.join("client-2.strace").is_file());
    let errors: Vec<(Duration, &ErrnoEvent)> = run
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Errno(errno) => Some((e.t, errno)),
            _ => None,
        })
        .collect();
    let calls: Vec<(&str, &str, u16, usize)> =
        errors.iter().map(|(_, e)| (e.call.as_str(), e.errno.as_str(), e.remote_port, e.step)).collect();
    assert_eq!(
        calls,
        [("connect", "EINPROGRESS", CLOSED_PORT, 1), ("getsockopt SO_ERROR", "ECONNREFUSED", CLOSED_PORT, 1)]
    );
    // On the timeline's clock: after the program started (the sleep before it) and before its step ended.
    let started = run.start_time(HostId::Client, 1);
    for (t, _) in &errors {
        assert!(*t >= started && *t <= ends[1].t, "errno at {t:?}, step from {started:?} to {:?}", ends[1].t);
    }
}

#[test]
fn a_nonblocking_accept_with_nothing_queued_gives_eagain_and_leaves_the_listener_blocking() {
    // Found by the issue-12 cases (packetdrill's nonblocking accept): the format could not write it.
    let server = vec![listen(), named("tried", Action::Accept { name: None, nonblocking: true }), step(accept())];
    let client = vec![step(wait(HostId::Server, "tried")), step(sleep(50)), step(connect())];
    let run = run(client, server, Duration::from_secs(10));
    let outcomes = run.outcomes(HostId::Server);
    assert_eq!(outcomes[1], error("EAGAIN"), "nothing queued yet");
    assert_eq!(outcomes[2], Outcome::Ok, "the next accept blocks until the client connects");
    let waited = run.ends(HostId::Server)[2].t - run.start_time(HostId::Server, 2);
    assert!(waited >= Duration::from_millis(50), "it blocked for the client's connect: {waited:?}");
}

#[test]
fn a_poll_for_no_events_wakes_on_errors_and_hangups_only() {
    let mut client = nonblocking_connect_to_closed_port();
    client.push(step(Action::Poll { events: vec![], timeout: Duration::from_secs(3) }));
    let run = run(client, vec![], Duration::from_secs(10));
    let outcomes = run.outcomes(HostId::Client);
    assert_eq!(outcomes[2], Outcome::Events(vec!["POLLERR".into(), "POLLHUP".into()]), "no POLLOUT: not asked");
}
