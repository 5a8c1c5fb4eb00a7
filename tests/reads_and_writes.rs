//! Read-only policy through a real driver: reads of many shapes succeed with exact
//! results; writes, DDL, read-only escapes and side-effecting functions are denied,
//! each next to an allowed neighbour.

mod common;

use common::{assert_denied, db_error, TestGateway};

#[tokio::test]
async fn reads_of_many_shapes_return_exact_results() {
    let gw = TestGateway::start().await;
    let c = gw.agent().await;

    let rows = c
        .query(
            "SELECT id, name FROM items WHERE price > $1::int4 ORDER BY id",
            &[&2i32],
        )
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(names, ["pear", "fig"]);

    // Same shape, other constants (the session's shape cache must not mix them up).
    for (id, want) in [(1, "apple"), (2, "pear"), (3, "fig")] {
        let sql = format!("SELECT name FROM items WHERE id = {id}");
        let rows = c.simple_query(&sql).await.unwrap();
        let name = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(name.as_deref(), Some(want));
    }
    assert_denied(
        &c,
        "SELECT name FROM items WHERE id = 1 FOR UPDATE",
        "SELECT",
        "locking",
    )
    .await;

    let total: String = c
        .query_one("SELECT sum(price)::text FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, "7.75");
    let ranked: i64 = c
        .query_one("WITH r AS (SELECT name, rank() OVER (ORDER BY price DESC) AS k FROM items) SELECT k FROM r WHERE name = 'pear'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ranked, 2);
    let doubled: i32 = c
        .query_one("SELECT stable_double(21)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(doubled, 42);
    let v: String = c.query_one("SELECT version()", &[]).await.unwrap().get(0);
    assert!(v.starts_with("PostgreSQL"));
    let schema: String = c
        .query_one("SELECT current_schema()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(schema, "public");
    let joined: i64 = c
        .query_one(
            "SELECT count(*) FROM items a JOIN items b ON a.id < b.id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(joined, 3);
    let values: i32 = c.query_one("VALUES (1 + 1)", &[]).await.unwrap().get(0);
    assert_eq!(values, 2);
    let explain = c.query("EXPLAIN SELECT * FROM items", &[]).await.unwrap();
    assert!(!explain.is_empty());
    let analyzed = c
        .query("EXPLAIN ANALYZE SELECT * FROM items", &[])
        .await
        .unwrap();
    assert!(!analyzed.is_empty());
    // The read-only mode is pinned upstream, and RESET ALL returns to it.
    c.batch_execute("RESET ALL").await.unwrap();
    let ro: String = c
        .query_one("SHOW default_transaction_read_only", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ro, "on");
    let scs: String = c
        .query_one("SHOW standard_conforming_strings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(scs, "on");
    // Strings are lexed as the server lexes them.
    let s: String = c
        .query_one(r"SELECT 'a\' || E'\x41' || $$;$$", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(s, r"a\A;");
}

#[tokio::test]
async fn driver_connect_chatter_passes() {
    let gw = TestGateway::start().await;
    let c = gw.agent().await;
    for sql in [
        "SET application_name = 'agent-7-tool'",
        "SET extra_float_digits = 3",
        "SET client_encoding = 'UTF8'",
        "SET search_path = public",
        "SET statement_timeout = '5s'",
        ";",
        "",
        "SHOW TimeZone",
        "SHOW ALL",
        "begin transaction",
        "SAVEPOINT s1",
        "SELECT 1",
        "ROLLBACK TO SAVEPOINT s1",
        "RELEASE SAVEPOINT s1",
        "commit",
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        "ROLLBACK",
        "DISCARD ALL",
    ] {
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

#[tokio::test]
async fn writes_and_ddl_are_denied_with_allowed_neighbours() {
    let gw = TestGateway::start().await;
    let c = gw.agent().await;
    c.batch_execute("SELECT * FROM items").await.unwrap();
    assert_denied(
        &c,
        "INSERT INTO items VALUES (4, 'kiwi', 1)",
        "INSERT",
        "read-only",
    )
    .await;
    assert_denied(&c, "UPDATE items SET price = 0", "UPDATE", "read-only").await;
    assert_denied(&c, "DELETE FROM items", "DELETE", "read-only").await;
    assert_denied(&c, "DROP TABLE items", "DROP TABLE", "read-only").await;
    assert_denied(&c, "TRUNCATE items", "TRUNCATE", "read-only").await;
    assert_denied(&c, "CREATE TABLE t2 (x int)", "CREATE TABLE", "read-only").await;
    assert_denied(&c, "GRANT ALL ON items TO PUBLIC", "GRANT", "read-only").await;
    assert_denied(
        &c,
        "ALTER SYSTEM SET work_mem = '1GB'",
        "ALTER SYSTEM",
        "read-only",
    )
    .await;
    assert_denied(&c, "VACUUM items", "VACUUM", "read-only").await;
    assert_denied(&c, "LOCK TABLE items", "LOCK", "ACCESS SHARE").await;
    // pg_dump's lock is allowed: it only keeps DDL away while the dump runs.
    c.batch_execute("BEGIN; LOCK TABLE public.items IN ACCESS SHARE MODE; COMMIT")
        .await
        .unwrap();
    assert_denied(
        &c,
        "DO $$ BEGIN DELETE FROM items; END $$",
        "DO",
        "read-only",
    )
    .await;
    assert_denied(
        &c,
        "SELECT * INTO copy_of_items FROM items",
        "SELECT",
        "SELECT INTO",
    )
    .await;
    c.batch_execute("WITH x AS (SELECT * FROM items) SELECT * FROM x")
        .await
        .unwrap();
    assert_denied(
        &c,
        "WITH x AS (DELETE FROM items RETURNING *) SELECT * FROM x",
        "SELECT",
        "DELETE",
    )
    .await;
    c.batch_execute("SELECT * FROM items FOR READ ONLY")
        .await
        .unwrap();
    assert_denied(&c, "SELECT * FROM items FOR UPDATE", "SELECT", "locking").await;
    // The session is still usable, and nothing was written.
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    assert_eq!(gw.db.item_count().await, 3);
}

#[tokio::test]
async fn read_only_escapes_are_denied_with_allowed_neighbours() {
    let gw = TestGateway::start().await;
    let c = gw.agent().await;
    c.batch_execute("SET application_name = 'x'").await.unwrap();
    assert_denied(
        &c,
        "SET default_transaction_read_only = off",
        "SET",
        "pinned on",
    )
    .await;
    assert_denied(
        &c,
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "SET TRANSACTION",
        "READ WRITE",
    )
    .await;
    c.batch_execute("BEGIN; ROLLBACK").await.unwrap();
    assert_denied(&c, "BEGIN READ WRITE", "BEGIN", "READ WRITE").await;
    assert_denied(&c, "SET ROLE postgres", "SET", "role").await;
    assert_denied(&c, "SET standard_conforming_strings = off", "SET", "pinned").await;
    c.batch_execute("SET client_encoding = 'UTF8'")
        .await
        .unwrap();
    assert_denied(&c, "SET client_encoding = 'SJIS'", "SET", "UTF8").await;
    // One message that turns read-only off and then writes: denied as a whole, and
    // none of it runs (the server's read-only mode alone would not stop this).
    assert_denied(
        &c,
        "SET transaction_read_only = off; DELETE FROM items",
        "SET",
        "pinned on",
    )
    .await;
    c.batch_execute("SELECT 1; SELECT 2").await.unwrap();
    assert_denied(&c, "SELECT 1; DELETE FROM items", "DELETE", "read-only").await;
    // Side-effecting and escaping functions; their harmless neighbours work.
    c.batch_execute("SELECT current_setting('application_name')")
        .await
        .unwrap();
    assert_denied(
        &c,
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "SELECT",
        "set_config",
    )
    .await;
    c.batch_execute("SELECT currval('counter') IS NULL FROM items WHERE false")
        .await
        .unwrap();
    assert_denied(&c, "SELECT nextval('counter')", "SELECT", "nextval").await;
    c.batch_execute("SELECT stable_double(1)").await.unwrap();
    assert_denied(&c, "SELECT volatile_wipe()", "SELECT", "VOLATILE").await;
    assert_denied(&c, "SELECT lo_import('/etc/passwd')", "SELECT", "lo_import").await;
    // Field-selection notation calls functions: x.f is f(x).
    c.batch_execute("SELECT i.name, (i).price FROM items i")
        .await
        .unwrap();
    assert_denied(&c, "SELECT (0::oid).lo_create", "SELECT", "lo_create").await;
    assert_denied(
        &c,
        "SELECT (pg_backend_pid()).pg_terminate_backend",
        "SELECT",
        "pg_terminate_backend",
    )
    .await;
    assert_denied(&c, "SELECT i.row_touch FROM items i", "SELECT", "VOLATILE").await;
    // Built-ins that run SQL text, and volatile built-ins in general.
    c.batch_execute("SELECT to_tsvector('a b'), random(), clock_timestamp()")
        .await
        .unwrap();
    assert_denied(
        &c,
        "SELECT * FROM ts_stat('SELECT to_tsvector(name) FROM items')",
        "SELECT",
        "ts_stat",
    )
    .await;
    assert_denied(&c, "SELECT pg_export_snapshot()", "SELECT", "VOLATILE").await;
    // RESET of a single setting only for the allowed ones.
    c.batch_execute("RESET application_name").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    assert_denied(
        &c,
        "RESET transaction_read_only",
        "RESET",
        "transaction_read_only",
    )
    .await;
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_denied(
        &c,
        "SET transaction_read_only TO DEFAULT",
        "RESET",
        "transaction_read_only",
    )
    .await;
    // Casts implemented by user-defined functions.
    c.batch_execute("SELECT 1::text, CAST(2 AS bigint)")
        .await
        .unwrap();
    assert_denied(&c, "SELECT 1::mood", "SELECT", "cast to mood").await;
    assert_denied(&c, "SELECT CAST(1 AS public.mood)", "SELECT", "VOLATILE").await;
    // Aggregates run their support functions per row.
    c.batch_execute("SELECT isum(id) FROM items").await.unwrap();
    assert_denied(&c, "SELECT vsum(id) FROM items", "SELECT", "VOLATILE").await;
    // Operators run functions too.
    c.batch_execute("SELECT 1 <<< 2").await.unwrap();
    assert_denied(&c, "SELECT 1 === 2", "SELECT", "VOLATILE").await;
    assert_denied(&c, "SELECT 1 OPERATOR(public.===) 2", "SELECT", "VOLATILE").await;
    assert_denied(
        &c,
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT",
        "pg_read_file",
    )
    .await;
    assert_denied(
        &c,
        "SELECT query_to_xml('DELETE FROM items RETURNING 1', true, true, '')",
        "SELECT",
        "query_to_xml",
    )
    .await;
    assert_denied(
        &c,
        "SELECT pg_terminate_backend(1)",
        "SELECT",
        "pg_terminate_backend",
    )
    .await;
    // COPY: to the client is a read; to a server file or program is not.
    assert_denied(
        &c,
        "COPY items TO '/tmp/sqlgate-items'",
        "COPY TO",
        "server file",
    )
    .await;
    assert_denied(&c, "COPY items TO PROGRAM 'cat'", "COPY TO", "server").await;
    assert_denied(&c, "COPY items FROM STDIN", "COPY FROM", "writes").await;
    assert_eq!(gw.db.item_count().await, 3);
}

#[tokio::test]
async fn unparsable_and_oversized_statements_fail_closed() {
    let gw = TestGateway::start_with(common::Setup {
        extra_config: String::new(),
        ..Default::default()
    })
    .await;
    let c = gw.agent().await;
    let err = c.batch_execute("SELEC * FROM items").await.unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "42601");
    assert!(message.contains("does not parse"), "{message}");
    c.batch_execute("SELECT 1").await.unwrap();
    let huge = format!("SELECT 1 WHERE 1 IN ({})", vec!["1"; 600_000].join(","));
    let err = c.batch_execute(&huge).await.unwrap_err();
    assert_eq!(db_error(&err).0, "54000");
    c.batch_execute("SELECT 1").await.unwrap();
}
