//! Provisioning a throwaway domain: samba-tool into `DIR/dc`, a test CA and
//! server certificate made with openssl, and the smb.conf edits that turn the
//! result into a loopback-only LDAP server.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use rand::Rng;
use rand::distr::Alphanumeric;

use super::cmd;
use super::layout::Layout;
use super::{DOMAIN, LISTEN_IP, REALM};

/// Fixed so provisioning does not depend on the machine's hostname, which may
/// be longer than the 15 characters a NetBIOS name allows.
const HOST_NAME: &str = "testdc";

/// OpenSSL config for the test CA and the server certificate. Our own file, so
/// the result does not depend on the distribution's openssl.cnf.
/// rustls insists on a subjectAltName; Samba's self-made certificate names the
/// host in the CN only, which is why we make our own.
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = writeback test CA

[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// Provisions a new domain in `layout`, replacing whatever was there.
pub(crate) fn provision(layout: &Layout) -> Result<()> {
    let started = Instant::now();
    // A half-finished provision from a crashed run cannot be resumed.
    remove_dir_if_exists(&layout.target())?;
    remove_dir_if_exists(&layout.tls_dir())?;

    let password = generate_password();
    write_private(&layout.password_file(), &password)?;
    make_certificates(layout)?;
    samba_tool_provision(layout, &password)?;
    apply_test_settings(layout)?;
    fs::create_dir_all(layout.pid_dir()).with_context(|| format!("creating {}", layout.pid_dir().display()))?;
    fs::write(layout.provisioned_marker(), "")
        .with_context(|| format!("writing {}", layout.provisioned_marker().display()))?;

    eprintln!(
        "testdc: provisioned {REALM} in {} in {:.1}s",
        layout.target().display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Meets AD's complexity rule (three of upper, lower, digit, symbol) through
/// the fixed prefix, whatever the random part turns out to be.
fn generate_password() -> String {
    let random: String = rand::rng().sample_iter(Alphanumeric).take(24).map(char::from).collect();
    format!("Tdc-9{random}")
}

fn make_certificates(layout: &Layout) -> Result<()> {
    let tls = layout.tls_dir();
    fs::create_dir_all(&tls).with_context(|| format!("creating {}", tls.display()))?;
    fs::write(tls.join("openssl.cnf"), OPENSSL_CNF).context("writing openssl.cnf")?;

    let serial = format!("0x{:016x}", rand::random::<u64>() >> 1);
    // Run inside DIR/tls with relative paths (the CA goes to DIR/ca.pem), so
    // each step reads as one line and a space in DIR cannot split an argument.
    // P-256 keys: generated instantly, and GnuTLS (samba) and rustls take them.
    let steps = [
        "req -x509 -config openssl.cnf -extensions ca_ext -newkey ec \
         -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ../ca.pem -days 3650"
            .to_owned(),
        "req -new -config openssl.cnf -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
         -keyout server.key -out server.csr -subj /CN=localhost"
            .to_owned(),
        format!(
            "x509 -req -in server.csr -CA ../ca.pem -CAkey ca.key -set_serial {serial} \
             -days 3650 -extfile openssl.cnf -extensions server_ext -out server.pem"
        ),
    ];
    for step in &steps {
        let args: Vec<&str> = step.split_whitespace().collect();
        cmd::run("openssl", &args, &tls)?;
    }
    // Nothing needs to sign again, and a CA key lying around would let
    // anything that reads the directory mint certificates the tests trust.
    fs::remove_file(tls.join("ca.key")).context("removing ca.key")?;
    fs::remove_file(tls.join("server.csr")).context("removing server.csr")?;
    // Samba refuses to load a key file that others can read.
    fs::set_permissions(tls.join("server.key"), fs::Permissions::from_mode(0o600)).context("chmod 600 server.key")?;
    Ok(())
}

fn samba_tool_provision(layout: &Layout, password: &str) -> Result<()> {
    let target = layout.target();
    let args = [
        "domain".to_owned(),
        "provision".to_owned(),
        format!("--targetdir={}", target.display()),
        format!("--realm={REALM}"),
        format!("--domain={DOMAIN}"),
        "--server-role=dc".to_owned(),
        "--dns-backend=NONE".to_owned(),
        format!("--host-name={HOST_NAME}"),
        format!("--adminpass={password}"),
        format!("--option=interfaces = {LISTEN_IP}"),
        "--option=bind interfaces only = yes".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cmd::run("samba-tool", &args, layout.dir())
}

/// Rewrites the generated smb.conf with [`test_settings`].
fn apply_test_settings(layout: &Layout) -> Result<()> {
    let path = layout.smb_conf();
    let generated = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let edited = override_globals(&generated, &test_settings(layout));
    fs::write(&path, edited).with_context(|| format!("writing {}", path.display()))
}

/// The `[global]` settings the harness needs on top of what provisioning wrote.
fn test_settings(layout: &Layout) -> Vec<(&'static str, String)> {
    let (cert, key) = layout.tls_identity();
    vec![
        // LDAP only: the default list also binds 88/135/445/…, which fails
        // when a system samba or anything else holds those ports.
        ("server services", "ldap".to_owned()),
        // Tests only: skip fsync. About 400 adds/s instead of about 32 on
        // this machine kind; benchmarks must say which mode they ran in.
        ("ldb:nosync", "true".to_owned()),
        // "lo" would also bind ::1; the harness speaks 127.0.0.1 only.
        ("interfaces", LISTEN_IP.to_owned()),
        ("bind interfaces only", "yes".to_owned()),
        ("tls enabled", "yes".to_owned()),
        ("tls keyfile", key.display().to_string()),
        ("tls certfile", cert.display().to_string()),
        ("tls cafile", layout.ca_file().display().to_string()),
        // --targetdir moves lock, state, cache and private dirs but not these
        // two, which would otherwise be shared with a system samba.
        ("pid directory", layout.pid_dir().display().to_string()),
        ("log file", layout.target().join("log.%m").display().to_string()),
    ]
}

/// Returns `conf` with every `[global]` line naming one of `settings` removed
/// and `settings` inserted at the top of `[global]`. Keys compare the way
/// samba does: case-insensitive, spaces ignored.
fn override_globals(conf: &str, settings: &[(&str, String)]) -> String {
    let overridden: Vec<String> = settings.iter().map(|(key, _)| normalize_key(key)).collect();
    let mut lines: Vec<String> = Vec::new();
    let mut in_global = false;
    for line in conf.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_global = trimmed.eq_ignore_ascii_case("[global]");
            lines.push(line.to_owned());
            if in_global {
                lines.extend(settings.iter().map(|(key, value)| format!("\t{key} = {value}")));
            }
            continue;
        }
        let key = trimmed.split_once('=').map(|(key, _)| normalize_key(key));
        if !(in_global && key.is_some_and(|key| overridden.contains(&key))) {
            lines.push(line.to_owned());
        }
    }
    lines.join("\n") + "\n"
}

fn normalize_key(key: &str) -> String {
    key.chars().filter(|c| !c.is_whitespace()).flat_map(char::to_lowercase).collect()
}

/// Writes a secret readable by the owner only, from the moment it exists.
fn write_private(path: &Path, contents: &str) -> Result<()> {
    let _ = fs::remove_file(path);
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

fn remove_dir_if_exists(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_generated_globals_only() {
        let generated = "# Global parameters\n[global]\n\tserver services = s3fs, rpc, ldap\n\
                         \tServer  Services=kdc\n\trealm = CORP.EXAMPLE.TEST\n\n\
                         [sysvol]\n\tserver services = untouched\n";
        let settings = vec![("server services", "ldap".to_owned())];
        assert_eq!(
            override_globals(generated, &settings),
            "# Global parameters\n[global]\n\tserver services = ldap\n\
             \trealm = CORP.EXAMPLE.TEST\n\n[sysvol]\n\tserver services = untouched\n"
        );
    }

    #[test]
    fn generated_password_is_complex() {
        let password = generate_password();
        assert!(password.len() >= 20);
        assert!(password.chars().any(|c| c.is_ascii_uppercase()));
        assert!(password.chars().any(|c| c.is_ascii_lowercase()));
        assert!(password.chars().any(|c| c.is_ascii_digit()));
        assert_ne!(password, generate_password());
    }
}
