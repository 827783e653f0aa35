//! Bad configuration and unreachable or refusing servers: each gives one line naming the cause, no panic,
//! and never a secret.

use writeback_tests::e2e::{Env, text};

/// Runs `sync --once`, expects failure, and returns the single error line.
async fn failing_sync(env: &Env) -> anyhow::Result<String> {
    let output = env.run(&["sync", "--once"]).await?;
    assert!(!output.status.success(), "sync unexpectedly succeeded");
    let stderr = text(&output.stderr);
    let stdout = text(&output.stdout);
    for secret in env.secrets() {
        assert!(!stderr.contains(&secret) && !stdout.contains(&secret), "a secret was printed: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line: {stderr}");
    Ok(errors[0].to_string())
}

#[tokio::test]
async fn an_unknown_config_field_is_named() -> anyhow::Result<()> {
    let env = Env::new("err-config").await?;
    env.edit_config(|t| t.replace("interval = \"1s\"", "interval = \"1s\"\nintervall = \"2s\""))?;
    let line = failing_sync(&env).await?;
    assert!(line.contains("unknown field") && line.contains("intervall"), "{line}");
    Ok(())
}

#[tokio::test]
async fn a_wrong_bind_password_is_named() -> anyhow::Result<()> {
    let env = Env::new("err-password").await?;
    let wrong = env.dir.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password")?;
    let original = env.dc.info().admin_password_file.display().to_string();
    env.edit_config(|t| t.replace(&original, &wrong.display().to_string()))?;
    let line = failing_sync(&env).await?;
    assert!(line.contains("bind as CN=Administrator") && line.contains("invalid credentials"), "{line}");
    assert!(!line.contains("not-the-password"), "{line}");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_dc_is_named() -> anyhow::Result<()> {
    let env = Env::new("err-unreachable").await?;
    env.edit_config(|t| t.replace("ldaps://127.0.0.1:636", "ldaps://127.0.0.1:1"))?;
    let line = failing_sync(&env).await?;
    assert!(line.contains("cannot connect to ldaps://127.0.0.1:1") && line.contains("refused"), "{line}");
    Ok(())
}

#[tokio::test]
async fn a_wrong_client_secret_is_named() -> anyhow::Result<()> {
    let env = Env::new("err-secret").await?;
    let secret = env.dir.path().join("client.secret");
    std::fs::write(&secret, "a-wrong-secret\n")?;
    let line = failing_sync(&env).await?;
    assert!(line.contains("token request failed with HTTP 401: invalid_client: AADSTS7000215"), "{line}");
    assert!(!line.contains("a-wrong-secret"), "{line}");
    Ok(())
}

#[tokio::test]
async fn a_missing_secret_file_is_named() -> anyhow::Result<()> {
    let env = Env::new("err-secret-file").await?;
    std::fs::remove_file(env.dir.path().join("client.secret"))?;
    let line = failing_sync(&env).await?;
    assert!(line.contains("client secret") && line.contains("client.secret"), "{line}");
    Ok(())
}

#[tokio::test]
async fn a_ca_that_did_not_sign_the_dc_certificate_is_refused() -> anyhow::Result<()> {
    let env = Env::new("err-ca").await?;
    env.trust_another_ca()?;
    let line = failing_sync(&env).await?;
    assert!(line.contains("TLS with ldaps://127.0.0.1:636 failed") && line.contains("UnknownIssuer"), "{line}");
    Ok(())
}

#[tokio::test]
async fn a_ca_file_that_is_not_a_certificate_is_named() -> anyhow::Result<()> {
    let env = Env::new("err-ca-file").await?;
    let junk = env.dir.path().join("junk.pem");
    std::fs::write(&junk, "this is not PEM")?;
    let original = env.dc.info().ca_file.display().to_string();
    env.edit_config(|t| t.replace(&original, &junk.display().to_string()))?;
    let line = failing_sync(&env).await?;
    assert!(line.contains("ca_file") && line.contains("junk.pem"), "{line}");
    Ok(())
}

#[tokio::test]
async fn a_bad_ca_file_is_named_even_when_the_dc_cannot_be_reached() -> anyhow::Result<()> {
    let mut env = Env::new("err-ca-first").await?;
    // Nothing listens on port 1 of the loopback: the connection would be refused.
    env.reach_directory_at("ldaps://127.0.0.1:1")?;
    let junk = env.dir.path().join("junk.pem");
    std::fs::write(&junk, "this is not PEM")?;
    let original = env.dc.info().ca_file.display().to_string();
    env.edit_config(|t| t.replace(&original, &junk.display().to_string()))?;
    let line = failing_sync(&env).await?;
    assert!(line.contains("ca_file") && line.contains("junk.pem"), "the CA file is named first: {line}");
    Ok(())
}

#[tokio::test]
async fn a_dc_that_refuses_starttls_is_named_and_the_password_is_never_sent() -> anyhow::Result<()> {
    let server = writeback_tests::ldap_proxy::NoStartTls::start()?;
    let mut env = Env::new("err-starttls").await?;
    // However the scheme is spelled, it is the parsed URL that decides on StartTLS.
    let plain = server.url().to_string();
    let upper = plain.replacen("ldap://", "LDAP://", 1);
    let mixed = plain.replacen("ldap://", "Ldap://", 1);
    for url in [plain.clone(), upper, mixed, format!(" {plain}")] {
        env.reach_directory_at(&url)?;
        let line = failing_sync(&env).await?;
        assert!(line.contains(server.url()) && line.to_lowercase().contains("starttls"), "{url:?}: {line}");
        assert_eq!(server.binds(), 0, "a bind was sent without TLS to {url:?}");
    }
    Ok(())
}
