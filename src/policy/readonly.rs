//! The read-only statement policy (DESIGN.md decision 5), on the classifier's facts.
//!
//! Read-only means allow-list: queries without locking clauses, INTO or writing CTEs;
//! EXPLAIN (with ANALYZE only of an allowed statement); SHOW; a short list of harmless
//! settings; transaction control that does not ask for READ WRITE; cursors, PREPARE
//! and `COPY ... TO STDOUT` over allowed queries. Everything else is denied, and so is
//! any statement calling a function that can write or escape the session: built-ins on
//! [`DENIED_BUILTINS`], volatile user-defined functions and procedures, and functions
//! the upstream catalog does not know.

use crate::catalog::{FunctionCatalog, Volatility};
use crate::sql::{
    CopyDirection, QualifiedName, SetConfigCall, SetFacts, StatementFacts, StatementKind,
    TransactionOp,
};

/// The decision on one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny { reason: String },
}

impl Verdict {
    fn deny(reason: impl Into<String>) -> Verdict {
        Verdict::Deny {
            reason: reason.into(),
        }
    }
}

/// Settings a read-only session may change. Everything else — notably
/// `default_transaction_read_only`, `transaction_read_only`, `role`,
/// `session_authorization` and `standard_conforming_strings` — is refused.
pub const ALLOWED_SETTINGS: &[&str] = &[
    "application_name",
    "search_path",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "timezone",
    "datestyle",
    "intervalstyle",
    "extra_float_digits",
    "client_encoding",
    "client_min_messages",
    "bytea_output",
    "xmloption",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "transaction_isolation",
    "default_transaction_isolation",
    "work_mem",
    "jit",
    "plan_cache_mode",
    "max_parallel_workers_per_gather",
    "cursor_tuple_fraction",
    "geqo",
    "row_security",
    // pg_dump and pgAdmin
    "synchronize_seqscans",
    "quote_all_identifiers",
    "check_function_bodies",
    // planner costs and limits
    "random_page_cost",
    "seq_page_cost",
    "cpu_tuple_cost",
    "cpu_index_tuple_cost",
    "cpu_operator_cost",
    "parallel_setup_cost",
    "parallel_tuple_cost",
    "effective_cache_size",
    "effective_io_concurrency",
    "join_collapse_limit",
    "from_collapse_limit",
    "geqo_threshold",
    "geqo_effort",
    "constraint_exclusion",
    "default_statistics_target",
    "jit_above_cost",
    "jit_inline_above_cost",
    "jit_optimize_above_cost",
    "min_parallel_table_scan_size",
    "min_parallel_index_scan_size",
    "parallel_leader_participation",
    "recursive_worktable_factor",
    // text search and output formats
    "default_text_search_config",
    "gin_fuzzy_search_limit",
    "timezone_abbreviations",
    "xmlbinary",
    "array_nulls",
    // pg_dump 15.8+ sets it to refuse expanding non-system views (only restricts)
    "restrict_nonsystem_relation_kind",
];

/// Statements well-known tools send whose `set_config` arguments are not constants,
/// allowed by their exact text (whitespace collapsed). pg_dump 15.8+ and 16.4+: sets
/// `restrict_nonsystem_relation_kind` only where the server has it.
const KNOWN_TOOL_STATEMENTS: &[&str] = &[
    "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'",
];

fn known_tool_statement(text: &str) -> bool {
    let collapsed: Vec<&str> = text.split_whitespace().collect();
    let collapsed = collapsed.join(" ");
    let collapsed = collapsed.trim_end_matches(';').trim_end();
    KNOWN_TOOL_STATEMENTS.contains(&collapsed)
}

/// Settings sqlgate pins on every upstream session, with the values they are pinned
/// to. Setting one to its pinned value is allowed (psycopg2's `set_session(readonly=True)`,
/// Rails' `SET standard_conforming_strings = on`); any other value is refused.
pub const PINNED_SETTINGS: &[(&str, &str)] = &[
    ("default_transaction_read_only", "on"),
    ("transaction_read_only", "on"),
    ("standard_conforming_strings", "on"),
];

