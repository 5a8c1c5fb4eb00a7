//! MySQL/MariaDB front end of the classifier: the gateway's own pre-lexer (`lex`) in
//! front of `sqlparser`'s MySqlDialect.
//!
//! The pre-lexer is the authority on MySQL lexing (DESIGN.md decision 3): it splits a
//! COM_QUERY / COM_STMT_PREPARE text into statements exactly where the server does and
//! hands sqlparser a canonical text per statement, in which no string, comment or
//! executable comment can be read differently. Each canonical statement must parse to
//! exactly one statement. Forms sqlparser lacks that are harmless reads or session
//! settings (`START TRANSACTION WITH CONSISTENT SNAPSHOT`, `SET CHARACTER SET`, MariaDB
//! `SET STATEMENT ... FOR`, `ANALYZE SELECT`, `TABLE t`, `LIMIT ROWS EXAMINED`, SHOW
//! variants) are recognised from the pre-lexer's tokens; anything else that does not
//! parse is denied. Statements that start like a write are labelled ("LOAD DATA",
//! "HANDLER") even when sqlparser cannot parse them, so the denial says what was refused.
//!
//! Facts come from sqlparser's visitor: every function call, every relation named,
//! locking clauses, `INTO`, and statements nested in a query. Calls MySQL resolves past
//! its built-ins to a stored function of the same name are recorded under a name no
//! built-in has: quoted names (`` `left`(x) ``) keep their backticks, and `count (x)`
//! (space before the parenthesis) becomes `count `. Executable comments whose code only
//! some servers run are checked every way a real server reads them (MySQL 5.7+ and
//! MariaDB 10.0+ at each version threshold): a server that skips `/*M! + */` in
//! `get_lock /*M! + */ ('a', 1)` calls `get_lock`. The facts are the union over the
//! readings, which must all be the same kind of statement.

mod lex;

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    ContextModifier, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, JoinConstraint,
    JoinOperator, ObjectName, ObjectNamePart, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, Set, SetExpr, Statement, TableFactor, TableWithJoins,
    TransactionAccessMode, TransactionMode, Use, Value, Visit, Visitor,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::{Parser, ParserError};

use self::lex::{Condition, Piece, Tok, Token};
use super::{
    ClassifyError, QualifiedName, SetFacts, StatementFacts, StatementKind, TransactionOp,
    TreeFacts, VariableAssignment, VariableScope, VariableValue,
};

/// sqlparser's recursion limit (its default is 50, about 24 nested subqueries; BI tools
/// nest deeper). Parsing and visiting grow their stack on the heap as needed.
pub const RECURSION_LIMIT: usize = 128;
/// Deepest estimated tree (see the pre-lexer's gauge) a statement may have: sqlparser
/// builds operator chains (`a OR b OR ...`) left-deep, and dropping such a tree recurses
/// once per level. Flat lists (`IN (...)`, `VALUES`, select lists) stay shallow.
pub const MAX_NESTING_DEPTH: usize = 10_000;
/// Statements estimated deeper than this are parsed on a thread of their own with a
/// [`PARSE_STACK`] stack, so dropping their tree cannot overflow the caller's stack.
pub const INLINE_DEPTH: usize = 200;
/// Stack of that thread (reserved, committed only as used).
pub const PARSE_STACK: usize = 256 << 20;
/// Most version-dependent executable comments one statement may have (each reading
/// is parsed separately).
pub const MAX_CONDITIONAL_COMMENTS: usize = 8;

type Classified = Result<Vec<StatementFacts>, ClassifyError>;

/// Splits and classifies a COM_QUERY / COM_STMT_PREPARE text with MySQL's lexical rules.
///
/// One fact sheet per statement, each with its original text (trimmed). Statements
/// that are empty or only comments are left out, unless the whole text is: then one
/// [`StatementKind::Empty`].
pub fn classify(sql: &str, max_bytes: usize) -> Classified {
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
    let pieces = lex::split(sql)?;
    let deepest = pieces.iter().map(|p| p.depth).max().unwrap_or(0);
    if deepest > MAX_NESTING_DEPTH {
        return Err(ClassifyError::TooComplex {
            depth: deepest,
            max: MAX_NESTING_DEPTH,
        });
    }
    if deepest <= INLINE_DEPTH {
        return classify_pieces(sql, &pieces);
    }
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("sqlgate-mysql-parse".into())
            .stack_size(PARSE_STACK)
            .spawn_scoped(scope, || classify_pieces(sql, &pieces))
            .map_err(|e| ClassifyError::Internal(format!("cannot start a parser thread: {e}")))?
            .join()
            .map_err(|_| ClassifyError::Internal("parser thread failed".into()))?
    })
}

fn classify_pieces(sql: &str, pieces: &[Piece]) -> Classified {
    let mut out = Vec::with_capacity(pieces.len());
    for piece in pieces {
        if piece.tokens.is_empty() {
            continue;
        }
        out.push(classify_piece(sql, piece)?);
    }
    if out.is_empty() {
        out.push(StatementFacts {
            text: sql.trim().to_owned(),
            kind: StatementKind::Empty,
            tree: TreeFacts::default(),
        });
    }
    Ok(out)
}

/// Classifies one statement under every reading of its version-dependent executable
/// comments and merges the facts.
fn classify_piece(sql: &str, piece: &Piece) -> Result<StatementFacts, ClassifyError> {
    let text = sql
        .get(piece.start..piece.end)
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mut merged: Option<(StatementKind, TreeFacts)> = None;
    for skipped in readings(piece)? {
        let (canonical, tokens) = reading(piece, &skipped);
        let (kind, mut tree) = classify_text(&canonical, &tokens, false)?;
        spaced_calls(&tokens, &mut tree);
        merged = Some(match merged {
            None => (kind, tree),
            Some((StatementKind::Empty, _)) => (kind, tree),
            Some(same) if kind == StatementKind::Empty => same,
            Some((before, mut all)) => {
                if before != kind {
                    return Err(ClassifyError::Syntax(format!(
                        "its executable comments (/*!NNNNN ... */, /*M! ... */) make it a {} on some server versions and a {} on others",
                        before.label(),
                        kind.label()
                    )));
                }
                all.merge(tree);
                (before, all)
            }
        });
    }
    let (kind, mut tree) = merged.unwrap_or((StatementKind::Empty, TreeFacts::default()));
    tree.optimizer_hints = piece.hints.clone();
    Ok(StatementFacts { text, kind, tree })
}

/// The oldest servers whose readings of version comments are checked: MySQL 5.7.0 and
/// MariaDB 10.0.0 (each runs the comments of its own and older versions).
pub const OLDEST_MYSQL: u32 = 50700;
pub const OLDEST_MARIADB: u32 = 100000;

/// Built-in functions that MySQL and MariaDB recognise only when `(` follows the name
/// at once (unless `IGNORE_SPACE` is on): `count (x)` calls a stored function `count`
/// of the default database, if there is one (the manuals' "Function Name Parsing and
/// Resolution"; MariaDB adds its aggregate and window functions).
#[rustfmt::skip]
const IGNORE_SPACE_FUNCTIONS: &[&str] = &[
    "ADDDATE", "BIT_AND", "BIT_OR", "BIT_XOR", "CAST", "COUNT", "CURDATE", "CURTIME",
    "DATE_ADD", "DATE_SUB", "EXTRACT", "GROUP_CONCAT", "MAX", "MID", "MIN", "NOW", "POSITION",
    "SESSION_USER", "STD", "STDDEV", "STDDEV_POP", "STDDEV_SAMP", "ST_COLLECT", "SUBDATE",
    "SUBSTR", "SUBSTRING", "SUM", "SYSDATE", "SYSTEM_USER", "TRIM", "VARIANCE", "VAR_POP",
    "VAR_SAMP", "CUME_DIST", "DENSE_RANK", "FIRST_VALUE", "JSON_ARRAYAGG", "JSON_OBJECTAGG",
    "LAG", "LAST_VALUE", "LEAD", "MEDIAN", "NTH_VALUE", "NTILE", "PERCENT_RANK",
    "PERCENTILE_CONT", "PERCENTILE_DISC", "RANK", "ROW_NUMBER", "TRIM_ORACLE",
];

/// Records `count (x)` (a space or comment before the parenthesis) as a call of a
/// function named `count ` — no built-in has that name, so policy refuses it.
fn spaced_calls(tokens: &[Token], tree: &mut TreeFacts) {
    let mut seen: HashSet<QualifiedName> = HashSet::new();
    for pair in tokens.windows(2) {
        let (Tok::Word(w), true) = (&pair[0].tok, pair[1].is_punct('(')) else {
            continue;
        };
        if pair[1].start > pair[0].end
            && IGNORE_SPACE_FUNCTIONS
                .iter()
                .any(|f| w.eq_ignore_ascii_case(f))
        {
            let name = QualifiedName {
                schema: None,
                name: format!("{w} "),
            };
            if seen.insert(name.clone()) && !tree.functions.contains(&name) {
                tree.functions.push(name);
            }
        }
    }
}

