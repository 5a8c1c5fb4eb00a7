//! `gateway.toml`: what the DBA writes, read strictly and checked before anything runs.
//!
//! Parsing is two steps. [`RawConfig`] mirrors the file (serde, `deny_unknown_fields`,
//! so a typo is an error, not a silently ignored key). [`Config::from_raw`] then checks
//! what serde cannot — durations, addresses, references between sections, where
//! credentials come from — and resolves relative paths against the config file's
//! directory. Every problem is reported as a [`ConfigError`] naming the file, the key
//! and what is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration problem, phrased for the person who wrote the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {key}: {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

// ---------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: RawListen,
    pub identity: RawIdentity,
    #[serde(default, rename = "connection")]
    pub connections: Vec<RawConnection>,
    #[serde(default, rename = "grant")]
    pub grants: Vec<RawGrant>,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub postgres: Option<String>,
    /// The MySQL/MariaDB listener (default 127.0.0.1:3307 when a connection speaks mysql).
    pub mysql: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub allow_plaintext: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub issuer: String,
    pub audience: OneOrMany,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default = "default_scopes_claim")]
    pub scopes_claim: String,
    #[serde(default = "default_client_id_claim")]
    pub client_id_claim: String,
    #[serde(default = "default_leeway")]
    pub leeway: String,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Least time between two JWKS fetches triggered by an unknown `kid`.
    #[serde(default = "default_jwks_refetch")]
    pub jwks_min_refetch: String,
    /// How long fetched keys are used before they are fetched again.
    #[serde(default = "default_jwks_ttl")]
    pub jwks_cache_ttl: String,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnection {
    pub name: String,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    pub upstream: String,
    pub database: String,
    pub user: String,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// An inline secret. Refused unless `insecure_dev_password = true` says this is a
    /// throwaway development setup.
    pub password: Option<String>,
    #[serde(default)]
    pub insecure_dev_password: bool,
    #[serde(default = "default_upstream_tls")]
    pub upstream_tls: String,
    pub upstream_ca: Option<PathBuf>,
    /// Server name for upstream TLS certificate checks (default: the upstream host).
    pub upstream_tls_name: Option<String>,
    /// Authentication methods the upstream may ask for (default: every method the
    /// connection's protocol supports).
    pub upstream_auth: Option<Vec<String>>,
    /// Upstream sessions sqlgate may hold open at once on this connection.
    pub max_sessions: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrant {
    pub connection: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub client_ids: Vec<String>,
    #[serde(default = "default_access")]
    pub access: String,
    #[serde(default = "default_ttl")]
    pub ttl: String,
    pub statement_timeout: Option<String>,
    pub idle_in_transaction_timeout: Option<String>,
    /// Live sessions under this `[[grant]]` entry, all identities together.
    pub max_sessions: Option<usize>,
    /// Live sessions of one identity (sub) under this entry.
    pub max_sessions_per_identity: Option<usize>,
    /// DBA rule files (relative to this config file) that narrow this grant.
    #[serde(default)]
    pub rules: Vec<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub dir: Option<PathBuf>,
    /// Statement text kept per record; longer text is cut, with its length and hash.
    pub max_statement_bytes: Option<usize>,
    /// The active segment is closed and a new one started past this size (bytes).
    pub segment_bytes: Option<usize>,
    /// ... or past this age ("1h").
    pub segment_age: Option<String>,
    /// Closed segments older than this are deleted ("90d"); default: kept forever.
    pub retention: Option<String>,
    /// "strict" (default): a statement's record is on disk before its answer reaches
    /// the client. "batched": records are synced at least every `batch_interval`.
    pub durability: Option<String>,
    /// The bound for "batched" ("200ms").
    pub batch_interval: Option<String>,
    /// Leave bound parameter values out of statement records (their count stays).
    pub redact_parameters: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_statement_bytes: Option<usize>,
    pub connect_timeout: Option<String>,
    pub login_timeout: Option<String>,
    /// Defaults for grants that do not set their own.
    pub statement_timeout: Option<String>,
    pub idle_in_transaction_timeout: Option<String>,
    pub max_sessions_per_identity: Option<usize>,
    /// Sessions across the whole gateway.
    pub max_sessions: Option<usize>,
    /// Default for connections that do not set their own `max_sessions`.
    pub max_sessions_per_connection: Option<usize>,
    /// Client connections that have not finished logging in.
    pub max_unauthenticated: Option<usize>,
    /// Cancel requests forwarded per second, gateway-wide.
    pub max_cancels_per_second: Option<u32>,
    /// Bytes of remembered verdicts per session.
    pub verdict_cache_bytes: Option<usize>,
    /// Threads that parse large statements, and statements that may wait for one.
    pub parse_threads: Option<usize>,
    pub parse_queue: Option<usize>,
    /// Caps on settings that size server memory, e.g. `work_mem = "64MB"`.
    #[serde(default)]
    pub setting_caps: std::collections::BTreeMap<String, toml::Value>,
}

fn default_groups_claim() -> String {
    "groups".into()
}
fn default_scopes_claim() -> String {
    "scp".into()
}
fn default_client_id_claim() -> String {
    "cid".into()
}
/// Okta's own verifiers allow two minutes of clock skew.
fn default_leeway() -> String {
    "120s".into()
}
fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_jwks_refetch() -> String {
    "30s".into()
}
fn default_jwks_ttl() -> String {
    "10m".into()
}
fn default_protocol() -> String {
    "postgres".into()
}
fn default_upstream_tls() -> String {
    "disable".into()
}

/// Upstream authentication methods sqlgate can perform.
pub const UPSTREAM_AUTH_METHODS: &[&str] = &["scram-sha-256", "md5", "password", "trust"];

/// Upstream authentication methods sqlgate supports on MySQL/MariaDB.
pub const MYSQL_UPSTREAM_AUTH_METHODS: &[&str] = &[
    "mysql_native_password",
    "caching_sha2_password",
    "mysql_clear_password",
];

/// Where the MySQL listener binds when a mysql connection exists and
/// `listen.mysql` is not set.
pub const DEFAULT_MYSQL_LISTEN: &str = "127.0.0.1:3307";

fn default_access() -> String {
    "read-only".into()
}
fn default_ttl() -> String {
    "10m".into()
}

// ---------------------------------------------------------------------------------
// The checked configuration the gateway runs on.

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages), if any.
    pub source: PathBuf,
    pub listen: Listen,
    pub identity: IdentityConfig,
    pub connections: Vec<ConnectionConfig>,
    pub grants: Vec<GrantConfig>,
    pub audit_dir: PathBuf,
    /// Statement text kept per audit record (longer text: cut, with length and hash).
    pub audit_max_statement_bytes: usize,
    /// Segment rotation and retention of the trail.
    pub audit_segments: crate::audit::Segments,
    /// When statement records must be on disk.
    pub audit_durability: crate::audit::Durability,
    /// Statement records carry parameter counts, not values.
    pub audit_redact_parameters: bool,
    pub limits: Limits,
}

