//! DBA rules through the real gateway (issue 15, first part): rule files a grant
//! references deny named functions and tables on top of the read-only floor, for
//! Postgres and MySQL; every denial names the rule and the DBA's message, and the
//! neighbours stay allowed. Broken rule files stop the config from loading.

mod common;

use common::mysql::{MyGateway, MySetup};
use common::{Setup, TestGateway};
use mysql_async::prelude::Queryable;

/// Rule files in a fresh directory; returns it and the grant line that uses them.
fn rule_files() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let sleep = dir.path().join("no-sleep.toml");
    std::fs::write(
        &sleep,
        r#"
[[rule]]
id      = "no-sleep"
message = "sleeping and CPU-burning functions are not available to agents"
deny    = { functions = ["pg_sleep", "pg_sleep_for", "pg_sleep_until", "sleep", "benchmark"] }
"#,
    )
    .unwrap();
    let payroll = dir.path().join("payroll.toml");
    std::fs::write(
        &payroll,
        r#"
[[rule]]
id      = "no-payroll"
message = "payroll is not available to agents; ask HR"
deny    = { tables = ["salaries"] }
"#,
    )
    .unwrap();
    let line = format!(
        "rules = [{:?}, {:?}]",
        sleep.display().to_string(),
        payroll.display().to_string()
    );
    (dir, line)
}

#[tokio::test]
async fn postgres_rules_deny_named_functions_and_tables_and_allow_their_neighbours() {
    let (_rules, line) = rule_files();
    let gw = TestGateway::start_with(Setup {
        grant_extra: line,
        ..Setup::default()
    })
    .await;
    gw.db
        .direct()
        .await
        .batch_execute(
            "CREATE TABLE salaries (who text, amount int); INSERT INTO salaries VALUES ('a', 1)",
        )
        .await
        .unwrap();
    let client = gw.agent().await;
    for (sql, rule) in [
        ("SELECT pg_sleep(0)", "no-sleep"),
        ("SELECT pg_catalog.pg_sleep(0)", "no-sleep"),
        ("SELECT * FROM salaries", "no-payroll"),
        ("SELECT * FROM public.salaries", "no-payroll"),
        (
            "SELECT SUM(amount) FROM items JOIN salaries ON true",
            "no-payroll",
        ),
        (
            "WITH s AS (SELECT * FROM salaries) SELECT 1 FROM s",
            "no-payroll",
        ),
        ("SELECT (SELECT count(*) FROM salaries)", "no-payroll"),
        // Planner statistics hold sampled values of every table.
        (
            "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'salaries'",
            "no-payroll",
        ),
    ] {
        let err = client.simple_query(sql).await.unwrap_err();
        let (code, message) = common::db_error(&err);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains(rule), "{sql}: {message}");
        let db = err.as_db_error().unwrap();
        assert!(
            db.hint().unwrap_or_default().contains("rule the DBA set"),
            "{sql}: {:?}",
            db.hint()
        );
        // The extended protocol too.
        assert!(client.query(sql, &[]).await.is_err(), "{sql}");
    }
    let err = client.simple_query("SELECT pg_sleep(0)").await.unwrap_err();
    assert!(common::db_error(&err)
        .1
        .contains("sleeping and CPU-burning functions are not available to agents"));
    // Neighbours: other functions and tables, and a column merely named like the table.
    client.simple_query("SELECT 1").await.unwrap();
    client
        .simple_query("SELECT count(*) FROM items")
        .await
        .unwrap();
    client
        .simple_query("SELECT now(), name AS salaries FROM items")
        .await
        .unwrap();
    client.query("SELECT $1::int", &[&1i32]).await.unwrap();
    drop(client);
    let records = gw.audit().await;
    assert!(records.iter().any(|r| r["event"] == "statement"
        && r["decision"] == "deny"
        && r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("\"no-payroll\""))));
}

