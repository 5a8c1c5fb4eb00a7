//! A complete, allocation-light walk over a `pg_query` parse tree.
//!
//! pg_query's own `nodes()` iterator visits only the node types it cares about, so a
//! function call inside, say, a `CASE` in a `VALUES` list could be missed. The
//! protobuf types do derive `serde::Serialize`, which *must* visit every field; this
//! module is a `Serializer` that produces no output and instead watches the struct
//! and field names go by, recording the facts policy needs. Nothing is allocated
//! except the facts themselves.

use std::collections::HashSet;

use serde::ser::{self, Serialize};

use super::{LimitFact, QualifiedName, SelectShape, SetConfigCall, TreeFacts};

/// Nodes that libpg_query (PostgreSQL 17's grammar) parses as syntax, where an older
/// server's grammar sees a plain function call that resolves through the catalog (a
/// user function named `json_scalar` on PostgreSQL 15). Each counts as a call of the
/// names listed; policy checks them when the catalog has a function of that name.
const SYNTAX_CALLS: &[(&str, &[&str])] = &[
    ("JsonScalarExpr", &["json_scalar"]),
    ("JsonSerializeExpr", &["json_serialize"]),
    ("JsonParseExpr", &["json"]),
    ("JsonObjectConstructor", &["json_object"]),
    ("JsonArrayConstructor", &["json_array"]),
    ("JsonArrayQueryConstructor", &["json_array"]),
    ("JsonObjectAgg", &["json_objectagg"]),
    ("JsonArrayAgg", &["json_arrayagg"]),
    ("JsonFuncExpr", &["json_query", "json_value", "json_exists"]),
    ("JsonTable", &["json_table"]),
    ("MergeSupportFunc", &["merge_action"]),
];

/// Walks `node`: the name of its outermost struct (the statement node type, e.g.
/// "InsertStmt") and the facts found anywhere in it.
pub fn walk<T: Serialize>(node: &T) -> Result<(Option<&'static str>, TreeFacts), String> {
    let mut walker = Walker::default();
    node.serialize(&mut walker).map_err(|e| e.0)?;
    walker.facts.relations = walker.scopes.relations();
    let shapes = std::mem::take(&mut walker.shapes);
    let limits = Shape::effective_limits(&shapes);
    for (i, shape) in shapes.iter().enumerate() {
        if !shape.tables.is_empty() {
            walker.facts.shapes.push(SelectShape {
                tables: shape.tables.clone(),
                where_clause: shape.where_clause,
                limit: limits.get(i).copied().unwrap_or(LimitFact::None),
                cross_join: shape.cross_join || (shape.from_items > 1 && !shape.where_clause),
            });
        }
    }
    if walker.root == Some("CopyStmt") && !walker.outer_ranges.is_empty() {
        // `COPY t TO`: the whole table, no WHERE, no LIMIT.
        walker.facts.shapes.push(SelectShape {
            tables: walker.outer_ranges.iter().map(|r| r.name.clone()).collect(),
            where_clause: false,
            limit: LimitFact::None,
            cross_join: false,
        });
    }
    // Relations named outside any SELECT: `COPY t TO STDOUT` without a column list
    // reads every column; a `*` outside a SELECT (RETURNING) may be over any of them.
    if (walker.root == Some("CopyStmt") && !walker.copy_columns) || walker.outer_star {
        for table in std::mem::take(&mut walker.outer_ranges) {
            walker.star_table(table.name);
        }
    }
    Ok((walker.root, walker.facts))
}

/// Only the name of the outermost struct; stops at the first one.
pub fn root_name<T: Serialize>(node: &T) -> Option<&'static str> {
    let mut walker = Walker {
        root_only: true,
        ..Walker::default()
    };
    let _ = node.serialize(&mut walker); // ends early with an error on purpose
    walker.root
}

