//! MySQL test harness: a private MariaDB database and an upstream user that *could*
//! write, a gateway with a `mysql` connection on an ephemeral port, and mysql_async
//! as the agent's driver.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder, SslOpts};
use sqlgate::config::Config;
use sqlgate::gateway::{Gateway, RunningGateway};
use sqlgate::identity::dev_issuer::{DevIssuer, DevKey, TokenRequest};

use super::{unique, AUDIENCE};

/// The local MariaDB as root.
pub async fn root() -> Conn {
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(3306)
        .user(Some("root"))
        .prefer_socket(false);
    Conn::new(opts)
        .await
        .expect("local MariaDB on 127.0.0.1:3306 (start it with .ci/run)")
}

/// A private database, and a user with a password and every privilege on it.
pub struct MyDb {
    pub name: String,
    pub user: String,
    pub password: String,
}

impl MyDb {
    pub async fn create() -> MyDb {
        let db = MyDb {
            name: unique("sg_my"),
            user: unique("sg_u"),
            password: format!("pw-{:x}", rand::random::<u64>()),
        };
        let mut root = root().await;
        root.query_drop(format!(
            "CREATE DATABASE {name} CHARACTER SET utf8mb4;
             CREATE USER '{user}'@'%' IDENTIFIED BY '{password}';
             GRANT ALL ON {name}.* TO '{user}'@'%';",
            name = db.name,
            user = db.user,
            password = db.password
        ))
        .await
        .unwrap();
        let _ = root.disconnect().await;
        let mut conn = db.direct().await;
        conn.query_drop(
            "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL, price DECIMAL(10,2),
                 made DATETIME, doc JSON, data BLOB);
             INSERT INTO items VALUES
                 (1, 'apple', 1.25, '2024-01-02 03:04:05', '{\"a\": 1}', X'00FF10'),
                 (2, 'pear', 2.50, NULL, NULL, NULL),
                 (3, 'fíg ☃', 4.00, '1999-12-31 23:59:59', '[1, 2, 3]', '');
             CREATE TABLE user (id INT PRIMARY KEY, login VARCHAR(50));
             INSERT INTO user VALUES (1, 'alice');",
        )
        .await
        .unwrap();
        conn.query_drop(
            "CREATE FUNCTION wipe() RETURNS INT MODIFIES SQL DATA
                 BEGIN DELETE FROM items; RETURN 1; END",
        )
        .await
        .unwrap();
        conn.query_drop("CREATE PROCEDURE wipe_proc() MODIFIES SQL DATA DELETE FROM items")
            .await
            .unwrap();
        // A stored function named like a MySQL 8 built-in MariaDB lacks, and a view
        // whose function turns the session read-write (what a DBA's view could do).
        conn.query_drop("CREATE FUNCTION format_bytes(x INT) RETURNS INT RETURN x * 2")
            .await
            .unwrap();
        conn.query_drop(
            "CREATE FUNCTION flip() RETURNS INT BEGIN SET @@session.tx_read_only = 0; RETURN 1; END",
        )
        .await
        .unwrap();
        conn.query_drop("CREATE VIEW v_flip AS SELECT flip() AS x")
            .await
            .unwrap();
        let other = format!("{}_other", db.name);
        let mut root = self::root().await;
        root.query_drop(format!(
            "CREATE DATABASE {other}; CREATE TABLE {other}.secret (s VARCHAR(10));
             INSERT INTO {other}.secret VALUES ('hidden');
             GRANT SELECT ON {other}.* TO '{user}'@'%';",
            user = db.user
        ))
        .await
        .unwrap();
        let _ = root.disconnect().await;
        let _ = conn.disconnect().await;
        db
    }

    /// A direct connection as the upstream user.
    pub async fn direct(&self) -> Conn {
        Conn::new(
            OptsBuilder::default()
                .ip_or_hostname("127.0.0.1")
                .tcp_port(3306)
                .user(Some(&self.user))
                .pass(Some(&self.password))
                .db_name(Some(&self.name))
                .prefer_socket(false),
        )
        .await
        .unwrap()
    }

    pub async fn item_count(&self) -> i64 {
        let mut conn = self.direct().await;
        let n: Option<i64> = conn
            .query_first("SELECT COUNT(*) FROM items")
            .await
            .unwrap();
        let _ = conn.disconnect().await;
        n.unwrap_or(-1)
    }
}

