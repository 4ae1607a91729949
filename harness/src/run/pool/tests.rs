//! The pool against the real kernel (root needed; these fail, not skip, without it): a pooled pair is what a
//! set-up builds, each pair is new, the maker process hands them over and dies with its server, and a killed
//! holder of a pair leaves no namespace behind.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Instant;

use super::*;
use crate::run::topology;

const PLAIN: &str = "\
description: pool test - a listener, a connect
timeout: 10s
sysctl:
  client: { net.ipv4.tcp_syn_retries: 2 }
server:
  - listen: { port: 9000 }
  - accept
client:
  - connect: { to: server, port: 9000 }
";

/// How long a namespace may take to go once its last holder is gone (the kernel frees it in a work queue).
const VANISH_WAIT: Duration = Duration::from_secs(10);

fn plan(text: &str) -> Plan {
    crate::scenario::parse("pool/test", Path::new("pool/test.yaml"), text).unwrap()
}

/// Runs `f` on a thread of its own in a private parent namespace of its own, as the runner's are.
fn in_private_parent<T: Send + 'static>(f: impl FnOnce(&Netns) -> T + Send + 'static) -> T {
    thread::spawn(move || {
        crate::run::netns::enter_private_parent().unwrap();
        let parent = Netns::current().unwrap();
        f(&parent)
    })
    .join()
    .unwrap()
}

/// `nsenter --net=<the namespace's fd> program args...`, its output; panics unless it exits 0.
fn inside(ns: &Netns, program: &str, args: &[&str]) -> String {
    let output = Command::new("nsenter")
        .arg(format!("--net=/proc/{}/fd/{}", std::process::id(), ns.raw_fd()))
        .arg(program)
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// What a host's namespace looks like from inside: links with their details and state, addresses, neighbours,
/// routes, offloads, queueing disciplines, and every `net.` sysctl but the few the kernel draws at random.
fn looks(ns: &Netns) -> String {
    let sysctls: String = inside(ns, "sysctl", &["-a", "-r", "^net\\."])
        .lines()
        .filter(|line| !["stable_secret", "netdev_rss_key", "hash_seed", "boot_id"].iter().any(|k| line.contains(k)))
        .map(|line| format!("{line}\n"))
        .collect();
    [
        inside(ns, "ip", &["-d", "-o", "link"]),
        inside(ns, "ip", &["-o", "addr"]),
        inside(ns, "ip", &["neigh"]),
        inside(ns, "ip", &["route", "show", "table", "all"]),
        inside(ns, "ethtool", &["-k", topology::LINK_NAME]),
        inside(ns, "tc", &["qdisc"]),
        sysctls,
    ]
    .join("\n")
}

/// The namespace's inode number (`ls -iL /proc/<pid>/fd/<fd>`).
/// A pair for `plan` from `stock`, waiting up to `limit` for the one its maker is making (the fork server never
/// waits: [`Stock::take`]).
fn take_waiting(stock: &mut Stock, plan: &Plan, limit: Duration) -> Option<Hosts> {
    let until = Instant::now() + limit;
    loop {
        if let Some(hosts) = stock.take(plan) {
            return Some(hosts);
        }
        let awaited = stock.awaited()?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || !crate::run::forkserver::readable(awaited, left) {
            return None;
        }
    }
}

fn inode(ns: &Netns) -> u64 {
    nix::sys::stat::fstat(ns.fd()).unwrap().st_ino
}

/// Every network namespace a process is in or holds a descriptor of, over the whole machine.
fn held_anywhere() -> BTreeSet<u64> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        for dir in ["task", "fd"] {
            let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/{dir}")) else { continue };
            for entry in entries.flatten() {
                let path = if dir == "task" { entry.path().join("ns/net") } else { entry.path() };
                let Ok(target) = std::fs::read_link(path) else { continue };
                let target = target.to_string_lossy().into_owned();
                if let Some(number) = target.strip_prefix("net:[").and_then(|t| t.strip_suffix(']')) {
                    found.extend(number.parse::<u64>().ok());
                }
            }
        }
    }
    found
}

