//! The command line: `serve`, `check`, `demo`, `dev-issuer`, `token`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{parse_duration, Config, CredentialSource};
use crate::gateway::Gateway;
use crate::identity::dev_issuer::{DevIssuer, DevKey, TokenRequest};

#[derive(Parser, Debug)]
#[command(
    name = "sqlgate",
    version,
    about = "Database firewall gateway: OIDC token in, short read-only grant out."
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway from a config file.
    Serve {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
        /// Benchmarks only: build audit records and drop them unwritten, to measure
        /// what the trail costs (bench/pgbench.sh AUDIT_VARIANTS=1).
        #[arg(long, hide = true)]
        bench_discard_audit: bool,
        /// Write the gateway's process id to this file (for `sqlgate reload`).
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Check a config and its rule files, then tell the running gateway to put its
    /// grants and rules in force (SIGHUP). The gateway logs the outcome and records
    /// `config.reloaded` or `config.reload_refused` in the audit trail.
    Reload {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
        /// The gateway's process id.
        #[arg(long, conflicts_with = "pid_file")]
        pid: Option<u32>,
        /// The file `sqlgate serve --pid-file` wrote.
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Validate a config file and print who may reach what.
    Check {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
        /// Also log in to each Postgres upstream with its held credential and warn
        /// when the role is more powerful than a read-only gateway needs (superuser,
        /// server files, programs, signals, BYPASSRLS, pg_write_all_data).
        #[arg(long)]
        connect: bool,
    },
    /// DBA rules: try statements against a grant's rules before deploying them.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Compliance tools for the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Start a self-contained demo: dev issuer, TLS gateway, one connection to local Postgres.
    Demo {
        /// Gateway listen address.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: SocketAddr,
        /// Upstream Postgres host:port.
        #[arg(long, default_value = "127.0.0.1:5432")]
        upstream: String,
        /// Upstream database.
        #[arg(long, default_value = "postgres")]
        database: String,
        /// Upstream user (the held credential; trust auth unless --password-env is set).
        #[arg(long, default_value = "postgres")]
        user: String,
        /// Environment variable holding the upstream password.
        #[arg(long)]
        password_env: Option<String>,
        /// Where the demo keeps its issuer key and audit trail.
        #[arg(long, default_value = "var/demo")]
        dir: PathBuf,
        /// The MySQL listener of the demo (connection `demo-mysql`).
        #[arg(long, default_value = "127.0.0.1:3307")]
        mysql_listen: SocketAddr,
        /// Upstream MariaDB/MySQL host:port for `demo-mysql`.
        #[arg(long, default_value = "127.0.0.1:3306")]
        mysql_upstream: String,
        /// Upstream MariaDB/MySQL database for `demo-mysql`.
        #[arg(long, default_value = "test")]
        mysql_database: String,
        /// Upstream MariaDB/MySQL user for `demo-mysql` (no password unless
        /// --mysql-password-env is set).
        #[arg(long, default_value = "root")]
        mysql_user: String,
        /// Environment variable holding the upstream MariaDB/MySQL password.
        #[arg(long)]
        mysql_password_env: Option<String>,
        /// Serve only the Postgres connection.
        #[arg(long)]
        no_mysql: bool,
    },
    /// Serve OIDC discovery and JWKS for a signing key (created if missing).
    DevIssuer {
        #[arg(long, default_value = "var/dev-issuer-key.pem")]
        key: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8899")]
        listen: SocketAddr,
    },
    /// Mint an access token signed by a dev issuer key.
    Token {
        #[arg(long, default_value = "var/dev-issuer-key.pem")]
        key: PathBuf,
        /// Issuer URL (the dev issuer prints it).
        #[arg(long, default_value = "http://127.0.0.1:8899")]
        issuer: String,
        #[arg(long, default_value = "api://sqlgate")]
        audience: String,
        /// Subject (`sub`).
        #[arg(long, default_value = "agent-7")]
        sub: String,
        /// Group (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Scope (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Client id (`cid`).
        #[arg(long)]
        cid: Option<String>,
        /// Lifetime, e.g. 10m or 1h.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Key id to put in the header (default: the key's own; another one makes a
        /// token the issuer's JWKS does not vouch for).
        #[arg(long)]
        kid: Option<String>,
    },
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Serve {
            config,
            bench_discard_audit,
            pid_file,
        } => serve(config, bench_discard_audit, pid_file).await,
        Command::Reload {
            config,
            pid,
            pid_file,
        } => reload(config, pid, pid_file),
        Command::Check { config, connect } => check(config, connect).await,
        Command::Rules {
            command:
                RulesCommand::Test {
                    config,
                    connection,
                    group,
                    sub,
                    sql,
                    file,
                },
        } => rules_test(config, connection, (group, sub), sql, file).await,
        Command::Rules {
            command: RulesCommand::Check { config },
        } => rules_check(config),
        Command::Audit { command } => match command {
            AuditCommand::Verify { trail } => audit_verify(trail),
            AuditCommand::Sessions { trail, filter } => audit_sessions(trail, filter.into()),
            AuditCommand::Export {
                trail,
                format,
                out,
                filter,
            } => audit_export(trail, &format, out, filter.into()),
            AuditCommand::Replay {
                session,
                trail,
                html,
            } => audit_replay(session, trail, html),
        },
        Command::Demo {
            listen,
            upstream,
            database,
            user,
            password_env,
            dir,
            mysql_listen,
            mysql_upstream,
            mysql_database,
            mysql_user,
            mysql_password_env,
            no_mysql,
        } => {
            crate::demo::run(crate::demo::DemoOptions {
                listen,
                upstream,
                database,
                user,
                password_env,
                dir,
                mysql: (!no_mysql).then_some(crate::demo::MysqlDemo {
                    listen: mysql_listen,
                    upstream: mysql_upstream,
                    database: mysql_database,
                    user: mysql_user,
                    password_env: mysql_password_env,
                }),
            })
            .await
        }
        Command::DevIssuer { key, listen } => dev_issuer(key, listen).await,
        Command::Token {
            key,
            issuer,
            audience,
            sub,
            groups,
            scopes,
            cid,
            ttl,
            kid,
        } => token(key, issuer, audience, sub, groups, scopes, cid, ttl, kid),
    };
    match result {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("sqlgate: {message}");
            1
        }
    }
}

