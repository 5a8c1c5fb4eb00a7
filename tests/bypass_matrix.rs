//! Security regression suite for function-call bypasses of the read-only policy.
//!
//! A class of bypass once existed where a relation named like a function hid the call:
//! `WITH set_config AS (SELECT 1) SELECT s FROM set_config,
//! set_config('default_transaction_read_only','off',false) AS s` was allowed. This file
//! generates every denied call (one or more concrete calls for each entry of
//! `DENIED_BUILTINS` and `DENIED_IN_ANY_SCHEMA`, a VOLATILE user function, operator and
//! aggregate) in every syntactic position under every kind of name shadow, and checks
//! through a real gateway that each is denied, next to harmless calls in the same
//! shapes that must be allowed. A property test then nests denied calls in random
//! wrappers and checks the classifier and policy directly.
//!
//! Also here: denied relations in several positions, and the session's verdict cache
//! (an allowed statement must not make a same-shape denied one allowed).
//!
//! Any statement reported as "FINDING" is a real bypass: fix the gateway, never the
//! expectation.

mod common;

use std::time::Instant;

use common::{db_error, TestGateway};
use proptest::prelude::*;
use sqlgate::catalog::FunctionCatalog;
use sqlgate::policy::readonly::{
    decide, denied_builtin, denied_in_any_schema, Verdict, DENIED_BUILTINS, DENIED_IN_ANY_SCHEMA,
    DENIED_RELATIONS,
};
use sqlgate::sql::postgres::classify;
use tokio_postgres::Client;

// ---------------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------------

/// A concrete call for every entry of `DENIED_BUILTINS` (pattern → `(name, args)`).
/// Argument lists type-check on PostgreSQL 15 where the function exists; the gateway
/// denies before execution, so the statement only has to parse.
const BUILTIN_CALLS: &[(&str, &[(&str, &str)])] = &[
    (
        "set_config",
        &[(
            "set_config",
            "'default_transaction_read_only', 'off', false",
        )],
    ),
    ("nextval", &[("nextval", "'counter'")]),
    ("setval", &[("setval", "'counter', 100")]),
    ("pg_terminate_backend", &[("pg_terminate_backend", "0")]),
    ("pg_cancel_backend", &[("pg_cancel_backend", "0")]),
    ("pg_reload_conf", &[("pg_reload_conf", "")]),
    ("pg_rotate_logfile", &[("pg_rotate_logfile", "")]),
    (
        "pg_log_backend_memory_contexts",
        &[("pg_log_backend_memory_contexts", "0")],
    ),
    (
        "lo_*",
        &[
            ("lo_import", "'/etc/hostname'"),
            ("lo_create", "0"),
            ("lo_unlink", "0"),
            ("lo_put", "0, 0, '\\x00'::bytea"),
            ("lo_from_bytea", "0, '\\x00'::bytea"),
            ("lo_export", "0, '/tmp/sqlgate-lo'"),
        ],
    ),
    ("loread", &[("loread", "0, 1")]),
    ("lowrite", &[("lowrite", "0, '\\x00'::bytea")]),
    (
        "dblink*",
        &[
            ("dblink", "'dbname=postgres', 'SELECT 1'"),
            ("dblink_exec", "'dbname=postgres', 'DELETE FROM items'"),
        ],
    ),
    ("pg_read_file", &[("pg_read_file", "'/etc/hostname'")]),
    (
        "pg_read_binary_file",
        &[("pg_read_binary_file", "'/etc/hostname'")],
    ),
    ("pg_ls_*", &[("pg_ls_dir", "'.'"), ("pg_ls_waldir", "")]),
    ("pg_stat_file", &[("pg_stat_file", "'postgresql.conf'")]),
    ("pg_file_*", &[("pg_file_write", "'x', 'y', false")]),
    (
        "query_to_xml*",
        &[
            (
                "query_to_xml",
                "'DELETE FROM items RETURNING 1', true, true, ''",
            ),
            ("query_to_xml_and_xmlschema", "'SELECT 1', true, true, ''"),
        ],
    ),
    (
        "query_to_xmlschema",
        &[("query_to_xmlschema", "'SELECT 1', true, true, ''")],
    ),
    ("pg_stat_get_activity", &[("pg_stat_get_activity", "NULL")]),
    (
        "pg_stat_get_backend_activity",
        &[("pg_stat_get_backend_activity", "1")],
    ),
    (
        "cursor_to_xml*",
        &[("cursor_to_xml", "'c'::refcursor, 1, true, true, ''")],
    ),
    (
        "table_to_xml*",
        &[("table_to_xml", "'items'::regclass, true, true, ''")],
    ),
    (
        "schema_to_xml*",
        &[("schema_to_xml", "'public', true, true, ''")],
    ),
    ("database_to_xml*", &[("database_to_xml", "true, true, ''")]),
    (
        "pg_advisory*",
        &[("pg_advisory_lock", "1"), ("pg_advisory_xact_lock", "1")],
    ),
    ("pg_try_advisory*", &[("pg_try_advisory_lock", "1")]),
    ("pg_notify", &[("pg_notify", "'ch', 'x'")]),
    (
        "pg_create_*",
        &[
            ("pg_create_restore_point", "'x'"),
            ("pg_create_logical_replication_slot", "'s', 'test_decoding'"),
        ],
    ),
    (
        "pg_drop_replication_slot",
        &[("pg_drop_replication_slot", "'s'")],
    ),
    (
        "pg_replication_*",
        &[("pg_replication_origin_create", "'x'")],
    ),
    (
        "pg_logical_*",
        &[("pg_logical_emit_message", "true, 'p', 'x'")],
    ),
    (
        "pg_copy_*",
        &[("pg_copy_physical_replication_slot", "'a', 'b'")],
    ),
    ("pg_switch_wal", &[("pg_switch_wal", "")]),
    ("pg_backup_*", &[("pg_backup_start", "'x'")]),
    // Removed in PostgreSQL 15; parsing is all that matters.
    ("pg_start_backup", &[("pg_start_backup", "'x'")]),
    ("pg_stop_backup", &[("pg_stop_backup", "")]),
    ("pg_promote", &[("pg_promote", "")]),
    ("pg_wal_replay_*", &[("pg_wal_replay_pause", "")]),
    (
        "pg_stat_reset*",
        &[
            ("pg_stat_reset", ""),
            ("pg_stat_reset_shared", "'bgwriter'"),
        ],
    ),
    (
        "pg_import_system_collations",
        &[("pg_import_system_collations", "'pg_catalog'::regnamespace")],
    ),
    (
        "pg_nextoid",
        &[(
            "pg_nextoid",
            "'items'::regclass, 'id', 'items_pkey'::regclass",
        )],
    ),
    ("txid_current", &[("txid_current", "")]),
    ("pg_current_xact_id", &[("pg_current_xact_id", "")]),
    (
        "binary_upgrade_*",
        &[("binary_upgrade_set_next_pg_type_oid", "0::oid")],
    ),
    (
        "brin_summarize_*",
        &[("brin_summarize_new_values", "'items_pkey'::regclass")],
    ),
    (
        "brin_desummarize_range",
        &[("brin_desummarize_range", "'items_pkey'::regclass, 0")],
    ),
    (
        "gin_clean_pending_list",
        &[("gin_clean_pending_list", "'items_pkey'::regclass")],
    ),
    (
        "pg_stat_statements_reset",
        &[("pg_stat_statements_reset", "")],
    ),
    (
        "ts_stat",
        &[("ts_stat", "'SELECT to_tsvector(name) FROM items'")],
    ),
    (
        "ts_rewrite",
        &[(
            "ts_rewrite",
            "'a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery'",
        )],
    ),
    (
        "pg_show_all_file_settings",
        &[("pg_show_all_file_settings", "")],
    ),
    ("pg_hba_file_rules", &[("pg_hba_file_rules", "")]),
    ("pg_ident_file_mappings", &[("pg_ident_file_mappings", "")]),
];

