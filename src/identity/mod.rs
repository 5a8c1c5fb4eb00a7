//! Who is asking: bearer token in, [`Principal`] out.
//!
//! The gateway is an OIDC relying party. [`Verifier::verify`] checks a JWT against the
//! configured issuer exactly as an Okta custom authorization server expects a third
//! party to: the header's algorithm must be on the allow-list (so `none` and HMAC
//! signed with a public key are impossible), the signing key is found by `kid` in the
//! issuer's JWKS ([`jwks`]), and `iss`, `aud`, `exp`, `nbf` and `iat` are checked with
//! a small leeway. A token without `sub` is refused. Failures are a [`TokenError`]
//! whose message says what was wrong with the token and nothing about our internals.
//!
//! [`dev_issuer`] is a real, tiny OIDC issuer for demos, tests and benchmarks.

pub mod dev_issuer;
pub mod jwks;

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{errors::ErrorKind, Algorithm, Validation};
use serde_json::{Map, Value};

use crate::config::IdentityConfig;
use jwks::{JwksCache, KeyLookupError};

/// The verified identity behind a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `sub`: the user or service the token was issued to.
    pub subject: String,
    /// Groups from the configured groups claim (Okta: a custom `groups` claim).
    pub groups: Vec<String>,
    /// Scopes from `scp` (array, or a space-separated string).
    pub scopes: Vec<String>,
    /// Client id (`cid` for Okta), the OAuth client the token was issued to.
    pub client_id: Option<String>,
    /// `jti`, when present, for the audit trail.
    pub token_id: Option<String>,
    /// `iss`: the issuer that signed the token (checked against the configuration).
    pub issuer: String,
    /// `exp`: no grant outlives the token.
    pub token_expires_at: SystemTime,
}

/// Why a token was refused. Shown to the client, so each says what to fix.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the password is not a JWT; put an access token from the identity provider in the password field")]
    NotAJwt,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not allowed (allowed: {1})")]
    AlgorithmNotAllowed(String, String),
    #[error("token is signed with an unknown key (kid {0:?}); the issuer does not publish it")]
    UnknownKey(String),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token expired at {0} (unix time); get a fresh token")]
    Expired(i64),
    #[error("token is not valid yet (nbf {0}, unix time)")]
    NotYetValid(i64),
    #[error("token was issued in the future (iat {0}, unix time); check the clock")]
    IssuedInFuture(i64),
    #[error("token issuer {0:?} is not the configured issuer")]
    WrongIssuer(String),
    #[error("token audience does not include {0:?}")]
    WrongAudience(String),
    #[error("token has no {0:?} claim")]
    MissingClaim(String),
    #[error("token claim {0:?} has the wrong type")]
    BadClaim(String),
    #[error("cannot fetch the issuer's signing keys: {0}")]
    KeysUnavailable(String),
}

/// Parses an algorithm name for the allow-list. Symmetric algorithms are refused: the
/// gateway only ever holds public keys, and accepting HS* would let anyone who has the
/// public key sign tokens.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg: Algorithm = name
        .parse()
        .map_err(|_| format!("unknown algorithm {name:?} (use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA)"))?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(format!(
            "{name} is a shared-secret algorithm; only public-key algorithms can be allowed"
        ));
    }
    Ok(alg)
}

/// Verifies bearer tokens for one issuer.
pub struct Verifier {
    config: IdentityConfig,
    keys: JwksCache,
}

impl Verifier {
    pub fn new(config: IdentityConfig) -> Self {
        let keys = JwksCache::new(
            &config.issuer,
            config.jwks_min_refetch,
            config.jwks_cache_ttl,
        );
        Verifier { config, keys }
    }

    /// Fetches the issuer's keys now, so the first connection does not wait for it.
    /// Failure is not fatal: keys are fetched again on demand.
    pub async fn prefetch(&self) -> Result<(), String> {
        self.keys.refresh().await
    }

