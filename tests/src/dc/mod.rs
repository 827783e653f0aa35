//! A real Samba AD DC on loopback, shared by every test of a run.
//!
//! Tests call [`TestDc::shared`]. The first caller of a run provisions a
//! throwaway domain (`CORP.EXAMPLE.TEST`) in the DC directory and starts samba
//! detached from the test process; later callers, in the same process or in
//! other nextest processes, find it running and only check that it answers.
//! A file lock in the directory keeps concurrent callers from provisioning
//! twice. Samba keeps running after the tests end; `testdc stop` stops it.
//!
//! The DC is tuned for tests, not for measuring AD:
//! - `ldb:nosync = true`: no fsync, about 12× faster writes. A benchmark run
//!   against this DC measures that mode and must say so.
//! - `server services = ldap` only: no Kerberos, RPC, SMB or DNS, so
//!   `samba-tool user create` does not work; use [`TestDc::create_user`].
//! - Listens on 127.0.0.1 only: 636 (LDAPS, with a certificate from our own
//!   CA carrying `subjectAltName=IP:127.0.0.1,DNS:localhost`), 389 (which
//!   refuses simple binds without TLS) and the global catalog ports 3268/3269.
//!
//! The directory defaults to `<workspace>/target/testdc`; set
//! `WRITEBACK_TESTDC_DIR` to use another. Its layout is described on `Layout`
//! in `layout.rs`.

mod client;
mod cmd;
mod layout;
mod provision;
mod server;
mod sid;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use client::{AdObject, GroupEntry, TestOu, all_values, binary_value, first_value};
pub use server::{ensure, restart, stop};
pub use sid::{guid_to_string, sid_to_string};

use layout::Layout;

/// Kerberos realm of the test domain.
pub const REALM: &str = "CORP.EXAMPLE.TEST";
/// NetBIOS name of the test domain.
pub const DOMAIN: &str = "CORP";
/// Naming context of the test domain.
pub const BASE_DN: &str = "DC=corp,DC=example,DC=test";
/// The built-in Administrator, whose password provisioning randomises.
pub const ADMIN_DN: &str = "CN=Administrator,CN=Users,DC=corp,DC=example,DC=test";
/// The only address samba listens on.
pub const LISTEN_IP: &str = "127.0.0.1";
/// LDAP over TLS.
pub const LDAPS_PORT: u16 = 636;
/// Plain LDAP; samba refuses simple binds here (no TLS).
pub const LDAP_PORT: u16 = 389;

/// groupType of a universal security group.
pub const UNIVERSAL_SECURITY: i32 = -2147483640;
/// groupType of a universal distribution group.
pub const UNIVERSAL_DISTRIBUTION: i32 = 8;
/// groupType of a global security group.
pub const GLOBAL_SECURITY: i32 = -2147483646;
/// groupType of a domain-local security group.
pub const DOMAIN_LOCAL_SECURITY: i32 = -2147483644;

/// Where to reach a running test DC; the contents of `DIR/info.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DcInfo {
    /// `ldaps://127.0.0.1:636`.
    pub url: String,
    /// `DC=corp,DC=example,DC=test`.
    pub base_dn: String,
    /// The Administrator's DN, for simple binds.
    pub admin_dn: String,
    /// File holding the Administrator's password (mode 0600).
    pub admin_password_file: PathBuf,
    /// PEM file of the CA that signed samba's certificate; trust only this.
    pub ca_file: PathBuf,
    /// samba's pid.
    pub pid: u32,
    /// The DC directory.
    pub dir: PathBuf,
}

impl DcInfo {
    fn new(layout: &Layout, pid: u32) -> DcInfo {
        DcInfo {
            url: format!("ldaps://{LISTEN_IP}:{LDAPS_PORT}"),
            base_dn: BASE_DN.to_owned(),
            admin_dn: ADMIN_DN.to_owned(),
            admin_password_file: layout.password_file(),
            ca_file: layout.ca_file(),
            pid,
            dir: layout.dir().to_owned(),
        }
    }

    /// Reads `dir/info.json` as the last start wrote it. It says nothing about
    /// whether samba still runs; [`ensure`] does.
    pub fn load(dir: &Path) -> Result<DcInfo> {
        let path = dir.join("info.json");
        let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// `$WRITEBACK_TESTDC_DIR`, or `<workspace>/target/testdc`.
pub fn default_dir() -> PathBuf {
    env::var_os("WRITEBACK_TESTDC_DIR").map_or_else(
        || {
            let tests_crate = Path::new(env!("CARGO_MANIFEST_DIR"));
            let workspace = tests_crate.parent().unwrap_or(tests_crate);
            workspace.join("target").join("testdc")
        },
        PathBuf::from,
    )
}

/// A running test DC and the Administrator's password. The LDAP helpers are
/// in `client.rs`; each opens its own connection, so a `TestDc` can be used
/// from any runtime and any test.
#[derive(Debug, Clone)]
pub struct TestDc {
    info: DcInfo,
    admin_password: String,
}

impl TestDc {
    /// The DC shared by this test run, started if it is not running yet.
    /// Cheap when it runs: a lock, a pid check and one LDAPS bind.
    pub fn shared() -> Result<TestDc> {
        TestDc::ensure_in(&default_dir())
    }

    /// Like [`TestDc::shared`], for the DC in `dir`.
    pub fn ensure_in(dir: &Path) -> Result<TestDc> {
        TestDc::from_info(ensure(dir)?)
    }

    /// Wraps an already running DC described by `info`.
    pub fn from_info(info: DcInfo) -> Result<TestDc> {
        let path = &info.admin_password_file;
        let password = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(TestDc { admin_password: password.trim_end().to_owned(), info })
    }

    /// Where the DC is and how to trust it.
    pub fn info(&self) -> &DcInfo {
        &self.info
    }

    /// The DC's certificate and key files (PEM), for a test server that presents the DC's identity.
    pub fn tls_identity(&self) -> Result<(PathBuf, PathBuf)> {
        Ok(Layout::create(&self.info.dir)?.tls_identity())
    }

    /// The Administrator's password.
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// Stops and starts samba with its data intact, like a DC reboot. Every
    /// test using the DC at that moment sees its connections drop, and a
    /// second DC cannot run beside it (the ports are fixed), so run tests that
    /// restart it on their own, e.g. in a separate nextest invocation. Blocks
    /// for a second or two; fine inside a tokio test.
    pub fn restart(&mut self) -> Result<()> {
        self.info = restart(&self.info.dir)?;
        Ok(())
    }
}