/// Default of `audit.max_statement_bytes`.
pub const DEFAULT_AUDIT_STATEMENT_BYTES: usize = 64 << 10;

#[derive(Debug, Clone)]
pub struct Listen {
    pub postgres: Option<SocketAddr>,
    pub mysql: Option<SocketAddr>,
    pub tls: Option<TlsFiles>,
    pub allow_plaintext: bool,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub groups_claim: String,
    pub scopes_claim: String,
    pub client_id_claim: String,
    pub leeway: Duration,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub jwks_min_refetch: Duration,
    pub jwks_cache_ttl: Duration,
}

/// The wire protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Postgres,
    /// MySQL and MariaDB.
    Mysql,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
        }
    }

    /// The upstream authentication methods sqlgate supports for this protocol.
    pub fn upstream_auth_methods(self) -> &'static [&'static str] {
        match self {
            Protocol::Postgres => UPSTREAM_AUTH_METHODS,
            Protocol::Mysql => MYSQL_UPSTREAM_AUTH_METHODS,
        }
    }
}

/// Where the held upstream credential comes from. The secret itself is read when a
/// session needs it, so a rotated file or env var takes effect without a restart.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    None,
    Env(String),
    File(PathBuf),
    Inline(String),
}

impl CredentialSource {
    /// Reads the secret. Errors name the source, never the value.
    pub fn load(&self) -> Result<Option<String>, String> {
        match self {
            CredentialSource::None => Ok(None),
            CredentialSource::Env(var) => std::env::var(var)
                .map(Some)
                .map_err(|_| format!("environment variable {var} is not set")),
            CredentialSource::File(path) => std::fs::read_to_string(path)
                .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_owned()))
                .map_err(|e| format!("cannot read password file {}: {e}", path.display())),
            CredentialSource::Inline(secret) => Ok(Some(secret.clone())),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            CredentialSource::None => "no password (trust)".into(),
            CredentialSource::Env(var) => format!("password from ${var}"),
            CredentialSource::File(path) => format!("password from {}", path.display()),
            CredentialSource::Inline(_) => "inline dev password (insecure)".into(),
        }
    }
}

