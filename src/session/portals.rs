//! The Postgres extended protocol as the audit trail needs it: which statement text
//! and which bound parameters each Execute runs.
//!
//! A Parse the gate allowed names a prepared statement; a Bind makes a portal of a
//! prepared statement and parameter values; an Execute runs a portal. The relay
//! forwards Bind, Execute and Close as they are (they only refer to statements that
//! passed a Parse) and tells [`Portals`] about them, so each Execute gets its own
//! `statement` record with the text and the parameters. Names the gateway never saw
//! parsed (an SQL-level `PREPARE`, or a statement whose Parse was denied and so does
//! not exist upstream) are recorded by name: every forwarded Execute has a record.
//!
//! Memory is bounded: prepared statement texts by [`MAX_PREPARED_BYTES`] (a Parse
//! beyond it is denied), named portals by [`MAX_PORTALS`] (a Bind beyond it ends the
//! session; no driver keeps that many open).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use sqlgate_postgres::frontend::BindMessage;

/// Text of prepared statements held per session, in bytes.
pub const MAX_PREPARED_BYTES: usize = 32 << 20;
/// Named portals open at once per session.
pub const MAX_PORTALS: usize = 4096;

/// A prepared statement the gate allowed: its text and kind.
#[derive(Debug, Clone)]
pub struct Statement {
    pub text: Arc<str>,
    pub kind: Arc<str>,
}

/// What an Execute of a portal runs.
#[derive(Debug, Clone)]
pub struct Portal {
    pub statement: Statement,
    pub params: Vec<Option<String>>,
}

#[derive(Default)]
pub struct Portals {
    statements: HashMap<String, Statement>,
    statement_bytes: usize,
    portals: HashMap<String, Portal>,
}

impl Portals {
    /// Whether a Parse of `text` under `name` fits the bound.
    pub fn fits(&self, name: &str, text: &str) -> bool {
        let replaced = self.statements.get(name).map_or(0, |s| s.text.len());
        self.statement_bytes - replaced + text.len() <= MAX_PREPARED_BYTES
    }

    /// An allowed Parse.
    pub fn parsed(&mut self, name: &str, text: &str, kind: &str) {
        self.forget_statement(name);
        self.statement_bytes += text.len();
        self.statements.insert(
            name.to_owned(),
            Statement {
                text: text.into(),
                kind: kind.into(),
            },
        );
    }

    /// A denied Parse: the name no longer refers to anything upstream.
    pub fn forget_statement(&mut self, name: &str) {
        if let Some(old) = self.statements.remove(name) {
            self.statement_bytes -= old.text.len();
        }
    }

    /// A Bind; `Err` when it would open more than [`MAX_PORTALS`] named portals.
    pub fn bound(&mut self, bind: &BindMessage<'_>) -> Result<(), String> {
        if !bind.portal.is_empty()
            && !self.portals.contains_key(bind.portal)
            && self.portals.len() >= MAX_PORTALS
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
            });
        let params = bind
            .params
            .iter()
            .map(|(value, binary)| value.map(|v| render(v, *binary)))
            .collect();
        self.portals
            .insert(bind.portal.to_owned(), Portal { statement, params });
        Ok(())
    }

    /// What an Execute of `portal` runs (a portal the gateway never saw bound is
    /// recorded by name).
    pub fn execute(&self, portal: &str) -> Portal {
        self.portals.get(portal).cloned().unwrap_or_else(|| Portal {
            statement: Statement {
                text: format!("<portal {portal:?}, not bound in this session>").into(),
                kind: "EXECUTE".into(),
            },
            params: Vec::new(),
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
}

fn unknown_statement(name: &str) -> String {
    format!("<prepared statement {name:?}: not prepared by a Parse the gateway allowed (SQL PREPARE, or a denied Parse)>")
}

/// A parameter value as the trail shows it: text-format values as text, binary ones
/// as `\x` and hex.
fn render(value: &[u8], binary: bool) -> String {
    if !binary {
        if let Ok(text) = std::str::from_utf8(value) {
            return text.to_owned();
        }
    }
    let mut hex = String::with_capacity(2 + value.len() * 2);
    hex.push_str("\\x");
    for b in value {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executes_are_tied_to_their_statement_and_parameters() {
        let mut p = Portals::default();
        p.parsed("s1", "SELECT $1::int", "SELECT");
        let bind = BindMessage {
            portal: "",
            statement: "s1",
            params: vec![
                (Some(&b"42"[..]), false),
                (None, false),
                (Some(&[0, 1][..]), true),
            ],
        };
        p.bound(&bind).unwrap();
        let run = p.execute("");
        assert_eq!(&*run.statement.text, "SELECT $1::int");
        assert_eq!(
            run.params,
            vec![Some("42".into()), None, Some("\\x0001".into())]
        );
        assert!(p.execute("other").statement.text.contains("not bound"));
        p.forget_statement("s1");
        p.bound(&bind).unwrap();
        assert!(p.execute("").statement.text.contains("not prepared"));
        assert_eq!(p.statement_bytes, 0);
    }

    #[test]
    fn prepared_text_and_portals_are_bounded() {
        let mut p = Portals::default();
        let big = "x".repeat(MAX_PREPARED_BYTES / 2);
        p.parsed("a", &big, "SELECT");
        assert!(p.fits("a", &big));
        p.parsed("b", &big, "SELECT");
        assert!(!p.fits("c", "SELECT 1"));
        assert!(p.fits("b", "SELECT 1"));
        for i in 0..MAX_PORTALS {
            let name = format!("p{i}");
            let bind = BindMessage {
                portal: &name,
                statement: "a",
                params: vec![],
            };
            p.bound(&bind).unwrap();
        }
        let bind = BindMessage {
            portal: "one-more",
            statement: "a",
            params: vec![],
        };
        assert!(p.bound(&bind).is_err());
    }
}
