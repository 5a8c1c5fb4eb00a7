//! Cancel keys: the gateway hands each client its own BackendKeyData and maps a
//! CancelRequest carrying it to the upstream session's real key.
//!
//! Drivers send cancels on a fresh connection, often without TLS even when the
//! session used it (libpq, psycopg2, node-postgres, pgjdbc do), so cancels are
//! accepted on any listener socket. A cancel only ever reaches the upstream session
//! it was issued for, and only with the matching secret.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Where a cancel for one gateway key goes.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub secret: i32,
    pub upstream_addr: String,
    pub upstream_pid: i32,
    pub upstream_secret: i32,
}

#[derive(Default)]
pub struct CancelRegistry {
    targets: Mutex<HashMap<i32, CancelTarget>>,
}

impl CancelRegistry {
    /// Registers a session's upstream key; returns the gateway's (pid, secret).
    pub fn register(
        &self,
        upstream_addr: &str,
        upstream_pid: i32,
        upstream_secret: i32,
    ) -> (i32, i32) {
        let secret = rand::random::<i32>();
        let Ok(mut targets) = self.targets.lock() else {
            return (0, secret);
        };
        let pid = loop {
            let candidate = rand::random::<i32>() & 0x7fff_ffff;
            if candidate != 0 && !targets.contains_key(&candidate) {
                break candidate;
            }
        };
        targets.insert(
            pid,
            CancelTarget {
                secret,
                upstream_addr: upstream_addr.to_owned(),
                upstream_pid,
                upstream_secret,
            },
        );
        (pid, secret)
    }

    pub fn unregister(&self, pid: i32) {
        if let Ok(mut targets) = self.targets.lock() {
            targets.remove(&pid);
        }
    }

    /// The target for a cancel, if pid and secret match.
    pub fn lookup(&self, pid: i32, secret: &[u8]) -> Option<CancelTarget> {
        let targets = self.targets.lock().ok()?;
        let target = targets.get(&pid)?;
        let expected = target.secret.to_be_bytes();
        // Compare without an early exit on the first differing byte.
        let same = secret.len() == 4
            && expected
                .iter()
                .zip(secret)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        same.then(|| target.clone())
    }
}

/// Sends a CancelRequest to the upstream server.
pub async fn send_upstream_cancel(target: &CancelTarget) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(&target.upstream_addr).await?;
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(
        target.upstream_pid,
        target.upstream_secret,
        &mut buf,
    );
    stream.write_all(&buf).await?;
    stream.shutdown().await
}

/// A token bucket: at most `rate` events per second on average, bursts up to `rate`.
/// Cancel requests arrive unauthenticated on fresh connections, so without a limit
/// anyone who can reach the listener could make the gateway open upstream connections
/// as fast as it can send packets.
pub struct RateLimiter {
    rate: f64,
    state: Mutex<(std::time::Instant, f64)>,
}

impl RateLimiter {
    pub fn per_second(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        RateLimiter {
            rate,
            state: Mutex::new((std::time::Instant::now(), rate)),
        }
    }

    /// Takes one token if there is one.
    pub fn allow(&self) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let now = std::time::Instant::now();
        let (last, tokens) = *state;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.rate);
        if tokens >= 1.0 {
            *state = (now, tokens - 1.0);
            true
        } else {
            *state = (now, tokens);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limiter_allows_a_burst_then_refuses() {
        let limiter = RateLimiter::per_second(3);
        assert!((0..3).all(|_| limiter.allow()));
        assert!(!limiter.allow());
    }
}
