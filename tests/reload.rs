//! Reloading grants and rules (issue 15): a reload puts new rules in force for the
//! next statement of live sessions, a broken reload is refused and the rules in force
//! stay, a grant removed by a reload ends the sessions it granted, and `sqlgate
//! reload` checks the files before it signals a running gateway.

mod common;

use std::process::Command;
use std::time::Duration;

use common::mysql::{MyGateway, MySetup};
use common::{GatewayFiles, Setup, SpawnedGateway, TestGateway};
use mysql_async::prelude::Queryable;

const SQLGATE: &str = env!("CARGO_BIN_EXE_sqlgate");

/// A rule denying `table`, as a rule file's text.
fn deny_table(id: &str, table: &str) -> String {
    format!(
        "[[rule]]\nid = {id:?}\nmessage = \"{table} is not for agents\"\ndeny = {{ tables = [{table:?}] }}\n"
    )
}

/// A rule file in a fresh directory denying `salaries`; returns it, its path and the
/// grant line that uses it.
fn rules_denying_salaries() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, deny_table("no-payroll", "salaries")).unwrap();
    let line = format!("rules = [{:?}]", path.display().to_string());
    (dir, path, line)
}

async fn denied_by(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    match client.simple_query(sql).await {
        Ok(_) => None,
        Err(e) => Some(common::db_error(&e).1),
    }
}

#[tokio::test]
async fn a_reload_changes_the_rules_of_a_live_session_and_a_broken_one_changes_nothing() {
    let (_rules_dir, rules, line) = rules_denying_salaries();
    let gw = TestGateway::start_with(Setup {
        grant_extra: line,
        ..Setup::default()
    })
    .await;
    gw.db
        .direct()
        .await
        .batch_execute("CREATE TABLE salaries (who text, amount int)")
        .await
        .unwrap();
    let client = gw.agent().await;
    let denial = denied_by(&client, "SELECT * FROM salaries").await.unwrap();
    assert!(denial.contains("no-payroll"), "{denial}");
    assert!(denied_by(&client, "SELECT count(*) FROM items")
        .await
        .is_none());
    // Cached verdicts must not outlive the rules they were made under.
    client
        .query("SELECT count(*) FROM items", &[])
        .await
        .unwrap();

    std::fs::write(&rules, deny_table("no-items", "items")).unwrap();
    let reloaded = gw.gateway.reload(&gw.config).await.unwrap();
    assert_eq!(reloaded.generation, 1);
    assert!(
        reloaded.not_applied.is_empty(),
        "{:?}",
        reloaded.not_applied
    );
    // The same session, its next statements: the new rule, and the old one gone.
    let denial = denied_by(&client, "SELECT count(*) FROM items")
        .await
        .unwrap();
    assert!(denial.contains("no-items"), "{denial}");
    assert!(client
        .query("SELECT count(*) FROM items", &[])
        .await
        .is_err());
    assert!(denied_by(&client, "SELECT * FROM salaries").await.is_none());

    // A broken rule file: refused, naming the file; the rules in force stay.
    std::fs::write(
        &rules,
        "[[rule]]\nid = \"x\"\nmessage = \"m\"\ndeny = { tabels = [\"a\"] }\n",
    )
    .unwrap();
    let problem = gw.gateway.reload(&gw.config).await.unwrap_err();
    assert!(
        problem.contains("rules.toml") && problem.contains("tabels"),
        "{problem}"
    );
    assert!(denied_by(&client, "SELECT count(*) FROM items")
        .await
        .unwrap()
        .contains("no-items"));
    assert!(denied_by(&client, "SELECT * FROM salaries").await.is_none());
    // A grant naming a connection the gateway does not serve: refused too.
    let text = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(&rules, deny_table("no-items", "items")).unwrap();
    std::fs::write(
        &gw.config,
        format!("{text}\n[[connection]]\nname = \"new\"\nupstream = \"127.0.0.1:5432\"\ndatabase = \"d\"\nuser = \"u\"\n\n[[grant]]\nconnection = \"new\"\ngroups = [\"x\"]\nttl = \"1m\"\n"),
    )
    .unwrap();
    let problem = gw.gateway.reload(&gw.config).await.unwrap_err();
    assert!(
        problem.contains("\"new\"") && problem.contains("restart"),
        "{problem}"
    );

    drop(client);
    let records = gw.audit().await;
    let reloads: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| {
            r["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("config.reload"))
        })
        .collect();
    assert_eq!(reloads.len(), 3, "{reloads:?}");
    assert_eq!(reloads[0]["event"], "config.reloaded");
    assert!(reloads[0]["reason"]
        .as_str()
        .unwrap()
        .contains("rules [no-items]"));
    assert_eq!(reloads[1]["event"], "config.reload_refused");
    assert_eq!(reloads[2]["event"], "config.reload_refused");
}

