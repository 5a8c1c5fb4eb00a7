//! The gateway's own upstream login: SCRAM-SHA-256, md5 and trust, each against a
//! server that really asks for it (pg_hba lines for the test roles are placed first),
//! with the credential from an env var or a file; optionally over TLS. A wrong
//! credential fails with a message that does not contain it.

mod common;

use std::time::Duration;

use common::{admin, db_error, Setup, TestGateway};
use tokio_postgres::NoTls;

const SCRAM_ROLE: &str = "sqlgate_test_scram";
const MD5_ROLE: &str = "sqlgate_test_md5";
const PASSWORD: &str = "s3cret-upstream-pw";

/// Makes the local server require SCRAM for one role and md5 for another.
async fn require_passwords() {
    let admin = admin("postgres").await;
    for (role, method) in [(SCRAM_ROLE, "scram-sha-256"), (MD5_ROLE, "md5")] {
        let exists = admin
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .unwrap()
            .is_some();
        if !exists {
            let _ = admin
                .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
                .await;
        }
        let encryption = if method == "md5" {
            "md5"
        } else {
            "scram-sha-256"
        };
        admin
            .batch_execute(&format!(
                "SET password_encryption = '{encryption}'; ALTER ROLE {role} PASSWORD '{PASSWORD}'"
            ))
            .await
            .unwrap();
    }
    let hba: String = admin.query_one("SHOW hba_file", &[]).await.unwrap().get(0);
    let text = std::fs::read_to_string(&hba).expect("read pg_hba.conf (tests run as root)");
    let wanted = format!(
        "host all {SCRAM_ROLE} 127.0.0.1/32 scram-sha-256\nhost all {MD5_ROLE} 127.0.0.1/32 md5\n"
    );
    if !text.starts_with(&wanted) {
        let rest: String = text
            .lines()
            .filter(|l| !l.contains(SCRAM_ROLE) && !l.contains(MD5_ROLE))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&hba, format!("{wanted}{rest}")).expect("write pg_hba.conf");
        admin
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The server really asks: without a password the login fails.
    let direct = tokio_postgres::connect(
        &format!("host=127.0.0.1 user={SCRAM_ROLE} dbname=postgres"),
        NoTls,
    )
    .await;
    assert!(
        direct.is_err(),
        "pg_hba does not require a password for {SCRAM_ROLE}"
    );
}

async fn gateway_as(role: &str, credential: String, upstream_tls: &str) -> TestGateway {
    let gw = TestGateway::start_with(Setup {
        user_override: Some(role.to_owned()),
        connection_extra: format!("{credential}\nupstream_tls = \"{upstream_tls}\""),
        ..Default::default()
    })
    .await;
    gw.db
        .direct()
        .await
        .batch_execute(&format!(
            "GRANT SELECT ON items TO {SCRAM_ROLE}, {MD5_ROLE}"
        ))
        .await
        .unwrap();
    gw
}

async fn read_through(gw: &TestGateway) -> Result<i64, tokio_postgres::Error> {
    let c = gw
        .connect("reporting", &gw.token(&["analytics-agents"]))
        .await?;
    let row = c.query_one("SELECT count(*) FROM items", &[]).await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn scram_md5_and_tls_upstream_logins_work_and_wrong_secrets_do_not_leak() {
    require_passwords().await;

    // SCRAM-SHA-256, password from an environment variable.
    std::env::set_var("SQLGATE_TEST_SCRAM_PW", PASSWORD);
    let gw = gateway_as(
        SCRAM_ROLE,
        "password_env = \"SQLGATE_TEST_SCRAM_PW\"".into(),
        "disable",
    )
    .await;
    assert_eq!(read_through(&gw).await.unwrap(), 3);

    // The same over upstream TLS.
    let gw = gateway_as(
        SCRAM_ROLE,
        "password_env = \"SQLGATE_TEST_SCRAM_PW\"".into(),
        "require",
    )
    .await;
    assert_eq!(read_through(&gw).await.unwrap(), 3);

    // md5, password from a file.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{PASSWORD}\n")).unwrap();
    let gw = gateway_as(
        MD5_ROLE,
        format!("password_file = {:?}", file.path()),
        "disable",
    )
    .await;
    assert_eq!(read_through(&gw).await.unwrap(), 3);

    // A wrong credential: the agent learns the login failed, not the secret.
    std::env::set_var("SQLGATE_TEST_WRONG_PW", "wrong-pw-do-not-leak");
    let gw = gateway_as(
        SCRAM_ROLE,
        "password_env = \"SQLGATE_TEST_WRONG_PW\"".into(),
        "disable",
    )
    .await;
    let err = read_through(&gw).await.unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("upstream refused the login"), "{message}");
    assert!(
        !message.contains("wrong-pw-do-not-leak") && !message.contains(PASSWORD),
        "{message}"
    );
    let reasons = gw.ended_reasons().await;
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("upstream login failed")),
        "{reasons:?}"
    );
    let text = std::fs::read_to_string(gw.audit_dir.join("audit.jsonl")).unwrap();
    assert!(!text.contains("wrong-pw-do-not-leak"));

    // A method the connection does not allow: nothing is sent. The agent learns the
    // login failed; the operator's audit trail says why.
    let gw = gateway_as(
        SCRAM_ROLE,
        "password_env = \"SQLGATE_TEST_SCRAM_PW\"\nupstream_auth = [\"md5\"]".into(),
        "disable",
    )
    .await;
    let (_, message) = db_error(&read_through(&gw).await.unwrap_err());
    assert!(
        message.contains("could not log in to the upstream"),
        "{message}"
    );
    assert!(
        !message.contains(SCRAM_ROLE) && !message.contains("127.0.0.1"),
        "{message}"
    );
    let reason = gw.ended_reasons().await.join("; ");
    assert!(
        reason.contains(
            "asks for scram-sha-256 authentication, which this connection does not allow"
        ),
        "{reason}"
    );

    // A missing credential: the trail names the variable, never a value.
    let gw = gateway_as(
        SCRAM_ROLE,
        "password_env = \"SQLGATE_TEST_UNSET_PW\"".into(),
        "disable",
    )
    .await;
    let (_, message) = db_error(&read_through(&gw).await.unwrap_err());
    assert!(
        message.contains("no credential for this connection"),
        "{message}"
    );
    let reasons = gw.ended_reasons().await;
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("SQLGATE_TEST_UNSET_PW is not set")),
        "{reasons:?}"
    );
}
