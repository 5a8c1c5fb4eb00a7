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

use crate::audit::{AuditError, AuditLog};
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
    pub grants: GrantPolicy,
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
            grants: GrantPolicy::from_config(&config),
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

impl RunningGateway {
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
