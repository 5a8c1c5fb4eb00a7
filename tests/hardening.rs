//! Read-only hardening through the real gateway (issue 11): each attack class next
//! to its allowed neighbour.
//!
//! * a relation named like a function no longer hides the call;
//! * the tripwire: a mislabelled STABLE function that changes a pinned setting ends
//!   the session, also when the next statement was already pipelined;
//! * relations exposing credentials or server files are denied however reached;
//! * function-style casts and casts to domains are checked like explicit casts;
//! * search_path cannot put a schema before pg_catalog;
//! * the catalog is read again when a statement names a function created after login;
//! * what drivers and tools send (asyncpg, psycopg2, Rails, pg_dump) is allowed;
//! * `pg_dump --schema-only` through the gateway equals a direct dump.

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::BytesMut;
use common::{assert_denied, db_error, TestGateway};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Functions a DBA wrongly labelled STABLE: they change settings.
const MISLABELLED: &str = "
    CREATE FUNCTION flip_scs() RETURNS text LANGUAGE plpgsql STABLE AS $$
        BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); RETURN 'x'; END $$;
    CREATE FUNCTION unlock_ro() RETURNS text LANGUAGE plpgsql STABLE AS $$
        BEGIN PERFORM set_config('default_transaction_read_only', 'off', false); RETURN 'x'; END $$;
    CREATE FUNCTION set_app() RETURNS text LANGUAGE plpgsql STABLE AS $$
        BEGIN PERFORM set_config('application_name', 'renamed', false); RETURN 'x'; END $$;";

async fn table_exists(gw: &TestGateway, name: &str) -> bool {
    gw.db
        .direct()
        .await
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_relation_named_like_a_function_does_not_hide_the_call() {
    let gw = TestGateway::start().await;
    let c = gw.agent().await;
    for sql in [
        "WITH set_config AS (SELECT 1) SELECT s FROM set_config, set_config('default_transaction_read_only','off',false) AS s",
        "WITH nextval AS (SELECT 1) SELECT nextval('counter') FROM nextval",
        "SELECT pg_read_file FROM (SELECT 1) AS pg_read_file, pg_read_file('/etc/hostname')",
        "WITH volatile_wipe AS (SELECT 1) SELECT volatile_wipe() FROM volatile_wipe",
    ] {
        let err = c.simple_query(sql).await.expect_err(sql);
        assert_eq!(db_error(&err).0, "42501", "{sql}");
    }
    // The neighbour: a CTE named like a harmless function, and the function.
    c.simple_query("WITH lower AS (SELECT 1 AS x) SELECT lower('A'), x FROM lower")
        .await
        .unwrap();
    assert_eq!(gw.db.item_count().await, 3);
    let last: i64 = gw
        .db
        .direct()
        .await
        .query_one("SELECT last_value FROM counter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(last, 1, "the sequence did not advance");
}

#[tokio::test]
async fn a_pinned_setting_changed_by_user_code_ends_the_session() {
    let gw = TestGateway::start().await;
    gw.db
        .direct()
        .await
        .batch_execute(MISLABELLED)
        .await
        .unwrap();

    // The neighbour: a STABLE function that changes an unpinned setting is fine.
    let (c, conn) = gw.watched_agent().await;
    c.simple_query("SELECT set_app()").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();

    // The FATAL reaches the driver as the pending query's error; the connection ends.
    let (code, message) = db_error(&c.simple_query("SELECT flip_scs()").await.unwrap_err());
    assert_eq!(code, "42501", "{message}");
    let _ = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("session ended");
    assert!(
        message.contains("standard_conforming_strings") && message.contains("session ended"),
        "{message}"
    );

    let (c, conn) = gw.watched_agent().await;
    let (_, message) = db_error(&c.simple_query("SELECT unlock_ro()").await.unwrap_err());
    let _ = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("session ended");
    assert!(
        message.contains("default_transaction_read_only"),
        "{message}"
    );
    let reasons = gw.ended_reasons().await;
    assert_eq!(
        reasons.iter().filter(|r| r.starts_with("tamper: ")).count(),
        2,
        "{reasons:?}"
    );
}

/// The attack the tripwire exists for: the statement after the one that turns
/// `standard_conforming_strings` off is already in the same TCP write. sqlgate reads
/// it as one harmless SELECT; a server lexing with the setting off would run a CREATE.
#[tokio::test]
async fn nothing_pipelined_after_the_change_reaches_the_server() {
    let gw = TestGateway::start().await;
    gw.db
        .direct()
        .await
        .batch_execute(MISLABELLED)
        .await
        .unwrap();
    let token = gw.token(&["analytics-agents"]);
    let mut raw = common::Raw::login(gw.port(), "agent-7", "reporting", Some(&token)).await;
    let mut out = BytesMut::new();
    frontend::query("SELECT flip_scs()", &mut out).unwrap();
    frontend::query(
        r"SELECT 'x\' AS a, $$'; CREATE TABLE pwned (x int); --$$",
        &mut out,
    )
    .unwrap();
    raw.stream.write_all(&out).await.unwrap();
    // Read until the gateway closes the connection.
    let mut seen = BytesMut::new();
    seen.extend_from_slice(&raw.buf);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), raw.stream.read_buf(&mut seen)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!("the gateway did not end the session"),
        }
    }
    assert!(
        String::from_utf8_lossy(&seen).contains("standard_conforming_strings"),
        "no tripwire error"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !table_exists(&gw, "pwned").await,
        "the pipelined CREATE ran"
    );
}

