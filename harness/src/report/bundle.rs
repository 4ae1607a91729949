//! `netfault bundle`: one report folder as a .tar.gz to attach to a bug report (`tar czf`): capture.pcapng,
//! report.html, timeline.txt, result.json, the scenario as run and environment.txt. A capture larger than
//! the cap goes in with every frame cut to its headers, and stops at the cap if it is still larger.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::blocks::section_header::SectionHeaderOption;
use pcap_file::pcapng::{Block, PcapNgReader};

use super::pcapng::{self, PcapngWriter, Section};
use crate::error::{Context, Error, Result};

/// The files of a report a bundle holds, in the archive's order.
pub const FILES: [&str; 6] =
    ["result.json", "timeline.txt", "report.html", "capture.pcapng", "scenario.yaml", "environment.txt"];
/// A capture.pcapng larger than this is bundled cut to its headers (`--max-capture`, `--whole-capture`).
pub const DEFAULT_CAPTURE_CAP: u64 = 32 << 20;
/// What a cut frame keeps: Ethernet, IPv4 and TCP headers with the longest options (14 + 60 + 60 bytes).
pub const HEADERS_SNAPLEN: u32 = 160;

/// What went into a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundled {
    pub path: PathBuf,
    pub bytes: u64,
    /// Set when the capture was cut: frames kept of all, and the frames' snap length.
    pub capture_cut: Option<(u64, u64)>,
}

/// `tar czf out -C report/.. report`: the report's files under a folder named after the scenario. `cap` is
/// the largest capture.pcapng bundled whole (`None`: any size).
pub fn write_bundle(report: &Path, out: &Path, cap: Option<u64>) -> Result<Bundled> {
    if !report.is_dir() {
        return Err(Error::Internal(format!("{}: no such report folder", report.display())));
    }
    let missing: Vec<&str> = FILES.iter().copied().filter(|f| !report.join(f).is_file()).collect();
    if !missing.is_empty() {
        return Err(Error::Internal(format!(
            "{} is not a complete report: {} missing (a report written by this netfault has them; run the scenario \
             again)",
            report.display(),
            missing.join(", ")
        )));
    }
    let result: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(report.join("result.json")).context(|| format!("read {}/result.json", report.display()))?,
    )
    .map_err(|e| Error::Internal(format!("{}/result.json: {e}", report.display())))?;
    let folder = result["scenario"].as_str().unwrap_or("report").replace('/', "-");

    let file = File::create(out).context(|| format!("create {}", out.display()))?;
    let mut archive = tar::Builder::new(GzEncoder::new(file, Compression::default()));
    let mut capture_cut = None;
    for name in FILES {
        let path = report.join(name);
        let size = fs::metadata(&path).context(|| format!("stat {}", path.display()))?.len();
        let archived = format!("{folder}/{name}");
        let added = if name == "capture.pcapng" && cap.is_some_and(|cap| size > cap) {
            let (bytes, kept, total) = cut_capture(&path, cap.unwrap_or(u64::MAX))?;
            capture_cut = Some((kept, total));
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(mtime(&path));
            archive.append_data(&mut header, &archived, bytes.as_slice())
        } else {
            archive.append_path_with_name(&path, &archived)
        };
        added.context(|| format!("add {} to {}", path.display(), out.display()))?;
    }
    let encoder = archive.into_inner().context(|| format!("write {}", out.display()))?;
    encoder.finish().and_then(|mut f| f.flush()).context(|| format!("write {}", out.display()))?;
    let bytes = fs::metadata(out).context(|| format!("stat {}", out.display()))?.len();
    Ok(Bundled { path: out.to_path_buf(), bytes, capture_cut })
}

