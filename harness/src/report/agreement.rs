//! Whether two runs of one scenario with the same seed made the same decisions, from their result.json files.
//!
//! TCP itself does not send the same packets in every run (a retransmission more, an ACK less, a segment cut
//! elsewhere), so "the same decisions" means: every decision one run made about a packet the other run also
//! sent past the wire is in the other run's list too, with the same outcome (the same jitter, the same bit).
//! A packet "also sent" is one with the same key (connection, sender, the MSS-sized block of the stream it
//! starts nearest to, length, flags, relative acknowledgement for a packet without sequence space,
//! occurrence) among the packets the other run's sending host captured leaving; forged segments and datagrams (whose payload the captures do not keep)
//! are compared whatever the other run sent. A rate limit's `queue-full` drops depend on when packets arrive,
//! not on the seed: they are counted apart, not compared.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::timeline::format_tcp_flags;

/// SYN, FIN, RST and ACK: the flags a packet key keeps.
const KEY_FLAGS: u64 = 0x17;
const SYN: u64 = 0x02;
const FIN: u64 = 0x01;
const ACK: u64 = 0x10;

/// What comparing two runs' decisions found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Agreement {
    /// Decisions about packets both runs sent, the same in both.
    pub agreed: usize,
    /// Decisions about packets both runs sent that differ or that only one run made, described.
    pub differing: Vec<String>,
    /// Decisions about packets the other run did not send (its TCP sent other retransmissions).
    pub unmatched: usize,
    /// `queue-full` drops in either run (timing, not seed).
    pub queue_full: usize,
}

impl Agreement {
    pub fn identical(&self) -> bool {
        self.differing.is_empty()
    }
}

/// A packet key in one comparable form, from a decision's `key` or from a captured packet.
type Key = String;

/// Compares the decisions of two result.json documents of one scenario run with one seed.
pub fn compare(first: &Value, second: &Value) -> Result<Agreement, String> {
    let runs = [Run::read(first)?, Run::read(second)?];
    let mut agreement = Agreement::default();
    for (this, other) in [(0, 1), (1, 0)] {
        for ((fault, key), decision) in &runs[this].decisions {
            if decision["decision"] == "queue-full" {
                agreement.queue_full += 1;
                continue;
            }
            let comparable = !key.starts_with("tcp ") || runs[other].sent.contains(key);
            if !comparable {
                agreement.unmatched += 1;
                continue;
            }
            match runs[other].decisions.get(&(fault.clone(), key.clone())) {
                Some(theirs) if theirs == decision => {
                    // Counted once, from the first run's side.
                    if this == 0 {
                        agreement.agreed += 1;
                    }
                }
                Some(theirs) if this == 0 => {
                    agreement.differing.push(format!("{fault} {key}: {decision} in one run, {theirs} in the other"))
                }
                Some(_) => {}
                None => agreement.differing.push(format!(
                    "{fault} {key}: {decision} in run {}, no decision in run {} though it sent the packet",
                    this + 1,
                    other + 1
                )),
            }
        }
    }
    Ok(agreement)
}

/// One run's decisions by (fault, key), each without its key, and the keys of the TCP packets it sent.
struct Run {
    decisions: BTreeMap<(String, Key), Value>,
    sent: BTreeSet<Key>,
}

impl Run {
    fn read(result: &Value) -> Result<Run, String> {
        let mut decisions = BTreeMap::new();
        for decision in result["decisions"].as_array().ok_or("result.json has no decision list")? {
            let fault = decision["fault"].as_str().ok_or_else(|| format!("a decision without a fault: {decision}"))?;
            let key = decision_key(&decision["key"]).ok_or_else(|| format!("a decision without a key: {decision}"))?;
            let mut outcome = decision.clone();
            if let Some(fields) = outcome.as_object_mut() {
                fields.remove("key");
            }
            decisions.insert((fault.to_string(), key), outcome);
        }
        Ok(Run { decisions, sent: sent_keys(result)? })
    }
}

