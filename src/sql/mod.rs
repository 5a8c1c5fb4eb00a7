//! The classifier: statement text in, a dialect-agnostic fact sheet out.
//!
//! Each dialect has a front end that parses with that server's own grammar and fills
//! the same [`StatementFacts`]: what kind of statement it is, which functions it calls
//! and tables it names anywhere in its tree, whether it locks rows, writes through a
//! CTE or selects INTO a table. Policy ([`crate::policy::readonly`]) runs on these
//! facts only, so the read-only rules are written once for every protocol.
//!
//! Front ends: [`postgres`] (libpg_query via `pg_query`) and [`mysql`] (the gateway's
//! own MySQL pre-lexer in front of `sqlparser`'s MySqlDialect). A front end that cannot
//! parse a statement returns [`ClassifyError`]; the caller denies — nothing unparsed is
//! ever forwarded.

pub mod mysql;
pub mod pool;
pub mod postgres;
pub mod scope;
pub mod walk;

use std::fmt;

/// A schema-qualified name as written (`schema` is `None` when unqualified).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QualifiedName {
    pub schema: Option<String>,
    pub name: String,
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// One statement's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementFacts {
    /// This statement's own text (one part of a multi-statement message).
    pub text: String,
    pub kind: StatementKind,
    /// What the statement contains anywhere in its tree.
    pub tree: TreeFacts,
}

/// Facts found anywhere in a statement's tree, however deeply nested.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeFacts {
    /// Every function called.
    pub functions: Vec<QualifiedName>,
    /// Every operator used (`=`, `||`, `OPERATOR(myschema.===)`, `ANY`/`ALL` sublinks,
    /// `ORDER BY ... USING`).
    pub operators: Vec<QualifiedName>,
    /// Names selected as fields (`t.name`, `(expr).name`): Postgres calls a function of
    /// that name if one exists, so each is checked as a possible function.
    pub selected_names: Vec<String>,
    /// Calls libpg_query parses as syntax but an older server may resolve as
    /// functions (`json_scalar(x)`, `merge_action()`): checked if the catalog has them.
    pub syntax_calls: Vec<String>,
    /// Every `set_config(name, value, ...)` call (unqualified or `pg_catalog.`), with
    /// its name and value if they are string constants.
    pub set_config_calls: Vec<SetConfigCall>,
    /// The last name of every column reference (`*` for `t.*` and `*`), and the
    /// columns of `JOIN ... USING (...)` and `COPY t (...)`.
    pub column_names: Vec<String>,
    /// Column references of a single name: a column, or a whole-row reference to a
    /// table or alias of that name.
    pub single_names: Vec<String>,
    /// Aliases given to tables, subqueries and functions.
    pub aliases: Vec<String>,
    /// Some alias renames columns (`AS s(a, b)`).
    pub column_aliases: bool,
    /// Target types of explicit casts (`x::mytype`, `CAST(x AS mytype)`).
    pub cast_types: Vec<QualifiedName>,
    /// Every table or view named (CTE names included: a superset, for deny rules).
    pub tables: Vec<QualifiedName>,
    /// The names of `tables` that are relations of the database, not the statement's
    /// own CTEs, resolved with the server's scoping ([`scope`]), for allow-lists.
    pub relations: Vec<QualifiedName>,
    /// Tables whose every column the statement may read: a `*` or `t.*` over them in
    /// the SELECT that names them, `TABLE t`, `COPY t TO` without a column list.
    pub star_tables: Vec<QualifiedName>,
    /// A `NATURAL JOIN` (it compares every column the two sides share by name).
    pub natural_join: bool,
    /// Each SELECT (and `COPY t TO`, `TABLE t`) that reads tables directly: which, and
    /// whether it has a WHERE and a LIMIT (its own or one around it), for shape rules.
    pub shapes: Vec<SelectShape>,
    /// Data-modifying statements nested anywhere, e.g. `INSERT` inside a CTE.
    pub writes: Vec<String>,
    /// A locking clause (`FOR UPDATE`, `FOR SHARE`, ...).
    pub locking: bool,
    /// `SELECT ... INTO` a new table (Postgres), or into variables or a server file
    /// (MySQL `INTO @v`, `INTO OUTFILE`, `INTO DUMPFILE`).
    pub into: bool,
    /// MySQL optimizer hints (`/*+ ... */`), their text without the comment markers.
    pub optimizer_hints: Vec<String>,
}

