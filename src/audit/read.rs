//! Reading a trail back: every record of every segment, in chain order, and the
//! sessions they describe (`sqlgate audit sessions`, `sqlgate audit replay`).
//!
//! Readers take records as JSON values, so a trail written by an older gateway (fewer
//! fields) still reads; lines that are not records (a torn line) are skipped here —
//! `sqlgate audit verify` is where they are reported.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The trail's files in chain order: the closed segments, then the active one (if any).
pub fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = super::closed_segments(dir)?;
    let active = dir.join("audit.jsonl");
    if active.exists() {
        files.push(active);
    }
    Ok(files)
}

/// Calls `each` with every record of the trail in `dir`, oldest first: its line (as
/// written, without the newline) and its value.
pub fn records(dir: &Path, each: impl FnMut(&[u8], Value)) -> std::io::Result<()> {
    records_with_progress(dir, |_| {}, each)
}

/// [`records`], also calling `progress` after every line with the bytes read so far
/// (of all the files of [`files`], in order): what drives a progress line.
pub fn records_with_progress(
    dir: &Path,
    mut progress: impl FnMut(u64),
    mut each: impl FnMut(&[u8], Value),
) -> std::io::Result<()> {
    let mut read = 0u64;
    for path in files(dir)? {
        let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&path)?);
        for line in reader.split(b'\n') {
            let line = line?;
            read += line.len() as u64 + 1;
            if let Ok(value @ Value::Object(_)) = serde_json::from_slice::<Value>(&line) {
                each(&line, value);
            }
            progress(read);
        }
    }
    Ok(())
}

/// One session as the trail tells it.
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub session_id: String,
    pub grant_id: Option<String>,
    pub sub: Option<String>,
    pub groups: Vec<String>,
    pub scopes: Vec<String>,
    pub client_id: Option<String>,
    pub token_id: Option<String>,
    pub issuer: Option<String>,
    pub upstream: Option<String>,
    pub connection: String,
    pub protocol: String,
    pub client_addr: String,
    /// When the grant was decided.
    pub started: String,
    /// "allow" (a grant was issued) or "deny".
    pub decision: String,
    pub reason: Option<String>,
    pub expires_at: Option<String>,
    pub ended: Option<String>,
    pub end_reason: Option<String>,
    pub statements: u64,
    pub denied: u64,
    /// Allowed statements the upstream answered with an error.
    pub failed: u64,
    /// The session's records, in order (for replay).
    pub records: Vec<Value>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn text(v: &Value, key: &str) -> Option<String> {
    v[key].as_str().map(str::to_owned)
}

/// Filters for `sqlgate audit sessions`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// RFC 3339 bounds on the session's start (compared as text: same format).
    pub since: Option<String>,
    pub until: Option<String>,
    pub sub: Option<String>,
    pub connection: Option<String>,
    pub decision: Option<String>,
}

impl Filter {
    pub fn matches(&self, s: &Session) -> bool {
        self.since
            .as_ref()
            .is_none_or(|t| s.started.as_str() >= t.as_str())
            && self
                .until
                .as_ref()
                .is_none_or(|t| s.started.as_str() < t.as_str())
            && self.sub.as_ref().is_none_or(|x| s.sub.as_ref() == Some(x))
            && self.connection.as_ref().is_none_or(|x| &s.connection == x)
            && self.decision.as_ref().is_none_or(|x| &s.decision == x)
    }
}

/// The sessions of a trail, by start (without their records).
pub fn sessions(dir: &Path) -> std::io::Result<Vec<Session>> {
    collect(dir, None, &mut |_| {})
}

/// [`sessions`], calling `progress` with the bytes read so far (see
/// [`records_with_progress`]).
pub fn sessions_with_progress(
    dir: &Path,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Vec<Session>> {
    collect(dir, None, progress)
}

/// One session with its records, read in one pass that keeps nothing else.
pub fn session(dir: &Path, id: &str) -> std::io::Result<Option<Session>> {
    Ok(collect(dir, Some(id), &mut |_| {})?.into_iter().next())
}

fn collect(
    dir: &Path,
    only: Option<&str>,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Vec<Session>> {
    let keep_records = only.is_some();
    let mut by_id: BTreeMap<String, Session> = BTreeMap::new();
    records_with_progress(dir, progress, |_, v| {
        let Some(id) = text(&v, "session_id").filter(|id| id != "-") else {
            return;
        };
        if only.is_some_and(|only| only != id) {
            return;
        }
        let s = by_id.entry(id.clone()).or_insert_with(|| Session {
            session_id: id,
            connection: text(&v, "connection").unwrap_or_default(),
            protocol: text(&v, "protocol").unwrap_or_default(),
            client_addr: text(&v, "client_addr").unwrap_or_default(),
            started: text(&v, "time").unwrap_or_default(),
            ..Session::default()
        });
        match v["event"].as_str().unwrap_or_default() {
            "grant.issued" | "grant.denied" => {
                s.decision = text(&v, "decision").unwrap_or_default();
                s.reason = text(&v, "reason");
                s.grant_id = text(&v, "grant_id");
                s.sub = text(&v, "sub").or(s.sub.take());
                s.expires_at = text(&v, "expires_at");
                s.groups = strings(&v["groups"]);
                s.scopes = strings(&v["scopes"]);
                s.client_id = text(&v, "client_id");
                s.token_id = text(&v, "token_id");
                s.issuer = text(&v, "issuer");
                s.upstream = text(&v, "upstream");
                if s.decision == "deny" {
                    s.ended = text(&v, "time");
                }
            }
            "statement" => {
                s.statements += 1;
                if v["decision"] == "deny" {
                    s.denied += 1;
                }
            }
            "statement.result" if v["status"] == "error" => s.failed += 1,
            "session.ended" => {
                s.ended = text(&v, "time");
                s.end_reason = text(&v, "reason");
            }
            _ => {}
        }
        if keep_records {
            s.records.push(v);
        }
    })?;
    let mut list: Vec<Session> = by_id.into_values().collect();
    list.sort_by(|a, b| a.started.cmp(&b.started));
    Ok(list)
}