/// The comparable form of a decision's key.
fn decision_key(key: &Value) -> Option<Key> {
    Some(match key["kind"].as_str()? {
        "tcp" => {
            let stem = tcp_stem(
                key["connection"].as_u64()?,
                key["from"].as_str()?,
                key["block"].as_u64()?,
                key["ack"].as_u64(),
                key["len"].as_u64()?,
                key["flags"].as_str()?,
            );
            format!("{stem} #{}", key["occurrence"].as_u64()?)
        }
        _ => key.to_string(),
    })
}

/// A TCP packet's key without its occurrence.
fn tcp_stem(connection: u64, from: &str, block: u64, ack: Option<u64>, len: u64, flags: &str) -> Key {
    let ack = ack.map(|ack| format!(" ack {ack}")).unwrap_or_default();
    format!("tcp connection {connection} {from} [{flags}] block {block}{ack} length {len}")
}

/// What a connection's SYNs announced, by side (client, server): the MSS option and timestamps.
#[derive(Default)]
struct Announced {
    mss: [Option<u64>; 2],
    timestamps: [bool; 2],
}

impl Announced {
    /// The block side `side`'s sequence numbers are counted in (as `run::impair::identity` counts them).
    fn block(&self, side: usize) -> u64 {
        let options = if self.timestamps == [true, true] { 12 } else { 0 };
        self.mss[1 - side].map_or(1, |mss| mss.saturating_sub(options).max(1))
    }
}

