//! The statement gate: the protocol-neutral decision for each statement text a
//! client sends, and its audit record.
//!
//! A front end hands the gate the text of each Query/Parse message (Postgres) or
//! COM_QUERY/COM_STMT_PREPARE (MySQL); the gate answers [`TextDecision::Allow`] with
//! every statement's text and kind for the audit trail, or [`TextDecision::Deny`]
//! with a typed [`Denied`] that the front end phrases in its own protocol (Postgres:
//! an ErrorResponse with a SQLSTATE). Repeated texts are answered from a per-session
//! [`VerdictCache`] bounded in bytes. Verdicts depend on the upstream catalog, which
//! the gate refreshes as it ages or when a statement names something it does not know
//! ([`Gate::newer_catalog`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::executions::Execution;
use super::upstream;
use crate::audit::{AuditEvent, AuditRecord, Decision};
use crate::catalog::{FunctionCatalog, CATALOG_TTL};
use crate::gateway::Services;
use crate::identity::Principal;
use crate::policy::readonly::{self, Verdict};
use crate::policy::rules::RuleSet;
use crate::policy::Grant;
use crate::sql::pool::Grammar;
use crate::sql::{ClassifyError, StatementFacts};

/// Why a session whose grant a reload removed may run nothing more.
pub const GRANT_REVOKED: &str = "the grant for this session was removed by a configuration reload";

/// How a DBA rule's denial reason begins ([`crate::policy::rules::RuleDenial::reason`]).
const RULE_DENIAL_PREFIX: &str = "denied by rule ";

/// Statements up to this size are also looked up by their literal-free shape.
/// `normalize` runs on the caller's stack and recurses per tree level; 1 KiB bounds
/// the depth to a few hundred levels.
const SHAPE_CACHE_MAX_TEXT: usize = 1024;

/// One statement part's classification, for audit.
pub struct Classified {
    pub text: String,
    pub kind: String,
    pub verdict: Verdict,
}

/// An allowed statement text: each statement's text and kind, for audit.
pub struct Allowed {
    pub parts: Vec<(String, String)>,
    /// The `effect = "audit"` rules the text meets: its records are flagged with them.
    pub flags: Vec<String>,
}

/// The outcome for one statement text (a Query or Parse message, a COM_QUERY).
pub enum TextDecision {
    Allow(Arc<Allowed>),
    Deny {
        denied: Denied,
        /// Every statement of the text with its verdict, for audit.
        parts: Vec<Classified>,
        /// The denial may be due to a catalog that is out of date.
        catalog_miss: bool,
    },
}

/// Why a text was denied; each front end phrases it in its own protocol.
#[derive(Debug, Clone)]
pub enum Denied {
    /// The text could not be classified (does not parse, too large, too deep, the
    /// parser is busy).
    Unclassified(ClassifyError),
    /// A statement of the text was denied by policy.
    Statement {
        /// Its kind ("INSERT", "SET", ...).
        kind: String,
        reason: String,
        /// Where it is, when the text holds more than one statement.
        position: Option<Position>,
        /// Denied by a setting cap (`[limits.setting_caps]`), not by read-only.
        setting_cap: bool,
        /// Denied by a DBA rule of the grant (the reason names it), not by read-only.
        rule: bool,
    },
    /// The audit trail cannot be written, so nothing may run.
    AuditUnavailable,
    /// The front end refused the text before the policy saw it (a pipelining rule, a
    /// protocol message that is never allowed).
    Front { reason: String, hint: String },
}

/// A denied statement's place in a multi-statement text.
#[derive(Debug, Clone)]
pub struct Position {
    /// 1-based.
    pub index: usize,
    pub of: usize,
    /// The statement's text, cut to 200 bytes.
    pub excerpt: String,
}

impl Denied {
    /// One line for logs and the audit reason.
    pub fn summary(&self) -> String {
        match self {
            Denied::Unclassified(e) => format!("statement denied: {e}"),
            Denied::Statement { kind, reason, .. } => format!("{kind} denied: {reason}"),
            Denied::AuditUnavailable => {
                "statement denied: the audit trail cannot be written".into()
            }
            Denied::Front { reason, .. } => format!("statement denied: {reason}"),
        }
    }
}