/// A concrete call for every entry of `DENIED_IN_ANY_SCHEMA` not already covered above
/// (extension functions: contrib's tablefunc, xml2, pageinspect, amcheck, pg_surgery,
/// pg_visibility, pg_prewarm, adminpack, dblink).
const EXTENSION_CALLS: &[(&str, &[(&str, &str)])] = &[
    ("crosstab*", &[("crosstab", "'SELECT 1'")]),
    ("pg_stat_statements", &[("pg_stat_statements", "true")]),
    (
        "connectby*",
        &[("connectby", "'items', 'id', 'name', '1', 0")],
    ),
    (
        "xpath_table",
        &[("xpath_table", "'id', 'name', 'items', '/x', 'true'")],
    ),
    ("get_raw_page", &[("get_raw_page", "'items', 0")]),
    ("page_header", &[("page_header", "'\\x00'::bytea")]),
    ("page_checksum", &[("page_checksum", "'\\x00'::bytea, 0")]),
    ("heap_page_item*", &[("heap_page_items", "'\\x00'::bytea")]),
    (
        "heap_tuple_infomask_flags",
        &[("heap_tuple_infomask_flags", "0, 0")],
    ),
    (
        "tuple_data_split",
        &[("tuple_data_split", "0::oid, '\\x00'::bytea, 0, 0, ''")],
    ),
    ("bt_page_*", &[("bt_page_items", "'items_pkey', 1")]),
    ("bt_metap", &[("bt_metap", "'items_pkey'")]),
    (
        "fsm_page_contents",
        &[("fsm_page_contents", "'\\x00'::bytea")],
    ),
    (
        "heap_force_*",
        &[("heap_force_kill", "'items'::regclass, ARRAY[]::tid[]")],
    ),
    (
        "pg_truncate_visibility_map",
        &[("pg_truncate_visibility_map", "'items'::regclass")],
    ),
    ("pg_prewarm", &[("pg_prewarm", "'items'::regclass")]),
];

/// What kind of call: decides which positions are valid SQL for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Function,
    Operator,
    Aggregate,
}

#[derive(Debug, Clone)]
struct Call {
    /// As written, unqualified (`lo_import('/etc/hostname')`, `1 === 1`).
    text: String,
    /// Schema-qualified (`pg_catalog.lo_import(...)`, `1 OPERATOR(public.===) 1`).
    qualified: String,
    /// In an extension schema, for names denied in any schema (`extensions.dblink(...)`).
    other_schema: Option<String>,
    /// Field-selection notation, `(arg).name`, which calls `name(arg)`: for functions
    /// of one argument.
    field: Option<String>,
    /// For operators: the operator as written unqualified and qualified, for the
    /// positions only operators have (`ORDER BY ... USING`, `ANY`, `ALL`).
    operator: Option<(String, String)>,
    /// The identifier that shadows the call (a CTE, alias or column of this name).
    shadow: String,
    /// What a denial message must name.
    needle: String,
    kind: Kind,
}

impl Call {
    /// A function called by name, qualified with `schema` in the qualified form.
    fn function(schema: &str, name: &str, args: &str, kind: Kind) -> Call {
        Call {
            text: format!("{name}({args})"),
            qualified: format!("{schema}.{name}({args})"),
            other_schema: denied_in_any_schema(name).then(|| format!("extensions.{name}({args})")),
            field: field(name, args),
            operator: None,
            shadow: name.to_owned(),
            needle: name.to_owned(),
            kind,
        }
    }

    fn builtin(name: &str, args: &str) -> Call {
        Call::function("pg_catalog", name, args, Kind::Function)
    }

    /// An extension function (installed in `public` or elsewhere).
    fn extension(name: &str, args: &str) -> Call {
        Call::function("public", name, args, Kind::Function)
    }

    fn user(name: &str, args: &str, kind: Kind) -> Call {
        Call::function("public", name, args, kind)
    }

    fn operator(left: &str, op: &str, right: &str) -> Call {
        let qualified = format!("OPERATOR(public.{op})");
        Call {
            text: format!("{left} {op} {right}"),
            qualified: format!("{left} {qualified} {right}"),
            other_schema: None,
            field: None,
            operator: Some((op.to_owned(), qualified)),
            // Operators are not identifiers; a quoted identifier of the same text shadows.
            shadow: format!("\"{op}\""),
            needle: op.to_owned(),
            kind: Kind::Operator,
        }
    }
}

