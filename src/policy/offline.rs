//! Statements decided without a session, for `sqlgate rules test`: the read-only floor
//! of the connection's dialect, the setting caps, then the grant's DBA rules — the same
//! functions the gateway's statement gate calls, in the same order.
//!
//! What differs from a live session: the Postgres function catalog is read once by the
//! caller (without it every function is unknown and the floor denies it), and MySQL
//! stored functions are not listed; everything else is decided as the gateway would.

use crate::config::{ConnectionConfig, GrantConfig, Limits, Protocol};
use crate::policy::readonly::Verdict;
use crate::sql::ClassifyError;

/// One statement's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub text: String,
    pub kind: String,
    pub allowed: bool,
    /// The DBA rule that denied it, if a rule did.
    pub rule: Option<String>,
    pub reason: Option<String>,
}

/// Decides every statement of `sql` for a session of `grant` on `conn`.
pub fn decide(
    sql: &str,
    conn: &ConnectionConfig,
    grant: &GrantConfig,
    limits: &Limits,
    catalog: Option<&crate::catalog::FunctionCatalog>,
) -> Result<Vec<Outcome>, ClassifyError> {
    let (facts, own_schema) = match conn.protocol {
        Protocol::Postgres => (
            crate::sql::postgres::classify(sql, limits.max_statement_bytes)?,
            None,
        ),
        Protocol::Mysql => (
            crate::sql::mysql::classify(sql, limits.max_statement_bytes)?,
            Some(conn.database.as_str()),
        ),
    };
    Ok(facts
        .iter()
        .map(|f| {
            let floor = match conn.protocol {
                Protocol::Postgres => {
                    match crate::policy::readonly::decide_reviewed(f, catalog, &|schema, name| {
                        grant.rules.reviews_function(schema, name)
                    }) {
                        Verdict::Allow => match limits.setting_caps.check(f) {
                            Ok(()) => Verdict::Allow,
                            Err(reason) => Verdict::Deny { reason },
                        },
                        deny => deny,
                    }
                }
                Protocol::Mysql => crate::policy::mysql::decide(f, &conn.database),
            };
            let (allowed, rule, reason) = match floor {
                Verdict::Deny { reason } => (false, None, Some(reason)),
                Verdict::Allow => {
                    match crate::policy::rules::verdict(&grant.rules, f, catalog, own_schema) {
                        Err(denial) => (false, Some(denial.rule.clone()), Some(denial.reason())),
                        Ok(()) => (true, None, None),
                    }
                }
            };
            Outcome {
                text: f.text.clone(),
                kind: f.kind.label(),
                allowed,
                rule,
                reason,
            }
        })
        .collect())
}

/// What a test file expects of the statements after an `-- expect:` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expectation {
    Allow,
    /// Denied, by this rule if one is named.
    Deny(Option<String>),
}

impl Expectation {
    /// Reads `allow`, `deny` or `deny RULE-ID`.
    pub fn parse(text: &str) -> Result<Expectation, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["allow"] => Ok(Expectation::Allow),
            ["deny"] => Ok(Expectation::Deny(None)),
            ["deny", rule] => Ok(Expectation::Deny(Some((*rule).to_owned()))),
            _ => Err(format!(
                "-- expect: {text:?}: write `allow`, `deny` or `deny RULE-ID`"
            )),
        }
    }

    pub fn met_by(&self, outcome: &Outcome) -> bool {
        match self {
            Expectation::Allow => outcome.allowed,
            Expectation::Deny(None) => !outcome.allowed,
            Expectation::Deny(Some(rule)) => outcome.rule.as_deref() == Some(rule),
        }
    }
}

/// Splits a test file into chunks of SQL, each with the expectation of the
/// `-- expect:` line before it (none before the first one).
pub fn chunks(file: &str) -> Result<Vec<(Option<Expectation>, String)>, String> {
    let mut out: Vec<(Option<Expectation>, String)> = vec![(None, String::new())];
    for (n, line) in file.lines().enumerate() {
        if let Some(rest) = line.trim_start().strip_prefix("-- expect:") {
            let expectation =
                Expectation::parse(rest.trim()).map_err(|e| format!("line {}: {e}", n + 1))?;
            out.push((Some(expectation), String::new()));
        } else if let Some((_, sql)) = out.last_mut() {
            sql.push_str(line);
            sql.push('\n');
        }
    }
    Ok(out
        .into_iter()
        .filter(|(_, sql)| !sql.trim().is_empty())
        .collect())
}
