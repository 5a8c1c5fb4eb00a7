//! `sqlgate demo`: everything needed to try the gateway, with nothing configured.
//!
//! Starts the dev OIDC issuer on a free loopback port, makes a self-signed TLS
//! certificate, writes a config for one connection `demo` to the local Postgres and
//! validates it like any other config, starts the gateway, and prints a token for
//! group `analytics-agents` with a ready-to-paste `psql` line. Beside it, a connection
//! `demo-mysql` to the local MariaDB/MySQL on the MySQL listener, with a `mariadb`
//! line (unless `--no-mysql`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::identity::dev_issuer::{DevIssuer, DevKey, TokenRequest};

pub struct DemoOptions {
    pub listen: SocketAddr,
    pub upstream: String,
    pub database: String,
    pub user: String,
    pub password_env: Option<String>,
    pub dir: PathBuf,
    /// The `demo-mysql` connection, if served.
    pub mysql: Option<MysqlDemo>,
}

/// The demo's MySQL/MariaDB side.
pub struct MysqlDemo {
    pub listen: SocketAddr,
    pub upstream: String,
    pub database: String,
    pub user: String,
    pub password_env: Option<String>,
}

/// The demo's config text.
pub fn demo_config(options: &DemoOptions, issuer: &str) -> String {
    let password = match &options.password_env {
        Some(var) => format!("password_env = {var:?}\n"),
        None => String::new(),
    };
    let (mysql_listen, mysql) = match &options.mysql {
        Some(m) => (
            format!("mysql = \"{}\"\n", m.listen),
            format!(
                r#"
[[connection]]
name = "demo-mysql"
protocol = "mysql"
upstream = "{upstream}"
database = "{database}"
user = "{user}"
{password}
[[grant]]
connection = "demo-mysql"
groups = ["analytics-agents"]
access = "read-only"
ttl = "30m"
rules = ["rules/no-sleep.toml", "rules/pii.toml", "rules/large-tables.toml"]
"#,
                upstream = m.upstream,
                database = m.database,
                user = m.user,
                password = m
                    .password_env
                    .as_ref()
                    .map(|var| format!("password_env = {var:?}\n"))
                    .unwrap_or_default(),
            ),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        r#"# Written by `sqlgate demo`.
[listen]
postgres = "{listen}"
{mysql_listen}
[identity]
issuer = "{issuer}"
audience = "api://sqlgate"

[[connection]]
name = "demo"
upstream = "{upstream}"
database = "{database}"
user = "{user}"
{password}
[[grant]]
connection = "demo"
groups = ["analytics-agents"]
access = "read-only"
ttl = "30m"
rules = ["rules/no-sleep.toml", "rules/pii.toml", "rules/large-tables.toml"]
{mysql}
[audit]
dir = "audit"
"#,
        listen = options.listen,
        upstream = options.upstream,
        database = options.database,
        user = options.user,
    )
}

/// The shipped rule files the demo's grants use (copied beside its config).
const DEMO_RULES: &[(&str, &str)] = &[
    ("no-sleep.toml", include_str!("../rules/no-sleep.toml")),
    ("pii.toml", include_str!("../rules/pii.toml")),
    (
        "large-tables.toml",
        include_str!("../rules/large-tables.toml"),
    ),
];

pub async fn run(options: DemoOptions) -> Result<(), String> {
    std::fs::create_dir_all(&options.dir).map_err(|e| format!("{}: {e}", options.dir.display()))?;
    let key = DevKey::load_or_create(&options.dir.join("issuer-key.pem"))?;
    let issuer = DevIssuer::start(SocketAddr::from(([127, 0, 0, 1], 0)), vec![key.clone()])
        .await
        .map_err(|e| format!("cannot start the dev issuer: {e}"))?;

    let text = demo_config(&options, &issuer.url);
    // The DBA rules the demo's grants use, beside its config (copies of rules/).
    let rules_dir = options.dir.join("rules");
    std::fs::create_dir_all(&rules_dir).map_err(|e| format!("{}: {e}", rules_dir.display()))?;
    for (name, text) in DEMO_RULES {
        std::fs::write(rules_dir.join(name), text)
            .map_err(|e| format!("{}: {e}", rules_dir.display()))?;
    }
    let config_path = options.dir.join("gateway.toml");
    std::fs::write(&config_path, &text).map_err(|e| format!("{}: {e}", config_path.display()))?;
    // The certificate lives in memory; the config is validated as written, with TLS.
    let mut config = Config::parse(
        &text.replace("[identity]", "allow_plaintext = true\n\n[identity]"),
        &config_path,
    )
    .map_err(|e| e.to_string())?;
    config.listen.allow_plaintext = false;

    let (cert, cert_key) = crate::tls::self_signed()?;
    let tls = crate::tls::server_config_from_pem(&cert, &cert_key)?;
    let gateway = Gateway::start(config, Some(tls))
        .await
        .map_err(|e| e.to_string())?;

    let token = TokenRequest {
        issuer: issuer.url.clone(),
        audience: "api://sqlgate".into(),
        subject: "agent-7".into(),
        groups: vec!["analytics-agents".into()],
        scopes: vec![],
        client_id: None,
        ttl: Duration::from_secs(3600),
    }
    .mint(&key)?;
    let Some(postgres_addr) = gateway.postgres_addr else {
        return Err("the demo config has no Postgres listener".into());
    };
    let mut welcome = welcome(
        &postgres_addr,
        &issuer.url,
        &token,
        &config_path,
        &options.dir,
    );
    if let Some(addr) = gateway.mysql_addr {
        welcome.push_str(&mysql_lines(&addr));
    }
    welcome.push_str("\n\nCtrl-C stops the demo.\n");
    // One write, errors ignored: a reader that goes away must not stop the demo.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(welcome.as_bytes()).and_then(|_| out.flush());
    }
    crate::cli::wait_for_signal().await;
    gateway.shutdown();
    gateway.stopped(std::time::Duration::from_secs(5)).await;
    Ok(())
}

fn mysql_lines(addr: &SocketAddr) -> String {
    format!(
        r#"
MariaDB/MySQL (connection demo-mysql; the same token, as MYSQL_PWD):

export MYSQL_PWD="$PGPASSWORD"
mariadb --host={host} --port={port} --user=agent-7 --ssl demo-mysql

Then try:  SELECT @@version;            -- allowed
           CREATE TABLE t (x int);      -- denied: the grant is read-only
           SELECT SLEEP(1);             -- denied: DBA rule no-sleep (rules/no-sleep.toml)"#,
        host = addr.ip(),
        port = addr.port(),
    )
}

fn welcome(addr: &SocketAddr, issuer: &str, token: &str, config: &Path, dir: &Path) -> String {
    format!(
        r#"sqlgate demo is running.
  gateway   postgres://{addr}  (TLS, self-signed certificate)
  issuer    {issuer}  (dev OIDC issuer: discovery + JWKS)
  config    {config}
  audit     {audit}

A token for sub=agent-7, groups=[analytics-agents], valid 1 hour:

export PGPASSWORD='{token}'

Connect (the database name is the sqlgate connection name):

psql "host={host} port={port} dbname=demo user=agent-7 sslmode=require"

Then try:  SELECT version();            -- allowed
           CREATE TABLE t (x int);      -- denied: the grant is read-only
           SELECT pg_sleep(1);          -- denied: DBA rule no-sleep (rules/no-sleep.toml)
           SET default_transaction_read_only = off;   -- denied: pinned"#,
        host = addr.ip(),
        port = addr.port(),
        audit = dir.join("audit").join("audit.jsonl").display(),
        config = config.display(),
    )
}
