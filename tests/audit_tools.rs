//! `sqlgate audit sessions` and `sqlgate audit replay` on a trail the real gateway
//! wrote.

mod common;

use std::process::Command;
use std::time::Duration;

use common::TestGateway;

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
    let (ok, out) = run(&[
        "audit", "export", "--dir", dir, "--out", path, "--format", "parquet",
    ]);
    assert!(!ok && out.contains("not available yet"), "{out}");
}
