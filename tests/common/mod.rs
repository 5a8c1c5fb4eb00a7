//! Test harness: a real dev issuer, a real gateway on an ephemeral port, and a
//! private database and role on the local Postgres for each test.
//!
//! The upstream role owns its tables and *could* write: the tests prove that the
//! gateway, not the database's permissions, is what stops writes.

#![allow(dead_code)]

pub mod mysql;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::message::frontend;
use serde_json::Value;
use sqlgate::config::Config;
use sqlgate::gateway::{Gateway, RunningGateway};
use sqlgate::identity::dev_issuer::{DevIssuer, DevKey, TokenRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};

pub const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";
pub const AUDIENCE: &str = "api://sqlgate";

/// A one-hour token request for `agent-7` in `groups`, from the issuer at `issuer`.
pub fn agent_request(issuer: &str, groups: &[&str]) -> TokenRequest {
    TokenRequest {
        issuer: issuer.to_owned(),
        audience: AUDIENCE.into(),
        subject: "agent-7".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        scopes: vec![],
        client_id: None,
        ttl: Duration::from_secs(3600),
    }
}

/// Connects to the local Postgres directly as a superuser.
pub async fn admin(dbname: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port=5432 user=postgres dbname={dbname}"),
        NoTls,
    )
    .await
    .expect("local Postgres on 127.0.0.1:5432 (start it with .ci/run)");
    tokio::spawn(conn);
    client
}

/// A unique lowercase name.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// A private database owned by a private role, with a small table.
pub struct TestDb {
    pub name: String,
    pub role: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let name = unique("sg_db");
        let role = unique("sg_role");
        let admin = admin("postgres").await;
        admin
            .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {role}"))
            .await
            .unwrap();
        let (db, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port=5432 user={role} dbname={name}"),
            NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        db.batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2));
             INSERT INTO items VALUES (1, 'apple', 1.25), (2, 'pear', 2.50), (3, 'fig', 4.00);
             CREATE SEQUENCE counter;
             CREATE FUNCTION stable_double(x int) RETURNS int LANGUAGE sql STABLE AS 'SELECT x * 2';
             CREATE FUNCTION noisy() RETURNS int LANGUAGE plpgsql STABLE
                 AS $$ BEGIN RAISE NOTICE 'hello from upstream'; RETURN 1; END $$;
             CREATE FUNCTION op_volatile(int, int) RETURNS bool LANGUAGE sql VOLATILE AS 'SELECT $1 = $2';
             CREATE OPERATOR === (LEFTARG = int, RIGHTARG = int, FUNCTION = op_volatile);
             CREATE FUNCTION op_stable(int, int) RETURNS bool LANGUAGE sql STABLE AS 'SELECT $1 < $2';
             CREATE OPERATOR <<< (LEFTARG = int, RIGHTARG = int, FUNCTION = op_stable);
             CREATE FUNCTION step_volatile(int, int) RETURNS int LANGUAGE sql VOLATILE AS 'SELECT $1 + $2';
             CREATE AGGREGATE vsum(int) (SFUNC = step_volatile, STYPE = int, INITCOND = '0');
             CREATE FUNCTION step_stable(int, int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 + $2';
             CREATE AGGREGATE isum(int) (SFUNC = step_stable, STYPE = int, INITCOND = '0');
             CREATE FUNCTION row_touch(items) RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1';
             CREATE TYPE mood AS ENUM ('sad', 'happy');
             CREATE FUNCTION mood_of(int) RETURNS mood LANGUAGE sql VOLATILE AS $$ SELECT 'happy'::mood $$;
             CREATE CAST (int AS mood) WITH FUNCTION mood_of(int);
             CREATE FUNCTION volatile_wipe() RETURNS int LANGUAGE sql VOLATILE AS 'DELETE FROM items RETURNING 1';",
        )
        .await
        .unwrap();
        TestDb { name, role }
    }

    /// A direct connection as the owner, to check what really happened.
    pub async fn direct(&self) -> Client {
        let (db, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port=5432 user={} dbname={}",
                self.role, self.name
            ),
            NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        db
    }

    pub async fn item_count(&self) -> i64 {
        self.direct()
            .await
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap()
            .get(0)
    }
}

/// Options for a test gateway.
pub struct Setup {
    pub grant_ttl: &'static str,
    pub allow_plaintext: bool,
    pub extra_config: String,
    /// Connection lines override (credential tests).
    pub connection_extra: String,
    pub user_override: Option<String>,
    /// Point the audit file at /dev/full, so every audit write fails.
    pub broken_audit: bool,
    /// `limits.login_timeout`, if not the default.
    pub login_timeout: Option<&'static str>,
    /// More lines for `[limits]`, `[audit]`, and the "reporting" `[[grant]]`.
    pub limits: String,
    pub audit_extra: String,
    pub grant_extra: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            grant_ttl: "10m",
            allow_plaintext: true,
            extra_config: String::new(),
            connection_extra: String::new(),
            user_override: None,
            broken_audit: false,
            login_timeout: None,
            limits: String::new(),
            audit_extra: String::new(),
            grant_extra: String::new(),
        }
    }
}

