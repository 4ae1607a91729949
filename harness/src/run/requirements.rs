//! What the running kernel has, measured where a probe exists (a sysctl's file, an nf_tables rule in a
//! scratch namespace) and read from `uname -r` only for version ranges; scenarios' `requires:` judged against
//! it, and a plan specialised for this kernel: a scenario whose requirement fails is not applicable, an
//! expectation whose requirement fails is left out and said so.

use std::collections::HashMap;
use std::path::Path;

use crate::scenario::plan::{ExpectationRef, NftFeature, Plan, Requirement, Requirements, VersionBound, VersionOp};

/// Facts about the running kernel, each probed once, on first use.
#[derive(Debug, Default)]
pub struct Kernel {
    release: Option<String>,
    nftables: HashMap<NftFeature, bool>,
}

impl Kernel {
    pub fn running() -> Kernel {
        Kernel::default()
    }

    /// `uname -r`.
    pub fn release(&mut self) -> &str {
        self.release.get_or_insert_with(|| {
            nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".into())
        })
    }

    /// The release's leading `MAJOR.MINOR.PATCH` (`6.1.0-57-cloud-amd64` -> 6.1.0).
    pub fn version(&mut self) -> [u32; 3] {
        version_of(self.release())
    }

    /// `test -e /proc/sys/<name with dots as slashes>`: per-namespace sysctls are registered in every network
    /// namespace, this process's included.
    pub fn has_sysctl(&self, name: &str) -> bool {
        Path::new("/proc/sys").join(name.replace('.', "/")).exists()
    }

    /// Whether nf_tables accepts the feature: a table with a rule using it, installed in a scratch network
    /// namespace and thrown away. `None` when no namespace can be made here (no privilege).
    pub fn has_nftables(&mut self, feature: NftFeature) -> Option<bool> {
        if let Some(known) = self.nftables.get(&feature) {
            return Some(*known);
        }
        let probed = probe_nftables(feature)?;
        self.nftables.insert(feature, probed);
        Some(probed)
    }

    /// Why `requires` does not hold here, or `None` when it does (or cannot be told: the run then says).
    pub fn unmet(&mut self, requires: &Requirements) -> Option<String> {
        let reasons: Vec<String> = requires.items.iter().filter_map(|item| self.unmet_item(item)).collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    fn unmet_item(&mut self, item: &Requirement) -> Option<String> {
        match item {
            Requirement::Kernel(bounds) => {
                let version = self.version();
                let failed: Vec<String> = bounds
                    .iter()
                    .filter(|bound| !within(version, bound))
                    .map(|bound| format!("{} {}", bound.op.symbol(), dotted(bound.version)))
                    .collect();
                (!failed.is_empty()).then(|| format!("needs kernel {}; this is {}", failed.join(", "), self.release()))
            }
            Requirement::Sysctl { name, present } => match (self.has_sysctl(name), present) {
                (true, true) | (false, false) => None,
                (false, true) => Some(format!("needs sysctl {name}, which kernel {} lacks", self.release())),
                (true, false) => Some(format!("needs a kernel without sysctl {name}; {} has it", self.release())),
            },
            Requirement::Nftables(feature) => match self.has_nftables(*feature) {
                Some(false) => Some(format!(
                    "needs nftables {} ({}), which kernel {} refuses",
                    feature.name(),
                    nft_feature_text(*feature),
                    self.release()
                )),
                Some(true) | None => None,
            },
        }
    }
}

fn nft_feature_text(feature: NftFeature) -> &'static str {
    match feature {
        NftFeature::InnerPayload => "payload loads from the inner header, nft @ih",
    }
}

/// The feature asked of nf_tables for real, in a scratch network namespace.
fn probe_nftables(feature: NftFeature) -> Option<bool> {
    match feature {
        NftFeature::InnerPayload => crate::run::firewall::inner_header_loads(),
    }
}

fn version_of(release: &str) -> [u32; 3] {
    let mut version = [0; 3];
    let numbers = release.split(|c: char| !c.is_ascii_digit()).take(3);
    for (slot, number) in version.iter_mut().zip(numbers) {
        *slot = number.parse().unwrap_or(0);
    }
    version
}

fn within(version: [u32; 3], bound: &VersionBound) -> bool {
    let order = version.cmp(&bound.version);
    match bound.op {
        VersionOp::Less => order.is_lt(),
        VersionOp::LessOrEqual => order.is_le(),
        VersionOp::Equal => order.is_eq(),
        VersionOp::GreaterOrEqual => order.is_ge(),
        VersionOp::Greater => order.is_gt(),
    }
}

fn dotted(version: [u32; 3]) -> String {
    match version {
        [major, minor, 0] => format!("{major}.{minor}"),
        [major, minor, patch] => format!("{major}.{minor}.{patch}"),
    }
}

/// Why the whole scenario does not apply to this kernel, if it does not.
pub fn scenario_unmet(plan: &Plan, kernel: &mut Kernel) -> Option<String> {
    kernel.unmet(&plan.requires).map(|reason| {
        let line = plan.requires.location.map(|at| format!("{}:{}: ", at.line, at.column)).unwrap_or_default();
        format!("not applicable: {line}{reason}")
    })
}