/// Every denied call: all of `DENIED_BUILTINS` and `DENIED_IN_ANY_SCHEMA`, a VOLATILE
/// user function, operator and aggregate.
fn denied_calls() -> Vec<Call> {
    let mut calls = Vec::new();
    for pattern in DENIED_BUILTINS {
        let (_, concrete) = BUILTIN_CALLS
            .iter()
            .find(|(p, _)| p == pattern)
            .unwrap_or_else(|| panic!("no concrete call for DENIED_BUILTINS entry {pattern:?}"));
        assert!(!concrete.is_empty(), "{pattern}");
        for (name, args) in *concrete {
            assert!(
                matches_pattern(pattern, name) && denied_builtin(name),
                "{name} does not stand for {pattern}"
            );
            calls.push(Call::builtin(name, args));
        }
    }
    for (pattern, _) in BUILTIN_CALLS {
        assert!(
            DENIED_BUILTINS.contains(pattern),
            "{pattern} is no longer on DENIED_BUILTINS"
        );
    }
    for pattern in DENIED_IN_ANY_SCHEMA {
        let covered = BUILTIN_CALLS
            .iter()
            .chain(EXTENSION_CALLS)
            .flat_map(|(_, c)| c.iter())
            .any(|(name, _)| matches_pattern(pattern, name));
        assert!(
            covered,
            "no concrete call for DENIED_IN_ANY_SCHEMA entry {pattern:?}"
        );
    }
    for (pattern, concrete) in EXTENSION_CALLS {
        assert!(DENIED_IN_ANY_SCHEMA.contains(pattern), "{pattern}");
        for (name, args) in *concrete {
            assert!(matches_pattern(pattern, name), "{name} vs {pattern}");
            calls.push(Call::extension(name, args));
        }
    }
    calls.push(Call::user("volatile_wipe", "", Kind::Function));
    calls.push(Call::operator("1", "===", "1"));
    calls.push(Call::user("vsum", "id", Kind::Aggregate));
    calls
}

/// Harmless neighbours: an IMMUTABLE built-in, a STABLE user function, a STABLE
/// operator and an aggregate with an IMMUTABLE step function.
fn harmless_calls() -> Vec<Call> {
    vec![
        Call::builtin("lower", "'x'"),
        Call::user("stable_double", "1", Kind::Function),
        Call::operator("1", "<<<", "2"),
        Call::user("isum", "id", Kind::Aggregate),
    ]
}

/// `(arg).name` if `args` is a single argument (no comma outside quotes and brackets).
fn field(name: &str, args: &str) -> Option<String> {
    let mut depth = 0i32;
    let mut quoted = false;
    for ch in args.chars() {
        match ch {
            '\'' => quoted = !quoted,
            '(' | '[' if !quoted => depth += 1,
            ')' | ']' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => return None,
            _ => {}
        }
    }
    (!args.trim().is_empty()).then(|| format!("({args}).{name}"))
}

fn matches_pattern(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

// ---------------------------------------------------------------------------------
// Positions and shadows
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    SelectList,
    FromFunction,
    Lateral,
    Where,
    GroupBy,
    Having,
    OrderBy,
    Window,
    ValuesInFrom,
    ValuesTop,
    RowsFrom,
    JoinOn,
    Filter,
    DistinctOn,
    Limit,
    InSubquery,
    FieldNotation,
    OrderByUsing,
    AnyArray,
    AllSubquery,
    CteBody,
    NestedScalar,
    NestedFrom,
    Case,
    Cast,
    ExplainAnalyze,
    DeclareCursor,
    Prepare,
    CopyToStdout,
}

const POSITIONS: &[Position] = &[
    Position::SelectList,
    Position::FromFunction,
    Position::Lateral,
    Position::Where,
    Position::GroupBy,
    Position::Having,
    Position::OrderBy,
    Position::Window,
    Position::ValuesInFrom,
    Position::ValuesTop,
    Position::RowsFrom,
    Position::JoinOn,
    Position::Filter,
    Position::DistinctOn,
    Position::Limit,
    Position::InSubquery,
    Position::FieldNotation,
    Position::OrderByUsing,
    Position::AnyArray,
    Position::AllSubquery,
    Position::CteBody,
    Position::NestedScalar,
    Position::NestedFrom,
    Position::Case,
    Position::Cast,
    Position::ExplainAnalyze,
    Position::DeclareCursor,
    Position::Prepare,
    Position::CopyToStdout,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shadow {
    /// No shadowing name.
    Bare,
    /// A CTE named like the function (not read).
    Cte,
    /// The table aliased like the function.
    TableAlias,
    /// A column (in the FROM item) and the output column named like the function.
    ColumnAlias,
    /// The original bypass: a CTE named like the function is a FROM item.
    CteInFrom,
    /// `pg_catalog.name(...)` for built-ins, `public.name(...)` for user objects.
    Qualified,
    /// `extensions.name(...)`, for names denied in any schema.
    OtherSchema,
    /// `database.schema.name(...)`: a three-part name (the current database's).
    DatabaseQualified,
}

const SHADOWS: &[Shadow] = &[
    Shadow::Bare,
    Shadow::Cte,
    Shadow::TableAlias,
    Shadow::ColumnAlias,
    Shadow::CteInFrom,
    Shadow::Qualified,
    Shadow::OtherSchema,
    Shadow::DatabaseQualified,
];

/// The pieces a shadow contributes to a statement.
struct Parts {
    ctes: Vec<String>,
    src: String,
    col: String,
    call: String,
}

impl Parts {
    fn new(shadow: Shadow, call: &Call, db: &str) -> Option<Parts> {
        let n = &call.shadow;
        let mut parts = Parts {
            ctes: Vec::new(),
            src: "items AS t".into(),
            col: "c".into(),
            call: call.text.clone(),
        };
        match shadow {
            Shadow::Bare => {}
            Shadow::Cte => parts.ctes.push(format!("{n} AS (SELECT 1 AS {n})")),
            Shadow::TableAlias => parts.src = format!("items AS {n}"),
            Shadow::ColumnAlias => {
                parts.src = format!("(SELECT id, 1 AS {n} FROM items) AS t");
                parts.col = n.clone();
            }
            Shadow::CteInFrom => {
                parts.ctes.push(format!("{n} AS (SELECT id FROM items)"));
                parts.src = n.clone();
            }
            Shadow::Qualified => parts.call = call.qualified.clone(),
            // Only names denied in any schema have an extension-schema form.
            Shadow::OtherSchema => parts.call = call.other_schema.clone()?,
            Shadow::DatabaseQualified => {
                parts.call = match call.kind {
                    Kind::Operator => call
                        .qualified
                        .replace("OPERATOR(", &format!("OPERATOR({db}.")),
                    _ => format!("{db}.{}", call.qualified),
                }
            }
        }
        Some(parts)
    }

    fn with(&self) -> String {
        if self.ctes.is_empty() {
            String::new()
        } else {
            format!("WITH {} ", self.ctes.join(", "))
        }
    }

    /// `[WITH ...] SELECT {select} FROM {src}{more_from} {tail}`.
    fn query(&self, select: &str, more_from: &str, tail: &str) -> String {
        let sql = format!(
            "{}SELECT {select} FROM {}{more_from} {tail}",
            self.with(),
            self.src
        );
        sql.trim_end().to_owned()
    }

    fn select_list(&self) -> String {
        self.query(&format!("{} AS {}", self.call, self.col), "", "")
    }
}

/// How a statement of the matrix is sent and judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Simple,
    /// `COPY ... TO STDOUT`: an allowed one is started with `copy_out` (the simple
    /// protocol client does not read COPY data); a denied one is sent as a simple query.
    Copy,
}