/// What a test gateway runs on: a database, an issuer and its key, and a directory
/// holding `gateway.toml`, the TLS files and the audit trail (`audit/`).
pub struct GatewayFiles {
    pub db: TestDb,
    pub key: DevKey,
    pub issuer: DevIssuer,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl GatewayFiles {
    pub async fn write(setup: Setup) -> GatewayFiles {
        let db = TestDb::create().await;
        let key = DevKey::generate().unwrap();
        let issuer = DevIssuer::start(SocketAddr::from(([127, 0, 0, 1], 0)), vec![key.clone()])
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let user = setup
            .user_override
            .clone()
            .unwrap_or_else(|| db.role.clone());
        let text = format!(
            r#"
[listen]
postgres = "127.0.0.1:0"
allow_plaintext = {plain}
tls_cert = "cert.pem"
tls_key = "key.pem"

[identity]
issuer = "{issuer}"
audience = "{AUDIENCE}"
jwks_min_refetch = "0s"
{extra}

[[connection]]
name = "reporting"
upstream = "127.0.0.1:5432"
database = "{db}"
user = "{user}"
{conn_extra}

[[connection]]
name = "primary"
upstream = "127.0.0.1:5432"
database = "{db}"
user = "{user}"

[[grant]]
connection = "reporting"
groups = ["analytics-agents"]
ttl = "{ttl}"
{grant_extra}

[[grant]]
connection = "primary"
groups = ["dba"]
ttl = "{ttl}"

[audit]
dir = "audit"
{audit_extra}

[limits]
{limits}
"#,
            plain = setup.allow_plaintext,
            issuer = issuer.url,
            extra = setup.extra_config,
            db = db.name,
            conn_extra = setup.connection_extra,
            ttl = setup.grant_ttl,
            grant_extra = setup.grant_extra,
            audit_extra = setup.audit_extra,
            limits = setup
                .login_timeout
                .map(|t| format!("login_timeout = \"{t}\"\n"))
                .unwrap_or_default()
                + &setup.limits,
        );
        let (cert, cert_key) = sqlgate::tls::self_signed().unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
        std::fs::write(dir.path().join("key.pem"), cert_key).unwrap();
        if setup.broken_audit {
            std::fs::create_dir_all(dir.path().join("audit")).unwrap();
            std::os::unix::fs::symlink("/dev/full", dir.path().join("audit").join("audit.jsonl"))
                .unwrap();
        }
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, &text).unwrap();
        GatewayFiles {
            db,
            key,
            issuer,
            dir,
            config: path,
        }
    }

    /// A token request for `agent-7` in `groups`, from this gateway's issuer.
    pub fn issuer_request(&self, groups: &[&str]) -> TokenRequest {
        agent_request(&self.issuer.url, groups)
    }
}

pub struct TestGateway {
    pub gateway: RunningGateway,
    pub issuer: DevIssuer,
    pub key: DevKey,
    pub db: TestDb,
    pub audit_dir: PathBuf,
    /// The gateway's config file (tests rewrite it and reload).
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    pub async fn start() -> TestGateway {
        TestGateway::start_with(Setup::default()).await
    }

    pub async fn start_with(setup: Setup) -> TestGateway {
        let files = GatewayFiles::write(setup).await;
        let config = Config::load(&files.config).unwrap();
        let gateway = Gateway::start(config, None).await.unwrap();
        TestGateway {
            gateway,
            audit_dir: files.dir.path().join("audit"),
            config: files.config.clone(),
            issuer: files.issuer,
            key: files.key,
            db: files.db,
            _dir: files.dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.gateway
            .postgres_addr
            .expect("postgres listener")
            .port()
    }

    /// A token request for `agent-7` in `groups`.
    pub fn request(&self, groups: &[&str]) -> TokenRequest {
        agent_request(&self.issuer.url, groups)
    }

    pub fn token(&self, groups: &[&str]) -> String {
        self.request(groups).mint(&self.key).unwrap()
    }

    pub fn conn_string(&self, dbname: &str, token: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={dbname} user=agent-7 password={token}",
            self.port()
        )
    }

    /// Connects through the gateway as an analytics agent.
    pub async fn agent(&self) -> Client {
        self.connect("reporting", &self.token(&["analytics-agents"]))
            .await
            .unwrap()
    }