/// Which conditional comments each reading skips: MySQL at each version threshold
/// (it never runs `/*M!`), MariaDB at each version threshold (it never runs MySQL 5.7+
/// version comments). Only real readings: version-portable SQL
/// (`/*!80000 JSON_PRETTY(j) */ /*M! JSON_DETAILED(j) */`) must not be read as both.
fn readings(piece: &Piece) -> Result<Vec<Vec<bool>>, ClassifyError> {
    let conditions: Vec<Condition> = piece.regions.iter().map(|r| r.condition).collect();
    if conditions.is_empty() {
        return Ok(vec![Vec::new()]);
    }
    if conditions.len() > MAX_CONDITIONAL_COMMENTS {
        return Err(ClassifyError::Syntax(format!(
            "more than {MAX_CONDITIONAL_COMMENTS} version-dependent executable comments in one statement"
        )));
    }
    let mut mysql: Vec<u32> = vec![OLDEST_MYSQL];
    let mut mariadb: Vec<u32> = vec![OLDEST_MARIADB];
    for c in &conditions {
        match c {
            Condition::MySqlFrom(v) => mysql.push(*v),
            Condition::MariaDbFrom(v) => mariadb.push(*v),
            Condition::MariaDb => {}
        }
    }
    let mut out = Vec::new();
    for v in mysql {
        out.push(
            conditions
                .iter()
                .map(|c| match c {
                    Condition::MySqlFrom(from) => *from > v,
                    Condition::MariaDb | Condition::MariaDbFrom(_) => true,
                })
                .collect(),
        );
    }
    for v in mariadb {
        out.push(
            conditions
                .iter()
                .map(|c| match c {
                    Condition::MySqlFrom(_) => true,
                    Condition::MariaDb => false,
                    Condition::MariaDbFrom(from) => *from > v,
                })
                .collect(),
        );
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The canonical text and tokens with the skipped regions blanked out (same offsets).
fn reading<'a>(piece: &'a Piece, skipped: &[bool]) -> (Cow<'a, str>, Cow<'a, [Token]>) {
    let blank: Vec<(usize, usize)> = piece
        .regions
        .iter()
        .zip(skipped)
        .filter(|(_, skip)| **skip)
        .map(|(r, _)| (r.start, r.end))
        .collect();
    if blank.is_empty() {
        return (
            Cow::Borrowed(&piece.canonical),
            Cow::Borrowed(&piece.tokens),
        );
    }
    let mut text = String::with_capacity(piece.canonical.len());
    let mut at = 0;
    for &(start, end) in &blank {
        text.push_str(piece.canonical.get(at..start).unwrap_or_default());
        text.extend(std::iter::repeat_n(' ', end.saturating_sub(start)));
        at = end;
    }
    text.push_str(piece.canonical.get(at..).unwrap_or_default());
    let tokens = piece
        .tokens
        .iter()
        .filter(|t| !blank.iter().any(|&(s, e)| t.start >= s && t.end <= e))
        .cloned()
        .collect();
    (Cow::Owned(text), Cow::Owned(tokens))
}

/// Statements that are reads or settings when they parse: a parse failure is reported
/// as such. Anything else that does not parse is labelled and denied.
const READ_LEADERS: &[&str] = &[
    "SELECT", "WITH", "(", "VALUES", "TABLE", "SHOW", "EXPLAIN", "DESCRIBE", "DESC", "SET", "USE",
    "ANALYZE",
];

/// First words of MySQL/MariaDB statements that are not reads: what the grammar does
/// not parse with one of these is denied by its name ("HANDLER denied"); anything else
/// that does not parse is a syntax error (1064).
const STATEMENT_LEADERS: &[&str] = &[
    "INSERT",
    "UPDATE",
    "DELETE",
    "REPLACE",
    "CREATE",
    "DROP",
    "ALTER",
    "TRUNCATE",
    "RENAME",
    "GRANT",
    "REVOKE",
    "LOAD",
    "LOCK",
    "UNLOCK",
    "HANDLER",
    "CALL",
    "DO",
    "FLUSH",
    "RESET",
    "KILL",
    "SHUTDOWN",
    "INSTALL",
    "UNINSTALL",
    "CHANGE",
    "PURGE",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "HELP",
    "CACHE",
    "OPTIMIZE",
    "REPAIR",
    "CHECK",
    "CHECKSUM",
    "BACKUP",
    "BINLOG",
    "SIGNAL",
    "RESIGNAL",
    "GET",
    "DECLARE",
    "START",
    "STOP",
    "IMPORT",
    "CLONE",
    "RESTART",
    "MERGE",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "XA",
    "DELIMITER",
    "SOURCE",
    "USE",
];

/// Blanks `[start, end)` of `text` (same length, so token offsets stay valid).
fn blank(text: &mut String, start: usize, end: usize) {
    if let Some(part) = text.get(start..end) {
        let spaces = " ".repeat(part.len());
        text.replace_range(start..end, &spaces);
    }
}

/// Classifies one reading of one statement. `nested`: inside `SET STATEMENT ... FOR`.
fn classify_text(
    text: &str,
    tokens: &[Token],
    nested: bool,
) -> Result<(StatementKind, TreeFacts), ClassifyError> {
    let Some(first) = tokens.first() else {
        return Ok((StatementKind::Empty, TreeFacts::default()));
    };
    let lead = match &first.tok {
        Tok::Word(w) => w.to_ascii_uppercase(),
        Tok::Punct(c) => c.to_string(),
        _ => String::new(),
    };
    let word = |i: usize, w: &str| tokens.get(i).is_some_and(|t| t.is_word(w));
    let other = || {
        Ok((
            StatementKind::Other {
                label: label(tokens),
            },
            TreeFacts::default(),
        ))
    };
    match lead.as_str() {
        "DELIMITER" => return other(),
        "BEGIN" | "START" | "COMMIT" | "ROLLBACK" | "SAVEPOINT" | "RELEASE" | "XA" => {
            return match transaction(tokens) {
                Some(kind) => Ok((kind, TreeFacts::default())),
                None => other(),
            };
        }
        "SET" if word(1, "STATEMENT") => return set_statement(text, tokens, nested),
        "SET" if word(1, "TRANSACTION") || word(2, "TRANSACTION") => {
            return set_transaction(text, tokens);
        }
        "SET" if word(1, "CHARSET") || (word(1, "CHARACTER") && word(2, "SET")) => {
            return set_character_set(tokens);
        }
        "ANALYZE" => {
            // MariaDB's ANALYZE <statement> runs it and shows the plan: EXPLAIN ANALYZE.
            let Some(second) = tokens.get(1) else {
                return other();
            };
            if ["TABLE", "TABLES", "NO_WRITE_TO_BINLOG", "LOCAL"]
                .iter()
                .any(|w| second.is_word(w))
            {
                return other();
            }
            let rewritten = format!(
                "EXPLAIN ANALYZE {}",
                text.get(second.start..).unwrap_or_default()
            );
            return parse_and_describe(&rewritten, tokens, true);
        }
        "TABLE" => {
            // MySQL 8: `TABLE t [ORDER BY ...] [LIMIT ...]` is `SELECT * FROM t ...`.
            let Some(second) = tokens.get(1) else {
                return other();
            };
            let rewritten = format!(
                "SELECT * FROM {}",
                text.get(second.start..).unwrap_or_default()
            );
            return parse_and_describe(&rewritten, tokens, true);
        }
        _ => {}
    }
    if lead == "SHOW" {
        if let Some(label) = denied_show(tokens) {
            return Ok((StatementKind::Other { label }, TreeFacts::default()));
        }
    }
    let mut text = text.to_owned();
    rewrite(&mut text, tokens);
    let read = READ_LEADERS.contains(&lead.as_str());
    let mut result = match parse_and_describe(&text, tokens, read) {
        Err(ClassifyError::Syntax(message)) if lead == "SHOW" => {
            show_fallback(&text, tokens).ok_or(ClassifyError::Syntax(message))??
        }
        // A statement the grammar lacks is labelled by its keyword and denied as what
        // it is; a word that starts no statement is a typo, and says so.
        Err(ClassifyError::Syntax(_)) if !read && STATEMENT_LEADERS.contains(&lead.as_str()) => {
            return other()
        }
        result => result?,
    };
    if lead == "SHOW" {
        show_targets(tokens, &mut result.1);
    }
    Ok(result)
}

/// SHOW forms that disclose credentials or routine bodies: `SHOW GRANTS` and `SHOW
/// CREATE USER` print the held account's password hash; routine, event and trigger
/// bodies and other databases' definitions are not metadata an agent needs. Returns
/// the label of a denied form.
fn denied_show(tokens: &[Token]) -> Option<String> {
    let words: Vec<String> = tokens
        .iter()
        .skip(1)
        .take(3)
        .map_while(|t| match &t.tok {
            Tok::Word(w) => Some(w.to_ascii_uppercase()),
            _ => None,
        })
        .collect();
    let skip = usize::from(words.first().is_some_and(|w| w == "FULL"));
    let first = words.get(skip).map(String::as_str).unwrap_or_default();
    let second = words.get(skip + 1).map(String::as_str).unwrap_or_default();
    let denied = match first {
        "GRANTS" => true,
        // Other sessions' statements and the server's internals: every agent of a
        // connection shares the held account, so these show other agents' SQL.
        "PROCESSLIST" | "ENGINE" | "EXPLAIN" | "ANALYZE" | "BINLOG" | "RELAYLOG" => true,
        "CREATE" => !matches!(second, "TABLE" | "VIEW"),
        "PROCEDURE" | "FUNCTION" | "PACKAGE" => second == "CODE",
        _ => false,
    };
    denied.then(|| format!("SHOW {}", words.join(" ")))
}

/// Records the relations and databases a SHOW names as tables of the fact sheet, so
/// the one-database rule applies to them: `SHOW TABLES FROM db` names database `db`
/// (recorded as `db.*`), `SHOW COLUMNS FROM t FROM db` table `t` and database `db`,
/// `SHOW CREATE TABLE db.t` table `db.t`.
fn show_targets(tokens: &[Token], tree: &mut TreeFacts) {
    let end = tokens
        .iter()
        .position(|t| t.is_word("WHERE") || t.is_word("LIKE"))
        .unwrap_or(tokens.len());
    let prefix = &tokens[..end];
    let table_first = prefix.iter().skip(1).take(3).any(|t| {
        ["COLUMNS", "FIELDS", "INDEX", "INDEXES", "KEYS"]
            .iter()
            .any(|w| t.is_word(w))
    });
    // A name, possibly `a.b`, starting at `i`: (schema, name).
    let name_at = |i: usize| -> Option<(Option<String>, String)> {
        let first = prefix.get(i)?.name()?.to_owned();
        if prefix.get(i + 1).is_some_and(|t| t.is_punct('.')) {
            let second = prefix.get(i + 2)?.name()?.to_owned();
            Some((Some(first), second))
        } else {
            Some((None, first))
        }
    };
    let mut seen_from = false;
    for (i, t) in prefix.iter().enumerate() {
        let creates = t.is_word("CREATE")
            && prefix
                .get(i + 1)
                .is_some_and(|n| n.is_word("TABLE") || n.is_word("VIEW"));
        if creates {
            if let Some((schema, name)) = name_at(i + 2) {
                tree.tables.push(QualifiedName { schema, name });
            }
            continue;
        }
        if !(t.is_word("FROM") || t.is_word("IN")) {
            continue;
        }
        let Some((schema, name)) = name_at(i + 1) else {
            continue;
        };
        if table_first && !seen_from {
            tree.tables.push(QualifiedName { schema, name });
        } else {
            match schema {
                Some(schema) => tree.tables.push(QualifiedName {
                    schema: Some(schema),
                    name,
                }),
                None => tree.tables.push(QualifiedName {
                    schema: Some(name),
                    name: "*".into(),
                }),
            }
        }
        seen_from = true;
    }
    // SHOW ... FROM t, SHOW CREATE TABLE t: relations for allow-lists too (metadata of
    // a table the allow-list leaves out is left out).
    tree.relations = tree
        .tables
        .iter()
        .filter(|t| t.name != "*")
        .cloned()
        .collect();
}

/// Same-length rewrites of MySQL forms sqlparser lacks, none of which can hide a call
/// or a relation (token offsets stay valid):
/// - MariaDB `LIMIT [n[, m]] ROWS EXAMINED k` only caps the rows a query reads: blanked;
/// - `a MOD b` (the operator) is `a % b`;
/// - `CAST(x AS CHAR[(n)] CHARACTER SET cs)`: the character set name is blanked;
/// - `CHAR(n, ... USING cs)`: `USING cs` is blanked;
/// - `!a` (logical NOT) is read as `~a`, `a SOUNDS LIKE b` as `a LIKE b`, and compound
///   interval units (`YEAR_MONTH`, `DAY_SECOND`, ...) as their first unit: same
///   operands, so the same calls and relations.
fn rewrite(text: &mut String, tokens: &[Token]) {
    strip_rows_examined(text, tokens);
    // Matching `)` of every `(`, in one pass.
    let mut close_of = vec![None; tokens.len()];
    let mut open = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_punct('(') {
            open.push(i);
        } else if t.is_punct(')') {
            if let Some(o) = open.pop() {
                close_of[o] = Some(i);
            }
        }
    }
    let char_type = |t: &Token| ["CHAR", "VARCHAR", "NCHAR"].iter().any(|w| t.is_word(w));
    let is_name = |t: Option<&Token>| {
        t.is_some_and(|t| matches!(t.tok, Tok::Word(_) | Tok::Ident(_) | Tok::Str(_)))
    };
    for i in 1..tokens.len() {
        let t = &tokens[i];
        let next = tokens.get(i + 1);
        if t.is_word("MOD")
            && !next.is_some_and(|n| n.is_punct('('))
            && !tokens[i - 1].is_punct('.')
        {
            if let Some(end) = t.start.checked_add(3) {
                text.replace_range(t.start..end.min(text.len()), "%  ");
            }
            continue;
        }
        if t.is_punct('!') && !next.is_some_and(|n| n.is_punct('=') && n.start == t.end) {
            text.replace_range(t.start..t.end, "~");
            continue;
        }
        if t.is_word("SOUNDS") && next.is_some_and(|n| n.is_word("LIKE")) {
            blank(text, t.start, t.end);
            continue;
        }
        if let Tok::Word(w) = &t.tok {
            if !tokens[i - 1].is_punct('.') {
                if let Some(unit) = COMPOUND_UNITS.iter().find(|u| w.eq_ignore_ascii_case(u)) {
                    let first = unit.split('_').next().unwrap_or(unit);
                    let padded = format!("{first:<width$}", width = unit.len());
                    text.replace_range(t.start..t.end, &padded);
                    continue;
                }
            }
        }
        let charset_at = if t.is_word("CHARSET") {
            Some(i + 1)
        } else if t.is_word("CHARACTER") && next.is_some_and(|n| n.is_word("SET")) {
            Some(i + 2)
        } else {
            None
        };
        if let Some(at) = charset_at {
            let after_type = char_type(&tokens[i - 1])
                || (i >= 4
                    && tokens[i - 1].is_punct(')')
                    && tokens[i - 3].is_punct('(')
                    && char_type(&tokens[i - 4]));
            if after_type && is_name(tokens.get(at)) {
                blank(text, t.start, tokens[at].end);
            }
            continue;
        }
        if t.is_word("CHAR") && next.is_some_and(|n| n.is_punct('(')) {
            if let Some(close) = close_of[i + 1] {
                if close >= i + 4
                    && tokens[close - 2].is_word("USING")
                    && is_name(tokens.get(close - 1))
                {
                    blank(text, tokens[close - 2].start, tokens[close - 1].end);
                }
            }
        }
    }
}

