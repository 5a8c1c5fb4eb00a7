//! A real, tiny OIDC issuer for demos, tests and benchmarks.
//!
//! It serves discovery (`/.well-known/openid-configuration`) and a JWKS (`/keys`) over
//! HTTP, exactly the two documents the gateway reads from Okta, and mints tokens with
//! the same claims an Okta custom authorization server puts in access tokens (`iss`,
//! `aud`, `sub`, `cid`, `scp`, `groups`, `iat`, `exp`, `jti`). Keys are ES256 by
//! default (generated into a PKCS#8 PEM file when missing); an RSA PEM works too and
//! signs RS256. Several keys can be served at once, which is how rotation is tested.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A signing key of the dev issuer.
#[derive(Clone)]
pub struct DevKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    jwk: Jwk,
    pem: String,
}

impl DevKey {
    /// A fresh ES256 (P-256) key.
    pub fn generate() -> Result<DevKey, String> {
        let pair = rcgen::KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
        DevKey::from_pem(&pair.serialize_pem())
    }

    /// Reads a PKCS#8 PEM private key: EC P-256 (ES256) or RSA (RS256).
    pub fn from_pem(pem: &str) -> Result<DevKey, String> {
        let (encoding, alg) = match EncodingKey::from_ec_pem(pem.as_bytes()) {
            Ok(k) => (k, Algorithm::ES256),
            Err(_) => (
                EncodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|e| format!("not an EC P-256 or RSA private key in PEM form: {e}"))?,
                Algorithm::RS256,
            ),
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, alg)
            .map_err(|e| format!("cannot derive the public key: {e}"))?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256)[..16].to_owned();
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(DevKey {
            kid,
            alg,
            encoding,
            jwk,
            pem: pem.to_owned(),
        })
    }

    /// Loads the key at `path`, creating an ES256 key there if the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<DevKey, String> {
        match std::fs::read_to_string(path) {
            Ok(pem) => DevKey::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = DevKey::generate()?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                }
                write_private(path, &key.pem).map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(key)
            }
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// The public key as a JWK (what `/keys` serves).
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Signs arbitrary claims with this key.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        self.sign_as(claims, &self.kid)
    }

    /// Signs with this key but names another key id in the header (to see how a
    /// verifier treats a key it does not know).
    pub fn sign_as(&self, claims: &Value, kid: &str) -> Result<String, String> {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| format!("cannot sign: {e}"))
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

/// What to put in a minted token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub issuer: String,
    pub audience: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub scopes: Vec<String>,
    pub client_id: Option<String>,
    pub ttl: Duration,
}

impl TokenRequest {
    /// The claims of an Okta-style access token.
    pub fn claims(&self) -> Value {
        let now = super::unix_now();
        let mut claims = json!({
            "ver": 1,
            "iss": self.issuer,
            "aud": self.audience,
            "sub": self.subject,
            "iat": now,
            "exp": now + self.ttl.as_secs() as i64,
            "jti": format!("AT.{:016x}", rand::random::<u64>()),
        });
        if !self.groups.is_empty() {
            claims["groups"] = json!(self.groups);
        }
        if !self.scopes.is_empty() {
            claims["scp"] = json!(self.scopes);
        }
        if let Some(cid) = &self.client_id {
            claims["cid"] = json!(cid);
        }
        claims
    }

    pub fn mint(&self, key: &DevKey) -> Result<String, String> {
        key.sign(&self.claims())
    }
}

/// A running dev issuer.
pub struct DevIssuer {
    /// The issuer URL (`http://127.0.0.1:PORT`), what goes in `identity.issuer`.
    pub url: String,
    pub addr: SocketAddr,
    keys: Arc<RwLock<Vec<DevKey>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Clone)]
struct IssuerState {
    url: String,
    keys: Arc<RwLock<Vec<DevKey>>>,
}

impl DevIssuer {
    /// Serves discovery and JWKS for `keys` on `addr` (port 0 picks a free port).
    pub async fn start(addr: SocketAddr, keys: Vec<DevKey>) -> std::io::Result<DevIssuer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let keys = Arc::new(RwLock::new(keys));
        let state = IssuerState {
            url: url.clone(),
            keys: keys.clone(),
        };
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/keys", get(jwks))
            .with_state(state);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = server.await {
                tracing::error!(error = %e, "dev issuer stopped");
            }
        });
        Ok(DevIssuer {
            url,
            addr,
            keys,
            shutdown: Some(tx),
        })
    }

    /// Publishes another key (a rotation: old tokens stay valid, new ones use it).
    pub fn add_key(&self, key: DevKey) {
        if let Ok(mut keys) = self.keys.write() {
            keys.push(key);
        }
    }

    /// Stops publishing the key with this id.
    pub fn remove_key(&self, kid: &str) {
        if let Ok(mut keys) = self.keys.write() {
            keys.retain(|k| k.kid != kid);
        }
    }
}

impl Drop for DevIssuer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn discovery(State(state): State<IssuerState>) -> Json<Value> {
    Json(json!({
        "issuer": state.url,
        "jwks_uri": format!("{}/keys", state.url),
        "authorization_endpoint": format!("{}/authorize", state.url),
        "token_endpoint": format!("{}/token", state.url),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "RS256"],
    }))
}

/// The key set, with a Cache-Control max-age as Okta sends one.
async fn jwks(State(state): State<IssuerState>) -> impl axum::response::IntoResponse {
    let keys: Vec<Value> = match state.keys.read() {
        Ok(keys) => keys
            .iter()
            .filter_map(|k| serde_json::to_value(k.jwk()).ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    (
        [(
            axum::http::header::CACHE_CONTROL,
            "max-age=300, must-revalidate",
        )],
        Json(json!({ "keys": keys })),
    )
}
