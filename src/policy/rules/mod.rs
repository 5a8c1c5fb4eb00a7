//! DBA rules: rule files a `[[grant]]` references (`rules = ["rules/no-sleep.toml"]`)
//! that narrow what the read-only floor allows, decided on the same statement facts
//! for Postgres and MySQL.
//!
//! A rule file holds `[[rule]]` entries, each with an `id`, a `message` shown to the
//! agent with every denial it causes, what it covers and its `effect` (`deny`, the
//! default, or `audit`: the statement runs and its record is flagged):
//!
//! ```toml
//! [[rule]]
//! id      = "no-pii"
//! message = "PII columns are not available to agents"
//! deny    = { functions = ["pg_sleep"], tables = ["hr.salaries"], columns = ["public.users.ssn"] }
//!
//! [[rule]]
//! id      = "reporting-only"
//! message = "this grant reads the reporting tables only"
//! allow   = { tables = ["public.orders", "reporting.*"], functions = ["reporting.refresh"] }
//!
//! [[rule]]
//! id      = "events-bounded"
//! message = "filter and bound reads of events"
//! require = { tables = ["public.events"], where = true, max_limit = 1000 }
//! ```
//!
//! and optionally `[limits]` ([`RuleLimits`]). This module owns parsing and the deny and
//! allow checks; the `shape` module owns `require` ([`Require`]).
//!
//! Deny matching fails closed: names compare case-insensitively; a rule naming
//! `schema.name` also matches an unqualified `name` (the search path may resolve it
//! there), and an unqualified rule name matches the name in any schema. Tables are
//! matched wherever a statement names them (joins, subqueries, CTE bodies); functions
//! wherever they are called, including field-selection calls (`(t).f`); columns in any
//! position and through every `*` or whole-row form over their table.
//! Views are matched by the name written, not by what they read. Allow-lists compare
//! exactly and see relations with the statement's own CTE names resolved away.
//!
//! Files are parsed strictly: unknown keys, a missing `id` or `message`, a rule that
//! names nothing, or duplicate ids are errors naming the file (and, from the TOML
//! parser, the line and key).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::sql::{QualifiedName, StatementFacts};

mod limits;
mod shape;

use limits::RawLimits;
pub use limits::{Hours, Limit, RuleLimits};
pub use shape::Require;

/// The rules of one grant, from its rule files in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// The `[limits]` of its files (the strictest of each).
    pub limits: RuleLimits,
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
    /// When any rule of a grant has these, every relation a statement reads must be
    /// on one of the grant's allow-lists.
    pub allow_tables: Vec<AllowedName>,
    /// VOLATILE user functions the DBA reviewed (`schema.name`, exact): the read-only
    /// floor lets them be called by name.
    pub allow_functions: Vec<Name>,
    /// Shape requirements on the SELECTs that read some tables.
    pub require: Option<Require>,
    /// What meeting the rule does.
    pub effect: Effect,
}

/// What a rule does to a statement it meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Effect {
    /// Refuse it, naming the rule and its message.
    #[default]
    Deny,
    /// Let it run and flag its audit record with the rule's id (`flagged_by`): for
    /// watching a rule before enforcing it, or for statements to review.
    Audit,
}

/// An allow-list entry: `schema.table`, `table` (in any schema), or `schema.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedName {
    Table(Name),
    Schema(String),
}

impl AllowedName {
    /// Kept as written: allow-lists compare names exactly (see [`AllowedName::allows`]).
    fn parse(text: &str) -> Result<AllowedName, String> {
        if let Some(schema) = text.strip_suffix(".*") {
            return match Name::parse(schema) {
                Ok(Name { schema: None, .. }) => Ok(AllowedName::Schema(schema.to_owned())),
                _ => Err(format!("{text:?} is not schema.*")),
            };
        }
        Name::parse(text)?;
        Ok(AllowedName::Table(match text.split_once('.') {
            Some((schema, name)) => Name {
                schema: Some(schema.to_owned()),
                name: name.to_owned(),
            },
            None => Name {
                schema: None,
                name: text.to_owned(),
            },
        }))
    }

