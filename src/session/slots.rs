//! Session slots: how many sessions may be open at once, counted where they are issued.
//!
//! One token must not be able to take every connection slot of a database, nor the
//! gateway's memory. Every live session holds a [`SessionSlot`] counted against four
//! caps: the gateway's, its connection's (so the database keeps slots for its other
//! clients), its `[[grant]]` entry's, and its identity's under that entry. Client
//! connections that have not logged in yet hold an [`UnauthenticatedSlot`] against a
//! cap of their own, which together with the login timeout bounds what an
//! unauthenticated peer can hold. Slots are released when dropped, whatever ends the
//! session. Protocol-neutral: each front end phrases a [`CapReached`] in its own error
//! (Postgres: 53300).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::Limits;

/// A cap that refused a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many sessions: {what} already has {limit} (the cap {key} = {limit})")]
pub struct CapReached {
    /// Who or what is at its cap ("the gateway", "connection \"app\"", ...).
    pub what: String,
    /// The config key of the cap.
    pub key: String,
    pub limit: usize,
}

/// What a session is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub connection: String,
    /// The `[[grant]]` entry (index in the config).
    pub grant_entry: usize,
    pub subject: String,
    /// Identifies the token (its `jti`, or a hash of it).
    pub token: String,
}

/// The caps of one request for a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionCaps {
    pub connection: usize,
    pub grant: Option<usize>,
    pub identity: usize,
}

#[derive(Default)]
struct Counts {
    total: usize,
    unauthenticated: usize,
    connection: HashMap<String, usize>,
    grant: HashMap<usize, usize>,
    identity: HashMap<(usize, String), usize>,
    token: HashMap<String, usize>,
}

/// The gateway's session counters.
pub struct SessionSlots {
    max_sessions: usize,
    max_unauthenticated: usize,
    counts: Mutex<Counts>,
}

/// Held by a client connection until it has logged in (or left).
pub struct UnauthenticatedSlot(Arc<SessionSlots>);

/// Held by a live session; released on drop.
pub struct SessionSlot {
    slots: Arc<SessionSlots>,
    key: SessionKey,
    /// Sessions the same token had open, this one included, when it was issued.
    pub same_token: usize,
}

impl SessionSlots {
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(SessionSlots {
            max_sessions: limits.max_sessions,
            max_unauthenticated: limits.max_unauthenticated,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // A panic while holding the lock cannot leave the counts half-updated (each
        // update is a few integer operations), so a poisoned lock is still usable.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions open now (for logs and benchmarks).
    pub fn open_sessions(&self) -> usize {
        self.counts().total
    }

    /// A slot for a connection that has not logged in yet.
    pub fn unauthenticated(self: &Arc<Self>) -> Result<UnauthenticatedSlot, CapReached> {
        let mut counts = self.counts();
        if counts.unauthenticated >= self.max_unauthenticated {
            return Err(CapReached {
                what: "the gateway, counting connections still logging in,".into(),
                key: "limits.max_unauthenticated".into(),
                limit: self.max_unauthenticated,
            });
        }
        counts.unauthenticated += 1;
        Ok(UnauthenticatedSlot(self.clone()))
    }

    /// A slot for a session, if every cap has room.
    pub fn session(
        self: &Arc<Self>,
        key: SessionKey,
        caps: SessionCaps,
    ) -> Result<SessionSlot, CapReached> {
        let mut counts = self.counts();
        if counts.total >= self.max_sessions {
            return Err(CapReached {
                what: "the gateway".into(),
                key: "limits.max_sessions".into(),
                limit: self.max_sessions,
            });
        }
        let on_connection = counts.connection.get(&key.connection).copied();
        if on_connection.unwrap_or(0) >= caps.connection {
            return Err(CapReached {
                what: format!("connection {:?}", key.connection),
                key: format!("max_sessions of connection {:?}", key.connection),
                limit: caps.connection,
            });
        }
        if let Some(cap) = caps.grant {
            if counts.grant.get(&key.grant_entry).copied().unwrap_or(0) >= cap {
                return Err(CapReached {
                    what: format!("grant[{}]", key.grant_entry),
                    key: format!("grant[{}].max_sessions", key.grant_entry),
                    limit: cap,
                });
            }
        }
        let identity = (key.grant_entry, key.subject.clone());
        if counts.identity.get(&identity).copied().unwrap_or(0) >= caps.identity {
            return Err(CapReached {
                what: format!(
                    "identity {:?} under grant[{}]",
                    key.subject, key.grant_entry
                ),
                key: format!("grant[{}].max_sessions_per_identity", key.grant_entry),
                limit: caps.identity,
            });
        }
        counts.total += 1;
        *counts.connection.entry(key.connection.clone()).or_default() += 1;
        *counts.grant.entry(key.grant_entry).or_default() += 1;
        *counts.identity.entry(identity).or_default() += 1;
        let same_token = {
            let n = counts.token.entry(key.token.clone()).or_default();
            *n += 1;
            *n
        };
        drop(counts);
        Ok(SessionSlot {
            slots: self.clone(),
            key,
            same_token,
        })
    }
}

impl Drop for UnauthenticatedSlot {
    fn drop(&mut self) {
        let mut counts = self.0.counts();
        counts.unauthenticated = counts.unauthenticated.saturating_sub(1);
    }
}

/// Decrements `map[key]`, removing it at zero so the maps hold only live keys.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts();
        counts.total = counts.total.saturating_sub(1);
        release(&mut counts.connection, &self.key.connection);
        release(&mut counts.grant, &self.key.grant_entry);
        release(
            &mut counts.identity,
            &(self.key.grant_entry, self.key.subject.clone()),
        );
        release(&mut counts.token, &self.key.token);
    }
}