#[tokio::test]
async fn mysql_rules_deny_named_functions_and_tables_and_allow_their_neighbours() {
    let (_rules, line) = rule_files();
    let gw = MyGateway::start_with(MySetup {
        grant_extra: line,
        ..MySetup::default()
    })
    .await;
    gw.db
        .direct()
        .await
        .query_drop("CREATE TABLE salaries (who TEXT, amount INT)")
        .await
        .unwrap();
    let mut conn = gw.agent().await;
    let own_db_salaries = format!("SELECT * FROM {}.salaries", gw.db.name);
    for (sql, rule) in [
        ("SELECT SLEEP(0)", "no-sleep"),
        ("SELECT BENCHMARK(10, 1)", "no-sleep"),
        ("SELECT * FROM salaries", "no-payroll"),
        (
            "SELECT * FROM items WHERE id IN (SELECT amount FROM salaries)",
            "no-payroll",
        ),
        // Qualified with the session's own database: still the same table.
        (&own_db_salaries, "no-payroll"),
    ] {
        let err = conn.query_drop(sql).await.unwrap_err();
        let (_, message) = common::mysql::server_error(&err);
        assert!(message.contains(rule), "{sql}: {message}");
        assert!(message.contains("a rule the DBA set"), "{sql}: {message}");
    }
    let one: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    let n: Option<i64> = conn
        .query_first("SELECT COUNT(*) FROM items")
        .await
        .unwrap();
    assert!(n.is_some());
}

/// A rule file denying `users.ssn`; returns its directory and the grant line.
fn pii_rule() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let pii = dir.path().join("pii.toml");
    std::fs::write(
        &pii,
        r#"
[[rule]]
id      = "no-pii"
message = "PII columns are not available to agents"
deny    = { columns = ["users.ssn"] }
"#,
    )
    .unwrap();
    let line = format!("rules = [{:?}]", pii.display().to_string());
    (dir, line)
}