/// The statement for `call` in `position` under `shadow`, or `None` where that
/// combination is not valid SQL (each skip is explained below).
fn render(
    position: Position,
    shadow: Shadow,
    call: &Call,
    harmless: bool,
    db: &str,
) -> Option<String> {
    let p = Parts::new(shadow, call, db)?;
    let c = &p.call;
    let col = &p.col;
    // Aggregates are not allowed in FROM function arguments, WHERE, GROUP BY or in a
    // FROM subquery that cannot see `id`: these would fail upstream for the harmless
    // aggregate. Denied statements only have to parse, so the denied aggregate keeps
    // them.
    let aggregate_invalid = harmless && call.kind == Kind::Aggregate;
    let sql = match position {
        Position::SelectList => p.select_list(),
        Position::FromFunction => {
            // An operator expression is not a FROM item: it does not parse.
            if call.kind == Kind::Operator || aggregate_invalid {
                return None;
            }
            p.query(&format!("1 AS {col}"), &format!(", {c} AS f"), "")
        }
        Position::Lateral => p.query(
            &format!("1 AS {col}"),
            &format!(", LATERAL (SELECT {c} AS v FROM items AS i2) AS l"),
            "",
        ),
        Position::Where => {
            if aggregate_invalid {
                return None;
            }
            p.query(
                &format!("1 AS {col}"),
                "",
                &format!("WHERE ({c}) IS NOT NULL"),
            )
        }
        Position::GroupBy => {
            if aggregate_invalid {
                return None;
            }
            p.query(&format!("1 AS {col}"), "", &format!("GROUP BY ({c})"))
        }
        Position::Having => p.query(
            &format!("1 AS {col}"),
            "",
            &format!("GROUP BY 1 HAVING ({c}) IS NOT NULL"),
        ),
        Position::OrderBy => p.query(&format!("1 AS {col}"), "", &format!("ORDER BY ({c})")),
        Position::Window => p.query(
            &format!("row_number() OVER (ORDER BY {c}) AS {col}"),
            "",
            "",
        ),
        Position::ValuesInFrom => {
            if aggregate_invalid {
                return None;
            }
            p.query(
                &format!("1 AS {col}"),
                &format!(", (VALUES ({c})) AS v(x)"),
                "",
            )
        }
        Position::ValuesTop => {
            // A bare VALUES has no FROM item to alias and no output column to name, so
            // those shadows are the same statement as `Bare`; CteInFrom is `Cte` here.
            if matches!(
                shadow,
                Shadow::TableAlias | Shadow::ColumnAlias | Shadow::CteInFrom
            ) || aggregate_invalid
            {
                return None;
            }
            format!("{}VALUES ({c})", p.with())
        }
        Position::RowsFrom => {
            // As in FromFunction: an operator is not a FROM item.
            if call.kind == Kind::Operator || aggregate_invalid {
                return None;
            }
            p.query(
                &format!("1 AS {col}"),
                &format!(", ROWS FROM ({c}) AS f"),
                "",
            )
        }
        Position::JoinOn => {
            if aggregate_invalid {
                return None;
            }
            p.query(
                &format!("1 AS {col}"),
                &format!(" JOIN items AS j ON ({c}) IS NOT NULL"),
                "",
            )
        }
        Position::Filter => {
            if aggregate_invalid {
                return None;
            }
            p.query(
                &format!("count(*) FILTER (WHERE ({c}) IS NOT NULL) AS {col}"),
                "",
                "",
            )
        }
        Position::DistinctOn => p.query(&format!("DISTINCT ON ({c}) 1 AS {col}"), "", ""),
        Position::Limit => {
            if aggregate_invalid {
                return None;
            }
            p.query(
                &format!("1 AS {col}"),
                "",
                &format!("LIMIT (CASE WHEN ({c}) IS NULL THEN 1 ELSE 2 END)"),
            )
        }
        Position::InSubquery => p.query(
            &format!("1 AS {col}"),
            "",
            &format!("WHERE true IN (SELECT ({c}) IS NOT NULL FROM items AS i2)"),
        ),
        Position::FieldNotation => {
            // Field notation exists only for functions of one argument, and the name
            // after the dot cannot be schema-qualified.
            let field = call.field.as_ref()?;
            if matches!(
                shadow,
                Shadow::Qualified | Shadow::OtherSchema | Shadow::DatabaseQualified
            ) {
                return None;
            }
            p.query(&format!("{field} AS {col}"), "", "")
        }
        // Positions only an operator has; a function call cannot stand there.
        Position::OrderByUsing | Position::AnyArray | Position::AllSubquery => {
            let (plain, qualified) = call.operator.as_ref()?;
            let op = match shadow {
                Shadow::Qualified => qualified.clone(),
                Shadow::DatabaseQualified => qualified.replace("OPERATOR(", &format!("OPERATOR({db}.")),
                Shadow::OtherSchema => return None,
                _ => plain.clone(),
            };
            match position {
                // `USING` needs a btree ordering operator to run, which `<<<` is not;
                // the denied operator only has to parse.
                Position::OrderByUsing if harmless => return None,
                Position::OrderByUsing => {
                    p.query(&format!("1 AS {col}"), "", &format!("ORDER BY 1 USING {op}"))
                }
                Position::AnyArray => p.query(
                    &format!("(1 {op} ANY (ARRAY[1, 2])) AS {col}"),
                    "",
                    "",
                ),
                _ => p.query(&format!("(1 {op} ALL (SELECT 1)) AS {col}"), "", ""),
            }
        }
        Position::CteBody => {
            let mut ctes = p.ctes.clone();
            ctes.push(format!("w AS (SELECT {c} AS {col} FROM {})", p.src));
            format!("WITH {} SELECT * FROM w", ctes.join(", "))
        }
        Position::NestedScalar => format!(
            "{}SELECT (SELECT (SELECT (SELECT {c} AS v FROM {} LIMIT 1))) AS {col}",
            p.with(),
            p.src
        ),
        Position::NestedFrom => format!(
            "{}SELECT * FROM (SELECT * FROM (SELECT * FROM (SELECT {c} AS {col} FROM {}) AS s1) AS s2) AS s3",
            p.with(),
            p.src
        ),
        Position::Case => p.query(
            &format!("CASE WHEN true THEN {c} ELSE NULL END AS {col}"),
            "",
            "",
        ),
        Position::Cast => p.query(&format!("({c})::text AS {col}"), "", ""),
        Position::ExplainAnalyze => format!("EXPLAIN ANALYZE {}", p.select_list()),
        Position::DeclareCursor => format!(
            "BEGIN; DECLARE matrix_cur CURSOR FOR {}; FETCH ALL FROM matrix_cur; CLOSE matrix_cur; COMMIT",
            p.select_list()
        ),
        Position::Prepare => format!(
            "PREPARE matrix_p AS {}; EXECUTE matrix_p; DEALLOCATE matrix_p",
            p.select_list()
        ),
        Position::CopyToStdout => format!("COPY ({}) TO STDOUT", p.select_list()),
    };
    Some(sql)
}