/// Counts refusals and says when to report them: at most once a second, with how
/// many there were since the last report.
#[derive(Default)]
pub struct RefusalCounter {
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

impl RefusalCounter {
    /// Counts one refusal; `Some(n)` when it is time to report `n` of them.
    pub fn tick(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1 += 1;
        let now = std::time::Instant::now();
        let due = state
            .0
            .is_none_or(|last| now.duration_since(last) >= std::time::Duration::from_secs(1));
        if !due {
            return None;
        }
        let n = state.1;
        *state = (Some(now), 0);
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max_sessions: usize) -> Arc<SessionSlots> {
        let limits = Limits {
            max_sessions,
            max_unauthenticated: 2,
            ..Limits::default()
        };
        SessionSlots::new(&limits)
    }

    fn key(connection: &str, sub: &str) -> SessionKey {
        SessionKey {
            connection: connection.into(),
            grant_entry: 0,
            subject: sub.into(),
            token: format!("t-{sub}"),
        }
    }

    const CAPS: SessionCaps = SessionCaps {
        connection: 3,
        grant: Some(4),
        identity: 2,
    };

    #[test]
    fn each_cap_refuses_and_a_released_slot_is_reusable() {
        let s = slots(5);
        let a1 = s.session(key("db", "a"), CAPS).unwrap();
        let _a2 = s.session(key("db", "a"), CAPS).unwrap();
        assert_eq!(a1.same_token, 1);
        let e = s.session(key("db", "a"), CAPS).err().unwrap();
        assert!(e.key.contains("max_sessions_per_identity"), "{e}");
        let _b1 = s.session(key("db", "b"), CAPS).unwrap();
        let e = s.session(key("db", "c"), CAPS).err().unwrap();
        assert!(e.key.contains("max_sessions of connection"), "{e}");
        let _c1 = s.session(key("other", "c"), CAPS).unwrap();
        let e = s.session(key("other", "d"), CAPS).err().unwrap();
        assert_eq!(e.key, "grant[0].max_sessions");
        drop(a1);
        let _a3 = s.session(key("db", "a"), CAPS).unwrap();
        assert_eq!(s.open_sessions(), 4);
        let wide = SessionCaps {
            connection: 10,
            grant: None,
            identity: 10,
        };
        let _e1 = s.session(key("x", "e"), wide).unwrap();
        let e = s.session(key("x", "f"), wide).err().unwrap();
        assert_eq!(e.key, "limits.max_sessions");
    }

    #[test]
    fn unauthenticated_connections_are_capped() {
        let s = slots(5);
        let u1 = s.unauthenticated().unwrap();
        let _u2 = s.unauthenticated().unwrap();
        assert!(s.unauthenticated().is_err());
        drop(u1);
        assert!(s.unauthenticated().is_ok());
    }
}
