//! What a verified identity may do: grants per connection, and the statement policy.
//!
//! [`GrantPolicy::decide`] turns principal × requested connection into a [`Grant`] or a
//! [`Denial`] that says why. The token decides eligibility; the grant decides reach,
//! and the grant is small: one connection, one access level, and an expiry that is
//! the sooner of the grant's TTL and the token's `exp`.
//!
//! [`readonly`] decides single statements from the classifier's fact sheet (Postgres);
//! [`mysql`] is the MySQL/MariaDB read-only profile.

pub mod caps;
pub mod mysql;
pub mod offline;
pub mod readonly;
pub mod rules;

use std::time::{Duration, SystemTime};

use crate::config::{Access, Config, GrantConfig};
use crate::identity::Principal;

/// Permission for one principal to use one connection until `expires_at`.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Unique id, recorded with every statement of the session.
    pub id: String,
    pub connection: String,
    pub access: Access,
    pub expires_at: SystemTime,
    /// Which `[[grant]]` entry matched (0-based), and on what.
    pub rule_index: usize,
    pub matched_on: String,
    /// How long one statement may run, and a transaction sit idle.
    pub time_limits: crate::session::clock::TimeLimits,
    /// Live sessions under the matched entry, in all and per identity.
    pub max_sessions: Option<usize>,
    pub max_sessions_per_identity: usize,
    /// The DBA rules that narrow what the grant's access allows.
    pub rules: std::sync::Arc<rules::RuleSet>,
    /// The generation of the policy it was decided under (see [`PolicyHolder`]).
    pub generation: u64,
}

/// The grant policy in force. A reload (SIGHUP, `sqlgate reload`) replaces it whole:
/// logins after it see the new `[[grant]]` entries, live sessions pick up their
/// entry's new rules at their next statement ([`crate::session::gate::Gate`]) and end
/// when no entry grants them any more ([`GrantWatch`]).
pub struct PolicyHolder {
    /// The policy and its generation, replaced together.
    current: std::sync::RwLock<(u64, std::sync::Arc<GrantPolicy>)>,
    /// The generation, for live sessions to watch.
    generation: tokio::sync::watch::Sender<u64>,
}