#[tokio::test]
async fn postgres_column_rules_deny_the_column_in_any_form_and_allow_the_others() {
    let (_rules, line) = pii_rule();
    let gw = TestGateway::start_with(Setup {
        grant_extra: line,
        ..Setup::default()
    })
    .await;
    gw.db
        .direct()
        .await
        .batch_execute(
            "CREATE TABLE users (id int, name text, ssn text); \
             INSERT INTO users VALUES (1, 'ada', '078-05-1120'); \
             CREATE TABLE orders (id int, user_id int, ssn text); \
             INSERT INTO orders VALUES (7, 1, 'not-pii')",
        )
        .await
        .unwrap();
    let client = gw.agent().await;
    for sql in [
        "SELECT ssn FROM users",
        "SELECT * FROM users",
        "TABLE users",
        "SELECT u.* FROM users u",
        "SELECT u FROM users u",
        "SELECT row_to_json(u) FROM users u",
        "SELECT to_jsonb(users) FROM users",
        "SELECT (u).ssn FROM users u",
        "SELECT id FROM users WHERE ssn LIKE '078%'",
        "SELECT id FROM users ORDER BY ssn",
        "SELECT c FROM users AS x(a, b, c)",
        "WITH u AS (SELECT * FROM users) SELECT ssn FROM u",
        "WITH u AS (SELECT ssn AS x FROM users) SELECT x FROM u",
        "SELECT * FROM (SELECT * FROM users) s",
        "SELECT id FROM users NATURAL JOIN orders",
        "SELECT (SELECT row_to_json(u.*)) FROM users u",
        "COPY users TO STDOUT",
    ] {
        let err = client.simple_query(sql).await.unwrap_err();
        let (code, message) = common::db_error(&err);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(
            message.contains("no-pii") && message.contains("PII columns are not available"),
            "{sql}: {message}"
        );
        assert!(client.query(sql, &[]).await.is_err(), "{sql}");
    }
    // Neighbours: the other columns, the table's row count, another table's ssn, and
    // a * over a query that only filters on users.
    for sql in [
        "SELECT id, name FROM users",
        "SELECT count(*) FROM users",
        "SELECT ssn FROM orders",
        "SELECT * FROM orders WHERE user_id IN (SELECT id FROM users)",
        "SELECT o.* FROM orders o JOIN users u ON u.id = o.user_id",
        "WITH u AS (SELECT id, name FROM users) SELECT * FROM u",
    ] {
        client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        client
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

#[tokio::test]
async fn mysql_column_rules_deny_the_column_in_any_form_and_allow_the_others() {
    let (_rules, line) = pii_rule();
    let gw = MyGateway::start_with(MySetup {
        grant_extra: line,
        ..MySetup::default()
    })
    .await;
    let mut direct = gw.db.direct().await;
    direct
        .query_drop("CREATE TABLE users (id INT, name TEXT, ssn TEXT)")
        .await
        .unwrap();
    direct
        .query_drop("CREATE TABLE orders (id INT, user_id INT, ssn TEXT)")
        .await
        .unwrap();
    let mut conn = gw.agent().await;
    for sql in [
        "SELECT ssn FROM users",
        "SELECT `SSN` FROM `users`",
        "SELECT * FROM users",
        "TABLE users",
        "SELECT u.* FROM users u",
        "SELECT JSON_OBJECT('s', ssn) FROM users",
        "SELECT id FROM users JOIN orders USING (ssn)",
        "SELECT id FROM users NATURAL JOIN orders",
        "WITH u AS (SELECT * FROM users) SELECT ssn FROM u",
        "SELECT * FROM (SELECT * FROM users) s",
    ] {
        let err = conn.query_drop(sql).await.unwrap_err();
        let (_, message) = common::mysql::server_error(&err);
        assert!(message.contains("no-pii"), "{sql}: {message}");
        // Prepared too.
        assert!(conn.prep(sql).await.is_err(), "{sql}");
    }
    for sql in [
        "SELECT id, name FROM users",
        "SELECT COUNT(*) FROM users",
        "SELECT ssn FROM orders",
        "SELECT * FROM orders WHERE user_id IN (SELECT id FROM users)",
        "SELECT o.* FROM orders o JOIN users u ON u.id = o.user_id",
    ] {
        conn.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

#[tokio::test]
async fn a_broken_rule_file_stops_the_config_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("typo.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nid = \"pii\"\nmessage = \"no\"\ndeny = { colums = [\"users.ssn\"] }\n",
    )
    .unwrap();
    let files = common::GatewayFiles::write(Setup {
        grant_extra: format!("rules = [{:?}]", rules.display().to_string()),
        ..Setup::default()
    })
    .await;
    let err = sqlgate::config::Config::load(&files.config)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("typo.toml") && err.contains("colums") && err.contains("rules"),
        "{err}"
    );
    // The neighbour: a file that is only missing is named too.
    std::fs::remove_file(&rules).unwrap();
    let err = sqlgate::config::Config::load(&files.config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("typo.toml"), "{err}");
}

#[test]
fn the_shipped_rule_files_load() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("rules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    assert!(files.len() >= 2, "{files:?}");
    let set = sqlgate::policy::rules::RuleSet::load(&files, root).unwrap();
    assert!(set.rules.iter().any(|r| r.id == "no-sleep"));
}

#[tokio::test]
async fn rules_test_checks_expectations_and_fails_when_one_is_not_met() {
    let (_rules, line) = rule_files();
    let files = common::GatewayFiles::write(Setup {
        grant_extra: line,
        ..Setup::default()
    })
    .await;
    let tests = files.dir.path().join("expect.sql");
    std::fs::write(
        &tests,
        "-- expect: allow\nSELECT count(*) FROM items;\n\
         -- expect: deny no-sleep\nSELECT pg_sleep(1);\n\
         -- expect: deny no-payroll\nWITH s AS (SELECT * FROM salaries) SELECT 1 FROM s;\n\
         -- expect: deny\nDELETE FROM items;\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqlgate"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let config = files.config.to_str().unwrap();
    let (ok, out) = run(&[
        "rules",
        "test",
        "--config",
        config,
        "--connection",
        "reporting",
        "--file",
        tests.to_str().unwrap(),
    ]);
    assert!(ok && out.contains("4 of 4 expectation(s) met"), "{out}");
    assert!(out.contains("denied by rule \"no-payroll\""), "{out}");
    // A wrong expectation fails the run, naming the statement.
    std::fs::write(&tests, "-- expect: allow\nSELECT pg_sleep(1);\n").unwrap();
    let (ok, out) = run(&[
        "rules",
        "test",
        "--config",
        config,
        "--connection",
        "reporting",
        "--file",
        tests.to_str().unwrap(),
    ]);
    assert!(
        !ok && out.contains("FAILED") && out.contains("pg_sleep"),
        "{out}"
    );
    // --sql, without expectations: a report.
    let (ok, out) = run(&[
        "rules",
        "test",
        "--config",
        config,
        "--connection",
        "reporting",
        "--sql",
        "SELECT * FROM salaries; SELECT 1",
    ]);
    assert!(ok && out.contains("DENY") && out.contains("ALLOW"), "{out}");
}

/// A rule file holding only `[limits]`; returns its directory and the grant line.
fn limits_file(limits: &str) -> (tempfile::TempDir, String) {
    let (dir, _, line) = rule_file("limits.toml", &format!("[limits]\n{limits}\n"));
    (dir, line)
}

/// One rule file `name` holding `text`, in a fresh directory: the directory (kept for
/// the test's length), the file and the grant line that references it.
fn rule_file(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let line = format!("rules = [{:?}]", path.display().to_string());
    (dir, path, line)
}

#[tokio::test]
async fn postgres_max_rows_ends_a_result_past_the_limit_and_allows_one_at_it() {
    let (_rules, line) = limits_file("max_rows = 10");
    let gw = TestGateway::start_with(Setup {
        grant_extra: line,
        ..Setup::default()
    })
    .await;
    let client = gw.agent().await;
    // At the limit: every row arrives.
    let rows = client
        .query("SELECT generate_series(1, 10)", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 10);
    let err = client
        .simple_query("SELECT generate_series(1, 100000)")
        .await
        .unwrap_err();
    let (code, message) = common::db_error(&err);
    assert_eq!(code, "54000", "{message}");
    assert!(
        message.contains("max_rows = 10") && message.contains("limits.toml"),
        "{message}"
    );
    assert!(client.is_closed() || client.simple_query("SELECT 1").await.is_err());
    drop(client);
    let records = gw.audit().await;
    assert!(records.iter().any(|r| r["event"] == "statement.result"
        && r["status"] == "interrupted"
        && r["rows"].as_u64().is_some_and(|n| n <= 11)));
    assert!(records
        .iter()
        .any(|r| r["event"] == "session.ended" && r["ended_by"] == "limit"));
}

#[tokio::test]
async fn postgres_max_statements_denies_past_the_budget_on_both_protocol_paths() {
    let (_rules, line) = limits_file("max_statements = 3");
    let gw = TestGateway::start_with(Setup {
        grant_extra: line,
        ..Setup::default()
    })
    .await;
    let client = gw.agent().await;
    let statement = client.prepare("SELECT $1::int").await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    client.query(&statement, &[&1i32]).await.unwrap();
    client.query(&statement, &[&2i32]).await.unwrap();
    // The fourth: a new text is denied (the session goes on) ...
    let err = client.simple_query("SELECT 2").await.unwrap_err();
    let (code, message) = common::db_error(&err);
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("max_statements = 3"), "{message}");
    // ... and an Execute of a prepared statement ends the session.
    let err = client.query(&statement, &[&3i32]).await.unwrap_err();
    let (code, message) = common::db_error(&err);
    assert_eq!(code, "54000", "{message}");
    assert!(message.contains("max_statements = 3"), "{message}");
    // A new session has its own budget.
    let again = gw.agent().await;
    again.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn hours_refuse_logins_outside_the_window_and_allow_them_inside() {
    let today = {
        let days = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 86_400) as usize;
        ["thu", "fri", "sat", "sun", "mon", "tue", "wed"][days % 7]
    };
    let other_days: Vec<&str> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .into_iter()
        .filter(|d| *d != today)
        .collect();
    let (_rules, line) = limits_file(&format!(
        "[limits.hours]\ndays = {other_days:?}\nfrom = \"00:00\"\nuntil = \"24:00\""
    ));
    let gw = TestGateway::start_with(Setup {
        grant_extra: line,
        ..Setup::default()
    })
    .await;
    let err = gw
        .connect("reporting", &gw.token(&["analytics-agents"]))
        .await
        .expect_err("outside the window");
    let (_, message) = common::db_error(&err);
    assert!(
        message.contains("only") && message.contains("limits.toml") && !message.contains(today),
        "{message}"
    );
    // The neighbour: a window that is open now.
    let (_rules, line) =
        limits_file("[limits.hours]\ndays = [\"mon-sun\"]\nfrom = \"00:00\"\nuntil = \"24:00\"");
    let gw = TestGateway::start_with(Setup {
        grant_extra: line,
        ..Setup::default()
    })
    .await;
    gw.agent().await.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn mysql_limits_hold_too() {
    let (_rules, line) = limits_file("max_rows = 10\nmax_statements = 6");
    let gw = MyGateway::start_with(MySetup {
        grant_extra: line,
        ..MySetup::default()
    })
    .await;
    let mut direct = gw.db.direct().await;
    direct
        .query_drop("CREATE TABLE numbers (n INT)")
        .await
        .unwrap();
    direct
        .query_drop("INSERT INTO numbers VALUES (1),(2),(3),(4),(5),(6),(7),(8),(9),(10),(11),(12)")
        .await
        .unwrap();
    let mut conn = gw.agent().await;
    let rows: Vec<i64> = conn
        .query("SELECT n FROM numbers WHERE n <= 10")
        .await
        .unwrap();
    assert_eq!(rows.len(), 10);
    let err = conn
        .query::<i64, _>("SELECT n FROM numbers")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_rows = 10"), "{err}");
    // A new session: six statements in all (the driver runs some of its own at
    // connect), then denials.
    let mut conn = gw.agent().await;
    let statement = conn.prep("SELECT ?").await.unwrap();
    let mut ran = 0;
    let err = loop {
        match conn.exec_first::<i64, _, _>(&statement, (ran,)).await {
            Ok(_) => ran += 1,
            Err(e) => break e,
        }
        assert!(ran <= 6, "ran past the budget");
    };
    assert!(ran >= 1, "the budget allowed nothing");
    assert!(err.to_string().contains("max_statements = 6"), "{err}");
    let err = conn.query_drop("SELECT 1").await.unwrap_err();
    assert!(err.to_string().contains("max_statements = 6"), "{err}");
}

#[tokio::test]
async fn allow_lists_admit_only_their_tables_on_postgres_and_mysql() {
    let (_dir, _, line) = rule_file("allow.toml", "[[rule]]\nid = \"items-only\"\nmessage = \"agents read the items table only\"\nallow = { tables = [\"items\"] }\n");
    let gw = TestGateway::start_with(Setup {
        grant_extra: line.clone(),
        ..Setup::default()
    })
    .await;
    gw.db
        .direct()
        .await
        .batch_execute("CREATE TABLE secrets (v text)")
        .await
        .unwrap();
    let client = gw.agent().await;
    for sql in [
        "SELECT count(*) FROM items",
        "WITH secrets AS (SELECT 1 AS v) SELECT * FROM secrets",
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'items'",
    ] {
        client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    for sql in [
        "SELECT * FROM secrets",
        "SELECT * FROM items WHERE name IN (SELECT v FROM secrets)",
        "WITH a AS (SELECT * FROM secrets), secrets AS (SELECT 1) SELECT * FROM a",
        "SET search_path = pg_catalog, public",
    ] {
        let err = client.simple_query(sql).await.unwrap_err();
        let (code, message) = common::db_error(&err);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains("items-only"), "{sql}: {message}");
    }

    let gw = MyGateway::start_with(MySetup {
        grant_extra: line,
        ..MySetup::default()
    })
    .await;
    gw.db
        .direct()
        .await
        .query_drop("CREATE TABLE secrets (v TEXT)")
        .await
        .unwrap();
    let mut conn = gw.agent().await;
    conn.query_drop("SELECT COUNT(*) FROM items").await.unwrap();
    let err = conn.query_drop("SELECT * FROM secrets").await.unwrap_err();
    assert!(
        common::mysql::server_error(&err).1.contains("items-only"),
        "{err}"
    );
}

#[tokio::test]
async fn other_sessions_statements_are_not_visible_but_their_sessions_are() {
    let gw = TestGateway::start().await;
    let client = gw.agent().await;
    for sql in [
        "SELECT query FROM pg_stat_activity",
        "SELECT * FROM pg_stat_activity",
        "SELECT a FROM pg_stat_activity AS a",
        "SELECT * FROM pg_stat_get_activity(NULL)",
    ] {
        let err = client.simple_query(sql).await.unwrap_err();
        let (code, message) = common::db_error(&err);
        assert_eq!(code, "42501", "{sql}: {message}");
    }
    client
        .simple_query("SELECT pid, state, backend_start FROM pg_stat_activity")
        .await
        .unwrap();
}

#[tokio::test]
async fn audit_effect_rules_let_statements_run_and_flag_their_records() {
    let (_dir, _, line) = rule_file("watch.toml", "[[rule]]\nid = \"items-watch\"\nmessage = \"reads of items are reviewed\"\neffect = \"audit\"\ndeny = { tables = [\"items\"] }\n");
    let gw = TestGateway::start_with(Setup {
        grant_extra: line.clone(),
        ..Setup::default()
    })
    .await;
    let client = gw.agent().await;
    client
        .simple_query("SELECT count(*) FROM items")
        .await
        .unwrap();
    client
        .query("SELECT count(*) FROM items WHERE id > $1", &[&0i32])
        .await
        .unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    let records = gw.audit().await;
    let statements: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["event"] == "statement")
        .collect();
    let flagged = |needle: &str| {
        statements.iter().any(|r| {
            r["statement"].as_str().is_some_and(|s| s.contains(needle))
                && r["flagged_by"] == serde_json::json!(["items-watch"])
        })
    };
    assert!(flagged("SELECT count(*) FROM items"), "{statements:?}");
    assert!(flagged("WHERE id > $1"), "{statements:?}");
    // The neighbour is not flagged.
    assert!(statements
        .iter()
        .any(|r| r["statement"] == "SELECT 1" && r.get("flagged_by").is_none()));

    let gw = MyGateway::start_with(MySetup {
        grant_extra: line,
        ..MySetup::default()
    })
    .await;
    let mut conn = gw.agent().await;
    let statement = conn.prep("SELECT COUNT(*) FROM items").await.unwrap();
    let _: Option<i64> = conn.exec_first(&statement, ()).await.unwrap();
    drop(conn);
    let records = gw.audit().await;
    assert!(records.iter().any(|r| r["event"] == "statement"
        && r["kind"] == "EXECUTE SELECT"
        && r["flagged_by"] == serde_json::json!(["items-watch"])));
}

/// The grant line `rule_files` returns for its directory.
fn line_of(dir: &tempfile::TempDir) -> String {
    format!(
        "rules = [{:?}, {:?}]",
        dir.path().join("no-sleep.toml").display().to_string(),
        dir.path().join("payroll.toml").display().to_string()
    )
}

#[tokio::test]
async fn rules_check_lists_each_grants_rules_and_fails_on_a_broken_file() {
    let (rules, line) = rule_files();
    let files = common::GatewayFiles::write(Setup {
        grant_extra: line,
        ..Setup::default()
    })
    .await;
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqlgate"))
            .args(["rules", "check", "--config"])
            .arg(&files.config)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = run();
    assert!(
        ok && out.contains("no-sleep") && out.contains("deny tables salaries"),
        "{out}"
    );
    // Every kind a rule can hold is listed: the shipped files have them all.
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let text = std::fs::read_to_string(&files.config).unwrap().replace(
        &line_of(&rules),
        &format!(
            "rules = [{:?}, {:?}]",
            shipped.join("large-tables.toml").display().to_string(),
            shipped
                .join("reporting-allowlist.toml")
                .display()
                .to_string()
        ),
    );
    std::fs::write(&files.config, text).unwrap();
    let (ok, out) = run();
    assert!(ok, "{out}");
    for needle in [
        "require a WHERE and a LIMIT of at most 1000 and join conditions on public.events",
        "allow reviewed functions reporting.current_quarter",
        "allow tables public.orders",
        "[effect audit: flag, do not deny]",
        "limit max_rows = 10000",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    let text = std::fs::read_to_string(&files.config).unwrap();
    let shipped_line = text
        .lines()
        .find(|l| l.starts_with("rules = "))
        .unwrap()
        .to_owned();
    std::fs::write(&files.config, text.replace(&shipped_line, &line_of(&rules))).unwrap();
    std::fs::write(
        rules.path().join("payroll.toml"),
        "[[rule]]\nid = \"x\"\nmessage = \"m\"\ndeny = { tabels = [\"a\"] }\n",
    )
    .unwrap();
    let (ok, out) = run();
    assert!(
        !ok && out.contains("payroll.toml") && out.contains("tabels") && out.contains("line"),
        "{out}"
    );
}

#[tokio::test]
async fn shape_rules_require_a_where_and_a_bounded_limit_on_postgres_and_mysql() {
    let (_dir, _, line) = rule_file("shape.toml", "[[rule]]\nid = \"items-bounded\"\nmessage = \"filter and bound reads of items\"\nrequire = { tables = [\"items\"], where = true, max_limit = 100 }\n");
    let gw = TestGateway::start_with(Setup {
        grant_extra: line.clone(),
        ..Setup::default()
    })
    .await;
    let client = gw.agent().await;
    for sql in [
        "SELECT * FROM items",
        "SELECT * FROM items WHERE id > 0",
        "SELECT * FROM items WHERE id > 0 LIMIT 1000",
    ] {
        let err = client.simple_query(sql).await.unwrap_err();
        let (code, message) = common::db_error(&err);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains("items-bounded"), "{sql}: {message}");
    }
    client
        .simple_query("SELECT * FROM items WHERE id > 0 LIMIT 100")
        .await
        .unwrap();
    // Same shape, a constant over the cap: the verdict is not taken from the cache.
    assert!(client
        .simple_query("SELECT * FROM items WHERE id > 1 LIMIT 101")
        .await
        .is_err());
    assert!(client
        .query(
            "SELECT * FROM items WHERE id > $1 LIMIT $2",
            &[&0i32, &5i64]
        )
        .await
        .is_err());

    let gw = MyGateway::start_with(MySetup {
        grant_extra: line,
        ..MySetup::default()
    })
    .await;
    let mut conn = gw.agent().await;
    let err = conn.query_drop("SELECT * FROM items").await.unwrap_err();
    assert!(
        common::mysql::server_error(&err)
            .1
            .contains("items-bounded"),
        "{err}"
    );
    conn.query_drop("SELECT * FROM items WHERE id > 0 LIMIT 10")
        .await
        .unwrap();
}

#[tokio::test]
async fn allow_list_grants_refuse_a_startup_search_path_and_user_functions() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, _, line) = rule_file("allow.toml", "[[rule]]\nid = \"items-only\"\nmessage = \"items only\"\nallow = { tables = [\"items\"] }\n");
    let gw = TestGateway::start_with(Setup {
        grant_extra: line.clone(),
        ..Setup::default()
    })
    .await;
    gw.db
        .direct()
        .await
        .batch_execute(
            "CREATE TABLE secrets (v text); \
             CREATE FUNCTION read_secrets() RETURNS bigint STABLE LANGUAGE sql AS 'SELECT count(*) FROM secrets'",
        )
        .await
        .unwrap();
    // A search_path in the startup packet would change what `items` means.
    let token = gw.token(&["analytics-agents"]);
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", gw.port()))
        .await
        .unwrap();
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [
            ("user", "agent-7"),
            ("database", "reporting"),
            ("search_path", "pg_catalog, other"),
        ],
        &mut out,
    )
    .unwrap();
    stream.write_all(&out).await.unwrap();
    let mut seen = Vec::new();
    let mut sent_password = false;
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&chunk[..n]);
        if !sent_password && seen.first() == Some(&b'R') {
            let mut out = bytes::BytesMut::new();
            postgres_protocol::message::frontend::password_message(token.as_bytes(), &mut out)
                .unwrap();
            stream.write_all(&out).await.unwrap();
            sent_password = true;
            seen.clear();
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("search_path refused") && text.contains("allow-list"),
        "{text}"
    );
    // A user function reads tables out of the list's sight; built-ins are fine.
    let client = gw.agent().await;
    let err = client
        .simple_query("SELECT read_secrets()")
        .await
        .unwrap_err();
    let (_, message) = common::db_error(&err);
    assert!(message.contains("user-defined"), "{message}");
    client
        .simple_query("SELECT lower(name) FROM items")
        .await
        .unwrap();
}