#[derive(Default)]
struct Walker {
    root: Option<&'static str>,
    /// Stop after learning `root`.
    root_only: bool,
    facts: TreeFacts,
    /// Struct names and field names from the root to the current value.
    path: Vec<&'static str>,
    /// Name parts and constant string arguments (`None`: not a string constant) of
    /// the FuncCalls being visited (innermost last).
    functions: Vec<(Vec<String>, Vec<Option<String>>)>,
    /// Name parts of the operator-bearing nodes (A_Expr, SubLink, SortBy) being visited.
    operators: Vec<Vec<String>>,
    /// Name parts of the ColumnRefs being visited.
    columns: Vec<Vec<String>>,
    /// Name parts of the cast target types being visited.
    casts: Vec<Vec<String>>,
    /// What was recorded so far, to keep the lists free of repeats in linear time.
    /// One set per list: a table named like a function must never hide its call.
    seen_functions: HashSet<QualifiedName>,
    seen_operators: HashSet<QualifiedName>,
    seen_tables: HashSet<QualifiedName>,
    seen_selected: HashSet<String>,
    seen_casts: HashSet<QualifiedName>,
    seen_syntax: HashSet<&'static str>,
    seen_columns: HashSet<String>,
    seen_single: HashSet<String>,
    seen_aliases: HashSet<String>,
    /// (schema, relation) of the RangeVars being visited.
    ranges: Vec<(String, String)>,
    /// The SELECTs being visited (innermost last), for what their `*`s expand.
    levels: Vec<Level>,
    /// Relations named outside any SELECT (COPY, LOCK), and whether a `*` was.
    outer_ranges: Vec<Range>,
    outer_star: bool,
    /// `COPY t (a, b)`: the COPY names its columns.
    copy_columns: bool,
    seen_star_tables: HashSet<QualifiedName>,
    /// The alias of the RangeVar being visited.
    range_alias: Option<String>,
    /// Every SELECT's shape, in the order met.
    shapes: Vec<Shape>,
    /// Per JoinExpr being visited: whether it has a condition (ON, USING, NATURAL).
    joins: Vec<bool>,
    /// Per RangeSubselect being visited: whether it is LATERAL.
    lateral: Vec<bool>,
    /// CTE scoping, for which names are relations.
    scopes: super::scope::Scopes,
    /// Per CommonTableExpr being visited: the query holding its WITH, and whether its
    /// scope was entered (on its name).
    ctes: Vec<(Option<usize>, bool)>,
}

/// A relation a SELECT reads directly (in its FROM, through joins).
struct Range {
    name: QualifiedName,
    alias: Option<String>,
}

/// One SELECT: the relations its FROM names directly and the `*`s over them. The
/// target list comes before the FROM in the tree, so stars are resolved when the
/// SELECT ends.
#[derive(Default)]
struct Level {
    ranges: Vec<Range>,
    /// An unqualified `*`: every relation of this SELECT.
    star: bool,
    /// `q.*` (or `s.q.*`): the relations called or aliased `q` here, or all of this
    /// SELECT's relations when none is (a join's alias). A qualified star in a nested
    /// SELECT may name a relation of any enclosing one, so it is noted at every level.
    qualified_stars: Vec<String>,
    /// Its entry in `Walker::shapes`.
    shape: usize,
}

/// What one SELECT's shape is, before the LIMITs around it are known.
struct Shape {
    /// The SELECT this one is nested in (subquery, CTE body, set-operation branch).
    parent: Option<usize>,
    tables: Vec<QualifiedName>,
    where_clause: bool,
    limit: LimitFact,
    /// FROM items (more than one, with no WHERE, is a join without a condition).
    from_items: usize,
    cross_join: bool,
    /// It may run once per row of the SELECT around it (inside a subquery expression or
    /// a `LATERAL` subquery).
    per_row: bool,
}

impl Shape {
    /// Each SELECT's limit on the rows it can yield in all: its own and those of the
    /// queries it is nested in (the tightest); for a SELECT that may run once per row
    /// of the query around it (a subquery expression, `LATERAL`), its own limit times
    /// that query's. Parents come before children, so one pass suffices.
    fn effective_limits(shapes: &[Shape]) -> Vec<LimitFact> {
        let mut out: Vec<LimitFact> = Vec::with_capacity(shapes.len());
        for shape in shapes {
            let outer = shape.parent.and_then(|p| out.get(p).copied());
            out.push(match outer {
                None => shape.limit,
                Some(outer) if shape.per_row => shape.limit.times(outer),
                Some(outer) => shape.limit.tighter(outer),
            });
        }
        out
    }
}