    pub async fn connect(
        &self,
        dbname: &str,
        token: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) =
            tokio_postgres::connect(&self.conn_string(dbname, token), NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Connects as an analytics agent and keeps the driver's connection task, whose
    /// result says how the gateway ended the session.
    pub async fn watched_agent(
        &self,
    ) -> (
        Client,
        tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    ) {
        let token = self.token(&["analytics-agents"]);
        let (client, conn) = tokio_postgres::connect(&self.conn_string("reporting", &token), NoTls)
            .await
            .unwrap();
        (client, tokio::spawn(conn))
    }

    /// The `reason` of every `session.ended` record so far.
    pub async fn ended_reasons(&self) -> Vec<String> {
        self.audit()
            .await
            .iter()
            .filter(|r| r["event"] == "session.ended")
            .filter_map(|r| r["reason"].as_str().map(str::to_owned))
            .collect()
    }

    /// The audit trail's records so far.
    pub async fn audit(&self) -> Vec<Value> {
        // Statement records are queued; give the writer a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let text = std::fs::read_to_string(self.audit_dir.join("audit.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Waits (at most `secs`) for a watched connection to be ended by the gateway and
/// returns the SQLSTATE and message it ended with.
pub async fn ended_with(
    conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    secs: u64,
) -> (String, String) {
    let ended = tokio::time::timeout(Duration::from_secs(secs), conn)
        .await
        .expect("the gateway did not end the session")
        .unwrap();
    db_error(&ended.expect_err("the session ended without an error"))
}

/// The SQLSTATE and message of a failed call.
pub fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
        None => ("".into(), e.to_string()),
    }
}

/// Asserts a statement is denied by the gateway (42501, our message naming `kind`).
pub async fn assert_denied(client: &Client, sql: &str, kind: &str, why: &str) {
    let err = client.batch_execute(sql).await.expect_err(sql);
    let (code, message) = db_error(&err);
    assert_eq!(code, "42501", "{sql}: {message}");
    assert!(
        message.starts_with(&format!("sqlgate: {kind} denied")),
        "{sql}: {message}"
    );
    assert!(message.contains(why), "{sql}: {message}");
}

/// A minimal raw protocol client, to send exact message sequences and record the
/// message types that come back.
pub struct Raw {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

impl Raw {
    pub async fn login(port: u16, user: &str, dbname: &str, password: Option<&str>) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
        };
        let mut out = BytesMut::new();
        frontend::startup_message([("user", user), ("database", dbname)], &mut out).unwrap();
        raw.stream.write_all(&out).await.unwrap();
        loop {
            let (tag, frame) = raw.next().await;
            match tag {
                b'R' if (&frame[5..9]).get_i32() == 3 => {
                    let mut out = BytesMut::new();
                    frontend::password_message(password.unwrap().as_bytes(), &mut out).unwrap();
                    raw.stream.write_all(&out).await.unwrap();
                }
                b'Z' => return raw,
                b'E' => panic!("login failed: {:?}", String::from_utf8_lossy(&frame)),
                _ => {}
            }
        }
    }

    pub async fn next(&mut self) -> (u8, BytesMut) {
        loop {
            if self.buf.len() >= 5 {
                let len = (&self.buf[1..5]).get_i32() as usize;
                if self.buf.len() > len {
                    let frame = self.buf.split_to(1 + len);
                    return (frame[0], frame);
                }
            }
            assert!(
                self.stream.read_buf(&mut self.buf).await.unwrap() > 0,
                "connection closed"
            );
        }
    }

    /// Sends `out` and returns the message types up to and including ReadyForQuery.
    pub async fn round_trip(&mut self, out: &[u8]) -> Vec<char> {
        self.stream.write_all(out).await.unwrap();
        let mut tags = Vec::new();
        loop {
            let (tag, _) = self.next().await;
            tags.push(tag as char);
            if tag == b'Z' {
                return tags;
            }
        }
    }
}

/// A gateway run as its own process (`sqlgate serve`), killed however the test ends.
pub struct SpawnedGateway {
    pub child: std::process::Child,
    /// The Postgres listener's port, from the gateway's log.
    pub port: u16,
}

impl SpawnedGateway {
    /// `sqlgate --log-format json serve --config <files.config> <extra...>` in the
    /// config's directory; waits (at most 20 s) for the listener's address in the log.
    pub fn start(files: &GatewayFiles, extra: &[&std::ffi::OsStr]) -> SpawnedGateway {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sqlgate"))
            .args(["--log-format", "json", "serve", "--config"])
            .arg(&files.config)
            .args(extra)
            .current_dir(files.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let Ok(event) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(addr) = event["fields"]["postgres_addr"].as_str() {
                    let _ = addr_tx.send(addr.to_owned());
                }
            }
        });
        let mut spawned = SpawnedGateway { child, port: 0 };
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the gateway says where it listens");
        spawned.port = addr.rsplit(':').next().unwrap().parse().unwrap();
        spawned
    }
}

impl Drop for SpawnedGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
