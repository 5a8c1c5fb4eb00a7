//! `sqlgate audit sessions`, `replay` and `export` on a trail the real gateway wrote,
//! and `export` to Parquet and Arrow IPC on a hand-built trail with every kind of field.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMillisecondType, UInt64Type};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use common::TestGateway;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::json;

const SQLGATE: &str = env!("CARGO_BIN_EXE_sqlgate");

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(SQLGATE).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_and_replayed_as_text_and_a_self_contained_page() {
    let gw = TestGateway::start().await;
    let client = gw.agent().await;
    client.simple_query("SELECT 1").await.unwrap();
    client
        .simple_query("SELECT '<script>alert(1)</script>' AS x")
        .await
        .unwrap();
    assert!(client.simple_query("DELETE FROM items").await.is_err());
    drop(client);
    // A refused login is a session too (decision deny).
    assert!(gw.connect("reporting", "not-a-token").await.is_err());
    let mut session = String::new();
    for _ in 0..100 {
        let audit = gw.audit().await;
        if let Some(r) = audit.iter().find(|r| r["event"] == "session.ended") {
            session = r["session_id"].as_str().unwrap().to_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!session.is_empty(), "the session did not end");
    let dir = gw.audit_dir.to_str().unwrap();

    let (ok, out) = run(&["audit", "sessions", "--dir", dir]);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&session))
        .expect("the session is listed");
    assert!(
        line.contains("agent-7") && line.contains("reporting (postgres)"),
        "{line}"
    );
    assert!(
        line.contains(" allow ") && line.contains("client"),
        "{line}"
    );
    assert!(out.lines().any(|l| l.contains(" deny ")), "{out}");
    let (_, out) = run(&["audit", "sessions", "--dir", dir, "--decision", "allow"]);
    assert!(
        out.contains(&session) && !out.lines().any(|l| l.contains(" deny ")),
        "{out}"
    );
    let (_, out) = run(&["audit", "sessions", "--dir", dir, "--sub", "nobody"]);
    assert!(!out.contains(&session), "{out}");
    let (_, out) = run(&[
        "audit",
        "sessions",
        "--dir",
        dir,
        "--since",
        "2999-01-01T00:00:00Z",
    ]);
    assert!(!out.contains(&session), "{out}");

    let page = tempfile::NamedTempFile::new().unwrap();
    let (ok, out) = run(&[
        "audit",
        "replay",
        &session,
        "--dir",
        dir,
        "--html",
        page.path().to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("subject       agent-7"), "{out}");
    assert!(
        out.contains("DENY  DELETE") && out.contains("the grant is read-only"),
        "{out}"
    );
    assert!(out.contains("ALLOW SELECT         SELECT 1"), "{out}");
    let html = std::fs::read_to_string(page.path()).unwrap();
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "statement text is escaped"
    );
    assert!(
        !html.contains("<script>alert"),
        "statement text is never markup"
    );
    assert!(html.contains("class=\"deny\""));
    assert!(
        ["src=", "href=", "<link", "url(", "@import"]
            .iter()
            .all(|r| !html.contains(r)),
        "self-contained: nothing is loaded from elsewhere"
    );
    let (ok, out) = run(&["audit", "replay", "s-nope", "--dir", dir]);
    assert!(!ok && out.contains("no session"), "{out}");

    // Export: the matching sessions' records, in trail order, as JSON lines.
    let export = tempfile::NamedTempFile::new().unwrap();
    let path = export.path().to_str().unwrap();
    let (ok, out) = run(&[
        "audit",
        "export",
        "--dir",
        dir,
        "--out",
        path,
        "--decision",
        "allow",
    ]);
    assert!(ok && out.contains("exported"), "{out}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(export.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().all(|r| r["session_id"] == session.as_str()),
        "{lines:?}"
    );
    assert!(lines.iter().any(|r| r["statement"] == "DELETE FROM items"));
    // Exported lines are the trail's lines, byte for byte (they still hash to the chain).
    let trail = std::fs::read_to_string(gw.audit_dir.join("audit.jsonl")).unwrap();
    for line in std::fs::read_to_string(export.path()).unwrap().lines() {
        assert!(trail.lines().any(|l| l == line), "{line}");
    }
    let seqs: Vec<u64> = lines.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // The same export as Parquet: the real gateway's records, one row each, typed.
    let parquet = tempfile::NamedTempFile::new().unwrap();
    let (ok, out) = run(&[
        "audit",
        "export",
        "--dir",
        dir,
        "--out",
        parquet.path().to_str().unwrap(),
        "--format",
        "parquet",
        "--decision",
        "allow",
    ]);
    assert!(
        ok && out.contains(&format!("exported {} records", lines.len())),
        "{out}"
    );
    let rows = read_parquet(parquet.path());
    assert_eq!(rows.seq, seqs);
    assert!(rows
        .statement
        .iter()
        .any(|s| s.as_deref() == Some("DELETE FROM items")));
    assert!(rows.time.iter().all(Option::is_some), "{:?}", rows.time);
    assert_eq!(
        rows.groups[0].as_ref().map(Vec::len),
        lines[0]["groups"].as_array().map(Vec::len)
    );
}