async fn serve(
    path: PathBuf,
    bench_discard_audit: bool,
    pid_file: Option<PathBuf>,
) -> Result<(), String> {
    let mut config = Config::load(&path).map_err(|e| e.to_string())?;
    if bench_discard_audit {
        config.audit_durability = crate::audit::Durability::DiscardForBenchmarks;
    }
    let gateway = Gateway::start(config, None)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(pid_file) = &pid_file {
        // The pid, and the config it serves (so `sqlgate reload` checks that file).
        let served = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        std::fs::write(
            pid_file,
            format!("{}\n{}\n", std::process::id(), served.display()),
        )
        .map_err(|e| format!("cannot write the pid file {}: {e}", pid_file.display()))?;
    }
    let stop = wait_for_signal();
    tokio::pin!(stop);
    let mut hangups = Hangups::install();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = hangups.next() => {
                // Outcome logged and audited by reload itself.
                let _ = gateway.reload(&path).await;
            }
        }
    }
    tracing::info!("shutting down");
    gateway.shutdown();
    gateway.stopped(std::time::Duration::from_secs(5)).await;
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum RulesCommand {
    /// Parse every rule file the config's grants reference and list what each grant's
    /// rules do; exits 1 on the first broken file (naming file, line and key). The
    /// same check `sqlgate reload` and the gateway make.
    Check {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Decide statements as a session of a grant would (read-only floor, then the
    /// grant's rules) and check `-- expect: allow|deny [RULE]` lines; exits 1 when an
    /// expectation fails, so rule sets can be tested in CI. No upstream is contacted:
    /// user functions count as unknown.
    Test {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
        /// The connection whose grants are tested.
        #[arg(long)]
        connection: String,
        /// Use the first grant of the connection that names this group (default: its
        /// first grant).
        #[arg(long)]
        group: Option<String>,
        /// Use the first grant of the connection that names this subject (with
        /// --group: that names either, as the gateway matches a token).
        #[arg(long)]
        sub: Option<String>,
        /// Statements to decide.
        #[arg(long, conflicts_with = "file")]
        sql: Option<String>,
        /// A file of statements, with `-- expect:` lines before the statements they
        /// apply to.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// `sqlgate rules check`.
fn rules_check(config: PathBuf) -> Result<(), String> {
    let loaded = Config::load(&config).map_err(|e| e.to_string())?;
    let mut files = 0;
    for (i, g) in loaded.grants.iter().enumerate() {
        let set = &g.rules;
        let mut seen: Vec<&std::path::Path> = set.rules.iter().map(|r| r.file.as_path()).collect();
        seen.dedup();
        files += seen.len();
        println!(
            "grant[{i}] connection {} ({}): {} rule(s)",
            g.connection,
            describe_selectors(g),
            set.rules.len()
        );
        for line in describe_rule_set(set) {
            println!("  {line}");
        }
    }
    println!(
        "{}: {} grant(s), rule files parse ({files} with rules)",
        config.display(),
        loaded.grants.len()
    );
    Ok(())
}

/// Who a grant entry is for, as `check` prints it.
fn describe_selectors(g: &crate::config::GrantConfig) -> String {
    let mut parts = Vec::new();
    if !g.groups.is_empty() {
        parts.push(format!("groups {}", g.groups.join(", ")));
    }
    if !g.scopes.is_empty() {
        parts.push(format!("scopes {}", g.scopes.join(" ")));
    }
    if !g.subjects.is_empty() {
        parts.push(format!("subjects {}", g.subjects.join(", ")));
    }
    if !g.client_ids.is_empty() {
        parts.push(format!("client ids {}", g.client_ids.join(", ")));
    }
    parts.join("; ")
}

/// A grant's rules and limits, one line each.
fn describe_rule_set(set: &crate::policy::rules::RuleSet) -> Vec<String> {
    let mut lines: Vec<String> = set
        .rules
        .iter()
        .map(|rule| format!("rule {}", describe_rule(rule)))
        .collect();
    let limits = &set.limits;
    for (key, limit) in [
        ("max_rows", &limits.max_rows),
        ("max_statements", &limits.max_statements),
    ] {
        if let Some(limit) = limit {
            lines.push(format!("limit {}", limit.describe(key)));
        }
    }
    if let Some(hours) = &limits.hours {
        lines.push(format!("hours {hours}"));
    }
    lines
}

/// One rule on one line: id, effect, what it names, its file.
/// `require a WHERE and a LIMIT of at most 1000 on public.events`.
fn describe_require(q: &crate::policy::rules::Require) -> String {
    let tables: Vec<String> = q.tables.iter().map(|n| n.to_string()).collect();
    let mut needs = Vec::new();
    if q.where_clause {
        needs.push("a WHERE".to_owned());
    }
    match q.max_limit {
        Some(max) => needs.push(format!("a LIMIT of at most {max}")),
        None if q.limit => needs.push("a LIMIT".to_owned()),
        None => {}
    }
    if q.join_condition {
        needs.push("join conditions".to_owned());
    }
    format!("require {} on {}", needs.join(" and "), tables.join(", "))
}

fn describe_rule(rule: &crate::policy::rules::Rule) -> String {
    let list = |what: &str, names: Vec<String>| {
        (!names.is_empty()).then(|| format!("{what} {}", names.join(", ")))
    };
    let parts: Vec<String> = [
        list(
            "deny functions",
            rule.deny_functions.iter().map(|n| n.to_string()).collect(),
        ),
        list(
            "deny tables",
            rule.deny_tables.iter().map(|n| n.to_string()).collect(),
        ),
        list(
            "deny columns",
            rule.deny_columns.iter().map(|n| n.to_string()).collect(),
        ),
        list(
            "allow tables",
            rule.allow_tables.iter().map(|n| n.to_string()).collect(),
        ),
        list(
            "allow reviewed functions",
            rule.allow_functions.iter().map(|n| n.to_string()).collect(),
        ),
        rule.require.as_ref().map(describe_require),
    ]
    .into_iter()
    .flatten()
    .collect();
    let effect = match rule.effect {
        crate::policy::rules::Effect::Deny => "",
        crate::policy::rules::Effect::Audit => " [effect audit: flag, do not deny]",
    };
    format!(
        "{}{effect}: {} ({})",
        rule.id,
        parts.join("; "),
        rule.file.display()
    )
}

/// `sqlgate rules test`.
async fn rules_test(
    config: PathBuf,
    connection: String,
    (group, sub): (Option<String>, Option<String>),
    sql: Option<String>,
    file: Option<PathBuf>,
) -> Result<(), String> {
    use crate::policy::offline;
    let config = Config::load(&config).map_err(|e| e.to_string())?;
    let conn = config
        .connection(&connection)
        .ok_or_else(|| format!("no connection named {connection:?} in the config"))?;
    let (index, grant) = config
        .grants
        .iter()
        .enumerate()
        .filter(|(_, g)| g.connection == connection)
        .find(|(_, g)| match (&group, &sub) {
            (None, None) => true,
            (group, sub) => {
                group.as_ref().is_some_and(|x| g.groups.contains(x))
                    || sub.as_ref().is_some_and(|x| g.subjects.contains(x))
            }
        })
        .ok_or_else(|| match (&group, &sub) {
            (None, None) => format!("no grant names connection {connection:?}"),
            _ => format!(
                "no grant of connection {connection:?} names {}",
                [
                    group.as_ref().map(|g| format!("group {g:?}")),
                    sub.as_ref().map(|s| format!("subject {s:?}"))
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" or ")
            ),
        })?;
    let chunks = match (sql, file) {
        (Some(sql), None) => vec![(None, sql)],
        (None, Some(file)) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            offline::chunks(&text).map_err(|e| format!("{}: {e}", file.display()))?
        }
        _ => return Err("give --sql or --file".into()),
    };
    println!(
        "grant[{index}] of connection {connection:?} ({} rule(s))",
        grant.rules.rules.len()
    );
    // The upstream's function catalog, as a session would have it.
    let catalog = match conn.protocol {
        crate::config::Protocol::Postgres => {
            match crate::session::upstream::fetch_catalog_separately(
                conn,
                config.limits.connect_timeout,
            )
            .await
            {
                Ok(catalog) => Some(catalog),
                Err(e) => {
                    println!(
                        "warning: cannot read the upstream's function catalog ({}); every function counts as unknown and is denied",
                        e.for_client()
                    );
                    None
                }
            }
        }
        crate::config::Protocol::Mysql => None,
    };
    let (mut checked, mut failed) = (0usize, 0usize);
    for (expect, sql) in chunks {
        let outcomes = match offline::decide(&sql, conn, grant, &config.limits, catalog.as_deref())
        {
            Ok(outcomes) => outcomes,
            Err(e) => vec![offline::Outcome {
                text: sql.trim().to_owned(),
                kind: "unparsed".into(),
                allowed: false,
                rule: None,
                reason: Some(e.to_string()),
            }],
        };
        for outcome in outcomes {
            let verdict = if outcome.allowed { "ALLOW" } else { "DENY " };
            let mut line = format!(
                "{verdict} {:<12} {}",
                outcome.kind,
                crate::audit::replay::plain(&outcome.text)
            );
            if let Some(expect) = &expect {
                checked += 1;
                if expect.met_by(&outcome) {
                    line.push_str("   [ok]");
                } else {
                    failed += 1;
                    line.push_str(&format!("   [FAILED: expected {expect:?}]"));
                }
            }
            println!("{line}");
            if let Some(reason) = &outcome.reason {
                println!("      {}", crate::audit::replay::plain(reason));
            }
        }
    }
    if checked > 0 {
        println!("{} of {checked} expectation(s) met", checked - failed);
    }
    if failed > 0 {
        return Err(format!("{failed} expectation(s) failed"));
    }
    Ok(())
}

/// Where a trail is: `--dir`, or the `audit.dir` of `--config`.
#[derive(Args, Debug)]
pub struct TrailArgs {
    /// The audit directory (default: audit.dir of --config).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, short, default_value = "gateway.toml")]
    config: PathBuf,
}

impl TrailArgs {
    fn dir(self) -> Result<PathBuf, String> {
        match self.dir {
            Some(dir) => Ok(dir),
            None => Ok(Config::load(&self.config)
                .map_err(|e| e.to_string())?
                .audit_dir),
        }
    }
}

/// Which sessions a command looks at.
#[derive(Args, Debug)]
pub struct FilterArgs {
    /// Sessions that started at or after this RFC 3339 time (UTC, e.g. 2026-12-01T00:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// ... and before this one.
    #[arg(long)]
    until: Option<String>,
    #[arg(long)]
    sub: Option<String>,
    #[arg(long)]
    connection: Option<String>,
    /// allow (a grant was issued) or deny.
    #[arg(long)]
    decision: Option<String>,
}

impl From<FilterArgs> for crate::audit::read::Filter {
    fn from(f: FilterArgs) -> Self {
        crate::audit::read::Filter {
            since: f.since,
            until: f.until,
            sub: f.sub,
            connection: f.connection,
            decision: f.decision,
        }
    }
}

/// `sqlgate audit ...`.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the trail's hash chain: names the file, line and record of every edited,
    /// deleted, inserted, reordered or cut record; exits 1 if there is one.
    Verify {
        #[command(flatten)]
        trail: TrailArgs,
    },
    /// List sessions: who, which connection, the grant decision, when, how it ended.
    Sessions {
        #[command(flatten)]
        trail: TrailArgs,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Export the records of the sessions that match, in trail order.
    Export {
        #[command(flatten)]
        trail: TrailArgs,
        /// jsonl (the trail's lines, byte for byte), parquet (Snappy) or arrow (Arrow
        /// IPC file): parquet and arrow have one typed column per record field plus
        /// line_sha256 (README.md, "Audit trail", lists the schema).
        #[arg(long, default_value = "jsonl")]
        format: String,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// One session as a transcript; with --html, also a self-contained page.
    Replay {
        /// The session id (s-...).
        session: String,
        #[command(flatten)]
        trail: TrailArgs,
        /// Write the HTML page here.
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

fn audit_sessions(trail: TrailArgs, filter: crate::audit::read::Filter) -> Result<(), String> {
    let dir = trail.dir()?;
    let sessions = crate::audit::read::sessions(&dir)
        .map_err(|e| format!("cannot read the trail in {}: {e}", dir.display()))?;
    println!(
        "{:<20} {:<24} {:<16} {:<20} {:<8} {:>6} {:>6}  ended",
        "session", "started", "sub", "connection", "grant", "stmts", "denied"
    );
    for s in sessions.iter().filter(|s| filter.matches(s)) {
        let ended = match (&s.ended, &s.end_reason) {
            (Some(t), Some(r)) => format!("{t} {r}"),
            (Some(t), None) => t.clone(),
            (None, _) => "-".into(),
        };
        let plain = crate::audit::replay::plain;
        println!(
            "{:<20} {:<24} {:<16} {:<20} {:<8} {:>6} {:>6}  {}",
            plain(&s.session_id),
            plain(&s.started),
            plain(s.sub.as_deref().unwrap_or("-")),
            plain(&format!("{} ({})", s.connection, s.protocol)),
            plain(&s.decision),
            s.statements,
            s.denied,
            plain(&ended)
        );
    }
    Ok(())
}

/// `sqlgate audit export --format ...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExportFormat {
    Jsonl,
    Columns(crate::audit::export::Format),
}

impl ExportFormat {
    fn parse(name: &str) -> Result<Self, String> {
        use crate::audit::export::Format;
        match name {
            "jsonl" => Ok(ExportFormat::Jsonl),
            "parquet" => Ok(ExportFormat::Columns(Format::Parquet)),
            "arrow" => Ok(ExportFormat::Columns(Format::Arrow)),
            _ => Err(format!(
                "unknown export format {:?}: use jsonl, parquet or arrow",
                crate::audit::replay::plain(name)
            )),
        }
    }
}

/// Where exported records go.
enum ExportSink {
    /// The trail's lines, byte for byte (they still hash to the chain).
    Jsonl(std::io::BufWriter<std::fs::File>),
    Columns(Box<crate::audit::export::Writer>),
}

impl ExportSink {
    fn create(path: &std::path::Path, format: ExportFormat) -> Result<Self, String> {
        let fail = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
        match format {
            ExportFormat::Jsonl => std::fs::File::create(path)
                .map(|f| ExportSink::Jsonl(std::io::BufWriter::with_capacity(1 << 20, f)))
                .map_err(|e| fail(&e)),
            ExportFormat::Columns(format) => crate::audit::export::Writer::create(path, format)
                .map(|w| ExportSink::Columns(Box::new(w)))
                .map_err(|e| fail(&e)),
        }
    }

    fn push(&mut self, raw: &[u8], record: &serde_json::Value) -> Result<(), String> {
        use std::io::Write;
        match self {
            ExportSink::Jsonl(w) => w
                .write_all(raw)
                .and_then(|_| w.write_all(b"\n"))
                .map_err(|e| e.to_string()),
            ExportSink::Columns(w) => w.push(raw, record).map_err(|e| e.to_string()),
        }
    }

    fn finish(self) -> Result<(), String> {
        use std::io::Write;
        match self {
            ExportSink::Jsonl(mut w) => w.flush().map_err(|e| e.to_string()),
            ExportSink::Columns(w) => w.finish().map(|_| ()).map_err(|e| e.to_string()),
        }
    }
}

fn audit_export(
    trail: TrailArgs,
    format: &str,
    out: PathBuf,
    filter: crate::audit::read::Filter,
) -> Result<(), String> {
    use crate::audit::progress::{total_bytes, Progress};
    let format = ExportFormat::parse(format)?;
    let dir = trail.dir()?;
    let read_err = |e: std::io::Error| format!("cannot read the trail in {}: {e}", dir.display());
    let files = crate::audit::read::files(&dir).map_err(read_err)?;
    // Creating the output truncates it: never one of the trail's own files.
    if let Ok(target) = std::fs::canonicalize(&out) {
        if files
            .iter()
            .any(|f| std::fs::canonicalize(f).is_ok_and(|f| f == target))
        {
            return Err(format!(
                "{} is a file of the trail itself; export to another file",
                out.display()
            ));
        }
    }
    let total = total_bytes(&files);
    // Two passes: which sessions match, then their records, streamed.
    let mut progress = Progress::new("reading sessions", total);
    let wanted: std::collections::HashSet<String> =
        crate::audit::read::sessions_with_progress(&dir, &mut |n| progress.update(n))
            .map_err(read_err)?
            .into_iter()
            .filter(|s| filter.matches(s))
            .map(|s| s.session_id)
            .collect();
    progress.finish();
    let mut sink = ExportSink::create(&out, format)?;
    let mut written = 0u64;
    let mut failed = None;
    let started = std::time::Instant::now();
    let mut progress = Progress::new("exporting", total);
    let walked = crate::audit::read::records_with_progress(
        &dir,
        |n| progress.update(n),
        |raw, record| {
            // The trail's own records (gaps, torn lines, pruning) belong to no session
            // and are always exported: they say where records are missing.
            let trail_event = record["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("trail."));
            if failed.is_some()
                || !(trail_event
                    || record["session_id"]
                        .as_str()
                        .is_some_and(|id| wanted.contains(id)))
            {
                return;
            }
            match sink.push(raw, &record) {
                Ok(()) => written += 1,
                Err(e) => failed = Some(e),
            }
        },
    );
    progress.finish();
    let finished = match (walked, failed) {
        (Err(e), _) => {
            drop(sink);
            Err(read_err(e))
        }
        (Ok(()), Some(e)) => {
            drop(sink);
            Err(format!("cannot write {}: {e}", out.display()))
        }
        (Ok(()), None) => sink
            .finish()
            .map_err(|e| format!("cannot write {}: {e}", out.display())),
    };
    if let Err(e) = finished {
        // A partial export (for Parquet and Arrow, one without its footer) is not left
        // behind to be taken for a whole one.
        let _ = std::fs::remove_file(&out);
        return Err(e);
    }
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    eprintln!(
        "exported {written} records of {} sessions to {} ({:.0} records/s)",
        wanted.len(),
        out.display(),
        written as f64 / secs
    );
    Ok(())
}

fn audit_replay(session: String, trail: TrailArgs, html: Option<PathBuf>) -> Result<(), String> {
    let dir = trail.dir()?;
    let found = crate::audit::read::session(&dir, &session)
        .map_err(|e| format!("cannot read the trail in {}: {e}", dir.display()))?;
    let Some(s) = found else {
        return Err(format!(
            "no session {session:?} in the trail in {}",
            dir.display()
        ));
    };
    print!("{}", crate::audit::replay::transcript(&s));
    if let Some(path) = html {
        std::fs::write(&path, crate::audit::replay::html(&s))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("\nHTML: {}", path.display());
    }
    Ok(())
}

fn audit_verify(trail: TrailArgs) -> Result<(), String> {
    use crate::audit::progress::{total_bytes, Progress};
    let dir = trail.dir()?;
    let read_err = |e: std::io::Error| format!("cannot read the trail in {}: {e}", dir.display());
    let files = crate::audit::verify::files(&dir).map_err(read_err)?;
    let mut progress = Progress::new("verifying", total_bytes(&files));
    let report = crate::audit::verify::verify_with_progress(&dir, |n| progress.update(n))
        .map_err(read_err)?;
    progress.finish();
    for w in &report.warnings {
        println!("warning: {w}");
    }
    for p in &report.problems {
        println!("FAIL: {p}");
    }
    let head = report
        .head
        .as_ref()
        .map(|(seq, hash)| format!("head seq {seq} sha256 {hash}"))
        .unwrap_or_else(|| "no chained records".into());
    let unchained = if report.unchained > 0 {
        format!(
            ", {} unchained (written before the chain)",
            report.unchained
        )
    } else {
        String::new()
    };
    if report.ok() {
        println!("OK: {} records{unchained}; {head}", report.records);
        Ok(())
    } else {
        Err(format!(
            "the audit trail in {} failed verification: {} problem(s); {head}",
            dir.display(),
            report.problems.len()
        ))
    }
}

async fn check(path: PathBuf, connect: bool) -> Result<(), String> {
    let config = Config::load(&path).map_err(|e| e.to_string())?;
    print!("{}", describe(&config));
    if connect {
        println!("upstream roles:");
        for c in &config.connections {
            let report = match c.protocol {
                crate::config::Protocol::Postgres => probe_held_role(c).await,
                crate::config::Protocol::Mysql => probe_held_mysql_user(c).await,
            };
            println!("  {:<20} {}", c.name, report);
        }
    }
    Ok(())
}

/// Logs in to a MySQL/MariaDB `conn` as the gateway would and reports privileges
/// beyond what a read-only gateway needs (from `SHOW GRANTS`).
async fn probe_held_mysql_user(conn: &crate::config::ConnectionConfig) -> String {
    use crate::session::mysql::upstream;
    let timeout = std::time::Duration::from_secs(5);
    let mut up = match upstream::open(conn, sqlgate_mysql::CapabilityFlags::empty(), timeout).await
    {
        Ok(up) => up,
        Err(e) => return format!("warning: cannot log in: {e}"),
    };
    let rows = match upstream::query(&mut up.conn, "SHOW GRANTS").await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => return format!("warning: cannot read the user's grants: {}", e.message),
        Err(e) => return format!("warning: cannot read the user's grants: {e}"),
    };
    let risky = risky_mysql_privileges(rows.iter().filter_map(|r| r.first().cloned().flatten()));
    if risky.is_empty() {
        format!("user {}: OK (no risky privileges)", conn.user)
    } else {
        format!(
            "warning: user {} has {}; a read-only gateway needs SELECT only (README: least privilege)",
            conn.user,
            risky.join(", ")
        )
    }
}

/// Privileges in `GRANT ... ON` lines beyond SELECT, SHOW VIEW and USAGE.
pub fn risky_mysql_privileges(grants: impl Iterator<Item = String>) -> Vec<String> {
    let mut risky: Vec<String> = Vec::new();
    for line in grants {
        let upper = line.to_ascii_uppercase();
        let Some(rest) = upper.strip_prefix("GRANT ") else {
            continue;
        };
        let privileges = rest.split(" ON ").next().unwrap_or_default();
        for p in privileges.split(',').map(str::trim) {
            if !matches!(p, "SELECT" | "SHOW VIEW" | "USAGE" | "") && !risky.iter().any(|r| r == p)
            {
                risky.push(p.to_owned());
            }
        }
        if upper.contains("WITH GRANT OPTION") && !risky.iter().any(|r| r == "GRANT OPTION") {
            risky.push("GRANT OPTION".into());
        }
    }
    risky
}

/// Logs in to `conn` as the gateway would and reports the held role's risky privileges.
async fn probe_held_role(conn: &crate::config::ConnectionConfig) -> String {
    use crate::session::upstream;
    let timeout = std::time::Duration::from_secs(5);
    let mut session = match upstream::open(conn, &[], timeout).await {
        Ok(s) => s,
        Err(e) => return format!("warning: cannot log in: {e}"),
    };
    match upstream::risky_privileges(&mut session).await {
        Ok(risky) if risky.is_empty() => format!("role {}: OK (no risky privileges)", conn.user),
        Ok(risky) => format!(
            "warning: role {} has {}; a read-only gateway needs SELECT only (README: least privilege)",
            conn.user,
            risky.join(", ")
        ),
        Err(e) => format!("warning: cannot read the role's privileges: {e}"),
    }
}

/// The `check` report: listeners, identity, connections, and who may reach what.
pub fn describe(config: &Config) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{}: OK", config.source.display());
    if let Some(addr) = config.listen.postgres {
        let tls = match &config.listen.tls {
            Some(files) => format!("TLS with {}", files.cert.display()),
            None => "no certificate".into(),
        };
        let plain = if config.listen.allow_plaintext {
            ", plaintext allowed on loopback"
        } else {
            ""
        };
        let _ = writeln!(out, "listen   postgres {addr} ({tls}{plain})");
    }
    if let Some(addr) = config.listen.mysql {
        let tls = match &config.listen.tls {
            Some(files) => format!("TLS with {}", files.cert.display()),
            None => "no certificate".into(),
        };
        let _ = writeln!(out, "listen   mysql    {addr} ({tls})");
    }
    let id = &config.identity;
    let algs: Vec<String> = id.algorithms.iter().map(|a| format!("{a:?}")).collect();
    let _ = writeln!(
        out,
        "identity issuer {} audience {} algorithms {} leeway {}s groups claim {:?}",
        id.issuer,
        id.audiences.join(","),
        algs.join(","),
        id.leeway.as_secs(),
        id.groups_claim
    );
    if id.issuer.contains(".okta.com") && !id.issuer.contains("/oauth2/") {
        let _ = writeln!(
            out,
            "warning: {} looks like an Okta org authorization server; its access tokens are for Okta's own APIs \
             and cannot be validated by a third party. Use a custom authorization server \
             (https://{{org}}.okta.com/oauth2/{{id}}).",
            id.issuer
        );
    }
    if id.issuer.starts_with("http://") {
        let _ = writeln!(
            out,
            "warning: the issuer is plain http; use https outside of tests"
        );
    }
    let _ = writeln!(out, "connections:");
    for c in &config.connections {
        let credential = match (&c.credential, c.credential.load()) {
            (CredentialSource::None, _) => "".to_owned(),
            (_, Ok(_)) => " [credential available]".to_owned(),
            (_, Err(e)) => format!(" [warning: {e}]"),
        };
        let _ = writeln!(
            out,
            "  {:<20} {} {}/{} as {}, {}, upstream TLS {:?}, at most {} sessions{credential}",
            c.name,
            c.protocol.as_str(),
            c.upstream,
            c.database,
            c.user,
            c.credential.describe(),
            c.upstream_tls,
            c.max_sessions
        );
    }
    let _ = writeln!(out, "grants (first match wins):");
    if config.grants.is_empty() {
        let _ = writeln!(out, "  none: nobody can connect");
    }
    for (i, g) in config.grants.iter().enumerate() {
        let mut who = Vec::new();
        if !g.groups.is_empty() {
            who.push(format!("groups {}", g.groups.join(", ")));
        }
        if !g.scopes.is_empty() {
            who.push(format!("scopes {}", g.scopes.join(", ")));
        }
        if !g.subjects.is_empty() {
            who.push(format!("subjects {}", g.subjects.join(", ")));
        }
        if !g.client_ids.is_empty() {
            who.push(format!("client ids {}", g.client_ids.join(", ")));
        }
        let _ = writeln!(
            out,
            "  [{i}] {} -> {} ({}, ttl {})",
            who.join(" or "),
            g.connection,
            g.access.as_str(),
            humantime::format_duration(g.ttl)
        );
        let sessions = match g.max_sessions {
            Some(n) => format!("{n} sessions in all, "),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "      limits: statement_timeout {}, idle_in_transaction_timeout {}, {sessions}{} sessions per identity",
            humantime::format_duration(g.statement_timeout),
            humantime::format_duration(g.idle_in_transaction_timeout),
            g.max_sessions_per_identity
        );
        for line in describe_rule_set(&g.rules) {
            let _ = writeln!(out, "      {line}");
        }
    }
    let l = &config.limits;
    let caps: Vec<String> = l
        .setting_caps
        .describe()
        .iter()
        .map(|(name, op, cap)| format!("{name} {op} {cap}"))
        .collect();
    let _ = writeln!(
        out,
        "limits   {} sessions in all, {} still logging in (login timeout {}), {} cancels/s",
        l.max_sessions,
        l.max_unauthenticated,
        humantime::format_duration(l.login_timeout),
        l.max_cancels_per_second
    );
    let _ = writeln!(out, "         settings: {}", caps.join(", "));
    let unreachable: Vec<&str> = config
        .connections
        .iter()
        .filter(|c| !config.grants.iter().any(|g| g.connection == c.name))
        .map(|c| c.name.as_str())
        .collect();
    if !unreachable.is_empty() {
        let _ = writeln!(out, "warning: no grant reaches: {}", unreachable.join(", "));
    }
    let _ = writeln!(
        out,
        "audit    {}",
        config.audit_dir.join("audit.jsonl").display()
    );
    out
}

async fn dev_issuer(key_path: PathBuf, listen: SocketAddr) -> Result<(), String> {
    let key = DevKey::load_or_create(&key_path)?;
    let kid = key.kid.clone();
    let issuer = DevIssuer::start(listen, vec![key])
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    println!(
        "dev issuer {} (key {} kid {kid})",
        issuer.url,
        key_path.display()
    );
    println!("discovery  {}/.well-known/openid-configuration", issuer.url);
    wait_for_signal().await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn token(
    key: PathBuf,
    issuer: String,
    audience: String,
    sub: String,
    groups: Vec<String>,
    scopes: Vec<String>,
    cid: Option<String>,
    ttl: String,
    kid: Option<String>,
) -> Result<(), String> {
    let key = DevKey::load_or_create(&key)?;
    let request = TokenRequest {
        issuer: issuer.trim_end_matches('/').to_owned(),
        audience,
        subject: sub,
        groups,
        scopes,
        client_id: cid,
        ttl: parse_duration(&ttl)?,
    };
    let token = match kid {
        Some(kid) => key.sign_as(&request.claims(), &kid)?,
        None => request.mint(&key)?,
    };
    println!("{token}");
    Ok(())
}

/// SIGHUPs, from the moment the gateway is up (installed once, so none is missed
/// while a reload runs).
struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    fn install() -> Hangups {
        Hangups {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        }
    }

    /// Resolves on the next SIGHUP (never where there is none).
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

/// `sqlgate reload`: the config must load (rule files included) before the gateway
/// is signalled, so a broken file is reported here, not only in the gateway's log.
fn reload(config: PathBuf, pid: Option<u32>, pid_file: Option<PathBuf>) -> Result<(), String> {
    let loaded = Config::load(&config).map_err(|e| e.to_string())?;
    let pid = match (pid, pid_file) {
        (Some(pid), _) => pid,
        (None, Some(file)) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read the pid file {}: {e}", file.display()))?;
            let mut lines = text.lines();
            let pid = lines
                .next()
                .and_then(|l| l.trim().parse::<u32>().ok())
                .ok_or_else(|| format!("{} does not hold a process id", file.display()))?;
            let checked = std::fs::canonicalize(&config).unwrap_or_else(|_| config.clone());
            if let Some(served) = lines.next().filter(|s| !s.is_empty()) {
                if std::path::Path::new(served) != checked {
                    return Err(format!(
                        "the gateway serves {served}, not {}; give --config {served}",
                        checked.display()
                    ));
                }
            }
            pid
        }
        (None, None) => {
            return Err(
                "give --pid or --pid-file (the file `sqlgate serve --pid-file` writes)".into(),
            )
        }
    };
    if pid < 2 || pid > i32::MAX as u32 {
        return Err(format!("{pid} is not a gateway's process id"));
    }
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .map_err(|e| format!("cannot run kill: {e}"))?;
    if !status.success() {
        return Err(format!(
            "could not signal process {pid} (is the gateway running?)"
        ));
    }
    let rules: usize = loaded.grants.iter().map(|g| g.rules.rules.len()).sum();
    println!(
        "{}: {} grant(s), {rules} rule(s) checked; sent SIGHUP to {pid}. The gateway logs the outcome and records config.reloaded (or config.reload_refused, with why) in the audit trail.",
        config.display(),
        loaded.grants.len()
    );
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::risky_mysql_privileges;

    #[test]
    fn mysql_grants_beyond_select_are_reported() {
        let grants = [
            "GRANT USAGE ON *.* TO `ro`@`%` IDENTIFIED BY PASSWORD '*ABC'".to_owned(),
            "GRANT SELECT, SHOW VIEW ON `shop`.* TO `ro`@`%`".to_owned(),
        ];
        assert!(risky_mysql_privileges(grants.into_iter()).is_empty());
        let grants = [
            "GRANT ALL PRIVILEGES ON `shop`.* TO `rw`@`%`".to_owned(),
            "GRANT SELECT, INSERT, FILE ON *.* TO `rw`@`%` WITH GRANT OPTION".to_owned(),
        ];
        assert_eq!(
            risky_mysql_privileges(grants.into_iter()),
            vec!["ALL PRIVILEGES", "INSERT", "FILE", "GRANT OPTION"]
        );
    }
}