#[tokio::test]
async fn relations_exposing_credentials_and_server_files_are_denied() {
    let gw = TestGateway::start().await;
    gw.db
        .direct()
        .await
        .batch_execute(
            "CREATE VIEW creds AS SELECT rolname, rolpassword FROM pg_authid;
             CREATE VIEW creds2 AS SELECT * FROM creds;
             CREATE VIEW cheap AS SELECT * FROM items WHERE price < 3;",
        )
        .await
        .unwrap();
    let c = gw.agent().await;
    for (sql, why) in [
        ("SELECT rolname, rolpassword FROM pg_authid", "pg_authid"),
        ("SELECT * FROM pg_catalog.pg_shadow", "pg_shadow"),
        (
            "WITH x AS (SELECT * FROM pg_file_settings) SELECT * FROM x",
            "pg_file_settings",
        ),
        (
            "SELECT a.rolname FROM (SELECT * FROM pg_authid) AS a",
            "pg_authid",
        ),
        ("TABLE pg_hba_file_rules", "pg_hba_file_rules"),
        ("SELECT * FROM pg_user_mappings", "pg_user_mappings"),
        ("SELECT * FROM pg_largeobject", "pg_largeobject"),
        ("SELECT subconninfo FROM pg_subscription", "subconninfo"),
        ("SELECT * FROM pg_subscription", "subconninfo"),
        ("SELECT s FROM pg_subscription AS s", "subconninfo"),
        (
            "SELECT * FROM pg_show_all_file_settings()",
            "pg_show_all_file_settings",
        ),
        ("SELECT * FROM creds2", "creds2"),
        ("SELECT * FROM public.creds", "creds"),
    ] {
        assert_denied(&c, sql, "SELECT", why).await;
    }
    let err = c
        .simple_query("COPY pg_authid TO STDOUT")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    // Neighbours: the safe catalog views, counting subscriptions (pg_dump does), a view
    // over ordinary tables.
    c.simple_query("SELECT rolname FROM pg_roles")
        .await
        .unwrap();
    c.simple_query("SELECT count(*), min(subname) FROM pg_subscription")
        .await
        .unwrap();
    let rows = c.query("SELECT name FROM cheap", &[]).await.unwrap();
    assert_eq!(rows.len(), 2);
}

