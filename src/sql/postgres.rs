//! Postgres front end of the classifier, on libpg_query (the server's own lexer and
//! grammar, via `pg_query`).
//!
//! Because it is the server's grammar, the gateway and the server agree on where a
//! statement ends, what is a string and what is a comment (decision 3 of DESIGN.md):
//! `standard_conforming_strings` on, `E''` strings, dollar quotes, nested comments.
//! A multi-statement Query message is parsed once and yields one fact sheet per
//! statement, each with its own text.
//!
//! The statement kind comes from the typed tree. The "anywhere in the tree" facts
//! (functions, tables, nested writes, locking, INTO) come from [`super::walk`], a walk
//! over *every* node, so no node type can hide a function call from us (pg_query's own
//! `nodes()` iterator visits only a subset).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use pg_query::protobuf::{
    self, a_const, node::Node as N, Node, TransactionStmtKind, VariableSetKind,
};

use super::walk::{root_name, walk};
use super::{ClassifyError, CopyDirection, SetFacts, StatementFacts, StatementKind, TransactionOp};

/// Statements up to this size are small enough to parse on the caller's stack in a
/// release build: their trees are at most ~1,000 levels deep (`+-+-+-…1`), a few MiB
/// of recursion at most, and the gateway's runtime threads have 16 MiB stacks. Larger
/// statements are checked for complexity and parsed on a thread of their own. Debug
/// builds (tests), whose frames are ten times larger, hand small statements to shared
/// big-stack parser threads instead.
pub const INLINE_PARSE_MAX: usize = 1024;
/// Deepest nesting a larger statement may have (see [`nesting_depth`]). libpg_query's
/// protobuf output costs time quadratic in tree depth (`1+1+…` with 100k terms takes
/// seconds), and depth comes from chained operators and nesting; flat lists (`IN (…)`,
/// `VALUES`, `OR` chains, `CASE` arms) stay cheap however long, so only depth is bounded.
pub const MAX_NESTING_DEPTH: usize = 10_000;
/// Stack of every parser thread. Parsing and decoding recurse once or more per tree
/// level (tens of KB per level in a debug build), so parsing never runs on a caller's
/// (possibly 2 MiB) stack. The space is reserved, not committed, until used.
pub const PARSE_STACK: usize = 256 << 20;
/// Shared parser threads for small statements in debug builds.
const PARSER_THREADS: usize = 2;

type Classified = Result<Vec<StatementFacts>, ClassifyError>;

/// A statement for a parser thread, and where to send the result.
struct Job {
    sql: String,
    reply: std::sync::mpsc::SyncSender<Classified>,
}

/// The shared parser threads (started on first use).
fn parsers() -> Result<&'static std::sync::mpsc::Sender<Job>, ClassifyError> {
    static PARSERS: OnceLock<Option<std::sync::mpsc::Sender<Job>>> = OnceLock::new();
    PARSERS
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..PARSER_THREADS {
                let rx = rx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("sqlgate-parse-{i}"))
                    .stack_size(PARSE_STACK)
                    .spawn(move || loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let _ = job.reply.send(classify_here(&job.sql));
                    });
                if spawned.is_err() {
                    return None;
                }
            }
            Some(tx)
        })
        .as_ref()
        .ok_or_else(|| ClassifyError::Internal("cannot start the parser threads".into()))
}

/// Classifies every statement in `sql`.
pub fn classify(sql: &str, max_bytes: usize) -> Classified {
    check_limits(sql, max_bytes)?;
    if sql.len() <= INLINE_PARSE_MAX && !cfg!(debug_assertions) {
        return classify_here(sql);
    }
    if sql.len() <= INLINE_PARSE_MAX {
        let (reply, result) = std::sync::mpsc::sync_channel(1);
        parsers()?
            .send(Job {
                sql: sql.to_owned(),
                reply,
            })
            .map_err(|_| ClassifyError::Internal("parser threads stopped".into()))?;
        return result
            .recv()
            .map_err(|_| ClassifyError::Internal("parser thread failed".into()))?;
    }
    let owned = sql.to_owned();
    std::thread::Builder::new()
        .name("sqlgate-parse-large".into())
        .stack_size(PARSE_STACK)
        .spawn(move || classify_large(&owned))
        .map_err(|e| ClassifyError::Internal(format!("cannot start a parser thread: {e}")))?
        .join()
        .map_err(|_| ClassifyError::Internal("parser thread failed".into()))?
}

