//! The MySQL/MariaDB front end through a real driver (mysql_async) and the mariadb
//! CLI, against the local MariaDB, with an upstream user that could write: reads of
//! many shapes pass, writes and escapes are denied (each paired with an allowed
//! neighbour), tokens are checked, grants expire, statements time out.

mod common;

use std::time::{Duration, Instant};

use common::mysql::{assert_denied, server_error, MyGateway, MySetup};
use mysql_async::prelude::*;
use mysql_async::{Row, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_many_shapes_pass_through() {
    let gw = MyGateway::start().await;
    let mut conn = gw.agent().await;
    // NULLs, unicode, decimals, dates, JSON, BLOBs, in the text protocol.
    let rows: Vec<Row> = conn
        .query("SELECT id, name, price, made, doc, data FROM items ORDER BY id")
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let name: String = rows[2].get(1).unwrap();
    assert_eq!(name, "fíg ☃");
    let price: String = rows[0].get(2).unwrap();
    assert_eq!(price, "1.25");
    assert_eq!(rows[1].as_ref(3), Some(&Value::NULL));
    let blob: Vec<u8> = rows[0].get(5).unwrap();
    assert_eq!(blob, vec![0x00, 0xff, 0x10]);
    let doc: String = rows[0].get(4).unwrap();
    assert!(doc.contains("\"a\""), "{doc}");

    // Prepared statements with parameters of several types, executed twice.
    let stmt = conn
        .prep(
            "SELECT id, name FROM items WHERE id >= ? AND name <> ? AND price < ? AND (? IS NULL)",
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let rows: Vec<(i32, String)> = conn
            .exec(&stmt, (2, "x", 3.5_f64, Value::NULL))
            .await
            .unwrap();
        assert_eq!(rows, vec![(2, "pear".to_owned())]);
    }
    conn.close(stmt).await.unwrap();

    // A large result streams through.
    let n: Vec<u64> = conn
        .query(
            "WITH RECURSIVE d(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM d WHERE n < 199)
             SELECT a.n * 200 + b.n FROM d a JOIN d b WHERE a.n < 100",
        )
        .await
        .unwrap();
    assert_eq!(n.len(), 20000);
    let big: Option<String> = conn
        .query_first("SELECT REPEAT('x', 3000000)")
        .await
        .unwrap();
    assert_eq!(big.map(|s| s.len()), Some(3_000_000));

    // Session settings drivers send, transactions, SHOW, USE of the granted database.
    conn.query_drop("SET NAMES utf8mb4").await.unwrap();
    conn.query_drop("SET autocommit = 1, sql_mode = CONCAT(@@sql_mode, ',STRICT_TRANS_TABLES')")
        .await
        .unwrap();
    conn.query_drop("START TRANSACTION READ ONLY")
        .await
        .unwrap();
    let count: Option<i64> = conn
        .query_first("SELECT COUNT(*) FROM items")
        .await
        .unwrap();
    assert_eq!(count, Some(3));
    conn.query_drop("COMMIT").await.unwrap();
    let tables: Vec<String> = conn.query("SHOW TABLES").await.unwrap();
    assert!(tables.contains(&"items".to_owned()));
    conn.query_drop(format!("USE {}", gw.db.name))
        .await
        .unwrap();
    conn.ping().await.unwrap();
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_escapes_are_denied_and_their_neighbours_allowed() {
    let gw = MyGateway::start().await;
    let mut conn = gw.agent().await;
    let db = gw.db.name.clone();
    let denied: Vec<(String, &str)> = vec![
        (
            "INSERT INTO items (id, name) VALUES (9, 'x')".into(),
            "INSERT",
        ),
        ("UPDATE items SET price = 0".into(), "UPDATE"),
        ("DELETE FROM items".into(), "DELETE"),
        (
            "REPLACE INTO items (id, name) VALUES (1, 'x')".into(),
            "REPLACE",
        ),
        ("CREATE TABLE t2 (x INT)".into(), "denied"),
        ("DROP TABLE items".into(), "denied"),
        ("TRUNCATE TABLE items".into(), "denied"),
        (
            "SELECT * FROM items INTO OUTFILE '/tmp/sg_out.txt'".into(),
            "denied",
        ),
        (
            "SELECT name FROM items LIMIT 1 INTO DUMPFILE '/tmp/sg_dump.txt'".into(),
            "denied",
        ),
        (
            "LOAD DATA INFILE '/etc/passwd' INTO TABLE items".into(),
            "denied",
        ),
        ("SELECT LOAD_FILE('/etc/passwd')".into(), "load_file"),
        ("SELECT * FROM items FOR UPDATE".into(), "denied"),
        ("SELECT * FROM items LOCK IN SHARE MODE".into(), "denied"),
        ("SET GLOBAL max_connections = 1".into(), "denied"),
        ("SET SESSION TRANSACTION READ WRITE".into(), "denied"),
        ("START TRANSACTION READ WRITE".into(), "denied"),
        ("SET sql_mode = 'ANSI_QUOTES'".into(), "denied"),
        ("SET NAMES gbk".into(), "denied"),
        ("LOCK TABLES items READ".into(), "denied"),
        ("HANDLER items OPEN".into(), "denied"),
        ("XA START 'x'".into(), "denied"),
        ("CALL wipe_proc()".into(), "denied"),
        ("SELECT wipe()".into(), "wipe"),
        (format!("SELECT {db}.wipe()"), "wipe"),
        ("DO 1".into(), "denied"),
        ("SELEC 1".into(), "does not parse"),
        ("PREPARE s FROM 'DELETE FROM items'".into(), "denied"),
        ("SELECT user, password FROM mysql.user".into(), "mysql.user"),
        ("SELECT * FROM `mysql`.`global_priv`".into(), "global_priv"),
        ("USE mysql".into(), "denied"),
        ("FLUSH PRIVILEGES".into(), "denied"),
        (
            "SET STATEMENT sort_buffer_size = 100000 FOR DELETE FROM items".into(),
            "denied",
        ),
        // Hidden in a multi-statement, an executable comment, or behind `--x`
        // (not a comment in MySQL).
        ("SELECT 1; DELETE FROM items".into(), "DELETE"),
        (
            "SELECT 1 /*!50000 ; DELETE FROM items */".into(),
            "executable comment",
        ),
        (
            "SELECT 1 /*M! ; DELETE FROM items */".into(),
            "executable comment",
        ),
        ("SELECT 1 /*!50000 FOR UPDATE */".into(), "denied"),
        (
            "SELECT 1 /*M!, LOAD_FILE('/etc/passwd') */".into(),
            "load_file",
        ),
        ("SELECT 1 --x; DELETE FROM items".into(), "DELETE"),
    ];
    for (sql, why) in &denied {
        assert_denied(&mut conn, sql, why).await;
    }
    // The session is still usable after every denial.
    assert_eq!(gw.db.item_count().await, 3);

    // Neighbours that are allowed.
    let allowed = [
        "SELECT * FROM items",
        "SELECT name FROM items WHERE id = 1",
        "SELECT * FROM user",
        "SELECT 1--1",
        "SELECT 1 /*!50000 + 1 */",
        "SELECT /*+ MAX_EXECUTION_TIME(1000) */ id FROM items",
        "SELECT 'a\\';DELETE FROM items;--'",
        "SELECT \"a;DELETE\"",
        "SELECT 1 -- ; DELETE FROM items",
        "SELECT 1 # ; DELETE FROM items",
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        "SET STATEMENT sort_buffer_size = 100000 FOR SELECT * FROM items",
        "EXPLAIN SELECT * FROM items",
        "SHOW VARIABLES LIKE 'sql_mode'",
        "SELECT SLEEP(0)",
    ];
    for sql in allowed {
        conn.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql:?} should be allowed: {e}"));
    }
    let hidden: Option<String> = conn
        .query_first("SELECT 'a\\';DELETE FROM items;--'")
        .await
        .unwrap();
    assert_eq!(hidden.as_deref(), Some("a';DELETE FROM items;--"));

    // Prepared statements: a write cannot be prepared, an unknown id cannot run.
    let err = conn
        .prep("DELETE FROM items WHERE id = ?")
        .await
        .unwrap_err();
    assert_eq!(server_error(&err).0, 1227);
    assert_eq!(gw.db.item_count().await, 3);

    // Denials are in the audit trail with the protocol.
    let audit = gw.audit().await;
    assert!(audit.iter().any(|r| r["event"] == "statement"
        && r["decision"] == "deny"
        && r["protocol"] == "mysql"
        && r["statement"] == "DELETE FROM items"));
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_grants_are_checked_at_login() {
    let gw = MyGateway::start().await;
    let good = gw.token(&["analytics-agents"]);
    // The neighbour: the good token logs in.
    gw.connect("shop", &good)
        .await
        .unwrap()
        .disconnect()
        .await
        .unwrap();

    let cases = [
        ("shop", "not-a-token".to_owned(), "token rejected"),
        ("shop", gw.token(&["sales"]), "no grant"),
        ("nowhere", good.clone(), "nowhere"),
    ];
    for (db, token, why) in cases {
        let err = gw.connect(db, &token).await.expect_err("login must fail");
        let (code, message) = server_error(&err);
        assert_eq!(code, 1045, "{message}");
        assert!(
            message.contains(why),
            "{message:?} does not mention {why:?}"
        );
    }
    // A token signed by another key.
    let other = sqlgate::identity::dev_issuer::DevKey::generate().unwrap();
    let forged = gw.request(&["analytics-agents"]).mint(&other).unwrap();
    let err = gw.connect("shop", &forged).await.unwrap_err();
    assert_eq!(server_error(&err).0, 1045);

    // Without TLS the token is never asked for.
    let plain = gw
        .opts("shop", &good)
        .ssl_opts(None::<mysql_async::SslOpts>);
    let err = mysql_async::Conn::new(plain).await.unwrap_err();
    assert_eq!(server_error(&err).0, 3159, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_statement_ends_when_its_grant_expires() {
    let gw = MyGateway::start_with(MySetup {
        grant_ttl: "3s",
        ..MySetup::default()
    })
    .await;
    let mut conn = gw.agent().await;
    let started = Instant::now();
    let err = conn.query_drop("SELECT SLEEP(30)").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let (code, message) = server_error(&err);
    assert!(
        code == 1927 || message.contains("expired"),
        "{code} {message}"
    );
    // The statement was killed upstream: no thread of the held user still sleeps.
    let mut root = common::mysql::root().await;
    let mut still = 1i64;
    for _ in 0..50 {
        still = root
            .exec_first::<i64, _, _>(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ? AND INFO LIKE 'SELECT SLEEP%'",
                (gw.db.user.clone(),),
            )
            .await
            .unwrap()
            .unwrap_or(0);
        if still == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(still, 0, "the upstream statement outlived its grant");
    assert!(gw.ended_with(|s| s == "grant expired").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_stop_at_the_grant_statement_timeout() {
    let gw = MyGateway::start_with(MySetup {
        grant_extra: "statement_timeout = \"1s\"".into(),
        ..MySetup::default()
    })
    .await;
    let mut conn = gw.agent().await;
    let started = Instant::now();
    let result = conn.query_first::<i64, _>("SELECT SLEEP(20)").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    match result {
        Err(e) => assert!(matches!(server_error(&e).0, 1969 | 1317 | 3024), "{e}"),
        Ok(v) => assert_eq!(v, Some(1), "SLEEP returns 1 when interrupted"),
    }
    // The neighbour: the session goes on, and the agent cannot lift the limit.
    let one: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    assert_denied(&mut conn, "SET max_statement_time = 0", "statement").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mariadb_cli_connects_over_tls() {
    let gw = MyGateway::start().await;
    let token = gw.token(&["analytics-agents"]);
    let run = |sql: &'static str| {
        let port = gw.port().to_string();
        let token = token.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("mariadb")
                .args([
                    "--host=127.0.0.1",
                    &format!("--port={port}"),
                    "--user=agent-7",
                    "--ssl",
                    "--batch",
                    "--skip-column-names",
                    "-e",
                    sql,
                    "shop",
                ])
                .env("MYSQL_PWD", &token)
                .output()
        })
    };
    let out = match run("SELECT name FROM items ORDER BY id").await.unwrap() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("mariadb CLI not installed ({e}); skipping");
            return;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "apple\npear\nfíg ☃\n");
    let out = run("DELETE FROM items").await.unwrap().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1227"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(gw.db.item_count().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_the_gateway_does_not_relay_are_refused_and_the_session_goes_on() {
    use common::mysql::{err_code, RawMy};
    use sqlgate_mysql::command::*;
    use sqlgate_mysql::response::Expect;
    let gw = MyGateway::start_with(MySetup {
        allow_plaintext: true,
        ..MySetup::default()
    })
    .await;
    let token = gw.token(&["analytics-agents"]);
    let mut raw = RawMy::login(gw.port(), "shop", &token).await;
    // Commands that change identity, read the binlog, kill, shut down: refused (1047).
    for code in [COM_CHANGE_USER, 0x12, 0x0c, 0x08, 0x1e, 0xfa, 0x05, 0x06] {
        let answer = raw
            .command(&[code, b'x', 0, 0, 0, 0, 0, 0], Expect::One)
            .await;
        assert_eq!(err_code(&answer[0].payload), 1047, "command {code:#x}");
        ping(&mut raw).await;
    }
    // Prepared statements the gateway did not see prepared cannot run, nor cursors.
    let exec = [COM_STMT_EXECUTE, 1, 0, 0, 0, 0, 1, 0, 0, 0];
    assert_eq!(
        err_code(&raw.command(&exec, Expect::Results).await[0].payload),
        1243
    );
    let fetch = [COM_STMT_FETCH, 1, 0, 0, 0, 10, 0, 0, 0];
    assert_eq!(
        err_code(&raw.command(&fetch, Expect::One).await[0].payload),
        1227
    );
    // SEND_LONG_DATA and CLOSE of unknown ids have no answer: the next command is answered.
    raw.send(0, &[COM_STMT_SEND_LONG_DATA, 1, 0, 0, 0, 0, 0, b'x'])
        .await;
    raw.send(0, &[COM_STMT_CLOSE, 1, 0, 0, 0]).await;
    ping(&mut raw).await;
    // A statement prepared through the gateway runs; a denied one gets no id.
    let mut prepare = vec![COM_STMT_PREPARE];
    prepare.extend_from_slice(b"SELECT name FROM items WHERE id = 1");
    let answer = raw.command(&prepare, Expect::Prepare).await;
    let id = u32::from_le_bytes([
        answer[0].payload[1],
        answer[0].payload[2],
        answer[0].payload[3],
        answer[0].payload[4],
    ]);
    let mut exec = vec![COM_STMT_EXECUTE];
    exec.extend_from_slice(&id.to_le_bytes());
    exec.extend_from_slice(&[0, 1, 0, 0, 0]);
    let rows = raw.command(&exec, Expect::Results).await;
    assert_eq!(err_code(&rows[0].payload), 0);
    // The same execute with a cursor type is refused.
    exec[5] = 1;
    assert_eq!(
        err_code(&raw.command(&exec, Expect::Results).await[0].payload),
        1227
    );
    let mut prepare = vec![COM_STMT_PREPARE];
    prepare.extend_from_slice(b"DELETE FROM items");
    assert_eq!(
        err_code(&raw.command(&prepare, Expect::Prepare).await[0].payload),
        1227
    );

    // COM_INIT_DB: only the connection's database (or its sqlgate name).
    let mut init = vec![COM_INIT_DB];
    init.extend_from_slice(b"mysql");
    assert_eq!(
        err_code(&raw.command(&init, Expect::One).await[0].payload),
        1044
    );
    let mut init = vec![COM_INIT_DB];
    init.extend_from_slice(b"shop");
    assert_eq!(
        err_code(&raw.command(&init, Expect::One).await[0].payload),
        0
    );

    // Text that is not UTF-8 is refused, not converted.
    let answer = raw.command(b"\x03SELECT '\xff'", Expect::Results).await;
    assert_eq!(err_code(&answer[0].payload), 1227);

    // Pipelined: a write sent before the answer to the read before it is still decided.
    let mut two = Vec::new();
    two.extend_from_slice(b"\x03SELECT SLEEP(0.2)");
    raw.send(0, &two).await;
    raw.send(0, b"\x03DELETE FROM items").await;
    let first = raw.answer(Expect::Results).await;
    assert_eq!(err_code(&first[0].payload), 0);
    let second = raw.answer(Expect::Results).await;
    assert_eq!(err_code(&second[0].payload), 1227);
    assert_eq!(gw.db.item_count().await, 3);

    // COM_RESET_CONNECTION forgets prepared ids and pins the session again.
    assert_eq!(
        raw.command(&[COM_RESET_CONNECTION], Expect::One).await[0].payload[0],
        0
    );
    assert_eq!(
        err_code(&raw.command(&exec, Expect::Results).await[0].payload),
        1243
    );
    let ro = raw
        .command(b"\x03SELECT @@tx_read_only", Expect::Results)
        .await;
    assert!(
        ro.iter().any(|p| p.payload.as_ref() == b"\x011"),
        "read-only is pinned again"
    );
    ping(&mut raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_transaction_ends_at_its_limit() {
    let gw = MyGateway::start_with(MySetup {
        grant_extra: "idle_in_transaction_timeout = \"1s\"".into(),
        ..MySetup::default()
    })
    .await;
    // The neighbour: idle outside a transaction is fine.
    let mut conn = gw.agent().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    conn.query_drop("START TRANSACTION READ ONLY")
        .await
        .unwrap();
    conn.query_drop("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let err = conn.query_drop("SELECT 1").await.unwrap_err();
    assert!(
        err.to_string().contains("idle in transaction") || matches!(server_error(&err).0, 1927 | 0),
        "{err}"
    );
    assert!(gw.ended_with(|s| s.contains("idle in transaction")).await);
}

async fn ping(raw: &mut common::mysql::RawMy) {
    use sqlgate_mysql::response::Expect;
    let answer = raw
        .command(&[sqlgate_mysql::command::COM_PING], Expect::One)
        .await;
    assert_eq!(answer[0].payload[0], 0, "the session is still usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_over_16_mib_cross_the_gateway_both_ways() {
    // The server must allow a 17 MB row; raising the global limit is harmless to other tests.
    let mut root = common::mysql::root().await;
    root.query_drop("SET GLOBAL max_allowed_packet = 67108864")
        .await
        .unwrap();
    let _ = root.disconnect().await;
    let gw = MyGateway::start().await;
    let mut conn = gw.agent().await;
    // A 17 MB value arrives in continuation packets and is relayed intact.
    let big: Option<Vec<u8>> = conn
        .query_first("SELECT REPEAT('ab', 8500000)")
        .await
        .unwrap();
    let big = big.unwrap();
    assert_eq!(big.len(), 17_000_000);
    assert!(big.chunks(2).all(|c| c == b"ab"));
    // A 17 MB statement arrives in continuation packets and is refused by size, not
    // by a broken stream; the session goes on.
    let text = format!("SELECT '{}'", "x".repeat(17_000_000));
    let err = conn.query_drop(text).await.unwrap_err();
    let (code, message) = server_error(&err);
    assert_eq!(code, 1227, "{message}");
    assert!(message.contains("max_statement_bytes"), "{message}");
    let one: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_team_findings_stay_closed() {
    let gw = MyGateway::start().await;
    let mut conn = gw.agent().await;
    let other = format!("{}_other", gw.db.name);
    // 1. A setting that changes lexing must end its message, and REPLACE cannot turn a
    //    harmless-looking addition into a lexer mode.
    let hidden = "SELECT 'a\\'; SET SESSION TRANSACTION READ WRITE; INSERT INTO items (id, name) VALUES (666, 666); -- '";
    assert_denied(
        &mut conn,
        &format!("SET sql_mode = REPLACE(CONCAT(@@sql_mode, ',XNO_BACKSLASH_ESCAPES'), 'X', ''); {hidden}"),
        "sql_mode",
    )
    .await;
    assert_denied(&mut conn, "SET NAMES utf8mb4; SELECT 1", "last statement").await;
    assert_denied(
        &mut conn,
        "SET sql_mode = DEFAULT; SELECT 1",
        "last statement",
    )
    .await;
    conn.query_drop("SELECT 1; SET NAMES utf8mb4")
        .await
        .unwrap();
    conn.query_drop("SET sql_mode = REPLACE(@@sql_mode, 'STRICT_TRANS_TABLES', '')")
        .await
        .unwrap();
    assert_eq!(gw.db.item_count().await, 3);
    // 3. One database: other databases are out of reach however they are named.
    for sql in [
        format!("SELECT * FROM {other}.secret"),
        format!("SHOW TABLES FROM {other}"),
        format!("SHOW COLUMNS FROM secret FROM {other}"),
        format!("SHOW CREATE TABLE {other}.secret"),
        format!("DESCRIBE {other}.secret"),
        "SELECT * FROM performance_schema.threads".into(),
    ] {
        assert_denied(&mut conn, &sql, "database").await;
    }
    for sql in [
        "SHOW TABLES",
        "SHOW COLUMNS FROM items",
        "SHOW FULL COLUMNS FROM items",
        "SHOW CREATE TABLE items",
        "SELECT COUNT(*) FROM information_schema.TABLES",
    ] {
        conn.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql:?} should be allowed: {e}"));
    }
    conn.query_drop(format!("SHOW TABLES FROM {}", gw.db.name))
        .await
        .unwrap();
    // 4. The held account's password hash is not shown.
    assert_denied(&mut conn, "SHOW GRANTS", "denied").await;
    assert_denied(&mut conn, "SHOW CREATE USER CURRENT_USER()", "denied").await;
    // 5. A name that is a built-in elsewhere but a stored function here is denied.
    assert_denied(&mut conn, "SELECT format_bytes(1)", "stored function").await;
    let f: Option<String> = conn.query_first("SELECT FORMAT(1234.5, 1)").await.unwrap();
    assert_eq!(f.as_deref(), Some("1,234.5"));
    // 6. A view whose function turns the session read-write ends the session: the
    //    result set's EOF says the state changed, the gateway reads it back.
    let err = async {
        conn.query_drop("SELECT * FROM v_flip").await?;
        conn.query_drop("SELECT 1").await
    }
    .await
    .expect_err("the tripwire must end the session");
    let _ = err;
    assert!(
        gw.ended_with(|s| s.starts_with("tamper: tx_read_only"))
            .await,
        "{:?}",
        gw.audit().await
    );
    // 2. ... and its upstream connection is killed, not just closed.
    let mut root = common::mysql::root().await;
    let mut left = 1;
    for _ in 0..50 {
        left = root
            .exec_first::<i64, _, _>(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ?",
                (gw.db.user.clone(),),
            )
            .await
            .unwrap()
            .unwrap_or(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "upstream sessions outlived the ended session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_per_session_are_capped() {
    use common::mysql::{err_code, RawMy};
    use sqlgate_mysql::command::*;
    use sqlgate_mysql::response::Expect;
    let gw = MyGateway::start_with(MySetup {
        allow_plaintext: true,
        ..MySetup::default()
    })
    .await;
    let mut raw = RawMy::login(gw.port(), "shop", &gw.token(&["analytics-agents"])).await;
    let prepare = |i: usize| {
        let mut p = vec![COM_STMT_PREPARE];
        p.extend_from_slice(format!("SELECT {i}").as_bytes());
        p
    };
    let mut first = 0u32;
    for i in 0..256 {
        let answer = raw.command(&prepare(i), Expect::Prepare).await;
        assert_eq!(err_code(&answer[0].payload), 0, "prepare {i}");
        if i == 0 {
            first = u32::from_le_bytes([
                answer[0].payload[1],
                answer[0].payload[2],
                answer[0].payload[3],
                answer[0].payload[4],
            ]);
        }
    }
    let answer = raw.command(&prepare(256), Expect::Prepare).await;
    assert_eq!(err_code(&answer[0].payload), 1227);
    // The neighbour: closing one makes room.
    let mut close = vec![COM_STMT_CLOSE];
    close.extend_from_slice(&first.to_le_bytes());
    raw.send(0, &close).await;
    let answer = raw.command(&prepare(256), Expect::Prepare).await;
    assert_eq!(err_code(&answer[0].payload), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_the_token_comes_by_the_clear_text_switch_on_loopback_only_when_allowed() {
    let gw = MyGateway::start_with(MySetup {
        allow_plaintext: true,
        ..MySetup::default()
    })
    .await;
    let token = gw.token(&["analytics-agents"]);
    // The handshake announces mysql_native_password without TLS; the gateway switches
    // the driver to mysql_clear_password, which it must allow.
    let plain = gw
        .opts("shop", &token)
        .ssl_opts(None::<mysql_async::SslOpts>);
    let mut conn = mysql_async::Conn::new(plain.clone()).await.unwrap();
    let n: Option<i64> = conn
        .query_first("SELECT COUNT(*) FROM items")
        .await
        .unwrap();
    assert_eq!(n, Some(3));
    conn.disconnect().await.unwrap();
    let refused = mysql_async::Conn::new(plain.enable_cleartext_plugin(false))
        .await
        .expect_err("a driver that refuses clear text cannot log in");
    assert!(
        refused.to_string().to_lowercase().contains("clear"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_red_team_findings_stay_closed() {
    let gw = MyGateway::start().await;
    let mut conn = gw.agent().await;
    // SET STATEMENT ... FOR SET hides a lexer change from the last-statement rule.
    assert_denied(
        &mut conn,
        "SET STATEMENT sort_buffer_size = 100000 FOR SET NAMES utf8mb4; SELECT 1",
        "denied",
    )
    .await;
    assert_denied(
        &mut conn,
        "SET STATEMENT sort_buffer_size = 100000 FOR SET sql_mode = DEFAULT",
        "SET STATEMENT",
    )
    .await;
    // Fragments removed from a mode name can assemble ANSI.
    conn.query_drop("SET sql_mode = 'SIMULTANEOUS_ASSIGNMENT'")
        .await
        .unwrap();
    assert_denied(
        &mut conn,
        "SET sql_mode = REPLACE(REPLACE(REPLACE(@@sql_mode,'SIMULT',''),'EOUS_AS',''),'GNMENT','')",
        "sql_mode",
    )
    .await;
    assert_denied(
        &mut conn,
        "SET sql_mode = REPLACE(@@sql_mode, 'SIMULT', '')",
        "sql_mode",
    )
    .await;
    // The neighbour: removing one whole mode is fine.
    conn.query_drop("SET sql_mode = REPLACE(@@sql_mode, 'SIMULTANEOUS_ASSIGNMENT', '')")
        .await
        .unwrap();
    // Other agents' statements: every agent shares the held account.
    for sql in [
        "SHOW PROCESSLIST",
        "SHOW FULL PROCESSLIST",
        "SELECT ID, INFO FROM information_schema.PROCESSLIST",
        "SHOW ENGINE INNODB STATUS",
        "SHOW EXPLAIN FOR 1",
    ] {
        assert_denied(&mut conn, sql, "").await;
    }
    conn.query_drop("SELECT COUNT(*) FROM information_schema.COLUMNS")
        .await
        .unwrap();
    let one: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    assert_eq!(gw.db.item_count().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymysql_and_mysql_connector_python_connect_with_tls_only() {
    let gw = MyGateway::start().await;
    let token = gw.token(&["analytics-agents"]);
    let port = gw.port().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drivers/mysql_python.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([script, &port, "shop", &token])
            .output()
    })
    .await
    .unwrap()
    .expect("python3 (with pymysql and mysql-connector-python: .ci/run installs them)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("ok   ").count(), 4, "{text}");
    assert_eq!(gw.db.item_count().await, 3);
}