/// Relations that expose credentials, server files or raw storage, by schema. Reading
/// them is denied however they are reached (directly, through a CTE or subquery,
/// aliased, schema-qualified or not, or through a user view that reads them).
pub const DENIED_RELATIONS: &[(&str, &str, &str)] = &[
    (
        "pg_catalog",
        "pg_authid",
        "it holds role password verifiers",
    ),
    (
        "pg_catalog",
        "pg_shadow",
        "it holds role password verifiers",
    ),
    (
        "pg_catalog",
        "pg_user_mapping",
        "it holds foreign-server credentials",
    ),
    (
        "pg_catalog",
        "pg_user_mappings",
        "it holds foreign-server credentials",
    ),
    (
        "pg_catalog",
        "pg_hba_file_rules",
        "it shows the server's pg_hba.conf",
    ),
    (
        "pg_catalog",
        "pg_ident_file_mappings",
        "it shows the server's pg_ident.conf",
    ),
    (
        "pg_catalog",
        "pg_file_settings",
        "it shows the server's configuration files",
    ),
    (
        "pg_catalog",
        "pg_largeobject",
        "it exposes large objects' raw storage",
    ),
    (
        "pg_catalog",
        "pg_statistic",
        "it holds samples of column values the role may not read",
    ),
    (
        "pg_catalog",
        "pg_statistic_ext_data",
        "it holds samples of column values the role may not read",
    ),
    (
        "information_schema",
        "user_mapping_options",
        "it holds foreign-server credentials",
    ),
    (
        "information_schema",
        "_pg_user_mappings",
        "it holds foreign-server credentials",
    ),
];

/// Relations of which some columns are sensitive: reading those columns (by name, `*`
/// or a whole-row reference, or all columns through COPY) is denied, reading the rest
/// is allowed (pg_dump counts subscriptions).
pub const DENIED_COLUMNS: &[(&str, &[&str], &str)] = &[
    (
        "pg_subscription",
        &["subconninfo"],
        "it holds the publisher's connection string, often with a password",
    ),
    (
        "pg_stat_activity",
        &["query"],
        "it shows the statements of every session of the held role, other agents' included \
         (their constants too); the other columns (pid, state, wait events, times) are readable",
    ),
];

/// Like [`DENIED_COLUMNS`], for extension views in whatever schema the extension was
/// installed.
pub const DENIED_COLUMNS_ANY_SCHEMA: &[(&str, &[&str], &str)] = &[(
    "pg_stat_statements",
    &["query"],
    "it shows the statement texts of every role, other agents' included",
)];

/// Extension functions that run SQL text, reach other servers or read raw storage:
/// denied in whatever schema the extension was installed. Matched like
/// [`DENIED_BUILTINS`].
pub const DENIED_IN_ANY_SCHEMA: &[&str] = &[
    "dblink*",
    "pg_stat_statements",
    "crosstab*",
    "connectby*",
    "xpath_table",
    "lo_*",
    "pg_read_*",
    "pg_file_*",
    "pg_ls_*",
    "get_raw_page",
    "page_header",
    "page_checksum",
    "heap_page_item*",
    "heap_tuple_infomask_flags",
    "tuple_data_split",
    "bt_page_*",
    "bt_metap",
    "fsm_page_contents",
    "heap_force_*",
    "pg_truncate_visibility_map",
    "pg_prewarm",
];

/// Deny-listed names that are nevertheless harmless: they only release what this
/// session itself holds (asyncpg's pool reset sends `pg_advisory_unlock_all()`).
const DENY_LIST_EXCEPTIONS: &[&str] = &["pg_advisory_unlock_all"];

/// Encodings in which every byte of a multi-byte character has the high bit set, so
/// the classifier's lexer and the server agree on every quote and backslash.
const SAFE_CLIENT_ENCODINGS: &[&str] = &["utf8", "utf-8", "unicode"];

/// Built-in functions with side effects, or that read files, run SQL passed as text,
/// control other sessions or the server. Matched by exact name or by prefix (`*`).
pub const DENIED_BUILTINS: &[&str] = &[
    "set_config",
    "nextval",
    "setval",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_log_backend_memory_contexts",
    "lo_*",
    "loread",
    "lowrite",
    "dblink*",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_*",
    "pg_stat_file",
    "pg_file_*",
    "query_to_xml*",
    "query_to_xmlschema",
    // Other sessions' statement texts (what pg_stat_activity.query reads).
    "pg_stat_get_activity",
    "pg_stat_get_backend_activity",
    "cursor_to_xml*",
    "table_to_xml*",
    "schema_to_xml*",
    "database_to_xml*",
    "pg_advisory*",
    "pg_try_advisory*",
    "pg_notify",
    "pg_create_*",
    "pg_drop_replication_slot",
    "pg_replication_*",
    "pg_logical_*",
    "pg_copy_*",
    "pg_switch_wal",
    "pg_backup_*",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_promote",
    "pg_wal_replay_*",
    "pg_stat_reset*",
    "pg_import_system_collations",
    "pg_nextoid",
    "txid_current",
    "pg_current_xact_id",
    "binary_upgrade_*",
    "brin_summarize_*",
    "brin_desummarize_range",
    "gin_clean_pending_list",
    "pg_stat_statements_reset",
    "ts_stat",
    "ts_rewrite",
    "pg_show_all_file_settings",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
];

