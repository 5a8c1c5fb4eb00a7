//! The Postgres extended protocol as the audit trail needs it: which statement text
//! and which bound parameters each Execute runs.
//!
//! A Parse the gate allowed names a prepared statement; a Bind makes a portal of a
//! prepared statement and parameter values; an Execute runs a portal. The relay
//! forwards Bind, Execute and Close as they are (they only refer to statements that
//! passed a Parse) and tells [`Portals`] about them, so each Execute gets its own
//! `statement` record with the text and the parameters.
//!
//! The tracker follows what the client asked for; the server may not have done it. So
//! it never guesses (every forwarded Execute has a record, by name when the text is not
//! known for sure):
//! - names are at most [`MAX_NAME`] bytes (the server compares only that many);
//! - a named Parse over an existing name is refused by the server (42P05) and keeps
//!   the old statement, as here; a denied Parse drops only the unnamed statement;
//! - every entry remembers its batch (the Sync that ends it); an error in a batch
//!   makes the server skip the rest of it, so the entries made in an errored batch are
//!   forgotten ([`Portals::errored`]); an Execute that relies on an entry of an earlier
//!   batch the server has not answered yet waits for that answer first (the relay);
//! - SQL-level `PREPARE`, `DEALLOCATE` and `DISCARD` share the names: after one, every
//!   tracked statement is forgotten; any statement that can end a transaction or open
//!   or close a cursor forgets the named portals ([`Portals::ran`]).
//!
//! Memory is bounded: prepared statement text and names by [`MAX_PREPARED_BYTES`] (a
//! Parse beyond it is denied), named portals by [`MAX_PORTALS`] (a Bind beyond it ends
//! the session), bound parameters by a budget per Bind ([`Portals::bound`]).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use sqlgate_postgres::frontend::BindMessage;

/// Text and names of prepared statements held per session, in bytes.
pub const MAX_PREPARED_BYTES: usize = 32 << 20;
/// Named portals open at once per session.
pub const MAX_PORTALS: usize = 256;
/// Longest statement or portal name: Postgres compares names by their first 63 bytes
/// (NAMEDATALEN - 1), so two longer names could be one to the server and two here.
pub const MAX_NAME: usize = 63;

/// A prepared statement the gate allowed: its text and kind.
#[derive(Debug, Clone)]
pub struct Statement {
    pub text: Arc<str>,
    pub kind: Arc<str>,
    /// The batch (ReadyForQuery number) whose Sync ends the Parse that made it.
    pub batch: u64,
    /// The policy generation it was allowed under (0 for a statement the tracker
    /// does not know): after a reload, it is decided again before it runs.
    pub generation: u64,
    /// The `effect = "audit"` rules it meets (see [`crate::session::gate::Allowed`]).
    pub flags: Arc<[String]>,
}

/// What an Execute of a portal runs.
#[derive(Debug, Clone)]
pub struct Portal {
    pub statement: Statement,
    pub params: Arc<Vec<Option<String>>>,
    /// The name the Bind gave for the statement.
    pub statement_name: Arc<str>,
    /// How many parameters were bound (at most [`MAX_RECORDED_PARAMS`] are kept).
    pub param_count: usize,
    /// The batch of the Bind that made it.
    pub batch: u64,
}

#[derive(Default)]
pub struct Portals {
    /// The policy generation the session's decisions are made under now (set by the
    /// session before it records a Parse).
    pub generation: u64,
    statements: HashMap<String, Statement>,
    statement_bytes: usize,
    portals: HashMap<String, Portal>,
    /// Batches the server reported an error in: it skipped the rest of each, and
    /// its messages may still be arriving (the error is sent before the Sync).
    failed: std::collections::BTreeSet<u64>,
}

/// What one tracked statement costs beyond its name and text (map slot, Arcs).
const ENTRY_OVERHEAD: usize = 160;
/// Failed batches remembered; past this the oldest half is dropped with every entry
/// made up to it.
const MAX_FAILED: usize = 1024;
/// Parameters recorded per execution (all are counted in `parameter_count`).
pub const MAX_RECORDED_PARAMS: usize = 256;

/// Refuses a name the server could read differently.
pub fn check_name(name: &str) -> Result<(), String> {
    if !name.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(
            "statement and portal names must be printable ASCII (the server compares them in its own encoding)"
                .into(),
        );
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "statement and portal names longer than {MAX_NAME} bytes are not relayed (the server compares only the first {MAX_NAME})"
        ));
    }
    Ok(())
}

impl Portals {
    /// Whether a Parse of `text` under `name` fits the bound.
    pub fn fits(&self, name: &str, text: &str) -> bool {
        self.statement_bytes + name.len() + text.len() + ENTRY_OVERHEAD <= MAX_PREPARED_BYTES
    }