/// What every statement must pass before it is parsed: the size limit, and no NUL
/// byte (the server's lexer stops at one; ours must not read past it).
pub fn check_limits(sql: &str, max_bytes: usize) -> Result<(), ClassifyError> {
    if sql.len() > max_bytes {
        return Err(ClassifyError::TooLarge {
            len: sql.len(),
            max: max_bytes,
        });
    }
    if sql.contains('\0') {
        return Err(ClassifyError::Syntax(
            "statement contains a NUL byte".into(),
        ));
    }
    Ok(())
}

/// Classifies a statement that passed [`check_limits`] on the calling thread, which
/// must have a stack of at least [`PARSE_STACK`] (the parser pool's threads do).
pub fn classify_on_parser_thread(sql: &str) -> Classified {
    if sql.len() <= INLINE_PARSE_MAX {
        return classify_here(sql);
    }
    classify_large(sql)
}

/// A statement over [`INLINE_PARSE_MAX`]: bounded in depth, then parsed.
fn classify_large(sql: &str) -> Classified {
    let depth = nesting_depth(sql)?;
    if depth > MAX_NESTING_DEPTH {
        return Err(ClassifyError::TooComplex {
            depth,
            max: MAX_NESTING_DEPTH,
        });
    }
    classify_here(sql)
}

/// An upper estimate of the parse tree's depth, from the server's own scanner (so
/// nothing inside strings or comments counts). Parentheses, brackets and `CASE … END`
/// open a level; within a level, every operator and keyword may nest one deeper
/// (`1+1+1`, `NOT NOT x`, `UNION` chains are left-deep), until a separator that the
/// grammar flattens into a list (`,`, `AND`, `OR`, `WHEN`, `THEN`, `ELSE`) starts a
/// new list element; set operations and joins (`UNION`, `INTERSECT`, `EXCEPT`, `JOIN`)
/// nest left-deep across those separators and are never reset. The estimate is the
/// deepest sum along the open levels.
fn nesting_depth(sql: &str) -> Result<usize, ClassifyError> {
    use pg_query::protobuf::{KeywordKind, Token as T};
    let scanned = catch_unwind(AssertUnwindSafe(|| pg_query::scan(sql)))
        .map_err(|_| ClassifyError::Internal("scanner panicked".into()))?
        .map_err(|e| ClassifyError::Syntax(parse_error_message(e)))?;
    // Per open level: the depth below it, the operators in its current element, and
    // the set operations and joins in it.
    let mut levels: Vec<(usize, usize, usize)> = vec![(0, 0, 0)];
    let mut deepest = 0;
    for token in &scanned.tokens {
        let t = T::try_from(token.token).unwrap_or(T::Nul);
        match t {
            T::Ascii40 | T::Ascii91 | T::Case => {
                let (below, ops, joins) = levels.last().copied().unwrap_or_default();
                levels.push((below + ops + joins + 1, 0, 0));
            }
            T::Union | T::Intersect | T::Except | T::Join => {
                if let Some(level) = levels.last_mut() {
                    level.2 += 1;
                }
            }
            T::Ascii41 | T::Ascii93 | T::EndP => {
                if levels.len() > 1 {
                    levels.pop();
                }
            }
            T::Ascii44 | T::And | T::Or | T::When | T::Then | T::Else | T::Ascii59 => {
                if let Some(level) = levels.last_mut() {
                    level.1 = 0;
                }
            }
            _ => {
                let operator = matches!(
                    t,
                    T::Ascii37
                        | T::Ascii42
                        | T::Ascii43
                        | T::Ascii45
                        | T::Ascii47
                        | T::Ascii60
                        | T::Ascii61
                        | T::Ascii62
                        | T::Ascii94
                        | T::Op
                        | T::Typecast
                        | T::LessEquals
                        | T::GreaterEquals
                        | T::NotEquals
                );
                let keyword = token.keyword_kind != KeywordKind::NoKeyword as i32;
                if operator || keyword {
                    if let Some(level) = levels.last_mut() {
                        level.1 += 1;
                    }
                }
            }
        }
        if let Some((below, ops, joins)) = levels.last() {
            deepest = deepest.max(below + ops + joins);
        }
    }
    Ok(deepest)
}