/// VOLATILE built-ins that only read or compute. Every other VOLATILE built-in is
/// denied: volatility is how Postgres marks functions with side effects, and a
/// deny-list of them alone proved incomplete (`ts_stat` and `ts_rewrite` run SQL text).
pub const HARMLESS_VOLATILE_BUILTINS: &[&str] = &[
    "random",
    "setseed",
    "clock_timestamp",
    "timeofday",
    "gen_random_uuid",
    "currval",
    "lastval",
    "current_query",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "pg_current_wal_lsn",
    "pg_current_wal_flush_lsn",
    "pg_current_wal_insert_lsn",
    "pg_last_wal_receive_lsn",
    "pg_last_wal_replay_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_is_in_recovery",
    "pg_is_wal_replay_paused",
    "pg_get_wal_replay_pause_state",
    "pg_database_size",
    "pg_relation_size",
    "pg_table_size",
    "pg_indexes_size",
    "pg_total_relation_size",
    "pg_tablespace_size",
    "pg_partition_tree",
    "pg_partition_ancestors",
    "pg_sequence_last_value",
    "pg_lock_status",
    "pg_blocking_pids",
    "pg_safe_snapshot_blocking_pids",
    "pg_notification_queue_usage",
    "pg_jit_available",
    "pg_xact_status",
    "txid_status",
    "pg_xact_commit_timestamp",
    "pg_xact_commit_timestamp_origin",
    "pg_last_committed_xact",
    "pg_stat_clear_snapshot",
    "pg_stat_have_stats",
    "pg_stat_get_xact_*",
    "pg_control_checkpoint",
    "pg_control_init",
    "pg_control_recovery",
    "pg_control_system",
    "pg_collation_actual_version",
    "pg_database_collation_actual_version",
    "pg_get_backend_memory_contexts",
    "pg_get_shmem_allocations",
    "pg_get_wal_resource_managers",
    "pg_get_multixact_members",
    "pg_prepared_xact",
    "pg_advisory_unlock_all",
];

fn matches_pattern(patterns: &[&str], name: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => *pattern == name,
        })
}

/// Whether `name` is on [`DENIED_BUILTINS`].
pub fn denied_builtin(name: &str) -> bool {
    matches_pattern(DENIED_BUILTINS, name) && !DENY_LIST_EXCEPTIONS.contains(&name)
}

/// Whether `name` is on [`DENIED_IN_ANY_SCHEMA`].
pub fn denied_in_any_schema(name: &str) -> bool {
    matches_pattern(DENIED_IN_ANY_SCHEMA, name)
}

/// Whether a name as written can resolve to the built-in schema (unqualified names
/// always search `pg_catalog` first: search_path may not put anything before it).
fn builtin_schema(schema: Option<&str>) -> bool {
    matches!(schema, None | Some("pg_catalog"))
}

/// Decides one statement.
pub fn decide(facts: &StatementFacts, catalog: Option<&FunctionCatalog>) -> Verdict {
    decide_reviewed(facts, catalog, &|_, _| false)
}

/// [`decide`], where `reviewed(schema, name)` says a VOLATILE user function was
/// reviewed by the DBA and may be called by name (a grant's `allow.functions`). Denied
/// built-ins stay denied whatever the list says.
pub fn decide_reviewed(
    facts: &StatementFacts,
    catalog: Option<&FunctionCatalog>,
    reviewed: &dyn Fn(&str, &str) -> bool,
) -> Verdict {
    let kind = decide_kind(&facts.kind, facts);
    if kind != Verdict::Allow {
        return kind;
    }
    if let Err(reason) = check_relations(facts, catalog) {
        return Verdict::deny(reason);
    }
    let set_config_ok = match check_set_config_calls(&facts.tree.set_config_calls) {
        Ok(ok) => ok,
        Err(_) if known_tool_statement(&facts.text) => true,
        Err(reason) => return Verdict::deny(reason),
    };
    for function in &facts.tree.functions {
        if set_config_ok
            && function.name == "set_config"
            && builtin_schema(function.schema.as_deref())
        {
            continue;
        }
        if let Err(reason) = check_function(function, catalog, reviewed) {
            return Verdict::deny(reason);
        }
    }
    for name in &facts.tree.syntax_calls {
        if let Err(reason) = check_syntax_call(name, catalog) {
            return Verdict::deny(reason);
        }
    }
    for operator in &facts.tree.operators {
        if let Err(reason) = check_operator(operator, catalog) {
            return Verdict::deny(reason);
        }
    }
    for cast in &facts.tree.cast_types {
        if let Err(reason) = check_cast(cast, catalog) {
            return Verdict::deny(reason);
        }
    }
    for name in &facts.tree.selected_names {
        if let Err(reason) = check_selected_name(name, catalog) {
            return Verdict::deny(reason);
        }
    }
    Verdict::Allow
}