impl TreeFacts {
    /// Adds `other`'s facts (another reading of the same statement) to these, every
    /// field: the destructuring has no `..`, so a new field does not compile until it
    /// is merged here. Linear in the lists' lengths.
    pub fn merge(&mut self, other: TreeFacts) {
        let TreeFacts {
            functions,
            operators,
            selected_names,
            syntax_calls,
            set_config_calls,
            column_names,
            single_names,
            aliases,
            column_aliases,
            cast_types,
            tables,
            relations,
            star_tables,
            natural_join,
            shapes,
            writes,
            locking,
            into,
            optimizer_hints,
        } = other;
        fn extend<T: Clone + Eq + std::hash::Hash>(into: &mut Vec<T>, more: Vec<T>) {
            let mut known: std::collections::HashSet<T> = into.iter().cloned().collect();
            for item in more {
                if known.insert(item.clone()) {
                    into.push(item);
                }
            }
        }
        extend(&mut self.functions, functions);
        extend(&mut self.operators, operators);
        extend(&mut self.selected_names, selected_names);
        extend(&mut self.syntax_calls, syntax_calls);
        self.set_config_calls.extend(set_config_calls);
        extend(&mut self.column_names, column_names);
        extend(&mut self.single_names, single_names);
        extend(&mut self.aliases, aliases);
        self.column_aliases |= column_aliases;
        extend(&mut self.cast_types, cast_types);
        extend(&mut self.tables, tables);
        extend(&mut self.relations, relations);
        extend(&mut self.star_tables, star_tables);
        self.natural_join |= natural_join;
        extend(&mut self.shapes, shapes);
        extend(&mut self.writes, writes);
        self.locking |= locking;
        self.into |= into;
        extend(&mut self.optimizer_hints, optimizer_hints);
    }
}

/// One SELECT's shape: the tables its FROM reads directly, its WHERE, and the tightest
/// LIMIT of it and the queries it is nested in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SelectShape {
    pub tables: Vec<QualifiedName>,
    pub where_clause: bool,
    pub limit: LimitFact,
    /// It joins without a condition: `CROSS JOIN`, a `JOIN` with no `ON`/`USING`, or a
    /// comma-separated FROM with no `WHERE`.
    pub cross_join: bool,
}

/// A LIMIT as far as the gateway can read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitFact {
    /// No LIMIT (or `LIMIT ALL`).
    None,
    /// A LIMIT whose value is not a constant (`LIMIT $1`, an expression).
    Unknown,
    /// `LIMIT n` (or `FETCH FIRST n ROWS`).
    AtMost(u64),
}

impl LimitFact {
    pub fn at_most(n: u64) -> LimitFact {
        LimitFact::AtMost(n)
    }

    /// The rows of `self` run once per row of `outer`: at most their product.
    pub fn times(self, outer: LimitFact) -> LimitFact {
        match (self, outer) {
            (LimitFact::AtMost(a), LimitFact::AtMost(b)) => LimitFact::AtMost(a.saturating_mul(b)),
            (LimitFact::None, _) | (_, LimitFact::None) => LimitFact::None,
            _ => LimitFact::Unknown,
        }
    }

    /// The tighter of two limits on the same rows: a constant beats an unknown value,
    /// an unknown value beats none.
    pub fn tighter(self, other: LimitFact) -> LimitFact {
        match (self, other) {
            (LimitFact::AtMost(a), LimitFact::AtMost(b)) => LimitFact::AtMost(a.min(b)),
            (LimitFact::AtMost(a), _) | (_, LimitFact::AtMost(a)) => LimitFact::AtMost(a),
            (LimitFact::Unknown, _) | (_, LimitFact::Unknown) => LimitFact::Unknown,
            (LimitFact::None, LimitFact::None) => LimitFact::None,
        }
    }
}

/// One `set_config(name, value, is_local)` call; `None` where the argument is not a
/// string constant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetConfigCall {
    pub name: Option<String>,
    pub value: Option<String>,
}

/// What a statement is, as far as policy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementKind {
    /// Nothing but whitespace, comments or `;`.
    Empty,
    /// SELECT, VALUES, TABLE.
    Query,
    Explain {
        analyze: bool,
        inner: Box<StatementKind>,
    },
    Show,
    Set(SetFacts),
    Transaction {
        op: TransactionOp,
        /// Asks for `READ WRITE`.
        read_write: bool,
    },
    DeclareCursor {
        inner: Box<StatementKind>,
    },
    /// FETCH or MOVE on a cursor.
    Fetch,
    CloseCursor,
    Copy {
        direction: CopyDirection,
        inner: Option<Box<StatementKind>>,
    },
    Prepare {
        inner: Box<StatementKind>,
    },
    Execute,
    Deallocate,
    Discard,
    /// `LOCK TABLE`; `access_share` for `IN ACCESS SHARE MODE` (what pg_dump takes).
    Lock {
        access_share: bool,
    },
    /// `UNLISTEN` (stops notifications to this session only).
    Unlisten,
    /// MySQL `USE db`: changes the session's default database.
    Use {
        database: String,
    },
    /// MariaDB `SET STATEMENT var = value [, ...] FOR <statement>`: settings that hold
    /// while one statement runs.
    SetStatement {
        settings: Vec<VariableAssignment>,
        inner: Box<StatementKind>,
    },
    /// Anything else, labelled as a person would say it ("INSERT", "DROP TABLE").
    Other {
        label: String,
    },
}