#[tokio::test]
async fn function_style_casts_and_domain_casts_are_checked() {
    let gw = TestGateway::start().await;
    gw.db
        .direct()
        .await
        .batch_execute("CREATE DOMAIN mood_d AS mood")
        .await
        .unwrap();
    let c = gw.agent().await;
    // mood_of (the cast int → mood) is VOLATILE.
    assert_denied(&c, "SELECT mood(1)", "SELECT", "VOLATILE").await;
    assert_denied(&c, "SELECT 1::mood_d", "SELECT", "VOLATILE").await;
    let v: String = c
        .query_one("SELECT jsonb('{\"a\": 1}')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "{\"a\": 1}");
    // Casts to a type with a VOLATILE cast function are denied whatever the source
    // (conservative: 'sad'::mood would run only the enum's input function).
    c.simple_query("SELECT uuid('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'), 'sad'::text")
        .await
        .unwrap();
}

#[tokio::test]
async fn search_path_cannot_put_a_schema_before_pg_catalog() {
    let gw = TestGateway::start().await;
    let c = gw.agent().await;
    assert_denied(
        &c,
        "SET search_path = public, pg_catalog",
        "SET",
        "before pg_catalog",
    )
    .await;
    assert_denied(
        &c,
        "SELECT set_config('search_path', 'public, pg_catalog', false)",
        "SELECT",
        "before pg_catalog",
    )
    .await;
    c.batch_execute("SET search_path = pg_catalog, public; SET search_path TO \"$user\", public")
        .await
        .unwrap();

    // The startup parameter is checked too (only raw clients can send it).
    let mut stream = TcpStream::connect(("127.0.0.1", gw.port())).await.unwrap();
    let mut out = BytesMut::new();
    frontend::startup_message(
        [
            ("user", "agent-7"),
            ("database", "reporting"),
            ("search_path", "public,pg_catalog"),
        ],
        &mut out,
    )
    .unwrap();
    stream.write_all(&out).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("search_path"), "{answer}");
}

