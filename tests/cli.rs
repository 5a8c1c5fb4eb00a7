//! The binary as a user meets it: `sqlgate check` explains a bad config and prints
//! who may reach what; `sqlgate demo` prints a psql line that works as printed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SQLGATE: &str = env!("CARGO_BIN_EXE_sqlgate");

const CONFIG: &str = r#"
[listen]
postgres = "127.0.0.1:6432"
tls_cert = "certs/gw.pem"
tls_key = "certs/gw-key.pem"

[identity]
issuer = "https://example.okta.com"
audience = "api://sqlgate"

[[connection]]
name = "reporting"
upstream = "127.0.0.1:5432"
database = "reporting"
user = "sqlgate_ro"
password_env = "SQLGATE_CLI_TEST_UNSET"

[[grant]]
connection = "reporting"
groups = ["analytics-agents"]
ttl = "10m"
"#;

fn check(config: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(SQLGATE)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_prints_who_may_reach_what_and_warns() {
    let (ok, out, err) = check(CONFIG);
    assert!(ok, "{err}");
    assert!(
        out.contains("[0] groups analytics-agents -> reporting (read-only, ttl 10m)"),
        "{out}"
    );
    assert!(out.contains("org authorization server"), "{out}");
    assert!(out.contains("SQLGATE_CLI_TEST_UNSET is not set"), "{out}");
    // Each grant's limits, and the gateway's.
    assert!(
        out.contains("limits: statement_timeout 5m, idle_in_transaction_timeout 1m, 10 sessions per identity"),
        "{out}"
    );
    assert!(out.contains("at most 50 sessions"), "{out}");
    assert!(out.contains("work_mem <= 64MB"), "{out}");
    let (ok, out, err) = check(&CONFIG.replace(
        "ttl = \"10m\"",
        "ttl = \"10m\"\nstatement_timeout = \"30s\"\nmax_sessions = 3",
    ));
    assert!(ok, "{err}");
    assert!(
        out.contains("statement_timeout 30s, idle_in_transaction_timeout 1m, 3 sessions in all"),
        "{out}"
    );
}

#[test]
fn check_names_file_key_and_problem() {
    let (ok, _, err) = check(&CONFIG.replace(
        "connection = \"reporting\"\ngroups",
        "connection = \"primary\"\ngroups",
    ));
    assert!(!ok);
    assert!(
        err.contains("gateway.toml: grant[0].connection: no [[connection]] named \"primary\""),
        "{err}"
    );
    let (ok, _, err) = check(&CONFIG.replace("ttl = \"10m\"", "ttl = \"ten minutes\""));
    assert!(!ok);
    assert!(
        err.contains("grant[0].ttl") && err.contains("not a duration"),
        "{err}"
    );
    let (ok, _, err) = check(&format!(
        "{CONFIG}\n[limits.setting_caps]\nshared_buffers = \"1GB\"\n"
    ));
    assert!(!ok);
    assert!(
        err.contains("limits.setting_caps.shared_buffers") && err.contains("cannot be capped"),
        "{err}"
    );
    let (ok, _, err) = check(&format!("{CONFIG}\n[limits]\nmax_sessions = 0\n"));
    assert!(!ok);
    assert!(
        err.contains("limits.max_sessions: must be at least 1"),
        "{err}"
    );
}

/// Kills the child on drop, so a failing assertion does not leave a demo running.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_prints_a_psql_line_and_a_mariadb_line_that_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Running(
        Command::new(SQLGATE)
            .args([
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--mysql-listen",
                "127.0.0.1:0",
                "--dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = demo.0.stdout.take().unwrap();
    let mut token = None;
    let mut conninfo = None;
    let mut mariadb = None;
    let started = Instant::now();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("export PGPASSWORD='") {
            token = Some(rest.trim_end_matches('\'').to_owned());
        }
        if let Some(rest) = line.strip_prefix("psql \"") {
            conninfo = Some(rest.trim_end_matches('"').to_owned());
        }
        if let Some(rest) = line.strip_prefix("mariadb ") {
            mariadb = Some(
                rest.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "demo did not print its psql line"
        );
    }
    let (token, conninfo) = (token.unwrap(), conninfo.unwrap());
    let psql = |sql: &str| {
        let out = Command::new("psql")
            .args([conninfo.as_str(), "-XAt", "-c", sql])
            .env("PGPASSWORD", &token)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (out, err) = psql("SELECT 40 + 2");
    assert_eq!(out.trim(), "42", "{err}");
    let (_, err) = psql("CREATE TABLE t (x int)");
    assert!(
        err.contains("sqlgate: CREATE TABLE denied: the grant is read-only"),
        "{err}"
    );
    let (_, err) = psql("SET default_transaction_read_only = off");
    assert!(err.contains("pinned on"), "{err}");
    // The demo's grant uses the shipped no-sleep rule.
    let (_, err) = psql("SELECT pg_sleep(1)");
    assert!(err.contains("denied by rule \"no-sleep\""), "{err}");
    // The mariadb line, as printed, with the token in MYSQL_PWD.
    let args = mariadb.expect("demo did not print its mariadb line");
    let mysql = |sql: &str| {
        let out = Command::new("mariadb")
            .args(["--batch", "--skip-column-names", "-e", sql])
            .args(&args)
            .env("MYSQL_PWD", &token)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (out, err) = mysql("SELECT 40 + 2");
    assert_eq!(out.trim(), "42", "{err}");
    let (_, err) = mysql("CREATE TABLE t (x int)");
    assert!(err.contains("1227") && err.contains("denied"), "{err}");
    let (_, err) = mysql("SELECT SLEEP(1)");
    assert!(err.contains("no-sleep"), "{err}");
    let audit = std::fs::read_to_string(dir.path().join("audit").join("audit.jsonl")).unwrap();
    assert!(audit.contains("\"event\":\"grant.issued\""), "{audit}");
    assert!(audit.contains("\"protocol\":\"mysql\""), "{audit}");
    drop(demo);
}

#[test]
fn the_readme_config_example_is_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme
        .find("## Configuration (DBA)")
        .expect("config section")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = start + section[start..].find("```").unwrap();
    let (ok, out, err) = check(&section[start..end]);
    assert!(ok, "{err}");
    assert!(
        out.contains("[1] client ids 0oa1svcbackend -> reporting-replica"),
        "{out}"
    );
}

#[test]
fn token_mints_okta_shaped_claims_and_can_name_another_kid() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let mint = |extra: &[&str]| {
        let out = Command::new(SQLGATE)
            .args(["token", "--key"])
            .arg(&key)
            .args([
                "--issuer",
                "http://127.0.0.1:8899",
                "--sub",
                "svc",
                "--group",
                "g1",
                "--scope",
                "read",
                "--cid",
                "app1",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let decode = |part: &str| -> serde_json::Value {
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    let token = mint(&[]);
    let parts: Vec<&str> = token.split('.').collect();
    let (header, claims) = (decode(parts[0]), decode(parts[1]));
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["sub"], "svc");
    assert_eq!(claims["groups"], serde_json::json!(["g1"]));
    assert_eq!(claims["scp"], serde_json::json!(["read"]));
    assert_eq!(claims["cid"], "app1");
    assert_eq!(claims["aud"], "api://sqlgate");
    let other = mint(&["--kid", "not-published"]);
    assert_eq!(
        decode(other.split('.').next().unwrap())["kid"],
        "not-published"
    );
    assert_ne!(header["kid"], "not-published");
}