fn classify_here(sql: &str) -> Classified {
    // pg_query's result post-processing can panic on trees it does not expect; a
    // panic here must become a denial, not a crashed session.
    let parsed = catch_unwind(AssertUnwindSafe(|| pg_query::parse(sql)))
        .map_err(|_| ClassifyError::Internal("parser panicked".into()))?
        .map_err(|e| ClassifyError::Syntax(parse_error_message(e)))?;
    let mut out = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let node = raw
            .stmt
            .as_ref()
            .and_then(|n| n.node.as_ref())
            .ok_or_else(|| ClassifyError::Internal("empty statement node".into()))?;
        let text = statement_text(sql, raw.stmt_location, raw.stmt_len);
        out.push(facts(node, text)?);
    }
    Ok(out)
}

fn parse_error_message(e: pg_query::Error) -> String {
    match e {
        pg_query::Error::Parse(m) => m,
        other => other.to_string(),
    }
}

/// The part of `sql` a RawStmt covers (`len` 0 means "to the end").
fn statement_text(sql: &str, location: i32, len: i32) -> String {
    let start = usize::try_from(location).unwrap_or(0).min(sql.len());
    let end = if len <= 0 {
        sql.len()
    } else {
        start.saturating_add(len as usize).min(sql.len())
    };
    sql.get(start..end).unwrap_or(sql).trim().to_owned()
}

fn facts(node: &N, text: String) -> Result<StatementFacts, ClassifyError> {
    let (root, tree) = walk(node).map_err(ClassifyError::Internal)?;
    Ok(StatementFacts {
        text,
        kind: kind(node, root),
        tree,
    })
}

/// The statement kind from the typed tree.
fn kind(node: &N, root: Option<&str>) -> StatementKind {
    match node {
        N::SelectStmt(_) => StatementKind::Query,
        N::ExplainStmt(e) => StatementKind::Explain {
            analyze: e.options.iter().any(|o| def_name(o) == Some("analyze")),
            inner: Box::new(inner_kind(e.query.as_deref())),
        },
        N::VariableShowStmt(_) => StatementKind::Show,
        N::VariableSetStmt(s) => StatementKind::Set(set_facts(s)),
        N::TransactionStmt(t) => {
            let op = match TransactionStmtKind::try_from(t.kind) {
                Ok(TransactionStmtKind::TransStmtBegin | TransactionStmtKind::TransStmtStart) => {
                    TransactionOp::Begin
                }
                Ok(TransactionStmtKind::TransStmtCommit) => TransactionOp::Commit,
                Ok(TransactionStmtKind::TransStmtRollback) => TransactionOp::Rollback,
                Ok(TransactionStmtKind::TransStmtSavepoint) => TransactionOp::Savepoint,
                Ok(TransactionStmtKind::TransStmtRelease) => TransactionOp::Release,
                Ok(TransactionStmtKind::TransStmtRollbackTo) => TransactionOp::RollbackTo,
                _ => TransactionOp::TwoPhase,
            };
            StatementKind::Transaction {
                op,
                read_write: asks_read_write(&t.options),
            }
        }
        N::DeclareCursorStmt(d) => StatementKind::DeclareCursor {
            inner: Box::new(inner_kind(d.query.as_deref())),
        },
        N::FetchStmt(_) => StatementKind::Fetch,
        N::ClosePortalStmt(_) => StatementKind::CloseCursor,
        N::CopyStmt(c) => StatementKind::Copy {
            direction: if c.is_from {
                CopyDirection::From
            } else if c.is_program || !c.filename.is_empty() {
                CopyDirection::ToServer
            } else {
                CopyDirection::ToClient
            },
            inner: c.query.as_deref().map(|q| Box::new(inner_kind(Some(q)))),
        },
        N::PrepareStmt(p) => StatementKind::Prepare {
            inner: Box::new(inner_kind(p.query.as_deref())),
        },
        N::ExecuteStmt(_) => StatementKind::Execute,
        N::DeallocateStmt(_) => StatementKind::Deallocate,
        N::DiscardStmt(_) => StatementKind::Discard,
        // AccessShareLock is lock mode 1 (storage/lockdefs.h).
        N::LockStmt(l) => StatementKind::Lock {
            access_share: l.mode == 1,
        },
        N::UnlistenStmt(_) => StatementKind::Unlisten,
        _ => StatementKind::Other {
            label: other_label(node, root),
        },
    }
}