/// The columns the tests look at, gathered from every batch of an export.
#[derive(Debug, Default)]
struct Rows {
    seq: Vec<u64>,
    prev: Vec<Option<String>>,
    line_sha256: Vec<String>,
    time: Vec<Option<i64>>,
    event: Vec<Option<String>>,
    session_id: Vec<Option<String>>,
    statement: Vec<Option<String>>,
    groups: Vec<Option<Vec<Option<String>>>>,
    parameters: Vec<Option<Vec<Option<String>>>>,
    rows: Vec<Option<u64>>,
    duration_ms: Vec<Option<f64>>,
    expires_at: Vec<Option<i64>>,
    lost_records: Vec<Option<u64>>,
}

/// `file_schema` is the schema the file declares; `batches` its rows.
fn gather(file_schema: SchemaRef, batches: impl IntoIterator<Item = RecordBatch>) -> Rows {
    // The file's schema is the documented one: names, types, nullability, metadata.
    let schema = sqlgate::audit::export::schema();
    assert_eq!(file_schema.fields(), schema.fields());
    assert_eq!(
        file_schema
            .metadata()
            .get("sqlgate.audit.schema")
            .map(String::as_str),
        Some("1")
    );
    let mut rows = Rows::default();
    for batch in batches {
        assert_eq!(batch.schema().fields(), schema.fields());
        let col = |name: &str| batch.column_by_name(name).unwrap().clone();
        let texts = |name: &str| -> Vec<Option<String>> {
            col(name)
                .as_string::<i32>()
                .iter()
                .map(|v| v.map(str::to_owned))
                .collect()
        };
        let lists = |name: &str| -> Vec<Option<Vec<Option<String>>>> {
            col(name)
                .as_list::<i32>()
                .iter()
                .map(|l| {
                    l.map(|l| {
                        l.as_string::<i32>()
                            .iter()
                            .map(|v| v.map(str::to_owned))
                            .collect()
                    })
                })
                .collect()
        };
        let times = |name: &str| -> Vec<Option<i64>> {
            col(name)
                .as_primitive::<TimestampMillisecondType>()
                .iter()
                .collect()
        };
        rows.seq
            .extend(col("seq").as_primitive::<UInt64Type>().values().iter());
        rows.prev.extend(texts("prev"));
        rows.line_sha256
            .extend(texts("line_sha256").into_iter().map(Option::unwrap));
        rows.time.extend(times("time"));
        rows.event.extend(texts("event"));
        rows.session_id.extend(texts("session_id"));
        rows.statement.extend(texts("statement"));
        rows.groups.extend(lists("groups"));
        rows.parameters.extend(lists("parameters"));
        rows.rows
            .extend(col("rows").as_primitive::<UInt64Type>().iter());
        rows.duration_ms
            .extend(col("duration_ms").as_primitive::<Float64Type>().iter());
        rows.expires_at.extend(times("expires_at"));
        rows.lost_records
            .extend(col("lost_records").as_primitive::<UInt64Type>().iter());
    }
    rows
}

fn read_parquet(path: &Path) -> Rows {
    let file = std::fs::File::open(path).unwrap();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let file_schema = builder.schema().clone();
    gather(file_schema, builder.build().unwrap().map(Result::unwrap))
}

fn read_arrow(path: &Path) -> Rows {
    let file = std::fs::File::open(path).unwrap();
    let reader = arrow_ipc::reader::FileReader::try_new(file, None).unwrap();
    gather(reader.schema(), reader.map(Result::unwrap))
}

/// Writes a hash-chained trail of hand-built records (with the fields of statement
/// results and bound parameters) into `dir`: the first `closed` records as a closed
/// segment, the rest as the active one.
fn write_trail(dir: &Path, records: &[serde_json::Value], closed: usize) {
    let mut prev = "0".repeat(64);
    let mut segment = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let mut record = record.clone();
        record["seq"] = json!(i + 1);
        record["prev"] = json!(prev);
        let line = serde_json::to_vec(&record).unwrap();
        prev = sqlgate::audit::sha256_hex(&line);
        segment.extend_from_slice(&line);
        segment.push(b'\n');
        if i + 1 == closed {
            std::fs::write(dir.join(format!("audit-{:020}.jsonl", i + 1)), &segment).unwrap();
            segment.clear();
        }
    }
    std::fs::write(dir.join("audit.jsonl"), &segment).unwrap();
}

