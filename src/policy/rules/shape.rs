//! Shape rules (`require = { tables, where, limit, max_limit, join_condition }`): what
//! each SELECT that reads a named table must look like, decided on the per-SELECT
//! shapes the classifier records (`crate::sql::SelectShape`).

use super::Name;
use crate::sql::StatementFacts;

/// `require = { tables = [...], where = true, limit = true, max_limit = 1000 }`: every
/// SELECT that reads one of the tables directly must have a WHERE (`where`), a LIMIT of
/// its own or around it (`limit`), at most `max_limit` (a constant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Require {
    pub tables: Vec<Name>,
    pub where_clause: bool,
    pub limit: bool,
    pub max_limit: Option<u64>,
    /// No join without a condition (`CROSS JOIN`, `JOIN` without `ON`/`USING`, a
    /// comma-separated FROM without `WHERE`).
    pub join_condition: bool,
}

impl Require {
    /// What a shape of the statement lacks, if anything.
    pub(super) fn unmet(&self, facts: &StatementFacts, own_schema: Option<&str>) -> Option<String> {
        use crate::sql::LimitFact;
        for shape in &facts.tree.shapes {
            let Some(table) = shape
                .tables
                .iter()
                .find(|t| self.tables.iter().any(|n| n.matches(t, own_schema)))
            else {
                continue;
            };
            if self.where_clause && !shape.where_clause {
                return Some(format!("table {table} read without a WHERE"));
            }
            if self.join_condition && shape.cross_join {
                return Some(format!("table {table} joined without a condition"));
            }
            match (shape.limit, self.max_limit) {
                (LimitFact::None, Some(max)) => {
                    return Some(format!(
                        "table {table} read without a LIMIT (at most {max})"
                    ))
                }
                (LimitFact::None, None) if self.limit => {
                    return Some(format!(
                        "table {table} read without a LIMIT that bounds the statement"
                    ))
                }
                (LimitFact::Unknown, None) if self.limit => {
                    return Some(format!(
                        "table {table} read with a LIMIT that is not a constant"
                    ))
                }
                (LimitFact::Unknown, Some(max)) => {
                    return Some(format!(
                        "table {table} read with a LIMIT that is not a constant (at most {max})"
                    ))
                }
                (LimitFact::AtMost(n), Some(max)) if n > max => {
                    return Some(format!("table {table} read with LIMIT {n}, over {max}"))
                }
                _ => {}
            }
        }
        None
    }
}