fn inner_kind(node: Option<&Node>) -> StatementKind {
    match node.and_then(|n| n.node.as_ref()) {
        Some(inner) => kind(inner, root_name(inner)),
        None => StatementKind::Other {
            label: "unknown statement".into(),
        },
    }
}

/// "InsertStmt" → "INSERT", "CreateTableAsStmt" → "CREATE TABLE AS", with a few
/// names spelled the way SQL spells them.
fn other_label(node: &N, root: Option<&str>) -> String {
    match node {
        N::InsertStmt(_) => return "INSERT".into(),
        N::UpdateStmt(_) => return "UPDATE".into(),
        N::DeleteStmt(_) => return "DELETE".into(),
        N::MergeStmt(_) => return "MERGE".into(),
        N::CreateStmt(_) => return "CREATE TABLE".into(),
        N::IndexStmt(_) => return "CREATE INDEX".into(),
        N::ViewStmt(_) => return "CREATE VIEW".into(),
        N::CreateFunctionStmt(_) => return "CREATE FUNCTION".into(),
        N::DoStmt(_) => return "DO".into(),
        N::VacuumStmt(v) => return if v.is_vacuumcmd { "VACUUM" } else { "ANALYZE" }.into(),
        N::DropStmt(d) => {
            let object = protobuf::ObjectType::try_from(d.remove_type)
                .map(|t| {
                    t.as_str_name()
                        .trim_start_matches("OBJECT_")
                        .replace('_', " ")
                })
                .unwrap_or_default();
            return format!("DROP {object}").trim_end().to_owned();
        }
        _ => {}
    }
    let name = root.unwrap_or("statement");
    let name = name.strip_suffix("Stmt").unwrap_or(name);
    let mut label = String::new();
    for (i, ch) in name.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            label.push(' ');
        }
        label.push(ch.to_ascii_uppercase());
    }
    label
}

fn def_name(node: &Node) -> Option<&str> {
    match node.node.as_ref()? {
        N::DefElem(d) => Some(d.defname.as_str()),
        _ => None,
    }
}

/// Whether transaction options contain `READ WRITE` (`transaction_read_only` false).
fn asks_read_write(options: &[Node]) -> bool {
    options.iter().any(|o| match o.node.as_ref() {
        Some(N::DefElem(d)) if d.defname == "transaction_read_only" => {
            !matches!(d.arg.as_deref().and_then(|a| a.node.as_ref()).and_then(const_value), Some(v) if v == "1" || v == "true")
        }
        _ => false,
    })
}

fn set_facts(s: &protobuf::VariableSetStmt) -> SetFacts {
    let name = s.name.to_ascii_lowercase();
    match VariableSetKind::try_from(s.kind) {
        Ok(VariableSetKind::VarResetAll) => SetFacts::ResetAll,
        Ok(VariableSetKind::VarReset | VariableSetKind::VarSetDefault) => SetFacts::Reset { name },
        Ok(VariableSetKind::VarSetMulti) => SetFacts::TransactionModes {
            read_write: asks_read_write(&s.args),
        },
        _ => SetFacts::Value {
            name,
            values: s
                .args
                .iter()
                .map(|a| {
                    a.node
                        .as_ref()
                        .and_then(const_value)
                        .unwrap_or_else(|| "?".into())
                })
                .collect(),
        },
    }
}