    /// Whether a relation a statement names is this entry. An unqualified name is
    /// resolved by the search path (which grants with allow-lists may not change): it
    /// matches an entry of the same name, but never a `schema.*` entry, since the
    /// gateway cannot tell which schema the server would find it in.
    /// On MySQL (`own_schema`: the session's database) an unqualified name is in the
    /// session's database.
    ///
    /// Names compare exactly, as the server stores them (Postgres folds unquoted names to
    /// lower case before the gateway sees them; quoted `"Orders"` is another table;
    /// MySQL table names can be case-sensitive): a name in another case is not on the
    /// list (write the list in lower case for unquoted Postgres names).
    fn allows(&self, relation: &QualifiedName, own_schema: Option<&str>) -> bool {
        let schema = relation.schema.as_deref().or(own_schema);
        match self {
            AllowedName::Schema(allowed) => schema == Some(allowed.as_str()),
            AllowedName::Table(name) => {
                relation.name == name.name
                    && match (&name.schema, schema) {
                        (Some(rule), Some(s)) => rule == s,
                        (None, _) | (_, None) => true,
                    }
            }
        }
    }
}

impl std::fmt::Display for AllowedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllowedName::Table(name) => name.fmt(f),
            AllowedName::Schema(schema) => write!(f, "{schema}.*"),
        }
    }
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

/// `text` in lower case, character by character (Unicode), as rule names are stored.
fn fold(text: &str) -> String {
    text.chars().flat_map(char::to_lowercase).collect()
}

