//! What the trail says about each statement, through the real gateway: one
//! `statement` record per execution (extended-protocol and prepared executions with
//! their bound parameters, or only their count when redacted), and one
//! `statement.result` per forwarded statement with status, duration, rows, bytes and
//! the upstream's error; who the principal was; why a session ended.

mod common;

use common::mysql::MyGateway;
use common::{Setup, TestGateway};
use mysql_async::prelude::Queryable;
use serde_json::Value;

/// The statement records of `session` whose text contains `needle`, each with its
/// result record.
fn executions<'a>(records: &'a [Value], needle: &str) -> Vec<(&'a Value, Option<&'a Value>)> {
    records
        .iter()
        .filter(|r| r["event"] == "statement")
        .filter(|r| r["statement"].as_str().is_some_and(|s| s.contains(needle)))
        .map(|stmt| {
            let result = records.iter().find(|r| {
                r["event"] == "statement.result"
                    && r["session_id"] == stmt["session_id"]
                    && r["statement_seq"] == stmt["statement_seq"]
            });
            (stmt, result)
        })
        .collect()
}

/// Every allowed statement has exactly one result record, after it in the trail, and
/// statement numbers run 1, 2, 3... per session.
fn assert_results_pair_up(records: &[Value]) {
    let mut next_seq: std::collections::HashMap<String, u64> = Default::default();
    for (i, r) in records.iter().enumerate() {
        if r["event"] != "statement" {
            continue;
        }
        let session = r["session_id"].as_str().unwrap().to_owned();
        let seq = r["statement_seq"].as_u64().expect("statement_seq");
        let expected = next_seq.entry(session).or_insert(0);
        *expected += 1;
        assert_eq!(seq, *expected, "statement numbers run in order: {r}");
        let results: Vec<usize> = records
            .iter()
            .enumerate()
            .filter(|(_, x)| {
                x["event"] == "statement.result"
                    && x["session_id"] == r["session_id"]
                    && x["statement_seq"] == r["statement_seq"]
            })
            .map(|(j, _)| j)
            .collect();
        if r["decision"] == "allow" {
            assert_eq!(results.len(), 1, "one result for {r}");
            assert!(results[0] > i, "the result follows its statement: {r}");
        } else {
            assert!(results.is_empty(), "a denied statement has no result: {r}");
        }
    }
}