fn mtime(path: &Path) -> u64 {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// capture.pcapng with every frame cut to `HEADERS_SNAPLEN` bytes (comments, directions and timestamps kept),
/// and, if that is still over `cap`, only the frames that fit; a section comment says what was cut. Returns
/// the file's bytes, frames kept and frames in all.
fn cut_capture(path: &Path, cap: u64) -> Result<(Vec<u8>, u64, u64)> {
    let what = |e: &dyn std::fmt::Display| Error::Internal(format!("read {}: {e}", path.display()));
    let file = File::open(path).context(|| format!("open {}", path.display()))?;
    let mut reader = PcapNgReader::new(file).map_err(|e| what(&e))?;
    let mut section = Section::default();
    for option in &reader.section().options {
        match option {
            SectionHeaderOption::Hardware(text) => section.hardware = text.to_string(),
            SectionHeaderOption::OS(text) => section.os = text.to_string(),
            SectionHeaderOption::UserApplication(text) => section.application = text.to_string(),
            SectionHeaderOption::Comment(text) => section.comments.push(text.to_string()),
            _ => {}
        }
    }
    let mut interfaces = Vec::new();
    let mut packets = Vec::new();
    while let Some(block) = reader.next_block() {
        match block.map_err(|e| what(&e))? {
            Block::InterfaceDescription(idb) => {
                let text = |wanted: fn(&InterfaceDescriptionOption) -> Option<String>| {
                    idb.options.iter().find_map(wanted).unwrap_or_default()
                };
                interfaces.push(pcapng::Interface {
                    name: text(|o| match o {
                        InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                        _ => None,
                    }),
                    description: text(|o| match o {
                        InterfaceDescriptionOption::IfDescription(d) => Some(d.to_string()),
                        _ => None,
                    }),
                    snaplen: HEADERS_SNAPLEN,
                });
            }
            Block::EnhancedPacket(epb) => {
                let mut direction = None;
                let mut comments = Vec::new();
                for option in &epb.options {
                    match option {
                        EnhancedPacketOption::Flags(flags) => {
                            direction = match flags & 0b11 {
                                0b01 => Some(pcapng::Direction::Inbound),
                                0b10 => Some(pcapng::Direction::Outbound),
                                _ => None,
                            }
                        }
                        EnhancedPacketOption::Comment(text) => comments.push(text.to_string()),
                        _ => {}
                    }
                }
                let data = epb.data[..epb.data.len().min(HEADERS_SNAPLEN as usize)].to_vec();
                packets.push((epb.interface_id, epb.timestamp, epb.original_len, data, direction, comments));
            }
            _ => {}
        }
    }
    let total = packets.len() as u64;
    // Each frame costs at most its block: 32 bytes of header and length, its data, its options.
    let block_len = |p: &(u32, Duration, u32, Vec<u8>, Option<pcapng::Direction>, Vec<String>)| {
        32 + p.3.len() as u64 + 12 + p.5.iter().map(|c| 8 + c.len() as u64).sum::<u64>()
    };
    let header_room = 4096 + section.comments.iter().map(|c| c.len() as u64 + 8).sum::<u64>();
    let mut budget = cap.saturating_sub(header_room);
    let kept = packets
        .iter()
        .take_while(|p| {
            let len = block_len(p);
            let fits = len <= budget;
            budget = budget.saturating_sub(len);
            fits
        })
        .count() as u64;
    section.comments.push(if kept == total {
        format!(
            "bundle: every frame cut to its first {HEADERS_SNAPLEN} bytes (the report's capture.pcapng has them whole)"
        )
    } else {
        format!(
            "bundle: the first {kept} of {total} frames, each cut to its first {HEADERS_SNAPLEN} bytes, to stay under \
             {cap} bytes (the report's capture.pcapng has them all)"
        )
    });
    let write = || -> std::io::Result<Vec<u8>> {
        let mut writer = PcapngWriter::new(Vec::new(), &section, &interfaces)?;
        for (interface, timestamp, original_len, data, direction, comments) in packets.iter().take(kept as usize) {
            writer.write_packet(&pcapng::Packet {
                interface: *interface,
                timestamp: *timestamp,
                original_len: *original_len,
                data,
                direction: *direction,
                comments: comments.clone(),
            })?;
        }
        writer.finish()
    };
    let bytes = write().context(|| format!("cut {}", path.display()))?;
    Ok((bytes, kept, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("netfault-bundle-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A report folder whose capture holds `frames` frames of 1000 bytes.
    fn report(dir: &Path, frames: usize) {
        for name in FILES {
            fs::write(dir.join(name), format!("{name}\n")).unwrap();
        }
        fs::write(dir.join("result.json"), r#"{"scenario": "keepalive/idle"}"#).unwrap();
        let interface = pcapng::Interface { name: "client/nf0".into(), description: String::new(), snaplen: 262_144 };
        let mut writer = PcapngWriter::new(Vec::new(), &Section::default(), &[interface]).unwrap();
        let data = vec![7u8; 1000];
        for i in 0..frames {
            writer
                .write_packet(&pcapng::Packet {
                    interface: 0,
                    timestamp: Duration::from_micros(i as u64),
                    original_len: 1000,
                    data: &data,
                    direction: Some(pcapng::Direction::Outbound),
                    comments: vec![format!("frame {i}")],
                })
                .unwrap();
        }
        fs::write(dir.join("capture.pcapng"), writer.finish().unwrap()).unwrap();
    }

    fn entries(archive: &Path) -> Vec<(String, Vec<u8>)> {
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(File::open(archive).unwrap()));
        tar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
                (e.path().unwrap().display().to_string(), bytes)
            })
            .collect()
    }

    fn frames_and_comments(pcapng: &[u8]) -> (usize, usize, Vec<String>) {
        let mut reader = PcapNgReader::new(pcapng).unwrap();
        let comments = reader
            .section()
            .options
            .iter()
            .filter_map(|o| match o {
                SectionHeaderOption::Comment(c) => Some(c.to_string()),
                _ => None,
            })
            .collect();
        let (mut frames, mut longest) = (0, 0);
        while let Some(block) = reader.next_block() {
            if let Block::EnhancedPacket(epb) = block.unwrap() {
                frames += 1;
                longest = longest.max(epb.data.len());
            }
        }
        (frames, longest, comments)
    }

    #[test]
    fn a_bundle_holds_every_file_under_the_scenario_folder() {
        let dir = scratch("whole");
        report(&dir, 10);
        let out = dir.join("x.tar.gz");
        let bundled = write_bundle(&dir, &out, Some(DEFAULT_CAPTURE_CAP)).unwrap();
        assert_eq!(bundled.capture_cut, None);
        let names: Vec<String> = entries(&out).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, FILES.map(|f| format!("keepalive-idle/{f}")));
        let capture = entries(&out).into_iter().find(|(n, _)| n.ends_with("capture.pcapng")).unwrap().1;
        assert_eq!(capture, fs::read(dir.join("capture.pcapng")).unwrap(), "bundled whole, byte for byte");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_capture_over_the_cap_is_cut_to_headers_then_to_the_cap() {
        let dir = scratch("cut");
        report(&dir, 200);
        let out = dir.join("x.tar.gz");
        // 200 frames of 1000 bytes: about 210 kB whole, about 42 kB cut to headers.
        let bundled = write_bundle(&dir, &out, Some(100_000)).unwrap();
        assert_eq!(bundled.capture_cut, Some((200, 200)));
        let capture = entries(&out).into_iter().find(|(n, _)| n.ends_with("capture.pcapng")).unwrap().1;
        let (frames, longest, comments) = frames_and_comments(&capture);
        assert_eq!((frames, longest), (200, HEADERS_SNAPLEN as usize));
        assert!(comments.iter().any(|c| c.contains("every frame cut to its first 160 bytes")), "{comments:?}");

        let bundled = write_bundle(&dir, &out, Some(20_000)).unwrap();
        let (kept, total) = bundled.capture_cut.unwrap();
        assert!(kept > 0 && kept < 200 && total == 200, "{kept} of {total}");
        let capture = entries(&out).into_iter().find(|(n, _)| n.ends_with("capture.pcapng")).unwrap().1;
        assert!(capture.len() <= 20_000, "{} bytes", capture.len());
        let (frames, _, comments) = frames_and_comments(&capture);
        assert_eq!(frames as u64, kept);
        assert!(comments.iter().any(|c| c.contains(&format!("the first {kept} of 200 frames"))), "{comments:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_incomplete_report_is_refused_naming_what_is_missing() {
        let dir = scratch("incomplete");
        report(&dir, 1);
        fs::remove_file(dir.join("report.html")).unwrap();
        let error = write_bundle(&dir, &dir.join("x.tar.gz"), None).unwrap_err().to_string();
        assert!(error.contains("report.html missing"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
