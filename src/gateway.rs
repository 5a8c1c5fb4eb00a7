//! The gateway process: shared services, listeners, graceful shutdown.
//!
//! [`Gateway::start`] binds the configured listeners (port 0 picks a free port, which
//! tests use), fetches the issuer's keys, opens the audit trail and spawns one task per
//! client connection. [`RunningGateway::shutdown`] stops accepting and tells every
//! session to end (each sends its client a FATAL "shutting down" error), as in tokio's
//! mini-redis: a broadcast channel every session subscribes to.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::audit::{AuditError, AuditEvent, AuditLog, AuditRecord};
use crate::catalog::CatalogCache;
use crate::config::Config;
use crate::identity::Verifier;
use crate::policy::GrantPolicy;
use crate::session::cancel::{CancelRegistry, RateLimiter};
use crate::session::slots::{RefusalCounter, SessionSlots};
use crate::sql::pool::ParsePool;

/// Everything a session needs, shared by all sessions.
pub struct Services {
    pub config: Config,
    pub verifier: Verifier,
    /// The grant policy in force (replaced by a reload).
    pub grants: crate::policy::PolicyHolder,
    pub audit: AuditLog,
    /// Function catalogs by connection name.
    pub catalogs: HashMap<String, CatalogCache>,
    pub cancels: CancelRegistry,
    /// Session counters and caps.
    pub slots: Arc<SessionSlots>,
    /// Limits the rate of cancel requests forwarded upstream.
    pub cancel_rate: RateLimiter,
    /// Connections refused before login, reported at most once a second.
    pub refusals: RefusalCounter,
    /// Parser threads for large statements.
    pub parser: ParsePool,
    /// The server version the MySQL listener announces: the last upstream's, once seen.
    pub mysql_version: std::sync::Mutex<Option<String>>,
    /// Client-side TLS; `None` only when plaintext is allowed and no certificate is set.
    pub tls: Option<TlsAcceptor>,
    pub shutdown: broadcast::Sender<()>,
    /// Connections being served (for a graceful stop).
    pub active: AtomicUsize,
}

/// Counts a connection as active while it lives.
pub struct ActiveGuard(Arc<Services>);