/// SET and RESET forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetFacts {
    /// `SET [LOCAL] name = value`; values are as written, lowercased.
    Value {
        name: String,
        values: Vec<String>,
    },
    /// `SET TRANSACTION ...` or `SET SESSION CHARACTERISTICS AS TRANSACTION ...`.
    TransactionModes {
        read_write: bool,
    },
    /// `RESET name` or `SET name TO DEFAULT`.
    Reset {
        name: String,
    },
    ResetAll,
    /// MySQL/MariaDB `SET` of system or user variables, in the order written.
    /// `SET NAMES cs [COLLATE c]` and `SET CHARACTER SET cs` appear as the assignments
    /// they stand for (`character_set_client`, `character_set_connection`,
    /// `character_set_results`, `collation_connection`).
    Variables(Vec<VariableAssignment>),
}

/// One MySQL/MariaDB variable assignment (`SET [scope] name = value`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableAssignment {
    pub scope: VariableScope,
    /// Lowercased, without `@`/`@@` and scope prefix.
    pub name: String,
    pub value: VariableValue,
}

/// Where an assignment lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariableScope {
    /// `SESSION`, `LOCAL`, `@@x`, `@@session.x`, `@@local.x`, or no modifier.
    Session,
    /// `GLOBAL`, `@@global.x`.
    Global,
    /// MySQL `PERSIST`, `@@persist.x`.
    Persist,
    /// MySQL `PERSIST_ONLY`, `@@persist_only.x`.
    PersistOnly,
    /// A user variable, `@x`.
    User,
}

/// The value of a [`VariableAssignment`], as far as policy can judge it without running it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VariableValue {
    /// `DEFAULT`: the global value.
    Default,
    Null,
    /// A numeric literal, as written.
    Number(String),
    /// A string literal, decoded.
    Text(String),
    /// A bare word (`ON`, `utf8mb4`, `TRUE`), as written.
    Word(String),
    /// The variable's own current session value with literal text appended and/or
    /// removed: `CONCAT(@@sql_mode, ',X')`, `REPLACE(@@sql_mode, 'X', '')`, nested.
    Modified {
        appended: Vec<String>,
        removed: Vec<String>,
    },
    /// Any other expression (its functions and tables are in the tree facts).
    Expression,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionOp {
    Begin,
    Commit,
    Rollback,
    Savepoint,
    Release,
    RollbackTo,
    /// Two-phase commit: PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED.
    TwoPhase,
}

/// Where a COPY moves data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyDirection {
    /// `COPY ... TO STDOUT`.
    ToClient,
    /// `COPY ... TO 'file'` or `TO PROGRAM`: runs on the database server.
    ToServer,
    /// `COPY ... FROM ...`: a write.
    From,
}

impl StatementKind {
    /// The statement kind as a person would name it, for messages and audit.
    pub fn label(&self) -> String {
        match self {
            StatementKind::Empty => "empty statement".into(),
            StatementKind::Query => "SELECT".into(),
            StatementKind::Explain { analyze: true, .. } => "EXPLAIN ANALYZE".into(),
            StatementKind::Explain { .. } => "EXPLAIN".into(),
            StatementKind::Show => "SHOW".into(),
            StatementKind::Set(SetFacts::Reset { .. } | SetFacts::ResetAll) => "RESET".into(),
            StatementKind::Set(SetFacts::TransactionModes { .. }) => "SET TRANSACTION".into(),
            StatementKind::Set(_) => "SET".into(),
            StatementKind::Transaction { op, .. } => match op {
                TransactionOp::Begin => "BEGIN",
                TransactionOp::Commit => "COMMIT",
                TransactionOp::Rollback => "ROLLBACK",
                TransactionOp::Savepoint => "SAVEPOINT",
                TransactionOp::Release => "RELEASE SAVEPOINT",
                TransactionOp::RollbackTo => "ROLLBACK TO SAVEPOINT",
                TransactionOp::TwoPhase => "two-phase commit",
            }
            .into(),
            StatementKind::DeclareCursor { .. } => "DECLARE CURSOR".into(),
            StatementKind::Fetch => "FETCH".into(),
            StatementKind::CloseCursor => "CLOSE".into(),
            StatementKind::Copy {
                direction: CopyDirection::From,
                ..
            } => "COPY FROM".into(),
            StatementKind::Copy { .. } => "COPY TO".into(),
            StatementKind::Prepare { .. } => "PREPARE".into(),
            StatementKind::Execute => "EXECUTE".into(),
            StatementKind::Deallocate => "DEALLOCATE".into(),
            StatementKind::Discard => "DISCARD".into(),
            StatementKind::Lock { .. } => "LOCK".into(),
            StatementKind::Unlisten => "UNLISTEN".into(),
            StatementKind::Use { .. } => "USE".into(),
            StatementKind::SetStatement { .. } => "SET STATEMENT".into(),
            StatementKind::Other { label } => label.clone(),
        }
    }
}

/// The statement could not be classified; it is denied.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClassifyError {
    #[error("statement does not parse: {0}")]
    Syntax(String),
    #[error("statement is {len} bytes, over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error(
        "statement is too deeply nested to check (nesting depth about {depth}; the limit is {max})"
    )]
    TooComplex { depth: usize, max: usize },
    #[error("statement could not be analysed ({0})")]
    Internal(String),
    /// Every parser thread is busy and the queue is full.
    #[error("the gateway's statement parser is busy ({queued} large statements are waiting); retry shortly")]
    Busy { queued: usize },
}
