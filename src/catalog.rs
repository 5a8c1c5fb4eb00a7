//! Facts about an upstream database the classifier cannot see in the text: which
//! functions exist, in which schema, and how volatile they are.
//!
//! Fetched from the upstream itself (`pg_proc`) over the session's own connection,
//! cached per connection name, refreshed after [`CATALOG_TTL`]. If the catalog cannot
//! be read, every function call is denied (fail closed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a fetched catalog is used before it is refreshed (in the background; the
/// sessions keep using the old one meanwhile). A function created or altered later is
/// seen within this time, or at once when a statement names a function the catalog
/// does not know (see [`MIN_REFRESH_INTERVAL`]).
pub const CATALOG_TTL: Duration = Duration::from_secs(60);

/// Refreshes of one connection's catalog are at least this far apart, so statements
/// naming unknown functions cannot turn into a flood of catalog reads.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// The query that reads the catalog, one row per fact: `(schema, name, volatility,
/// kind)`.
///
/// * kind `f`, `p`, `a`, `w`: a function, procedure, aggregate or window function. An
///   aggregate's own `provolatile` says nothing about the functions it runs per row,
///   so aggregates get the most volatile of their support functions.
/// * kind `o`: an operator, with the volatility of the function behind it.
/// * kind `c`: a cast implemented by a user-defined function, named by its target type
///   and by every domain over that type (a cast to the domain runs it too).
/// * kind `t`: a type (a name that `name(x)` may cast to).
/// * kind `v`: a user view or materialized view, with its definition in the third
///   column. The gateway parses each definition itself to find the views that read,
///   directly or through other views, a relation on
///   [`DENIED_RELATIONS`](crate::policy::readonly::DENIED_RELATIONS): PostgreSQL records no
///   dependencies on system catalogs, so `pg_depend` cannot tell.
///
/// Every operator, function and type in it is qualified with `pg_catalog`, so the
/// client's `search_path` cannot change what it means.
pub fn catalog_query() -> String {
    String::from(
        "SELECT n.nspname, p.proname, \
         CASE WHEN p.prokind OPERATOR(pg_catalog.=) 'a' THEN coalesce((\
           SELECT CASE WHEN pg_catalog.bool_or(f.provolatile OPERATOR(pg_catalog.=) 'v') THEN 'v' \
                       WHEN pg_catalog.bool_or(f.provolatile OPERATOR(pg_catalog.=) 's') THEN 's' ELSE 'i' END \
           FROM pg_catalog.pg_aggregate a JOIN pg_catalog.pg_proc f ON f.oid OPERATOR(pg_catalog.=) ANY (ARRAY[\
              a.aggtransfn, a.aggfinalfn, a.aggcombinefn, a.aggserialfn, a.aggdeserialfn, \
              a.aggmtransfn, a.aggminvtransfn, a.aggmfinalfn]::pg_catalog.oid[]) \
           WHERE a.aggfnoid OPERATOR(pg_catalog.=) p.oid), 'v') \
         ELSE p.provolatile::pg_catalog.text END, p.prokind::pg_catalog.text \
         FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace \
         UNION ALL \
         SELECT n.nspname, o.oprname, p.provolatile::pg_catalog.text, 'o' \
         FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) o.oprnamespace \
         JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) o.oprcode \
         UNION ALL \
         (WITH RECURSIVE doms(oid, base) AS (\
            SELECT t.oid, t.oid FROM pg_catalog.pg_type t \
            UNION \
            SELECT d.oid, doms.base FROM pg_catalog.pg_type d JOIN doms ON d.typbasetype OPERATOR(pg_catalog.=) doms.oid \
            WHERE d.typtype OPERATOR(pg_catalog.=) 'd') \
          SELECT tn.nspname, t.typname, p.provolatile::pg_catalog.text, 'c' \
          FROM pg_catalog.pg_cast c JOIN doms ON doms.base OPERATOR(pg_catalog.=) c.casttarget \
          JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) doms.oid \
          JOIN pg_catalog.pg_namespace tn ON tn.oid OPERATOR(pg_catalog.=) t.typnamespace \
          JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) c.castfunc \
          JOIN pg_catalog.pg_namespace pn ON pn.oid OPERATOR(pg_catalog.=) p.pronamespace \
          WHERE pn.nspname OPERATOR(pg_catalog.<>) 'pg_catalog') \
         UNION ALL \
         SELECT n.nspname, t.typname, '', 't' \
         FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) t.typnamespace \
         UNION ALL \
         SELECT n.nspname, c.relname, pg_catalog.pg_get_viewdef(c.oid), 'v' \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE c.relkind OPERATOR(pg_catalog.=) ANY (ARRAY['v', 'm']::pg_catalog.\"char\"[]) \
           AND n.nspname OPERATOR(pg_catalog.<>) ALL (ARRAY['pg_catalog', 'information_schema']::pg_catalog.name[])"
    )
}

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
    /// Types by name: the schemas that have one.
    types: HashMap<String, Vec<String>>,
    /// User views that read a denied relation, by name: their schemas.
    denied_views: HashMap<String, Vec<String>>,
}