impl Level {
    /// The relations this SELECT's stars may expand.
    fn starred(self) -> Vec<QualifiedName> {
        let Level {
            ranges,
            star,
            qualified_stars,
            shape: _,
        } = self;
        if star {
            return ranges.into_iter().map(|r| r.name).collect();
        }
        let mut out = Vec::new();
        let mut taken = vec![false; ranges.len()];
        for q in &qualified_stars {
            let named = |r: &Range| match &r.alias {
                Some(alias) => alias.eq_ignore_ascii_case(q) || r.name.name.eq_ignore_ascii_case(q),
                None => r.name.name.eq_ignore_ascii_case(q),
            };
            let any = ranges.iter().any(named);
            for (i, r) in ranges.iter().enumerate() {
                if !any || named(r) {
                    taken[i] = true;
                }
            }
        }
        for (r, taken) in ranges.into_iter().zip(taken) {
            if taken {
                out.push(r.name);
            }
        }
        out
    }
}

impl Walker {
    fn ends_with(&self, suffix: &[&str]) -> bool {
        self.path.ends_with(suffix)
    }

    fn enter_struct(&mut self, name: &'static str) -> R {
        if self.root.is_none() {
            self.root = Some(name);
            if self.root_only {
                return Err(WalkError("stop".into()));
            }
        }
        if name == "Node" && self.ends_with(&["FuncCall", "args"]) {
            if let Some((_, args)) = self.functions.last_mut() {
                args.push(None);
            }
        }
        if name == "AStar" && self.ends_with(&["ColumnRef", "fields", "Node", "node"]) {
            if let Some(parts) = self.columns.last_mut() {
                parts.push("*".to_owned());
            }
        }
        if let Some((_, names)) = SYNTAX_CALLS.iter().find(|(node, _)| *node == name) {
            for name in names.iter() {
                if self.seen_syntax.insert(name) {
                    self.facts.syntax_calls.push((*name).to_owned());
                }
            }
        }
        match name {
            "FuncCall" => self.functions.push(Default::default()),
            "AExpr" | "SubLink" | "SortBy" => self.operators.push(Vec::new()),
            "ColumnRef" => self.columns.push(Vec::new()),
            "TypeCast" => self.casts.push(Vec::new()),
            "RangeVar" => self.ranges.push(Default::default()),
            "SelectStmt" => {
                let shape = self.shapes.len();
                let per_row = self.nested_per_row();
                self.shapes.push(Shape {
                    per_row,
                    parent: self.levels.last().map(|l| l.shape),
                    tables: Vec::new(),
                    where_clause: false,
                    limit: LimitFact::None,
                    from_items: 0,
                    cross_join: false,
                });
                self.levels.push(Level {
                    shape,
                    ..Level::default()
                });
                self.scopes.enter_query();
            }
            "Node" if self.ends_with(&["SelectStmt", "where_clause"]) => {
                if let Some(shape) = self.top_shape() {
                    shape.where_clause = true;
                }
            }
            "Node" if self.ends_with(&["SelectStmt", "from_clause"]) => {
                if let Some(shape) = self.top_shape() {
                    shape.from_items += 1;
                }
            }
            "Node" if self.ends_with(&["JoinExpr", "quals"]) => {
                if let Some(join) = self.joins.last_mut() {
                    *join = true;
                }
            }
            "JoinExpr" => self.joins.push(false),
            "RangeSubselect" => self.lateral.push(false),
            "Node" if self.ends_with(&["SelectStmt", "limit_count"]) => {
                if let Some(shape) = self.top_shape() {
                    shape.limit = LimitFact::Unknown;
                }
            }
            "CommonTableExpr" => self.ctes.push((self.scopes.current_query(), false)),
            "InsertStmt" => self.facts.writes.push("INSERT".into()),
            "UpdateStmt" => self.facts.writes.push("UPDATE".into()),
            "DeleteStmt" => self.facts.writes.push("DELETE".into()),
            "MergeStmt" => self.facts.writes.push("MERGE".into()),
            "LockingClause" => self.facts.locking = true,
            "IntoClause" => self.facts.into = true,
            _ => {}
        }
        self.path.push(name);
        Ok(())
    }

