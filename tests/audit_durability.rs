//! The trail's guarantees under failure, through the real gateway: `kill -9` loses no
//! record of a statement whose answer a client saw (strict durability), and a trail
//! that cannot be written stops statements and logins with a clear error, then
//! recovers by itself when space comes back, saying in the chain what was lost.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{GatewayFiles, Setup, SpawnedGateway};
use sqlgate::audit::verify::verify;
use sqlgate::config::Config;
use sqlgate::gateway::Gateway;
use tokio_postgres::NoTls;

const SQLGATE: &str = env!("CARGO_BIN_EXE_sqlgate");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_record_of_an_answer_a_client_saw() {
    let files = GatewayFiles::write(Setup::default()).await;
    // Killed however the test ends, so a failed run leaves no gateway behind.
    let mut gateway = SpawnedGateway::start(&files, &[]);
    let port = gateway.port;
    let token = files
        .issuer_request(&["analytics-agents"])
        .mint(&files.key)
        .unwrap();

    // Four agents run statements as fast as they can; each notes what it saw answered.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut agents = Vec::new();
    for agent in 0..4 {
        let conn =
            format!("host=127.0.0.1 port={port} dbname=reporting user=agent-7 password={token}");
        let (client, connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
        tokio::spawn(connection);
        let seen = seen.clone();
        agents.push(tokio::spawn(async move {
            for i in 0.. {
                let text = format!("SELECT {i} AS killmark_{agent}_{i}");
                if client.simple_query(&text).await.is_err() {
                    return;
                }
                seen.lock().unwrap().push(format!("killmark_{agent}_{i}"));
            }
        }));
    }
    let started = Instant::now();
    while seen.lock().unwrap().len() < 2000 && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gateway.child.kill().unwrap(); // SIGKILL
    gateway.child.wait().unwrap();
    for agent in agents {
        agent.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() >= 2000,
        "the agents ran ({} statements)",
        seen.len()
    );

    let audit = files.dir.path().join("audit");
    let text = std::fs::read_to_string(audit.join("audit.jsonl")).unwrap();
    let recorded: std::collections::HashSet<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["event"] == "statement")
        .filter_map(|r| {
            let s = r["statement"].as_str()?;
            Some(s[s.find("killmark_")?..].to_owned())
        })
        .collect();
    let missing: Vec<&String> = seen.iter().filter(|m| !recorded.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "{} answered statements have no record: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );

    // The trail, torn or not, is opened again: a torn line is reported in the chain,
    // never dropped or taken as a record, and the whole trail verifies.
    let log = sqlgate::audit::AuditLog::open(&audit).await.unwrap();
    log.sync().await.unwrap();
    let report = verify(&audit).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    let out = Command::new(SQLGATE)
        .args(["audit", "verify", "--dir"])
        .arg(&audit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A small filesystem for the trail: tmpfs, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            // CI runs as root; say loudly why this cannot run elsewhere.
            panic!(
                "mounting a tmpfs for the disk-full test failed: run the tests as root (CI does)"
            );
        }
        SmallDisk(at.to_owned())
    }

    /// Fills the disk; returns the filler file.
    fn fill(&self) -> std::path::PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![b'x'; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(b"x").is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_stops_statements_and_logins_and_the_trail_recovers() {
    let files = GatewayFiles::write(Setup::default()).await;
    let audit = files.dir.path().join("audit");
    let disk = SmallDisk::mount(&audit, "4m");
    let config = Config::load(&files.config).unwrap();
    let gateway = Gateway::start(config, None).await.unwrap();
    let port = gateway.postgres_addr.unwrap().port();
    let token = files
        .issuer_request(&["analytics-agents"])
        .mint(&files.key)
        .unwrap();
    let conn = format!("host=127.0.0.1 port={port} dbname=reporting user=agent-7 password={token}");
    let connect = || async {
        let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
        tokio::spawn(connection);
        Ok::<_, tokio_postgres::Error>(client)
    };

    // The neighbour: with room on the disk, statements run.
    let client = connect().await.unwrap();
    client
        .simple_query("SELECT 1 AS before_full")
        .await
        .unwrap();
    let other = connect().await.unwrap();
    other.simple_query("SELECT 1 AS before_full").await.unwrap();

    let filler = disk.fill();
    // Twenty statements in one message: their records do not fit in what room the
    // trail's last page has, so they are not written, and the answer is withheld:
    // the session ends with 58030.
    let batch = vec!["SELECT 2 AS when_full"; 20].join("; ");
    let err = client.simple_query(&batch).await.unwrap_err();
    let (code, message) = common::db_error(&err);
    assert_eq!(code, "58030", "{message}");
    assert!(message.contains("withheld"), "{message}");
    // New logins are refused while the trail cannot be written. (This token's grant
    // record is larger than a page, so it cannot fit in what room a page has left.)
    let mut big = files.issuer_request(&["analytics-agents"]);
    big.groups
        .extend((0..150).map(|i| format!("group-with-a-long-name-for-the-record-{i:04}")));
    let big_token = big.mint(&files.key).unwrap();
    let big_conn =
        format!("host=127.0.0.1 port={port} dbname=reporting user=agent-7 password={big_token}");
    let connect_big = || async {
        let (client, connection) = tokio_postgres::connect(&big_conn, NoTls).await?;
        tokio::spawn(connection);
        Ok::<_, tokio_postgres::Error>(client)
    };
    let Err(err) = connect_big().await else {
        panic!("a login while the trail cannot be written must be refused");
    };
    let (code, message) = common::db_error(&err);
    assert_eq!(code, "58030", "{message}");

    // Space comes back: within a couple of seconds, logins and statements work again.
    std::fs::remove_file(&filler).unwrap();
    let started = Instant::now();
    let client = loop {
        match connect_big().await {
            Ok(client) => break client,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the gateway did not recover: {e}"),
        }
    };
    client.simple_query("SELECT 3 AS after_full").await.unwrap();
    drop(client);
    // A session that was idle through it all goes on.
    other.simple_query("SELECT 4 AS after_full").await.unwrap();
    drop(other);
    gateway.services.audit.sync().await.unwrap();

    // The chain says what was lost, and verifies.
    let text = std::fs::read_to_string(audit.join("audit.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let gap = records
        .iter()
        .find(|r| r["event"] == "trail.gap")
        .expect("a trail.gap record");
    assert!(gap["lost_records"].as_u64().unwrap() >= 1, "{gap}");
    assert!(records
        .iter()
        .any(|r| r["statement"] == "SELECT 3 AS after_full"));
    // What could be written of the batch is in the trail (the statements did run
    // upstream; their answer was withheld); the rest is counted as lost.
    let written = records
        .iter()
        .filter(|r| r["event"] == "statement" && r["statement"] == "SELECT 2 AS when_full")
        .count() as u64;
    assert!(written < 20, "{written}");
    let report = verify(&audit).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    gateway.shutdown();
    drop(disk);
}