impl FunctionCatalog {
    /// Builds the catalog from rows of [`catalog_query`] (text format).
    pub fn from_rows(rows: impl IntoIterator<Item = [String; 4]>) -> Self {
        let mut by_name: HashMap<String, Vec<FunctionInfo>> = HashMap::new();
        let mut operators: HashMap<String, Vec<FunctionInfo>> = HashMap::new();
        let mut casts: HashMap<String, Vec<FunctionInfo>> = HashMap::new();
        let mut types: HashMap<String, Vec<String>> = HashMap::new();
        let mut views: Vec<(String, String, String)> = Vec::new();
        for [schema, name, volatility, kind] in rows {
            match kind.as_str() {
                "t" => {
                    types.entry(name).or_default().push(schema);
                    continue;
                }
                "v" => {
                    views.push((schema, name, volatility));
                    continue;
                }
                _ => {}
            }
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
            types,
            denied_views: views_reading_denied_relations(views),
        }
    }

    /// Whether a type named `name` exists (in `schema`, if given).
    pub fn is_type(&self, schema: Option<&str>, name: &str) -> bool {
        self.types
            .get(name)
            .is_some_and(|schemas| schema.is_none_or(|s| schemas.iter().any(|x| x == s)))
    }

    /// The schema of a user view named `name` (in `schema`, if given) that reads a
    /// denied relation. An unqualified name matches such a view in any schema.
    pub fn denied_view(&self, schema: Option<&str>, name: &str) -> Option<&str> {
        self.denied_views
            .get(name)?
            .iter()
            .find(|s| schema.is_none_or(|x| x == s.as_str()))
            .map(String::as_str)
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

/// The user views (schema, name, definition) that read a denied relation, directly or
/// through other views, by name → schemas. A definition that does not parse counts as
/// denied (fail closed).
fn views_reading_denied_relations(
    views: Vec<(String, String, String)>,
) -> HashMap<String, Vec<String>> {
    use crate::policy::readonly::DENIED_RELATIONS;
    use crate::sql::QualifiedName;
    let read: Vec<(String, String, Option<Vec<QualifiedName>>)> = views
        .into_iter()
        .map(|(schema, name, definition)| {
            let tables = crate::sql::postgres::classify(&definition, usize::MAX)
                .ok()
                .map(|facts| facts.into_iter().flat_map(|f| f.tree.tables).collect());
            (schema, name, tables)
        })
        .collect();
    let mut denied: HashMap<String, Vec<String>> = HashMap::new();
    let is_denied = |t: &QualifiedName, denied: &HashMap<String, Vec<String>>| {
        let matches = |schema: &str| t.schema.as_deref().is_none_or(|s| s == schema);
        DENIED_RELATIONS
            .iter()
            .any(|(schema, name, _)| *name == t.name && matches(schema))
            || denied
                .get(&t.name)
                .is_some_and(|schemas| schemas.iter().any(|s| matches(s)))
    };
    // Views of views: repeat until nothing new is found.
    loop {
        let mut found = Vec::new();
        for (schema, name, tables) in &read {
            if denied.get(name).is_some_and(|s| s.contains(schema)) {
                continue;
            }
            let reads_denied = match tables {
                Some(tables) => tables.iter().any(|t| is_denied(t, &denied)),
                None => true,
            };
            if reads_denied {
                found.push((schema.clone(), name.clone()));
            }
        }
        if found.is_empty() {
            return denied;
        }
        for (schema, name) in found {
            denied.entry(name).or_default().push(schema);
        }
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
    /// Held while a refresh runs (one at a time); the time of the last attempt.
    refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl CatalogCache {
    /// The cached catalog if it is fresh.
    pub fn fresh(&self) -> Option<Arc<FunctionCatalog>> {
        self.current()
            .filter(|(at, _)| at.elapsed() < CATALOG_TTL)
            .map(|(_, c)| c)
    }

    /// The cached catalog however old, with the time it was read.
    pub fn current(&self) -> Option<(Instant, Arc<FunctionCatalog>)> {
        self.entry.lock().ok()?.clone()
    }

    pub fn store(&self, catalog: Arc<FunctionCatalog>) {
        if let Ok(mut entry) = self.entry.lock() {
            *entry = Some((Instant::now(), catalog));
        }
    }

    /// Runs `fetch` to replace the catalog, unless another caller refreshed it after
    /// `asked_at` or the last attempt was under [`MIN_REFRESH_INTERVAL`] ago. One
    /// refresh runs at a time; callers that arrive during it wait for its result.
    pub async fn refresh<F, Fut, E>(
        &self,
        asked_at: Instant,
        fetch: F,
    ) -> Option<Arc<FunctionCatalog>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Arc<FunctionCatalog>, E>>,
        E: std::fmt::Display,
    {
        let mut last = self.refresh.lock().await;
        if let Some((at, catalog)) = self.current() {
            if at > asked_at {
                return Some(catalog);
            }
        }
        if last.is_some_and(|t| t.elapsed() < MIN_REFRESH_INTERVAL) {
            return self.current().map(|(_, c)| c);
        }
        *last = Some(Instant::now());
        match fetch().await {
            Ok(catalog) => {
                self.store(catalog.clone());
                Some(catalog)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot refresh the upstream catalog; keeping the one read earlier");
                self.current().map(|(_, c)| c)
            }
        }
    }
}