    fn leave_struct(&mut self) {
        match self.path.pop() {
            Some("FuncCall") => {
                if let Some((parts, args)) = self.functions.pop() {
                    if let Some(name) = qualified(parts) {
                        if name.name == "set_config"
                            && matches!(name.schema.as_deref(), None | Some("pg_catalog"))
                        {
                            let mut args = args.into_iter();
                            self.facts.set_config_calls.push(SetConfigCall {
                                name: args.next().flatten(),
                                value: args.next().flatten(),
                            });
                        }
                        if self.seen_functions.insert(name.clone()) {
                            self.facts.functions.push(name);
                        }
                    }
                }
            }
            Some("AExpr" | "SubLink" | "SortBy") => {
                if let Some(name) = self.operators.pop().and_then(qualified) {
                    if self.seen_operators.insert(name.clone()) {
                        self.facts.operators.push(name);
                    }
                }
            }
            Some("TypeCast") => {
                if let Some(name) = self.casts.pop().and_then(qualified) {
                    if self.seen_casts.insert(name.clone()) {
                        self.facts.cast_types.push(name);
                    }
                }
            }
            Some("RangeSubselect") => {
                self.lateral.pop();
            }
            Some("JoinExpr") => {
                // Neither ON, USING nor NATURAL: every row with every row.
                if let Some(conditioned) = self.joins.pop() {
                    if !conditioned {
                        if let Some(shape) = self.top_shape() {
                            shape.cross_join = true;
                        }
                    }
                }
            }
            Some("CommonTableExpr") => {
                if let Some((_, true)) = self.ctes.pop() {
                    self.scopes.leave();
                }
            }
            Some("SelectStmt") => {
                self.scopes.leave();
                if let Some(level) = self.levels.pop() {
                    if let Some(shape) = self.shapes.get_mut(level.shape) {
                        shape.tables = level.ranges.iter().map(|r| r.name.clone()).collect();
                    }
                    for table in level.starred() {
                        self.star_table(table);
                    }
                }
            }
            Some("ColumnRef") => {
                // `t.f` (two or more names): the last may be a function of `t`.
                // A single name may be a whole-row reference to a table or alias.
                if let Some(parts) = self.columns.pop() {
                    if parts.last().is_some_and(|p| p == "*") {
                        self.star(&parts);
                    }
                    if parts.len() == 1 && self.seen_single.insert(parts[0].clone()) {
                        self.facts.single_names.push(parts[0].clone());
                    }
                    if let Some(last) = parts.last() {
                        if self.seen_columns.insert(last.clone()) {
                            self.facts.column_names.push(last.clone());
                        }
                    }
                    if parts.len() >= 2 {
                        if let Some(last) = parts.into_iter().last() {
                            if last != "*" {
                                self.selected(last);
                            }
                        }
                    }
                }
            }
            Some("RangeVar") => {
                if let Some((schema, name)) = self.ranges.pop() {
                    let table = QualifiedName {
                        schema: (!schema.is_empty()).then_some(schema),
                        name,
                    };
                    self.scopes.reference(&table);
                    if self.seen_tables.insert(table.clone()) {
                        self.facts.tables.push(table.clone());
                    }
                    let range = Range {
                        name: table,
                        alias: self.range_alias.take(),
                    };
                    match self.levels.last_mut() {
                        Some(level) => level.ranges.push(range),
                        None => self.outer_ranges.push(range),
                    }
                }
            }
            _ => {}
        }
    }

    /// A `*` or `q.*` column reference (`parts` ends with `*`).
    fn star(&mut self, parts: &[String]) {
        let qualifier = parts.len().checked_sub(2).and_then(|i| parts.get(i));
        match (qualifier, self.levels.last_mut()) {
            (_, None) => self.outer_star = true,
            (None, Some(level)) => level.star = true,
            (Some(q), Some(_)) => {
                for level in &mut self.levels {
                    level.qualified_stars.push(q.clone());
                }
            }
        }
    }

    /// Whether a SELECT starting here may run once per row of the SELECT around it:
    /// between the two, a subquery expression or a LATERAL subquery.
    fn nested_per_row(&self) -> bool {
        let Some(parent) = self.path.iter().rposition(|p| *p == "SelectStmt") else {
            return false;
        };
        let between = &self.path[parent..];
        between.contains(&"SubLink")
            || (between.contains(&"RangeSubselect") && self.lateral.last() == Some(&true))
    }