/// Allowed statements of one session, so repeated statements skip the parser.
///
/// `exact` is keyed by the statement text (prepared statements, repeated queries).
/// `shapes` is keyed by the text with its constants replaced by `$n`
/// (`pg_query::normalize`) and holds only single SELECT statements, whose verdict
/// cannot depend on a constant (unlike `SET client_encoding = ...` or `BEGIN READ
/// WRITE`). Keys are whole texts, never hashes, so no crafted collision can alias a
/// denied statement to an allowed one. Verdicts depend on the catalog, so the cache is
/// cleared whenever the session picks up a newer one.
///
/// The cache is bounded in bytes (`limits.verdict_cache_bytes`): each entry counts its
/// key, its statements' texts and a fixed overhead; when the next entry would not fit,
/// the cache starts over. Statements larger than a quarter of the budget are never
/// remembered.
pub struct VerdictCache {
    exact: HashMap<String, Arc<Allowed>>,
    shapes: HashMap<String, ()>,
    bytes: usize,
    budget: usize,
}

/// What one cache entry costs beyond its texts (map slot, Arc, Vec headers).
const VERDICT_ENTRY_OVERHEAD: usize = 128;

impl VerdictCache {
    pub fn new(budget: usize) -> Self {
        VerdictCache {
            exact: HashMap::new(),
            shapes: HashMap::new(),
            bytes: 0,
            budget,
        }
    }

    /// `shape` only for statements whose verdict cannot depend on a constant.
    fn remember(&mut self, text: &str, shape: Option<String>, allowed: &Arc<Allowed>) {
        let parts: usize = allowed.parts.iter().map(|(t, k)| t.len() + k.len()).sum();
        // Flags are not kept per shape: a flagged text is remembered exactly only.
        let shape = shape.filter(|_| {
            allowed.flags.is_empty()
                && matches!(allowed.parts.as_slice(), [(_, kind)] if kind == "SELECT")
        });
        let cost = text.len()
            + parts
            + shape
                .as_ref()
                .map_or(0, |s| s.len() + VERDICT_ENTRY_OVERHEAD)
            + VERDICT_ENTRY_OVERHEAD;
        if cost > self.budget / 4 {
            return;
        }
        if self.bytes + cost > self.budget {
            self.clear();
        }
        self.bytes += cost;
        self.exact.insert(text.to_owned(), allowed.clone());
        if let Some(shape) = shape {
            self.shapes.insert(shape, ());
        }
    }

    pub fn clear(&mut self) {
        self.exact.clear();
        self.shapes.clear();
        self.bytes = 0;
    }
}

/// The SQL dialect a session speaks, with what its read-only profile needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    /// MySQL/MariaDB; `database` is the one database the connection may use, and
    /// `stored_functions` the (lowercase) names of the stored functions in it when the
    /// session began: a call by such a name may run the stored function where the
    /// server lacks the built-in of that name (MySQL and MariaDB differ).
    Mysql {
        database: String,
        stored_functions: Arc<std::collections::HashSet<String>>,
    },
}

impl Dialect {
    /// The protocol name recorded in the audit trail.
    pub fn protocol(&self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::Mysql { .. } => "mysql",
        }
    }

    /// The schema a name may be qualified with and still mean the session's default:
    /// MySQL's one database.
    pub fn own_schema(&self) -> Option<&str> {
        match self {
            Dialect::Postgres => None,
            Dialect::Mysql { database, .. } => Some(database),
        }
    }

    fn grammar(&self) -> Grammar {
        match self {
            Dialect::Postgres => Grammar::Postgres,
            Dialect::Mysql { .. } => Grammar::Mysql,
        }
    }
}

/// What the gate of one session knows: who, under which grant, from where.
pub struct Gate {
    pub session_id: String,
    pub client_addr: String,
    pub services: Arc<Services>,
    pub principal: Principal,
    pub grant: Grant,
    pub dialect: Dialect,
    /// Statements recorded so far (the next record's `statement_seq` is one more).
    pub statements: std::sync::atomic::AtomicU64,
    /// Statements forwarded so far (for `max_statements`).
    pub forwarded: std::sync::atomic::AtomicU64,
    /// A SQL-level PREPARE or DECLARE CURSOR was forwarded: the server holds statements
    /// the gateway decided under the rules of that time.
    pub holds_sql_names: std::sync::atomic::AtomicBool,
    /// A reload changed the rules since: SQL-level EXECUTE and FETCH are refused.
    pub sql_names_stale: std::sync::atomic::AtomicBool,
    /// The rules in force for this session and the policy generation they come from;
    /// `None` once a reload removed the session's grant.
    pub rules: std::sync::Mutex<(u64, Option<Arc<RuleSet>>)>,
}