/// Options for a MySQL test gateway.
pub struct MySetup {
    pub grant_ttl: &'static str,
    pub allow_plaintext: bool,
    /// More lines for the "shop" `[[grant]]`.
    pub grant_extra: String,
    pub limits: String,
}

impl Default for MySetup {
    fn default() -> Self {
        MySetup {
            grant_ttl: "10m",
            allow_plaintext: false,
            grant_extra: String::new(),
            limits: String::new(),
        }
    }
}

pub struct MyGateway {
    pub gateway: RunningGateway,
    pub issuer: DevIssuer,
    pub key: DevKey,
    pub db: MyDb,
    pub audit_dir: PathBuf,
    /// The gateway's config file (tests rewrite it and reload).
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl MyGateway {
    pub async fn start() -> MyGateway {
        MyGateway::start_with(MySetup::default()).await
    }

    pub async fn start_with(setup: MySetup) -> MyGateway {
        let db = MyDb::create().await;
        let key = DevKey::generate().unwrap();
        let issuer = DevIssuer::start(SocketAddr::from(([127, 0, 0, 1], 0)), vec![key.clone()])
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("upstream.pw"), &db.password).unwrap();
        let text = format!(
            r#"
[listen]
postgres = "127.0.0.1:0"
mysql = "127.0.0.1:0"
allow_plaintext = {plain}
tls_cert = "cert.pem"
tls_key = "key.pem"

[identity]
issuer = "{issuer}"
audience = "{AUDIENCE}"
jwks_min_refetch = "0s"

[[connection]]
name = "shop"
protocol = "mysql"
upstream = "127.0.0.1:3306"
database = "{db}"
user = "{user}"
password_file = "upstream.pw"

[[grant]]
connection = "shop"
groups = ["analytics-agents"]
ttl = "{ttl}"
{grant_extra}

[audit]
dir = "audit"

[limits]
{limits}
"#,
            plain = setup.allow_plaintext,
            issuer = issuer.url,
            db = db.name,
            user = db.user,
            ttl = setup.grant_ttl,
            grant_extra = setup.grant_extra,
            limits = setup.limits,
        );
        let (cert, cert_key) = sqlgate::tls::self_signed().unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
        std::fs::write(dir.path().join("key.pem"), cert_key).unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::load(&path).unwrap();
        let gateway = Gateway::start(config, None).await.unwrap();
        MyGateway {
            gateway,
            audit_dir: dir.path().join("audit"),
            config: path.clone(),
            issuer,
            key,
            db,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.gateway.mysql_addr.expect("mysql listener").port()
    }

    pub fn request(&self, groups: &[&str]) -> TokenRequest {
        super::agent_request(&self.issuer.url, groups)
    }

    pub fn token(&self, groups: &[&str]) -> String {
        self.request(groups).mint(&self.key).unwrap()
    }

    /// Driver options for the agent: TLS (the test certificate is self-signed),
    /// the token in clear, the connection name as the database.
    pub fn opts(&self, db: &str, token: &str) -> OptsBuilder {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port())
            .user(Some("agent-7"))
            .pass(Some(token))
            .db_name(Some(db))
            .prefer_socket(false)
            .enable_cleartext_plugin(true)
            .ssl_opts(Some(
                SslOpts::default()
                    .with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ))
    }

    pub async fn connect(&self, db: &str, token: &str) -> Result<Conn, mysql_async::Error> {
        Conn::new(self.opts(db, token)).await
    }

    /// An analytics agent's session on "shop".
    pub async fn agent(&self) -> Conn {
        self.connect("shop", &self.token(&["analytics-agents"]))
            .await
            .unwrap()
    }