    fn top_shape(&mut self) -> Option<&mut Shape> {
        let at = self.levels.last()?.shape;
        self.shapes.get_mut(at)
    }

    fn star_table(&mut self, table: QualifiedName) {
        if self.seen_star_tables.insert(table.clone()) {
            self.facts.star_tables.push(table);
        }
    }

    fn column_name(&mut self, name: &str) {
        if self.seen_columns.insert(name.to_owned()) {
            self.facts.column_names.push(name.to_owned());
        }
    }

    fn selected(&mut self, name: String) {
        if self.seen_selected.insert(name.clone()) {
            self.facts.selected_names.push(name);
        }
    }

    fn string(&mut self, v: &str) {
        if self.ends_with(&["FuncCall", "funcname", "Node", "node", "String", "sval"]) {
            if let Some((parts, _)) = self.functions.last_mut() {
                parts.push(v.to_owned());
            }
        } else if self.ends_with(&[
            "FuncCall", "args", "Node", "node", "AConst", "val", "String", "sval",
        ]) {
            if let Some(slot) = self.functions.last_mut().and_then(|(_, a)| a.last_mut()) {
                *slot = Some(v.to_owned());
            }
        } else if self.ends_with(&["Alias", "colnames", "Node", "node", "String", "sval"]) {
            self.facts.column_aliases = true;
        } else if self.ends_with(&["Alias", "aliasname"]) {
            if self.ends_with(&["RangeVar", "alias", "Alias", "aliasname"]) {
                self.range_alias = Some(v.to_owned());
            }
            if self.seen_aliases.insert(v.to_owned()) {
                self.facts.aliases.push(v.to_owned());
            }
        } else if self.ends_with(&["AExpr", "name", "Node", "node", "String", "sval"])
            || self.ends_with(&["SubLink", "oper_name", "Node", "node", "String", "sval"])
            || self.ends_with(&["SortBy", "use_op", "Node", "node", "String", "sval"])
        {
            if let Some(parts) = self.operators.last_mut() {
                parts.push(v.to_owned());
            }
        } else if self.ends_with(&[
            "TypeCast",
            "type_name",
            "TypeName",
            "names",
            "Node",
            "node",
            "String",
            "sval",
        ]) {
            if let Some(parts) = self.casts.last_mut() {
                parts.push(v.to_owned());
            }
        } else if self.ends_with(&["ColumnRef", "fields", "Node", "node", "String", "sval"]) {
            if let Some(parts) = self.columns.last_mut() {
                parts.push(v.to_owned());
            }
        } else if self.ends_with(&[
            "AIndirection",
            "indirection",
            "Node",
            "node",
            "String",
            "sval",
        ]) {
            // `(expr).f`: f may be a function of expr.
            self.selected(v.to_owned());
        } else if self.ends_with(&["JoinExpr", "using_clause", "Node", "node", "String", "sval"]) {
            // `JOIN ... USING (c)` compares column c of both sides.
            if let Some(join) = self.joins.last_mut() {
                *join = true;
            }
            self.column_name(v);
        } else if self.ends_with(&["CopyStmt", "attlist", "Node", "node", "String", "sval"]) {
            self.copy_columns = true;
            self.column_name(v);
        } else if self.ends_with(&["CommonTableExpr", "ctename"]) {
            if let Some((Some(holder), entered)) = self.ctes.last_mut() {
                self.scopes.enter_cte(*holder, v);
                *entered = true;
            }
        } else if self.ends_with(&["RangeVar", "schemaname"]) {
            if let Some(range) = self.ranges.last_mut() {
                range.0 = v.to_owned();
            }
        } else if self.ends_with(&["RangeVar", "relname"]) {
            if let Some(range) = self.ranges.last_mut() {
                range.1 = v.to_owned();
            }
        }
    }
}

/// A name list (`["pg_catalog", "lower"]`) as a qualified name.
fn qualified(parts: Vec<String>) -> Option<QualifiedName> {
    let mut parts = parts.into_iter().rev();
    let name = parts.next()?;
    Some(QualifiedName {
        schema: parts.next(),
        name,
    })
}

#[derive(Debug)]
struct WalkError(String);

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WalkError {}