#[tokio::test]
async fn a_grant_removed_by_a_reload_ends_its_live_sessions_and_spares_the_others() {
    let gw = TestGateway::start().await;
    let agent = gw.agent().await;
    let dba = gw.connect("primary", &gw.token(&["dba"])).await.unwrap();
    agent.simple_query("SELECT 1").await.unwrap();
    // The agents' group loses its grant; the DBA's stays.
    let text = std::fs::read_to_string(&gw.config).unwrap();
    let edited = text.replace(
        "groups = [\"analytics-agents\"]",
        "groups = [\"someone-else\"]",
    );
    assert_ne!(text, edited);
    std::fs::write(&gw.config, edited).unwrap();
    gw.gateway.reload(&gw.config).await.unwrap();
    // The session ends at once, idle or not.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if agent.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ended.is_ok(), "the agent's session is still open");
    assert!(agent.simple_query("SELECT 1").await.is_err());
    // New logins of the group are refused; the DBA's session goes on.
    let err = gw
        .connect("reporting", &gw.token(&["analytics-agents"]))
        .await
        .expect_err("no grant after the reload");
    let (_, message) = common::db_error(&err);
    assert!(message.contains("no grant"), "{message}");
    dba.simple_query("SELECT 1").await.unwrap();
    drop(dba);
    let records = gw.audit().await;
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "session.ended" && r["ended_by"] == "grant_revoked"),
        "no session.ended with ended_by grant_revoked"
    );
}