impl PolicyHolder {
    pub fn new(policy: GrantPolicy) -> Self {
        PolicyHolder {
            current: std::sync::RwLock::new((0, std::sync::Arc::new(policy))),
            generation: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The policy in force and its generation (one consistent pair).
    pub fn current(&self) -> (u64, std::sync::Arc<GrantPolicy>) {
        match self.current.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The generation in force (read on every statement: no clone of the policy).
    pub fn generation(&self) -> u64 {
        match self.current.read() {
            Ok(p) => p.0,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    /// Puts `policy` in force; returns its generation.
    pub fn replace(&self, policy: GrantPolicy) -> u64 {
        let generation = {
            let mut current = match self.current.write() {
                Ok(c) => c,
                Err(poisoned) => poisoned.into_inner(),
            };
            *current = (current.0 + 1, std::sync::Arc::new(policy));
            current.0
        };
        self.generation.send_replace(generation);
        generation
    }

    /// Decides with the policy in force; the grant carries the policy's generation.
    pub fn decide(
        &self,
        principal: &Principal,
        connection: &str,
        now: SystemTime,
    ) -> Result<Grant, Denial> {
        let (generation, policy) = self.current();
        let mut grant = policy.decide(principal, connection, now)?;
        grant.generation = generation;
        Ok(grant)
    }

    /// A watch that resolves when a replacement of the policy after the one `grant`
    /// was decided under leaves `principal` no grant for its connection (a reload
    /// during the login is caught too).
    pub fn watch(&self, principal: &Principal, grant: &Grant) -> GrantWatch {
        GrantWatch {
            changes: self.generation.subscribe(),
            seen: grant.generation,
            principal: principal.clone(),
            connection: grant.connection.clone(),
            expires_at: grant.expires_at,
        }
    }
}

/// One live session's view of policy replacements (see [`PolicyHolder::watch`]).
pub struct GrantWatch {
    changes: tokio::sync::watch::Receiver<u64>,
    /// The generation last checked.
    seen: u64,
    principal: Principal,
    connection: String,
    /// When the session's grant expires, as last decided.
    expires_at: SystemTime,
}

/// What a policy replacement means for a live session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantChange {
    /// No entry grants it any more: it ends.
    Revoked,
    /// Its entry now expires sooner (a shorter `ttl`, new `hours`): it ends then.
    ExpiresSooner(SystemTime),
}

impl GrantWatch {
    /// Resolves when a replacement of `holder`'s policy removed this session's grant
    /// or made it expire sooner. Cancel-safe. Never resolves while neither happens.
    pub async fn next_change(&mut self, holder: &PolicyHolder) -> GrantChange {
        loop {
            let generation = holder.generation();
            if generation != self.seen {
                self.seen = generation;
                match holder.decide(&self.principal, &self.connection, SystemTime::now()) {
                    Err(_) => return GrantChange::Revoked,
                    Ok(grant) if grant.expires_at < self.expires_at => {
                        self.expires_at = grant.expires_at;
                        return GrantChange::ExpiresSooner(grant.expires_at);
                    }
                    Ok(_) => {}
                }
            }
            if self.changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Resolves only when the grant is removed (a shorter expiry is ignored).
    pub async fn revoked(&mut self, holder: &PolicyHolder) {
        while self.next_change(holder).await != GrantChange::Revoked {}
    }
}

/// A refusal, phrased for the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: String,
}

/// The `[[grant]]` entries of the config, in file order.
#[derive(Debug, Clone)]
pub struct GrantPolicy {
    grants: Vec<GrantConfig>,
    connections: Vec<String>,
}

impl GrantPolicy {
    pub fn from_config(config: &Config) -> Self {
        GrantPolicy {
            grants: config.grants.clone(),
            connections: config.connections.iter().map(|c| c.name.clone()).collect(),
        }
    }

    /// Decides whether `principal` may use `connection` now. The first matching
    /// `[[grant]]` in file order wins.
    pub fn decide(
        &self,
        principal: &Principal,
        connection: &str,
        now: SystemTime,
    ) -> Result<Grant, Denial> {
        if principal.token_expires_at <= now {
            return Err(Denial {
                reason: "token has expired".into(),
            });
        }
        // An entry whose hours are closed now is passed over: a later entry may grant
        // the same identity at other times (with other rules).
        let mut closed: Option<String> = None;
        for (index, grant) in self.grants.iter().enumerate() {
            if grant.connection != connection {
                continue;
            }
            if let Some(matched_on) = matches(grant, principal) {
                let mut expires_at = (now + grant.ttl).min(principal.token_expires_at);
                if let Some(hours) = &grant.rules.limits.hours {
                    match hours.window_end(now) {
                        // Sessions end when the window closes.
                        Some(end) => expires_at = expires_at.min(end),
                        None => {
                            closed.get_or_insert_with(|| {
                                format!(
                                    "{} may use connection {connection:?} only {hours}; it is now {}",
                                    describe(principal),
                                    crate::audit::rfc3339(now)
                                )
                            });
                            continue;
                        }
                    }
                }
                return Ok(Grant {
                    id: format!("g-{:016x}", rand::random::<u64>()),
                    connection: connection.to_owned(),
                    access: grant.access,
                    expires_at,
                    rule_index: index,
                    matched_on,
                    time_limits: crate::session::clock::TimeLimits {
                        statement_timeout: grant.statement_timeout,
                        idle_in_transaction_timeout: grant.idle_in_transaction_timeout,
                    },
                    max_sessions: grant.max_sessions,
                    max_sessions_per_identity: grant.max_sessions_per_identity,
                    rules: grant.rules.clone(),
                    generation: 0,
                });
            }
        }
        if let Some(reason) = closed {
            return Err(Denial { reason });
        }
        Err(self.explain_denial(principal, connection))
    }

    /// The connections this principal could reach (for messages and `sqlgate check`).
    pub fn reachable(&self, principal: &Principal) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for grant in &self.grants {
            if matches(grant, principal).is_some() && !names.contains(&grant.connection) {
                names.push(grant.connection.clone());
            }
        }
        names
    }

    fn explain_denial(&self, principal: &Principal, connection: &str) -> Denial {
        let who = describe(principal);
        let reason = if !self.connections.iter().any(|c| c == connection) {
            format!("there is no connection named {connection:?}; the database name must be a sqlgate connection name")
        } else {
            format!("{who} has no grant for connection {connection:?}")
        };
        let reachable = self.reachable(principal);
        let reason = if reachable.is_empty() {
            reason
        } else {
            format!("{reason} (it may use: {})", reachable.join(", "))
        };
        Denial { reason }
    }
}

/// Which selector of `grant` matches `principal`, if any.
fn matches(grant: &GrantConfig, p: &Principal) -> Option<String> {
    if let Some(g) = grant.groups.iter().find(|g| p.groups.contains(g)) {
        return Some(format!("group {g}"));
    }
    if let Some(s) = grant.scopes.iter().find(|s| p.scopes.contains(s)) {
        return Some(format!("scope {s}"));
    }
    if grant.subjects.contains(&p.subject) {
        return Some(format!("subject {}", p.subject));
    }
    if let Some(cid) = &p.client_id {
        if grant.client_ids.contains(cid) {
            return Some(format!("client id {cid}"));
        }
    }
    None
}

/// "identity agent-7 (groups analytics-agents)" — how denials name the asker.
fn describe(p: &Principal) -> String {
    let mut parts = Vec::new();
    if !p.groups.is_empty() {
        parts.push(format!("groups {}", p.groups.join(", ")));
    }
    if !p.scopes.is_empty() {
        parts.push(format!("scopes {}", p.scopes.join(" ")));
    }
    if let Some(cid) = &p.client_id {
        parts.push(format!("client {cid}"));
    }
    if parts.is_empty() {
        format!("identity {} (no groups, scopes or client id)", p.subject)
    } else {
        format!("identity {} ({})", p.subject, parts.join("; "))
    }
}

/// Time left on a grant, for messages.
pub fn remaining(grant: &Grant, now: SystemTime) -> Duration {
    grant.expires_at.duration_since(now).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn policy() -> GrantPolicy {
        let config = Config::parse(
            r#"
            [listen]
            postgres = "127.0.0.1:0"
            allow_plaintext = true
            [identity]
            issuer = "https://example.okta.com/oauth2/default"
            audience = "api://sqlgate"
            [[connection]]
            name = "replica"
            upstream = "127.0.0.1:5432"
            database = "d"
            user = "u"
            [[connection]]
            name = "primary"
            upstream = "127.0.0.1:5432"
            database = "d"
            user = "u"
            [[grant]]
            connection = "replica"
            groups = ["analytics-agents"]
            ttl = "10m"
            [[grant]]
            connection = "replica"
            client_ids = ["svc-app"]
            ttl = "1m"
            "#,
            Path::new("gateway.toml"),
        )
        .unwrap();
        GrantPolicy::from_config(&config)
    }

    fn principal(groups: &[&str], exp_in: u64) -> Principal {
        Principal {
            subject: "agent-7".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            scopes: vec![],
            client_id: None,
            token_id: None,
            issuer: "https://idp.example".into(),
            token_expires_at: SystemTime::now() + Duration::from_secs(exp_in),
        }
    }

    #[test]
    fn grant_expiry_is_the_sooner_of_ttl_and_token() {
        let now = SystemTime::now();
        let long = policy()
            .decide(&principal(&["analytics-agents"], 3600), "replica", now)
            .unwrap();
        assert_eq!(long.expires_at, now + Duration::from_secs(600));
        let p = principal(&["analytics-agents"], 30);
        let short = policy().decide(&p, "replica", now).unwrap();
        assert_eq!(short.expires_at, p.token_expires_at);
    }

    #[test]
    fn denial_names_group_connection_and_alternatives() {
        let p = principal(&["analytics-agents"], 3600);
        let d = policy()
            .decide(&p, "primary", SystemTime::now())
            .unwrap_err();
        assert!(d.reason.contains("groups analytics-agents"), "{}", d.reason);
        assert!(d.reason.contains("\"primary\""), "{}", d.reason);
        assert!(d.reason.contains("it may use: replica"), "{}", d.reason);
        let nobody = principal(&["marketing"], 3600);
        assert!(policy()
            .decide(&nobody, "replica", SystemTime::now())
            .is_err());
    }

    #[test]
    fn client_credentials_tokens_match_on_client_id() {
        let mut p = principal(&[], 3600);
        p.client_id = Some("svc-app".into());
        let g = policy().decide(&p, "replica", SystemTime::now()).unwrap();
        assert_eq!(g.matched_on, "client id svc-app");
        assert_eq!(g.rule_index, 1);
    }

    #[tokio::test]
    async fn a_reload_during_a_login_is_seen_by_the_session_it_admits() {
        let holder = PolicyHolder::new(policy());
        let p = principal(&["analytics-agents"], 3600);
        let grant = holder.decide(&p, "replica", SystemTime::now()).unwrap();
        assert_eq!(grant.generation, 0);
        // The grant goes away before the session starts watching.
        let mut without = policy();
        without
            .grants
            .retain(|g| !g.groups.contains(&"analytics-agents".to_owned()));
        holder.replace(without);
        let mut watch = holder.watch(&p, &grant);
        let revoked = tokio::time::timeout(Duration::from_secs(1), watch.revoked(&holder)).await;
        assert!(revoked.is_ok(), "the session was not told");
        // A session whose grant stays is not.
        let holder = PolicyHolder::new(policy());
        let grant = holder.decide(&p, "replica", SystemTime::now()).unwrap();
        holder.replace(policy());
        let mut watch = holder.watch(&p, &grant);
        let revoked =
            tokio::time::timeout(Duration::from_millis(100), watch.revoked(&holder)).await;
        assert!(revoked.is_err());
    }
}