impl ser::Error for WalkError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        WalkError(msg.to_string())
    }
}

type R = Result<(), WalkError>;

/// Scalars carry no facts (strings do, and are handled by `Walker::string`).
macro_rules! ignore_scalars {
    ($($method:ident: $ty:ty),* $(,)?) => {
        $(fn $method(self, _: $ty) -> R {
            Ok(())
        })*
    };
}

/// Sequences and tuples only pass their elements through.
macro_rules! pass_through {
    ($trait:ident, $method:ident) => {
        impl ser::$trait for &mut Walker {
            type Ok = ();
            type Error = WalkError;
            fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> R {
                value.serialize(&mut **self)
            }
            fn end(self) -> R {
                Ok(())
            }
        }
    };
}

/// Structs record each field name on the path while its value is walked.
macro_rules! named_fields {
    ($trait:ident) => {
        impl ser::$trait for &mut Walker {
            type Ok = ();
            type Error = WalkError;
            fn serialize_field<T: ?Sized + Serialize>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> R {
                self.path.push(key);
                let result = value.serialize(&mut **self);
                self.path.pop();
                result
            }
            fn end(self) -> R {
                self.leave_struct();
                Ok(())
            }
        }
    };
}

impl ser::Serializer for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_i32(self, v: i32) -> R {
        // FETCH FIRST n ROWS WITH TIES can return more than n rows.
        if v == pg_query::protobuf::LimitOption::WithTies as i32
            && self.ends_with(&["SelectStmt", "limit_option"])
        {
            if let Some(shape) = self.top_shape() {
                shape.limit = LimitFact::Unknown;
            }
        }
        if self.ends_with(&[
            "limit_count",
            "Node",
            "node",
            "AConst",
            "val",
            "Integer",
            "ival",
        ]) && self.path.len() >= 8
            && self.path[self.path.len() - 8] == "SelectStmt"
        {
            if let Some(shape) = self.top_shape() {
                shape.limit = LimitFact::at_most(u64::try_from(v).unwrap_or(0));
            }
        }
        Ok(())
    }
    fn serialize_bool(self, v: bool) -> R {
        if v && self.ends_with(&["limit_count", "Node", "node", "AConst", "isnull"])
            && self.path.len() >= 6
            && self.path[self.path.len() - 6] == "SelectStmt"
        {
            // LIMIT ALL, LIMIT NULL: no limit.
            if let Some(shape) = self.top_shape() {
                shape.limit = LimitFact::None;
            }
        }
        if v && self.ends_with(&["RangeSubselect", "lateral"]) {
            if let Some(lateral) = self.lateral.last_mut() {
                *lateral = true;
            }
        }
        if v && self.ends_with(&["JoinExpr", "is_natural"]) {
            self.facts.natural_join = true;
            if let Some(join) = self.joins.last_mut() {
                *join = true;
            }
        }
        if v && self.ends_with(&["WithClause", "recursive"]) {
            if let Some(query) = self.scopes.current_query() {
                self.scopes.set_recursive(query);
            }
        }
        Ok(())
    }
    ignore_scalars!(
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i64: i64,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_f32: f32,
        serialize_f64: f64,
        serialize_char: char,
        serialize_bytes: &[u8],
    );
    fn serialize_str(self, v: &str) -> R {
        self.string(v);
        Ok(())
    }
    fn serialize_none(self) -> R {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> R {
        value.serialize(self)
    }
    fn serialize_unit(self) -> R {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> R {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> R {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, value: &T) -> R {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> R {
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, WalkError> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, WalkError> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, WalkError> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, WalkError> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, WalkError> {
        Ok(self)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Self, WalkError> {
        self.enter_struct(name)?;
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self, WalkError> {
        self.enter_struct(variant)?;
        Ok(self)
    }
}

pass_through!(SerializeSeq, serialize_element);
pass_through!(SerializeTuple, serialize_element);
pass_through!(SerializeTupleStruct, serialize_field);
pass_through!(SerializeTupleVariant, serialize_field);

impl ser::SerializeMap for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> R {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> R {
        value.serialize(&mut **self)
    }
    fn end(self) -> R {
        Ok(())
    }
}

named_fields!(SerializeStruct);
named_fields!(SerializeStructVariant);