impl ActiveGuard {
    pub fn new(services: &Arc<Services>) -> Self {
        services.active.fetch_add(1, Ordering::SeqCst);
        ActiveGuard(services.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot start the parser threads: {0}")]
    Parser(std::io::Error),
}

/// Builder entry point.
pub struct Gateway;

/// A started gateway.
pub struct RunningGateway {
    /// Where the Postgres listener is bound, if one is configured.
    pub postgres_addr: Option<SocketAddr>,
    /// Where the MySQL listener is bound, if one is configured.
    pub mysql_addr: Option<SocketAddr>,
    pub services: Arc<Services>,
    accept_tasks: Vec<JoinHandle<()>>,
}

/// Which front end serves a listener.
#[derive(Debug, Clone, Copy)]
enum FrontEnd {
    Postgres,
    Mysql,
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    Ok((listener, bound))
}

impl Gateway {
    /// Starts the gateway. `tls` overrides the certificate files of the config (the
    /// demo and tests pass a generated certificate).
    pub async fn start(
        config: Config,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<RunningGateway, StartError> {
        crate::tls::init_crypto();
        let tls = match (tls, &config.listen.tls) {
            (Some(tls), _) => Some(tls),
            (None, Some(files)) => Some(
                crate::tls::server_config_from_files(&files.cert, &files.key)
                    .map_err(StartError::Tls)?,
            ),
            (None, None) => None,
        };
        let postgres = match config.listen.postgres {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let postgres_addr = postgres.as_ref().map(|(_, addr)| *addr);
        let mysql = match config.listen.mysql {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let mysql_addr = mysql.as_ref().map(|(_, addr)| *addr);
        let audit = AuditLog::open_durable(
            &config.audit_dir,
            config.audit_segments.clone(),
            config.audit_durability,
        )
        .await?;
        let verifier = Verifier::new(config.identity.clone());
        if let Err(e) = verifier.prefetch().await {
            tracing::warn!(error = %e, "cannot fetch the issuer's keys yet; will retry on the first login");
        }
        let (shutdown, _) = broadcast::channel(1);
        let parser = ParsePool::start(config.limits.parse_threads, config.limits.parse_queue)
            .map_err(StartError::Parser)?;
        let services = Arc::new(Services {
            grants: crate::policy::PolicyHolder::new(GrantPolicy::from_config(&config)),
            catalogs: config
                .connections
                .iter()
                .map(|c| (c.name.clone(), CatalogCache::default()))
                .collect(),
            verifier,
            audit,
            cancels: CancelRegistry::default(),
            slots: SessionSlots::new(&config.limits),
            cancel_rate: RateLimiter::per_second(config.limits.max_cancels_per_second),
            refusals: RefusalCounter::default(),
            parser,
            mysql_version: std::sync::Mutex::new(None),
            tls: tls.map(TlsAcceptor::from),
            shutdown,
            active: AtomicUsize::new(0),
            config,
        });
        let mut accept_tasks = Vec::new();
        if let Some((listener, postgres_addr)) = postgres {
            tracing::info!(%postgres_addr, tls = services.tls.is_some(), "postgres listener ready");
            accept_tasks.push(tokio::spawn(accept_loop(
                listener,
                services.clone(),
                FrontEnd::Postgres,
            )));
        }
        if let Some((listener, mysql_addr)) = mysql {
            tracing::info!(%mysql_addr, tls = services.tls.is_some(), "mysql listener ready");
            accept_tasks.push(tokio::spawn(accept_loop(
                listener,
                services.clone(),
                FrontEnd::Mysql,
            )));
        }
        Ok(RunningGateway {
            postgres_addr,
            mysql_addr,
            services,
            accept_tasks,
        })
    }
}

async fn accept_loop(listener: TcpListener, services: Arc<Services>, front: FrontEnd) {
    let mut shutdown = services.shutdown.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => match front {
                    FrontEnd::Postgres => {
                        tokio::spawn(crate::session::postgres::handle_connection(tcp, peer, services.clone()));
                    }
                    FrontEnd::Mysql => {
                        tokio::spawn(crate::session::mysql::handle_connection(tcp, peer, services.clone()));
                    }
                },
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.recv() => return,
        }
    }
}

/// What a reload put in force.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// The policy's generation (1 after the first reload).
    pub generation: u64,
    pub grants: usize,
    pub rules: usize,
    /// Parts of the file that changed but only take effect on a restart.
    pub not_applied: Vec<&'static str>,
}

impl Services {
    /// Re-reads the config at `path` and puts its `[[grant]]` entries and their rule
    /// files in force, atomically: logins from now on and the next statement of every
    /// live session use them, and sessions no entry grants any more end. A config that
    /// does not load, or whose grants name a connection this gateway does not serve, is
    /// refused and the policy in force stays. Both outcomes are in the audit trail.
    pub async fn reload(&self, path: &std::path::Path) -> Result<Reloaded, String> {
        let loaded = Config::load(path)
            .map_err(|e| e.to_string())
            .and_then(|new| self.reloadable(&new).map(|not_applied| (new, not_applied)));
        let (new, not_applied) = match loaded {
            Ok(loaded) => loaded,
            Err(problem) => {
                // The TOML parser quotes the offending line, which may hold a secret.
                let problem = without_source_lines(&problem);
                let mut rec = AuditRecord::new(AuditEvent::ConfigReloadRefused, "-", "", "");
                rec.reason = Some(format!("{}: {problem}", path.display()));
                rec.decision = Some(crate::audit::Decision::Deny);
                if let Err(e) = self.audit.record(rec).await {
                    tracing::error!(error = %e, "audit record lost");
                }
                tracing::error!(config = %path.display(), %problem, "reload refused; the grants and rules in force stay");
                return Err(problem);
            }
        };
        let rules: usize = new.grants.iter().map(|g| g.rules.rules.len()).sum();
        let grants = new.grants.len();
        let summary = new
            .grants
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let ids: Vec<&str> = g.rules.rules.iter().map(|r| r.id.as_str()).collect();
                format!("grant[{i}] {} rules [{}]", g.connection, ids.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ");
        let generation = self.grants.replace(GrantPolicy::from_config(&new));
        let mut rec = AuditRecord::new(AuditEvent::ConfigReloaded, "-", "", "");
        rec.reason = Some(format!(
            "{} generation {generation}: {summary}",
            path.display()
        ));
        rec.decision = Some(crate::audit::Decision::Allow);
        if let Err(e) = self.audit.record(rec).await {
            tracing::error!(error = %e, "audit record lost");
        }
        tracing::info!(config = %path.display(), generation, grants, rules, "reloaded grants and rules");
        if !not_applied.is_empty() {
            tracing::warn!(changed = ?not_applied, "these parts of the config changed but take effect only on a restart");
        }
        Ok(Reloaded {
            generation,
            grants,
            rules,
            not_applied,
        })
    }

    /// Whether `new`'s grants can be served by this gateway; the parts of `new` that
    /// changed but a reload does not apply.
    fn reloadable(&self, new: &Config) -> Result<Vec<&'static str>, String> {
        for (i, g) in new.grants.iter().enumerate() {
            let running = self.config.connection(&g.connection);
            let wanted = new.connection(&g.connection);
            match (running, wanted) {
                (Some(running), Some(wanted)) if running.protocol == wanted.protocol => {}
                _ => {
                    return Err(format!(
                        "grant[{i}] names connection {:?}, which this gateway does not serve as configured; adding or changing connections needs a restart",
                        g.connection
                    ))
                }
            }
        }
        let mut not_applied = Vec::new();
        let differs =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        if differs(&new.listen, &self.config.listen) {
            not_applied.push("[listen]");
        }
        if differs(&new.identity, &self.config.identity) {
            not_applied.push("[identity]");
        }
        if differs(&new.connections, &self.config.connections) {
            not_applied.push("[[connection]]");
        }
        if differs(&new.limits, &self.config.limits) {
            not_applied.push("[limits]");
        }
        if differs(&new.audit_dir, &self.config.audit_dir) {
            not_applied.push("[audit]");
        }
        Ok(not_applied)
    }
}

/// A config error without the source lines the TOML parser quotes (`3 | key = ...`).
fn without_source_lines(problem: &str) -> String {
    problem
        .lines()
        .filter(|line| {
            let t = line.trim_start();
            let quoted = t.starts_with('|')
                || t.split_once('|').is_some_and(|(n, _)| {
                    !n.trim().is_empty() && n.trim().chars().all(|c| c.is_ascii_digit())
                });
            !quoted
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl RunningGateway {
    /// See [`Services::reload`].
    pub async fn reload(&self, path: &std::path::Path) -> Result<Reloaded, String> {
        self.services.reload(path).await
    }

    /// Stops accepting connections and ends every session.
    pub fn shutdown(&self) {
        let _ = self.services.shutdown.send(());
    }

    /// Waits until the accept loop has stopped (after [`RunningGateway::shutdown`]),
    /// sessions have ended (at most `grace`), and the audit trail is on disk.
    pub async fn stopped(self, grace: Duration) {
        for task in self.accept_tasks {
            let _ = task.await;
        }
        let until = Instant::now() + grace;
        while self.services.active.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = self.services.audit.sync().await {
            tracing::error!(error = %e, "audit trail not flushed at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reload_refusals_do_not_quote_the_config() {
        let problem = "invalid config: TOML parse error at line 3, column 1\n  |\n3 | pasword = \"hunter2\"\n  | ^^^^^^^\nunknown field `pasword`";
        let clean = super::without_source_lines(problem);
        assert!(!clean.contains("hunter2"), "{clean}");
        assert!(
            clean.contains("line 3") && clean.contains("unknown field"),
            "{clean}"
        );
    }
}