#[tokio::test]
async fn postgres_executions_carry_parameters_and_results() {
    let gw = TestGateway::start().await;
    let mut request = gw.request(&["analytics-agents"]);
    request.scopes = vec!["db.read".into()];
    request.client_id = Some("agent-client".into());
    let token = request.mint(&gw.key).unwrap();
    let client = gw.connect("reporting", &token).await.unwrap();

    // The extended protocol: one record per execution, each with its parameters.
    let sql = "SELECT n FROM generate_series(1, $1::int) n /* series */";
    let statement = client.prepare(sql).await.unwrap();
    assert_eq!(client.query(&statement, &[&3i32]).await.unwrap().len(), 3);
    assert_eq!(client.query(&statement, &[&5i32]).await.unwrap().len(), 5);
    let text_param = "it's \u{e9}";
    client
        .query("SELECT $1::text /* echo */", &[&text_param])
        .await
        .unwrap();
    // Errors from the server, and what an error makes the server skip.
    let err = client.query("SELECT 1/0 /* div */", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22012");
    assert!(client
        .simple_query("SELECT 'first'; SELECT 1/0 AS second; SELECT 'third'")
        .await
        .is_err());
    // A denied statement: recorded, never run, no result.
    assert!(client.simple_query("DELETE FROM items").await.is_err());
    drop(client);
    let mut ended = false;
    for _ in 0..50 {
        if gw.ended_reasons().await.iter().any(|r| r == "client quit") {
            ended = true;
            break;
        }
    }
    assert!(ended, "{:?}", gw.ended_reasons().await);
    let records = gw.audit().await;
    assert_results_pair_up(&records);

    let series = executions(&records, "series");
    assert_eq!(series.len(), 2, "one record per execution, not per Parse");
    for ((stmt, result), (param, rows)) in
        series.iter().zip([("\\x00000003", 3), ("\\x00000005", 5)])
    {
        assert_eq!(stmt["decision"], "allow");
        assert_eq!(stmt["parameters"], serde_json::json!([param]), "{stmt}");
        assert_eq!(stmt["parameter_count"], 1);
        let result = result.expect("a result record");
        assert_eq!(result["status"], "ok", "{result}");
        assert_eq!(result["rows"], rows, "{result}");
        assert!(result["bytes"].as_u64().unwrap() > 20, "{result}");
        assert!(result["duration_ms"].as_f64().unwrap() >= 0.0, "{result}");
    }
    let echo = executions(&records, "echo");
    assert_eq!(
        echo[0].0["parameters"],
        serde_json::json!([text_param
            .as_bytes()
            .iter()
            .fold("\\x".to_string(), |s, b| s + &format!("{b:02x}"))])
    );

    let div = executions(&records, "div");
    let result = div[0].1.unwrap();
    assert_eq!(result["status"], "error");
    assert_eq!(result["error_code"], "22012");
    assert!(result["error_message"]
        .as_str()
        .unwrap()
        .contains("division by zero"));

    let [first, second, third] = ["'first'", "AS second", "'third'"].map(|n| {
        let found = executions(&records, n);
        assert!(!found.is_empty(), "{n}");
        found[found.len() - 1].1.expect("result")
    });
    assert_eq!(first["status"], "ok");
    assert_eq!(first["rows"], 1);
    assert_eq!(second["status"], "error");
    assert_eq!(second["error_code"], "22012");
    assert_eq!(third["status"], "not_run", "{third}");
    let denied = executions(&records, "DELETE FROM items");
    assert_eq!(denied[0].0["decision"], "deny");
    assert!(denied[0].1.is_none());

    // Who, and why the session ended.
    let grant = records
        .iter()
        .find(|r| r["event"] == "grant.issued")
        .unwrap();
    assert_eq!(grant["scopes"], serde_json::json!(["db.read"]));
    assert_eq!(grant["client_id"], "agent-client");
    assert!(grant["token_id"].as_str().unwrap().starts_with("AT."));
    assert_eq!(grant["issuer"], gw.issuer.url.as_str());
    assert_eq!(
        grant["upstream"],
        format!("127.0.0.1:5432/{}", gw.db.name).as_str()
    );
    let ended = records
        .iter()
        .find(|r| r["event"] == "session.ended")
        .unwrap();
    assert_eq!(ended["ended_by"], "client_quit");
}

#[tokio::test]
async fn redacted_parameters_keep_only_their_count() {
    let gw = TestGateway::start_with(Setup {
        audit_extra: "redact_parameters = true".into(),
        ..Setup::default()
    })
    .await;
    let client = gw.agent().await;
    client
        .query(
            "SELECT $1::text, $2::int /* secret */",
            &[&"hunter2", &7i32],
        )
        .await
        .unwrap();
    drop(client);
    let records = gw.audit().await;
    let found = executions(&records, "secret");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0["parameter_count"], 2);
    assert!(found[0].0.get("parameters").is_none(), "{}", found[0].0);
    let text = std::fs::read_to_string(gw.audit_dir.join("audit.jsonl")).unwrap();
    assert!(!text.contains("hunter2") && !text.contains(&hex("hunter2")));
    // The neighbour: without the switch, values are kept (the test above).
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn mysql_executions_carry_parameters_and_results() {
    let gw = MyGateway::start().await;
    let mut conn = gw.agent().await;
    let rows: Vec<u32> = conn
        .query("SELECT seq FROM (SELECT 1 AS seq UNION SELECT 2 UNION SELECT 3) t /* three */")
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let got: Option<(i64, String)> = conn
        .exec_first(
            "SELECT ? + 1, CONCAT(?, '!') /* prepared */",
            (41i64, "caf\u{e9}"),
        )
        .await
        .unwrap();
    assert_eq!(got, Some((42, "caf\u{e9}!".into())));
    let err = conn
        .query_drop("SELECT * FROM no_such_table /* missing */")
        .await
        .unwrap_err();
    assert_eq!(common::mysql::server_error(&err).0, 1146);
    assert!(conn
        .query_drop("SELECT 'one'; SELECT * FROM no_such_table AS two; SELECT 'three'")
        .await
        .is_err());
    drop(conn);
    assert!(gw.ended_with(|r| r.contains("client")).await);
    let records = gw.audit().await;
    assert_results_pair_up(&records);

    let three = executions(&records, "three");
    let result = three[0].1.unwrap();
    assert_eq!(result["status"], "ok");
    assert_eq!(result["rows"], 3);
    assert!(result["bytes"].as_u64().unwrap() > 20);

    // Preparing runs nothing: the execution is the record.
    let prepared = executions(&records, "prepared");
    assert_eq!(prepared.len(), 1);
    assert_eq!(prepared[0].0["kind"], "EXECUTE SELECT");
    assert_eq!(
        prepared[0].0["parameters"],
        serde_json::json!(["41", "caf\u{e9}"]),
        "{}",
        prepared[0].0
    );
    assert_eq!(prepared[0].1.unwrap()["rows"], 1);

    let missing = executions(&records, "missing")[0].1.unwrap();
    assert_eq!(missing["status"], "error");
    assert_eq!(missing["error_code"], "1146");
    let [one, two, three] = ["'one'", "AS two", "'three'"].map(|n| {
        let found = executions(&records, n);
        assert!(!found.is_empty(), "{n}");
        found[found.len() - 1].1
    });
    assert_eq!(one.unwrap()["status"], "ok");
    assert_eq!(two.unwrap()["error_code"], "1146");
    assert_eq!(three.unwrap()["status"], "not_run");
}

#[tokio::test]
async fn a_pipeline_longer_than_the_in_flight_cap_is_answered_and_recorded() {
    // More statements in flight than one session may hold (16,384): the relay stops
    // reading the client until answers free places, and every statement still runs,
    // answered and recorded in order.
    let gw = TestGateway::start().await;
    let client = gw.agent().await;
    let n = 20_000;
    let queries = (0..n).map(|i| {
        let client = &client;
        async move {
            let rows = client
                .query_one("SELECT $1::int + 0 /* pipelined */", &[&i])
                .await
                .unwrap();
            rows.get::<_, i32>(0)
        }
    });
    let answers = futures_util::future::join_all(queries).await;
    assert_eq!(answers.len(), n as usize);
    assert!(answers.iter().enumerate().all(|(i, v)| *v == i as i32));
    drop(client);
    gw.gateway.services.audit.sync().await.unwrap();
    let records = gw.audit().await;
    let ok = records
        .iter()
        .filter(|r| r["event"] == "statement.result" && r["status"] == "ok")
        .count();
    assert_eq!(ok, n as usize);
}

mod raw_extended {
    //! Red-team findings on the Postgres extended protocol: the trail must never name a
    //! statement other than the one the server ran.
    use super::*;
    use bytes::BytesMut;
    use common::Raw;
    use postgres_protocol::message::frontend;

    fn parse(name: &str, text: &str, out: &mut BytesMut) {
        frontend::parse(name, text, std::iter::empty(), out).unwrap();
    }

    pub(super) fn bind_execute(portal: &str, statement: &str, out: &mut BytesMut) {
        frontend::bind(
            portal,
            statement,
            std::iter::empty::<i16>(),
            std::iter::empty::<Option<&[u8]>>(),
            |_: Option<&[u8]>, _: &mut BytesMut| Ok(postgres_protocol::IsNull::Yes),
            [0i16],
            out,
        )
        .map_err(|_| "bind")
        .unwrap();
        frontend::execute(portal, 0, out).unwrap();
    }

    fn sync(out: &mut BytesMut) {
        frontend::sync(out);
    }

    /// Sends `out`, reads to the `n`th ReadyForQuery; returns the DataRow bodies' text.
    async fn exchange(raw: &mut Raw, out: &[u8], n: usize) -> String {
        use tokio::io::AsyncWriteExt;
        raw.stream.write_all(out).await.unwrap();
        let mut seen = String::new();
        let mut ready = 0;
        while ready < n {
            let (tag, body) = raw.next().await;
            match tag {
                b'D' => seen.push_str(&String::from_utf8_lossy(&body[5..])),
                b'E' => seen.push_str(&format!("<E {}>", String::from_utf8_lossy(&body[5..]))),
                b'Z' => ready += 1,
                _ => {}
            }
        }
        seen
    }

    pub(super) async fn login(gw: &TestGateway) -> Raw {
        Raw::login(
            gw.port(),
            "agent-7",
            "reporting",
            Some(&gw.token(&["analytics-agents"])),
        )
        .await
    }

    /// The texts recorded for Executes whose answer carried `marker`.
    fn execute_records(records: &[Value], session_marker: &str) -> Vec<String> {
        let _ = session_marker;
        records
            .iter()
            .filter(|r| r["event"] == "statement" && r["decision"] == "allow")
            .filter_map(|r| r["statement"].as_str().map(str::to_owned))
            .collect()
    }

    #[tokio::test]
    async fn a_named_parse_over_an_existing_name_is_not_taken_for_what_runs() {
        let gw = TestGateway::start().await;
        let mut raw = login(&gw).await;
        let mut out = BytesMut::new();
        parse("s1", "SELECT 'secret-one'", &mut out);
        sync(&mut out);
        // The server refuses the second Parse (42P05) and keeps the first.
        parse("s1", "SELECT 'decoy-one'", &mut out);
        sync(&mut out);
        bind_execute("", "s1", &mut out);
        sync(&mut out);
        let seen = exchange(&mut raw, &out, 3).await;
        assert!(
            seen.contains("secret-one") && seen.contains("42P05"),
            "{seen}"
        );
        let texts = execute_records(&gw.audit().await, "");
        assert!(texts.iter().any(|t| t.contains("secret-one")), "{texts:?}");
        assert!(!texts.iter().any(|t| t.contains("decoy-one")), "{texts:?}");
    }

    #[tokio::test]
    async fn what_an_errored_batch_made_is_not_taken_for_what_runs() {
        let gw = TestGateway::start().await;
        let mut raw = login(&gw).await;
        let mut out = BytesMut::new();
        parse("", "SELECT 'secret-two'", &mut out);
        sync(&mut out);
        // An error first: the server skips the Parse that follows.
        bind_execute("", "no_such_statement", &mut out);
        parse("", "SELECT 'decoy-two'", &mut out);
        sync(&mut out);
        bind_execute("", "", &mut out);
        sync(&mut out);
        let seen = exchange(&mut raw, &out, 3).await;
        assert!(seen.contains("secret-two"), "{seen}");
        let texts = execute_records(&gw.audit().await, "");
        assert!(!texts.iter().any(|t| t.contains("decoy-two")), "{texts:?}");
    }

    #[tokio::test]
    async fn sql_level_prepare_is_not_taken_for_a_protocol_statement() {
        let gw = TestGateway::start().await;
        let mut raw = login(&gw).await;
        let mut out = BytesMut::new();
        parse("s1", "SELECT 'decoy-three'", &mut out);
        sync(&mut out);
        frontend::query(
            "DEALLOCATE s1; PREPARE s1 AS SELECT 'secret-three'",
            &mut out,
        )
        .unwrap();
        bind_execute("", "s1", &mut out);
        sync(&mut out);
        let seen = exchange(&mut raw, &out, 3).await;
        assert!(seen.contains("secret-three"), "{seen}");
        let records = gw.audit().await;
        let executes: Vec<&Value> = records
            .iter()
            .filter(|r| r["event"] == "statement" && r["kind"] == "EXECUTE")
            .collect();
        assert_eq!(executes.len(), 1, "{executes:?}");
        assert!(
            !executes[0]["statement"]
                .as_str()
                .unwrap()
                .contains("decoy-three"),
            "{}",
            executes[0]
        );
        // The text that ran is in the trail, from the PREPARE.
        assert!(records.iter().any(|r| r["statement"]
            .as_str()
            .is_some_and(|s| s.contains("secret-three"))));
    }

    #[tokio::test]
    async fn names_longer_than_the_server_compares_are_refused() {
        let gw = TestGateway::start().await;
        // The neighbour: a 63-byte name works.
        let mut raw = login(&gw).await;
        let name = "n".repeat(63);
        let mut out = BytesMut::new();
        parse(&name, "SELECT 'fine'", &mut out);
        bind_execute("", &name, &mut out);
        sync(&mut out);
        assert!(exchange(&mut raw, &out, 1).await.contains("fine"));
        // 64 bytes: the session ends with a clear error.
        let mut out = BytesMut::new();
        parse(&"n".repeat(64), "SELECT 1", &mut out);
        sync(&mut out);
        use tokio::io::AsyncWriteExt;
        raw.stream.write_all(&out).await.unwrap();
        let (tag, body) = raw.next().await;
        assert_eq!(tag, b'E');
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("54000") && text.contains("63 bytes"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_simple_query_inside_an_unfinished_batch_ends_the_session() {
        let gw = TestGateway::start().await;
        let mut raw = login(&gw).await;
        // The neighbour: Query after Sync.
        let mut out = BytesMut::new();
        parse("", "SELECT 1", &mut out);
        bind_execute("", "", &mut out);
        sync(&mut out);
        frontend::query("SELECT 'after-sync'", &mut out).unwrap();
        assert!(exchange(&mut raw, &out, 2).await.contains("after-sync"));
        let mut out = BytesMut::new();
        bind_execute("", "no_such_statement", &mut out);
        frontend::query("SELECT 1", &mut out).unwrap();
        use tokio::io::AsyncWriteExt;
        raw.stream.write_all(&out).await.unwrap();
        loop {
            let (tag, body) = raw.next().await;
            if tag == b'E' && String::from_utf8_lossy(&body).contains("08P01") {
                assert!(String::from_utf8_lossy(&body).contains("Sync"));
                break;
            }
        }
    }

    #[tokio::test]
    async fn an_error_too_large_to_hold_is_still_its_statements_ending() {
        let gw = TestGateway::start().await;
        let client = gw.agent().await;
        let err = client
            .simple_query("SELECT (repeat('x', 70000))::int AS big_error")
            .await
            .unwrap_err();
        assert_eq!(err.code().unwrap().code(), "22P02");
        drop(client);
        let records = gw.audit().await;
        let found = executions(&records, "big_error");
        let result = found[0].1.expect("a result");
        assert_eq!(result["status"], "error", "{result}");
        assert_eq!(result["error_code"], "22P02", "{result}");
    }
}

mod raw_extended_second_pass {
    //! Second red-team pass: every text the server may run is in the trail, and an
    //! Execute's record never names a statement the server did not run.
    use super::raw_extended::{bind_execute, login};
    use super::*;
    use bytes::BytesMut;
    use common::Raw;
    use postgres_protocol::message::frontend;
    use tokio::io::AsyncWriteExt;

    /// Reads to the `n`th ReadyForQuery (or the first ErrorResponse when `n` is 0);
    /// returns the DataRow text seen.
    async fn read(raw: &mut Raw, n: usize) -> String {
        let mut seen = String::new();
        let mut ready = 0;
        loop {
            let (tag, body) = raw.next().await;
            match tag {
                b'D' => seen.push_str(&String::from_utf8_lossy(&body[5..])),
                b'E' if n == 0 => return seen,
                b'Z' => {
                    ready += 1;
                    if ready == n {
                        return seen;
                    }
                }
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn messages_sent_after_an_error_is_seen_are_not_trusted() {
        let gw = TestGateway::start().await;
        let mut raw = login(&gw).await;
        let mut out = BytesMut::new();
        frontend::parse("", "SELECT 'vault-one'", std::iter::empty(), &mut out).unwrap();
        frontend::sync(&mut out);
        raw.stream.write_all(&out).await.unwrap();
        read(&mut raw, 1).await;
        // An error, seen by the client before the batch ends ...
        let mut out = BytesMut::new();
        frontend::describe(b'S', "no_such_statement", &mut out).unwrap();
        frontend::flush(&mut out);
        raw.stream.write_all(&out).await.unwrap();
        read(&mut raw, 0).await;
        // ... then a Parse the server skips, and an Execute of the old statement.
        let mut out = BytesMut::new();
        frontend::parse("", "SELECT 'decoy-one'", std::iter::empty(), &mut out).unwrap();
        frontend::sync(&mut out);
        bind_execute("", "", &mut out);
        frontend::sync(&mut out);
        raw.stream.write_all(&out).await.unwrap();
        let seen = read(&mut raw, 2).await;
        assert!(seen.contains("vault-one"), "{seen}");
        let records = gw.audit().await;
        let executes: Vec<&Value> = records
            .iter()
            .filter(|r| r["event"] == "statement" && r["decision"] == "allow")
            .collect();
        assert!(
            executes
                .iter()
                .all(|r| !r["statement"].as_str().unwrap().contains("decoy-one")),
            "{executes:?}"
        );
        // The text that ran is in the trail.
        assert!(records.iter().any(|r| r["event"] == "statement.prepared"
            && r["statement"]
                .as_str()
                .is_some_and(|s| s.contains("vault-one"))));
    }

    #[tokio::test]
    async fn sql_execute_of_a_protocol_statement_leaves_its_text_in_the_trail() {
        let gw = TestGateway::start().await;
        let mut raw = login(&gw).await;
        let mut out = BytesMut::new();
        frontend::parse("s1", "SELECT 'vault-two'", std::iter::empty(), &mut out).unwrap();
        frontend::sync(&mut out);
        frontend::query("EXECUTE s1", &mut out).unwrap();
        raw.stream.write_all(&out).await.unwrap();
        let seen = read(&mut raw, 2).await;
        assert!(seen.contains("vault-two"), "{seen}");
        let records = gw.audit().await;
        let prepared = records
            .iter()
            .find(|r| r["event"] == "statement.prepared")
            .expect("the Parse is recorded");
        assert_eq!(prepared["prepared_name"], "s1");
        assert!(prepared["statement"]
            .as_str()
            .unwrap()
            .contains("vault-two"));
    }

    #[tokio::test]
    async fn a_function_call_inside_an_unfinished_batch_ends_the_session() {
        let gw = TestGateway::start().await;
        let mut raw = login(&gw).await;
        let mut out = BytesMut::new();
        frontend::describe(b'S', "no_such_statement", &mut out).unwrap();
        // A FunctionCall message: function 0, no arguments, text result.
        out.extend_from_slice(&[b'F', 0, 0, 0, 14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        raw.stream.write_all(&out).await.unwrap();
        loop {
            let (tag, body) = raw.next().await;
            let text = String::from_utf8_lossy(&body).into_owned();
            if tag == b'E' && text.contains("08P01") {
                assert!(text.contains("FunctionCall"), "{text}");
                break;
            }
        }
    }
}
