//! Bounds and lifetimes through the real gateway (issue 12): nothing outlives its
//! session, limits the agent cannot lift, sessions are counted, memory is bounded.
//! Each attack next to its allowed neighbour; the lifetime tests look at
//! `pg_stat_activity` upstream.

mod common;

use std::time::{Duration, Instant};

use common::{admin, db_error, ended_with, unique, Setup, TestGateway};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Upstream backends of this test's database whose statement (running, or last run
/// if idle) contains `marker`.
async fn running(gw: &TestGateway, marker: &str) -> i64 {
    backends(gw, marker, false).await
}

async fn backends(gw: &TestGateway, marker: &str, active_only: bool) -> i64 {
    admin("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE '%' || $2 || '%' \
             AND pid <> pg_backend_pid() AND (state = 'active' OR NOT $3)",
            &[&gw.db.name, &marker, &active_only],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until `running(marker)` is `want`; returns how long that took.
async fn until_running(gw: &TestGateway, marker: &str, want: i64, secs: u64) -> Duration {
    let start = Instant::now();
    loop {
        let n = running(gw, marker).await;
        if n == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{n} backends still run {marker} after {secs}s (want {want})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A statement that sleeps, and one that scans for a long time, each marked.
fn long_statements(marker: &str) -> [String; 2] {
    [
        format!("SELECT pg_sleep(60), '{marker}'"),
        format!("SELECT count(*), '{marker}' FROM pg_attribute a, pg_attribute b, pg_class c"),
    ]
}

#[tokio::test]
async fn a_running_statement_ends_when_its_client_vanishes() {
    let gw = TestGateway::start().await;
    for sql in long_statements(&unique("vanish")) {
        let marker = sql.rsplit('\'').nth(1).unwrap().to_owned();
        let (client, conn) = gw.watched_agent().await;
        let query = tokio::spawn(async move {
            let _ = client.simple_query(&sql).await;
        });
        until_running(&gw, &marker, 1, 10).await;
        // The client vanishes mid-query: its socket closes without a Terminate.
        conn.abort();
        query.abort();
        let gone = until_running(&gw, &marker, 0, 5).await;
        assert!(gone < Duration::from_secs(3), "backend lived {gone:?}");
    }
    // The neighbour: a session that stays keeps its statement running.
    let marker = unique("stays");
    let client = gw.agent().await;
    let sql = format!("SELECT pg_sleep(1.5), '{marker}'");
    let query = tokio::spawn(async move { client.simple_query(&sql).await.map(|_| ()) });
    until_running(&gw, &marker, 1, 10).await;
    query.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_running_statement_ends_when_its_grant_expires() {
    let gw = TestGateway::start_with(Setup {
        grant_ttl: "3s",
        ..Setup::default()
    })
    .await;
    for sql in long_statements(&unique("expire")) {
        let marker = sql.rsplit('\'').nth(1).unwrap().to_owned();
        let client = gw.agent().await;
        let query = tokio::spawn(async move { client.simple_query(&sql).await.map(|_| ()) });
        until_running(&gw, &marker, 1, 10).await;
        // tokio-postgres hands a FATAL to the pending query.
        let err = tokio::time::timeout(Duration::from_secs(10), query)
            .await
            .expect("the grant did not end the session")
            .unwrap()
            .unwrap_err();
        let (code, message) = db_error(&err);
        assert_eq!(code, "28000", "{message}");
        assert!(message.contains("expired"), "{message}");
        let gone = until_running(&gw, &marker, 0, 5).await;
        assert!(gone < Duration::from_secs(3), "backend lived {gone:?}");
    }
    assert!(gw
        .ended_reasons()
        .await
        .iter()
        .all(|r| r == "grant expired"));
}

#[tokio::test]
async fn the_grant_statement_timeout_holds_whatever_the_agent_sets() {
    let gw = TestGateway::start_with(Setup {
        grant_extra: "statement_timeout = \"1s\"".into(),
        ..Setup::default()
    })
    .await;
    let client = gw.agent().await;
    // pg_dump's settings stay allowed; they cannot lift the grant's limit.
    client
        .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0")
        .await
        .unwrap();
    let marker = unique("timeout");
    let started = Instant::now();
    let err = client
        .simple_query(&format!("SELECT pg_sleep(30), '{marker}'"))
        .await
        .unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "57014", "{message}");
    assert!(message.contains("statement_timeout (1s)"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(backends(&gw, &marker, true).await, 0);
    // The extended protocol too.
    let err = client.query("SELECT pg_sleep(30)", &[]).await.unwrap_err();
    assert_eq!(db_error(&err).0, "57014");
    // The neighbours: the session goes on, and a statement under the limit runs.
    client.simple_query("SELECT pg_sleep(0.3)").await.unwrap();
    let row = client.query_one("SELECT 41 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

#[tokio::test]
async fn idle_in_a_transaction_past_the_grant_limit_ends_the_session() {
    let gw = TestGateway::start_with(Setup {
        grant_extra: "idle_in_transaction_timeout = \"1s\"".into(),
        ..Setup::default()
    })
    .await;
    // The neighbour first: idle outside a transaction is fine, and so is a
    // transaction that keeps working.
    let client = gw.agent().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client.simple_query("BEGIN").await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.simple_query("SELECT 1").await.unwrap();
    }
    client.simple_query("COMMIT").await.unwrap();

    let (client, conn) = gw.watched_agent().await;
    client.simple_query("BEGIN").await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let (code, message) = ended_with(conn, 5).await;
    assert_eq!(code, "25P03", "{message}");
    assert!(
        message.contains("idle_in_transaction_timeout (1s)"),
        "{message}"
    );
    assert!(gw
        .ended_reasons()
        .await
        .iter()
        .any(|r| r.contains("idle in transaction")));
}

#[tokio::test]
async fn settings_that_size_server_memory_are_capped() {
    let gw = TestGateway::start_with(Setup {
        limits: "[limits.setting_caps]\nwork_mem = \"32MB\"\n".into(),
        ..Setup::default()
    })
    .await;
    let client = gw.agent().await;
    for sql in [
        "SET work_mem = '1TB'",
        "SET work_mem = '33MB'",
        "SET work_mem = 10000000",
        "SET work_mem = '0x7fffffff'",
        "SET LOCAL maintenance_work_mem = '10GB'",
        "SET temp_buffers = 1000000",
        "SET hash_mem_multiplier = 1000",
        "SET max_parallel_workers_per_gather = 64",
        "SELECT set_config('work_mem', '1TB', false)",
        "SET join_collapse_limit = 100",
        "SET jit_above_cost = 0",
        "SET parallel_setup_cost = 0",
    ] {
        let err = client.simple_query(sql).await.expect_err(sql);
        let (code, message) = db_error(&err);
        assert_eq!(code, "42501", "{sql}: {message}");
        // maintenance_work_mem and temp_buffers only matter to writes and are not
        // settable at all; the others are settable up to their cap.
        assert!(
            message.contains("cap")
                || message.contains("floor")
                || message.contains("not on the list"),
            "{sql}: {message}"
        );
    }
    let err = client
        .simple_query("SET work_mem = '1TB'")
        .await
        .unwrap_err();
    let hint = err
        .as_db_error()
        .and_then(|e| e.hint())
        .unwrap_or_default()
        .to_owned();
    assert!(hint.contains("limits.setting_caps"), "{hint}");
    for sql in [
        "SET work_mem = '32MB'",
        "SET work_mem = 1024",
        "SET max_parallel_workers_per_gather = 0",
        "SET join_collapse_limit = 8",
        "SET jit_above_cost = 1000000",
        "SELECT set_config('work_mem', '16MB', false)",
        "RESET work_mem",
    ] {
        client.simple_query(sql).await.expect(sql);
    }
    let row = client.query_one("SHOW work_mem", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "4MB");

    // Startup parameters are held to the same caps.
    let token = gw.token(&["analytics-agents"]);
    let reply = startup_with(gw.port(), &token, ("work_mem", "1TB")).await;
    assert!(
        reply.contains("42501") && reply.contains("cap of 32MB"),
        "{reply}"
    );
    let reply = startup_with(gw.port(), &token, ("work_mem", "16MB")).await;
    assert!(reply.starts_with('Z'), "{reply}");
}

/// Logs in with one extra startup parameter; returns the first ErrorResponse or
/// ReadyForQuery after the password, as its tag and text.
async fn startup_with(port: u16, token: &str, param: (&str, &str)) -> String {
    raw_startup(port, token, Some(param), 1 << 20).await.1
}

#[tokio::test]
async fn sessions_are_counted_per_identity_and_per_connection() {
    let gw = TestGateway::start_with(Setup {
        grant_extra: "max_sessions_per_identity = 2".into(),
        connection_extra: "max_sessions = 3".into(),
        ..Setup::default()
    })
    .await;
    let token = |sub: &str| {
        let mut request = gw.request(&["analytics-agents"]);
        request.subject = sub.into();
        request.mint(&gw.key).unwrap()
    };
    let a = token("agent-a");
    let first = gw.connect("reporting", &a).await.unwrap();
    let _second = gw.connect("reporting", &a).await.unwrap();
    let err = gw.connect("reporting", &a).await.unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "53300", "{message}");
    assert!(
        message.contains("max_sessions_per_identity = 2"),
        "{message}"
    );
    // Another identity has its own count, up to the connection's cap.
    let _b = gw.connect("reporting", &token("agent-b")).await.unwrap();
    let err = gw
        .connect("reporting", &token("agent-c"))
        .await
        .unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "53300", "{message}");
    assert!(message.contains("connection \"reporting\""), "{message}");
    // A closed session frees its slot.
    drop(first);
    let start = Instant::now();
    loop {
        match gw.connect("reporting", &a).await {
            Ok(_) => break,
            Err(_) if start.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("slot not freed: {e}"),
        }
    }
    let audit = gw.audit().await;
    assert!(audit.iter().any(|r| r["event"] == "grant.denied"
        && r["reason"]
            .as_str()
            .is_some_and(|m| m.contains("max_sessions_per_identity"))));
}

#[tokio::test]
async fn connections_that_have_not_logged_in_are_capped() {
    let gw = TestGateway::start_with(Setup {
        limits: "max_unauthenticated = 2\n".into(),
        ..Setup::default()
    })
    .await;
    let addr = ("127.0.0.1", gw.port());
    let silent1 = TcpStream::connect(addr).await.unwrap();
    let silent2 = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.first(), Some(&b'E'));
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains("53300") && text.contains("max_unauthenticated"),
        "{text}"
    );
    // The neighbour: once those leave, agents log in again.
    drop((silent1, silent2));
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.agent().await.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn audited_statement_text_is_cut_with_its_length_and_hash() {
    let gw = TestGateway::start_with(Setup {
        audit_extra: "max_statement_bytes = 1024".into(),
        ..Setup::default()
    })
    .await;
    let client = gw.agent().await;
    let ids: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
    let long = format!("DELETE FROM items WHERE id IN ({})", ids.join(","));
    let short = "SELECT 'short statement'";
    client.simple_query(&long).await.unwrap_err();
    client.simple_query(short).await.unwrap();
    let audit = gw.audit().await;
    let cut = audit
        .iter()
        .find(|r| {
            r["statement"]
                .as_str()
                .is_some_and(|s| s.starts_with("DELETE"))
        })
        .unwrap();
    assert_eq!(cut["decision"], "deny");
    assert_eq!(cut["statement"].as_str().unwrap().len(), 1024);
    assert_eq!(cut["statement_length"], long.len());
    assert_eq!(
        cut["statement_sha256"],
        sqlgate::audit::sha256_hex(long.as_bytes())
    );
    let whole = audit
        .iter()
        .find(|r| r["statement"] == short)
        .expect("short statements are recorded whole");
    assert!(whole.get("statement_length").is_none());
}

#[tokio::test]
async fn large_values_stream_through_and_large_statements_parse_off_the_workers() {
    let gw = TestGateway::start().await;
    let client = gw.agent().await;
    let n: i32 = 48 << 20;
    let row = client
        .query_one("SELECT repeat('x', $1)", &[&n])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0).len(), n as usize);
    // A large error streams through as well, and the session goes on.
    let err = client
        .simple_query("SELECT repeat('y', 200000)::int")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "22P02");
    // A 1 MiB IN list is parsed on the parser pool and allowed.
    let ids: Vec<String> = (0..150_000).map(|i| i.to_string()).collect();
    let sql = format!("SELECT count(*) FROM items WHERE id IN ({})", ids.join(","));
    assert!(sql.len() > 900_000);
    let rows = client.simple_query(&sql).await.unwrap();
    assert!(!rows.is_empty());
}

/// Sends a startup packet (with `param`, if any) and the token over a socket with
/// `recv_buffer` bytes of receive buffer; returns the socket and the first
/// ErrorResponse or ReadyForQuery, as its tag and text.
async fn raw_startup(
    port: u16,
    token: &str,
    param: Option<(&str, &str)>,
    recv_buffer: u32,
) -> (TcpStream, String) {
    use bytes::{Buf, BytesMut};
    use postgres_protocol::message::frontend;
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(recv_buffer).unwrap();
    let mut stream = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let mut params = vec![("user", "agent-7"), ("database", "reporting")];
    params.extend(param);
    let mut out = BytesMut::new();
    frontend::startup_message(params, &mut out).unwrap();
    frontend::password_message(token.as_bytes(), &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    loop {
        while buf.len() >= 5 && buf.len() > (&buf[1..5]).get_i32() as usize {
            let len = (&buf[1..5]).get_i32() as usize;
            let frame = buf.split_to(1 + len);
            if matches!(frame[0], b'E' | b'Z') {
                let text = format!(
                    "{}{}",
                    frame[0] as char,
                    String::from_utf8_lossy(&frame[5..])
                );
                return (stream, text);
            }
        }
        assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "closed");
    }
}

/// Logs in over a socket with `recv_buffer` bytes of receive buffer (a tiny one for
/// clients that stop reading).
async fn raw_login(port: u16, token: &str, recv_buffer: u32) -> TcpStream {
    let (stream, reply) = raw_startup(port, token, None, recv_buffer).await;
    assert!(reply.starts_with('Z'), "login failed: {reply}");
    stream
}

async fn send_query(stream: &mut TcpStream, sql: &str) {
    use tokio::io::AsyncWriteExt;
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query(sql, &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_cannot_hold_its_transaction_past_the_grant() {
    let gw = TestGateway::start_with(Setup {
        grant_ttl: "3s",
        ..Setup::default()
    })
    .await;
    let marker = unique("stalled");
    let token = gw.token(&["analytics-agents"]);
    let mut stalled = raw_login(gw.port(), &token, 4096).await;
    send_query(
        &mut stalled,
        &format!("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT repeat('x', 16777216), '{marker}'"),
    )
    .await;
    // Never read: the gateway's writes to this client block.
    until_running(&gw, &marker, 1, 10).await;
    let gone = until_running(&gw, &marker, 0, 12).await;
    assert!(gone < Duration::from_secs(8), "backend lived {gone:?}");
    assert!(gw
        .ended_reasons()
        .await
        .iter()
        .any(|r| r == "grant expired"));
    // The neighbour: a client that reads a large result gets all of it.
    let client = gw.agent().await;
    let row = client
        .query_one("SELECT length(repeat('x', 16777216))", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 16777216);
    drop(stalled);
}

#[tokio::test]
async fn denials_the_server_never_answers_cannot_pile_up() {
    use tokio::io::AsyncWriteExt;
    let gw = TestGateway::start().await;
    let token = gw.token(&["analytics-agents"]);
    let mut raw = raw_login(gw.port(), &token, 1 << 20).await;
    // A Bind of an unknown statement puts the server into skip-until-Sync; every
    // denied Parse after it is answered with a probe the server never answers.
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::bind(
        "",
        "nope",
        std::iter::empty::<i16>(),
        std::iter::empty::<Option<&[u8]>>(),
        |_: Option<&[u8]>,
         _: &mut bytes::BytesMut|
         -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
            Ok(postgres_protocol::IsNull::No)
        },
        Some(0),
        &mut out,
    )
    .map_err(|_| ())
    .unwrap();
    for _ in 0..5000 {
        postgres_protocol::message::frontend::parse(
            "",
            "DELETE FROM items",
            std::iter::empty(),
            &mut out,
        )
        .unwrap();
    }
    raw.write_all(&out).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut reply)).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains("54000") && text.contains("denied statements await"),
        "{text}"
    );
    // The neighbour: denials answered one by one never reach the bound.
    let client = gw.agent().await;
    for _ in 0..50 {
        assert!(client.simple_query("DELETE FROM items").await.is_err());
    }
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn a_statement_message_far_over_the_limit_is_refused_unread() {
    use tokio::io::AsyncWriteExt;
    let gw = TestGateway::start().await;
    let token = gw.token(&["analytics-agents"]);
    let mut raw = raw_login(gw.port(), &token, 1 << 20).await;
    // Only the header of a 200 MiB Query: the gateway must not wait for the body.
    let len: i32 = 200 << 20;
    let mut header = vec![b'Q'];
    header.extend_from_slice(&len.to_be_bytes());
    raw.write_all(&header).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut reply))
        .await
        .expect("refused from its header")
        .unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains("54000") && text.contains("max_statement_bytes"),
        "{text}"
    );
}
