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
    pub deny_columns: Vec<ColumnName>,
}

/// A column a rule denies: `[schema.]table.column`, lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnName {
    pub table: Name,
    pub column: String,
}

impl ColumnName {
    fn parse(text: &str) -> Result<ColumnName, String> {
        let bad = || {
            format!(
                "{text:?} is not a column: write table.column or schema.table.column (no quotes or wildcards)"
            )
        };
        let (table, column) = text.rsplit_once('.').ok_or_else(bad)?;
        let table = Name::parse(table).map_err(|_| bad())?;
        let column = Name::parse(column).map_err(|_| bad())?;
        Ok(ColumnName {
            table,
            column: column.name,
        })
    }
}

impl std::fmt::Display for ColumnName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.table, self.column)
    }
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
                    deny_columns: r
                        .deny
                        .columns
                        .iter()
                        .map(|n| ColumnName::parse(n).map_err(|e| at(&e)))
                        .collect::<Result<_, _>>()?,
                    id: r.id,
                    message: r.message,
                    file: path.clone(),
                };
                if rule.deny_functions.is_empty()
                    && rule.deny_tables.is_empty()
                    && rule.deny_columns.is_empty()
                {
                    return Err(at("deny names no functions, tables or columns"));
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
                    let covers_values = !rule.deny_tables.is_empty() || !rule.deny_columns.is_empty();
                    if covers_values && holds_sampled_values(t) {
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
            let column = || {
                rule.deny_columns
                    .iter()
                    .find_map(|c| column_read(facts, c, own_schema))
            };
            if let Some(matched) = function.or_else(table).or_else(column) {
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

/// How a statement may read column `c`, if it names its table: by name anywhere
/// (select list, WHERE, JOIN, ORDER BY, function arguments, `USING`, `(t).c`, the
/// functional notation `c(t)`), through a `*` over the table, as part of a whole row
/// (`SELECT t`, `row_to_json(t)`), through column aliases that rename the table's
/// columns (`t AS x(a, b)`), or a `NATURAL JOIN`. A column of the same name in another
/// table of the same statement counts too: the gateway does not resolve which table an
/// unqualified name belongs to, so it fails closed.
fn column_read(facts: &StatementFacts, c: &ColumnName, own_schema: Option<&str>) -> Option<String> {
    let tree = &facts.tree;
    let table = tree
        .tables
        .iter()
        .find(|t| c.table.matches(t, own_schema))?;
    let is_column = |n: &String| n.to_lowercase() == c.column;
    let how = if tree
        .star_tables
        .iter()
        .any(|t| c.table.matches(t, own_schema))
    {
        "through a * over the table"
    } else if tree
        .column_names
        .iter()
        .chain(&tree.selected_names)
        .any(is_column)
        || tree
            .functions
            .iter()
            .any(|f| f.schema.is_none() && is_column(&f.name))
    {
        "by name"
    } else if tree
        .single_names
        .iter()
        .any(|n| n.eq_ignore_ascii_case(&table.name) || tree.aliases.iter().any(|a| a == n))
    {
        "as part of a whole row"
    } else if tree.column_aliases {
        "through column aliases that rename the table's columns"
    } else if tree.natural_join {
        "through a NATURAL JOIN, which compares every column the sides share"
    } else {
        return None;
    };
    Some(format!("column {c}, {how}"))
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
    #[serde(default)]
    columns: Vec<String>,
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
            .contains("names no functions, tables or columns"));
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

    fn pii() -> RuleSet {
        RuleSet {
            rules: vec![Rule {
                id: "no-pii".into(),
                message: "PII columns are not available to agents".into(),
                file: PathBuf::from("pii.toml"),
                deny_functions: vec![],
                deny_tables: vec![],
                deny_columns: vec![ColumnName::parse("public.users.ssn").unwrap()],
            }],
        }
    }

    /// Column rules on Postgres: every way to read `users.ssn` is denied, its
    /// neighbours (other columns of users, ssn of other tables) are allowed.
    #[test]
    fn postgres_column_rules_see_every_way_to_read_the_column() {
        let rules = pii();
        let decide = |sql: &str| {
            let facts = crate::sql::postgres::classify(sql, 1 << 20).unwrap();
            facts.iter().find_map(|f| rules.check(f, None))
        };
        for sql in [
            "SELECT ssn FROM users",
            "SELECT u.ssn FROM users u",
            "SELECT public.users.ssn FROM public.users",
            "SELECT \"ssn\" FROM users",
            "SELECT id FROM users WHERE ssn LIKE '1%'",
            "SELECT id FROM users ORDER BY ssn",
            "SELECT count(*) FROM users GROUP BY ssn",
            "SELECT id FROM users u JOIN orders o ON o.note = u.ssn",
            "SELECT id FROM users JOIN orders USING (ssn)",
            "SELECT md5(ssn) FROM users",
            "SELECT * FROM users",
            "SELECT u.* FROM users u",
            "SELECT users.* FROM users",
            "SELECT * FROM users JOIN orders ON true",
            "SELECT o.*, u.* FROM orders o, users u",
            "TABLE users",
            "SELECT u FROM users u",
            "SELECT row_to_json(u) FROM users u",
            "SELECT to_jsonb(users) FROM users",
            "SELECT row_to_json(u.*) FROM users u",
            "SELECT (u).ssn FROM users u",
            "SELECT ssn(u) FROM users u",
            "SELECT c FROM users AS x(a, b, c)",
            "SELECT id FROM users NATURAL JOIN orders",
            "WITH u AS (SELECT * FROM users) SELECT ssn FROM u",
            "WITH u AS (SELECT ssn AS x FROM users) SELECT x FROM u",
            "SELECT x FROM (SELECT ssn AS x FROM users) s",
            "SELECT * FROM (SELECT * FROM users) s",
            "SELECT j.* FROM (users JOIN orders ON true) AS j",
            "SELECT (SELECT row_to_json(u.*)) FROM users u",
            "SELECT ARRAY(SELECT ssn FROM users)",
            "SELECT EXISTS (SELECT 1 FROM users WHERE ssn = '1')",
            "COPY users TO STDOUT",
            "COPY users (id, ssn) TO STDOUT",
            "COPY (SELECT * FROM users) TO STDOUT",
            "SELECT most_common_vals FROM pg_stats WHERE tablename = 'users'",
        ] {
            let denial = decide(sql).unwrap_or_else(|| panic!("allowed: {sql}"));
            assert_eq!(denial.rule, "no-pii", "{sql}");
        }
        for sql in [
            "SELECT id, name FROM users",
            "SELECT count(*) FROM users",
            "SELECT u.id FROM users u WHERE u.name = 'a'",
            "SELECT * FROM orders",
            "SELECT ssn FROM orders",
            "SELECT * FROM orders WHERE user_id IN (SELECT id FROM users)",
            "SELECT o.* FROM orders o JOIN users u ON u.id = o.user_id",
            "SELECT * FROM (SELECT id FROM users) s",
            "WITH u AS (SELECT id FROM users) SELECT * FROM u",
            "COPY users (id, name) TO STDOUT",
            "SELECT * FROM public.customers",
        ] {
            assert_eq!(decide(sql), None, "{sql}");
        }
        // The table of another schema is another table.
        assert_eq!(decide("SELECT ssn FROM archive.users"), None);
    }

    #[test]
    fn mysql_column_rules_see_every_way_to_read_the_column() {
        let rules = RuleSet {
            rules: vec![Rule {
                deny_columns: vec![ColumnName::parse("shop.users.ssn").unwrap()],
                ..pii().rules[0].clone()
            }],
        };
        let decide = |sql: &str| {
            let facts = crate::sql::mysql::classify(sql, 1 << 20).unwrap();
            facts.iter().find_map(|f| rules.check(f, Some("shop")))
        };
        for sql in [
            "SELECT ssn FROM users",
            "SELECT `ssn` FROM `users`",
            "SELECT u.SSN FROM shop.users u",
            "SELECT id FROM users WHERE ssn LIKE '1%'",
            "SELECT id FROM users JOIN orders USING (ssn)",
            "SELECT id FROM users NATURAL JOIN orders",
            "SELECT * FROM users",
            "SELECT u.* FROM users u",
            "SELECT * FROM (SELECT * FROM users) s",
            "TABLE users",
            "SELECT JSON_OBJECT('s', ssn) FROM users",
            "WITH u AS (SELECT * FROM users) SELECT ssn FROM u",
        ] {
            let denial = decide(sql).unwrap_or_else(|| panic!("allowed: {sql}"));
            assert_eq!(denial.rule, "no-pii", "{sql}");
        }
        for sql in [
            "SELECT id, name FROM users",
            "SELECT COUNT(*) FROM users",
            "SELECT * FROM orders WHERE user_id IN (SELECT id FROM users)",
            "SELECT o.* FROM orders o JOIN users u ON u.id = o.user_id",
            "SELECT j.id FROM orders o JOIN users j ON TRUE",
            "SELECT ssn FROM orders",
            "SELECT ssn FROM other.users",
        ] {
            assert_eq!(decide(sql), None, "{sql}");
        }
    }

    #[test]
    fn column_names_are_parsed_strictly() {
        let c = ColumnName::parse("Public.Users.SSN").unwrap();
        assert_eq!(c.to_string(), "public.users.ssn");
        assert_eq!(ColumnName::parse("users.ssn").unwrap().table.schema, None);
        for dead in ["ssn", "a.b.c.d", "users.*", "users.\"ssn\"", "users."] {
            assert!(ColumnName::parse(dead).is_err(), "{dead}");
        }
    }
}