/// Every `set_config` call must set an allowed setting to a value that `SET` would
/// accept, both as string constants. `Ok(true)`: there were such calls and all pass.
fn check_set_config_calls(calls: &[SetConfigCall]) -> Result<bool, String> {
    for call in calls {
        let (Some(name), Some(value)) = (&call.name, &call.value) else {
            return Err("set_config is allowed only with a constant setting name and value".into());
        };
        let set = SetFacts::Value {
            name: name.to_ascii_lowercase(),
            values: vec![value.to_ascii_lowercase()],
        };
        if let Verdict::Deny { reason } = check_set(&set) {
            return Err(format!("set_config({name:?}, ...): {reason}"));
        }
    }
    Ok(!calls.is_empty())
}

/// Relations on [`DENIED_RELATIONS`] and [`DENIED_COLUMNS`], and user views the
/// catalog found reading them.
fn check_relations(
    facts: &StatementFacts,
    catalog: Option<&FunctionCatalog>,
) -> Result<(), String> {
    let tree = &facts.tree;
    for table in &tree.tables {
        if let Some((_, _, why)) = DENIED_RELATIONS.iter().find(|(schema, name, _)| {
            *name == table.name && table.schema.as_deref().is_none_or(|s| s == *schema)
        }) {
            return Err(format!("reading {table} is not allowed: {why}"));
        }
        let denied_columns = DENIED_COLUMNS
            .iter()
            .filter(|_| builtin_schema(table.schema.as_deref()))
            .chain(DENIED_COLUMNS_ANY_SCHEMA)
            .find(|(n, _, _)| *n == table.name);
        {
            if let Some((_, columns, why)) = denied_columns {
                let whole_row = tree
                    .single_names
                    .iter()
                    .any(|n| *n == table.name || tree.aliases.contains(n));
                let named = tree
                    .column_names
                    .iter()
                    .chain(&tree.selected_names)
                    .chain(tree.functions.iter().map(|f| &f.name))
                    .any(|c| c == "*" || columns.contains(&c.as_str()));
                let copy = matches!(facts.kind, StatementKind::Copy { .. });
                // `FROM pg_subscription AS s(a, b, ..., k)` renames the columns.
                if whole_row || named || copy || tree.column_aliases {
                    return Err(format!(
                        "reading {table}.{} (by name, *, or a whole row) is not allowed: {why}",
                        columns.join(", ")
                    ));
                }
            }
        }
        if let Some(catalog) = catalog {
            if let Some(schema) = catalog.denied_view(table.schema.as_deref(), &table.name) {
                return Err(format!(
                    "reading {schema}.{} is not allowed: the view reads a relation that exposes credentials, server files or raw storage",
                    table.name
                ));
            }
        }
    }
    Ok(())
}

/// `search_path` may not put any schema before `pg_catalog`: implicit operators
/// (`IN`, `BETWEEN`, `CASE x WHEN`, `GREATEST`, `DISTINCT`, `ORDER BY`) and unqualified
/// names would resolve to a user's objects unchecked. Without `pg_catalog` in the list,
/// the server searches it first.
pub fn check_search_path(values: &[String]) -> Result<(), String> {
    let elements: Vec<String> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(
            |e| match e.strip_prefix('"').and_then(|e| e.strip_suffix('"')) {
                Some(quoted) => quoted.to_owned(),
                None => e.to_ascii_lowercase(),
            },
        )
        .collect();
    match elements.iter().position(|e| e == "pg_catalog") {
        Some(at) if at > 0 => Err(format!(
            "search_path may not put {} before pg_catalog",
            elements[..at].join(", ")
        )),
        _ => Ok(()),
    }
}

/// A name libpg_query parses as syntax (`json_scalar(x)`) that an older server may
/// resolve to a function: checked as a function when the catalog has one.
pub fn check_syntax_call(name: &str, catalog: Option<&FunctionCatalog>) -> Result<(), String> {
    check_if_function(name, catalog).map_err(|e| format!("{e} (written as {name}(...))"))
}