/// Whether `text` in lower case is `folded` (no allocation: this runs for every name of
/// every statement against every rule).
fn folds_to(text: &str, folded: &str) -> bool {
    if text.is_ascii() {
        // The common case, byte by byte (a length mismatch ends it at once).
        return text.len() == folded.len()
            && text
                .bytes()
                .zip(folded.bytes())
                .all(|(a, b)| a.to_ascii_lowercase() == b);
    }
    text.chars().flat_map(char::to_lowercase).eq(folded.chars())
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
                name: fold(name),
            }),
            [schema, name] if ok(schema) && ok(name) => Ok(Name {
                schema: Some(fold(schema)),
                name: fold(name),
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
        if !folds_to(&reference.name, &self.name) {
            return false;
        }
        let written = reference
            .schema
            .as_deref()
            .filter(|s| own_schema.is_none_or(|own| !own.eq_ignore_ascii_case(s)));
        match (&self.schema, written) {
            (Some(rule), Some(written)) => folds_to(written, rule),
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
            let has_limits = raw.limits.is_some();
            if let Some(limits) = &raw.limits {
                set.limits
                    .merge(limits, &path)
                    .map_err(|e| format!("rule file {}, [limits]: {e}", path.display()))?;
            }
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
                let require = match &r.require {
                    None => None,
                    Some(q) => {
                        if q.tables.is_empty() {
                            return Err(at("require names no tables"));
                        }
                        if !q.where_clause && !q.limit && q.max_limit.is_none() && !q.join_condition
                        {
                            return Err(at(
                                "require asks for nothing: give where = true, limit = true, max_limit = N or join_condition = true",
                            ));
                        }
                        Some(Require {
                            tables: names(&q.tables)?,
                            where_clause: q.where_clause,
                            limit: q.limit,
                            max_limit: q.max_limit,
                            join_condition: q.join_condition,
                        })
                    }
                };
                let mut allow_functions = Vec::new();
                for f in &r.allow.functions {
                    let name = Name::parse(f).map_err(|e| at(&e))?;
                    if name.schema.is_none() {
                        return Err(at(&format!(
                            "allow.functions {f:?} needs its schema (schema.name): the search path must not decide which function is allowed"
                        )));
                    }
                    allow_functions.push(name);
                }
                let rule = Rule {
                    allow_functions,
                    require,
                    effect: match r.effect {
                        RawEffect::Deny => Effect::Deny,
                        RawEffect::Audit => Effect::Audit,
                    },
                    allow_tables: r
                        .allow
                        .tables
                        .iter()
                        .map(|n| AllowedName::parse(n).map_err(|e| at(&e)))
                        .collect::<Result<_, _>>()?,
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
                    && rule.allow_tables.is_empty()
                    && rule.allow_functions.is_empty()
                    && rule.require.is_none()
                {
                    return Err(at(
                        "the rule names nothing: give deny = { functions, tables, columns }, allow = { tables } or require = { tables, ... }",
                    ));
                }
                set.rules.push(rule);
            }
            if !has_limits && set.rules.iter().all(|r| r.file != path) {
                return Err(format!(
                    "rule file {} holds no [[rule]] and no [limits]: a grant that references it would be narrowed by nothing",
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
        self.rules
            .iter()
            .filter(|r| r.effect == Effect::Deny)
            .find_map(|rule| {
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
        let deny: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.effect == Effect::Deny)
            .collect();
        check_rules(&deny, facts, own_schema)
    }

    /// Whether the DBA reviewed the VOLATILE user function `schema.name`
    /// (`allow = { functions = [...] }`).
    pub fn reviews_function(&self, schema: &str, name: &str) -> bool {
        self.rules
            .iter()
            .filter(|r| r.effect == Effect::Deny)
            .any(|r| {
                r.allow_functions
                    .iter()
                    .any(|f| f.schema.as_deref() == Some(schema) && f.name == name)
            })
    }

    /// Whether a verdict may depend on a statement's constants (a required LIMIT: `LIMIT
    /// 10` and `LIMIT ALL` have the same shape): such
    /// verdicts are never cached by statement shape.
    pub fn depends_on_constants(&self) -> bool {
        self.rules.iter().any(|r| {
            r.require
                .as_ref()
                .is_some_and(|q| q.limit || q.max_limit.is_some())
        })
    }

    /// Whether any rule is an allow-list that denies (the grant reads listed tables only).
    pub fn has_allow_lists(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.effect == Effect::Deny && !r.allow_tables.is_empty())
    }

    /// Whether the grant's allow-lists admit a relation a command names outside any
    /// statement (MySQL COM_FIELD_LIST); the denial if not.
    pub fn denies_unlisted(
        &self,
        relation: &QualifiedName,
        own_schema: Option<&str>,
    ) -> Option<RuleDenial> {
        let facts = StatementFacts {
            text: String::new(),
            kind: crate::sql::StatementKind::Show,
            tree: crate::sql::TreeFacts {
                relations: vec![relation.clone()],
                ..Default::default()
            },
        };
        let deny: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.effect == Effect::Deny)
            .collect();
        check_allow_lists(&deny, &facts, own_schema)
    }

    /// The ids of the `effect = "audit"` rules this statement meets: it runs, and its
    /// record says which rules flagged it.
    pub fn flags(&self, facts: &StatementFacts, own_schema: Option<&str>) -> Vec<String> {
        self.rules
            .iter()
            .filter(|r| r.effect == Effect::Audit)
            .filter(|r| check_rules(&[r], facts, own_schema).is_some())
            .map(|r| r.id.clone())
            .collect()
    }
}

/// The verdict of a grant's rules on a statement the read-only floor allowed: the
/// first deny rule that meets it, then, under a table allow-list, any user function it
/// calls that the DBA did not review (its body could read tables the list leaves
/// out). The gateway and `sqlgate rules test` both decide with this.
pub fn verdict(
    rules: &RuleSet,
    facts: &StatementFacts,
    catalog: Option<&crate::catalog::FunctionCatalog>,
    own_schema: Option<&str>,
) -> Result<(), RuleDenial> {
    if let Some(denial) = rules.check(facts, own_schema) {
        return Err(denial);
    }
    let Some(catalog) = catalog.filter(|_| rules.has_allow_lists()) else {
        return Ok(());
    };
    let selected = facts.tree.selected_names.iter().map(|n| QualifiedName {
        schema: None,
        name: n.clone(),
    });
    for f in facts.tree.functions.iter().cloned().chain(selected) {
        let user = catalog.lookup(f.schema.as_deref(), &f.name).find(|info| {
            info.schema != "pg_catalog"
                && info.schema != "information_schema"
                && !rules.reviews_function(&info.schema, &f.name)
        });
        if let Some(info) = user {
            let lists: Vec<&str> = rules
                .rules
                .iter()
                .filter(|r| r.effect == Effect::Deny && !r.allow_tables.is_empty())
                .map(|r| r.id.as_str())
                .collect();
            return Err(RuleDenial {
                rule: lists.join(", "),
                message: "a user-defined function may read tables the allow-list leaves out; \
                          the DBA can review it (allow = { functions = [...] })"
                    .into(),
                matched: format!("function {}.{}", info.schema, f.name),
            });
        }
    }
    Ok(())
}

/// The first of `rules` that denies the statement: deny-lists in order, then the
/// allow-lists among them together.
fn check_rules(
    rules: &[&Rule],
    facts: &StatementFacts,
    own_schema: Option<&str>,
) -> Option<RuleDenial> {
    let tree = &facts.tree;
    let selected: Vec<QualifiedName> = tree
        .selected_names
        .iter()
        .map(|n| QualifiedName {
            schema: None,
            name: n.clone(),
        })
        .collect();
    // Once per statement, not per rule.
    let sampled = tree.tables.iter().find(|t| holds_sampled_values(t));
    for rule in rules {
        let function = tree.functions.iter().chain(&selected).find_map(|f| {
            rule.deny_functions
                .iter()
                .find(|n| n.matches(f, own_schema))
                .map(|_| format!("function {f}"))
        });
        let table = || {
            let covers_values = !rule.deny_tables.is_empty() || !rule.deny_columns.is_empty();
            if let Some(t) = sampled.filter(|_| covers_values) {
                // Planner statistics and TOAST hold values of every table, the denied
                // ones included.
                return Some(format!(
                    "{t}, which holds sampled or stored values of the tables this rule denies"
                ));
            }
            tree.tables.iter().find_map(|t| {
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
        let shape = || {
            rule.require
                .as_ref()
                .and_then(|q| q.unmet(facts, own_schema))
        };
        if let Some(matched) = function.or_else(table).or_else(column).or_else(shape) {
            return Some(RuleDenial {
                rule: rule.id.clone(),
                message: rule.message.clone(),
                matched,
            });
        }
    }
    check_allow_lists(rules, facts, own_schema)
}

/// The allow-lists among `rules`: every relation the statement reads must be on one.
/// Catalog schemas named explicitly (`pg_catalog.`, `information_schema.`) stay as the
/// read-only floor decides, except those that hold other tables' values. The search
/// path may not change: it decides what unqualified names are.
fn check_allow_lists(
    rules: &[&Rule],
    facts: &StatementFacts,
    own_schema: Option<&str>,
) -> Option<RuleDenial> {
    let lists: Vec<&Rule> = rules
        .iter()
        .copied()
        .filter(|r| !r.allow_tables.is_empty())
        .collect();
    let first = lists.first()?;
    let denial = |matched: String| {
        Some(RuleDenial {
            rule: lists
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            message: first.message.clone(),
            matched,
        })
    };
    let sets_search_path = match &facts.kind {
        crate::sql::StatementKind::Set(crate::sql::SetFacts::Value { name, .. }) => {
            name.eq_ignore_ascii_case("search_path")
        }
        _ => false,
    } || facts.tree.set_config_calls.iter().any(|c| {
        c.name
            .as_deref()
            .is_none_or(|n| n.trim().eq_ignore_ascii_case("search_path"))
    });
    if sets_search_path {
        return denial(
            "search_path, which decides what unqualified table names mean under an allow-list"
                .into(),
        );
    }
    for relation in &facts.tree.relations {
        if holds_sampled_values(relation) {
            return denial(format!(
                "{relation}, which holds sampled or stored values of tables the allow-list leaves out"
            ));
        }
        let catalog = relation.schema.as_deref().is_some_and(|s| {
            ["pg_catalog", "information_schema"].contains(&s.to_lowercase().as_str())
        });
        if catalog {
            continue;
        }
        if !lists.iter().any(|r| {
            r.allow_tables
                .iter()
                .any(|a| a.allows(relation, own_schema))
        }) {
            let hint = if relation.schema.is_none() {
                " (qualify it with its schema if a schema.* entry covers it)"
            } else {
                ""
            };
            return denial(format!(
                "table {relation}, which no allow-list of the grant names{hint}"
            ));
        }
    }
    None
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
    let is_column = |n: &String| folds_to(n, &c.column);
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
    [
        "pg_stats",
        "pg_stats_ext",
        "pg_stats_ext_exprs",
        "column_statistics",
    ]
    .iter()
    .any(|n| t.name.eq_ignore_ascii_case(n))
        || t.schema
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("pg_toast"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<RawRule>,
    limits: Option<RawLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    message: String,
    #[serde(default)]
    effect: RawEffect,
    #[serde(default)]
    deny: RawDeny,
    #[serde(default)]
    allow: RawAllow,
    require: Option<RawRequire>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequire {
    tables: Vec<String>,
    #[serde(rename = "where", default)]
    where_clause: bool,
    #[serde(default)]
    limit: bool,
    max_limit: Option<u64>,
    #[serde(default)]
    join_condition: bool,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawEffect {
    #[default]
    Deny,
    Audit,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    #[serde(default)]
    tables: Vec<String>,
    #[serde(default)]
    functions: Vec<String>,
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
            .contains("the rule names nothing"));
        let nothing = write("nothing.toml", "# only comments\n");
        assert!(RuleSet::load(&[nothing], dir.path())
            .unwrap_err()
            .contains("holds no [[rule]] and no [limits]"));
        let twice = RuleSet::load(&[good.clone(), good], dir.path()).unwrap_err();
        assert!(twice.contains("used twice"), "{twice}");
        assert!(RuleSet::load(&[PathBuf::from("missing.toml")], dir.path())
            .unwrap_err()
            .contains("missing.toml"));
    }

    fn pii() -> RuleSet {
        RuleSet {
            limits: RuleLimits::default(),
            rules: vec![Rule {
                id: "no-pii".into(),
                message: "PII columns are not available to agents".into(),
                file: PathBuf::from("pii.toml"),
                deny_functions: vec![],
                deny_tables: vec![],
                deny_columns: vec![ColumnName::parse("public.users.ssn").unwrap()],
                allow_tables: vec![],
                allow_functions: vec![],
                require: None,
                effect: Effect::Deny,
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
            limits: RuleLimits::default(),
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
            "SELECT id FROM users WHERE MATCH (ssn) AGAINST ('+123*' IN BOOLEAN MODE)",
            // Each server reading of executable comments is checked, all facts merged.
            "SELECT id /*M! , name */ /*!80000 , ssn */ FROM users",
            "SELECT id /*!80000 , name */ /*M! , ssn */ FROM users",
            "/*M! SELECT id FROM users */ /*!80000 TABLE users */",
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

    #[test]
    fn limits_merge_strictest_and_hours_are_a_weekly_window() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).unwrap();
            PathBuf::from(name)
        };
        let a = write("a.toml", "[limits]\nmax_rows = 1000\nmax_statements = 50\n");
        let b = write(
            "b.toml",
            "[limits]\nmax_rows = 10\n[limits.hours]\ndays = [\"mon-fri\"]\nfrom = \"08:00\"\nuntil = \"18:00\"\nutc_offset = \"+01:00\"\n",
        );
        let set = RuleSet::load(&[a.clone(), b.clone()], dir.path()).unwrap();
        assert_eq!(set.limits.max_rows.as_ref().unwrap().value, 10);
        assert!(set
            .limits
            .max_rows
            .as_ref()
            .unwrap()
            .file
            .ends_with("b.toml"));
        assert_eq!(set.limits.max_statements.as_ref().unwrap().value, 50);
        let hours = set.limits.hours.clone().unwrap();
        assert_eq!(hours.days, [true, true, true, true, true, false, false]);
        // 2026-12-03 is a Thursday. 10:00 UTC is 11:00 at +01:00: inside, closing
        // at 18:00 +01:00 = 17:00 UTC.
        let at = |s: &str| humantime::parse_rfc3339(s).unwrap();
        assert_eq!(
            hours.window_end(at("2026-12-03T10:00:00Z")),
            Some(at("2026-12-03T17:00:00Z"))
        );
        assert_eq!(hours.window_end(at("2026-12-03T06:59:00Z")), None);
        assert!(hours.window_end(at("2026-12-03T07:00:00Z")).is_some());
        assert_eq!(hours.window_end(at("2026-12-03T17:00:00Z")), None);
        // Saturday.
        assert_eq!(hours.window_end(at("2026-12-05T10:00:00Z")), None);
        assert!(hours
            .to_string()
            .starts_with("mon,tue,wed,thu,fri 08:00-18:00 UTC+01:00"));
        // One window per grant; broken windows name the problem.
        let twice = RuleSet::load(&[b.clone(), b], dir.path()).unwrap_err();
        assert!(twice.contains("one window"), "{twice}");
        for (text, needle) in [
            (
                "days = [\"fri-mon\"]\nfrom = \"08:00\"\nuntil = \"18:00\"",
                "backwards",
            ),
            (
                "days = [\"someday\"]\nfrom = \"08:00\"\nuntil = \"18:00\"",
                "not a day",
            ),
            (
                "days = [\"mon-fri-sat\"]\nfrom = \"08:00\"\nuntil = \"18:00\"",
                "one range",
            ),
            (
                "days = [\"mon\"]\nfrom = \"18:00\"\nuntil = \"08:00\"",
                "must end after",
            ),
            ("days = [\"mon\"]\nfrom = \"8\"\nuntil = \"18:00\"", "HH:MM"),
            (
                "days = [\"mon\"]\nfrom = \"08:00\"\nuntil = \"18:00\"\nutc_offset = \"1\"",
                "+HH:MM",
            ),
            (
                "days = [\"mon\"]\nfrom = \"08:00\"\nuntil = \"18:00\"\ntz = \"x\"",
                "tz",
            ),
        ] {
            let f = write("bad.toml", &format!("[limits.hours]\n{text}\n"));
            let e = RuleSet::load(&[f], dir.path()).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let zero = write("zero.toml", "[limits]\nmax_rows = 0\n");
        assert!(RuleSet::load(&[zero], dir.path())
            .unwrap_err()
            .contains("allow nothing"));
    }

    #[test]
    fn allow_lists_admit_only_the_relations_they_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("allow.toml"),
            "[[rule]]\nid = \"reporting-only\"\nmessage = \"agents read the reporting tables only\"\nallow = { tables = [\"public.orders\", \"products\", \"reporting.*\"] }\n",
        )
        .unwrap();
        let rules = RuleSet::load(&[PathBuf::from("allow.toml")], dir.path()).unwrap();
        let pg = |sql: &str| {
            let facts = crate::sql::postgres::classify(sql, 1 << 20).unwrap();
            facts.iter().find_map(|f| rules.check(f, None))
        };
        for sql in [
            "SELECT * FROM orders",
            "SELECT * FROM public.orders o JOIN products p ON true",
            "SELECT * FROM reporting.daily",
            "SELECT * FROM shop.products",
            "WITH users AS (SELECT 1) SELECT * FROM users",
            "SELECT column_name FROM information_schema.columns",
            "SELECT relname FROM pg_catalog.pg_class",
            "SELECT 1",
            "RESET search_path",
        ] {
            assert_eq!(pg(sql), None, "{sql}");
        }
        for sql in [
            "SELECT * FROM users",
            "SELECT * FROM orders WHERE user_id IN (SELECT id FROM users)",
            "SELECT * FROM archive.orders",
            "WITH a AS (SELECT * FROM users), users AS (SELECT 1) SELECT * FROM a",
            "SELECT * FROM pg_class",
            "SELECT * FROM pg_catalog.pg_stats",
            "SET search_path = archive, public",
            "SELECT set_config('search_path', 'archive', false)",
        ] {
            let denial = pg(sql).unwrap_or_else(|| panic!("allowed: {sql}"));
            assert_eq!(denial.rule, "reporting-only", "{sql}");
        }
        let my = |sql: &str| {
            let facts = crate::sql::mysql::classify(sql, 1 << 20).unwrap();
            facts.iter().find_map(|f| rules.check(f, Some("shop")))
        };
        assert_eq!(my("SELECT * FROM products JOIN shop.products"), None);
        assert!(my("SELECT * FROM orders").is_some());
        assert_eq!(my("SELECT * FROM information_schema.columns"), None);
        assert!(my("SELECT * FROM users").is_some());
        assert!(my("SELECT * FROM other.orders").is_some());
        // Metadata of a table the list leaves out, and names in another case (another
        // table where names are case-sensitive) are left out too.
        assert!(my("SHOW COLUMNS FROM users").is_some());
        assert!(my("SHOW CREATE TABLE users").is_some());
        assert_eq!(my("SHOW COLUMNS FROM products"), None);
        assert!(my("SELECT * FROM PRODUCTS").is_some());
        assert!(pg("SELECT * FROM \"Products\"").is_some());
        assert_eq!(pg("SELECT * FROM PRODUCTS"), None);
        for dead in ["*", "a.b.*", "*.t"] {
            assert!(AllowedName::parse(dead).is_err(), "{dead}");
        }
    }

    #[test]
    fn shape_rules_require_where_and_bounded_limits_on_named_tables() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("shape.toml"),
            "[[rule]]\nid = \"events-bounded\"\nmessage = \"filter and bound reads of events\"\nrequire = { tables = [\"public.events\"], where = true, max_limit = 1000 }\n",
        )
        .unwrap();
        let rules = RuleSet::load(&[PathBuf::from("shape.toml")], dir.path()).unwrap();
        let both = |sql: &str| {
            let pg = crate::sql::postgres::classify(sql, 1 << 20).unwrap();
            let pg = pg.iter().find_map(|f| rules.check(f, None));
            let my = crate::sql::mysql::classify(sql, 1 << 20).unwrap();
            let my = my.iter().find_map(|f| rules.check(f, Some("shop")));
            assert_eq!(pg.is_some(), my.is_some(), "{sql}: {pg:?} / {my:?}");
            pg
        };
        for sql in [
            "SELECT * FROM events WHERE id > 5 LIMIT 10",
            "SELECT * FROM (SELECT * FROM events WHERE kind = 'a') e LIMIT 1000",
            "WITH e AS (SELECT * FROM events WHERE true) SELECT * FROM e LIMIT 5",
            "SELECT * FROM orders",
            "SELECT * FROM events WHERE id = 1 UNION ALL SELECT * FROM events WHERE id = 2 LIMIT 3",
        ] {
            assert_eq!(both(sql), None, "{sql}");
        }
        for sql in [
            "SELECT * FROM events",
            "SELECT * FROM events LIMIT 10",
            "SELECT * FROM events WHERE id > 5",
            "SELECT * FROM events WHERE id > 5 LIMIT 5000",
            "SELECT count(*) FROM events WHERE true",
            "SELECT * FROM orders o JOIN events e ON true WHERE o.id = 1 LIMIT 100000",
            "SELECT * FROM orders WHERE id IN (SELECT id FROM events) LIMIT 5",
            "TABLE events",
        ] {
            let denial = both(sql).unwrap_or_else(|| panic!("allowed: {sql}"));
            assert_eq!(denial.rule, "events-bounded", "{sql}");
        }
        // Postgres only: a parameter is not a constant; LIMIT ALL is none; COPY.
        let pg = |sql: &str| {
            let facts = crate::sql::postgres::classify(sql, 1 << 20).unwrap();
            facts.iter().find_map(|f| rules.check(f, None))
        };
        assert!(pg("SELECT * FROM events WHERE id > 1 LIMIT $1").is_some());
        assert!(pg("SELECT * FROM events WHERE id > 1 LIMIT ALL").is_some());
        assert!(pg("SELECT * FROM events WHERE id > 1 FETCH FIRST 10 ROWS ONLY").is_none());
        assert!(pg("COPY events TO STDOUT").is_some());
        // A limit bounds a run of its SELECT: one that runs per row of an unbounded query
        // (subquery expression, LATERAL) is not bounded; WITH TIES can return more.
        assert!(pg("SELECT (SELECT e FROM events e WHERE true ORDER BY id LIMIT 1 OFFSET g) FROM generate_series(0, 10) g").is_some());
        assert!(pg("SELECT x.* FROM generate_series(1, 10) g, LATERAL (SELECT * FROM events WHERE id = g LIMIT 1) x").is_some());
        assert!(
            pg("SELECT * FROM events WHERE true ORDER BY id FETCH FIRST 1 ROW WITH TIES").is_some()
        );
        assert!(pg("SELECT (SELECT count(*) FROM events WHERE id = g LIMIT 1) FROM generate_series(1, 5) g LIMIT 5").is_none());
        assert!(pg("SELECT x.* FROM generate_series(1, 10) g, LATERAL (SELECT * FROM events WHERE id = g LIMIT 10) x LIMIT 200").is_some());
        assert!(rules.depends_on_constants());
        // limit = true: a LIMIT that is not a constant does not count; such rules are
        // never answered from the shape cache (LIMIT 10 and LIMIT ALL share a shape).
        std::fs::write(
            dir.path().join("limit.toml"),
            "[[rule]]\nid = \"limited\"\nmessage = \"add a LIMIT\"\nrequire = { tables = [\"events\"], limit = true }\n",
        )
        .unwrap();
        let limited = RuleSet::load(&[PathBuf::from("limit.toml")], dir.path()).unwrap();
        assert!(limited.depends_on_constants());
        let check = |sql: &str| {
            let facts = crate::sql::postgres::classify(sql, 1 << 20).unwrap();
            facts.iter().find_map(|f| limited.check(f, None))
        };
        assert!(check("SELECT * FROM events LIMIT 10").is_none());
        assert!(check("SELECT * FROM events LIMIT ALL").is_some());
        assert!(check("SELECT * FROM events LIMIT NULL::int").is_some());
        // Joins without a condition.
        std::fs::write(
            dir.path().join("joins.toml"),
            "[[rule]]\nid = \"no-cross\"\nmessage = \"join on a key\"\nrequire = { tables = [\"events\"], join_condition = true }\n",
        )
        .unwrap();
        let joins = RuleSet::load(&[PathBuf::from("joins.toml")], dir.path()).unwrap();
        let both = |sql: &str| {
            let pg = crate::sql::postgres::classify(sql, 1 << 20).unwrap();
            let pg = pg.iter().find_map(|f| joins.check(f, None));
            let my = crate::sql::mysql::classify(sql, 1 << 20).unwrap();
            let my = my.iter().find_map(|f| joins.check(f, Some("shop")));
            assert_eq!(pg.is_some(), my.is_some(), "{sql}: {pg:?} / {my:?}");
            pg.is_some()
        };
        for sql in [
            "SELECT * FROM events CROSS JOIN users",
            "SELECT * FROM events, users",
            "SELECT * FROM orders o JOIN (events CROSS JOIN users) ON o.id = users.id",
        ] {
            assert!(both(sql), "{sql}");
        }
        for sql in [
            "SELECT * FROM events e JOIN users u ON u.id = e.user_id",
            "SELECT * FROM events JOIN users USING (id)",
            "SELECT * FROM events NATURAL JOIN users",
            "SELECT * FROM events e, users u WHERE u.id = e.user_id",
            "SELECT * FROM orders CROSS JOIN users",
            "SELECT * FROM events",
        ] {
            assert!(!both(sql), "{sql}");
        }
        // A require that asks for nothing is refused.
        std::fs::write(
            dir.path().join("empty.toml"),
            "[[rule]]\nid = \"x\"\nmessage = \"m\"\nrequire = { tables = [\"t\"] }\n",
        )
        .unwrap();
        let e = RuleSet::load(&[PathBuf::from("empty.toml")], dir.path()).unwrap_err();
        assert!(e.contains("asks for nothing"), "{e}");
    }

    #[test]
    fn a_reviewed_list_never_admits_a_denied_built_in() {
        use crate::policy::readonly::{decide_reviewed, Verdict};
        for sql in [
            "SELECT pg_terminate_backend(1)",
            "SELECT pg_catalog.set_config('role', 'x', false)",
            "SELECT public.dblink('x', 'y')",
        ] {
            let facts = crate::sql::postgres::classify(sql, 1 << 20).unwrap();
            let verdict = decide_reviewed(&facts[0], None, &|_, _| true);
            assert!(matches!(verdict, Verdict::Deny { .. }), "{sql}");
        }
    }
}