/// MySQL's compound interval units.
const COMPOUND_UNITS: &[&str] = &[
    "YEAR_MONTH",
    "DAY_HOUR",
    "DAY_MINUTE",
    "DAY_SECOND",
    "DAY_MICROSECOND",
    "HOUR_MINUTE",
    "HOUR_SECOND",
    "HOUR_MICROSECOND",
    "MINUTE_SECOND",
    "MINUTE_MICROSECOND",
    "SECOND_MICROSECOND",
];

fn strip_rows_examined(text: &mut String, tokens: &[Token]) {
    for (i, t) in tokens.iter().enumerate() {
        if !t.is_word("ROWS")
            || !tokens.get(i + 1).is_some_and(|t| t.is_word("EXAMINED"))
            || !matches!(tokens.get(i + 2).map(|t| &t.tok), Some(Tok::Word(w)) if w.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let end = tokens[i + 2].end;
        let start = if i > 0 && tokens[i - 1].is_word("LIMIT") {
            tokens[i - 1].start
        } else {
            t.start
        };
        blank(text, start, end);
    }
}

/// Parses `text` (which must be one statement) and describes it.
fn parse_and_describe(
    text: &str,
    tokens: &[Token],
    read: bool,
) -> Result<(StatementKind, TreeFacts), ClassifyError> {
    match parse_one(text) {
        Ok(statement) => describe(&statement, tokens),
        Err(ClassifyError::Syntax(message)) if read => {
            // Forms sqlparser lacks that are denied anyway: say why.
            let mut tree = TreeFacts::default();
            let words: Vec<String> = tokens
                .iter()
                .filter_map(|t| match &t.tok {
                    Tok::Word(w) => Some(w.to_ascii_uppercase()),
                    _ => None,
                })
                .collect();
            let has = |seq: &[&str]| words.windows(seq.len()).any(|w| w == seq);
            if words.iter().any(|w| w == "INTO") {
                tree.into = true;
            }
            if has(&["LOCK", "IN", "SHARE", "MODE"])
                || has(&["FOR", "UPDATE"])
                || has(&["FOR", "SHARE"])
            {
                tree.locking = true;
            }
            if tree.into || tree.locking {
                Ok((StatementKind::Query, tree))
            } else {
                Err(ClassifyError::Syntax(message))
            }
        }
        Err(e) => Err(e),
    }
}

/// Parses `text` with sqlparser's MySqlDialect; exactly one statement.
fn parse_one(text: &str) -> Result<Statement, ClassifyError> {
    let map = |e: ParserError| match e {
        ParserError::RecursionLimitExceeded => ClassifyError::TooComplex {
            depth: RECURSION_LIMIT + 1,
            max: RECURSION_LIMIT,
        },
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => ClassifyError::Syntax(m),
    };
    let mut statements = Parser::new(&MySqlDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(text)
        .map_err(map)?
        .parse_statements()
        .map_err(map)?;
    if statements.len() != 1 {
        return Err(ClassifyError::Syntax(format!(
            "expected one statement, sqlparser read {}",
            statements.len()
        )));
    }
    statements
        .pop()
        .ok_or_else(|| ClassifyError::Internal("no statement".into()))
}

/// Kind and tree facts of a parsed statement.
fn describe(
    statement: &Statement,
    tokens: &[Token],
) -> Result<(StatementKind, TreeFacts), ClassifyError> {
    let tree = walk(statement);
    let kind = match statement {
        Statement::Query(_) => StatementKind::Query,
        Statement::Explain {
            analyze, statement, ..
        } => StatementKind::Explain {
            analyze: *analyze,
            inner: Box::new(match statement.as_ref() {
                Statement::Query(_) => StatementKind::Query,
                other => StatementKind::Other {
                    label: statement_label(other).into(),
                },
            }),
        },
        Statement::ExplainTable { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowProcessList { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowCharset(_)
        | Statement::ShowTables { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCollation { .. } => StatementKind::Show,
        Statement::Set(set) => set_kind(set, tokens),
        Statement::Use(Use::Object(name) | Use::Database(name) | Use::Schema(name))
            if name.0.len() == 1 =>
        {
            match &name.0[0] {
                ObjectNamePart::Identifier(ident) => StatementKind::Use {
                    database: ident.value.clone(),
                },
                ObjectNamePart::Function(_) => StatementKind::Other {
                    label: "USE".into(),
                },
            }
        }
        _ => StatementKind::Other {
            label: label(tokens),
        },
    };
    Ok((kind, tree))
}

/// "INSERT" for a nested statement (data-modifying statement inside a query).
fn statement_label(statement: &Statement) -> &'static str {
    match statement {
        Statement::Insert(_) => "INSERT",
        Statement::Update(_) => "UPDATE",
        Statement::Delete(_) => "DELETE",
        Statement::Merge(_) => "MERGE",
        Statement::Query(_) => "SELECT",
        _ => "a statement that is not a query",
    }
}

/// First words that name a statement only together with what follows.
const COMPOUND_LEADERS: &[&str] = &[
    "CREATE",
    "DROP",
    "ALTER",
    "LOCK",
    "UNLOCK",
    "LOAD",
    "RENAME",
    "INSTALL",
    "UNINSTALL",
    "CHANGE",
    "START",
    "STOP",
    "DEALLOCATE",
    "CACHE",
    "ANALYZE",
    "OPTIMIZE",
    "REPAIR",
    "CHECK",
    "CHECKSUM",
    "RESET",
    "FLUSH",
    "PURGE",
    "XA",
    "SET",
    "SHOW",
    "BACKUP",
    "INSERT",
    "REPLACE",
    "SELECT",
];
/// Words that continue such a statement's name.
const LABEL_WORDS: &[&str] = &[
    "TEMPORARY",
    "TABLE",
    "TABLES",
    "DATABASE",
    "SCHEMA",
    "VIEW",
    "INDEX",
    "FUNCTION",
    "PROCEDURE",
    "TRIGGER",
    "EVENT",
    "USER",
    "ROLE",
    "SERVER",
    "SEQUENCE",
    "PLUGIN",
    "PLUGINS",
    "DATA",
    "XML",
    "MASTER",
    "SLAVE",
    "REPLICA",
    "REPLICATION",
    "SOURCE",
    "OR",
    "REPLACE",
    "UNIQUE",
    "FULLTEXT",
    "SPATIAL",
    "GLOBAL",
    "PERSIST",
    "PERSIST_ONLY",
    "PASSWORD",
    "DEFAULT",
    "RESOURCE",
    "GROUP",
    "LOGFILE",
    "TABLESPACE",
    "PREPARE",
    "QUERY",
    "BINARY",
    "LOGS",
    "STAGE",
    "LOCK",
    "INTO",
    "START",
    "END",
    "COMMIT",
    "ROLLBACK",
    "RECOVER",
    "GROUP_REPLICATION",
    "SONAME",
    "COMPONENT",
    "STATEMENT",
    "TRANSACTION",
];

/// The statement as a person would name it, from its first words ("LOAD DATA",
/// "CREATE TEMPORARY TABLE", "HANDLER").
fn label(tokens: &[Token]) -> String {
    let mut words = tokens.iter().map_while(|t| match &t.tok {
        Tok::Word(w) => Some(w.to_ascii_uppercase()),
        _ => None,
    });
    let Some(first) = words.next() else {
        return "statement".into();
    };
    let mut label = first.clone();
    if COMPOUND_LEADERS.contains(&first.as_str()) {
        for w in words.take(3) {
            if !LABEL_WORDS.contains(&w.as_str()) {
                break;
            }
            label.push(' ');
            label.push_str(&w);
        }
    }
    label
}

/// BEGIN, START TRANSACTION, COMMIT, ROLLBACK, SAVEPOINT, RELEASE SAVEPOINT, XA, by
/// their complete grammar. `None`: not one of these forms.
fn transaction(tokens: &[Token]) -> Option<StatementKind> {
    let words: Vec<String> = tokens
        .iter()
        .map(|t| match &t.tok {
            Tok::Word(w) => w.to_ascii_uppercase(),
            Tok::Punct(',') => ",".into(),
            Tok::Ident(_) => "`".into(),
            _ => "?".into(),
        })
        .collect();
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let name = |t: Option<&Token>| t.is_some_and(|t| t.name().is_some());
    let begin = |read_write| StatementKind::Transaction {
        op: TransactionOp::Begin,
        read_write,
    };
    match w.as_slice() {
        ["BEGIN"] | ["BEGIN", "WORK"] | ["START", "TRANSACTION"] => Some(begin(false)),
        ["START", "TRANSACTION", modes @ ..] => {
            let mut read_write = false;
            let mut rest = modes;
            loop {
                rest = match rest {
                    ["WITH", "CONSISTENT", "SNAPSHOT", tail @ ..] => tail,
                    ["READ", "ONLY", tail @ ..] => tail,
                    ["READ", "WRITE", tail @ ..] => {
                        read_write = true;
                        tail
                    }
                    _ => return None,
                };
                match rest {
                    [] => return Some(begin(read_write)),
                    [",", tail @ ..] => rest = tail,
                    _ => return None,
                }
            }
        }
        ["COMMIT" | "ROLLBACK", rest @ ..] => {
            let op = if w[0] == "COMMIT" {
                TransactionOp::Commit
            } else {
                TransactionOp::Rollback
            };
            let rest = rest.strip_prefix(&["WORK"]).unwrap_or(rest);
            if op == TransactionOp::Rollback {
                if let Some(after) = rest.strip_prefix(&["TO"]) {
                    let after = after.strip_prefix(&["SAVEPOINT"]).unwrap_or(after);
                    return (after.len() == 1 && name(tokens.last())).then_some(
                        StatementKind::Transaction {
                            op: TransactionOp::RollbackTo,
                            read_write: false,
                        },
                    );
                }
            }
            let rest = match rest {
                ["AND", "NO", "CHAIN", tail @ ..] | ["AND", "CHAIN", tail @ ..] => tail,
                other => other,
            };
            match rest {
                [] | ["RELEASE"] | ["NO", "RELEASE"] => Some(StatementKind::Transaction {
                    op,
                    read_write: false,
                }),
                _ => None,
            }
        }
        ["SAVEPOINT", _] if name(tokens.get(1)) => Some(StatementKind::Transaction {
            op: TransactionOp::Savepoint,
            read_write: false,
        }),
        ["RELEASE", "SAVEPOINT", _] if name(tokens.get(2)) => Some(StatementKind::Transaction {
            op: TransactionOp::Release,
            read_write: false,
        }),
        ["XA", ..] => Some(StatementKind::Transaction {
            op: TransactionOp::TwoPhase,
            read_write: false,
        }),
        _ => None,
    }
}

/// `SET [GLOBAL | SESSION | LOCAL] TRANSACTION ...` (sqlparser drops the scope).
fn set_transaction(
    text: &str,
    tokens: &[Token],
) -> Result<(StatementKind, TreeFacts), ClassifyError> {
    let scope = tokens.get(1).filter(|t| !t.is_word("TRANSACTION"));
    if let Some(scope) = scope {
        if !(scope.is_word("SESSION") || scope.is_word("LOCAL")) {
            let label = format!(
                "SET {} TRANSACTION",
                scope.name().unwrap_or("?").to_ascii_uppercase()
            );
            return Ok((StatementKind::Other { label }, TreeFacts::default()));
        }
    }
    match parse_one(text)? {
        Statement::Set(Set::SetTransaction {
            modes,
            snapshot: None,
            ..
        }) => {
            let read_write = modes.iter().any(|m| {
                matches!(
                    m,
                    TransactionMode::AccessMode(TransactionAccessMode::ReadWrite)
                )
            });
            Ok((
                StatementKind::Set(SetFacts::TransactionModes { read_write }),
                TreeFacts::default(),
            ))
        }
        _ => Err(ClassifyError::Syntax(
            "unrecognised SET TRANSACTION form".into(),
        )),
    }
}

/// `SET CHARACTER SET cs` / `SET CHARSET cs`: client and results character sets.
fn set_character_set(tokens: &[Token]) -> Result<(StatementKind, TreeFacts), ClassifyError> {
    let at = if tokens.get(1).is_some_and(|t| t.is_word("CHARSET")) {
        2
    } else {
        3
    };
    let value = match tokens.get(at..).unwrap_or_default() {
        [t] => match &t.tok {
            Tok::Word(w) if w.eq_ignore_ascii_case("DEFAULT") => VariableValue::Default,
            Tok::Word(w) => VariableValue::Word(w.clone()),
            Tok::Ident(w) => VariableValue::Word(w.clone()),
            Tok::Str(s) => VariableValue::Text(s.clone()),
            _ => VariableValue::Expression,
        },
        _ => {
            return Err(ClassifyError::Syntax(
                "SET CHARACTER SET takes one character set name".into(),
            ))
        }
    };
    let assignments = ["character_set_client", "character_set_results"]
        .into_iter()
        .map(|name| VariableAssignment {
            scope: VariableScope::Session,
            name: name.into(),
            value: value.clone(),
        })
        .collect();
    Ok((
        StatementKind::Set(SetFacts::Variables(assignments)),
        TreeFacts::default(),
    ))
}

/// MariaDB `SET STATEMENT var = value [, ...] FOR <statement>`, split at the first
/// `FOR` outside parentheses.
fn set_statement(
    text: &str,
    tokens: &[Token],
    nested: bool,
) -> Result<(StatementKind, TreeFacts), ClassifyError> {
    if nested {
        return Err(ClassifyError::Syntax(
            "SET STATEMENT cannot be nested".into(),
        ));
    }
    let mut depth = 0usize;
    let mut split = None;
    for (i, t) in tokens.iter().enumerate().skip(2) {
        match &t.tok {
            Tok::Punct('(') => depth += 1,
            Tok::Punct(')') => depth = depth.saturating_sub(1),
            _ if depth == 0 && t.is_word("FOR") => {
                split = Some(i);
                break;
            }
            _ => {}
        }
    }
    let (Some(at), Some(first)) = (split, tokens.get(2)) else {
        return Err(ClassifyError::Syntax(
            "SET STATEMENT without FOR <statement>".into(),
        ));
    };
    let settings_text = format!(
        "SET {}",
        text.get(first.start..tokens[at].start).unwrap_or_default()
    );
    let statement = parse_one(&settings_text)?;
    let mut tree = walk(&statement);
    let settings = match set_kind_of(&statement) {
        Some(SetFacts::Variables(list))
            if list.iter().all(|a| a.scope == VariableScope::Session) =>
        {
            list
        }
        _ => {
            return Err(ClassifyError::Syntax(
                "SET STATEMENT takes session variable assignments".into(),
            ))
        }
    };
    let mut inner_text = text.to_owned();
    blank(&mut inner_text, 0, tokens[at].end);
    let (inner, inner_tree) = classify_text(&inner_text, &tokens[at + 1..], true)?;
    tree.merge(inner_tree);
    Ok((
        StatementKind::SetStatement {
            settings,
            inner: Box::new(inner),
        },
        tree,
    ))
}

fn set_kind_of(statement: &Statement) -> Option<SetFacts> {
    match statement {
        Statement::Set(set) => match set_kind(set, &[]) {
            StatementKind::Set(facts) => Some(facts),
            _ => None,
        },
        _ => None,
    }
}

/// The facts of a parsed `SET`.
fn set_kind(set: &Set, tokens: &[Token]) -> StatementKind {
    let names = |charset: VariableValue, collation: Option<VariableValue>| {
        let mut list: Vec<VariableAssignment> = [
            "character_set_client",
            "character_set_connection",
            "character_set_results",
        ]
        .into_iter()
        .map(|name| VariableAssignment {
            scope: VariableScope::Session,
            name: name.into(),
            value: charset.clone(),
        })
        .collect();
        if let Some(collation) = collation {
            list.push(VariableAssignment {
                scope: VariableScope::Session,
                name: "collation_connection".into(),
                value: collation,
            });
        }
        StatementKind::Set(SetFacts::Variables(list))
    };
    match set {
        Set::SingleAssignment {
            scope,
            hivevar: false,
            variable,
            values,
        } if values.len() == 1 => StatementKind::Set(SetFacts::Variables(vec![assignment(
            scope.as_ref(),
            variable,
            &values[0],
        )])),
        Set::MultipleAssignments { assignments } => StatementKind::Set(SetFacts::Variables(
            assignments
                .iter()
                .map(|a| assignment(a.scope.as_ref(), &a.name, &a.value))
                .collect(),
        )),
        Set::SetNames {
            charset_name,
            collation_name,
        } => names(
            VariableValue::Word(charset_name.value.clone()),
            collation_name.clone().map(VariableValue::Word),
        ),
        Set::SetNamesDefault {} => names(VariableValue::Default, None),
        _ => StatementKind::Other {
            label: if tokens.is_empty() {
                "SET".into()
            } else {
                label(tokens)
            },
        },
    }
}

fn part_name(part: &ObjectNamePart) -> String {
    match part {
        ObjectNamePart::Identifier(ident) => ident.value.clone(),
        ObjectNamePart::Function(_) => "?".into(),
    }
}

/// One assignment: where it lands and what it sets.
fn assignment(
    modifier: Option<&ContextModifier>,
    name: &ObjectName,
    value: &Expr,
) -> VariableAssignment {
    let scope = match modifier {
        Some(ContextModifier::Global) => VariableScope::Global,
        _ => VariableScope::Session,
    };
    let parts: Vec<String> = name.0.iter().map(part_name).collect();
    let (scope, name) = match parts.as_slice() {
        [p] if p.starts_with("@@") => (scope, p[2..].to_ascii_lowercase()),
        [p] if p.starts_with('@') => (VariableScope::User, p[1..].to_ascii_lowercase()),
        [p] => (scope, p.to_ascii_lowercase()),
        [q, p] if q.starts_with("@@") => {
            let scope = match q[2..].to_ascii_lowercase().as_str() {
                "session" | "local" => scope,
                "global" => VariableScope::Global,
                "persist" => VariableScope::Persist,
                "persist_only" => VariableScope::PersistOnly,
                // Unknown: kept whole, so no allow-listed name matches.
                _ => return unknown_assignment(&parts),
            };
            (scope, p.to_ascii_lowercase())
        }
        _ => return unknown_assignment(&parts),
    };
    let value = variable_value(value, &name);
    VariableAssignment { scope, name, value }
}

fn unknown_assignment(parts: &[String]) -> VariableAssignment {
    VariableAssignment {
        scope: VariableScope::Session,
        name: parts.join(".").to_ascii_lowercase(),
        value: VariableValue::Expression,
    }
}

fn variable_value(expr: &Expr, name: &str) -> VariableValue {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => VariableValue::Number(n.clone()),
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => {
                VariableValue::Text(s.clone())
            }
            Value::Boolean(b) => VariableValue::Word(b.to_string()),
            Value::Null => VariableValue::Null,
            _ => VariableValue::Expression,
        },
        Expr::Identifier(ident) if ident.value.starts_with('@') => VariableValue::Expression,
        Expr::Identifier(ident)
            if ident.quote_style.is_none() && ident.value.eq_ignore_ascii_case("DEFAULT") =>
        {
            VariableValue::Default
        }
        Expr::Identifier(ident) => VariableValue::Word(ident.value.clone()),
        Expr::Nested(inner) => variable_value(inner, name),
        _ => {
            let mut appended = Vec::new();
            let mut removed = Vec::new();
            if modified_current(expr, name, &mut appended, &mut removed) {
                VariableValue::Modified { appended, removed }
            } else {
                VariableValue::Expression
            }
        }
    }
}

/// Whether `expr` is the session value of `@@name` with literal text appended
/// (`CONCAT`) or removed (`REPLACE(.., 'x', '')`), nested any way.
fn modified_current(
    expr: &Expr,
    name: &str,
    appended: &mut Vec<String>,
    removed: &mut Vec<String>,
) -> bool {
    match expr {
        Expr::Identifier(ident) => {
            ident.value.len() > 2
                && ident.value.starts_with("@@")
                && ident.value[2..].eq_ignore_ascii_case(name)
        }
        Expr::CompoundIdentifier(parts) => {
            parts.len() == 2
                && (parts[0].value.eq_ignore_ascii_case("@@session")
                    || parts[0].value.eq_ignore_ascii_case("@@local"))
                && parts[1].value.eq_ignore_ascii_case(name)
        }
        Expr::Nested(inner) => modified_current(inner, name, appended, removed),
        Expr::Subquery(query) => match scalar_select(query) {
            Some(inner) => modified_current(inner, name, appended, removed),
            None => false,
        },
        Expr::Function(f) => {
            let FunctionArguments::List(list) = &f.args else {
                return false;
            };
            if f.name.0.len() != 1 || list.duplicate_treatment.is_some() || !list.clauses.is_empty()
            {
                return false;
            }
            let args: Vec<&Expr> = list
                .args
                .iter()
                .filter_map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                    _ => None,
                })
                .collect();
            if args.len() != list.args.len() || args.is_empty() {
                return false;
            }
            let literal = |e: &Expr| match e {
                Expr::Value(v) => match &v.value {
                    Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
                    _ => None,
                },
                _ => None,
            };
            let function = part_name(&f.name.0[0]).to_ascii_lowercase();
            match function.as_str() {
                "concat" if args.len() >= 2 => {
                    let Some(text) = args[1..]
                        .iter()
                        .map(|a| literal(a))
                        .collect::<Option<String>>()
                    else {
                        return false;
                    };
                    appended.push(text);
                    modified_current(args[0], name, appended, removed)
                }
                "replace" if args.len() == 3 => {
                    let (Some(what), Some(with)) = (literal(args[1]), literal(args[2])) else {
                        return false;
                    };
                    if !with.is_empty() {
                        return false;
                    }
                    removed.push(what);
                    modified_current(args[0], name, appended, removed)
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// The expression of `(SELECT expr)`: one unaliased item, no FROM or other clause.
fn scalar_select(query: &Query) -> Option<&Expr> {
    if query.with.is_some()
        || query.order_by.is_some()
        || query.limit_clause.is_some()
        || !query.locks.is_empty()
    {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let Select {
        projection,
        from,
        selection,
        into,
        having,
        ..
    } = select.as_ref();
    if !from.is_empty() || selection.is_some() || into.is_some() || having.is_some() {
        return None;
    }
    match projection.as_slice() {
        [SelectItem::UnnamedExpr(e)] => Some(e),
        _ => None,
    }
}

/// SHOW forms sqlparser does not parse (`SHOW TABLE STATUS LIKE 'x'`, `SHOW GRANTS FOR
/// 'u'@'h'`, `SHOW PROCEDURE STATUS WHERE Db = 'x'`): the part before WHERE may hold
/// only names, literals and `.`, `,`, `=`, `@`, `()` and `(*)`; the WHERE expression is
/// parsed (as `SELECT 1 WHERE expr`) so its functions and tables are checked.
fn show_fallback(
    text: &str,
    tokens: &[Token],
) -> Option<Result<(StatementKind, TreeFacts), ClassifyError>> {
    let where_at = tokens.iter().position(|t| t.is_word("WHERE"));
    let prefix = &tokens[1..where_at.unwrap_or(tokens.len())];
    let mut i = 0;
    while i < prefix.len() {
        match &prefix[i].tok {
            Tok::Word(_) | Tok::Ident(_) | Tok::Str(_) | Tok::Literal => {}
            Tok::Punct('.' | ',' | '=' | '@') => {}
            Tok::Punct('(') => {
                let close = if prefix.get(i + 1).is_some_and(|t| t.is_punct('*')) {
                    i + 2
                } else {
                    i + 1
                };
                if !prefix.get(close).is_some_and(|t| t.is_punct(')')) {
                    return None;
                }
                i = close;
            }
            _ => return None,
        }
        i += 1;
    }
    let tree = match where_at {
        None => TreeFacts::default(),
        Some(at) => {
            let expr = text.get(tokens[at].end..).unwrap_or_default();
            match parse_one(&format!("SELECT 1 WHERE {expr}")) {
                Ok(statement @ Statement::Query(_)) => walk(&statement),
                Ok(_) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    };
    Some(Ok((StatementKind::Show, tree)))
}

/// Collects the tree facts of a statement.
fn walk(statement: &Statement) -> TreeFacts {
    let mut walker = Walker::default();
    walker.scopes.recursive_sees_only_earlier = true;
    let _ = statement.visit(&mut walker);
    walker.tree.relations = walker.scopes.relations();
    if walker.stray_star {
        // A `*` outside a select list: fail closed, as if over every table named.
        for table in walker.tree.tables.clone() {
            walker.star_table(table);
        }
    }
    walker.tree
}

/// A relation a SELECT reads directly, and what it may be called in that SELECT.
struct Range {
    name: QualifiedName,
    alias: Option<String>,
}

/// A query's LIMIT as far as a constant says.
fn query_limit(query: &Query) -> crate::sql::LimitFact {
    use crate::sql::LimitFact;
    use sqlparser::ast::LimitClause;
    let limit = match &query.limit_clause {
        Some(LimitClause::LimitOffset { limit: Some(l), .. }) => l,
        Some(LimitClause::OffsetCommaLimit { limit, .. }) => limit,
        _ => return LimitFact::None,
    };
    match limit {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n
                .parse::<u64>()
                .map(LimitFact::AtMost)
                .unwrap_or(LimitFact::Unknown),
            Value::Null => LimitFact::None,
            _ => LimitFact::Unknown,
        },
        _ => LimitFact::Unknown,
    }
}

/// Whether a FROM item joins without a condition anywhere (nested joins included).
fn joins_without_condition(from: &TableWithJoins) -> bool {
    let nested = |factor: &TableFactor| match factor {
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => joins_without_condition(table_with_joins),
        _ => false,
    };
    nested(&from.relation)
        || from.joins.iter().any(|j| {
            nested(&j.relation)
                || matches!(
                    join_constraint(&j.join_operator),
                    None | Some(JoinConstraint::None)
                )
        })
}

/// The join's constraint, for the operators that have one.
fn join_constraint(op: &JoinOperator) -> Option<&JoinConstraint> {
    match op {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c)
        | JoinOperator::CrossJoin(c)
        | JoinOperator::Semi(c)
        | JoinOperator::LeftSemi(c)
        | JoinOperator::RightSemi(c)
        | JoinOperator::Anti(c)
        | JoinOperator::LeftAnti(c)
        | JoinOperator::RightAnti(c)
        | JoinOperator::StraightJoin(c)
        | JoinOperator::AsOf { constraint: c, .. } => Some(c),
        JoinOperator::CrossApply
        | JoinOperator::OuterApply
        | JoinOperator::ArrayJoin
        | JoinOperator::LeftArrayJoin
        | JoinOperator::InnerArrayJoin => None,
    }
}

#[derive(Default)]
struct Walker {
    tree: TreeFacts,
    /// Statements being visited (1 = the top one).
    statements: usize,
    seen_functions: HashSet<QualifiedName>,
    seen_tables: HashSet<QualifiedName>,
    seen_columns: HashSet<String>,
    seen_star_tables: HashSet<QualifiedName>,
    /// A `*` seen outside a select list.
    stray_star: bool,
    /// CTE scoping, for which names are relations.
    scopes: crate::sql::scope::Scopes,
    /// CTE bodies met in a WITH, by address: the query holding it and the CTE's name.
    cte_bodies: std::collections::HashMap<usize, (usize, String)>,
    /// Scopes each query being visited entered (its own, and its CTE's).
    entered: Vec<usize>,
    /// The LIMIT of each query being visited (innermost last).
    limits: Vec<crate::sql::LimitFact>,
}

/// A called function's name. A quoted name (`` `left`(x) ``) keeps its backticks: MySQL
/// resolves it past the grammar's built-ins, to a stored function of that name.
fn function_name(name: &ObjectName) -> QualifiedName {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(ident)] if ident.quote_style.is_some() => QualifiedName {
            schema: None,
            name: format!("`{}`", ident.value),
        },
        _ => qualified(name),
    }
}

fn qualified(name: &ObjectName) -> QualifiedName {
    let mut parts: Vec<String> = name.0.iter().map(part_name).collect();
    let last = parts.pop().unwrap_or_default();
    QualifiedName {
        schema: (!parts.is_empty()).then(|| parts.join(".")),
        name: last,
    }
}

impl Walker {
    fn function(&mut self, name: QualifiedName) {
        if self.seen_functions.insert(name.clone()) {
            self.tree.functions.push(name);
        }
    }

    fn table(&mut self, name: QualifiedName) {
        self.scopes.reference(&name);
        if self.seen_tables.insert(name.clone()) {
            self.tree.tables.push(name);
        }
    }

    fn column(&mut self, name: &str) {
        if self.seen_columns.insert(name.to_owned()) {
            self.tree.column_names.push(name.to_owned());
        }
    }

    fn star_table(&mut self, table: QualifiedName) {
        if self.seen_star_tables.insert(table.clone()) {
            self.tree.star_tables.push(table);
        }
    }

    /// The relations a FROM item reads directly (through joins, not subqueries), and
    /// the columns its joins compare.
    fn ranges_of(&mut self, from: &TableWithJoins, out: &mut Vec<Range>) {
        self.factor_ranges(&from.relation, out);
        for join in &from.joins {
            self.factor_ranges(&join.relation, out);
            match join_constraint(&join.join_operator) {
                Some(JoinConstraint::Using(columns) | JoinConstraint::UsingAlias(columns, _)) => {
                    for c in columns {
                        let name = qualified(c).name;
                        self.column(&name);
                    }
                }
                Some(JoinConstraint::Natural) => self.tree.natural_join = true,
                _ => {}
            }
        }
    }

    fn factor_ranges(&mut self, factor: &TableFactor, out: &mut Vec<Range>) {
        match factor {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => out.push(Range {
                name: qualified(name),
                alias: alias.as_ref().map(|a| a.name.value.clone()),
            }),
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let start = out.len();
                self.ranges_of(table_with_joins, out);
                if let Some(alias) = alias {
                    // `(a JOIN b) AS j`: `j.*` is both.
                    for r in &mut out[start..] {
                        r.alias = Some(alias.name.value.clone());
                    }
                }
            }
            _ => {}
        }
    }

    /// The LIMIT around what is visited now (the tightest of the queries it is in).
    fn current_limit(&self) -> crate::sql::LimitFact {
        self.limits
            .iter()
            .fold(crate::sql::LimitFact::None, |a, b| a.tighter(*b))
    }

    /// The tables a select list's `*` and `q.*` expand, and the SELECT's shape.
    fn select_stars(&mut self, select: &Select) {
        let mut ranges = Vec::new();
        for from in &select.from {
            self.ranges_of(from, &mut ranges);
        }
        if !ranges.is_empty() {
            let unconditioned = select.from.iter().any(joins_without_condition);
            self.tree.shapes.push(crate::sql::SelectShape {
                tables: ranges.iter().map(|r| r.name.clone()).collect(),
                where_clause: select.selection.is_some(),
                limit: self.current_limit(),
                cross_join: unconditioned || (select.from.len() > 1 && select.selection.is_none()),
            });
        }
        let mut starred = vec![false; ranges.len()];
        for item in &select.projection {
            let qualifier = match item {
                SelectItem::Wildcard(_) => None,
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(q),
                    _,
                ) => Some(qualified(q).name),
                SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::Expr(_), _) => None,
                _ => continue,
            };
            let named = |r: &Range| {
                qualifier.as_deref().is_some_and(|q| {
                    r.alias
                        .as_deref()
                        .unwrap_or(&r.name.name)
                        .eq_ignore_ascii_case(q)
                        || r.name.name.eq_ignore_ascii_case(q)
                })
            };
            let any = ranges.iter().any(named);
            for (i, r) in ranges.iter().enumerate() {
                if !any || named(r) {
                    starred[i] = true;
                }
            }
        }
        for (r, starred) in ranges.into_iter().zip(starred) {
            if starred {
                self.star_table(r.name);
            }
        }
    }

    fn write(&mut self, label: &str) {
        if !self.tree.writes.iter().any(|w| w == label) {
            self.tree.writes.push(label.to_owned());
        }
    }

    /// `TABLE t` and nested writes within one query body (iteratively: set operations
    /// nest left-deep).
    fn set_expr(&mut self, body: &SetExpr) {
        let mut stack = vec![body];
        while let Some(e) = stack.pop() {
            match e {
                SetExpr::SetOperation { left, right, .. } => {
                    stack.push(left);
                    stack.push(right);
                }
                SetExpr::Table(t) => {
                    let name = t.table_name.as_ref().map(|i| i.value.clone());
                    let table = QualifiedName {
                        schema: t.schema_name.as_ref().map(|i| i.value.clone()),
                        name: name.unwrap_or_default(),
                    };
                    // `TABLE t` is `SELECT * FROM t`.
                    self.table(table.clone());
                    self.tree.shapes.push(crate::sql::SelectShape {
                        tables: vec![table.clone()],
                        where_clause: false,
                        limit: self.current_limit(),
                        cross_join: false,
                    });
                    self.star_table(table);
                }
                SetExpr::Insert(_) => self.write("INSERT"),
                SetExpr::Update(_) => self.write("UPDATE"),
                SetExpr::Delete(_) => self.write("DELETE"),
                SetExpr::Merge(_) => self.write("MERGE"),
                SetExpr::Select(_) | SetExpr::Query(_) | SetExpr::Values(_) => {}
            }
        }
    }
}

impl Visitor for Walker {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        self.statements += 1;
        if self.statements > 1 && !matches!(statement, Statement::Query(_)) {
            self.write(statement_label(statement));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _statement: &Statement) -> ControlFlow<()> {
        self.statements = self.statements.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.limits.pop();
        for _ in 0..self.entered.pop().unwrap_or(0) {
            self.scopes.leave();
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        let address = query as *const Query as usize;
        let mut entered = 0;
        if let Some((holder, name)) = self.cte_bodies.remove(&address) {
            self.scopes.enter_cte(holder, &name);
            entered += 1;
        }
        let id = self.scopes.enter_query();
        self.entered.push(entered + 1);
        self.limits.push(query_limit(query));
        if let Some(with) = &query.with {
            if with.recursive {
                self.scopes.set_recursive(id);
            }
            for cte in &with.cte_tables {
                let body = &*cte.query as *const Query as usize;
                self.cte_bodies
                    .insert(body, (id, cte.alias.name.value.clone()));
            }
        }
        if !query.locks.is_empty() {
            self.tree.locking = true;
        }
        self.set_expr(&query.body);
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if select.into.is_some() {
            self.tree.into = true;
        }
        self.select_stars(select);
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        self.table(qualified(relation));
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            // `FROM f(1)`: a table-valued call.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => self.function(function_name(name)),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Function(f) => self.function(function_name(&f.name)),
            Expr::Identifier(ident) => self.column(&ident.value),
            Expr::CompoundIdentifier(parts) => {
                if let Some(last) = parts.last() {
                    self.column(&last.value);
                }
            }
            Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => self.stray_star = true,
            // `MATCH (c, ...) AGAINST (...)` compares the columns' values.
            Expr::MatchAgainst { columns, .. } => {
                for c in columns {
                    let name = qualified(c).name;
                    self.column(&name);
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn all(sql: &str) -> Vec<StatementFacts> {
        classify(sql, 4 << 20).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn one(sql: &str) -> StatementFacts {
        let mut all = all(sql);
        assert_eq!(all.len(), 1, "{sql}: {all:?}");
        all.remove(0)
    }

    fn functions(sql: &str) -> Vec<String> {
        one(sql)
            .tree
            .functions
            .iter()
            .map(|f| f.to_string())
            .collect()
    }

    fn tables(sql: &str) -> Vec<String> {
        one(sql).tree.tables.iter().map(|f| f.to_string()).collect()
    }

    fn vars(sql: &str) -> Vec<VariableAssignment> {
        match one(sql).kind {
            StatementKind::Set(SetFacts::Variables(list)) => list,
            other => panic!("{sql}: {other:?}"),
        }
    }

    fn var(scope: VariableScope, name: &str, value: VariableValue) -> VariableAssignment {
        VariableAssignment {
            scope,
            name: name.into(),
            value,
        }
    }

    #[test]
    fn texts_are_the_original_statements() {
        let facts = all("  SELECT \"a;\" -- x\n ; /* c */ SHOW TABLES;\n");
        assert_eq!(facts.len(), 2);
        assert_eq!(facts[0].text, "SELECT \"a;\" -- x");
        assert_eq!(facts[1].text, "/* c */ SHOW TABLES");
        assert_eq!(facts[1].kind, StatementKind::Show);
        for empty in ["", "  ", ";", "-- x", "/* a */ ; # b"] {
            let facts = all(empty);
            assert_eq!(facts.len(), 1, "{empty:?}");
            assert_eq!(facts[0].kind, StatementKind::Empty, "{empty:?}");
        }
    }

    #[test]
    fn splits_like_the_server() {
        assert_eq!(all("SELECT 1--1").len(), 1);
        let facts = all("SELECT 1 --x; DELETE FROM t");
        assert_eq!(facts.len(), 2);
        assert_eq!(facts[1].kind.label(), "DELETE");
        assert_eq!(all("SELECT 1 -- x; DELETE FROM t").len(), 1);
        assert_eq!(all("SELECT 1 #; DELETE FROM t").len(), 1);
        assert_eq!(all(r"SELECT 'a\';DELETE FROM t;--'").len(), 1);
        assert_eq!(all(r#"SELECT "a\";DELETE FROM t;--""#).len(), 1);
        assert_eq!(all(r"SELECT 'a\\';DELETE FROM t;-- '").len(), 2);
        // The server runs the statements before a broken one: all are refused.
        assert!(classify(r"SELECT 'a\\';DELETE FROM t;--'", 1 << 20).is_err());
        assert_eq!(all("SELECT `a;b` FROM t").len(), 1);
        assert_eq!(all("SELECT 1 /* ; */").len(), 1);
    }

    #[test]
    fn finds_functions_and_tables_everywhere() {
        assert_eq!(
            functions("SELECT a FROM t WHERE b IN (SELECT LOAD_FILE('x')) ORDER BY lower(c)"),
            ["LOAD_FILE", "lower"]
        );
        assert_eq!(functions("SELECT db.f(1), `db`.`g`(2)"), ["db.f", "db.g"]);
        assert_eq!(
            functions("SELECT 1 FROM t GROUP BY a HAVING max(b) > 1"),
            ["max"]
        );
        assert_eq!(
            tables("WITH x AS (SELECT * FROM mysql.user) SELECT * FROM x JOIN `a`.`b` ON 1"),
            ["mysql.user", "x", "a.b"]
        );
        assert_eq!(tables("TABLE mysql.user"), ["mysql.user"]);
        assert_eq!(tables("SELECT 1 UNION TABLE s.t"), ["s.t"]);
        assert_eq!(tables("DESCRIBE mysql.user"), ["mysql.user"]);
        let show = one("SHOW TABLE STATUS WHERE Name = (SELECT get_lock('a', 1))");
        assert_eq!(show.kind, StatementKind::Show);
        assert_eq!(show.tree.functions[0].name, "get_lock");
    }

    #[test]
    fn locking_into_and_writes() {
        assert!(
            one("SELECT * FROM t WHERE a IN (SELECT b FROM u FOR UPDATE)")
                .tree
                .locking
        );
        assert!(one("SELECT * FROM t FOR SHARE").tree.locking);
        assert!(one("SELECT * FROM t LOCK IN SHARE MODE").tree.locking);
        assert!(one("SELECT 1 INTO @x").tree.into);
        assert!(one("SELECT * FROM t INTO OUTFILE '/tmp/x'").tree.into);
        assert!(one("SELECT * FROM t INTO DUMPFILE '/tmp/x'").tree.into);
        assert!(!one("SELECT 1 AS into_x").tree.into);
        assert!(one("SELECT * FROM t /*!50000 FOR UPDATE */").tree.locking);
    }

    #[test]
    fn kinds() {
        assert_eq!(
            one("use `app`").kind,
            StatementKind::Use {
                database: "app".into()
            }
        );
        assert_eq!(
            one("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY").kind,
            StatementKind::Transaction {
                op: TransactionOp::Begin,
                read_write: false
            }
        );
        assert_eq!(
            one("start transaction read write").kind,
            StatementKind::Transaction {
                op: TransactionOp::Begin,
                read_write: true
            }
        );
        for (sql, op) in [
            ("BEGIN WORK", TransactionOp::Begin),
            ("COMMIT AND NO CHAIN NO RELEASE", TransactionOp::Commit),
            ("ROLLBACK WORK", TransactionOp::Rollback),
            ("ROLLBACK TO SAVEPOINT `s`", TransactionOp::RollbackTo),
            ("SAVEPOINT s", TransactionOp::Savepoint),
            ("RELEASE SAVEPOINT s", TransactionOp::Release),
            ("XA START 'x'", TransactionOp::TwoPhase),
        ] {
            assert_eq!(
                one(sql).kind,
                StatementKind::Transaction {
                    op,
                    read_write: false
                },
                "{sql}"
            );
        }
        assert_eq!(one("BEGIN NOT ATOMIC SELECT 1").kind.label(), "BEGIN");
        assert_eq!(
            one("LOAD DATA INFILE '/etc/passwd' INTO TABLE t")
                .kind
                .label(),
            "LOAD DATA"
        );
        assert_eq!(one("HANDLER t OPEN").kind.label(), "HANDLER");
        assert_eq!(
            one("create temporary table t (a int)").kind.label(),
            "CREATE TEMPORARY TABLE"
        );
        assert_eq!(one("DELIMITER //").kind.label(), "DELIMITER");
        assert!(matches!(
            one("ANALYZE SELECT 1").kind,
            StatementKind::Explain { analyze: true, .. }
        ));
        assert_eq!(one("ANALYZE TABLE t").kind.label(), "ANALYZE TABLE");
        assert_eq!(
            one("SET GLOBAL TRANSACTION READ ONLY").kind.label(),
            "SET GLOBAL TRANSACTION"
        );
        assert_eq!(
            one("SET SESSION TRANSACTION READ WRITE").kind,
            StatementKind::Set(SetFacts::TransactionModes { read_write: true })
        );
        match one("SET STATEMENT sort_buffer_size = 1024 FOR SELECT * FROM t FOR UPDATE") {
            StatementFacts {
                kind: StatementKind::SetStatement { settings, inner },
                tree,
                ..
            } => {
                assert_eq!(settings[0].name, "sort_buffer_size");
                assert_eq!(*inner, StatementKind::Query);
                assert!(tree.locking);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn set_assignments() {
        use VariableScope::*;
        use VariableValue::*;
        assert_eq!(
            vars("SET GLOBAL a = 1, @@session.b = 'x', @@global.c = ON, @u = now(), @@d = DEFAULT"),
            [
                var(Global, "a", Number("1".into())),
                var(Session, "b", Text("x".into())),
                var(Global, "c", Word("ON".into())),
                var(User, "u", Expression),
                var(Session, "d", Default),
            ]
        );
        assert_eq!(
            vars("set autocommit=1, sql_mode = concat(@@sql_mode,',STRICT_TRANS_TABLES')")[1],
            var(
                Session,
                "sql_mode",
                Modified {
                    appended: vec![",STRICT_TRANS_TABLES".into()],
                    removed: vec![]
                }
            )
        );
        assert_eq!(
            vars("SET sql_mode = (SELECT REPLACE(@@sql_mode, 'ONLY_FULL_GROUP_BY', ''))")[0].value,
            Modified {
                appended: vec![],
                removed: vec!["ONLY_FULL_GROUP_BY".into()]
            }
        );
        assert_eq!(
            vars("SET sql_mode = concat(@@time_zone, 'x')")[0].value,
            Expression
        );
        assert_eq!(
            vars("SET NAMES 'utf8mb4' COLLATE 'utf8mb4_bin'"),
            [
                var(Session, "character_set_client", Word("utf8mb4".into())),
                var(Session, "character_set_connection", Word("utf8mb4".into())),
                var(Session, "character_set_results", Word("utf8mb4".into())),
                var(Session, "collation_connection", Word("utf8mb4_bin".into())),
            ]
        );
        assert_eq!(vars("SET CHARACTER SET gbk")[0].value, Word("gbk".into()));
        assert_eq!(vars("SET character_set_results = NULL")[0].value, Null);
        assert_eq!(vars("SET @@persist.x = 1")[0].scope, Persist);
        // sqlparser cannot parse PERSIST: denied as a syntax error.
        assert!(classify("SET PERSIST x = 1", 1 << 20).is_err());
    }

    #[test]
    fn executable_comments_are_read_every_way() {
        // Run by every server: plain code.
        assert_eq!(functions("SELECT 1 /*!40101 , lower('x') */"), ["lower"]);
        assert_eq!(one("/*! SELECT 1 */").kind, StatementKind::Query);
        // Only MariaDB runs /*M!: still seen.
        assert_eq!(
            functions("SELECT 1 /*M! , load_file('x') */"),
            ["load_file"]
        );
        // A server that skips the comment reads `get_lock ('a', 1)`: a call.
        for sql in [
            "SELECT get_lock /*M! + */ ('a', 1)",
            "SELECT get_lock /*!99999 + */ ('a', 1)",
            "SELECT get_lock /*M!100000 + */ ('a', 1)",
        ] {
            assert!(functions(sql).contains(&"get_lock".to_string()), "{sql}");
        }
        // A statement only one server runs is that statement.
        assert_eq!(one("/*M!100000 DELETE FROM t */").kind.label(), "DELETE");
        // Statements that are something else on another server are refused.
        assert!(classify("/*!80000 SELECT 1 */ /*M! SHOW TABLES */", 1 << 20).is_err());
        // A statement wholly inside one takes its kind.
        assert_eq!(one("/*!80000 SET NAMES utf8mb4 */").kind.label(), "SET");
    }

    #[test]
    fn refuses_what_does_not_parse() {
        for sql in [
            "SELECT 'abc",
            "SELECT 1 /* x",
            "SELECT * FROM",
            "SELECT 1\0",
            "SELECT @@`version` AS v, load_file('/x') AS `y`, 1 AS `z`",
        ] {
            assert!(
                matches!(classify(sql, 1 << 20), Err(ClassifyError::Syntax(_))),
                "{sql}"
            );
        }
        assert!(matches!(
            classify("SELECT 1", 3),
            Err(ClassifyError::TooLarge { .. })
        ));
        // A word that starts no statement is a syntax error; a statement the grammar
        // lacks is labelled, and denied by policy as what it is.
        assert!(matches!(
            classify("SELEC 1", 1 << 20),
            Err(ClassifyError::Syntax(_))
        ));
        assert_eq!(one("HANDLER t OPEN").kind.label(), "HANDLER");
    }

    #[test]
    fn linear_and_bounded() {
        let list = |size: usize| {
            let mut list = String::from("SELECT * FROM t WHERE a IN (");
            let mut i = 0u64;
            while list.len() < size {
                list.push_str(&i.to_string());
                list.push(',');
                i += 1;
            }
            list.push_str("0)");
            list
        };
        let time = |sql: &str| {
            let started = Instant::now();
            assert_eq!(classify(sql, 2 << 20).unwrap().len(), 1);
            started.elapsed()
        };
        let quarter = time(&list(256 << 10));
        let full = time(&list(1 << 20));
        // Linear: four times the text takes about four times as long (quadratic: 16).
        assert!(
            full < quarter * 8 + Duration::from_millis(100),
            "{quarter:?} then {full:?}"
        );
        // sqlparser is about ten times slower unoptimised (tests), and tests share 2 cores.
        let limit = Duration::from_secs(if cfg!(debug_assertions) { 4 } else { 1 });
        assert!(full < limit, "1 MiB IN list took {full:?}");

        // Nesting up to the inline limit parses on the caller's stack (sqlparser grows
        // its stack as it recurses) or is refused, quickly, in every shape.
        for d in [30usize, 60, 127, 190] {
            for nested in [
                format!("SELECT * FROM {}t{}", "(".repeat(d), ")".repeat(d)),
                format!("SELECT * FROM {}t{}", "(t JOIN ".repeat(d), ")".repeat(d)),
                format!(
                    "SELECT * FROM t1 {}{}",
                    "JOIN (t2 ".repeat(d),
                    ")".repeat(d)
                ),
                format!(
                    "SELECT {}SELECT 1{}",
                    "(SELECT 1 FROM (".repeat(d),
                    ") x)".repeat(d)
                ),
                format!("SELECT {}1{}", "ROW(".repeat(d), ")".repeat(d)),
                format!("SELECT {}1", "NOT ".repeat(d)),
                format!("SELECT {}1", "-".repeat(d)),
                format!("SELECT {}1{}", "CAST((".repeat(d), ") AS CHAR)".repeat(d)),
                format!("SET @a = {}1{}", "concat(".repeat(d), ", 'x')".repeat(d)),
            ] {
                let started = Instant::now();
                let _ = classify(&nested, 1 << 20);
                assert!(started.elapsed() < Duration::from_secs(2), "{nested}");
            }
        }
        assert_eq!(
            classify(
                &format!("SELECT {}1{}", "(".repeat(40), ")".repeat(40)),
                1 << 20
            )
            .unwrap()
            .len(),
            1
        );
        let deep = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(matches!(
            classify(&deep, 1 << 20),
            Err(ClassifyError::TooComplex { .. } | ClassifyError::Syntax(_))
        ));
        let deep = format!(
            "SELECT {}",
            vec!["(SELECT 1"; 5_000].join(" ") + &")".repeat(5_000)
        );
        assert!(classify(&deep, 1 << 20).is_err());
        // Long operator chains build deep trees: parsed on a big stack, or refused.
        let chain = |n: usize| format!("SELECT 1 FROM t WHERE {}", vec!["a = 1"; n].join(" OR "));
        assert_eq!(classify(&chain(100), 1 << 20).unwrap().len(), 1);
        assert_eq!(classify(&chain(3_000), 1 << 20).unwrap().len(), 1);
        assert!(matches!(
            classify(&chain(20_000), 1 << 20),
            Err(ClassifyError::TooComplex { .. })
        ));
    }
}