/// The keys of the TCP packets each host's capture saw it send (in the wire's terms: connections numbered by
/// their first packet, numbers relative as the captures decode them, occurrences counted).
fn sent_keys(result: &Value) -> Result<BTreeSet<Key>, String> {
    let events = result["events"].as_array().ok_or("result.json has no event list")?;
    let mut connections: BTreeMap<(u64, u64), (u64, Announced)> = BTreeMap::new();
    let mut occurrences: BTreeMap<Key, u64> = BTreeMap::new();
    let mut sent = BTreeSet::new();
    for event in events {
        let sender = event["host"].as_str().unwrap_or_default();
        let left = event["event"] == "packet"
            && event["direction"] == "out"
            && event["protocol"] == "tcp"
            && event.get("dropped").is_none_or(Value::is_null)
            && matches!(sender, "client" | "server");
        if !left {
            continue;
        }
        let field = |name: &str| event[name].as_u64().ok_or_else(|| format!("a packet without {name}: {event}"));
        let (sport, dport, flags, len) = (field("sport")?, field("dport")?, field("flags")?, field("len")?);
        let ends = if sender == "client" { (sport, dport) } else { (dport, sport) };
        let numbered = connections.len() as u64;
        let (connection, announced) = connections.entry(ends).or_insert((numbered + 1, Announced::default()));
        let side = usize::from(sender == "server");
        if flags & SYN != 0 {
            let options = event["options"].as_str().unwrap_or_default();
            announced.mss[side] =
                options.split(',').find_map(|option| option.trim().strip_prefix("mss ")?.parse().ok());
            announced.timestamps[side] = options.contains("TS val");
        }
        let block = announced.block(side);
        let takes_space = len > 0 || flags & (SYN | FIN) != 0;
        let ack = match (takes_space, flags & ACK != 0) {
            (true, _) => None,
            (false, true) => Some(field("ack")?),
            (false, false) => Some(0),
        };
        let flags_text = format_tcp_flags((flags & KEY_FLAGS) as u8);
        let stem = tcp_stem(*connection, sender, (field("seq")? + block / 2) / block, ack, len, &flags_text);
        let count = occurrences.entry(stem.clone()).or_insert(0);
        *count += 1;
        sent.insert(format!("{stem} #{count}"));
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn packet(host: &str, seq: u64, len: u64, flags: u64) -> Value {
        let (sport, dport) = if host == "client" { (40000, 9000) } else { (9000, 40000) };
        json!({ "event": "packet", "host": host, "direction": "out", "protocol": "tcp", "sport": sport,
                "dport": dport, "seq": seq, "ack": 1, "len": len, "flags": flags, "options": "" })
    }

    /// A decision about the segment that starts at `seq` (no MSS announced: blocks of one byte).
    fn decision(seq: u64, occurrence: u64, outcome: Value) -> Value {
        let mut decision = json!({ "fault": "lossy", "key": { "kind": "tcp", "connection": 1, "from": "client",
                                   "block": seq, "len": 1448, "flags": ".", "occurrence": occurrence } });
        if let (Some(fields), Some(more)) = (decision.as_object_mut(), outcome.as_object()) {
            fields.extend(more.clone());
        }
        decision
    }

    fn run(sent: &[(u64, u64)], decisions: Vec<Value>) -> Value {
        let mut events = vec![packet("client", 0, 0, SYN)];
        events.extend(sent.iter().map(|&(seq, _)| packet("client", seq, 1448, ACK)));
        json!({ "events": events, "decisions": decisions })
    }

    #[test]
    fn decisions_about_packets_both_runs_sent_must_agree_and_others_are_set_aside() {
        let lost = json!({ "decision": "lost" });
        // Both sent 1 and 1449; the first also retransmitted 1 (lost again), the second did not.
        let first = run(&[(1, 1), (1449, 1), (1, 2)], vec![decision(1, 1, lost.clone()), decision(1, 2, lost.clone())]);
        let second = run(&[(1, 1), (1449, 1)], vec![decision(1, 1, lost.clone())]);
        let agreement = compare(&first, &second).unwrap();
        assert_eq!((agreement.agreed, agreement.unmatched), (1, 1));
        assert!(agreement.identical());

        // The second run sent the retransmission too but did not lose it: a difference.
        let second = run(&[(1, 1), (1449, 1), (1, 2)], vec![decision(1, 1, lost.clone())]);
        let agreement = compare(&first, &second).unwrap();
        assert!(!agreement.identical());
        assert!(agreement.differing[0].contains("no decision in run 2"), "{:?}", agreement.differing);

        // Another outcome for the same packet: a difference.
        let delayed = |by: u64| decision(1449, 1, json!({ "decision": "delayed", "by": by }));
        let first = run(&[(1, 1), (1449, 1)], vec![delayed(1000)]);
        let second = run(&[(1, 1), (1449, 1)], vec![delayed(1001)]);
        let agreement = compare(&first, &second).unwrap();
        assert_eq!(agreement.differing.len(), 1, "{agreement:?}");
    }

    #[test]
    fn queue_full_drops_are_counted_not_compared_and_forged_segments_always_compared() {
        let full = decision(1, 1, json!({ "decision": "queue-full" }));
        let forged = |seq: &str| {
            json!({ "fault": "rst", "key": { "kind": "forged", "number": 1 }, "decision": "injected",
                    "segment": "rst", "seq": seq })
        };
        let first = run(&[(1, 1)], vec![full, forged("exact")]);
        let second = run(&[(1, 1)], vec![forged("exact")]);
        let agreement = compare(&first, &second).unwrap();
        assert_eq!((agreement.agreed, agreement.queue_full), (1, 1));
        assert!(agreement.identical());
        let third = run(&[], vec![forged("in-window")]);
        assert!(!compare(&first, &third).unwrap().identical());
    }

    #[test]
    fn broken_results_are_refused() {
        assert!(compare(&json!({}), &json!({})).is_err());
        let no_key = json!({ "events": [], "decisions": [{ "fault": "x", "decision": "lost" }] });
        assert!(compare(&no_key, &no_key).unwrap_err().contains("without a key"));
    }

    #[test]
    fn captured_segments_are_named_by_the_block_the_syns_announced() {
        let mut syn = packet("client", 0, 0, SYN);
        syn["options"] = "mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 7".into();
        let mut syn_ack = packet("server", 0, 0, SYN | ACK);
        syn_ack["options"] = "mss 1460,sackOK,TS val 2 ecr 1,nop,wscale 7".into();
        // Shifted 1256 bytes into block 4 by an earlier short segment: block 4 still.
        let events = vec![syn, syn_ack, packet("client", 1 + 1448 * 3 + 1256, 1448, ACK)];
        let sent = sent_keys(&json!({ "events": events })).unwrap();
        assert!(sent.contains("tcp connection 1 client [.] block 4 length 1448 #1"), "{sent:?}");
    }
}