struct Check {
    sql: String,
    needle: String,
    send: Via,
}

/// All combinations for `calls` (and the number of skipped ones).
fn matrix(calls: &[Call], harmless: bool, db: &str) -> (Vec<Check>, usize) {
    let mut cases = Vec::new();
    let mut skipped = 0;
    for call in calls {
        for &position in POSITIONS {
            for &shadow in SHADOWS {
                match render(position, shadow, call, harmless, db) {
                    Some(sql) => cases.push(Check {
                        sql,
                        needle: call.needle.clone(),
                        send: if position == Position::CopyToStdout {
                            Via::Copy
                        } else {
                            Via::Simple
                        },
                    }),
                    None => skipped += 1,
                }
            }
        }
    }
    (cases, skipped)
}

// ---------------------------------------------------------------------------------
// Running statements through the gateway
// ---------------------------------------------------------------------------------

/// Why a statement's outcome is wrong, or `None`.
fn judge_denied(case: &Check, result: Result<(), tokio_postgres::Error>) -> Option<String> {
    match result {
        // FINDING: any statement reported here was executed upstream.
        Ok(()) => Some(format!("FINDING: ALLOWED: {}", case.sql)),
        Err(e) => {
            let (code, message) = db_error(&e);
            let ours = message.starts_with("sqlgate: ");
            // The session-ending tripwire also says 42501, but it means the statement
            // ran upstream and changed a pinned setting: not a denial.
            let denied = code == "42501"
                && ours
                && message.contains(" denied: ")
                && !message.starts_with("sqlgate: session ended");
            // Every template is meant to parse: a statement the gateway refuses as
            // unparsable (42601) is denied, but exercises no position, so it is
            // reported too.
            let unparsed = code == "42601"
                && message.starts_with("sqlgate: statement denied: statement does not parse");
            if denied && message.contains(&case.needle) {
                None
            } else if denied || unparsed {
                Some(format!(
                    "denied, but not for the call ({code} {message}): {}",
                    case.sql
                ))
            } else {
                Some(format!(
                    "FINDING: NOT DENIED BY THE GATEWAY ({code} {message}): {}",
                    case.sql
                ))
            }
        }
    }
}

fn judge_allowed(case: &Check, result: Result<(), tokio_postgres::Error>) -> Option<String> {
    let e = result.err()?;
    let (code, message) = db_error(&e);
    if message.starts_with("sqlgate: ") {
        Some(format!("FALSE DENIAL ({code} {message}): {}", case.sql))
    } else {
        Some(format!(
            "harmless statement failed upstream ({code} {message}): {}",
            case.sql
        ))
    }
}

async fn send(
    client: &Client,
    case: &Check,
    expect_allowed: bool,
) -> Result<(), tokio_postgres::Error> {
    if case.send == Via::Copy && expect_allowed {
        // The server started the COPY: it was allowed. Dropping the stream discards
        // the rest of its data.
        client.copy_out(case.sql.as_str()).await.map(drop)
    } else {
        client.simple_query(&case.sql).await.map(drop)
    }
}

/// Runs `cases` over `connections` concurrent gateway sessions; every problem found.
async fn run(
    gw: &TestGateway,
    cases: Vec<Check>,
    connections: usize,
    expect_allowed: bool,
) -> Vec<String> {
    let per = cases.len().div_ceil(connections).max(1);
    let mut chunks: Vec<Vec<Check>> = Vec::new();
    let mut cases = cases.into_iter().peekable();
    while cases.peek().is_some() {
        chunks.push(cases.by_ref().take(per).collect());
    }
    let mut tasks = Vec::new();
    for chunk in chunks {
        let first = gw.agent().await;
        let token = gw.token(&["analytics-agents"]);
        let conn = gw.conn_string("reporting", &token);
        tasks.push(tokio::spawn(async move {
            let mut client = first;
            let mut problems = Vec::new();
            for case in &chunk {
                let result = send(&client, case, expect_allowed).await;
                let closed =
                    result.as_ref().err().is_some_and(|e| e.is_closed()) || client.is_closed();
                let problem = if expect_allowed {
                    judge_allowed(case, result)
                } else {
                    judge_denied(case, result)
                };
                problems.extend(problem);
                if closed {
                    // A denied statement must never end the session; carry on with a
                    // new one so the report lists everything.
                    problems.push(format!("the session ended after: {}", case.sql));
                    let (c, conn) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                        .await
                        .expect("reconnect through the gateway");
                    tokio::spawn(conn);
                    client = c;
                }
            }
            // The session is still usable after all of it.
            if let Err(e) = client.simple_query("SELECT 1").await {
                problems.push(format!("session unusable at the end: {e}"));
            }
            problems
        }));
    }
    let mut problems = Vec::new();
    for task in tasks {
        problems.extend(task.await.expect("matrix task"));
    }
    problems
}

