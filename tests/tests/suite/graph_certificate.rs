//! Certificate authentication to Graph, end to end: the real binary signs a JWT client assertion with a key
//! made by the `openssl` CLI, and the simulator verifies it as Entra ID does. Failures give one line naming
//! the cause, and no output ever carries key material.

use std::path::{Path, PathBuf};

use writeback_tests::e2e::{Env, new_id, text};
use writeback_tests::graphsim::{Group, MemberRef, SimConfig, WritebackConfiguration};

/// A self-signed RSA certificate and its unencrypted PKCS#8 key, readable by their owner only.
struct KeyPair {
    certificate: PathBuf,
    key: PathBuf,
}

impl KeyPair {
    fn generate(dir: &Path, name: &str) -> anyhow::Result<KeyPair> {
        let (certificate, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        let output = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=writeback agent"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&certificate)
            .output()?;
        anyhow::ensure!(output.status.success(), "openssl failed: {}", text(&output.stderr));
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(KeyPair { certificate, key })
    }

    fn certificate_pem(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(&self.certificate)?)
    }

    /// The base64 lines of the private key: none may appear in any output.
    fn key_lines(&self) -> anyhow::Result<Vec<String>> {
        let pem = std::fs::read_to_string(&self.key)?;
        Ok(pem.lines().filter(|l| !l.starts_with("-----")).map(str::to_string).collect())
    }
}

/// A world whose simulated app has `registered`'s certificate, and whose agent uses `used` instead of the
/// client secret (whose file is removed).
async fn certificate_env(name: &str, registered: &KeyPair, used: &KeyPair) -> anyhow::Result<Env> {
    let sim = SimConfig { client_cert_pem: Some(registered.certificate_pem()?), ..SimConfig::default() };
    let env = Env::with_sim(name, sim).await?;
    let secret = env.dir.path().join("client.secret");
    let secret_line = format!("client_secret_file = \"{}\"", secret.display());
    let certificate_lines = format!(
        "client_certificate_file = \"{}\"\nclient_key_file = \"{}\"",
        used.certificate.display(),
        used.key.display()
    );
    env.edit_config(|t| {
        assert!(t.contains(&secret_line), "the config has no client_secret_file line: {t}");
        t.replace(&secret_line, &certificate_lines)
    })?;
    std::fs::remove_file(secret)?;
    Ok(env)
}

/// Fails if any output carries the client secret, the bind password or a line of a private key.
fn assert_no_secrets(env: &Env, keys: &[&KeyPair], output: &std::process::Output) -> anyhow::Result<()> {
    let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
    for secret in env.secrets() {
        assert!(!all.contains(&secret), "a secret was printed: {all}");
    }
    for key in keys {
        for line in key.key_lines()? {
            assert!(!all.contains(&line), "key material was printed: {all}");
        }
    }
    assert!(!all.contains("-----BEGIN"), "PEM text was printed: {all}");
    Ok(())
}

/// Runs `sync --once`, expects failure, and returns the single error line.
async fn failing_sync(env: &Env, keys: &[&KeyPair]) -> anyhow::Result<String> {
    let output = env.run(&["sync", "--once"]).await?;
    assert!(!output.status.success(), "sync unexpectedly succeeded");
    assert_no_secrets(env, keys, &output)?;
    let stderr = text(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line: {stderr}");
    Ok(errors[0].to_string())
}

#[tokio::test]
async fn a_certificate_signs_in_and_the_sync_runs_without_a_secret() -> anyhow::Result<()> {
    let keys = tempfile::tempdir()?;
    let app = KeyPair::generate(keys.path(), "app")?;
    let env = certificate_env("cert-login", &app, &app).await?;
    // An admin's slip: the key is readable by everyone. The agent works, and says so.
    std::fs::set_permissions(&app.key, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;

    let (alice, _) = env.synced_user("cert-alice").await?;
    let id = new_id();
    let mut group = Group::security(&id, "Certificate Ops");
    group.writeback = Some(WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: None });
    group.members = vec![MemberRef::user(&alice)];
    env.sim.add_group(group).unwrap();

    let output = env.sync(&[]).await?;
    assert_no_secrets(&env, &[&app], &output)?;
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("readable by every user") && stderr.contains(&app.key.display().to_string()),
        "no warning about the world-readable key: {stderr}"
    );
    let written = env.group(&id).await?.expect("the group is written to AD");
    assert_eq!(written.members.len(), 1, "{written:?}");

    let requests = env.sim.token_requests();
    assert!(!requests.is_empty(), "no token was requested");
    for request in &requests {
        assert!(request.client_assertion && !request.client_secret, "{request:?}");
        assert_eq!(request.error_code, None, "{request:?}");
    }

    // A second run signs a new assertion (the simulator refuses a replayed one).
    env.sync(&[]).await?;
    assert!(env.sim.token_requests().len() > requests.len());
    assert!(env.sim.token_requests().iter().all(|r| r.error_code.is_none()));
    Ok(())
}

#[tokio::test]
async fn a_certificate_the_app_does_not_know_is_refused() -> anyhow::Result<()> {
    let keys = tempfile::tempdir()?;
    let registered = KeyPair::generate(keys.path(), "registered")?;
    let other = KeyPair::generate(keys.path(), "other")?;
    let env = certificate_env("cert-unknown", &registered, &other).await?;
    let line = failing_sync(&env, &[&registered, &other]).await?;
    assert!(line.contains("token request failed with HTTP 401: invalid_client: AADSTS700027"), "{line}");
    assert!(line.contains("The key was not found"), "{line}");
    let requests = env.sim.token_requests();
    assert!(
        requests.iter().all(|r| r.client_assertion && !r.client_secret && r.error_code == Some(700_027)),
        "{requests:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unreadable_key_file_is_named() -> anyhow::Result<()> {
    let keys = tempfile::tempdir()?;
    let app = KeyPair::generate(keys.path(), "app")?;
    let env = certificate_env("cert-key-missing", &app, &app).await?;
    let key_lines = app.key_lines()?;
    std::fs::remove_file(&app.key)?;
    let line = failing_sync(&env, &[]).await?;
    assert!(line.contains("client key") && line.contains(&app.key.display().to_string()), "{line}");
    assert!(line.contains("No such file"), "{line}");
    assert!(key_lines.iter().all(|l| !line.contains(l)));
    assert!(env.sim.token_requests().is_empty(), "a token was requested without a key");
    Ok(())
}

#[tokio::test]
async fn a_key_file_without_a_usable_key_is_named() -> anyhow::Result<()> {
    let keys = tempfile::tempdir()?;
    let app = KeyPair::generate(keys.path(), "app")?;
    let other = KeyPair::generate(keys.path(), "other")?;
    let env = certificate_env("cert-key-bad", &app, &app).await?;

    // The key of another certificate: caught before any request.
    std::fs::copy(&other.key, &app.key)?;
    let line = failing_sync(&env, &[&app, &other]).await?;
    let key = app.key.display().to_string();
    assert!(
        line.contains(&format!("tenant contoso: client_key_file {key}: this key does not belong to the certificate")),
        "{line}"
    );

    // Not a key at all.
    std::fs::write(&app.key, "this is not a key\n")?;
    let line = failing_sync(&env, &[&other]).await?;
    assert!(line.contains(&format!("client_key_file {key}: the file holds no PEM private key")), "{line}");
    assert!(env.sim.token_requests().is_empty(), "a token was requested with a bad key");
    Ok(())
}