/// A name that calls a function only if one exists: checked as a function when the
/// catalog has one, passed when it has none, denied when there is no catalog.
fn check_if_function(name: &str, catalog: Option<&FunctionCatalog>) -> Result<(), String> {
    let Some(catalog) = catalog else {
        return Err(format!(
            "{name} cannot be checked: the upstream function catalog is unavailable"
        ));
    };
    if catalog.lookup(None, name).next().is_none() {
        return Ok(());
    }
    let function = QualifiedName {
        schema: None,
        name: name.to_owned(),
    };
    check_function(&function, Some(catalog), &|_, _| false)
}

/// Whether a cast to `target` is allowed: if a user-defined cast function to that type
/// is VOLATILE, casts to it are denied (the source type is not known before planning,
/// so any such cast counts).
pub fn check_cast(target: &QualifiedName, catalog: Option<&FunctionCatalog>) -> Result<(), String> {
    let Some(catalog) = catalog else {
        return Err(format!(
            "cast to {target} cannot be checked: the upstream catalog is unavailable"
        ));
    };
    if catalog
        .casts_to(target.schema.as_deref(), &target.name)
        .any(|c| c.volatility == Volatility::Volatile)
    {
        return Err(format!(
            "a cast to {target} runs a VOLATILE user-defined function"
        ));
    }
    Ok(())
}

/// `x.f` and `(expr).f` call `f(x)` when a function `f` exists (Postgres's functional
/// notation for field selection). A name that is a function is checked as one; a name
/// no function has is a column and passes.
pub fn check_selected_name(name: &str, catalog: Option<&FunctionCatalog>) -> Result<(), String> {
    if denied_builtin(name) || denied_in_any_schema(name) {
        return Err(format!(
            "{name} is a function with side effects (called as a field: x.{name})"
        ));
    }
    check_if_function(name, catalog).map_err(|e| format!("{e} (called as a field: x.{name})"))
}

/// Whether using `operator` is allowed: user-defined operators run their function, so
/// one backed by a VOLATILE function is denied like the function itself. Names that are
/// not operators in the catalog (`BETWEEN`) cannot run anything and pass.
pub fn check_operator(
    operator: &QualifiedName,
    catalog: Option<&FunctionCatalog>,
) -> Result<(), String> {
    let Some(catalog) = catalog else {
        return Err(format!(
            "operator {operator} cannot be checked: the upstream catalog is unavailable"
        ));
    };
    for info in catalog.operators(operator.schema.as_deref(), &operator.name) {
        if info.schema != "pg_catalog" && info.volatility == Volatility::Volatile {
            return Err(format!(
                "operator {}.{} runs a VOLATILE function and may write",
                info.schema, operator.name
            ));
        }
    }
    Ok(())
}

fn decide_kind(kind: &StatementKind, facts: &StatementFacts) -> Verdict {
    match kind {
        StatementKind::Empty | StatementKind::Show => Verdict::Allow,
        StatementKind::Query => check_query(facts),
        StatementKind::Explain {
            analyze: false,
            inner,
        } => match inner.as_ref() {
            // Planning alone runs nothing, so EXPLAIN of a write is fine.
            StatementKind::Query => Verdict::Allow,
            StatementKind::Other { label }
                if matches!(label.as_str(), "INSERT" | "UPDATE" | "DELETE" | "MERGE") =>
            {
                Verdict::Allow
            }
            other => Verdict::deny(format!("EXPLAIN of {} is not allowed", other.label())),
        },
        StatementKind::Explain {
            analyze: true,
            inner,
        }
        | StatementKind::DeclareCursor { inner }
        | StatementKind::Prepare { inner } => match inner.as_ref() {
            StatementKind::Query => check_query(facts),
            other => Verdict::deny(format!(
                "{} runs the statement, and {} is not allowed in a read-only session",
                kind.label(),
                other.label()
            )),
        },
        StatementKind::Copy { direction, inner } => match direction {
            CopyDirection::From => Verdict::deny("COPY FROM writes to a table"),
            CopyDirection::ToServer => {
                Verdict::deny("COPY to a server file or program runs on the database server")
            }
            CopyDirection::ToClient => match inner.as_deref() {
                None | Some(StatementKind::Query) => check_query(facts),
                Some(other) => Verdict::deny(format!("COPY of {} is not allowed", other.label())),
            },
        },
        StatementKind::Set(set) => check_set(set),
        StatementKind::Transaction { op, read_write } => match op {
            TransactionOp::Begin if *read_write => Verdict::deny(
                "the session is read-only; a READ WRITE transaction cannot be started",
            ),
            TransactionOp::TwoPhase => Verdict::deny("two-phase commit is not allowed"),
            _ => Verdict::Allow,
        },
        StatementKind::Fetch
        | StatementKind::CloseCursor
        | StatementKind::Execute
        | StatementKind::Deallocate
        | StatementKind::Discard
        | StatementKind::Unlisten => Verdict::Allow,
        StatementKind::Lock { access_share: true } => Verdict::Allow,
        StatementKind::Lock {
            access_share: false,
        } => Verdict::deny("only LOCK ... IN ACCESS SHARE MODE is allowed (it blocks writers)"),
        // The caller names the statement kind ("DROP TABLE denied: ...").
        StatementKind::Other { .. } => Verdict::deny("the grant is read-only"),
        // MySQL forms; the Postgres front end never produces them.
        StatementKind::Use { .. } | StatementKind::SetStatement { .. } => {
            Verdict::deny("not a Postgres statement")
        }
    }
}