/// The plan for this kernel: expectations whose `requires:` fails are taken out, each recorded in
/// `plan.not_applicable` with its line and why.
pub fn specialize(mut plan: Plan, kernel: &mut Kernel) -> Plan {
    let mut dropped: Vec<ExpectationRef> = Vec::new();
    for conditional in &plan.conditional {
        if let Some(reason) = kernel.unmet(&conditional.requires) {
            let line = conditional.requires.location.map(|at| at.line).unwrap_or(0);
            plan.not_applicable.push(format!("line {line}: {} left out: {reason}", describe(conditional.target)));
            dropped.push(conditional.target);
        }
    }
    // Highest positions first, so that each removal leaves the positions still to remove in place.
    dropped.sort_by_key(|target| std::cmp::Reverse(position(*target)));
    for target in dropped {
        match target {
            ExpectationRef::Step { host, index } => {
                let program = plan.position(host).and_then(|position| plan.hosts.get_mut(position));
                if let Some(step) = program.and_then(|program| program.steps.iter_mut().find(|s| s.index == index)) {
                    step.expect.outcome = None;
                    step.expect.after = None;
                    step.expect.at = None;
                    step.expect.since = None;
                }
            }
            ExpectationRef::Packet(i) => drop(plan.expect.packets.remove(i)),
            ExpectationRef::State(i) => drop(plan.expect.states.remove(i)),
            ExpectationRef::Timer(i) => drop(plan.expect.timers.remove(i)),
            ExpectationRef::Queue(i) => drop(plan.expect.queues.remove(i)),
        }
    }
    plan.conditional.clear();
    plan
}

fn position(target: ExpectationRef) -> usize {
    match target {
        ExpectationRef::Step { index, .. }
        | ExpectationRef::Packet(index)
        | ExpectationRef::State(index)
        | ExpectationRef::Timer(index)
        | ExpectationRef::Queue(index) => index,
    }
}

fn describe(target: ExpectationRef) -> String {
    match target {
        ExpectationRef::Step { host, index } => format!("{host} step #{index}'s expectation"),
        ExpectationRef::Packet(i) => format!("packet expectation #{}", i + 1),
        ExpectationRef::State(i) => format!("state expectation #{}", i + 1),
        ExpectationRef::Timer(i) => format!("timer expectation #{}", i + 1),
        ExpectationRef::Queue(i) => format!("queue expectation #{}", i + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Plan {
        crate::scenario::parse("t", Path::new("t.yaml"), text).unwrap()
    }

    fn on(release: &str) -> Kernel {
        Kernel { release: Some(release.into()), nftables: HashMap::new() }
    }

    #[test]
    fn version_ranges_hold_or_say_what_the_kernel_is() {
        let requires = plan("description: d\nrequires: { kernel: \">= 6.2, < 6.15\" }\n").requires;
        assert_eq!(on("6.12.118+deb12-cloud-amd64").unmet(&requires), None);
        assert_eq!(
            on("6.1.0-57-cloud-amd64").unmet(&requires).unwrap(),
            "needs kernel >= 6.2; this is 6.1.0-57-cloud-amd64"
        );
        assert_eq!(on("6.18.44-fc").unmet(&requires).unwrap(), "needs kernel < 6.15; this is 6.18.44-fc");
        assert_eq!(version_of("6.1.0-57-cloud-amd64"), [6, 1, 0]);
        assert_eq!(version_of("6.12.118+deb12-cloud-amd64"), [6, 12, 118]);
    }

    #[test]
    fn a_sysctl_requirement_is_the_file_under_proc_sys() {
        let mut kernel = on("6.1.0");
        let present = plan("description: d\nrequires: { sysctl: { net.ipv4.tcp_syn_retries: present } }\n");
        assert_eq!(kernel.unmet(&present.requires), None);
        let absent = plan("description: d\nrequires: { sysctl: { net.ipv4.tcp_syn_retries: absent } }\n");
        assert_eq!(
            kernel.unmet(&absent.requires).unwrap(),
            "needs a kernel without sysctl net.ipv4.tcp_syn_retries; 6.1.0 has it"
        );
    }

    #[test]
    fn an_unmet_expectation_is_left_out_and_said_so_the_others_stay() {
        let text = "description: d\nexpect:\n  packets:\n    - { from: client, count: 1, requires: { kernel: \">= 6.7\" } }\n    - { from: client, count: 2, requires: { kernel: \"< 6.7\" } }\n    - { from: server, count: 3 }\n";
        let old = specialize(plan(text), &mut on("6.1.0-57-cloud-amd64"));
        assert_eq!(old.expect.packets.iter().map(|p| p.count).collect::<Vec<_>>(), vec![Some(2), Some(3)]);
        assert_eq!(
            old.not_applicable,
            vec!["line 4: packet expectation #1 left out: needs kernel >= 6.7; this is 6.1.0-57-cloud-amd64"]
        );
        let new = specialize(plan(text), &mut on("6.12.1"));
        assert_eq!(new.expect.packets.iter().map(|p| p.count).collect::<Vec<_>>(), vec![Some(1), Some(3)]);
    }

    #[test]
    fn a_step_expectation_with_an_unmet_requirement_expects_nothing() {
        let text = "description: d\nclient:\n  - connect: { to: server, port: 9 }\n    expect: { result: ETIMEDOUT, after: 7s, requires: { kernel: \">= 6.7\" } }\n";
        let plan = specialize(plan(text), &mut on("6.1.0"));
        let expect = &plan.hosts[0].steps[0].expect;
        assert!(expect.outcome.is_none() && expect.after.is_none());
        assert_eq!(plan.not_applicable.len(), 1);
    }
}
