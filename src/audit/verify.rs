//! `sqlgate audit verify`: walks a trail and checks its hash chain.
//!
//! Every record carries its position (`seq`) and the SHA-256 of the previous line
//! (`prev`). An edited record breaks the `prev` of the record after it; a deleted,
//! inserted or reordered record breaks `seq` and `prev`; a record cut in the middle no
//! longer parses. Each problem names the file, the line and the record. An incomplete
//! last line is reported, unless the gateway has since recorded it as torn
//! (`trail.torn`, with the line's length and hash), which makes it a warning.
//! Records written before the chain existed (no `seq`) are counted as unchained.
//!
//! What a chain alone cannot show: the removal of records at the very end. The report
//! prints the head (last `seq` and its hash) for anchoring outside the machine.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use super::{sha256_hex, GENESIS};

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: PathBuf,
    /// 1-based line number.
    pub line: u64,
    pub seq: Option<u64>,
    pub what: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// What a verification found.
#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    pub unchained: u64,
    /// The last record's seq and the SHA-256 of its line.
    pub head: Option<(u64, String)>,
    pub problems: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Stop listing problems after this many (the first ones matter).
const MAX_PROBLEMS: usize = 50;

/// Verifies the trail in `dir`: its closed segments in order, then the active one.
pub fn verify(dir: &Path) -> std::io::Result<Report> {
    let mut files = super::closed_segments(dir)?;
    let active = dir.join("audit.jsonl");
    if active.exists() || files.is_empty() {
        files.push(active);
    }
    let mut walk = Walk::default();
    for path in files {
        walk.file(&path)?;
        if walk.report.problems.len() >= MAX_PROBLEMS {
            break;
        }
    }
    Ok(walk.report)
}

/// The chain state carried from one segment into the next.
#[derive(Default)]
struct Walk {
    report: Report,
    expected_prev: Option<String>,
    expected_seq: Option<u64>,
}

impl Walk {
    fn file(&mut self, path: &Path) -> std::io::Result<()> {
        let file = std::fs::File::open(path)?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let report = &mut self.report;
        let expected_prev = &mut self.expected_prev;
        let expected_seq = &mut self.expected_seq;
        // A line that does not parse, waiting to see whether a trail.torn record names it.
        let mut pending: Option<(u64, String, usize)> = None;
        let mut line_no = 0u64;
        let mut line = Vec::new();
        let path = path.to_owned();
        let finding = |line: u64, seq: Option<u64>, what: String| Finding {
            file: path.clone(),
            line,
            seq,
            what,
        };
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            line_no += 1;
            let complete = line.last() == Some(&b'\n');
            let body = if complete {
                &line[..line.len() - 1]
            } else {
                &line[..]
            };
            if !complete {
                report.problems.push(finding(
                line_no,
                None,
                "the last line is incomplete (the gateway stopped mid-write, or the file was cut); \
                 the gateway reports it as trail.torn when it next opens the trail"
                    .into(),
            ));
                break;
            }
            if let Some((pending_line, _, _)) = &pending {
                let pending_line = *pending_line;
                let value: Option<serde_json::Value> = serde_json::from_slice(body).ok();
                let names_it = value.as_ref().is_some_and(|v| {
                    v["event"] == "trail.torn"
                        && pending.as_ref().is_some_and(|(_, hash, len)| {
                            v["torn_sha256"] == hash.as_str() && v["torn_length"] == *len
                        })
                });
                if names_it {
                    report.warnings.push(finding(
                    pending_line,
                    None,
                    "an incomplete record from a crash, reported by the trail.torn record after it"
                        .into(),
                ));
                } else {
                    report.problems.push(finding(
                        pending_line,
                        None,
                        "not a valid record (cut or edited)".into(),
                    ));
                }
                pending = None;
            }
            let value: serde_json::Value = match serde_json::from_slice(body) {
                Ok(v @ serde_json::Value::Object(_)) => v,
                _ => {
                    pending = Some((line_no, sha256_hex(body), body.len()));
                    continue;
                }
            };
            let hash = sha256_hex(body);
            report.records += 1;
            let Some(seq) = value["seq"].as_u64() else {
                if expected_seq.is_some() {
                    report.problems.push(finding(
                        line_no,
                        None,
                        "a record without seq/prev after the hash chain began (inserted?)".into(),
                    ));
                } else {
                    report.unchained += 1;
                }
                *expected_prev = Some(hash);
                continue;
            };
            let prev = value["prev"].as_str().unwrap_or_default();
            if expected_seq.is_none() && seq > 1 && expected_prev.is_none() {
                // The oldest segment present does not start the trail: older ones were
                // removed (retention). Its first record anchors the walk.
                report.warnings.push(finding(
                line_no,
                Some(seq),
                format!("the trail starts at seq {seq}: older segments were removed (audit.retention)"),
            ));
                *expected_prev = Some(prev.to_owned());
            }
            let want_prev = expected_prev.as_deref().unwrap_or(GENESIS);
            if let Some(want) = *expected_seq {
                if seq != want {
                    report.problems.push(finding(
                    line_no,
                    Some(seq),
                    format!("seq {seq} where {want} was expected: records were deleted, inserted or reordered"),
                ));
                }
            }
            if prev != want_prev {
                report.problems.push(finding(
                line_no,
                Some(seq),
                "prev is not the hash of the line before: that line was edited, or records were deleted, \
                 inserted or reordered"
                    .into(),
            ));
            }
            *expected_prev = Some(hash.clone());
            *expected_seq = Some(seq + 1);
            report.head = Some((seq, hash));
            if report.problems.len() >= MAX_PROBLEMS {
                break;
            }
        }
        if let Some((pending_line, _, _)) = pending {
            report.problems.push(finding(
                pending_line,
                None,
                "not a valid record (cut or edited)".into(),
            ));
        }
        Ok(())
    }
}