    /// Checks `token` and returns who it speaks for.
    pub async fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let token = token.trim();
        if token.split('.').count() != 3 {
            return Err(TokenError::NotAJwt);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName | ErrorKind::Json(_) => TokenError::Malformed(
                "unsupported or missing algorithm in the header (alg \"none\" is never accepted)"
                    .into(),
            ),
            _ => TokenError::Malformed(format!("cannot read the header ({e})")),
        })?;
        if !self.config.algorithms.contains(&header.alg) {
            let allowed: Vec<String> = self
                .config
                .algorithms
                .iter()
                .map(|a| format!("{a:?}"))
                .collect();
            return Err(TokenError::AlgorithmNotAllowed(
                format!("{:?}", header.alg),
                allowed.join(", "),
            ));
        }
        let kid = header.kid.clone().unwrap_or_default();
        let key = self.keys.key(&kid, header.alg).await.map_err(|e| match e {
            KeyLookupError::Unknown => TokenError::UnknownKey(kid.clone()),
            KeyLookupError::WrongAlgorithm(key_alg) => TokenError::AlgorithmNotAllowed(
                format!("{:?}", header.alg),
                format!("key {kid:?} is for {key_alg}"),
            ),
            KeyLookupError::Fetch(msg) => TokenError::KeysUnavailable(msg),
        })?;

        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.config.leeway.as_secs();
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&self.config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;

        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::ExpiredSignature => TokenError::Expired(0),
                ErrorKind::ImmatureSignature => TokenError::NotYetValid(0),
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer(String::new()),
                ErrorKind::InvalidAudience => {
                    TokenError::WrongAudience(self.config.audiences.join(" or "))
                }
                ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
                ErrorKind::InvalidClaimFormat(c) => TokenError::BadClaim(c.clone()),
                ErrorKind::InvalidAlgorithm => TokenError::AlgorithmNotAllowed(
                    format!("{:?}", header.alg),
                    "the key does not match this algorithm".into(),
                ),
                _ => TokenError::Malformed(e.to_string()),
            },
        );
        // Fill in the claim values the library does not report, for a useful message.
        let claims = match data {
            Ok(d) => d.claims,
            Err(err) => return Err(self.explain(token, err)),
        };
        self.principal(&claims)
    }

    /// Adds the offending value to an error, read from the (signature-checked or not)
    /// payload. Only ever used to enrich a refusal.
    fn explain(&self, token: &str, err: TokenError) -> TokenError {
        let claims = unverified_claims(token).unwrap_or_default();
        let int = |name: &str| claims.get(name).and_then(Value::as_i64).unwrap_or(0);
        match err {
            TokenError::Expired(_) => TokenError::Expired(int("exp")),
            TokenError::NotYetValid(_) => TokenError::NotYetValid(int("nbf")),
            TokenError::WrongIssuer(_) => TokenError::WrongIssuer(
                claims
                    .get("iss")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            ),
            other => other,
        }
    }

    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, TokenError> {
        let now = unix_now();
        let leeway = self.config.leeway.as_secs() as i64;
        if let Some(iat) = claims.get("iat") {
            let iat = iat
                .as_i64()
                .ok_or_else(|| TokenError::BadClaim("iat".into()))?;
            if iat > now + leeway {
                return Err(TokenError::IssuedInFuture(iat));
            }
        }
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) | None => return Err(TokenError::MissingClaim("sub".into())),
            Some(_) => return Err(TokenError::BadClaim("sub".into())),
        };
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or_else(|| TokenError::BadClaim("exp".into()))?;
        Ok(Principal {
            subject,
            groups: string_list(claims, &self.config.groups_claim, ListForm::ArrayOnly)?,
            scopes: string_list(claims, &self.config.scopes_claim, ListForm::ArrayOrSpaced)?,
            client_id: match claims.get(&self.config.client_id_claim) {
                Some(Value::String(s)) => Some(s.clone()),
                None => None,
                Some(_) => return Err(TokenError::BadClaim(self.config.client_id_claim.clone())),
            },
            token_id: claims.get("jti").and_then(Value::as_str).map(str::to_owned),
            issuer: claims
                .get("iss")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            token_expires_at: UNIX_EPOCH + Duration::from_secs(exp.max(0) as u64),
        })
    }
}

/// Which JSON forms a list claim may take.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ListForm {
    /// Only an array of strings. Group names may contain spaces ("Analytics Agents"),
    /// so a string is refused rather than split: split, it would match a grant for
    /// group "Agents".
    ArrayOnly,
    /// An array, or a space-separated string (OAuth's `scope`; Okta sends `scp` as an
    /// array).
    ArrayOrSpaced,
}

/// A claim holding a list of strings. Missing means empty.
fn string_list(
    claims: &Map<String, Value>,
    name: &str,
    form: ListForm,
) -> Result<Vec<String>, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if form == ListForm::ArrayOrSpaced => {
            Ok(s.split_whitespace().map(str::to_owned).collect())
        }
        Some(Value::Array(items)) => {
            let mut seen = HashSet::new();
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let s = item
                    .as_str()
                    .ok_or_else(|| TokenError::BadClaim(name.to_owned()))?;
                if seen.insert(s) {
                    out.push(s.to_owned());
                }
            }
            Ok(out)
        }
        Some(_) => Err(TokenError::BadClaim(name.to_owned())),
    }
}

/// The payload of a JWT without checking anything. Only for error messages.
fn unverified_claims(token: &str) -> Option<Map<String, Value>> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: Value) -> Map<String, Value> {
        match json {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn groups_must_be_an_array_scopes_may_be_a_spaced_string() {
        let c = claims(serde_json::json!({
            "groups": "Analytics Agents",
            "scp": "read write",
            "list": ["a", "b", "a"],
        }));
        // Split, "Analytics Agents" would match a grant for group "Agents".
        assert!(string_list(&c, "groups", ListForm::ArrayOnly).is_err());
        assert_eq!(
            string_list(&c, "scp", ListForm::ArrayOrSpaced).unwrap(),
            ["read", "write"]
        );
        assert_eq!(
            string_list(&c, "list", ListForm::ArrayOnly).unwrap(),
            ["a", "b"]
        );
        assert!(string_list(&c, "missing", ListForm::ArrayOnly)
            .unwrap()
            .is_empty());
    }
}