    /// An allowed Parse, in `batch`.
    pub fn parsed(&mut self, name: &str, text: &str, kind: &str, batch: u64, flags: &[String]) {
        if !name.is_empty() && self.statements.contains_key(name) {
            // The server refuses to replace a named statement (42P05): the old one stays.
            return;
        }
        self.forget_statement(name);
        if self.failed.contains(&batch) {
            // Its batch already failed: the server may have skipped it.
            return;
        }
        self.statement_bytes += name.len() + text.len() + ENTRY_OVERHEAD;
        self.statements.insert(
            name.to_owned(),
            Statement {
                text: text.into(),
                kind: kind.into(),
                batch,
                generation: self.generation,
                flags: flags.into(),
            },
        );
    }

    /// A denied Parse (the server got a probe that fails to parse): the server drops
    /// the unnamed statement before parsing, and keeps a named one.
    pub fn parse_denied(&mut self, name: &str) {
        if name.is_empty() {
            self.forget_statement(name);
        }
    }

    fn forget_statement(&mut self, name: &str) {
        if let Some(old) = self.statements.remove(name) {
            self.statement_bytes -= name.len() + old.text.len() + ENTRY_OVERHEAD;
        }
    }

    /// The batch of what a Bind of `statement` relies on.
    pub fn statement_batch(&self, statement: &str) -> Option<u64> {
        self.statements.get(statement).map(|s| s.batch)
    }

    /// The batch of what an Execute of `portal` relies on.
    pub fn portal_batch(&self, portal: &str) -> Option<u64> {
        self.portals.get(portal).map(|p| p.batch)
    }

    /// A Bind in `batch`; parameters are rendered once, within `budget` bytes in all.
    /// `Err` when it would open more than [`MAX_PORTALS`] named portals.
    pub fn bound(
        &mut self,
        bind: &BindMessage<'_>,
        batch: u64,
        budget: usize,
    ) -> Result<(), String> {
        if !bind.portal.is_empty()
            && !self.portals.contains_key(bind.portal)
            && self.portals.len() - usize::from(self.portals.contains_key("")) >= MAX_PORTALS
        {
            return Err(format!(
                "more than {MAX_PORTALS} portals are open; close portals (or end the transaction) before binding more"
            ));
        }
        let statement = self
            .statements
            .get(bind.statement)
            .cloned()
            .unwrap_or_else(|| Statement {
                text: unknown_statement(bind.statement).into(),
                kind: "EXECUTE".into(),
                batch,
                generation: 0,
                flags: Arc::from([]),
            });
        if self.failed.contains(&batch) {
            // Its batch already failed: the server may have skipped it.
            self.portals.remove(bind.portal);
            return Ok(());
        }
        // Each parameter costs at least a few bytes of the record, NULLs too.
        let mut left = budget;
        let params = bind
            .params
            .iter()
            .take(MAX_RECORDED_PARAMS)
            .map(|(value, binary)| {
                left = left.saturating_sub(8);
                value.map(|v| render(v, *binary, &mut left))
            })
            .collect();
        self.portals.insert(
            bind.portal.to_owned(),
            Portal {
                statement,
                params: Arc::new(params),
                statement_name: bind.statement.into(),
                param_count: bind.params.len(),
                batch,
            },
        );
        Ok(())
    }

    /// What an Execute of `portal` runs (a portal the gateway never saw bound, or no
    /// longer knows for sure, is recorded by name).
    pub fn execute(&self, portal: &str) -> Portal {
        self.portals.get(portal).cloned().unwrap_or_else(|| Portal {
            statement: Statement {
                text: format!(
                    "<portal {portal:?}: not bound in this session, or not known for sure (an error or a cursor statement came between)>"
                )
                .into(),
                kind: "EXECUTE".into(),
                batch: 0,
                generation: 0,
                flags: Arc::from([]),
            },
            params: Arc::default(),
            statement_name: "".into(),
            param_count: 0,
            batch: 0,
        })
    }

    /// A Close of a statement (`b'S'`) or portal (`b'P'`).
    pub fn closed(&mut self, kind: u8, name: &str) {
        match kind {
            b'S' => self.forget_statement(name),
            _ => {
                self.portals.remove(name);
            }
        }
    }

    /// Whether the server reported an error in `batch` (as far as the relay has told).
    pub fn has_failed(&self, batch: u64) -> bool {
        self.failed.contains(&batch)
    }

    /// The server reported an error in `batch`: it skipped the rest of that batch, so
    /// what the batch made is not known for sure.
    pub fn errored(&mut self, batch: u64) {
        self.failed.insert(batch);
        if self.failed.len() > MAX_FAILED {
            // Forget the oldest half, and everything made up to it.
            let keep = self.failed.split_off(
                &self
                    .failed
                    .iter()
                    .nth(MAX_FAILED / 2)
                    .copied()
                    .unwrap_or(batch),
            );
            let upto = self.failed.last().copied().unwrap_or(0);
            self.failed = keep;
            let stale: Vec<String> = self
                .statements
                .iter()
                .filter(|(_, s)| s.batch <= upto)
                .map(|(n, _)| n.clone())
                .collect();
            for name in stale {
                self.forget_statement(&name);
            }
            self.portals.retain(|_, p| p.batch > upto);
        }
        let stale: Vec<String> = self
            .statements
            .iter()
            .filter(|(_, s)| s.batch == batch)
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            self.forget_statement(&name);
        }
        self.portals.retain(|_, p| p.batch != batch);
    }

    /// A statement of `kind` was forwarded to run: SQL-level statement names and cursors
    /// share the protocol's names, and transactions end portals.
    pub fn ran(&mut self, kind: &str) {
        let touches_statements = ["PREPARE", "DEALLOCATE", "DISCARD"]
            .iter()
            .any(|k| kind.contains(k));
        if touches_statements {
            self.statements.clear();
            self.statement_bytes = 0;
        }
        let keeps_portals = kind.split(", ").all(|k| {
            matches!(
                k,
                "SELECT" | "SHOW" | "EXPLAIN" | "EXPLAIN ANALYZE" | "FETCH" | "SET" | "RESET"
            )
        });
        if !keeps_portals {
            self.portals.retain(|name, _| name.is_empty());
        }
    }
}