/// Upstream TLS mode, as libpq's sslmode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    Disable,
    /// Encrypt, do not verify the certificate.
    Require,
    /// Encrypt and verify the certificate and host name.
    VerifyFull,
}

#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    pub name: String,
    pub protocol: Protocol,
    pub upstream: String,
    pub database: String,
    pub user: String,
    pub credential: CredentialSource,
    pub upstream_tls: UpstreamTls,
    pub upstream_ca: Option<PathBuf>,
    pub upstream_tls_name: Option<String>,
    pub upstream_auth: Vec<String>,
    /// Upstream sessions sqlgate holds open at once on this connection, so the
    /// database keeps slots for its other clients.
    pub max_sessions: usize,
}

/// What a grant allows once issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadOnly => "read-only",
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrantConfig {
    pub connection: String,
    pub groups: Vec<String>,
    pub scopes: Vec<String>,
    pub subjects: Vec<String>,
    pub client_ids: Vec<String>,
    pub access: Access,
    pub ttl: Duration,
    pub statement_timeout: Duration,
    pub idle_in_transaction_timeout: Duration,
    /// Live sessions under this entry, all identities together (`None`: no cap of
    /// its own; the connection's and the gateway's still apply).
    pub max_sessions: Option<usize>,
    /// Live sessions of one identity (sub) under this entry.
    pub max_sessions_per_identity: usize,
    /// The DBA rules of its rule files.
    pub rules: std::sync::Arc<crate::policy::rules::RuleSet>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_statement_bytes: usize,
    /// Upstream connect and login.
    pub connect_timeout: Duration,
    /// From a client's first byte to its session being ready (TLS, startup, token).
    pub login_timeout: Duration,
    /// Grant defaults.
    pub statement_timeout: Duration,
    pub idle_in_transaction_timeout: Duration,
    pub max_sessions_per_identity: usize,
    /// Sessions across the gateway.
    pub max_sessions: usize,
    /// Default `max_sessions` of a connection.
    pub max_sessions_per_connection: usize,
    /// Client connections that have not finished logging in.
    pub max_unauthenticated: usize,
    /// Cancel requests forwarded per second, gateway-wide.
    pub max_cancels_per_second: u32,
    /// Bytes of remembered verdicts per session.
    pub verdict_cache_bytes: usize,
    /// Threads that parse large statements, and statements that may wait for one.
    pub parse_threads: usize,
    pub parse_queue: usize,
    /// Caps on settings that size server memory.
    pub setting_caps: crate::policy::caps::SettingCaps,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_statement_bytes: 1 << 20,
            connect_timeout: Duration::from_secs(10),
            login_timeout: Duration::from_secs(30),
            statement_timeout: Duration::from_secs(5 * 60),
            idle_in_transaction_timeout: Duration::from_secs(60),
            max_sessions_per_identity: 10,
            max_sessions: 200,
            max_sessions_per_connection: 50,
            max_unauthenticated: 64,
            max_cancels_per_second: 20,
            verdict_cache_bytes: 4 << 20,
            // One core is left to the async workers: a parser thread per core made the
            // p99 of other sessions one scheduler tick (bench/parse_stall.sh).
            parse_threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1).clamp(1, 8)),
            parse_queue: 32,
            setting_caps: crate::policy::caps::SettingCaps::postgres_defaults(),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validates config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Config::from_raw(raw, path)
    }

    pub fn from_raw(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            problem,
        };

        // [listen]
        let postgres = match &raw.listen.postgres {
            Some(addr) => Some(addr.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    "listen.postgres",
                    format!("{addr:?} is not an ip:port address ({e})"),
                )
            })?),
            None => None,
        };
        let mut mysql = match &raw.listen.mysql {
            Some(addr) => Some(addr.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    "listen.mysql",
                    format!("{addr:?} is not an ip:port address ({e})"),
                )
            })?),
            None => None,
        };
        let speaks_mysql = raw
            .connections
            .iter()
            .any(|c| matches!(c.protocol.as_str(), "mysql" | "mariadb"));
        if mysql.is_none() && speaks_mysql {
            mysql = DEFAULT_MYSQL_LISTEN.parse().ok();
        }
        if postgres.is_none() && mysql.is_none() {
            return Err(invalid(
                "listen",
                "no listener configured: set listen.postgres (or listen.mysql)".into(),
            ));
        }
        let tls = match (&raw.listen.tls_cert, &raw.listen.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: resolve(cert),
                key: resolve(key),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "listen.tls_key",
                    "tls_cert is set but tls_key is missing".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "listen.tls_cert",
                    "tls_key is set but tls_cert is missing".into(),
                ))
            }
        };
        if tls.is_none() && !raw.listen.allow_plaintext {
            return Err(invalid(
                "listen.tls_cert",
                "clients send their token as a password, so TLS is required: set tls_cert and tls_key \
                 (or allow_plaintext = true for a loopback-only test setup)"
                    .into(),
            ));
        }
        if raw.listen.allow_plaintext {
            for (name, addr) in [("listen.postgres", postgres), ("listen.mysql", mysql)] {
                if let Some(addr) = addr {
                    if !addr.ip().is_loopback() {
                        return Err(invalid(
                            "listen.allow_plaintext",
                            format!("plaintext is only allowed on a loopback address, and {name} is {addr}"),
                        ));
                    }
                }
            }
        }

        // [identity]
        let id = &raw.identity;
        let issuer = id.issuer.trim_end_matches('/').to_owned();
        if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
            return Err(invalid(
                "identity.issuer",
                format!("{issuer:?} is not an http(s) URL"),
            ));
        }
        let audiences = match &id.audience {
            OneOrMany::One(a) => vec![a.clone()],
            OneOrMany::Many(v) => v.clone(),
        };
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            return Err(invalid(
                "identity.audience",
                "must name the audience tokens are issued for".into(),
            ));
        }
        let mut algorithms = Vec::new();
        for name in &id.algorithms {
            let alg = crate::identity::parse_algorithm(name)
                .map_err(|problem| invalid("identity.algorithms", problem))?;
            algorithms.push(alg);
        }
        if algorithms.is_empty() {
            return Err(invalid(
                "identity.algorithms",
                "at least one algorithm is needed".into(),
            ));
        }
        let duration =
            |key: &str, value: &str| parse_duration(value).map_err(|problem| invalid(key, problem));
        // A time limit: at least a second, at most a day (grants are short).
        let limit_duration = |key: &str, value: &str| {
            let d = duration(key, value)?;
            if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
                return Err(invalid(
                    key,
                    format!("{value:?} must be between 1s and 24h"),
                ));
            }
            Ok(d)
        };
        let identity = IdentityConfig {
            issuer,
            audiences,
            groups_claim: id.groups_claim.clone(),
            scopes_claim: id.scopes_claim.clone(),
            client_id_claim: id.client_id_claim.clone(),
            leeway: duration("identity.leeway", &id.leeway)?,
            algorithms,
            jwks_min_refetch: duration("identity.jwks_min_refetch", &id.jwks_min_refetch)?,
            jwks_cache_ttl: duration("identity.jwks_cache_ttl", &id.jwks_cache_ttl)?,
        };
        if identity.leeway > Duration::from_secs(300) {
            return Err(invalid(
                "identity.leeway",
                "more than 5 minutes of clock skew is not accepted".into(),
            ));
        }

        // [limits] first: connections and grants take their defaults from it.
        let mut limits = Limits::default();
        if let Some(max) = raw.limits.max_statement_bytes {
            if max == 0 || max > 64 << 20 {
                return Err(invalid(
                    "limits.max_statement_bytes",
                    "must be between 1 and 67108864".into(),
                ));
            }
            limits.max_statement_bytes = max;
        }
        if let Some(t) = &raw.limits.connect_timeout {
            limits.connect_timeout = duration("limits.connect_timeout", t)?;
        }
        if let Some(t) = &raw.limits.login_timeout {
            limits.login_timeout = duration("limits.login_timeout", t)?;
        }

        let positive = |key: &str, value: Option<usize>, default: usize| match value {
            Some(0) => Err(invalid(key, "must be at least 1".into())),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        if let Some(t) = &raw.limits.statement_timeout {
            limits.statement_timeout = limit_duration("limits.statement_timeout", t)?;
        }
        if let Some(t) = &raw.limits.idle_in_transaction_timeout {
            limits.idle_in_transaction_timeout =
                limit_duration("limits.idle_in_transaction_timeout", t)?;
        }
        limits.max_sessions_per_identity = positive(
            "limits.max_sessions_per_identity",
            raw.limits.max_sessions_per_identity,
            limits.max_sessions_per_identity,
        )?;
        limits.max_sessions = positive(
            "limits.max_sessions",
            raw.limits.max_sessions,
            limits.max_sessions,
        )?;
        limits.max_sessions_per_connection = positive(
            "limits.max_sessions_per_connection",
            raw.limits.max_sessions_per_connection,
            limits.max_sessions_per_connection,
        )?;
        limits.max_unauthenticated = positive(
            "limits.max_unauthenticated",
            raw.limits.max_unauthenticated,
            limits.max_unauthenticated,
        )?;
        if let Some(n) = raw.limits.max_cancels_per_second {
            if n == 0 {
                return Err(invalid(
                    "limits.max_cancels_per_second",
                    "must be at least 1".into(),
                ));
            }
            limits.max_cancels_per_second = n;
        }
        limits.verdict_cache_bytes = raw
            .limits
            .verdict_cache_bytes
            .unwrap_or(limits.verdict_cache_bytes);
        limits.parse_threads = positive(
            "limits.parse_threads",
            raw.limits.parse_threads,
            limits.parse_threads,
        )?;
        limits.parse_queue = raw.limits.parse_queue.unwrap_or(limits.parse_queue);
        for (name, value) in &raw.limits.setting_caps {
            limits
                .setting_caps
                .set(name, value)
                .map_err(|problem| invalid(&format!("limits.setting_caps.{name}"), problem))?;
        }
        let audit_max_statement_bytes = positive(
            "audit.max_statement_bytes",
            raw.audit.max_statement_bytes,
            DEFAULT_AUDIT_STATEMENT_BYTES,
        )?;
        let mut audit_segments = crate::audit::Segments::default();
        audit_segments.max_bytes = positive(
            "audit.segment_bytes",
            raw.audit.segment_bytes,
            audit_segments.max_bytes as usize,
        )? as u64;
        if let Some(age) = &raw.audit.segment_age {
            audit_segments.max_age = parse_duration(age)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    invalid(
                        "audit.segment_age",
                        format!("{age:?} is not a positive duration (\"1h\")"),
                    )
                })?;
        }
        if let Some(keep) = &raw.audit.retention {
            audit_segments.retention = Some(
                parse_duration(keep)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        invalid(
                            "audit.retention",
                            format!("{keep:?} is not a positive duration (\"90d\")"),
                        )
                    })?,
            );
        }
        let audit_durability = match (raw.audit.durability.as_deref(), &raw.audit.batch_interval) {
            (None | Some("strict"), None) => crate::audit::Durability::Strict,
            (None | Some("strict"), Some(_)) => {
                return Err(invalid(
                    "audit.batch_interval",
                    "applies only with durability = \"batched\"".into(),
                ))
            }
            (Some("batched"), interval) => {
                let interval = interval.as_deref().unwrap_or("200ms");
                let bound = parse_duration(interval)
                    .ok()
                    .filter(|d| !d.is_zero() && *d <= std::time::Duration::from_secs(60))
                    .ok_or_else(|| {
                        invalid(
                            "audit.batch_interval",
                            format!("{interval:?} is not a duration from 1ms to 60s (\"200ms\")"),
                        )
                    })?;
                crate::audit::Durability::Batched(bound)
            }
            (Some(other), _) => {
                return Err(invalid(
                    "audit.durability",
                    format!("{other:?} is not \"strict\" or \"batched\""),
                ))
            }
        };

        // [[connection]]
        let mut connections: Vec<ConnectionConfig> = Vec::new();
        for (i, c) in raw.connections.iter().enumerate() {
            let key = |field: &str| format!("connection[{i}] ({}).{field}", c.name);
            if c.name.is_empty() || c.name.len() > 63 {
                return Err(invalid(
                    &key("name"),
                    "must be 1 to 63 characters (clients put it in dbname)".into(),
                ));
            }
            if connections.iter().any(|o| o.name == c.name) {
                return Err(invalid(
                    &key("name"),
                    format!("connection {:?} is defined twice", c.name),
                ));
            }
            let protocol = match c.protocol.as_str() {
                "postgres" | "postgresql" => Protocol::Postgres,
                "mysql" | "mariadb" => Protocol::Mysql,
                other => {
                    return Err(invalid(
                        &key("protocol"),
                        format!("unknown protocol {other:?} (expected \"postgres\" or \"mysql\")"),
                    ))
                }
            };
            if !c.upstream.contains(':') {
                return Err(invalid(
                    &key("upstream"),
                    format!("{:?} must be host:port", c.upstream),
                ));
            }
            let sources = [
                c.password_env.is_some(),
                c.password_file.is_some(),
                c.password.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() > 1 {
                return Err(invalid(
                    &key("password_env"),
                    "set only one of password_env, password_file, password".into(),
                ));
            }
            let credential = if let Some(var) = &c.password_env {
                CredentialSource::Env(var.clone())
            } else if let Some(file) = &c.password_file {
                CredentialSource::File(resolve(file))
            } else if let Some(secret) = &c.password {
                if !c.insecure_dev_password {
                    return Err(invalid(
                        &key("password"),
                        "inline passwords are refused: use password_env or password_file \
                         (or set insecure_dev_password = true on a throwaway dev setup)"
                            .into(),
                    ));
                }
                CredentialSource::Inline(secret.clone())
            } else {
                CredentialSource::None
            };
            let upstream_tls = match c.upstream_tls.as_str() {
                "disable" => UpstreamTls::Disable,
                "require" => UpstreamTls::Require,
                "verify-full" => UpstreamTls::VerifyFull,
                other => {
                    return Err(invalid(
                        &key("upstream_tls"),
                        format!(
                            "unknown mode {other:?} (expected disable, require or verify-full)"
                        ),
                    ))
                }
            };
            let methods = protocol.upstream_auth_methods();
            let upstream_auth = c
                .upstream_auth
                .clone()
                .unwrap_or_else(|| methods.iter().map(|m| m.to_string()).collect());
            if upstream_auth.is_empty() {
                return Err(invalid(
                    &key("upstream_auth"),
                    "allow at least one method".into(),
                ));
            }
            if let Some(bad) = upstream_auth
                .iter()
                .find(|m| !methods.contains(&m.as_str()))
            {
                return Err(invalid(
                    &key("upstream_auth"),
                    format!(
                        "unknown method {bad:?} for a {} connection (expected {})",
                        protocol.as_str(),
                        methods.join(", ")
                    ),
                ));
            }
            connections.push(ConnectionConfig {
                name: c.name.clone(),
                protocol,
                upstream: c.upstream.clone(),
                database: c.database.clone(),
                user: c.user.clone(),
                credential,
                upstream_tls,
                upstream_ca: c.upstream_ca.as_deref().map(resolve),
                upstream_tls_name: c.upstream_tls_name.clone(),
                upstream_auth,
                max_sessions: positive(
                    &key("max_sessions"),
                    c.max_sessions,
                    limits.max_sessions_per_connection,
                )?,
            });
        }

        // [[grant]]
        let mut grants = Vec::new();
        for (i, g) in raw.grants.iter().enumerate() {
            let key = |field: &str| format!("grant[{i}].{field}");
            if !connections.iter().any(|c| c.name == g.connection) {
                let known: Vec<&str> = connections.iter().map(|c| c.name.as_str()).collect();
                return Err(invalid(
                    &key("connection"),
                    format!(
                        "no [[connection]] named {:?} (defined: {})",
                        g.connection,
                        known.join(", ")
                    ),
                ));
            }
            if g.groups.is_empty()
                && g.scopes.is_empty()
                && g.subjects.is_empty()
                && g.client_ids.is_empty()
            {
                return Err(invalid(
                    &key("groups"),
                    "a grant must name who it is for: groups, scopes, subjects or client_ids"
                        .into(),
                ));
            }
            let access = match g.access.as_str() {
                "read-only" => Access::ReadOnly,
                other => {
                    return Err(invalid(
                        &key("access"),
                        format!("unknown access {other:?} (expected \"read-only\")"),
                    ))
                }
            };
            let ttl = duration(&key("ttl"), &g.ttl)?;
            if ttl.is_zero() || ttl > Duration::from_secs(24 * 3600) {
                return Err(invalid(
                    &key("ttl"),
                    "must be between 1s and 24h; grants are meant to be short".into(),
                ));
            }
            let statement_timeout = match &g.statement_timeout {
                Some(t) => limit_duration(&key("statement_timeout"), t)?,
                None => limits.statement_timeout,
            };
            let idle_in_transaction_timeout = match &g.idle_in_transaction_timeout {
                Some(t) => limit_duration(&key("idle_in_transaction_timeout"), t)?,
                None => limits.idle_in_transaction_timeout,
            };
            if let Some(0) = g.max_sessions {
                return Err(invalid(&key("max_sessions"), "must be at least 1".into()));
            }
            grants.push(GrantConfig {
                connection: g.connection.clone(),
                groups: g.groups.clone(),
                scopes: g.scopes.clone(),
                subjects: g.subjects.clone(),
                client_ids: g.client_ids.clone(),
                access,
                ttl,
                statement_timeout,
                idle_in_transaction_timeout,
                max_sessions: g.max_sessions,
                max_sessions_per_identity: positive(
                    &key("max_sessions_per_identity"),
                    g.max_sessions_per_identity,
                    limits.max_sessions_per_identity,
                )?,
                rules: std::sync::Arc::new(
                    crate::policy::rules::RuleSet::load(&g.rules, &base)
                        .map_err(|problem| invalid(&key("rules"), problem))?,
                ),
            });
        }

        let audit_dir = resolve(raw.audit.dir.as_deref().unwrap_or(Path::new("var/audit")));
        Ok(Config {
            source: path.to_owned(),
            listen: Listen {
                postgres,
                mysql,
                tls,
                allow_plaintext: raw.listen.allow_plaintext,
            },
            identity,
            connections,
            grants,
            audit_dir,
            audit_max_statement_bytes,
            audit_segments,
            audit_durability,
            audit_redact_parameters: raw.audit.redact_parameters.unwrap_or(false),
            limits,
        })
    }

    pub fn connection(&self, name: &str) -> Option<&ConnectionConfig> {
        self.connections.iter().find(|c| c.name == name)
    }
}

