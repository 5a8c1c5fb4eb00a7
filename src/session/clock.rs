//! The session clock: the grant's time limits, enforced by the gateway itself.
//!
//! A grant says how long one statement may run (`statement_timeout`) and how long a
//! session may sit idle inside an open transaction (`idle_in_transaction_timeout`).
//! The agent can change the server's own settings of the same names, so the gateway
//! does not rely on them: it sees every request it forwards and every "ready" the
//! server answers with (Postgres: ReadyForQuery and its transaction status), and that
//! is enough to know when a statement started and whether the session is idle in a
//! transaction.
//!
//! Sans-IO and protocol-neutral: a front end reports what it [sent](SessionClock::sent)
//! and each [ready](SessionClock::ready), asks when it must next look
//! ([`SessionClock::next_deadline`]), and at that time asks what is [due](SessionClock::due):
//! cancel the running statement upstream, or end the session.

use std::time::{Duration, Instant};

/// How long the server gets to stop a statement after the gateway cancelled it, before
/// the session is ended instead (the cancel may have arrived before the statement began,
/// or the server is waiting for a message that will never come).
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// The grant's time limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeLimits {
    pub statement_timeout: Duration,
    pub idle_in_transaction_timeout: Duration,
}

/// What the client side has sent upstream so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Requests that each end with one "ready" (Postgres: Query and Sync messages).
    pub ready_points: u64,
    /// Requests were sent that no "ready" will mark the end of yet (Postgres:
    /// extended-protocol messages since the last Sync).
    pub open: bool,
}

/// What the clock says must happen now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// A statement has run past the statement timeout: cancel it upstream.
    Cancel,
    /// The server did not stop within [`CANCEL_GRACE`] of the cancel: end the session.
    EndOverrun,
    /// Idle in a transaction past the limit: end the session.
    EndIdleInTransaction,
}

/// The state of one session's clock.
#[derive(Debug)]
pub struct SessionClock {
    limits: TimeLimits,
    sent: Sent,
    ready: u64,
    /// When the statement now running started (the oldest unanswered request, or the
    /// last ready if more were pipelined behind it).
    busy_since: Option<Instant>,
    /// When the session became idle inside a transaction.
    idle_in_transaction_since: Option<Instant>,
    /// When the gateway cancelled the running statement (for its timeout).
    cancelled_at: Option<Instant>,
}

impl SessionClock {
    pub fn new(limits: TimeLimits) -> Self {
        SessionClock {
            limits,
            sent: Sent::default(),
            ready: 0,
            busy_since: None,
            idle_in_transaction_since: None,
            cancelled_at: None,
        }
    }

    pub fn limits(&self) -> TimeLimits {
        self.limits
    }

    /// Whether the server has work from this session it has not finished.
    pub fn busy(&self) -> bool {
        self.sent.ready_points > self.ready || self.sent.open
    }

    /// The client side sent more (`sent` is cumulative).
    pub fn sent(&mut self, now: Instant, sent: Sent) {
        self.sent = sent;
        if self.busy() {
            self.idle_in_transaction_since = None;
            self.busy_since.get_or_insert(now);
        }
    }

    /// The server answered one request with a "ready"; `in_transaction` is its
    /// transaction status (Postgres: 'T' or 'E').
    pub fn ready(&mut self, now: Instant, in_transaction: bool) {
        self.ready += 1;
        self.cancelled_at = None;
        if self.busy() {
            // The next pipelined request starts now.
            self.busy_since = Some(now);
        } else {
            self.busy_since = None;
            self.idle_in_transaction_since = in_transaction.then_some(now);
        }
    }

    /// Whether the gateway has cancelled the running statement for its timeout (so
    /// the server's "canceled" error is the gateway's doing and says so).
    pub fn cancelled_for_timeout(&self) -> bool {
        self.cancelled_at.is_some()
    }

