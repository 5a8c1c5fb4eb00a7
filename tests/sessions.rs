//! Session behaviour: denials inside transactions and pipelines behave as Postgres
//! behaves after an error; grants expire mid-session; cancel reaches the right
//! backend; TLS is required unless loopback plaintext is configured; psql works.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{db_error, ended_with, Raw, Setup, TestGateway};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::NoTls;

#[tokio::test]
async fn denial_inside_a_transaction_aborts_it_like_any_error() {
    let gw = TestGateway::start().await;
    let c = gw.agent().await;
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
    let err = c.batch_execute("DELETE FROM items").await.unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    // As after any error: the transaction block is aborted until ROLLBACK.
    let err = c.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(db_error(&err).0, "25P02", "{err}");
    c.batch_execute("ROLLBACK").await.unwrap();
    // And the savepoint dance drivers do works across a denial.
    c.batch_execute("BEGIN; SAVEPOINT a").await.unwrap();
    assert!(c.batch_execute("UPDATE items SET price = 0").await.is_err());
    c.batch_execute("ROLLBACK TO SAVEPOINT a").await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    c.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn pipelined_queries_keep_their_order_around_a_denial() {
    let gw = TestGateway::start().await;
    let c = gw.agent().await;
    // tokio-postgres pipelines concurrent queries on one connection.
    let (a, b, d) = tokio::join!(
        c.query_one("SELECT 1::int4", &[]),
        c.execute("INSERT INTO items VALUES (9, 'x', 1)", &[]),
        c.query_one("SELECT 3::int4", &[]),
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(db_error(&b.unwrap_err()).0, "42501");
    assert_eq!(d.unwrap().get::<_, i32>(0), 3);
    // Prepared statements: the denied one never exists upstream.
    assert!(c.prepare("DELETE FROM items WHERE id = $1").await.is_err());
    let stmt = c
        .prepare("SELECT name FROM items WHERE id = $1")
        .await
        .unwrap();
    let name: String = c.query_one(&stmt, &[&2i32]).await.unwrap().get(0);
    assert_eq!(name, "pear");
}

/// One extended-protocol batch (Parse/Bind/Execute per statement, one Sync).
async fn raw_batch(
    port: u16,
    user: &str,
    dbname: &str,
    password: Option<&str>,
    statements: &[&str],
) -> Vec<char> {
    let mut raw = Raw::login(port, user, dbname, password).await;
    let mut out = BytesMut::new();
    for sql in statements {
        frontend::parse("", sql, std::iter::empty(), &mut out).unwrap();
        frontend::bind(
            "",
            "",
            std::iter::empty::<i16>(),
            std::iter::empty::<Option<i32>>(),
            |_: Option<i32>, _| {
                Ok::<_, Box<dyn std::error::Error + Sync + Send>>(postgres_protocol::IsNull::Yes)
            },
            Some(0),
            &mut out,
        )
        .map_err(|_| ())
        .unwrap();
        frontend::execute("", 0, &mut out).unwrap();
    }
    frontend::sync(&mut out);
    raw.round_trip(&out).await
}

#[tokio::test]
async fn function_call_messages_are_denied_and_the_session_goes_on() {
    let gw = TestGateway::start().await;
    let token = gw.token(&["analytics-agents"]);
    let mut raw = Raw::login(gw.port(), "agent-7", "reporting", Some(&token)).await;
    // FunctionCall: oid of pg_terminate_backend(int4), one text argument, text result.
    let mut out = BytesMut::new();
    let body: Vec<u8> = [
        &2096u32.to_be_bytes()[..],
        &0i16.to_be_bytes(),
        &1i16.to_be_bytes(),
        &1i32.to_be_bytes(),
        b"1",
        &0i16.to_be_bytes(),
    ]
    .concat();
    out.extend_from_slice(b"F");
    out.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
    out.extend_from_slice(&body);
    assert_eq!(raw.round_trip(&out).await, vec!['E', 'Z']);
    let mut out = BytesMut::new();
    frontend::query("SELECT 1", &mut out).unwrap();
    assert_eq!(raw.round_trip(&out).await, vec!['T', 'D', 'C', 'Z']);
    let audit = gw.audit().await;
    assert!(audit
        .iter()
        .any(|r| r["kind"] == "FunctionCall" && r["decision"] == "deny"));
}

#[tokio::test]
async fn extended_batch_with_a_denial_matches_postgres_after_an_error() {
    let gw = TestGateway::start().await;
    let token = gw.token(&["analytics-agents"]);
    let through_gateway = raw_batch(
        gw.port(),
        "agent-7",
        "reporting",
        Some(&token),
        &["SELECT 1", "DELETE FROM items", "SELECT 2"],
    )
    .await;
    // The same batch straight to Postgres, with a statement that fails at Parse.
    let direct = raw_batch(
        5432,
        &gw.db.role,
        &gw.db.name,
        None,
        &["SELECT 1", "SELEC 2", "SELECT 2"],
    )
    .await;
    assert_eq!(through_gateway, direct);
    // ParseComplete, BindComplete, DataRow, CommandComplete, Error, ReadyForQuery.
    assert_eq!(through_gateway, vec!['1', '2', 'D', 'C', 'E', 'Z']);
    assert_eq!(gw.db.item_count().await, 3);
}

#[tokio::test]
async fn grant_expiry_ends_a_live_idle_session() {
    let gw = TestGateway::start_with(Setup {
        grant_ttl: "2s",
        ..Default::default()
    })
    .await;
    let (client, conn) = gw.watched_agent().await;
    client.batch_execute("SELECT 1").await.unwrap();
    // The gateway sends FATAL while the session is idle; the driver sees the
    // connection end with that error.
    let (code, message) = ended_with(conn, 10).await;
    assert_eq!(code, "28000");
    assert!(message.contains("expired"), "{message}");
    assert!(client.batch_execute("SELECT 1").await.is_err());
    assert!(gw
        .ended_reasons()
        .await
        .contains(&"grant expired".to_owned()));
}

#[tokio::test]
async fn cancel_reaches_the_running_query() {
    let gw = TestGateway::start().await;
    let c = gw.agent().await;
    let cancel = c.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel_query(NoTls).await.unwrap();
    });
    let err = c.batch_execute("SELECT pg_sleep(20)").await.unwrap_err();
    canceller.await.unwrap();
    assert_eq!(db_error(&err).0, "57014", "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    c.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn plaintext_is_refused_unless_configured() {
    let gw = TestGateway::start_with(Setup {
        allow_plaintext: false,
        ..Default::default()
    })
    .await;
    let err = gw
        .connect("reporting", &gw.token(&["analytics-agents"]))
        .await
        .unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "28000");
    assert!(message.contains("requires TLS"), "{message}");
    // The neighbour: the same token over TLS, with psql.
    let out = psql(
        gw.port(),
        &gw.token(&["analytics-agents"]),
        "require",
        "SELECT name FROM items WHERE id = 3",
    )
    .await;
    assert_eq!(out.0.trim(), "fig", "{out:?}");
}

