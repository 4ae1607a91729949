//! Validation of `requires:` (of the scenario and of single expectations): kernel version ranges, sysctls
//! present or absent, nf_tables features.

use super::*;

/// What `kernel:` takes, for messages.
const KERNEL_FORMS: &str =
    "comparisons of the kernel's version joined by commas, e.g. \">= 6.7\", \"< 6.2\" or \">= 6.2, < 6.15\"";

impl Validator<'_> {
    /// `requires:` at `path`; empty when it is not given.
    pub(super) fn requirements(&self, path: &NodePath, wire: Option<&RequiresWire>) -> Checked<Requirements> {
        let Some(wire) = wire else { return Ok(Requirements::default()) };
        let mut items = Vec::new();
        if let Some(kernel) = &wire.kernel {
            items.push(Requirement::Kernel(self.kernel_range(&path.key("kernel"), kernel)?));
        }
        for (name, value) in wire.sysctl.as_ref().map(|entries| entries.0.as_slice()).unwrap_or(&[]) {
            let entry = path.key("sysctl").key(name);
            if !allowed_sysctls().any(|allowed| allowed == name) {
                return Err(self.fail_key(
                    &entry,
                    format!(
                        "unknown sysctl \"{name}\"{}a requirement names a per-namespace sysctl as in the `sysctl:` \
                         section (harness/src/scenario/sysctls.txt)",
                        suggestion(name, allowed_sysctls())
                    ),
                ));
            }
            let present = self.pick(&entry, value, &[("present", true), ("absent", false)], "sysctl requirement")?;
            items.push(Requirement::Sysctl { name: name.clone(), present });
        }
        if let Some(features) = &wire.nftables {
            for (i, feature) in features.items.iter().enumerate() {
                let at = if features.list { path.key("nftables").index(i) } else { path.key("nftables") };
                items.push(Requirement::Nftables(self.pick(&at, feature, &NftFeature::ALL, "nftables feature")?));
            }
        }
        if items.is_empty() {
            return Err(self.fail(
                path,
                "requires is empty; give kernel (a version range), sysctl (names: present | absent) or nftables \
                 (features), e.g. { kernel: \">= 6.7\" }",
            ));
        }
        Ok(Requirements { items, location: Some(self.index.key(path)) })
    }

    /// `">= 6.2, < 6.15"`.
    fn kernel_range(&self, path: &NodePath, value: &Scalar) -> Checked<Vec<VersionBound>> {
        let text = match value {
            Scalar::Str(text) => text.clone(),
            other => {
                return Err(self.fail(path, format!("kernel {other} is not a range; write {KERNEL_FORMS}")));
            }
        };
        let mut bounds = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let ops = [
                (">=", VersionOp::GreaterOrEqual),
                ("<=", VersionOp::LessOrEqual),
                (">", VersionOp::Greater),
                ("<", VersionOp::Less),
                ("=", VersionOp::Equal),
            ];
            let Some((op, rest)) =
                ops.iter().find_map(|(symbol, op)| part.strip_prefix(symbol).map(|rest| (*op, rest)))
            else {
                return Err(self.fail(
                    path,
                    format!(
                        "kernel range \"{text}\": \"{part}\" has no comparison (>=, >, <=, <, =); write {KERNEL_FORMS}"
                    ),
                ));
            };
            let version = parse_version(rest.trim()).ok_or_else(|| {
                self.fail(
                    path,
                    format!(
                        "kernel range \"{text}\": \"{}\" is not a kernel version (MAJOR.MINOR or MAJOR.MINOR.PATCH); \
                         write {KERNEL_FORMS}",
                        rest.trim()
                    ),
                )
            })?;
            bounds.push(VersionBound { op, version });
        }
        Ok(bounds)
    }

    /// The expectations with a `requires:` of their own, in file order.
    pub(super) fn conditional_expectations(&self, wire: &ScenarioWire) -> Checked<Vec<Conditional>> {
        let root = NodePath::root();
        let mut conditional = Vec::new();
        for (host, program) in [(HostId::Client, wire.client.as_deref()), (HostId::Server, wire.server.as_deref())] {
            for (index, step) in program.unwrap_or(&[]).iter().enumerate() {
                if let ScalarOr::Map(StepMapWire { expect: Some(ScalarOr::Map(expect)), .. }) = step {
                    if let Some(requires) = &expect.requires {
                        let path = root.key(host.name()).index(index).key("expect").key("requires");
                        let requires = self.requirements(&path, Some(requires))?;
                        conditional.push(Conditional { target: ExpectationRef::Step { host, index }, requires });
                    }
                }
            }
        }
        let Some(expect) = &wire.expect else { return Ok(conditional) };
        let path = root.key("expect");
        let kinds: [KindRequirements<'_>; 4] = [
            ("packets", expect.packets.iter().flatten().map(|e| e.requires.as_ref()).collect(), ExpectationRef::Packet),
            ("states", expect.states.iter().flatten().map(|e| e.requires.as_ref()).collect(), ExpectationRef::State),
            ("timers", expect.timers.iter().flatten().map(|e| e.requires.as_ref()).collect(), ExpectationRef::Timer),
            ("queues", expect.queues.iter().flatten().map(|e| e.requires.as_ref()).collect(), ExpectationRef::Queue),
        ];
        for (key, requires, target) in kinds {
            for (i, requires) in requires.into_iter().enumerate() {
                if let Some(requires) = requires {
                    let requires = self.requirements(&path.key(key).index(i).key("requires"), Some(requires))?;
                    conditional.push(Conditional { target: target(i), requires });
                }
            }
        }
        Ok(conditional)
    }
}

/// One kind of run expectation: its key, each item's `requires:`, and how to refer to the item.
type KindRequirements<'w> = (&'static str, Vec<Option<&'w RequiresWire>>, fn(usize) -> ExpectationRef);

/// `6.2` -> [6, 2, 0]; `6.1.158` -> [6, 1, 158].
pub fn parse_version(text: &str) -> Option<[u32; 3]> {
    let parts: Vec<&str> = text.split('.').collect();
    if !(2..=3).contains(&parts.len()) {
        return None;
    }
    let mut version = [0; 3];
    for (slot, part) in version.iter_mut().zip(&parts) {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = part.parse().ok()?;
    }
    Some(version)
}