#[tokio::test]
async fn functions_created_after_login_are_checked_by_their_own_volatility() {
    let gw = TestGateway::start().await;
    let c = gw.agent().await;
    c.simple_query("SELECT 1").await.unwrap();
    gw.db
        .direct()
        .await
        .batch_execute(
            "CREATE FUNCTION fresh_stable() RETURNS int LANGUAGE sql STABLE AS 'SELECT 7';
             CREATE FUNCTION fresh_volatile() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 8';",
        )
        .await
        .unwrap();
    let seven: i32 = c
        .query_one("SELECT fresh_stable()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seven, 7);
    assert_denied(&c, "SELECT fresh_volatile()", "SELECT", "VOLATILE").await;
}

#[tokio::test]
async fn what_drivers_and_tools_send_is_allowed_and_its_neighbours_denied() {
    let gw = TestGateway::start().await;
    let c = gw.agent().await;
    for sql in [
        // asyncpg's pool reset on release
        "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",
        // psycopg2 set_session(readonly=True, autocommit=True), and back
        "SET default_transaction_read_only TO 'on'",
        "SET default_transaction_read_only TO DEFAULT",
        "BEGIN; SET transaction_read_only = on; COMMIT",
        // Rails and Sequel
        "SET standard_conforming_strings = on",
        // pg_dump and pgAdmin
        "SET synchronize_seqscans TO off",
        "SET quote_all_identifiers = true",
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; LOCK TABLE public.items IN ACCESS SHARE MODE; COMMIT",
        "RESET ROLE",
        "SET ROLE NONE",
        "SET random_page_cost = 1.1; SET seq_page_cost = 1; SET effective_cache_size = '1GB'",
        "SET join_collapse_limit = 4; SET default_text_search_config = 'pg_catalog.english'",
    ] {
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {:?}", db_error(&e)));
    }
    assert_denied(
        &c,
        "SET default_transaction_read_only = off",
        "SET",
        "pinned on",
    )
    .await;
    assert_denied(
        &c,
        "SET standard_conforming_strings = off",
        "SET",
        "pinned on",
    )
    .await;
    assert_denied(&c, "SET ROLE postgres", "SET", "role").await;
    assert_denied(
        &c,
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "SELECT",
        "pinned on",
    )
    .await;
    assert_denied(
        &c,
        "SELECT set_config(current_setting('application_name'), 'x', false)",
        "SELECT",
        "constant",
    )
    .await;
    assert_denied(
        &c,
        "LOCK TABLE items IN EXCLUSIVE MODE",
        "LOCK",
        "ACCESS SHARE",
    )
    .await;
    assert_denied(
        &c,
        "SELECT pg_advisory_lock(1)",
        "SELECT",
        "pg_advisory_lock",
    )
    .await;

    // Long flat lists are not "too complex"; only depth is bounded.
    let values: Vec<String> = (0..12_000).map(|i| format!("({i})")).collect();
    let rows = c
        .simple_query(&format!(
            "SELECT count(*) FROM (VALUES {}) AS v(x)",
            values.join(",")
        ))
        .await
        .unwrap();
    assert!(!rows.is_empty());
    let or_chain: Vec<String> = (0..6_000).map(|i| format!("id = {i}")).collect();
    c.simple_query(&format!(
        "SELECT count(*) FROM items WHERE {}",
        or_chain.join(" OR ")
    ))
    .await
    .unwrap();
    let pairs: Vec<String> = (0..5_000).map(|i| format!("({i}, 'n{i}')")).collect();
    c.simple_query(&format!(
        "SELECT count(*) FROM items WHERE (id, name) IN ({})",
        pairs.join(",")
    ))
    .await
    .unwrap();
    let deep = format!("SELECT {}1", "1 + ".repeat(20_000));
    let err = c.simple_query(&deep).await.unwrap_err();
    assert_eq!(db_error(&err).0, "54000");

    // pg_dump's first statement empties search_path: last, as it affects the session.
    c.batch_execute("SELECT pg_catalog.set_config('search_path', '', false)")
        .await
        .unwrap();
}

/// `pg_dump --schema-only` through the gateway gives the same dump as a direct
/// connection with the same role.
#[tokio::test]
async fn pg_dump_schema_only_matches_a_direct_dump() {
    let gw = TestGateway::start().await;
    let token = gw.token(&["analytics-agents"]);
    // The gateway runs on this test's runtime: run pg_dump off it.
    let port = gw.port().to_string();
    let through = tokio::task::spawn_blocking(move || {
        Command::new("pg_dump")
            .args([
                "--schema-only",
                "--no-password",
                "-h",
                "127.0.0.1",
                "-U",
                "agent-7",
            ])
            .args(["-p", &port, "reporting"])
            .env("PGPASSWORD", &token)
            .env("PGSSLMODE", "disable")
            .output()
            .expect("pg_dump (postgresql-client) is installed")
    })
    .await
    .unwrap();
    let direct = Command::new("pg_dump")
        .args([
            "--schema-only",
            "--no-password",
            "-h",
            "127.0.0.1",
            "-p",
            "5432",
        ])
        .args(["-U", &gw.db.role, &gw.db.name])
        .output()
        .unwrap();
    assert!(
        through.status.success(),
        "{}",
        String::from_utf8_lossy(&through.stderr)
    );
    assert!(direct.status.success());
    // pg_dump 15.14+ brackets the dump with a random `\restrict KEY` per run.
    let masked = |out: &[u8]| -> String {
        String::from_utf8_lossy(out)
            .lines()
            .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let through = masked(&through.stdout);
    let direct = masked(&direct.stdout);
    assert!(direct.contains("CREATE TABLE public.items"));
    assert_eq!(through, direct);
}