/// A constant as text (lowercased), or `None` for anything that is not a constant.
fn const_value(node: &N) -> Option<String> {
    match node {
        N::AConst(c) => Some(match c.val.as_ref()? {
            a_const::Val::Ival(i) => i.ival.to_string(),
            a_const::Val::Fval(f) => f.fval.clone(),
            a_const::Val::Boolval(b) => b.boolval.to_string(),
            a_const::Val::Sval(s) => s.sval.to_ascii_lowercase(),
            a_const::Val::Bsval(b) => b.bsval.clone(),
        }),
        N::TypeCast(t) => t
            .arg
            .as_deref()
            .and_then(|a| a.node.as_ref())
            .and_then(const_value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> StatementFacts {
        let mut all = classify(sql, 1 << 20).unwrap();
        assert_eq!(all.len(), 1, "{sql}");
        all.remove(0)
    }

    #[test]
    fn finds_functions_everywhere() {
        let f = one("SELECT CASE WHEN x THEN coalesce(pg_catalog.set_config('a','b',false), '') END FROM t ORDER BY lower(y)");
        let names: Vec<String> = f.tree.functions.iter().map(|n| n.to_string()).collect();
        assert!(
            names.contains(&"pg_catalog.set_config".to_string()),
            "{names:?}"
        );
        assert!(names.contains(&"lower".to_string()), "{names:?}");
        let f = one("SELECT ARRAY[nextval('s')]::text[] FROM (VALUES (1)) v(x)");
        assert!(f.tree.functions.iter().any(|n| n.name == "nextval"));
    }

    #[test]
    fn sees_writes_locks_and_into() {
        assert_eq!(
            one("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d")
                .tree
                .writes,
            vec!["DELETE"]
        );
        assert!(one("SELECT * FROM t FOR UPDATE").tree.locking);
        assert!(
            one("SELECT * FROM (SELECT * FROM t FOR SHARE) s")
                .tree
                .locking
        );
        assert!(one("SELECT 1 INTO newtable").tree.into);
        assert!(!one("SELECT 1").tree.into);
    }

    #[test]
    fn splits_like_the_server() {
        // With standard_conforming_strings on, '\' is a complete string: two statements.
        let all = classify(r"SELECT '\'; DELETE FROM t; -- '", 1 << 20).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].kind.label(), "DELETE");
        assert_eq!(all[1].text, "DELETE FROM t");
        // Dollar quotes and nested comments hide nothing.
        let all = classify("SELECT $$; DROP TABLE t; $$ /* /* ; */ DROP */", 1 << 20).unwrap();
        assert_eq!(all.len(), 1);
        assert!(classify("", 1 << 20).unwrap().is_empty());
        assert!(classify(";", 1 << 20).unwrap().is_empty());
    }

    #[test]
    fn labels_and_modes() {
        assert_eq!(one("drop table t").kind.label(), "DROP TABLE");
        assert_eq!(one("ALTER SYSTEM SET x = 1").kind.label(), "ALTER SYSTEM");
        assert_eq!(
            one("create table t as select 1").kind.label(),
            "CREATE TABLE AS"
        );
        assert!(matches!(
            one("begin transaction read write").kind,
            StatementKind::Transaction {
                op: TransactionOp::Begin,
                read_write: true
            }
        ));
        assert!(matches!(
            one("START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE").kind,
            StatementKind::Transaction {
                read_write: false,
                ..
            }
        ));
        assert_eq!(
            one("SET client_encoding TO 'SJIS'").kind,
            StatementKind::Set(SetFacts::Value {
                name: "client_encoding".into(),
                values: vec!["sjis".into()]
            })
        );
        assert!(matches!(
            one("explain analyze select 1").kind,
            StatementKind::Explain { analyze: true, .. }
        ));
        assert!(matches!(
            one("COPY t TO PROGRAM 'sh'").kind,
            StatementKind::Copy {
                direction: CopyDirection::ToServer,
                ..
            }
        ));
    }

    #[test]
    fn long_operator_chains_parse_and_deep_ones_are_refused_fast() {
        let chain = |n: usize| format!("SELECT {}", vec!["x"; n].join(" || "));
        // Past prost's default recursion limit, still inline.
        assert_eq!(classify(&chain(60), 1 << 20).unwrap().len(), 1);
        // Just under the shared-thread size: deep, on a shared parser thread.
        assert_eq!(
            classify(&chain(INLINE_PARSE_MAX / 5), 1 << 20)
                .unwrap()
                .len(),
            1
        );
        // Larger: parsed on the big-stack thread.
        assert_eq!(classify(&chain(5_000), 1 << 20).unwrap().len(), 1);
        let started = std::time::Instant::now();
        assert!(matches!(
            classify(&chain(200_000), 8 << 20),
            Err(ClassifyError::TooComplex { .. })
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // A long flat list is fine.
        let list = format!("SELECT 1 WHERE 1 IN ({})", vec!["1"; 200_000].join(","));
        assert_eq!(classify(&list, 8 << 20).unwrap().len(), 1);
    }

    #[test]
    fn refuses_what_does_not_parse_and_what_is_too_big() {
        assert!(matches!(
            classify("SELEC 1", 100),
            Err(ClassifyError::Syntax(_))
        ));
        assert!(matches!(
            classify("SELECT 1", 3),
            Err(ClassifyError::TooLarge { .. })
        ));
    }
}
