//! DBA rules: rule files a `[[grant]]` references (`rules = ["rules/no-sleep.toml"]`)
//! that narrow what the read-only floor allows, decided on the same statement facts
//! for Postgres and MySQL.
//!
//! A rule file holds `[[rule]]` entries, each with an `id`, a `message` shown to the
//! agent with every denial it causes, and what it denies:
//!
//! ```toml
//! [[rule]]
//! id      = "no-sleep"
//! message = "sleeping and CPU-burning functions are not available to agents"
//! deny    = { functions = ["pg_sleep", "pg_sleep_for", "pg_sleep_until", "sleep", "benchmark"] }
//!
//! [[rule]]
//! id      = "no-payroll"
//! message = "payroll tables are not available to agents"
//! deny    = { tables = ["hr.salaries", "hr.bonuses"] }
//! ```
//!
//! Matching fails closed: names compare case-insensitively; a rule naming
//! `schema.name` also matches an unqualified `name` (the search path may resolve it
//! there), and an unqualified rule name matches the name in any schema. Tables are
//! matched wherever a statement names them (joins, subqueries, CTE bodies); functions
//! wherever they are called, including field-selection calls (`(t).f`). Views are
//! matched by the name written, not by what they read.
//!
//! Files are parsed strictly: unknown keys, a missing `id` or `message`, a rule that
//! denies nothing, or duplicate ids are errors naming the file (and, from the TOML
//! parser, the line and key).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::sql::{QualifiedName, StatementFacts};

/// The rules of one grant, from its rule files in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub message: String,
    /// The file it came from, for `sqlgate rules check` and logs.
    pub file: PathBuf,
    pub deny_functions: Vec<Name>,
    pub deny_tables: Vec<Name>,
}

/// A name as a rule writes it, lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub schema: Option<String>,
    pub name: String,
}

impl Name {
    fn parse(text: &str) -> Result<Name, String> {
        let parts: Vec<&str> = text.split('.').collect();
        let ok = |s: &&str| !s.is_empty() && !s.contains(char::is_whitespace);
        match parts.as_slice() {
            [name] if ok(name) => Ok(Name {
                schema: None,
                name: name.to_lowercase(),
            }),
            [schema, name] if ok(schema) && ok(name) => Ok(Name {
                schema: Some(schema.to_lowercase()),
                name: name.to_lowercase(),
            }),
            _ => Err(format!(
                "{text:?} is not a name or schema.name (no spaces, no quotes)"
            )),
        }
    }

    /// Whether a reference a statement makes may be what this rule names.
    fn matches(&self, reference: &QualifiedName) -> bool {
        if !reference.name.eq_ignore_ascii_case(&self.name) {
            return false;
        }
        match (&self.schema, &reference.schema) {
            (Some(rule), Some(written)) => rule.eq_ignore_ascii_case(written),
            // Unqualified on either side: it may be the same object.
            _ => true,
        }
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A statement a rule denies: which rule, and why in the DBA's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDenial {
    pub rule: String,
    pub message: String,
    /// What the statement named that the rule covers (`function pg_sleep`).
    pub matched: String,
}

impl RuleDenial {
    /// One line for the agent and the audit trail.
    pub fn reason(&self) -> String {
        format!(
            "denied by rule {:?} ({}): {}",
            self.rule, self.matched, self.message
        )
    }
}

impl RuleSet {
    /// Loads a grant's rule files (paths relative to `base`, the config's directory).
    pub fn load(files: &[PathBuf], base: &Path) -> Result<RuleSet, String> {
        let mut set = RuleSet::default();
        for file in files {
            let path = if file.is_absolute() {
                file.clone()
            } else {
                base.join(file)
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("rule file {}: {e}", path.display()))?;
            let raw: RawFile =
                toml::from_str(&text).map_err(|e| format!("rule file {}: {e}", path.display()))?;
            for (i, r) in raw.rule.into_iter().enumerate() {
                let at = |what: &str| format!("rule file {}, rule[{i}]: {what}", path.display());
                if r.id.trim().is_empty() {
                    return Err(at("id is empty"));
                }
                if r.message.trim().is_empty() {
                    return Err(at("message is empty: it is what the agent reads"));
                }
                if set.rules.iter().any(|x| x.id == r.id) {
                    return Err(at(&format!("id {:?} is used twice", r.id)));
                }
                let names = |list: &[String]| -> Result<Vec<Name>, String> {
                    list.iter()
                        .map(|n| Name::parse(n).map_err(|e| at(&e)))
                        .collect()
                };
                let rule = Rule {
                    deny_functions: names(&r.deny.functions)?,
                    deny_tables: names(&r.deny.tables)?,
                    id: r.id,
                    message: r.message,
                    file: path.clone(),
                };
                if rule.deny_functions.is_empty() && rule.deny_tables.is_empty() {
                    return Err(at("deny names no functions and no tables"));
                }
                set.rules.push(rule);
            }
        }
        Ok(set)
    }