#[tokio::test]
async fn copy_to_stdout_counts_against_max_rows() {
    let (_rules, line) = limits_file("max_rows = 10");
    let gw = TestGateway::start_with(Setup {
        grant_extra: line,
        ..Setup::default()
    })
    .await;
    let client = gw.agent().await;
    let err = copy(&client, 1000).await.unwrap_err();
    let (code, message) = common::db_error(&err);
    assert_eq!(code, "54000", "{message}");
    assert!(message.contains("max_rows = 10"), "{message}");
    let client = gw.agent().await;
    assert_eq!(copy(&client, 10).await.unwrap(), 10);
}

/// Rows of a `COPY (SELECT generate_series(1, n)) TO STDOUT`.
async fn copy(client: &tokio_postgres::Client, n: u32) -> Result<usize, tokio_postgres::Error> {
    use futures_util::StreamExt;
    let sql = format!("COPY (SELECT generate_series(1, {n})) TO STDOUT");
    let stream = client.copy_out(sql.as_str()).await?;
    futures_util::pin_mut!(stream);
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        chunk?;
        chunks += 1;
    }
    Ok(chunks)
}

#[tokio::test]
async fn a_reviewed_volatile_function_may_be_called_and_its_neighbours_may_not() {
    let (_dir, path, line) = rule_file("reviewed.toml", "[[rule]]\nid = \"reviewed\"\nmessage = \"functions the DBA reviewed\"\nallow = { functions = [\"public.next_report_id\"] }\n");
    let gw = TestGateway::start_with(Setup {
        grant_extra: line.clone(),
        ..Setup::default()
    })
    .await;
    gw.db
        .direct()
        .await
        .batch_execute(
            "CREATE FUNCTION next_report_id() RETURNS int VOLATILE LANGUAGE sql AS 'SELECT 42'; \
             CREATE FUNCTION not_reviewed() RETURNS int VOLATILE LANGUAGE sql AS 'SELECT 7'",
        )
        .await
        .unwrap();
    let client = gw.agent().await;
    let rows = client.query("SELECT next_report_id()", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 42);
    let err = client
        .simple_query("SELECT not_reviewed()")
        .await
        .unwrap_err();
    let (code, message) = common::db_error(&err);
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("VOLATILE"), "{message}");
    // Denied built-ins stay denied whatever a list says; an entry without a schema is
    // refused when the file loads.
    std::fs::write(
        &path,
        "[[rule]]\nid = \"r\"\nmessage = \"m\"\nallow = { functions = [\"next_report_id\"] }\n",
    )
    .unwrap();
    let err = gw.gateway.reload(&gw.config).await.unwrap_err();
    assert!(err.contains("needs its schema"), "{err}");
}