fn unknown_statement(name: &str) -> String {
    format!("<prepared statement {name:?}: not prepared by a Parse the gateway allowed, or not known for sure (SQL PREPARE, a denied Parse, an error)>")
}

/// A parameter value as the trail shows it: text-format values as text, binary ones
/// as `\x` and hex; cut (with "...") when `left` runs out, control characters counted
/// as the six bytes JSON escapes them to.
fn render(value: &[u8], binary: bool, left: &mut usize) -> String {
    let mut out = String::new();
    let mut push = |out: &mut String, c: char, cost: usize| {
        if cost > *left {
            return false;
        }
        *left -= cost;
        out.push(c);
        true
    };
    if !binary {
        if let Ok(text) = std::str::from_utf8(value) {
            for c in text.chars() {
                let cost = if c.is_control() { 6 } else { c.len_utf8() };
                if !push(&mut out, c, cost) {
                    out.push_str("...");
                    return out;
                }
            }
            return out;
        }
    }
    out.push_str("\\x");
    for b in value {
        if *left < 2 {
            out.push_str("...");
            return out;
        }
        *left -= 2;
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executes_are_tied_to_their_statement_and_parameters() {
        let mut p = Portals::default();
        p.parsed("s1", "SELECT $1::int", "SELECT", 1, &[]);
        let bind = BindMessage {
            portal: "",
            statement: "s1",
            params: vec![
                (Some(&b"42"[..]), false),
                (None, false),
                (Some(&[0, 1][..]), true),
            ],
        };
        p.bound(&bind, 2, 1024).unwrap();
        let run = p.execute("");
        assert_eq!(&*run.statement.text, "SELECT $1::int");
        assert_eq!(
            *run.params,
            vec![Some("42".into()), None, Some("\\x0001".into())]
        );
        assert!(p.execute("other").statement.text.contains("not bound"));
        // A named Parse over an existing name keeps the old statement (42P05).
        p.parsed("s1", "SELECT 'other'", "SELECT", 3, &[]);
        assert_eq!(&*p.execute("").statement.text, "SELECT $1::int");
        // A denied named Parse keeps it too; a denied unnamed one drops the unnamed.
        p.parse_denied("s1");
        assert_eq!(p.statement_batch("s1"), Some(1));
        // An error in batch 2 forgets what batch 2 bound, not what batch 1 parsed.
        p.errored(2);
        assert!(p.execute("").statement.text.contains("not known for sure"));
        assert_eq!(p.statement_batch("s1"), Some(1));
        // SQL-level DEALLOCATE shares the names: nothing is known for sure after it.
        p.ran("DEALLOCATE");
        p.bound(&bind, 4, 1024).unwrap();
        assert!(p.execute("").statement.text.contains("not prepared"));
        assert_eq!(p.statement_bytes, 0);
    }

    #[test]
    fn prepared_text_and_portals_are_bounded() {
        let mut p = Portals::default();
        let big = "x".repeat(MAX_PREPARED_BYTES / 2 - ENTRY_OVERHEAD - 1);
        p.parsed("a", &big, "SELECT", 1, &[]);
        assert!(p.fits("b", &big));
        p.parsed("b", &big, "SELECT", 1, &[]);
        assert!(!p.fits("c", "SELECT 1"));
        assert!(check_name(&"n".repeat(63)).is_ok());
        assert!(check_name(&"n".repeat(64)).is_err());
        // Parameters are cut to the budget of their Bind, whatever their number.
        let huge = vec![b'\x01'; 70_000];
        let many: Vec<(Option<&[u8]>, bool)> = (0..100).map(|_| (Some(&huge[..]), false)).collect();
        let bind = BindMessage {
            portal: "",
            statement: "a",
            params: many,
        };
        p.bound(&bind, 2, 16 << 10).unwrap();
        let rendered: usize = p.execute("").params.iter().flatten().map(|v| v.len()).sum();
        assert!(rendered < 16 << 10, "{rendered}");
        for i in 0..MAX_PORTALS {
            let name = format!("p{i}");
            let bind = BindMessage {
                portal: &name,
                statement: "a",
                params: vec![],
            };
            p.bound(&bind, 3, 1024).unwrap();
        }
        let bind = BindMessage {
            portal: "one-more",
            statement: "a",
            params: vec![],
        };
        assert!(p.bound(&bind, 3, 1024).is_err());
    }
}