    /// Waits (up to 10 s) for a `session.ended` record whose reason satisfies `reason`:
    /// a client sees its session's last error before the end is recorded.
    pub async fn ended_with(&self, reason: impl Fn(&str) -> bool) -> bool {
        for _ in 0..100 {
            let found = self.audit().await.iter().any(|r| {
                r["event"] == "session.ended" && r["reason"].as_str().is_some_and(&reason)
            });
            if found {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    pub async fn audit(&self) -> Vec<serde_json::Value> {
        self.gateway.services.audit.sync().await.unwrap();
        let text = std::fs::read_to_string(self.audit_dir.join("audit.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// The server error of a failed call: (code, message).
pub fn server_error(e: &mysql_async::Error) -> (u16, String) {
    match e {
        mysql_async::Error::Server(e) => (e.code, e.message.clone()),
        other => (0, other.to_string()),
    }
}

/// Asserts that `sql` is denied with 1227 and a message containing `why`.
pub async fn assert_denied(conn: &mut Conn, sql: &str, why: &str) {
    let err = conn
        .query_drop(sql)
        .await
        .expect_err(&format!("expected {sql:?} to be denied"));
    let (code, message) = server_error(&err);
    assert!(
        matches!(code, 1227 | 1064 | 1142 | 1044),
        "{sql:?}: unexpected code {code}: {message}"
    );
    assert!(
        message.to_lowercase().contains(&why.to_lowercase()),
        "{sql:?}: {message:?} does not mention {why:?}"
    );
}

/// A hand-driven MySQL client (plaintext, loopback; the gateway must allow it), for
/// packets no driver sends.
pub struct RawMy {
    stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
}

impl RawMy {
    /// Logs in with `mysql_clear_password` in the first response.
    pub async fn login(port: u16, database: &str, token: &str) -> RawMy {
        use sqlgate_mysql::CapabilityFlags as C;
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut raw = RawMy {
            stream,
            buf: bytes::BytesMut::new(),
        };
        let hello = raw.read().await;
        assert_eq!(hello.payload[0], 10, "HandshakeV10");
        let caps = C::CLIENT_PROTOCOL_41
            | C::CLIENT_SECURE_CONNECTION
            | C::CLIENT_PLUGIN_AUTH
            | C::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
            | C::CLIENT_CONNECT_WITH_DB
            | C::CLIENT_MULTI_STATEMENTS
            | C::CLIENT_MULTI_RESULTS
            | C::CLIENT_TRANSACTIONS;
        let mut out = Vec::new();
        out.extend_from_slice(&caps.bits().to_le_bytes());
        out.extend_from_slice(&(16u32 << 20).to_le_bytes());
        out.push(45);
        out.extend_from_slice(&[0; 23]);
        out.extend_from_slice(b"agent-7\0");
        let mut auth = token.as_bytes().to_vec();
        auth.push(0);
        sqlgate_mysql::put_lenenc_int(&mut out, auth.len() as u64);
        out.extend_from_slice(&auth);
        out.extend_from_slice(database.as_bytes());
        out.push(0);
        out.extend_from_slice(b"mysql_clear_password\0");
        raw.send(1, &out).await;
        let answer = raw.read().await;
        assert_eq!(
            answer.payload[0],
            0,
            "login failed: {:?}",
            String::from_utf8_lossy(&answer.payload)
        );
        raw
    }

    pub async fn send(&mut self, seq: u8, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mut out = bytes::BytesMut::new();
        sqlgate_mysql::frame::encode(seq, payload, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn read(&mut self) -> sqlgate_mysql::frame::Packet {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(p) = sqlgate_mysql::frame::decode(&mut self.buf, 64 << 20).unwrap() {
                return p;
            }
            let n =
                tokio::time::timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.buf))
                    .await
                    .expect("an answer within 10 s")
                    .unwrap();
            assert!(n > 0, "the gateway closed the connection");
        }
    }

    /// Reads one complete answer of the `expect` kind; returns its packets.
    pub async fn answer(
        &mut self,
        expect: sqlgate_mysql::response::Expect,
    ) -> Vec<sqlgate_mysql::frame::Packet> {
        let mut tracker = sqlgate_mysql::response::ResponseTracker::new(expect, false);
        let mut packets = Vec::new();
        loop {
            let p = self.read().await;
            let (step, _) = tracker.feed(&p.payload).unwrap();
            packets.push(p);
            if step == sqlgate_mysql::response::Step::Done {
                return packets;
            }
        }
    }

    /// Sends a command (sequence id 0) and reads its answer.
    pub async fn command(
        &mut self,
        payload: &[u8],
        expect: sqlgate_mysql::response::Expect,
    ) -> Vec<sqlgate_mysql::frame::Packet> {
        self.send(0, payload).await;
        self.answer(expect).await
    }
}

/// The error code of an ERR packet payload, or 0 for any other packet.
pub fn err_code(payload: &[u8]) -> u16 {
    if payload.first() == Some(&0xff) {
        u16::from_le_bytes([payload[1], payload[2]])
    } else {
        0
    }
}
