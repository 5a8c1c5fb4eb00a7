//! Which names in a statement are its own CTEs and which are relations of the
//! database, resolved the way the server scopes `WITH` (for table allow-lists: a CTE
//! named like a table must not pass for it, and a table named like a CTE must not
//! hide behind it).
//!
//! A query's `WITH` names are visible in its body and in every query nested in it. In
//! the body of its i-th CTE, the CTEs before it are visible (all of them, the CTE
//! itself included, under `WITH RECURSIVE`; MySQL: those up to itself). A non-recursive CTE that names a later
//! sibling names a relation of that name, as the server reads it. Walkers report
//! levels, CTEs and references as they meet them ([`Scopes`]); references are
//! resolved at the end, when every `WITH` (and whether it is recursive) is known —
//! the tree may list a query's FROM before its `WITH`.
//!
//! Names compare exactly (the front ends give them as the server would: Postgres
//! folds unquoted names to lower case). A reference the server might resolve either
//! way counts as a relation: the allow-list then has the final word.

use super::QualifiedName;

/// One level on the way to a reference: a query, and how many of its CTEs are
/// visible there (`None`: all of them).
type Frame = (usize, Option<usize>);

#[derive(Debug, Default)]
struct Level {
    ctes: Vec<String>,
    recursive: bool,
}

/// Levels, CTEs and references met so far in one statement.
#[derive(Debug, Default)]
pub struct Scopes {
    /// MySQL: a recursive CTE's body sees the CTEs up to itself only (a later sibling's
    /// name is a table there); Postgres: all of them.
    pub recursive_sees_only_earlier: bool,
    levels: Vec<Level>,
    stack: Vec<Frame>,
    /// Unqualified references and the frames around each.
    references: Vec<(String, Vec<Frame>)>,
    /// Qualified references: relations whatever the scope.
    qualified: Vec<QualifiedName>,
}

impl Scopes {
    /// A query starts (its body sees all of its CTEs); returns its id.
    pub fn enter_query(&mut self) -> usize {
        let id = self.levels.len();
        self.levels.push(Level::default());
        self.stack.push((id, None));
        id
    }

    /// The query (or CTE body) entered last ends.
    pub fn leave(&mut self) {
        self.stack.pop();
    }

    /// The query `holder`'s next CTE, called `name`, starts: its body sees the CTEs
    /// before it. Leave it with [`Scopes::leave`].
    pub fn enter_cte(&mut self, holder: usize, name: &str) {
        let Some(level) = self.levels.get_mut(holder) else {
            return;
        };
        let index = level.ctes.len();
        level.ctes.push(name.to_owned());
        self.stack.push((holder, Some(index)));
    }

    /// The query being visited, if any (the holder of a `WITH` met now).
    pub fn current_query(&self) -> Option<usize> {
        self.stack.last().map(|(id, _)| *id)
    }

    /// `query`'s `WITH` is `RECURSIVE`.
    pub fn set_recursive(&mut self, query: usize) {
        if let Some(level) = self.levels.get_mut(query) {
            level.recursive = true;
        }
    }

    /// A relation reference as written.
    pub fn reference(&mut self, name: &QualifiedName) {
        match &name.schema {
            Some(_) => self.qualified.push(name.clone()),
            None => self
                .references
                .push((name.name.clone(), self.stack.clone())),
        }
    }

    /// The references that name relations of the database, without repeats.
    pub fn relations(&self) -> Vec<QualifiedName> {
        let mut out: Vec<QualifiedName> = Vec::new();
        let mut push = |n: QualifiedName| {
            if !out.contains(&n) {
                out.push(n);
            }
        };
        for q in &self.qualified {
            push(q.clone());
        }
        for (name, frames) in &self.references {
            if !self.is_cte(name, frames) {
                push(QualifiedName {
                    schema: None,
                    name: name.clone(),
                });
            }
        }
        out
    }

    fn is_cte(&self, name: &str, frames: &[Frame]) -> bool {
        let mut seen: Vec<usize> = Vec::new();
        for (id, visible) in frames.iter().rev() {
            if seen.contains(id) {
                // An outer frame of a level already seen from inside one of its CTEs.
                continue;
            }
            seen.push(*id);
            let Some(level) = self.levels.get(*id) else {
                continue;
            };
            let upto = match visible {
                None => level.ctes.len(),
                Some(i) if level.recursive && self.recursive_sees_only_earlier => i + 1,
                Some(i) if level.recursive => level.ctes.len().max(i + 1),
                Some(i) => *i,
            };
            if level.ctes.iter().take(upto).any(|c| c == name) {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    fn relations(facts: Vec<crate::sql::StatementFacts>) -> Vec<String> {
        facts[0]
            .tree
            .relations
            .iter()
            .map(|r| r.to_string())
            .collect()
    }

    const CASES: &[(&str, &[&str])] = &[
        ("WITH x AS (SELECT * FROM t) SELECT * FROM x", &["t"]),
        // A non-recursive CTE naming a later sibling names the table.
        (
            "WITH a AS (SELECT * FROM secret), secret AS (SELECT 1) SELECT * FROM a",
            &["secret"],
        ),
        (
            "WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b",
            &[],
        ),
        (
            "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 3) SELECT * FROM c",
            &[],
        ),
        // A WITH inside a subquery does not reach the outer query.
        (
            "SELECT * FROM secret, (WITH secret AS (SELECT 1) SELECT * FROM secret) s",
            &["secret"],
        ),
        (
            "WITH x AS (SELECT 1) SELECT * FROM (SELECT * FROM x) y WHERE EXISTS (SELECT 1 FROM x)",
            &[],
        ),
        ("WITH x AS (SELECT 1) SELECT * FROM s.x", &["s.x"]),
        (
            "WITH x AS (SELECT 1) SELECT 1 UNION ALL SELECT * FROM x",
            &[],
        ),
    ];

    #[test]
    fn postgres_cte_names_are_not_relations_where_the_server_scopes_them() {
        for (sql, want) in CASES {
            let facts = crate::sql::postgres::classify(sql, 1 << 20).unwrap();
            assert_eq!(relations(facts), *want, "{sql}");
        }
    }

    /// Under RECURSIVE, a later sibling: Postgres sees the CTE, MySQL the table.
    const FORWARD: &str =
        "WITH RECURSIVE a AS (SELECT * FROM salaries), salaries AS (SELECT 1) SELECT * FROM a";

    #[test]
    fn mysql_cte_names_are_not_relations_where_the_server_scopes_them() {
        for (sql, want) in CASES {
            let facts = crate::sql::mysql::classify(sql, 1 << 20).unwrap();
            assert_eq!(relations(facts), *want, "{sql}");
        }
        let facts = crate::sql::mysql::classify(FORWARD, 1 << 20).unwrap();
        assert_eq!(relations(facts), ["salaries"]);
        let facts = crate::sql::postgres::classify(FORWARD, 1 << 20).unwrap();
        assert!(relations(facts).is_empty());
    }
}