fn check_query(facts: &StatementFacts) -> Verdict {
    if let Some(write) = facts.tree.writes.first() {
        return Verdict::deny(format!(
            "a query containing {write} writes data (data-modifying WITH)"
        ));
    }
    if facts.tree.locking {
        return Verdict::deny("row locking clauses (FOR UPDATE/SHARE) take write locks");
    }
    if facts.tree.into {
        return Verdict::deny("SELECT INTO creates a table");
    }
    Verdict::Allow
}

fn setting_allowed(name: &str) -> bool {
    ALLOWED_SETTINGS.contains(&name) || name.starts_with("enable_")
}

fn check_set(set: &SetFacts) -> Verdict {
    match set {
        // RESET ALL returns to the session's startup values, where sqlgate pins
        // read-only mode and standard_conforming_strings; it leaves transaction_*
        // alone. Single settings only from the allow-list, the pinned settings whose
        // reset value is the pinned one, and role/session_authorization (back to the
        // held role). `RESET transaction_read_only` inside a transaction block would
        // make that transaction read-write.
        SetFacts::ResetAll => Verdict::Allow,
        SetFacts::Reset { name } => {
            let back_to_pinned = matches!(
                name.as_str(),
                "default_transaction_read_only"
                    | "standard_conforming_strings"
                    | "role"
                    | "session_authorization"
            );
            if setting_allowed(name) || back_to_pinned {
                Verdict::Allow
            } else {
                Verdict::deny(format!(
                    "RESET {name} is not on the list of settings a read-only session may change"
                ))
            }
        }
        SetFacts::TransactionModes { read_write: true } => {
            Verdict::deny("the session is read-only; transactions cannot be made READ WRITE")
        }
        SetFacts::TransactionModes { read_write: false } => Verdict::Allow,
        // MySQL form; the Postgres front end never produces it.
        SetFacts::Variables(_) => Verdict::deny("not a Postgres SET"),
        SetFacts::Value { name, values } => {
            let name = name.as_str();
            if name == "client_encoding" {
                let ok = values.len() == 1 && SAFE_CLIENT_ENCODINGS.contains(&values[0].as_str());
                return if ok {
                    Verdict::Allow
                } else {
                    Verdict::deny("client_encoding is pinned to UTF8 (multi-byte encodings like SJIS or GBK can hide quotes from the firewall)")
                };
            }
            if name == "search_path" {
                return match check_search_path(values) {
                    Ok(()) => Verdict::Allow,
                    Err(reason) => Verdict::deny(reason),
                };
            }
            if setting_allowed(name) {
                return Verdict::Allow;
            }
            if let Some((_, pinned)) = PINNED_SETTINGS.iter().find(|(n, _)| *n == name) {
                let on =
                    values.len() == 1 && matches!(values[0].as_str(), "on" | "true" | "1" | "yes");
                return match (on, *pinned) {
                    (true, "on") => Verdict::Allow,
                    _ if name == "standard_conforming_strings" => Verdict::deny(
                        "standard_conforming_strings is pinned on so the firewall parses strings as the server does",
                    ),
                    _ => Verdict::deny(format!("{name} is pinned on: the session is read-only")),
                };
            }
            match name {
                "role" if values.len() == 1 && values[0] == "none" => Verdict::Allow,
                "role" | "session_authorization" => {
                    Verdict::deny(format!("changing {name} is not allowed"))
                }
                _ => Verdict::deny(format!(
                    "SET {name} is not on the list of settings a read-only session may change"
                )),
            }
        }
    }
}

