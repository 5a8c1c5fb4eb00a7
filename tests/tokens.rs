//! Token and grant checks at login: every bad token is refused with SQLSTATE 28P01
//! and a reason; identities without a grant get 28000 naming why. Each refusal sits
//! next to a token that works.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{db_error, TestGateway};
use serde_json::json;
use sqlgate::identity::dev_issuer::DevKey;

async fn refused(gw: &TestGateway, dbname: &str, token: &str) -> (String, String) {
    match gw.connect(dbname, token).await {
        Ok(_) => panic!("token accepted: {token}"),
        Err(e) => db_error(&e),
    }
}

fn b64(value: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

#[tokio::test]
async fn valid_token_connects_and_expired_or_premature_ones_do_not() {
    let gw = TestGateway::start().await;
    gw.agent().await.batch_execute("SELECT 1").await.unwrap();

    let mut claims = gw.request(&["analytics-agents"]).claims();
    claims["exp"] = json!(claims["iat"].as_i64().unwrap() - 3600);
    claims["iat"] = json!(claims["iat"].as_i64().unwrap() - 7200);
    let (code, message) = refused(&gw, "reporting", &gw.key.sign(&claims).unwrap()).await;
    assert_eq!(code, "28P01");
    assert!(message.contains("token expired"), "{message}");

    let mut claims = gw.request(&["analytics-agents"]).claims();
    claims["nbf"] = json!(claims["iat"].as_i64().unwrap() + 3600);
    let (code, message) = refused(&gw, "reporting", &gw.key.sign(&claims).unwrap()).await;
    assert_eq!(code, "28P01");
    assert!(message.contains("not valid yet"), "{message}");

    let mut claims = gw.request(&["analytics-agents"]).claims();
    claims["iat"] = json!(claims["iat"].as_i64().unwrap() + 3600);
    let (_, message) = refused(&gw, "reporting", &gw.key.sign(&claims).unwrap()).await;
    assert!(message.contains("issued in the future"), "{message}");
}

#[tokio::test]
async fn issuer_audience_and_subject_are_checked() {
    let gw = TestGateway::start().await;
    let mut req = gw.request(&["analytics-agents"]);
    req.issuer = "https://evil.example.com".into();
    let (code, message) = refused(&gw, "reporting", &req.mint(&gw.key).unwrap()).await;
    assert_eq!(code, "28P01");
    assert!(
        message.contains("issuer") && message.contains("evil.example.com"),
        "{message}"
    );

    let mut req = gw.request(&["analytics-agents"]);
    req.audience = "api://something-else".into();
    let (_, message) = refused(&gw, "reporting", &req.mint(&gw.key).unwrap()).await;
    assert!(message.contains("audience"), "{message}");

    let mut claims = gw.request(&["analytics-agents"]).claims();
    claims.as_object_mut().unwrap().remove("sub");
    let (_, message) = refused(&gw, "reporting", &gw.key.sign(&claims).unwrap()).await;
    assert!(message.contains("\"sub\""), "{message}");

    let (_, message) = refused(&gw, "reporting", "not-a-token").await;
    assert!(message.contains("not a JWT"), "{message}");
}

#[tokio::test]
async fn forged_signatures_and_algorithms_are_refused() {
    let gw = TestGateway::start().await;
    let good = gw.token(&["analytics-agents"]);
    let parts: Vec<&str> = good.split('.').collect();

    // Same header (kid of the real key), payload signed by another key.
    let other = DevKey::generate().unwrap();
    let forged = other
        .sign(&gw.request(&["analytics-agents"]).claims())
        .unwrap();
    let forged_parts: Vec<&str> = forged.split('.').collect();
    let spliced = format!("{}.{}.{}", parts[0], forged_parts[1], forged_parts[2]);
    let (code, message) = refused(&gw, "reporting", &spliced).await;
    assert_eq!(code, "28P01");
    assert!(message.contains("signature is invalid"), "{message}");

    // Payload changed after signing (dba group added).
    let mut claims = gw.request(&["analytics-agents", "dba"]).claims();
    claims["sub"] = json!("agent-7");
    let tampered = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    let (_, message) = refused(&gw, "primary", &tampered).await;
    assert!(message.contains("signature is invalid"), "{message}");

    // alg none.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        parts[1]
    );
    let (code, message) = refused(&gw, "reporting", &none).await;
    assert_eq!(code, "28P01");
    assert!(message.contains("none"), "{message}");

    // HS256 with the issuer's public key as the HMAC secret.
    let jwk = serde_json::to_vec(gw.key.jwk()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(gw.key.kid.clone());
    let hs = jsonwebtoken::encode(
        &header,
        &gw.request(&["analytics-agents"]).claims(),
        &jsonwebtoken::EncodingKey::from_secret(&jwk),
    )
    .unwrap();
    let (_, message) = refused(&gw, "reporting", &hs).await;
    assert!(message.contains("HS256 is not allowed"), "{message}");

    // The untouched token still works.
    gw.connect("reporting", &good).await.unwrap();
}

#[tokio::test]
async fn unknown_keys_are_refused_and_rotated_keys_are_picked_up() {
    let gw = TestGateway::start().await;
    let old = gw.token(&["analytics-agents"]);
    let next = DevKey::generate().unwrap();
    let rotated = gw.request(&["analytics-agents"]).mint(&next).unwrap();
    let (code, message) = refused(&gw, "reporting", &rotated).await;
    assert_eq!(code, "28P01");
    assert!(message.contains("unknown key"), "{message}");

    // The issuer publishes the new key: the gateway refetches on the unknown kid.
    gw.issuer.add_key(next.clone());
    gw.connect("reporting", &rotated)
        .await
        .unwrap()
        .batch_execute("SELECT 1")
        .await
        .unwrap();
    gw.connect("reporting", &old).await.unwrap();
    // The old key is withdrawn; after the cache refreshes, its tokens are refused.
    gw.issuer.remove_key(&gw.key.kid);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let other = DevKey::generate().unwrap();
    let _ = refused(
        &gw,
        "reporting",
        &gw.request(&["analytics-agents"]).mint(&other).unwrap(),
    )
    .await;
    let (_, message) = refused(&gw, "reporting", &old).await;
    assert!(message.contains("unknown key"), "{message}");
}

#[tokio::test]
async fn grants_follow_groups_and_connections() {
    let gw = TestGateway::start().await;
    // Group with no grant at all.
    let (code, message) = refused(&gw, "reporting", &gw.token(&["marketing"])).await;
    assert_eq!(code, "28000");
    assert!(
        message.contains("(groups marketing) has no grant for connection \"reporting\""),
        "{message}"
    );
    // A grant exists, but for another connection.
    let (code, message) = refused(&gw, "primary", &gw.token(&["analytics-agents"])).await;
    assert_eq!(code, "28000");
    assert!(
        message.contains("no grant for connection \"primary\""),
        "{message}"
    );
    assert!(message.contains("it may use: reporting"), "{message}");
    // A connection that does not exist.
    let (_, message) = refused(&gw, "nope", &gw.token(&["analytics-agents"])).await;
    assert!(
        message.contains("no connection named \"nope\""),
        "{message}"
    );
    // The neighbours: each group reaches its own connection.
    gw.connect("reporting", &gw.token(&["analytics-agents"]))
        .await
        .unwrap();
    gw.connect("primary", &gw.token(&["dba"])).await.unwrap();

    // Every decision is in the audit trail, without the token.
    let token = gw.token(&["analytics-agents"]);
    gw.connect("reporting", &token).await.unwrap();
    let audit = gw.audit().await;
    let denied = audit
        .iter()
        .filter(|r| r["event"] == "grant.denied")
        .count();
    let issued = audit
        .iter()
        .filter(|r| r["event"] == "grant.issued")
        .count();
    assert_eq!((denied, issued), (3, 3));
    let text = std::fs::read_to_string(gw.audit_dir.join("audit.jsonl")).unwrap();
    assert!(!text.contains(&token[..40]));
}

#[tokio::test]
async fn no_grant_is_issued_when_the_audit_trail_cannot_be_written() {
    let gw = TestGateway::start_with(common::Setup {
        broken_audit: true,
        ..Default::default()
    })
    .await;
    let (code, message) = refused(&gw, "reporting", &gw.token(&["analytics-agents"])).await;
    assert_eq!(code, "58030");
    assert!(message.contains("audit trail is unavailable"), "{message}");
    // The neighbour, with a working trail, is the rest of this file.
}
