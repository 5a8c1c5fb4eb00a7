//! Facts about an upstream database the classifier cannot see in the text: which
//! functions exist, in which schema, and how volatile they are.
//!
//! Fetched from the upstream itself (`pg_proc`) over the session's own connection,
//! cached per connection name, refreshed after [`CATALOG_TTL`]. If the catalog cannot
//! be read, every function call is denied (fail closed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a fetched catalog is used before a new session refreshes it.
pub const CATALOG_TTL: Duration = Duration::from_secs(300);

/// The query that reads the catalog: one row per function (kind `f`, `p`, `a`, `w`)
/// and one per operator (kind `o`, with the volatility of the function behind it), and
/// one per cast implemented by a user-defined function (kind `c`, named by its target
/// type).
/// An aggregate's own `provolatile` says nothing about the functions it runs per row,
/// so aggregates get the most volatile of their support functions.
pub const FUNCTION_QUERY: &str = "SELECT n.nspname, p.proname, \
     CASE WHEN p.prokind = 'a' THEN coalesce((\
       SELECT CASE WHEN bool_or(f.provolatile = 'v') THEN 'v' \
                   WHEN bool_or(f.provolatile = 's') THEN 's' ELSE 'i' END \
       FROM pg_catalog.pg_aggregate a JOIN pg_catalog.pg_proc f ON f.oid IN \
         (a.aggtransfn, a.aggfinalfn, a.aggcombinefn, a.aggserialfn, a.aggdeserialfn, \
          a.aggmtransfn, a.aggminvtransfn, a.aggmfinalfn) \
       WHERE a.aggfnoid = p.oid), 'v') \
     ELSE p.provolatile::text END, p.prokind \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     UNION ALL \
     SELECT n.nspname, o.oprname, p.provolatile::text, 'o' \
     FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace \
     JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode \
     UNION ALL \
     SELECT tn.nspname, t.typname, p.provolatile::text, 'c' \
     FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_type t ON t.oid = c.casttarget \
     JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace \
     JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc \
     JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace \
     WHERE pn.nspname <> 'pg_catalog'";

/// `pg_proc.provolatile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Volatility {
    Immutable,
    Stable,
    Volatile,
}

/// One function (all overloads of a name in a schema share an entry per overload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    pub schema: String,
    pub volatility: Volatility,
    /// `pg_proc.prokind`: `f` function, `p` procedure, `a` aggregate, `w` window.
    pub kind: char,
}

/// Functions and operators by name.
#[derive(Debug, Default)]
pub struct FunctionCatalog {
    by_name: HashMap<String, Vec<FunctionInfo>>,
    operators: HashMap<String, Vec<FunctionInfo>>,
    /// Casts implemented by user-defined functions, by target type name.
    casts: HashMap<String, Vec<FunctionInfo>>,
}

impl FunctionCatalog {
    /// Builds the catalog from rows of [`FUNCTION_QUERY`] (text format).
    pub fn from_rows(rows: impl IntoIterator<Item = [String; 4]>) -> Self {
        let mut by_name: HashMap<String, Vec<FunctionInfo>> = HashMap::new();
        let mut operators: HashMap<String, Vec<FunctionInfo>> = HashMap::new();
        let mut casts: HashMap<String, Vec<FunctionInfo>> = HashMap::new();
        for [schema, name, volatility, kind] in rows {
            let volatility = match volatility.as_str() {
                "i" => Volatility::Immutable,
                "s" => Volatility::Stable,
                _ => Volatility::Volatile,
            };
            let kind = kind.chars().next().unwrap_or('f');
            let map = match kind {
                'o' => &mut operators,
                'c' => &mut casts,
                _ => &mut by_name,
            };
            map.entry(name).or_default().push(FunctionInfo {
                schema,
                volatility,
                kind,
            });
        }
        FunctionCatalog {
            by_name,
            operators,
            casts,
        }
    }

    /// All operators named `name` (`+`, `===`), in `schema` if given.
    pub fn operators<'a>(
        &'a self,
        schema: Option<&'a str>,
        name: &str,
    ) -> impl Iterator<Item = &'a FunctionInfo> + 'a {
        find(&self.operators, schema, name)
    }

    /// User-defined cast functions whose target type is named `name`.
    pub fn casts_to<'a>(
        &'a self,
        schema: Option<&'a str>,
        name: &str,
    ) -> impl Iterator<Item = &'a FunctionInfo> + 'a {
        find(&self.casts, schema, name)
    }

    /// All functions named `name`, in `schema` if given.
    pub fn lookup<'a>(
        &'a self,
        schema: Option<&'a str>,
        name: &str,
    ) -> impl Iterator<Item = &'a FunctionInfo> + 'a {
        find(&self.by_name, schema, name)
    }

    pub fn len(&self) -> usize {
        self.by_name.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

fn find<'a>(
    map: &'a HashMap<String, Vec<FunctionInfo>>,
    schema: Option<&'a str>,
    name: &str,
) -> impl Iterator<Item = &'a FunctionInfo> + 'a {
    map.get(name)
        .into_iter()
        .flatten()
        .filter(move |f| schema.is_none_or(|s| f.schema == s))
}

/// The cached catalog of one connection, shared by its sessions.
#[derive(Default)]
pub struct CatalogCache {
    entry: Mutex<Option<(Instant, Arc<FunctionCatalog>)>>,
}

impl CatalogCache {
    /// The cached catalog if it is fresh.
    pub fn fresh(&self) -> Option<Arc<FunctionCatalog>> {
        let entry = self.entry.lock().ok()?;
        entry
            .as_ref()
            .filter(|(at, _)| at.elapsed() < CATALOG_TTL)
            .map(|(_, c)| c.clone())
    }

    pub fn store(&self, catalog: Arc<FunctionCatalog>) {
        if let Ok(mut entry) = self.entry.lock() {
            *entry = Some((Instant::now(), catalog));
        }
    }
}
