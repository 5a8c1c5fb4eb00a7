//! The issuer's signing keys, fetched the way an OIDC relying party must.
//!
//! `{issuer}/.well-known/openid-configuration` names the `jwks_uri`; the key set found
//! there is cached. A token whose `kid` is not in the cache triggers a refetch — that
//! is how a key rotation is picked up — but at most once per `min_refetch`, so a
//! stream of tokens with made-up key ids cannot turn the gateway into a load generator
//! against the identity provider. Keys are never fetched per query, only per login,
//! and the cache is refreshed after `ttl` even when nothing is unknown — sooner if the
//! issuer's `Cache-Control: max-age` says so (Okta sends one).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::sync::Mutex;

/// Why no key could be found for a token.
#[derive(Debug)]
pub enum KeyLookupError {
    /// The issuer does not publish this key id (after a refetch, if allowed).
    Unknown,
    /// The key exists but is declared for another algorithm.
    WrongAlgorithm(String),
    /// The issuer could not be reached or answered nonsense.
    Fetch(String),
}

struct CachedKey {
    key: Arc<DecodingKey>,
    alg: Option<String>,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, CachedKey>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    /// How long the current key set may be used: the issuer's `Cache-Control:
    /// max-age` when it sent one and it is shorter than the configured TTL.
    ttl: Option<Duration>,
}

/// JWKS cache for one issuer.
pub struct JwksCache {
    issuer: String,
    http: reqwest::Client,
    min_refetch: Duration,
    ttl: Duration,
    /// The cache; locked only briefly, never across a fetch.
    state: Mutex<State>,
    /// Held by the one task fetching the key set.
    fetching: tokio::sync::Mutex<()>,
}

impl JwksCache {
    pub fn new(issuer: &str, min_refetch: Duration, ttl: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        JwksCache {
            issuer: issuer.trim_end_matches('/').to_owned(),
            http,
            min_refetch,
            ttl,
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The key for `kid`, fetching the key set when it is unknown or stale.
    ///
    /// The cache itself is only locked for lookups and updates, never across a fetch:
    /// while one login refreshes the key set, logins whose key is cached (even if
    /// stale) go on with it instead of waiting for the identity provider.
    pub async fn key(&self, kid: &str, alg: Algorithm) -> Result<Arc<DecodingKey>, KeyLookupError> {
        let (known, stale) = self.status(kid);
        if known && !stale {
            return self.cached(kid, alg);
        }
        let fetching = if known {
            // Stale: refresh if nobody else is, otherwise use what we have.
            match self.fetching.try_lock() {
                Ok(guard) => guard,
                Err(_) => return self.cached(kid, alg),
            }
        } else {
            self.fetching.lock().await
        };
        // Someone may have fetched while we waited.
        let (known, stale) = self.status(kid);
        let may_refetch = self
            .state
            .lock()
            .map(|s| {
                s.last_attempt
                    .is_none_or(|t| t.elapsed() >= self.min_refetch)
            })
            .unwrap_or(false);
        if (stale || !known) && may_refetch {
            if let Err(e) = self.refresh_locked().await {
                if !known {
                    return Err(KeyLookupError::Fetch(e));
                }
                // Keep serving cached keys when the issuer is briefly unreachable.
                tracing::warn!(issuer = %self.issuer, error = %e, "JWKS refresh failed; using cached keys");
            }
        }
        drop(fetching);
        self.cached(kid, alg)
    }

    /// Whether `kid` is cached, and whether the cache is past its TTL.
    fn status(&self, kid: &str) -> (bool, bool) {
        match self.state.lock() {
            Ok(state) => {
                let ttl = state.ttl.unwrap_or(self.ttl);
                let stale = state.fetched_at.is_none_or(|t| t.elapsed() >= ttl);
                (lookup(&state.keys, kid).is_some(), stale)
            }
            Err(_) => (false, true),
        }
    }

    fn cached(&self, kid: &str, alg: Algorithm) -> Result<Arc<DecodingKey>, KeyLookupError> {
        let state = self.state.lock().map_err(|_| KeyLookupError::Unknown)?;
        let cached = lookup(&state.keys, kid).ok_or(KeyLookupError::Unknown)?;
        if let Some(key_alg) = &cached.alg {
            if *key_alg != format!("{alg:?}") {
                return Err(KeyLookupError::WrongAlgorithm(key_alg.clone()));
            }
        }
        Ok(cached.key.clone())
    }

    /// Fetches the key set now.
    pub async fn refresh(&self) -> Result<(), String> {
        let _fetching = self.fetching.lock().await;
        self.refresh_locked().await
    }

    /// Fetches the key set and replaces the cache (caller holds `fetching`).
    async fn refresh_locked(&self) -> Result<(), String> {
        if let Ok(mut state) = self.state.lock() {
            state.last_attempt = Some(Instant::now());
        }
        let (keys, max_age) = self.fetch().await?;
        tracing::info!(issuer = %self.issuer, keys = keys.len(), "fetched signing keys");
        let mut state = self
            .state
            .lock()
            .map_err(|_| "key cache poisoned".to_owned())?;
        state.keys = keys;
        state.fetched_at = Some(Instant::now());
        state.ttl = max_age.map(|age| age.min(self.ttl));
        Ok(())
    }

    async fn fetch(&self) -> Result<(HashMap<String, CachedKey>, Option<Duration>), String> {
        let discovery_url = format!("{}/.well-known/openid-configuration", self.issuer);
        let (discovery, _) = self.get_json(&discovery_url).await?;
        if discovery
            .get("issuer")
            .and_then(|v| v.as_str())
            .map(|s| s.trim_end_matches('/'))
            != Some(&self.issuer)
        {
            return Err(format!("{discovery_url} names a different issuer"));
        }
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("{discovery_url} has no jwks_uri"))?
            .to_owned();
        let (set, max_age) = self.get_json(&jwks_uri).await?;
        let set: JwkSet =
            serde_json::from_value(set).map_err(|e| format!("{jwks_uri} is not a JWK set: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue; // a key type we cannot use; other keys may still serve
            };
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            let alg = jwk.common.key_algorithm.map(|a| format!("{a:?}"));
            keys.insert(
                kid,
                CachedKey {
                    key: Arc::new(key),
                    alg,
                },
            );
        }
        Ok((keys, max_age))
    }

    /// GETs a JSON document; also returns its `Cache-Control: max-age`, if any.
    async fn get_json(&self, url: &str) -> Result<(serde_json::Value, Option<Duration>), String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", response.status()));
        }
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let json: serde_json::Value = response
            .json()
            .await
            .map_err(|e| format!("GET {url}: not JSON: {e}"))?;
        Ok((json, max_age))
    }
}

/// `max-age` of a Cache-Control header value (`no-store`/`no-cache` count as 0).
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|directive| {
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return Some(Duration::ZERO);
        }
        let (name, seconds) = directive.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| seconds.trim().parse().ok().map(Duration::from_secs))
            .flatten()
    })
}

/// A token without `kid` may use the issuer's only key.
fn lookup<'a>(keys: &'a HashMap<String, CachedKey>, kid: &str) -> Option<&'a CachedKey> {
    match keys.get(kid) {
        Some(k) => Some(k),
        None if kid.is_empty() && keys.len() == 1 => keys.values().next(),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=300, must-revalidate"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