/// Parses "90s", "10m", "1h", "1h30m".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 30s, 10m or 1h ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [listen]
        postgres = "127.0.0.1:6432"
        tls_cert = "certs/gw.pem"
        tls_key = "certs/gw-key.pem"

        [identity]
        issuer = "https://example.okta.com/oauth2/default"
        audience = "api://sqlgate"

        [[connection]]
        name = "reporting"
        upstream = "10.0.3.7:5432"
        database = "reporting"
        user = "sqlgate_ro"
        password_env = "REPORTING_RO_PASSWORD"

        [[grant]]
        connection = "reporting"
        groups = ["analytics-agents"]
        ttl = "10m"
    "#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/sqlgate/gateway.toml"))
    }

    #[test]
    fn reads_the_design_sketch() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.grants[0].ttl, Duration::from_secs(600));
        assert_eq!(
            config.listen.tls.unwrap().cert,
            Path::new("/etc/sqlgate/certs/gw.pem")
        );
        assert_eq!(config.identity.algorithms.len(), 2);
    }

    #[test]
    fn names_file_key_and_problem() {
        let bad = GOOD.replace("connection = \"reporting\"\n", "connection = \"primary\"\n");
        let err = parse(&bad).unwrap_err().to_string();
        assert!(err.contains("/etc/sqlgate/gateway.toml"), "{err}");
        assert!(err.contains("grant[0].connection"), "{err}");
        assert!(err.contains("\"primary\""), "{err}");

        let typo = GOOD.replace("ttl = \"10m\"", "tll = \"10m\"");
        let err = parse(&typo).unwrap_err().to_string();
        assert!(err.contains("unknown field `tll`"), "{err}");
    }

    #[test]
    fn refuses_inline_secrets_and_public_plaintext() {
        let inline = GOOD.replace(
            "password_env = \"REPORTING_RO_PASSWORD\"",
            "password = \"hunter2\"",
        );
        let err = parse(&inline).unwrap_err().to_string();
        assert!(err.contains("inline passwords are refused"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");

        let public = GOOD
            .replace("127.0.0.1:6432", "0.0.0.0:6432")
            .replace("[identity]", "allow_plaintext = true\n[identity]");
        let err = parse(&public).unwrap_err().to_string();
        assert!(err.contains("loopback"), "{err}");
    }

    #[test]
    fn refuses_unknown_algorithms_and_symmetric_ones() {
        let hs = GOOD.replace(
            "audience = \"api://sqlgate\"",
            "audience = \"a\"\nalgorithms = [\"HS256\"]",
        );
        assert!(parse(&hs).unwrap_err().to_string().contains("HS256"));
    }
}