/// The output of `child` once it exited, at most `limit` later (killed past it).
fn wait_bounded(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let until = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!("not done within {limit:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Waits until none of `namespaces` is held by any process any more, at most [`VANISH_WAIT`].
fn assert_vanish(namespaces: &BTreeSet<u64>) {
    let until = Instant::now() + VANISH_WAIT;
    loop {
        let left: Vec<u64> = held_anywhere().intersection(namespaces).copied().collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < until, "namespaces {left:?} still held {VANISH_WAIT:?} after their holder died");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_pooled_pair_is_what_the_set_up_builds() {
    let plan = plan(PLAIN);
    let (pooled, built) = in_private_parent(move |parent| {
        let pooled = make(&template(&plan).unwrap(), parent).unwrap();
        // Today's way, from the same parent: a namespace per host, then the wire built into them.
        let built = [Netns::new_anonymous().unwrap(), Netns::new_anonymous().unwrap()];
        topology::build(&template(&plan).unwrap(), &[&built[0], &built[1]], None).unwrap();
        (pooled, built)
    });
    for (index, host) in HostId::ALL.into_iter().enumerate() {
        let pooled = &pooled.hosts[index];
        assert_eq!(pooled.link.host, host);
        let looks_pooled = looks(&pooled.namespace);
        for seen in ["nf0@if", "state UP", "mtu 1500", "numtxqueues 1", "PERMANENT", "disable_ipv6 = 1", "noqueue"] {
            assert!(looks_pooled.contains(seen), "{host}: no {seen:?} in {looks_pooled}");
        }
        assert_eq!(looks_pooled, looks(&built[index]), "{host}: pooled against built");
    }
    // The link carries traffic both ways at once, as a built one does.
    let [client, server] = &pooled.hosts;
    let listener =
        server.namespace.run(|| Ok(std::net::TcpListener::bind((server.link.address, 9000)).unwrap())).unwrap();
    let connected =
        client.namespace.run(|| Ok(std::net::TcpStream::connect((server.link.address, 9000)).unwrap())).unwrap();
    let (accepted, from) = listener.accept().unwrap();
    assert_eq!(from, connected.local_addr().unwrap());
    drop((accepted, connected));
}

#[test]
fn each_pair_is_new_and_taken_once() {
    let plan = plan(PLAIN);
    let template = template(&plan).unwrap();
    let (first, second, parent) = in_private_parent(move |parent| {
        (make(&template, parent).unwrap(), make(&template, parent).unwrap(), inode(parent))
    });
    let numbers: BTreeSet<u64> =
        first.hosts.iter().chain(&second.hosts).map(|host| inode(&host.namespace)).chain([parent]).collect();
    assert_eq!(numbers.len(), 5, "four new namespaces, none the parent: {numbers:?}");
    for host in first.hosts.iter().chain(&second.hosts) {
        assert_eq!(inside(&host.namespace, "ss", &["-tanH"]).trim(), "", "no socket in a new host");
        assert_eq!(inside(&host.namespace, "nft", &["list", "ruleset"]).trim(), "", "no rule in a new host");
    }
    hand_over(first);
    let taken = take_for(&plan).expect("the handed pair fits its plan");
    assert!(take_for(&plan).is_none(), "a pair is taken once");
    assert_eq!(taken.each_ref().map(|host| host.link.host), HostId::ALL);
    // A plan of another shape does not take it: it makes its own hosts.
    let mut other = plan.clone();
    other.link.mtu = 1400;
    hand_over(second);
    assert!(take_for(&other).is_none());
    assert!(take_for(&plan).is_none(), "a pair that did not fit is dropped, not kept for later");
}

#[test]
fn plans_of_other_shapes_make_their_own_hosts() {
    let plain = plan(PLAIN);
    assert!(Shape::of(&plain).is_some());
    let with = |text: &str| plan(&PLAIN.replace("timeout: 10s\n", &format!("timeout: 10s\n{text}\n")));
    assert!(Shape::of(&with("link: { ipv6: true }")).is_none(), "IPv6");
    assert!(Shape::of(&with("hosts: { router: {} }")).is_none(), "a router");
    let per_interface = "sysctl:\n  client: { net.ipv4.conf.default.rp_filter: 0 }";
    assert!(
        Shape::of(&plan(&PLAIN.replace("sysctl:\n  client: { net.ipv4.tcp_syn_retries: 2 }", per_interface))).is_none()
    );
    // One the scenario format refuses today, should it allow it later.
    let mut neighbour = plain.clone();
    neighbour.hosts[0].sysctls[0].name = "net.ipv4.neigh.default.mcast_solicit".into();
    assert!(Shape::of(&neighbour).is_none(), "a neighbour table default");
    let mut impaired = plain.clone();
    impaired.links[0].wire = true;
    assert!(Shape::of(&impaired).is_none(), "the impairment wire");
    let mut other_mtu = plain.clone();
    other_mtu.link.mtu = 1400;
    assert_ne!(Shape::of(&other_mtu), Shape::of(&plain), "another MTU is another shape");
}

/// A pair held only by a process's descriptors goes when that process is killed.
#[test]
fn a_killed_holder_leaves_nothing() {
    let plan = plan(PLAIN);
    let hosts = in_private_parent(move |parent| make(&template(&plan).unwrap(), parent).unwrap());
    let numbers: BTreeSet<u64> = hosts.hosts.iter().map(|host| inode(&host.namespace)).collect();
    let fds = hosts.hosts.each_ref().map(|host| host.namespace.raw_fd());
    let mut command = Command::new("sleep");
    command.arg("60").stdin(Stdio::null());
    // SAFETY: only dup2 between fork and exec, which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            for (target, fd) in [3, 4].into_iter().zip(fds) {
                if libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut holder = command.spawn().unwrap();
    drop(hosts);
    let until = Instant::now() + VANISH_WAIT;
    while !numbers.is_subset(&held_anywhere()) {
        assert!(Instant::now() < until, "the holder never held {numbers:?}");
        thread::sleep(Duration::from_millis(10));
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_vanish(&numbers);
}

/// Set in the process [`the_maker_refills_and_dies_with_its_server`] runs itself in.
const MAKER_TEST_ENV: &str = "NETFAULT_POOL_MAKER_TEST";

/// The fork server's stock: its maker process makes pairs as they are taken, each new, and the maker and what
/// it made go when the server's end of the socket goes.
///
/// The maker is forked as from the single-threaded fork server: from a process of its own (this test binary
/// again, this test alone), since `cargo test` runs other tests on other threads of this one, and a fork copies
/// none of their locks' owners.
#[test]
fn the_maker_refills_and_dies_with_its_server() {
    if std::env::var_os(MAKER_TEST_ENV).is_none() {
        let name = "run::pool::tests::the_maker_refills_and_dies_with_its_server";
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads=1", "--nocapture"])
            .env(MAKER_TEST_ENV, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = wait_bounded(child, Duration::from_secs(60));
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success() && text.contains("1 passed"), "{text}");
        return;
    }
    let plan = plan(PLAIN);
    // Forked from this thread, which stays: the maker dies with the thread that forked it (`PR_SET_PDEATHSIG`),
    // as with the fork server's only thread. Two scenarios of the pool's shape: it keeps two pairs.
    crate::run::netns::enter_private_parent().unwrap();
    let mut stock = Stock::start([&plan, &plan].into_iter(), &[]).unwrap();
    let mut numbers = BTreeSet::new();
    // Kept until every pair is compared: a freed namespace's inode number goes to the next one made.
    let mut taken = Vec::new();
    for _ in 0..DEPTH + 2 {
        let hosts = take_waiting(&mut stock, &plan, VANISH_WAIT).expect("the maker sends a pair within 10 s");
        for host in &hosts.hosts {
            assert!(numbers.insert(inode(&host.namespace)), "a pair made twice");
            assert!(inside(&host.namespace, "ip", &["-o", "link", "show", "up"]).contains(topology::LINK_NAME));
        }
        taken.push(hosts);
    }
    drop(taken);
    // Wait for the refills, then drop the server's end while they are in its stock or in flight.
    let until = Instant::now() + VANISH_WAIT;
    while stock.ready.len() < DEPTH {
        assert!(Instant::now() < until, "the maker did not refill");
        stock.receive();
        thread::sleep(Duration::from_millis(10));
    }
    let stocked: BTreeSet<u64> =
        stock.ready.iter().flat_map(|hosts| hosts.hosts.iter().map(|host| inode(&host.namespace))).collect();
    let maker = stock.maker;
    drop(stock);
    let until = Instant::now() + VANISH_WAIT;
    loop {
        match nix::sys::wait::waitpid(maker, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                assert!(Instant::now() < until, "the maker outlived its server's socket");
                thread::sleep(Duration::from_millis(10));
            }
            Ok(status) => {
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(maker, 0));
                break;
            }
            Err(e) => panic!("waitpid of the maker: {e}"),
        }
    }
    assert_vanish(&stocked);
}
