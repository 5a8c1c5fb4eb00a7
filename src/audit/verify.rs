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
    verify_with_progress(dir, |_| {})
}

/// The files [`verify`] walks, in order (the active segment even when missing, if there
/// is nothing else: an empty trail is an error to report, not a silent OK).
pub fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = super::closed_segments(dir)?;
    let active = dir.join("audit.jsonl");
    if active.exists() || files.is_empty() {
        files.push(active);
    }
    Ok(files)
}

/// [`verify`], calling `progress` after every line with the bytes read so far (of all
/// the files of [`files`], in order).
pub fn verify_with_progress(dir: &Path, mut progress: impl FnMut(u64)) -> std::io::Result<Report> {
    let files = files(dir)?;
    let mut walk = Walk::default();
    let active_path = dir.join("audit.jsonl");
    for path in files {
        walk.file(&path, path != active_path, &mut progress)?;
        if walk.report.problems.len() >= MAX_PROBLEMS {
            break;
        }
    }
    if let Some((line, through, _, file)) = walk.start_cut.take() {
        let mut finding = Finding {
            file,
            line,
            seq: Some(through + 1),
            what: format!(
                "the trail starts at seq {}: records through seq {through} were removed",
                through + 1
            ),
        };
        if walk.cut_confirmed {
            finding
                .what
                .push_str(" by retention (a trail.pruned record names the cut)");
            walk.report.warnings.push(finding);
        } else {
            finding
                .what
                .push_str(", and no trail.pruned record accounts for them");
            walk.report.problems.push(finding);
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
    /// Where a retention cut starts the walk: (line, last removed seq, its hash, file).
    start_cut: Option<(u64, u64, String, PathBuf)>,
    cut_confirmed: bool,
    /// Bytes read so far, over all files.
    read: u64,
}

impl Walk {
    fn file(
        &mut self,
        path: &Path,
        is_closed_segment: bool,
        progress: &mut dyn FnMut(u64),
    ) -> std::io::Result<()> {
        let file = std::fs::File::open(path)?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let report = &mut self.report;
        let expected_prev = &mut self.expected_prev;
        let expected_seq = &mut self.expected_seq;
        let start_cut = &mut self.start_cut;
        let cut_confirmed = &mut self.cut_confirmed;
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
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            self.read += n as u64;
            progress(self.read);
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
            if expected_seq.is_none() && expected_prev.is_none() && seq > 1 {
                // The trail does not start at seq 1: acceptable only where retention cut it,
                // at the start of a closed segment, and a trail.pruned record later names
                // this cut (checked at the end of the walk).
                if line_no == 1 && is_closed_segment {
                    *start_cut = Some((line_no, seq - 1, prev.to_owned(), path.clone()));
                } else {
                    report.problems.push(finding(
                        line_no,
                        Some(seq),
                        format!("the trail starts at seq {seq}: earlier records were removed"),
                    ));
                }
                *expected_prev = Some(prev.to_owned());
            }
            if value["event"] == "trail.pruned" {
                if let Some((_, through, hash, _)) = start_cut.as_ref() {
                    if value["pruned_through_seq"].as_u64() == Some(*through)
                        && value["pruned_through_sha256"] == hash.as_str()
                    {
                        *cut_confirmed = true;
                    }
                }
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
            *expected_seq = seq.checked_add(1);
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