impl Gate {
    /// A gate for a session that was just granted `grant`.
    pub fn new(
        session_id: String,
        client_addr: String,
        services: Arc<Services>,
        principal: Principal,
        grant: Grant,
        dialect: Dialect,
    ) -> Gate {
        let rules =
            std::sync::Mutex::new((services.grants.generation(), Some(grant.rules.clone())));
        Gate {
            session_id,
            client_addr,
            services,
            principal,
            grant,
            dialect,
            statements: Default::default(),
            forwarded: Default::default(),
            holds_sql_names: Default::default(),
            sql_names_stale: Default::default(),
            rules,
        }
    }

    /// The policy generation of the rules in force (as last refreshed).
    pub fn rules_generation(&self) -> u64 {
        match self.rules.lock() {
            Ok(c) => c.0,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    /// The rules in force as last refreshed (see [`Gate::current_rules`]); for the
    /// answer side, which has no verdict cache.
    pub fn rules_in_force(&self) -> Option<Arc<RuleSet>> {
        match self.rules.lock() {
            Ok(c) => c.1.clone(),
            Err(poisoned) => poisoned.into_inner().1.clone(),
        }
    }

    /// Whether `n` more statements may run under the rules' `max_statements`; the
    /// message says which limit and what to do.
    pub fn statement_budget(&self, rules: &RuleSet, n: usize) -> Result<(), String> {
        let Some(limit) = &rules.limits.max_statements else {
            return Ok(());
        };
        let ran = self.forwarded.load(std::sync::atomic::Ordering::Relaxed);
        if ran + n as u64 > limit.value {
            return Err(format!(
                "this session has run {ran} statements, the most its grant allows ({}); reconnect to start a new session",
                limit.describe("max_statements")
            ));
        }
        Ok(())
    }

    /// The most rows one statement may return (`max_rows` of the rules in force).
    pub fn max_rows(&self) -> Option<crate::policy::rules::Limit> {
        self.rules_in_force()
            .and_then(|r| r.limits.max_rows.clone())
    }

    /// The rules in force now: after a reload, those of the `[[grant]]` entry that
    /// grants this session now (its verdicts cached under the old rules are dropped);
    /// `None` when no entry does.
    pub fn current_rules(&self, cache: &mut VerdictCache) -> Option<Arc<RuleSet>> {
        let generation = self.services.grants.generation();
        let mut current = match self.rules.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if current.0 != generation {
            let now = std::time::SystemTime::now();
            let rules = self
                .services
                .grants
                .decide(&self.principal, &self.grant.connection, now)
                .ok()
                .map(|g| g.rules);
            let changed = match (&current.1, &rules) {
                (Some(old), Some(new)) => old != new,
                _ => true,
            };
            if changed
                && self
                    .holds_sql_names
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                self.sql_names_stale
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            *current = (generation, rules);
            cache.clear();
        }
        current.1.clone()
    }

    /// Decides one statement text: from the cache, or classified (large texts on the
    /// parser pool) and decided by the read-only policy and the setting caps. A text
    /// with several statements is allowed only if every one of them is.
    pub async fn decide(
        &self,
        text: &str,
        cache: &mut VerdictCache,
        catalog: Option<&FunctionCatalog>,
    ) -> TextDecision {
        let Some(rules) = self.current_rules(cache) else {
            return TextDecision::Deny {
                denied: Denied::Front {
                    reason: GRANT_REVOKED.into(),
                    hint: "reconnect to see which connections you may use now".into(),
                },
                parts: vec![Classified {
                    text: text.to_owned(),
                    kind: "unparsed".into(),
                    verdict: Verdict::Deny {
                        reason: GRANT_REVOKED.into(),
                    },
                }],
                catalog_miss: false,
            };
        };
        let decision = self.decide_text(text, cache, catalog, &rules).await;
        if let TextDecision::Allow(allowed) = &decision {
            if let Err(reason) = self.statement_budget(&rules, allowed.parts.len()) {
                return TextDecision::Deny {
                    denied: Denied::Statement {
                        kind: "statement".into(),
                        reason: reason.clone(),
                        position: None,
                        setting_cap: false,
                        rule: true,
                    },
                    parts: allowed
                        .parts
                        .iter()
                        .map(|(text, kind)| Classified {
                            text: text.clone(),
                            kind: kind.clone(),
                            verdict: Verdict::Deny {
                                reason: reason.clone(),
                            },
                        })
                        .collect(),
                    catalog_miss: false,
                };
            }
        }
        decision
    }

    /// [`Gate::decide`] under `rules`, without the statement budget.
    async fn decide_text(
        &self,
        text: &str,
        cache: &mut VerdictCache,
        catalog: Option<&FunctionCatalog>,
        rules: &Arc<RuleSet>,
    ) -> TextDecision {
        if let Some(allowed) = cache.exact.get(text) {
            return TextDecision::Allow(allowed.clone());
        }
        // Shapes come from Postgres's grammar; MySQL texts are cached exactly only.
        let shape = (text.len() <= SHAPE_CACHE_MAX_TEXT && self.dialect == Dialect::Postgres)
            .then(|| pg_query::normalize(text).ok())
            .flatten();
        if let Some(shape) = &shape {
            if cache.shapes.contains_key(shape) {
                return TextDecision::Allow(Arc::new(Allowed {
                    parts: vec![(text.trim().to_owned(), "SELECT".to_owned())],
                    flags: Vec::new(),
                }));
            }
        }
        let max = self.services.config.limits.max_statement_bytes;
        let facts = match self
            .services
            .parser
            .classify(text, max, self.dialect.grammar())
            .await
        {
            Ok(facts) => facts,
            Err(e) => {
                return TextDecision::Deny {
                    denied: Denied::Unclassified(e.clone()),
                    parts: vec![Classified {
                        text: text.to_owned(),
                        kind: "unparsed".into(),
                        verdict: Verdict::Deny {
                            reason: e.to_string(),
                        },
                    }],
                    catalog_miss: false,
                };
            }
        };
        let caps = &self.services.config.limits.setting_caps;
        let mut parts: Vec<Classified> = facts
            .iter()
            .map(|f| Classified {
                text: f.text.clone(),
                kind: f.kind.label(),
                verdict: self.verdict(f, catalog, rules),
            })
            .collect();
        if matches!(self.dialect, Dialect::Mysql { .. }) {
            // The server lexes the rest of a message under the settings its first
            // statements set, before the tripwire sees them: a statement that changes
            // lexing must come last.
            let last = parts.len().saturating_sub(1);
            for (part, f) in parts.iter_mut().zip(&facts).take(last) {
                if part.verdict == Verdict::Allow && crate::policy::mysql::changes_lexing(f) {
                    part.verdict = Verdict::Deny {
                        reason:
                            "a statement that sets sql_mode or the client character set must be \
                                 the last statement of its message; send what follows separately"
                                .into(),
                    };
                }
            }
        }
        let denied = parts.iter().position(|p| p.verdict != Verdict::Allow);
        match denied {
            None => {
                let mut flags: Vec<String> = Vec::new();
                for f in &facts {
                    for flag in rules.flags(f, self.dialect.own_schema()) {
                        if !flags.contains(&flag) {
                            flags.push(flag);
                        }
                    }
                }
                let allowed = Arc::new(Allowed {
                    parts: parts.into_iter().map(|p| (p.text, p.kind)).collect(),
                    flags,
                });
                // set_config's verdict depends on its constants, and so does a rule's
                // max_limit: never by shape.
                let by_shape = facts.iter().all(|f| f.tree.set_config_calls.is_empty())
                    && !rules.depends_on_constants();
                cache.remember(text, shape.filter(|_| by_shape), &allowed);
                TextDecision::Allow(allowed)
            }
            Some(index) => {
                let (kind, reason) = match &parts[index].verdict {
                    Verdict::Deny { reason } => (parts[index].kind.clone(), reason.clone()),
                    Verdict::Allow => (String::new(), String::new()),
                };
                let mut position = None;
                if parts.len() > 1 {
                    position = Some(Position {
                        index: index + 1,
                        of: parts.len(),
                        excerpt: truncate(&parts[index].text, 200),
                    });
                    for (i, part) in parts.iter_mut().enumerate() {
                        if i != index && part.verdict == Verdict::Allow {
                            part.verdict = Verdict::Deny {
                                reason: format!(
                                    "not forwarded: statement {} of the same message was denied",
                                    index + 1
                                ),
                            };
                        }
                    }
                }
                let postgres = self.dialect == Dialect::Postgres;
                TextDecision::Deny {
                    denied: Denied::Statement {
                        rule: reason.starts_with(RULE_DENIAL_PREFIX),
                        setting_cap: postgres
                            && caps.check(&facts[index]).err().as_ref() == Some(&reason),
                        kind,
                        reason,
                        position,
                    },
                    parts,
                    catalog_miss: postgres && readonly::unknown_to_catalog(&facts[index], catalog),
                }
            }
        }
    }

    /// One statement's verdict: the dialect's read-only profile, then the grant's DBA
    /// rules on what it allows.
    fn verdict(
        &self,
        facts: &StatementFacts,
        catalog: Option<&FunctionCatalog>,
        rules: &RuleSet,
    ) -> Verdict {
        let stale = self
            .sql_names_stale
            .load(std::sync::atomic::Ordering::Relaxed);
        if stale
            && matches!(
                facts.kind,
                crate::sql::StatementKind::Execute | crate::sql::StatementKind::Fetch
            )
        {
            return Verdict::Deny {
                reason: format!(
                    "{RULE_DENIAL_PREFIX}changes of a configuration reload: statements prepared with PREPARE and cursors declared before the reload changed this grant's rules cannot run under the new rules; reconnect"
                ),
            };
        }
        match self.floor(facts, catalog, rules) {
            Verdict::Allow => {
                match crate::policy::rules::verdict(
                    rules,
                    facts,
                    catalog,
                    self.dialect.own_schema(),
                ) {
                    Err(denial) => Verdict::Deny {
                        reason: denial.reason(),
                    },
                    Ok(()) => Verdict::Allow,
                }
            }
            deny => deny,
        }
    }

    /// One statement's verdict under this session's dialect profile.
    fn floor(
        &self,
        facts: &StatementFacts,
        catalog: Option<&FunctionCatalog>,
        rules: &RuleSet,
    ) -> Verdict {
        let reviewed = |schema: &str, name: &str| rules.reviews_function(schema, name);
        match &self.dialect {
            Dialect::Postgres => match readonly::decide_reviewed(facts, catalog, &reviewed) {
                Verdict::Allow => match self.services.config.limits.setting_caps.check(facts) {
                    Ok(()) => Verdict::Allow,
                    Err(reason) => Verdict::Deny { reason },
                },
                deny => deny,
            },
            Dialect::Mysql {
                database,
                stored_functions,
            } => match crate::policy::mysql::decide(facts, database) {
                Verdict::Allow => match facts.tree.functions.iter().find(|f| {
                    f.schema.is_none() && stored_functions.contains(&f.name.to_ascii_lowercase())
                }) {
                    Some(f) => Verdict::Deny {
                        reason: format!(
                            "{}() is also a stored function in {database}, which the server may call \
                             instead of a built-in; stored functions can write",
                            f.name
                        ),
                    },
                    None => Verdict::Allow,
                },
                deny => deny,
            },
        }
    }

    /// A record of this session: who, under which grant, over which protocol.
    fn session_record(&self, event: AuditEvent) -> AuditRecord {
        let mut rec = AuditRecord::new(
            event,
            &self.session_id,
            &self.grant.connection,
            &self.client_addr,
        );
        rec.protocol = self.dialect.protocol();
        rec.grant_id = Some(self.grant.id.clone());
        rec.sub = Some(self.principal.subject.clone());
        rec
    }

    /// A `statement` record with the session's next statement number.
    pub fn statement_record(&self, text: &str, kind: &str, verdict: &Verdict) -> AuditRecord {
        let seq = self
            .statements
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let mut rec = self.session_record(AuditEvent::Statement);
        rec.set_statement(text, self.services.config.audit_max_statement_bytes);
        rec.kind = Some(kind.to_owned());
        rec.statement_seq = Some(seq);
        match verdict {
            Verdict::Allow => rec.decision = Some(Decision::Allow),
            Verdict::Deny { reason } => {
                rec.decision = Some(Decision::Deny);
                rec.reason = Some(reason.clone());
            }
        }
        rec
    }

    /// Records an allowed statement about to be forwarded, with its bound parameters
    /// (cut like statement text; only their count when `audit.redact_parameters`), and
    /// returns it as in flight: its answer waits for the record (strict durability).
    /// `ready_at`: see [`Execution`].
    pub async fn forwarding(
        &self,
        text: &str,
        kind: &str,
        params: Option<(Vec<Option<String>>, usize)>,
        names: Option<(&str, &str)>,
        flags: &[String],
        ready_at: u64,
    ) -> Execution {
        self.forwarded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if kind == "PREPARE" || kind == "DECLARE CURSOR" {
            self.holds_sql_names
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let mut rec = self.statement_record(text, kind, &Verdict::Allow);
        self.set_parameters(&mut rec, params);
        if !flags.is_empty() {
            rec.flagged_by = Some(flags.to_vec());
        }
        if let Some((portal, prepared)) = names {
            rec.portal = Some(portal.to_owned());
            rec.prepared_name = Some(prepared.to_owned());
        }
        let seq = rec.statement_seq.unwrap_or(0);
        let durable = self.services.audit.record_statement(rec).await;
        Execution::new(seq, durable, ready_at)
    }

    /// Bound parameters into `rec` (cut like statement text; only their count when
    /// `audit.redact_parameters`).
    fn set_parameters(&self, rec: &mut AuditRecord, params: Option<(Vec<Option<String>>, usize)>) {
        let Some((params, count)) = params else {
            return;
        };
        rec.parameter_count = Some(count);
        let config = &self.services.config;
        if !config.audit_redact_parameters {
            let max = config.audit_max_statement_bytes;
            rec.parameters = Some(
                params
                    .into_iter()
                    .map(|p| p.map(|v| if v.len() > max { truncate(&v, max) } else { v }))
                    .collect(),
            );
        }
    }

    /// A `statement.prepared` (a named statement's text) or `portal.bound` (a named
    /// portal, its statement and parameters) record: SQL-level `EXECUTE` and `FETCH`
    /// can reach these names, so what they hold is always in the trail.
    pub async fn audit_names(
        &self,
        event: AuditEvent,
        prepared_name: &str,
        portal: Option<&str>,
        text: &str,
        kind: &str,
        params: Option<(Vec<Option<String>>, usize)>,
    ) {
        let mut rec = self.session_record(event);
        rec.decision = Some(Decision::Allow);
        rec.set_statement(text, self.services.config.audit_max_statement_bytes);
        rec.kind = Some(kind.to_owned());
        rec.prepared_name = Some(prepared_name.to_owned());
        rec.portal = portal.map(str::to_owned);
        self.set_parameters(&mut rec, params);
        self.audit(rec).await;
    }

    pub async fn audit(&self, rec: AuditRecord) {
        if let Err(e) = self.services.audit.record(rec).await {
            tracing::error!(error = %e, "audit record lost");
        }
    }

    /// A newer catalog of this connection than `than`, if there is one. With `wait`,
    /// reads one now (a statement named something the catalog does not know);
    /// otherwise, when `than` has aged past [`CATALOG_TTL`], starts a refresh in the
    /// background and returns at once. Refreshes are single-flight and rate limited
    /// per connection ([`crate::catalog::CatalogCache::refresh`]).
    pub async fn newer_catalog(&self, than: Instant, wait: bool) -> Option<Arc<FunctionCatalog>> {
        let cache = self.services.catalogs.get(&self.grant.connection)?;
        if let Some((at, catalog)) = cache.current() {
            if at > than {
                return Some(catalog);
            }
        }
        if !wait && than.elapsed() < CATALOG_TTL {
            return None;
        }
        let services = self.services.clone();
        let name = self.grant.connection.clone();
        let refresh = async move {
            let conn = services.config.connection(&name)?.clone();
            let cache = services.catalogs.get(&name)?;
            let timeout = services.config.limits.connect_timeout;
            cache
                .refresh(than, || upstream::fetch_catalog_separately(&conn, timeout))
                .await
        };
        if wait {
            refresh
                .await
                .filter(|_| cache.current().is_some_and(|(at, _)| at > than))
        } else {
            tokio::spawn(refresh);
            None
        }
    }
}

/// `s` cut to at most `max` bytes at a character boundary, with "..." when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(text: &str) -> Arc<Allowed> {
        Arc::new(Allowed {
            parts: vec![(text.to_owned(), "SELECT".to_owned())],
            flags: Vec::new(),
        })
    }

    #[test]
    fn the_verdict_cache_is_bounded_in_bytes() {
        let mut cache = VerdictCache::new(64 << 10);
        // Statements over a quarter of the budget are never remembered.
        let big = "x".repeat(20 << 10);
        cache.remember(&big, None, &allowed(&big));
        assert!(cache.exact.is_empty());
        for i in 0..1000 {
            let text = format!("SELECT {i} /* {} */", "y".repeat(1000));
            cache.remember(&text, Some(format!("shape{i}")), &allowed(&text));
            assert!(cache.bytes <= 64 << 10);
        }
        assert!(!cache.exact.is_empty());
        cache.clear();
        assert_eq!(cache.bytes, 0);
    }
}