    /// The next time [`SessionClock::due`] may have something to say.
    pub fn next_deadline(&self) -> Option<Instant> {
        if let Some(at) = self.cancelled_at {
            return Some(at + CANCEL_GRACE);
        }
        if let Some(since) = self.busy_since {
            return Some(since + self.limits.statement_timeout);
        }
        self.idle_in_transaction_since
            .map(|since| since + self.limits.idle_in_transaction_timeout)
    }

    /// What must happen at `now`, if anything.
    pub fn due(&mut self, now: Instant) -> Option<Due> {
        if let Some(at) = self.cancelled_at {
            return (now >= at + CANCEL_GRACE).then_some(Due::EndOverrun);
        }
        if let Some(since) = self.busy_since {
            if now >= since + self.limits.statement_timeout {
                self.cancelled_at = Some(now);
                return Some(Due::Cancel);
            }
            return None;
        }
        let since = self.idle_in_transaction_since?;
        (now >= since + self.limits.idle_in_transaction_timeout)
            .then_some(Due::EndIdleInTransaction)
    }
}

/// "5m", "90s", "1h 30m": a limit as a person wrote it.
pub fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> (SessionClock, Instant) {
        let limits = TimeLimits {
            statement_timeout: Duration::from_secs(10),
            idle_in_transaction_timeout: Duration::from_secs(60),
        };
        (SessionClock::new(limits), Instant::now())
    }

    fn sent(ready_points: u64, open: bool) -> Sent {
        Sent { ready_points, open }
    }

    #[test]
    fn a_statement_past_its_timeout_is_cancelled_then_the_session_ended() {
        let (mut c, t0) = clock();
        assert_eq!(c.next_deadline(), None);
        c.sent(t0, sent(1, false));
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(c.due(t0 + Duration::from_secs(9)), None);
        assert_eq!(c.due(t0 + Duration::from_secs(10)), Some(Due::Cancel));
        assert!(c.cancelled_for_timeout());
        let grace = t0 + Duration::from_secs(10) + CANCEL_GRACE;
        assert_eq!(c.next_deadline(), Some(grace));
        assert_eq!(c.due(grace - Duration::from_millis(1)), None);
        assert_eq!(c.due(grace), Some(Due::EndOverrun));
    }

    #[test]
    fn each_pipelined_statement_gets_its_own_timeout() {
        let (mut c, t0) = clock();
        c.sent(t0, sent(2, false));
        let t1 = t0 + Duration::from_secs(8);
        c.ready(t1, false);
        assert!(c.busy());
        assert_eq!(c.next_deadline(), Some(t1 + Duration::from_secs(10)));
        c.ready(t1 + Duration::from_secs(1), false);
        assert!(!c.busy());
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn an_answered_cancel_clears_the_grace() {
        let (mut c, t0) = clock();
        c.sent(t0, sent(1, false));
        assert_eq!(c.due(t0 + Duration::from_secs(11)), Some(Due::Cancel));
        c.ready(t0 + Duration::from_secs(12), false);
        assert!(!c.cancelled_for_timeout());
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn idle_in_a_transaction_ends_the_session_but_plain_idle_does_not() {
        let (mut c, t0) = clock();
        c.sent(t0, sent(1, false));
        c.ready(t0, true);
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(60)));
        assert_eq!(
            c.due(t0 + Duration::from_secs(60)),
            Some(Due::EndIdleInTransaction)
        );
        // Activity restarts the clock; leaving the transaction stops it.
        let t1 = t0 + Duration::from_secs(30);
        c.sent(t1, sent(2, false));
        assert_eq!(c.next_deadline(), Some(t1 + Duration::from_secs(10)));
        c.ready(t1, false);
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn open_extended_requests_count_as_running() {
        let (mut c, t0) = clock();
        c.sent(t0, sent(0, true));
        assert!(c.busy());
        assert_eq!(c.due(t0 + Duration::from_secs(10)), Some(Due::Cancel));
        c.sent(t0, sent(1, false));
        c.ready(t0 + Duration::from_secs(11), true);
        assert!(!c.busy());
    }
}