fn hand_built_trail() -> Vec<serde_json::Value> {
    let who = json!({"sub": "agent-7", "connection": "reporting", "protocol": "postgres",
                     "client_addr": "127.0.0.1:50000", "grant_id": "g-1"});
    let with = |extra: serde_json::Value| {
        let mut r = who.clone();
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };
    vec![
        with(
            json!({"time": "2026-12-03T07:50:18.123Z", "event": "grant.issued", "session_id": "s-a",
                    "decision": "allow", "reason": "grant[0] matched on group analytics",
                    "groups": ["analytics", "ops"], "scopes": ["db.read"], "client_id": "c-1",
                    "token_id": "jti-1", "issuer": "https://idp.example/oauth2/default",
                    "upstream": "127.0.0.1:5432/reporting",
                    "expires_at": "2026-12-03T08:20:18.123Z"}),
        ),
        with(
            json!({"time": "2026-12-03T07:50:19.000Z", "event": "statement", "session_id": "s-a",
                    "decision": "allow", "kind": "SELECT", "statement": "SELECT $1, $2",
                    "statement_seq": 1, "parameters": ["42", null], "parameter_count": 2}),
        ),
        with(
            json!({"time": "2026-12-03T07:50:19.004Z", "event": "statement.result",
                    "session_id": "s-a", "statement_seq": 1, "status": "ok",
                    "duration_ms": 3.25, "rows": 1, "bytes": 120}),
        ),
        with(
            json!({"time": "2026-12-03T07:50:20.000Z", "event": "statement", "session_id": "s-a",
                    "decision": "deny", "reason": "the grant is read-only", "kind": "DELETE",
                    "statement": "DELETE FROM items", "statement_seq": 2}),
        ),
        with(
            json!({"time": "2026-12-03T07:50:21.000Z", "event": "session.ended",
                    "session_id": "s-a", "reason": "client quit", "ended_by": "client_quit"}),
        ),
        json!({"time": "2026-12-03T07:51:00.000Z", "event": "grant.denied", "session_id": "s-b",
               "sub": "intruder", "connection": "reporting", "protocol": "mysql",
               "client_addr": "10.0.0.9:4000", "decision": "deny", "reason": "no grant matches"}),
        json!({"time": "2026-12-03T07:51:30.000Z", "event": "trail.gap", "session_id": "-",
               "connection": "-", "protocol": "postgres", "client_addr": "-", "lost_records": 2}),
        // A record with fields of unexpected types: nulls in the export, not a failure.
        json!({"time": "not a time", "event": "grant.issued", "session_id": "s-c", "sub": "agent-9",
               "connection": "reporting", "protocol": "postgres", "client_addr": "-",
               "decision": "allow", "rows": "many", "groups": "analytics", "duration_ms": "slow"}),
    ]
}

const T_0750_18_123: i64 = 1_796_284_218_123;

