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
        // Quotes, backticks and wildcards would make a name that never matches.
        let ok = |s: &&str| {
            !s.is_empty()
                && !s.contains(char::is_whitespace)
                && !s.contains(['"', '`', '\'', '*', '%', '?'])
        };
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
                "{text:?} is not a name or schema.name (no spaces, quotes or wildcards: list each name)"
            )),
        }
    }

    /// Whether a reference a statement makes may be what this rule names. A reference
    /// qualified with `own_schema` (MySQL: the session's database) counts as unqualified.
    fn matches(&self, reference: &QualifiedName, own_schema: Option<&str>) -> bool {
        // Rule names are stored lowercased (Unicode); fold the reference the same way.
        if reference.name.to_lowercase() != self.name {
            return false;
        }
        let written = reference
            .schema
            .as_deref()
            .filter(|s| own_schema.is_none_or(|own| !own.eq_ignore_ascii_case(s)));
        match (&self.schema, written) {
            (Some(rule), Some(written)) => *rule == written.to_lowercase(),
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
            if set.rules.iter().all(|r| r.file != path) {
                return Err(format!(
                    "rule file {} holds no [[rule]]: a grant that references it would be narrowed by nothing",
                    path.display()
                ));
            }
        }
        Ok(set)
    }

    /// The first rule that denies a reference to `table` (a command that names a table
    /// outside any statement, like MySQL's COM_FIELD_LIST).
    pub fn denies_table(
        &self,
        table: &QualifiedName,
        own_schema: Option<&str>,
    ) -> Option<RuleDenial> {
        self.rules.iter().find_map(|rule| {
            rule.deny_tables
                .iter()
                .any(|n| n.matches(table, own_schema))
                .then(|| RuleDenial {
                    rule: rule.id.clone(),
                    message: rule.message.clone(),
                    matched: format!("table {table}"),
                })
        })
    }

    /// The first rule that denies this statement, if any. `own_schema`: the session's
    /// database on MySQL (a name qualified with it is as good as unqualified).
    pub fn check(&self, facts: &StatementFacts, own_schema: Option<&str>) -> Option<RuleDenial> {
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
                    .find(|n| n.matches(f, own_schema))
                    .map(|_| format!("function {f}"))
            });
            let table = || {
                tree.tables.iter().find_map(|t| {
                    if !rule.deny_tables.is_empty() && holds_sampled_values(t) {
                        // Planner statistics and TOAST hold values of every table,
                        // the denied ones included.
                        return Some(format!(
                            "{t}, which holds sampled or stored values of the tables this rule denies"
                        ));
                    }
                    rule.deny_tables
                        .iter()
                        .find(|n| n.matches(t, own_schema))
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

/// Relations that show values of other tables: Postgres planner statistics
/// (`pg_stats*`: most common values, histogram bounds) and TOAST storage, MySQL
/// column histograms.
fn holds_sampled_values(t: &QualifiedName) -> bool {
    let name = t.name.to_lowercase();
    let schema = t.schema.as_deref().map(str::to_lowercase);
    matches!(
        name.as_str(),
        "pg_stats" | "pg_stats_ext" | "pg_stats_ext_exprs" | "column_statistics"
    ) || schema.as_deref() == Some("pg_toast")
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
        assert!(rule.matches(&q(Some("hr"), "salaries"), None));
        assert!(rule.matches(&q(None, "SALARIES"), None));
        assert!(!rule.matches(&q(Some("public"), "salaries"), None));
        assert!(!rule.matches(&q(Some("hr"), "bonuses"), None));
        // MySQL: the session's own database is as good as no qualifier.
        assert!(rule.matches(&q(Some("shop"), "salaries"), Some("shop")));
        assert!(!rule.matches(&q(Some("other"), "salaries"), Some("shop")));
        // Non-ASCII names fold the same way on both sides.
        let unicode = Name::parse("Зарплаты").unwrap();
        assert!(unicode.matches(&q(None, "Зарплаты"), None));
        assert!(unicode.matches(&q(None, "ЗАРПЛАТЫ"), None));
        let any = Name::parse("sleep").unwrap();
        assert!(any.matches(&q(Some("pg_catalog"), "sleep"), None));
        for dead in [
            "a.b.c",
            "a b",
            "",
            "\"Salaries\"",
            "`t`",
            "pg_sleep*",
            "hr.*",
            "'t'",
        ] {
            assert!(Name::parse(dead).is_err(), "{dead}");
        }
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
        let nothing = write("nothing.toml", "# only comments\n");
        assert!(RuleSet::load(&[nothing], dir.path())
            .unwrap_err()
            .contains("holds no [[rule]]"));
        let twice = RuleSet::load(&[good.clone(), good], dir.path()).unwrap_err();
        assert!(twice.contains("used twice"), "{twice}");
        assert!(RuleSet::load(&[PathBuf::from("missing.toml")], dir.path())
            .unwrap_err()
            .contains("missing.toml"));
    }
}