/// Runs psql off the runtime thread (the gateway runs on the same runtime).
async fn psql(port: u16, token: &str, sslmode: &str, sql: &str) -> (String, String) {
    let (token, sslmode, sql) = (token.to_owned(), sslmode.to_owned(), sql.to_owned());
    tokio::task::spawn_blocking(move || psql_blocking(port, &token, &sslmode, &sql))
        .await
        .unwrap()
}

fn psql_blocking(port: u16, token: &str, sslmode: &str, sql: &str) -> (String, String) {
    let out = Command::new("psql")
        .args([
            &format!("host=127.0.0.1 port={port} dbname=reporting user=agent-7 sslmode={sslmode}"),
            "-XAt",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", token)
        .output()
        .expect("psql");
    (
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test]
async fn psql_over_tls_reads_copies_and_is_denied_writes() {
    let gw = TestGateway::start().await;
    let token = gw.token(&["analytics-agents"]);
    let (out, _) = psql(gw.port(), &token, "require", "SELECT count(*) FROM items").await;
    assert_eq!(out.trim(), "3");
    let (out, _) = psql(
        gw.port(),
        &token,
        "require",
        "COPY (SELECT id FROM items ORDER BY id) TO STDOUT",
    )
    .await;
    assert_eq!(out.trim(), "1\n2\n3");
    let (_, err) = psql(gw.port(), &token, "require", "SELECT noisy()").await;
    assert!(err.contains("NOTICE:  hello from upstream"), "{err}");
    let (_, err) = psql(gw.port(), &token, "require", "DROP TABLE items").await;
    assert!(
        err.contains("sqlgate: DROP TABLE denied: the grant is read-only"),
        "{err}"
    );
    // Cursors inside a transaction.
    let (out, err) = psql(
        gw.port(),
        &token,
        "require",
        "BEGIN; DECLARE c CURSOR FOR SELECT name FROM items ORDER BY id; FETCH 2 FROM c; CLOSE c; COMMIT;",
    )
    .await;
    assert!(out.contains("apple\npear"), "{out} {err}");
}

#[tokio::test]
async fn statements_are_audited_without_secrets() {
    let gw = TestGateway::start().await;
    let c = gw.agent().await;
    c.batch_execute("SELECT 42").await.unwrap();
    let _ = c.batch_execute("DELETE FROM items").await;
    drop(c);
    let audit = gw.audit().await;
    let statements: Vec<&serde_json::Value> =
        audit.iter().filter(|r| r["event"] == "statement").collect();
    let allowed = statements
        .iter()
        .find(|r| r["statement"] == "SELECT 42")
        .unwrap();
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["sub"], "agent-7");
    assert!(allowed["grant_id"].as_str().unwrap().starts_with("g-"));
    let denied = statements
        .iter()
        .find(|r| r["statement"] == "DELETE FROM items")
        .unwrap();
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["kind"], "DELETE");
    assert_eq!(denied["reason"], "the grant is read-only");
}

#[tokio::test]
async fn shutdown_ends_sessions_with_57p01_and_records_it() {
    let gw = TestGateway::start().await;
    let (client, conn) = gw.watched_agent().await;
    client.batch_execute("SELECT 1").await.unwrap();
    gw.gateway.shutdown();
    assert_eq!(ended_with(conn, 5).await.0, "57P01");
    // No new connections are accepted.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(gw
        .connect("reporting", &gw.token(&["analytics-agents"]))
        .await
        .is_err());
    assert!(gw
        .ended_reasons()
        .await
        .contains(&"gateway shutting down".to_owned()));
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_login_timeout() {
    let gw = TestGateway::start_with(Setup {
        extra_config: String::new(),
        login_timeout: Some("1s"),
        ..Default::default()
    })
    .await;
    let mut silent = TcpStream::connect(("127.0.0.1", gw.port())).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0))), "{read:?}");
    // A client that does speak still gets in.
    gw.agent().await.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn psql_cancels_a_tls_session_over_a_plain_socket() {
    // libpq sends CancelRequest on a new connection without TLS, even when the session
    // itself uses TLS; the gateway must accept it there and reach the right backend.
    let gw = TestGateway::start_with(Setup {
        allow_plaintext: false,
        ..Default::default()
    })
    .await;
    let child = Command::new("psql")
        .args([
            &format!(
                "host=127.0.0.1 port={} dbname=reporting user=agent-7 sslmode=require",
                gw.port()
            ),
            "-XAt",
            "-c",
            "SELECT pg_sleep(20)",
        ])
        .env("PGPASSWORD", gw.token(&["analytics-agents"]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql");
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn gssenc_is_declined_and_bytes_smuggled_before_tls_are_refused() {
    let gw = TestGateway::start().await;
    // GSSENCRequest → 'N', then a normal startup on the same socket asks for a password.
    let mut s = TcpStream::connect(("127.0.0.1", gw.port())).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    let mut out = BytesMut::new();
    frontend::startup_message([("user", "agent-7"), ("database", "reporting")], &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], b'R');
    assert_eq!(
        &head[5..9],
        &3i32.to_be_bytes(),
        "AuthenticationCleartextPassword"
    );

    // SSLRequest with a StartupMessage in the same write: those bytes would be trusted
    // as if they came over TLS, so the gateway hangs up instead of answering 'S'.
    let mut s = TcpStream::connect(("127.0.0.1", gw.port())).await.unwrap();
    let mut out = BytesMut::from(&[0u8, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f][..]);
    frontend::startup_message([("user", "agent-7"), ("database", "reporting")], &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    // Closed (FIN, or RST if it had unread bytes) without a single byte of answer.
    assert!(read.is_ok(), "the gateway kept the connection open");
    assert!(rest.is_empty(), "{rest:?}");
}