/// `(rows in items, counter's last_value, is_called)` over a direct connection.
async fn upstream_state(gw: &TestGateway) -> (i64, i64, bool) {
    let db = gw.db.direct().await;
    let count: i64 = db
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("count items")
        .get(0);
    let row = db
        .query_one("SELECT last_value, is_called FROM counter", &[])
        .await
        .expect("read counter");
    (count, row.get(0), row.get(1))
}

/// The first column of the first row of a simple query's result.
fn first_value(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

fn report(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn denied_calls_in_every_position_under_every_shadow() {
    let started = Instant::now();
    let gw = TestGateway::start().await;
    let before = upstream_state(&gw).await;
    assert_eq!(before.0, 3);

    let denied = denied_calls();
    let (mut cases, denied_skipped) = matrix(&denied, false, &gw.db.name);
    // The original bypass, verbatim.
    cases.push(Check {
        sql: "WITH set_config AS (SELECT 1) SELECT s FROM set_config, set_config('default_transaction_read_only','off',false) AS s".into(),
        needle: "set_config".into(),
        send: Via::Simple,
    });
    let denied_count = cases.len();
    // Denied statements first, on sessions that never ran an allowed statement of the
    // same shape (the shape cache is the subject of its own test below).
    let problems = run(&gw, cases, 8, false).await;

    let harmless = harmless_calls();
    let (allowed_cases, allowed_skipped) = matrix(&harmless, true, &gw.db.name);
    let allowed_count = allowed_cases.len();
    let false_denials = run(&gw, allowed_cases, 4, true).await;

    let after = upstream_state(&gw).await;
    println!(
        "bypass matrix: {} denied calls x {} positions x {} shadows: {denied_count} denied statements checked ({denied_skipped} combinations skipped: not valid SQL or not applicable); {} harmless calls: {allowed_count} allowed statements checked ({allowed_skipped} skipped); {:.1?}",
        denied.len(),
        POSITIONS.len(),
        SHADOWS.len(),
        harmless.len(),
        started.elapsed()
    );
    report("statements that must be denied", &problems);
    report("statements that must be allowed", &false_denials);
    assert_eq!(after.0, 3, "items lost rows");
    assert_eq!(
        (after.1, after.2),
        (before.1, before.2),
        "the counter sequence advanced"
    );
}

/// The session's verdict cache keys SELECTs by their constant-free shape
/// (`pg_query::normalize`), but `set_config`'s verdict depends on its constants.
#[tokio::test]
async fn allowed_shapes_do_not_launder_denied_set_config_values() {
    let gw = TestGateway::start().await;

    // Fresh sessions: denied.
    let c = gw.agent().await;
    for sql in [
        "SELECT set_config('search_path', 'public, pg_catalog', false)",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
    ] {
        let (code, message) = db_error(&c.simple_query(sql).await.expect_err(sql));
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(
            message.starts_with("sqlgate: SELECT denied: "),
            "{sql}: {message}"
        );
    }

    // FINDING: after an allowed set_config of the same shape, the denied value is
    // served from the shape cache and runs upstream. search_path is not reported by
    // PostgreSQL 15, so nothing notices:
    //   SELECT set_config('search_path', 'public', false);
    //   SELECT set_config('search_path', 'public, pg_catalog', false);  -- allowed
    let c = gw.agent().await;
    c.simple_query("SELECT set_config('search_path', 'public', false)")
        .await
        .expect("an allowed search_path");
    let sql = "SELECT set_config('search_path', 'public, pg_catalog', false)";
    let laundered = c.simple_query(sql).await;
    let search_path = match c.simple_query("SHOW search_path").await {
        Ok(rows) => first_value(&rows).unwrap_or_default(),
        Err(e) => e.to_string(),
    };
    let search_path_result = match &laundered {
        Ok(_) => Err(format!(
            "FINDING: allowed after a same-shape allowed call: {sql} (search_path is now {search_path:?})"
        )),
        Err(e) => {
            let (code, message) = db_error(e);
            if code == "42501" && message.starts_with("sqlgate: SELECT denied: ") {
                Ok(())
            } else {
                Err(format!("{sql}: {code} {message}"))
            }
        }
    };

    // FINDING: the same for default_transaction_read_only: the call runs upstream and
    // only the tripwire (the server reports the new value afterwards) ends the session
    // ("sqlgate: session ended: ..."), instead of a policy denial. A statement pipelined
    // right behind it shows whether anything ran after the change (at the time of
    // writing: no, the session was closed first).
    //   SELECT set_config('application_name', 'x', false);
    //   SELECT set_config('default_transaction_read_only', 'off', false);  -- runs
    let c = gw.agent().await;
    c.simple_query("SELECT set_config('application_name', 'matrix', false)")
        .await
        .expect("an allowed application_name");
    let sql = "SELECT set_config('default_transaction_read_only', 'off', false)";
    let behind = "SELECT current_setting('transaction_read_only')";
    let (result, pipelined) = tokio::join!(c.simple_query(sql), c.simple_query(behind));
    let pipelined = match pipelined {
        Ok(rows) => format!("{:?}", first_value(&rows)),
        Err(e) => format!("{:?}", db_error(&e)),
    };
    let read_only_result = match result {
        Ok(_) => Err(format!(
            "FINDING: allowed: {sql} (pipelined {behind} -> {pipelined})"
        )),
        Err(e) => {
            let (code, message) = db_error(&e);
            if code == "42501" && message.starts_with("sqlgate: SELECT denied: ") {
                Ok(())
            } else {
                Err(format!(
                    "FINDING: not denied by policy after a same-shape allowed call ({code} {message}): {sql} (pipelined {behind} -> {pipelined})"
                ))
            }
        }
    };
    let problems: Vec<String> = [search_path_result, read_only_result]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    report("shape cache", &problems);
}

/// Relations that expose credentials or server files, however they are reached.
#[tokio::test]
async fn denied_relations_in_every_position() {
    let gw = TestGateway::start().await;
    let mut cases = Vec::new();
    for (schema, relation, _) in DENIED_RELATIONS {
        for sql in [
            format!("SELECT * FROM {relation}"),
            format!("SELECT * FROM {schema}.{relation}"),
            format!("SELECT * FROM {relation} AS lower"),
            format!("SELECT 1 FROM items WHERE EXISTS (SELECT 1 FROM {relation})"),
            format!("SELECT (SELECT (SELECT count(*) FROM {relation})) AS n"),
            format!("WITH x AS (SELECT * FROM {relation}) SELECT * FROM x"),
            format!("WITH items AS (SELECT 1) SELECT * FROM items, LATERAL (SELECT * FROM {relation}) AS l"),
            format!("SELECT 1 AS n UNION ALL SELECT count(*) FROM {relation}"),
            format!("EXPLAIN ANALYZE SELECT * FROM {relation}"),
            format!("COPY (SELECT * FROM {relation}) TO STDOUT"),
        ] {
            cases.push(Check {
                sql,
                needle: (*relation).to_owned(),
                send: Via::Simple,
            });
        }
    }
    let count = cases.len();
    let problems = run(&gw, cases, 2, false).await;
    println!("denied relations: {count} statements checked");
    report("relations that must be denied", &problems);
}

// ---------------------------------------------------------------------------------
// Property test: classifier + policy, without the gateway
// ---------------------------------------------------------------------------------

/// The catalog the classifier's facts are judged against: every function, operator
/// and aggregate the generators use.
fn catalog() -> FunctionCatalog {
    let rows: &[[&str; 4]] = &[
        ["pg_catalog", "lower", "i", "f"],
        ["pg_catalog", "upper", "i", "f"],
        ["pg_catalog", "set_config", "v", "f"],
        ["pg_catalog", "nextval", "v", "f"],
        ["pg_catalog", "pg_read_file", "v", "f"],
        ["pg_catalog", "lo_import", "v", "f"],
        ["pg_catalog", "=", "i", "o"],
        ["pg_catalog", "text", "", "t"],
        ["pg_catalog", "int4", "", "t"],
        ["public", "volatile_wipe", "v", "f"],
        ["public", "stable_double", "s", "f"],
        ["public", "vsum", "v", "a"],
        ["public", "isum", "i", "a"],
        ["public", "===", "v", "o"],
        ["public", "<<<", "s", "o"],
    ];
    FunctionCatalog::from_rows(rows.iter().map(|r| r.map(str::to_owned)))
}

/// `(call, shadowing identifier)`.
const PROP_DENIED: &[(&str, &str)] = &[
    (
        "set_config('default_transaction_read_only', 'off', false)",
        "set_config",
    ),
    (
        "pg_catalog.set_config('default_transaction_read_only', 'off', false)",
        "set_config",
    ),
    ("nextval('counter')", "nextval"),
    ("pg_read_file('x')", "pg_read_file"),
    ("volatile_wipe()", "volatile_wipe"),
    ("public.volatile_wipe()", "volatile_wipe"),
    ("lo_import('x')", "lo_import"),
    ("dblink('a', 'b')", "dblink"),
    ("extensions.dblink('a', 'b')", "dblink"),
    ("1 === 1", "\"===\""),
    ("vsum(id)", "vsum"),
];

const PROP_HARMLESS: &[(&str, &str)] = &[
    ("lower('x')", "lower"),
    ("pg_catalog.lower('x')", "lower"),
    ("stable_double(1)", "stable_double"),
    ("1 <<< 2", "\"<<<\""),
    ("isum(id)", "isum"),
    // set_config of a setting a read-only session may change is allowed.
    ("set_config('application_name', 'x', false)", "set_config"),
];

#[derive(Debug, Clone)]
enum Name {
    /// The called function's own name.
    Call,
    Fixed(&'static str),
    /// A random (quoted) identifier.
    Random(String),
}

impl Name {
    fn render(&self, call_name: &str) -> String {
        match self {
            Name::Call => call_name.to_owned(),
            Name::Fixed(n) => (*n).to_owned(),
            Name::Random(n) => format!("\"{n}\""),
        }
    }
}

#[derive(Debug, Clone)]
enum Wrap {
    Subquery,
    /// The expression in a CTE body.
    CteBody(Name),
    /// A CTE of that name is read, and the expression is in the main query.
    CteShadow(Name),
    TableAlias(Name),
    ColumnAlias(Name),
    Case,
    Coalesce,
    Array,
    Row,
    /// Argument of a harmless function (0: lower, 1: pg_catalog.upper, 2: stable_double).
    Argument(u8),
    Cast,
    OrderBy,
    Lateral,
    Union,
    Exists,
    InList,
    /// Next to an allowed `set_config` call (which must not excuse another).
    BesideAllowedSetConfig,
}

impl Wrap {
    fn apply(&self, e: &str, call_name: &str) -> String {
        match self {
            Wrap::Subquery => format!("(SELECT {e} AS v)"),
            Wrap::CteBody(n) => {
                let n = n.render(call_name);
                format!("(WITH {n} AS (SELECT {e} AS {n}) SELECT * FROM {n})")
            }
            Wrap::CteShadow(n) => {
                let n = n.render(call_name);
                format!("(WITH {n} AS (SELECT 1 AS id) SELECT {e} FROM {n})")
            }
            Wrap::TableAlias(n) => {
                let n = n.render(call_name);
                format!("(SELECT {e} FROM items AS {n} LIMIT 1)")
            }
            Wrap::ColumnAlias(n) => {
                let n = n.render(call_name);
                format!("(SELECT {e} AS {n} FROM (SELECT id, 1 AS {n} FROM items) AS t LIMIT 1)")
            }
            Wrap::Case => format!("CASE WHEN ({e}) IS NULL THEN NULL ELSE ({e}) END"),
            Wrap::Coalesce => format!("COALESCE({e}, NULL)"),
            Wrap::Array => format!("ARRAY[{e}]"),
            Wrap::Row => format!("ROW({e}, 1)"),
            Wrap::Argument(0) => format!("lower(({e})::text)"),
            Wrap::Argument(1) => format!("pg_catalog.upper(({e})::text)"),
            Wrap::Argument(_) => format!("stable_double(({e})::int4)"),
            Wrap::Cast => format!("({e})::text"),
            Wrap::OrderBy => format!("(SELECT 1 AS v FROM items ORDER BY {e} LIMIT 1)"),
            Wrap::Lateral => {
                format!("(SELECT l.v FROM items AS t, LATERAL (SELECT {e} AS v) AS l LIMIT 1)")
            }
            Wrap::Union => format!("(SELECT 1 AS v UNION ALL SELECT {e})"),
            Wrap::Exists => format!("EXISTS (SELECT {e})"),
            Wrap::InList => format!("(({e}) IN (1, 2))"),
            Wrap::BesideAllowedSetConfig => {
                format!("COALESCE(({e})::text, set_config('application_name', 'y', false))")
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Top {
    Select,
    SelectFromItems,
    ExplainAnalyze,
    Prepare,
    Declare,
    Copy,
    /// A harmless statement before it in the same message.
    SecondStatement,
}

fn name_strategy() -> impl Strategy<Value = Name> {
    prop_oneof![
        Just(Name::Call),
        Just(Name::Fixed("lower")),
        Just(Name::Fixed("items")),
        Just(Name::Fixed("set_config")),
        "[a-z_][a-z0-9_]{0,8}".prop_map(Name::Random),
    ]
}

fn wrap_strategy() -> impl Strategy<Value = Wrap> {
    prop_oneof![
        Just(Wrap::Subquery),
        name_strategy().prop_map(Wrap::CteBody),
        name_strategy().prop_map(Wrap::CteShadow),
        name_strategy().prop_map(Wrap::TableAlias),
        name_strategy().prop_map(Wrap::ColumnAlias),
        Just(Wrap::Case),
        Just(Wrap::Coalesce),
        Just(Wrap::Array),
        Just(Wrap::Row),
        (0u8..3).prop_map(Wrap::Argument),
        Just(Wrap::Cast),
        Just(Wrap::OrderBy),
        Just(Wrap::Lateral),
        Just(Wrap::Union),
        Just(Wrap::Exists),
        Just(Wrap::InList),
        Just(Wrap::BesideAllowedSetConfig),
    ]
}

fn top_strategy() -> impl Strategy<Value = Top> {
    prop_oneof![
        Just(Top::Select),
        Just(Top::SelectFromItems),
        Just(Top::ExplainAnalyze),
        Just(Top::Prepare),
        Just(Top::Declare),
        Just(Top::Copy),
        Just(Top::SecondStatement),
    ]
}

fn build(call: &str, call_name: &str, wraps: &[Wrap], top: Top) -> String {
    let mut e = call.to_owned();
    for wrap in wraps {
        e = wrap.apply(&e, call_name);
    }
    let select = match top {
        Top::SelectFromItems => format!("SELECT {e} AS out FROM items"),
        _ => format!("SELECT {e} AS out"),
    };
    match top {
        Top::Select | Top::SelectFromItems => select,
        Top::ExplainAnalyze => format!("EXPLAIN ANALYZE {select}"),
        Top::Prepare => format!("PREPARE p AS {select}"),
        Top::Declare => format!("DECLARE cur CURSOR FOR {select}"),
        Top::Copy => format!("COPY ({select}) TO STDOUT"),
        Top::SecondStatement => format!("SELECT lower('a'); {select}"),
    }
}

/// The verdict of every statement part of `sql`.
fn verdicts(sql: &str, catalog: &FunctionCatalog) -> Result<Vec<Verdict>, String> {
    let parts = classify(sql, 1 << 20).map_err(|e| format!("{e}"))?;
    Ok(parts.iter().map(|f| decide(f, Some(catalog))).collect())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Do not write regression files into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn nested_denied_calls_are_always_denied(
        which in 0..PROP_DENIED.len(),
        wraps in proptest::collection::vec(wrap_strategy(), 0..=4),
        top in top_strategy(),
    ) {
        let (call, name) = PROP_DENIED[which];
        let sql = build(call, name, &wraps, top);
        let verdicts = verdicts(&sql, &catalog());
        prop_assert!(verdicts.is_ok(), "does not parse: {sql}: {verdicts:?}");
        let verdicts = verdicts.unwrap_or_default();
        prop_assert!(
            verdicts.iter().any(|v| *v != Verdict::Allow),
            "FINDING: allowed: {sql}"
        );
    }

    #[test]
    fn the_same_wrappers_around_harmless_calls_are_allowed(
        which in 0..PROP_HARMLESS.len(),
        wraps in proptest::collection::vec(wrap_strategy(), 0..=4),
        top in top_strategy(),
    ) {
        let (call, name) = PROP_HARMLESS[which];
        let sql = build(call, name, &wraps, top);
        let verdicts = verdicts(&sql, &catalog());
        prop_assert!(verdicts.is_ok(), "does not parse: {sql}: {verdicts:?}");
        let verdicts = verdicts.unwrap_or_default();
        prop_assert!(
            verdicts.iter().all(|v| *v == Verdict::Allow),
            "false denial: {sql}: {verdicts:?}"
        );
    }
}

/// The property tests' building blocks, each once, so a broken generator shows plainly.
#[test]
fn every_wrapper_parses_and_keeps_its_verdict() {
    let catalog = catalog();
    let wraps = [
        Wrap::Subquery,
        Wrap::CteBody(Name::Call),
        Wrap::CteShadow(Name::Call),
        Wrap::TableAlias(Name::Call),
        Wrap::ColumnAlias(Name::Call),
        Wrap::CteBody(Name::Random("end".into())),
        Wrap::Case,
        Wrap::Coalesce,
        Wrap::Array,
        Wrap::Row,
        Wrap::Argument(0),
        Wrap::Argument(1),
        Wrap::Argument(2),
        Wrap::Cast,
        Wrap::OrderBy,
        Wrap::Lateral,
        Wrap::Union,
        Wrap::Exists,
        Wrap::InList,
        Wrap::BesideAllowedSetConfig,
    ];
    let tops = [
        Top::Select,
        Top::SelectFromItems,
        Top::ExplainAnalyze,
        Top::Prepare,
        Top::Declare,
        Top::Copy,
        Top::SecondStatement,
    ];
    let mut checked = 0;
    for wrap in &wraps {
        for top in tops {
            for (call, name) in PROP_DENIED {
                let sql = build(call, name, std::slice::from_ref(wrap), top);
                let v = verdicts(&sql, &catalog).unwrap_or_else(|e| panic!("{sql}: {e}"));
                assert!(
                    v.iter().any(|v| *v != Verdict::Allow),
                    "FINDING: allowed: {sql}"
                );
                checked += 1;
            }
            for (call, name) in PROP_HARMLESS {
                let sql = build(call, name, std::slice::from_ref(wrap), top);
                let v = verdicts(&sql, &catalog).unwrap_or_else(|e| panic!("{sql}: {e}"));
                assert!(v.iter().all(|v| *v == Verdict::Allow), "{sql}: {v:?}");
                checked += 1;
            }
        }
    }
    println!("wrappers: {checked} statements checked");
}