#[tokio::test]
async fn mysql_sessions_follow_reloads_too() {
    let (_rules_dir, rules, line) = rules_denying_salaries();
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
    let err = conn.query_drop("SELECT * FROM salaries").await.unwrap_err();
    assert!(common::mysql::server_error(&err).1.contains("no-payroll"));
    std::fs::write(&rules, deny_table("no-items", "items")).unwrap();
    gw.gateway.reload(&gw.config).await.unwrap();
    conn.query_drop("SELECT * FROM salaries").await.unwrap();
    let err = conn.query_drop("SELECT * FROM items").await.unwrap_err();
    assert!(common::mysql::server_error(&err).1.contains("no-items"));
    // Removing the grant ends the session.
    let text = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(
        &gw.config,
        text.replace("groups = [\"analytics-agents\"]", "groups = [\"nobody\"]"),
    )
    .unwrap();
    gw.gateway.reload(&gw.config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // (The server-side end arrives unasked, so the driver reports it out of sequence.)
    assert!(conn.query_drop("SELECT 1").await.is_err());
    let records = gw.audit().await;
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "session.ended" && r["ended_by"] == "grant_revoked"),
        "no session.ended with ended_by grant_revoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlgate_reload_checks_the_files_then_signals_the_running_gateway() {
    let (_rules_dir, rules, line) = rules_denying_salaries();
    let files = GatewayFiles::write(Setup {
        grant_extra: line,
        ..Setup::default()
    })
    .await;
    files
        .db
        .direct()
        .await
        .batch_execute("CREATE TABLE salaries (who text, amount int)")
        .await
        .unwrap();
    let pid_file = files.dir.path().join("sqlgate.pid");
    let gateway = SpawnedGateway::start(&files, &["--pid-file".as_ref(), pid_file.as_os_str()]);
    let port = gateway.port;
    let token = files
        .issuer_request(&["analytics-agents"])
        .mint(&files.key)
        .unwrap();
    let conn = format!("host=127.0.0.1 port={port} dbname=reporting user=agent-7 password={token}");
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    assert!(denied_by(&client, "SELECT * FROM salaries").await.is_some());

    let reload = || {
        let out = Command::new(SQLGATE)
            .args(["reload", "--config"])
            .arg(&files.config)
            .arg("--pid-file")
            .arg(&pid_file)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // A broken rule file is reported by the command, and the gateway is not told.
    std::fs::write(&rules, "[[rule]]\nid = \"x\"\n").unwrap();
    let (ok, out) = reload();
    assert!(!ok && out.contains("rules.toml"), "{out}");
    assert!(denied_by(&client, "SELECT * FROM salaries").await.is_some());
    // A good one is put in force.
    std::fs::write(&rules, deny_table("no-items", "items")).unwrap();
    // A config other than the one the gateway serves is refused.
    let elsewhere = files.dir.path().join("other.toml");
    std::fs::copy(&files.config, &elsewhere).unwrap();
    let out = Command::new(SQLGATE)
        .args(["reload", "--config"])
        .arg(&elsewhere)
        .arg("--pid-file")
        .arg(&pid_file)
        .current_dir(files.dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("serves"), "{text}");
    let (ok, out) = reload();
    assert!(ok && out.contains("sent SIGHUP"), "{out}");
    let applied = tokio::time::timeout(Duration::from_secs(10), async {
        while denied_by(&client, "SELECT * FROM salaries").await.is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(applied.is_ok(), "the reload was not applied");
    assert!(denied_by(&client, "SELECT count(*) FROM items")
        .await
        .unwrap()
        .contains("no-items"));
    // A broken file signalled directly (kill -HUP) leaves the gateway serving.
    std::fs::write(&rules, "not toml at all [").unwrap();
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", pid.lines().next().unwrap().trim()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(denied_by(&client, "SELECT count(*) FROM items")
        .await
        .unwrap()
        .contains("no-items"));
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn statements_prepared_before_a_reload_are_decided_again_before_they_run() {
    let (_rules_dir, rules, line) = rules_denying_salaries();
    let gw = TestGateway::start_with(Setup {
        grant_extra: line,
        ..Setup::default()
    })
    .await;
    let client = gw.agent().await;
    let items = client.prepare("SELECT count(*) FROM items").await.unwrap();
    let one = client.prepare("SELECT 1").await.unwrap();
    client.query(&items, &[]).await.unwrap();
    std::fs::write(&rules, deny_table("no-items", "items")).unwrap();
    gw.gateway.reload(&gw.config).await.unwrap();
    // The neighbour still runs; the statement the new rules deny does not.
    client.query(&one, &[]).await.unwrap();
    let err = client.query(&items, &[]).await.unwrap_err();
    let (code, message) = common::db_error(&err);
    assert_eq!(code, "42501", "{message}");
    assert!(
        message.contains("prepared before a configuration reload") && message.contains("no-items"),
        "{message}"
    );

    // SQL-level PREPARE, on another session: EXECUTE after the rules changed is refused.
    let other = gw.agent().await;
    other.simple_query("PREPARE p AS SELECT 1").await.unwrap();
    other.simple_query("EXECUTE p").await.unwrap();
    std::fs::write(&rules, deny_table("no-payroll", "salaries")).unwrap();
    gw.gateway.reload(&gw.config).await.unwrap();
    let err = other.simple_query("EXECUTE p").await.unwrap_err();
    let (_, message) = common::db_error(&err);
    assert!(message.contains("configuration reload"), "{message}");
    other.simple_query("SELECT 1").await.unwrap();

    // MySQL: the execution is denied, the session goes on.
    let (_rules_dir, rules, line) = rules_denying_salaries();
    let gw = MyGateway::start_with(MySetup {
        grant_extra: line,
        ..MySetup::default()
    })
    .await;
    let mut conn = gw.agent().await;
    let items = conn.prep("SELECT COUNT(*) FROM items").await.unwrap();
    let _: Option<i64> = conn.exec_first(&items, ()).await.unwrap();
    std::fs::write(&rules, deny_table("no-items", "items")).unwrap();
    gw.gateway.reload(&gw.config).await.unwrap();
    let err = conn.exec_first::<i64, _, _>(&items, ()).await.unwrap_err();
    assert!(err.to_string().contains("no-items"), "{err}");
    let _: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn a_reload_that_shortens_the_grant_ends_live_sessions_sooner() {
    let gw = TestGateway::start_with(Setup {
        grant_ttl: "10m",
        ..Setup::default()
    })
    .await;
    let client = gw.agent().await;
    client.simple_query("SELECT 1").await.unwrap();
    let text = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(&gw.config, text.replace("ttl = \"10m\"", "ttl = \"1s\"")).unwrap();
    gw.gateway.reload(&gw.config).await.unwrap();
    // Still granted for now; ended when the shorter grant runs out.
    client.simple_query("SELECT 1").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while !client.is_closed() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ended.is_ok(), "the session outlived its shortened grant");

    let gw = MyGateway::start_with(MySetup {
        grant_ttl: "10m",
        ..MySetup::default()
    })
    .await;
    let mut conn = gw.agent().await;
    conn.query_drop("SELECT 1").await.unwrap();
    let text = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(&gw.config, text.replace("ttl = \"10m\"", "ttl = \"1s\"")).unwrap();
    gw.gateway.reload(&gw.config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(conn.query_drop("SELECT 1").await.is_err());
    let records = gw.audit().await;
    assert!(records
        .iter()
        .any(|r| r["event"] == "session.ended" && r["ended_by"] == "grant_expired"));
}

#[tokio::test]
async fn a_statement_prepared_before_a_reload_carries_the_new_rules_flags() {
    let (_rules_dir, rules, line) = rules_denying_salaries();
    let gw = TestGateway::start_with(Setup {
        grant_extra: line,
        ..Setup::default()
    })
    .await;
    let client = gw.agent().await;
    let items = client.prepare("SELECT count(*) FROM items").await.unwrap();
    client.query(&items, &[]).await.unwrap();
    std::fs::write(
        &rules,
        "[[rule]]\nid = \"items-watch\"\nmessage = \"reviewed\"\neffect = \"audit\"\ndeny = { tables = [\"items\"] }\n",
    )
    .unwrap();
    gw.gateway.reload(&gw.config).await.unwrap();
    client.query(&items, &[]).await.unwrap();
    drop(client);
    let records = gw.audit().await;
    let executions: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["event"] == "statement" && r["statement"] == "SELECT count(*) FROM items")
        .collect();
    assert_eq!(executions.len(), 2, "{executions:?}");
    assert!(executions[0].get("flagged_by").is_none());
    assert_eq!(
        executions[1]["flagged_by"],
        serde_json::json!(["items-watch"])
    );
}