/// Whether calling `function` is allowed, from the deny-list and the catalog.
pub fn check_function(
    function: &QualifiedName,
    catalog: Option<&FunctionCatalog>,
    reviewed: &dyn Fn(&str, &str) -> bool,
) -> Result<(), String> {
    let name = function.name.as_str();
    if (denied_builtin(name) && builtin_schema(function.schema.as_deref()))
        || denied_in_any_schema(name)
    {
        return Err(format!("function {function} is not allowed: it has side effects or reaches outside the session"));
    }
    let Some(catalog) = catalog else {
        return Err(format!(
            "function {function} cannot be checked: the upstream function catalog is unavailable"
        ));
    };
    let mut found = false;
    for info in catalog.lookup(function.schema.as_deref(), name) {
        found = true;
        if info.schema == "pg_catalog" {
            if info.volatility == Volatility::Volatile
                && !matches_pattern(HARMLESS_VOLATILE_BUILTINS, name)
            {
                return Err(format!(
                    "built-in function {name} is VOLATILE and not on the list of harmless volatile built-ins"
                ));
            }
            continue; // built-in, not on the deny-list
        }
        if info.kind == 'p' {
            return Err(format!(
                "{function} is a procedure; procedures are not allowed"
            ));
        }
        if info.volatility == Volatility::Volatile && !reviewed(&info.schema, name) {
            return Err(format!(
                "function {}.{name} is VOLATILE and may write; only IMMUTABLE or STABLE user functions are allowed",
                info.schema
            ));
        }
    }
    // `typename(x)` is a cast to that type when no function matches (function-style
    // cast); it runs the type's cast function, so it is checked like `x::typename`.
    let is_type = catalog.is_type(function.schema.as_deref(), name);
    if is_type {
        check_cast(function, Some(catalog))?;
    }
    if !found && !is_type {
        return Err(format!(
            "function {function} does not exist in the upstream catalog"
        ));
    }
    Ok(())
}

