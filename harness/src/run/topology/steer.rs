//! Per-flow receive steering on both veth ends of each way through the impairment wire (`echo <all CPUs> >
//! /sys/class/net/<dev>/queues/rx-0/rps_cpus`, as a multi-queue NIC hashes a flow to one queue): every frame
//! an end receives is queued on the CPU its flow's hash picks, so a flow's frames arrive in the order they
//! were sent, as over a cable.
//!
//! Why: a veth hands each frame to the backlog of the CPU that sent it. A host that sends one flow's segments
//! from two CPUs (ACKs from the softirq of the CPU the data came in on, window updates from the CPU its
//! program reads on) has them reach the wire through two backlogs, and one backlog can wait: on Linux 6.1 for
//! `ksoftirqd`. Measured in the 6.1 TCG VM: of 528 segments impair/duplicate's server sent in order of their
//! timestamps, 2 to 35 reached the client behind a later one, the client's PAWS check dropped them
//! (`TcpExtPAWSEstab`), and once it entered SACK recovery and retransmitted 12 segments nothing had lost.

use std::fs;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::error::{Context, Error, Result};
use crate::run::netns::Netns;

/// Steers each flow arriving at the interfaces `ifnames` of `ns` to one CPU of all of them.
pub fn steer_flows(ns: &Netns, ifnames: &[String]) -> Result<()> {
    let ifnames = ifnames.to_vec();
    let mask = cpu_mask(std::thread::available_parallelism().map_or(1, usize::from));
    // A thread of its own: its sysfs mount, which shows the namespace's devices, goes with it.
    let worker = ns.spawn("steer-flows", move || {
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS)
            .context(|| "unshare(CLONE_NEWNS) to mount the namespace's sysfs".to_string())?;
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
            .context(|| "mount --make-rslave /".to_string())?;
        mount(Some("sysfs"), "/sys", Some("sysfs"), MsFlags::empty(), None::<&str>)
            .context(|| "mount -t sysfs sysfs /sys (in the namespace)".to_string())?;
        for ifname in &ifnames {
            let path = format!("/sys/class/net/{ifname}/queues/rx-0/rps_cpus");
            fs::write(&path, &mask).context(|| format!("echo {mask} > {path}"))?;
        }
        Ok(())
    })?;
    worker.join().map_err(|_| Error::Internal("the thread steering the wire's flows panicked".into()))?
}

/// The `rps_cpus` mask of the first `cpus` CPUs: hexadecimal, in comma-separated groups of 32 CPUs.
fn cpu_mask(cpus: usize) -> String {
    let cpus = cpus.max(1);
    let groups = cpus.div_ceil(32);
    (0..groups)
        .rev()
        .map(|group| {
            let in_group = (cpus - group * 32).min(32);
            let bits: u64 = (1u64 << in_group) - 1;
            if group + 1 == groups {
                format!("{bits:x}")
            } else {
                format!("{bits:08x}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_names_every_cpu_in_groups_of_32() {
        assert_eq!(cpu_mask(1), "1");
        assert_eq!(cpu_mask(2), "3");
        assert_eq!(cpu_mask(32), "ffffffff");
        assert_eq!(cpu_mask(40), "ff,ffffffff");
    }
}