    /// The first rule that denies this statement, if any.
    pub fn check(&self, facts: &StatementFacts) -> Option<RuleDenial> {
        let tree = &facts.tree;
        let selected: Vec<QualifiedName> = tree
            .selected_names
            .iter()
            .map(|n| QualifiedName {
                schema: None,
                name: n.clone(),
            })
            .collect();
        for rule in &self.rules {
            let function = tree.functions.iter().chain(&selected).find_map(|f| {
                rule.deny_functions
                    .iter()
                    .find(|n| n.matches(f))
                    .map(|_| format!("function {f}"))
            });
            let table = || {
                tree.tables.iter().find_map(|t| {
                    rule.deny_tables
                        .iter()
                        .find(|n| n.matches(t))
                        .map(|_| format!("table {t}"))
                })
            };
            if let Some(matched) = function.or_else(table) {
                return Some(RuleDenial {
                    rule: rule.id.clone(),
                    message: rule.message.clone(),
                    matched,
                });
            }
        }
        None
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    message: String,
    deny: RawDeny,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDeny {
    #[serde(default)]
    functions: Vec<String>,
    #[serde(default)]
    tables: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(schema: Option<&str>, name: &str) -> QualifiedName {
        QualifiedName {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    #[test]
    fn names_match_failing_closed() {
        let rule = Name::parse("HR.Salaries").unwrap();
        assert!(rule.matches(&q(Some("hr"), "salaries")));
        assert!(rule.matches(&q(None, "SALARIES")));
        assert!(!rule.matches(&q(Some("public"), "salaries")));
        assert!(!rule.matches(&q(Some("hr"), "bonuses")));
        let any = Name::parse("sleep").unwrap();
        assert!(any.matches(&q(Some("pg_catalog"), "sleep")));
        assert!(Name::parse("a.b.c").is_err());
        assert!(Name::parse("a b").is_err());
        assert!(Name::parse("").is_err());
    }

    #[test]
    fn files_are_parsed_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).unwrap();
            PathBuf::from(name)
        };
        let good = write(
            "good.toml",
            "[[rule]]\nid = \"no-sleep\"\nmessage = \"no\"\ndeny = { functions = [\"pg_sleep\"] }\n",
        );
        let set = RuleSet::load(std::slice::from_ref(&good), dir.path()).unwrap();
        assert_eq!(set.rules[0].deny_functions[0].name, "pg_sleep");
        let unknown = write(
            "unknown.toml",
            "[[rule]]\nid = \"x\"\nmessage = \"m\"\ndeny = { colums = [\"a\"] }\n",
        );
        let e = RuleSet::load(&[unknown], dir.path()).unwrap_err();
        assert!(
            e.contains("unknown.toml") && e.contains("colums") && e.contains("line"),
            "{e}"
        );
        let empty = write(
            "empty.toml",
            "[[rule]]\nid = \"x\"\nmessage = \"m\"\ndeny = {}\n",
        );
        assert!(RuleSet::load(&[empty], dir.path())
            .unwrap_err()
            .contains("names no functions"));
        let twice = RuleSet::load(&[good.clone(), good], dir.path()).unwrap_err();
        assert!(twice.contains("used twice"), "{twice}");
        assert!(RuleSet::load(&[PathBuf::from("missing.toml")], dir.path())
            .unwrap_err()
            .contains("missing.toml"));
    }
}