#[test]
fn export_to_parquet_and_arrow_typed_filtered_and_tied_to_the_chain() {
    let trail = tempfile::tempdir().unwrap();
    write_trail(trail.path(), &hand_built_trail(), 5);
    let dir = trail.path().to_str().unwrap();
    let (ok, out) = run(&["audit", "verify", "--dir", dir]);
    assert!(ok && out.contains("OK: 8 records"), "{out}");
    // Not a terminal: no progress line, only the report.
    assert!(!out.contains('\r') && !out.contains("verifying:"), "{out}");

    let files = tempfile::tempdir().unwrap();
    let parquet = files.path().join("trail.parquet");
    let (ok, out) = run(&[
        "audit",
        "export",
        "--dir",
        dir,
        "--format",
        "parquet",
        "--out",
        parquet.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("exported 8 records of 3 sessions to"), "{out}");
    assert!(!out.contains('\r') && !out.contains("exporting:"), "{out}");
    let rows = read_parquet(&parquet);
    // Every record of every session, across both segments, in trail order, and the
    // trail's own records (the trail.gap), which belong to no session.
    assert_eq!(rows.seq, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    let events: Vec<&str> = rows.event.iter().map(|e| e.as_deref().unwrap()).collect();
    assert_eq!(
        events,
        [
            "grant.issued",
            "statement",
            "statement.result",
            "statement",
            "session.ended",
            "grant.denied",
            "trail.gap",
            "grant.issued"
        ]
    );
    assert_eq!(rows.time[0], Some(T_0750_18_123));
    assert_eq!(rows.time[2], Some(T_0750_18_123 + 881));
    assert_eq!(rows.expires_at[0], Some(T_0750_18_123 + 30 * 60 * 1000));
    assert_eq!(rows.expires_at[1], None);
    assert_eq!(
        rows.groups[0],
        Some(vec![Some("analytics".into()), Some("ops".into())])
    );
    assert_eq!(rows.groups[5], None);
    assert_eq!(rows.statement[1].as_deref(), Some("SELECT $1, $2"));
    assert_eq!(rows.parameters[1], Some(vec![Some("42".into()), None]));
    assert_eq!(rows.parameters[0], None);
    assert_eq!((rows.rows[2], rows.duration_ms[2]), (Some(1), Some(3.25)));
    assert_eq!((rows.rows[1], rows.duration_ms[1]), (None, None));
    // Unexpected types are nulls.
    assert_eq!(
        (
            rows.time[7],
            rows.rows[7],
            &rows.groups[7],
            rows.duration_ms[7]
        ),
        (None, None, &None, None)
    );
    // Each row ties back to the chain: a row's line hash is the next record's prev.
    assert_eq!(rows.prev[0].as_deref(), Some("0".repeat(64).as_str()));
    for k in 0..rows.seq.len() - 1 {
        if rows.seq[k] + 1 == rows.seq[k + 1] {
            assert_eq!(
                Some(&rows.line_sha256[k]),
                rows.prev[k + 1].as_ref(),
                "row {k}"
            );
        }
    }
    let trail_lines: Vec<String> = [
        trail.path().join(format!("audit-{:020}.jsonl", 5)),
        trail.path().join("audit.jsonl"),
    ]
    .iter()
    .flat_map(|p| {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    })
    .collect();
    assert_eq!(
        rows.line_sha256[7],
        sqlgate::audit::sha256_hex(trail_lines[7].as_bytes())
    );

    // Arrow IPC, with the session filters: the same rows as Parquet would have.
    let arrow = files.path().join("trail.arrow");
    let (ok, out) = run(&[
        "audit",
        "export",
        "--dir",
        dir,
        "--format",
        "arrow",
        "--out",
        arrow.to_str().unwrap(),
        "--sub",
        "agent-7",
    ]);
    assert!(
        ok && out.contains("exported 6 records of 1 sessions"),
        "{out}"
    );
    let agent = read_arrow(&arrow);
    assert_eq!(agent.seq, vec![1, 2, 3, 4, 5, 7]);
    assert_eq!(agent.line_sha256[..5], rows.line_sha256[..5]);
    assert_eq!(agent.lost_records[5], Some(2));
    assert_eq!(agent.parameters[1], Some(vec![Some("42".into()), None]));
    assert_eq!(agent.time[0], Some(T_0750_18_123));
    let (ok, out) = run(&[
        "audit",
        "export",
        "--dir",
        dir,
        "--format",
        "arrow",
        "--out",
        arrow.to_str().unwrap(),
        "--decision",
        "deny",
    ]);
    assert!(
        ok && out.contains("exported 2 records of 1 sessions"),
        "{out}"
    );
    let denied = read_arrow(&arrow);
    assert_eq!(denied.seq, vec![6, 7]);
    assert_eq!(
        denied.session_id,
        vec![Some("s-b".to_owned()), Some("-".to_owned())]
    );
    // Nothing matches: a valid, empty file.
    let (ok, out) = run(&[
        "audit",
        "export",
        "--dir",
        dir,
        "--format",
        "parquet",
        "--out",
        parquet.to_str().unwrap(),
        "--sub",
        "nobody",
    ]);
    assert!(
        ok && out.contains("exported 1 records of 0 sessions"),
        "{out}"
    );
    // Only the trail's own record.
    assert_eq!(read_parquet(&parquet).seq, vec![7]);
}

#[test]
fn export_refuses_an_unknown_format_and_the_trail_itself() {
    let trail = tempfile::tempdir().unwrap();
    write_trail(trail.path(), &hand_built_trail(), 0);
    let dir = trail.path().to_str().unwrap();
    let out_file = trail.path().join("trail.csv");
    let (ok, out) = run(&[
        "audit",
        "export",
        "--dir",
        dir,
        "--format",
        "csv",
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(r#"unknown export format "csv": use jsonl, parquet or arrow"#),
        "{out}"
    );
    assert!(!out_file.exists());
    // --out naming a file of the trail would truncate it: refused, the trail intact.
    let active = trail.path().join("audit.jsonl");
    let before = std::fs::read(&active).unwrap();
    let (ok, out) = run(&[
        "audit",
        "export",
        "--dir",
        dir,
        "--format",
        "parquet",
        "--out",
        active.to_str().unwrap(),
    ]);
    assert!(
        !ok && out.contains("is a file of the trail itself"),
        "{out}"
    );
    assert_eq!(std::fs::read(&active).unwrap(), before);
}