/// Whether a denial may be due to a catalog that is out of date: the statement names a
/// function, type or operator the cached catalog does not know (created after it was
/// read). The session refreshes the catalog and decides again.
pub fn unknown_to_catalog(facts: &StatementFacts, catalog: Option<&FunctionCatalog>) -> bool {
    let Some(catalog) = catalog else {
        return true;
    };
    facts.tree.functions.iter().any(|f| {
        catalog
            .lookup(f.schema.as_deref(), &f.name)
            .next()
            .is_none()
            && !catalog.is_type(f.schema.as_deref(), &f.name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::postgres::classify;

    fn catalog() -> FunctionCatalog {
        let row = |s: &str, n: &str, v: &str, k: &str| {
            [s.to_string(), n.to_string(), v.to_string(), k.to_string()]
        };
        FunctionCatalog::from_rows([
            row("pg_catalog", "lower", "i", "f"),
            row("pg_catalog", "now", "s", "f"),
            row("pg_catalog", "count", "i", "a"),
            row("pg_catalog", "set_config", "v", "f"),
            row("pg_catalog", "nextval", "v", "f"),
            row("pg_catalog", "random", "v", "f"),
            row("pg_catalog", "ts_stat", "v", "f"),
            row("pg_catalog", "lo_create", "v", "f"),
            row("pg_catalog", "some_new_volatile", "v", "f"),
            row("public", "safe_fn", "s", "f"),
            row("public", "evil_fn", "v", "f"),
            row("public", "proc1", "v", "p"),
            row("pg_catalog", "=", "i", "o"),
            row("public", "===", "v", "o"),
            row("public", "~~~", "s", "o"),
        ])
    }

    /// The verdict, with a denial phrased as the session phrases it.
    fn verdict(sql: &str) -> Verdict {
        let cat = catalog();
        let all = classify(sql, 1 << 20).unwrap();
        for facts in &all {
            if let Verdict::Deny { reason } = decide(facts, Some(&cat)) {
                return Verdict::Deny {
                    reason: format!("{} denied: {reason}", facts.kind.label()),
                };
            }
        }
        Verdict::Allow
    }

    fn allowed(sql: &str) {
        assert_eq!(verdict(sql), Verdict::Allow, "{sql}");
    }

    fn denied(sql: &str, why: &str) {
        match verdict(sql) {
            Verdict::Deny { reason } => assert!(reason.contains(why), "{sql}: {reason}"),
            Verdict::Allow => panic!("allowed: {sql}"),
        }
    }

    #[test]
    fn reads_and_their_write_neighbours() {
        allowed("SELECT lower(name), count(*) FROM t GROUP BY 1");
        denied(
            "INSERT INTO t VALUES (1)",
            "INSERT denied: the grant is read-only",
        );
        allowed("WITH x AS (SELECT 1) SELECT * FROM x");
        denied(
            "WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x",
            "UPDATE",
        );
        allowed("SELECT * FROM t FOR READ ONLY");
        denied("SELECT * FROM t FOR UPDATE", "locking");
        denied("SELECT * INTO t2 FROM t", "SELECT INTO");
        allowed("EXPLAIN DELETE FROM t");
        denied(
            "EXPLAIN ANALYZE DELETE FROM t",
            "EXPLAIN ANALYZE denied: EXPLAIN ANALYZE runs the statement, and DELETE is not allowed",
        );
        allowed("EXPLAIN ANALYZE SELECT 1");
    }

    #[test]
    fn functions_by_catalog() {
        allowed("SELECT now(), safe_fn()");
        denied("SELECT evil_fn()", "VOLATILE");
        denied("SELECT public.proc1()", "procedure");
        denied(
            "SELECT pg_catalog.set_config('default_transaction_read_only', 'off', false)",
            "set_config",
        );
        denied("SELECT nextval('s')", "nextval");
        denied("SELECT nope()", "does not exist");
        allowed("SELECT random()");
        denied("SELECT ts_stat('SELECT 1')", "ts_stat");
        denied("SELECT some_new_volatile()", "VOLATILE and not on the list");
        // Field-selection notation calls functions too.
        denied("SELECT (0::oid).lo_create", "lo_create");
        denied("SELECT t.evil_fn FROM t", "VOLATILE");
        denied(
            "SELECT (now()).pg_terminate_backend",
            "pg_terminate_backend",
        );
        allowed("SELECT t.name, (t.x).y FROM t");
        allowed("SELECT 1 WHERE 1 = 1 AND 2 BETWEEN 1 AND 3");
        allowed("SELECT 1 ~~~ 2");
        denied(
            "SELECT 1 === 2",
            "operator public.=== runs a VOLATILE function",
        );
        denied("SELECT 1 OPERATOR(public.===) 2", "VOLATILE");
        denied("SELECT lo_import('/etc/passwd')", "lo_import");
    }

    #[test]
    fn settings_and_transactions() {
        allowed("SET application_name = 'x'");
        allowed("SET extra_float_digits = 3");
        allowed("SET NAMES 'UTF8'");
        denied("SET client_encoding = 'SJIS'", "pinned to UTF8");
        denied("SET default_transaction_read_only = off", "pinned on");
        denied(
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
            "READ WRITE",
        );
        denied("SET ROLE postgres", "role");
        allowed("RESET ALL");
        allowed("RESET application_name");
        denied("RESET transaction_read_only", "RESET transaction_read_only");
        denied(
            "SET transaction_read_only TO DEFAULT",
            "transaction_read_only",
        );
        allowed("begin transaction");
        allowed("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
        denied("START TRANSACTION READ WRITE", "READ WRITE");
        allowed("SAVEPOINT a; RELEASE SAVEPOINT a; ROLLBACK TO SAVEPOINT a; COMMIT");
        denied("PREPARE TRANSACTION 'x'", "two-phase");
        denied(
            "SET transaction_read_only = off; DELETE FROM t",
            "pinned on",
        );
    }

    #[test]
    fn server_side_escapes() {
        denied("COPY t TO '/tmp/x'", "server file");
        denied("COPY t FROM STDIN", "COPY FROM");
        allowed("COPY t TO STDOUT");
        allowed("COPY (SELECT 1) TO STDOUT WITH (FORMAT csv)");
        denied("COPY (DELETE FROM t RETURNING *) TO STDOUT", "DELETE");
        denied("ALTER SYSTEM SET fsync = off", "ALTER SYSTEM");
        denied("VACUUM t", "VACUUM");
        denied("LOCK TABLE t", "LOCK");
        denied("DO $$ BEGIN DELETE FROM t; END $$", "DO");
        denied("CALL proc1()", "CALL");
        allowed("DECLARE c CURSOR FOR SELECT 1; FETCH 1 FROM c; CLOSE c");
        denied("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", "locking");
        allowed("PREPARE p AS SELECT 1; EXECUTE p; DEALLOCATE p");
        denied("PREPARE p AS DELETE FROM t", "DELETE");
        denied("LISTEN x", "LISTEN");
        denied("NOTIFY x", "NOTIFY");
    }
}
