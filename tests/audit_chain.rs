//! The audit trail's hash chain: a trail the real gateway wrote verifies; an edited,
//! deleted, reordered, inserted or cut record is found and named; the chain continues
//! across a restart; a record torn by a crash is reported, never taken as valid.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestGateway;
use sqlgate::audit::verify::verify;
use sqlgate::audit::{AuditEvent, AuditLog, AuditRecord};

const SQLGATE: &str = env!("CARGO_BIN_EXE_sqlgate");

/// A trail written by the real gateway: grant, statements (allowed and denied), end.
async fn gateway_trail() -> (tempfile::TempDir, Vec<String>) {
    let gw = TestGateway::start().await;
    let client = gw.agent().await;
    for i in 0..5 {
        client.simple_query(&format!("SELECT {i}")).await.unwrap();
    }
    assert!(client.simple_query("DELETE FROM items").await.is_err());
    drop(client);
    gw.gateway.services.audit.sync().await.unwrap();
    let text = std::fs::read_to_string(gw.audit_dir.join("audit.jsonl")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("audit.jsonl"), &text).unwrap();
    let lines = text.lines().map(str::to_owned).collect();
    (dir, lines)
}

fn write_lines(dir: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(dir.join("audit.jsonl"), text).unwrap();
}

fn cli_verify(dir: &Path) -> (bool, String) {
    let out = Command::new(SQLGATE)
        .args(["audit", "verify", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn an_untouched_trail_verifies_and_every_kind_of_tampering_is_named() {
    let (dir, lines) = gateway_trail().await;
    assert!(lines.len() >= 7, "{lines:?}");
    let report = verify(dir.path()).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.records as usize, lines.len());
    assert_eq!(report.head.as_ref().map(|h| h.0), Some(lines.len() as u64));
    let (ok, out) = cli_verify(dir.path());
    assert!(ok && out.contains("OK:"), "{out}");

    // Each tampering, on a fresh copy: (what, the line the report must name).
    let edited = {
        let mut l = lines.clone();
        l[3] = l[3].replace("SELECT", "select");
        assert_ne!(l[3], lines[3]);
        (l, 5)
    };
    let deleted = {
        let mut l = lines.clone();
        l.remove(3);
        (l, 4)
    };
    let reordered = {
        let mut l = lines.clone();
        l.swap(3, 4);
        (l, 4)
    };
    let inserted = {
        let mut l = lines.clone();
        l.insert(4, lines[2].clone());
        (l, 5)
    };
    let cut = {
        let mut l = lines.clone();
        let half = l[3].len() / 2;
        l[3].truncate(half);
        (l, 4)
    };
    for (name, (tampered, line)) in [
        ("edited", edited),
        ("deleted", deleted),
        ("reordered", reordered),
        ("inserted", inserted),
        ("cut", cut),
    ] {
        write_lines(dir.path(), &tampered);
        let report = verify(dir.path()).unwrap();
        assert!(!report.ok(), "{name} was not detected");
        assert!(
            report.problems.iter().any(|p| p.line == line),
            "{name}: expected line {line} to be named: {:?}",
            report.problems
        );
        let (ok, out) = cli_verify(dir.path());
        assert!(!ok, "{name}: the CLI must fail");
        assert!(out.contains(&format!("line {line}")), "{name}: {out}");
    }
}

fn record(i: usize) -> AuditRecord {
    let mut rec = AuditRecord::new(AuditEvent::Statement, "s-test", "reporting", "127.0.0.1:1");
    rec.statement = Some(format!("SELECT {i}"));
    rec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_continues_across_restarts_and_a_torn_record_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = AuditLog::open(dir.path()).await.unwrap();
        for i in 0..3 {
            log.record_durable(record(i)).await.unwrap();
        }
    }
    {
        let log = AuditLog::open(dir.path()).await.unwrap();
        log.record_durable(record(3)).await.unwrap();
    }
    let report = verify(dir.path()).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.head.as_ref().map(|h| h.0), Some(4));

    // A crash mid-write leaves half a line: verify says so (it is not a record)...
    let path = dir.path().join("audit.jsonl");
    let mut text = std::fs::read(&path).unwrap();
    text.extend_from_slice(br#"{"seq":5,"prev":"ab","time":"2026-"#);
    std::fs::write(&path, &text).unwrap();
    let report = verify(dir.path()).unwrap();
    assert!(!report.ok());
    assert!(
        report.problems[0].what.contains("incomplete"),
        "{:?}",
        report.problems
    );
    // ...and the next gateway to open the trail records it, and the chain goes on.
    {
        let log = AuditLog::open(dir.path()).await.unwrap();
        log.record_durable(record(5)).await.unwrap();
    }
    let report = verify(dir.path()).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert_eq!(report.warnings[0].line, 5);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"event\":\"trail.torn\""));
    // A torn line that nothing reported stays a problem (the neighbour of the above).
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.retain(|l| !l.contains("trail.torn"));
    write_lines(dir.path(), &lines);
    assert!(!verify(dir.path()).unwrap().ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_rotate_by_size_and_the_chain_runs_across_them() {
    use sqlgate::audit::{closed_segments, Segments};
    let dir = tempfile::tempdir().unwrap();
    let segments = Segments {
        max_bytes: 2048,
        ..Segments::default()
    };
    {
        let log = AuditLog::open_with(dir.path(), segments.clone())
            .await
            .unwrap();
        for i in 0..60 {
            log.record_durable(record(i)).await.unwrap();
        }
    }
    // A restart continues the chain in the active segment.
    {
        let log = AuditLog::open_with(dir.path(), segments.clone())
            .await
            .unwrap();
        log.record_durable(record(60)).await.unwrap();
    }
    let closed = closed_segments(dir.path()).unwrap();
    assert!(closed.len() >= 5, "{closed:?}");
    for segment in &closed {
        assert!(std::fs::metadata(segment).unwrap().len() >= 2048);
    }
    let report = verify(dir.path()).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.records, 61);
    let (ok, out) = cli_verify(dir.path());
    assert!(ok, "{out}");

    // A segment removed from the middle is found, in the segment after it.
    let removed = closed[2].clone();
    let saved = std::fs::read(&removed).unwrap();
    std::fs::remove_file(&removed).unwrap();
    let report = verify(dir.path()).unwrap();
    assert!(!report.ok());
    assert_eq!(report.problems[0].file, closed[3]);
    assert_eq!(report.problems[0].line, 1);
    std::fs::write(&removed, saved).unwrap();
    assert!(verify(dir.path()).unwrap().ok());

    // Retention removes old closed segments; the trail then starts later, said as a warning.
    let keep = Segments {
        max_bytes: 2048,
        retention: Some(std::time::Duration::from_millis(1)),
        ..Segments::default()
    };
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    {
        let log = AuditLog::open_with(dir.path(), keep).await.unwrap();
        for i in 0..20 {
            log.record_durable(record(100 + i)).await.unwrap();
        }
    }
    assert!(closed_segments(dir.path()).unwrap().len() < closed.len());
    let report = verify(dir.path()).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert!(report
        .warnings
        .iter()
        .any(|w| w.what.contains("by retention")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_findings_on_the_trail_stay_closed() {
    use sqlgate::audit::{closed_segments, Segments};
    // A restart right after a rotation continues the chain from the newest closed
    // segment, and never replaces a segment.
    let dir = tempfile::tempdir().unwrap();
    let tiny = Segments {
        max_bytes: 1,
        ..Segments::default()
    };
    {
        let log = AuditLog::open_with(dir.path(), tiny.clone()).await.unwrap();
        for i in 0..3 {
            log.record_durable(record(i)).await.unwrap();
        }
    }
    {
        let log = AuditLog::open_with(dir.path(), tiny.clone()).await.unwrap();
        log.record_durable(record(3)).await.unwrap();
    }
    assert_eq!(closed_segments(dir.path()).unwrap().len(), 4);
    let report = verify(dir.path()).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.head.as_ref().map(|h| h.0), Some(4));

    // Removing the start of the trail is a problem unless retention says it cut there.
    let first = closed_segments(dir.path()).unwrap()[0].clone();
    std::fs::remove_file(&first).unwrap();
    let report = verify(dir.path()).unwrap();
    assert!(!report.ok(), "a removed first segment must not verify");
    assert!(
        report.problems[0].what.contains("no trail.pruned"),
        "{:?}",
        report.problems
    );

    let dir = tempfile::tempdir().unwrap();
    {
        let log = AuditLog::open(dir.path()).await.unwrap();
        for i in 0..4 {
            log.record_durable(record(i)).await.unwrap();
        }
    }
    let path = dir.path().join("audit.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<String> = text.lines().skip(2).map(str::to_owned).collect();
    write_lines(dir.path(), &lines);
    let report = verify(dir.path()).unwrap();
    assert!(!report.ok(), "deleting the first records must not verify");

    // A 6 MiB line (escaped control characters) before a torn tail: the chain is found.
    let dir = tempfile::tempdir().unwrap();
    {
        let log = AuditLog::open(dir.path()).await.unwrap();
        log.record_durable(record(0)).await.unwrap();
        let mut big = record(1);
        big.set_statement(&"\u{1}".repeat(1 << 20), 2 << 20);
        log.record_durable(big).await.unwrap();
    }
    let path = dir.path().join("audit.jsonl");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(br#"{"seq":3,"pr"#);
    std::fs::write(&path, &bytes).unwrap();
    {
        let log = AuditLog::open(dir.path()).await.unwrap();
        log.record_durable(record(3)).await.unwrap();
    }
    let report = verify(dir.path()).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.head.as_ref().map(|h| h.0), Some(4));

    // A hostile file: a huge seq, a directory and a stray file named like segments.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("audit.jsonl"),
        format!("{{\"seq\":{},\"prev\":\"x\"}}\n", u64::MAX),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("audit-00000000000000000001.jsonl")).unwrap();
    std::fs::write(dir.path().join("audit-export.jsonl"), "not a segment\n").unwrap();
    let report = verify(dir.path()).unwrap();
    assert!(!report.ok());
    assert!(closed_segments(dir.path()).unwrap().is_empty());
    // A trail whose last line is not a record is not appended to blindly.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("audit.jsonl"), "garbage\n").unwrap();
    assert!(AuditLog::open(dir.path()).await.is_err());
}

#[test]
fn terminal_output_shows_control_characters_escaped() {
    let shown = sqlgate::audit::replay::plain("a\u{1b}[2K\rb\nc");
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
    assert!(shown.contains("\\u{1b}") && shown.contains("\\r") && shown.contains("\\n"));
    assert_eq!(sqlgate::audit::replay::plain("SELECT 1"), "SELECT 1");
}
