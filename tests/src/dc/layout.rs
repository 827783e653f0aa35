//! Where everything of one test DC lives inside its directory, and the lock
//! that serialises the processes sharing it.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Samba creates Unix sockets under the directory (`dc/private/ldap_priv/ldapi`,
/// `dc/msg.sock/<pid>`), and a socket path may not exceed 108 bytes, so a
/// deeper directory fails in samba with an obscure error. This leaves room.
const MAX_DIR_LEN: usize = 72;

/// Paths inside one test-DC directory.
///
/// ```text
/// DIR/lock            flock held while ensuring / stopping / restarting
/// DIR/info.json       written once LDAPS answers; removed by stop
/// DIR/admin.password  Administrator's random password (0600)
/// DIR/ca.pem          the test CA that signed samba's certificate
/// DIR/samba.log       samba's stdout/stderr, appended across restarts
/// DIR/tls/            server key + certificate, openssl config
/// DIR/dc/             samba-tool's --targetdir (etc/smb.conf, private/, …)
/// ```
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    dir: PathBuf,
}

/// Held for as long as the caller owns the DC directory; the kernel drops the
/// flock when the file is closed, even if the process dies.
pub(crate) struct DirLock {
    _file: File,
}

impl Layout {
    /// Creates the directory if needed and makes its path absolute, because
    /// smb.conf and info.json must not depend on the current directory.
    pub(crate) fn create(dir: &Path) -> Result<Layout> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
        if dir.as_os_str().len() > MAX_DIR_LEN {
            bail!(
                "test DC directory {} is longer than {MAX_DIR_LEN} bytes; samba's Unix socket \
                 paths under it would be too long. Set WRITEBACK_TESTDC_DIR to a shorter path.",
                dir.display()
            );
        }
        Ok(Layout { dir })
    }

    /// Blocks until no other process is ensuring, stopping or restarting this DC.
    pub(crate) fn lock(&self) -> Result<DirLock> {
        let path = self.dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.lock().with_context(|| format!("locking {}", path.display()))?;
        Ok(DirLock { _file: file })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn info_file(&self) -> PathBuf {
        self.dir.join("info.json")
    }

    pub(crate) fn password_file(&self) -> PathBuf {
        self.dir.join("admin.password")
    }

    pub(crate) fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub(crate) fn samba_log(&self) -> PathBuf {
        self.dir.join("samba.log")
    }

    pub(crate) fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// The DC's certificate (PEM) and its private key.
    pub(crate) fn tls_identity(&self) -> (PathBuf, PathBuf) {
        (self.tls_dir().join("server.pem"), self.tls_dir().join("server.key"))
    }

    /// samba-tool's `--targetdir`.
    pub(crate) fn target(&self) -> PathBuf {
        self.dir.join("dc")
    }

    pub(crate) fn smb_conf(&self) -> PathBuf {
        self.target().join("etc").join("smb.conf")
    }

    /// Samba's default is /run/samba, shared with any system samba.
    pub(crate) fn pid_dir(&self) -> PathBuf {
        self.target().join("run")
    }

    pub(crate) fn pid_file(&self) -> PathBuf {
        self.pid_dir().join("samba.pid")
    }

    /// Written last by provisioning, so a directory left by a provision that
    /// crashed half-way is recognised and redone.
    pub(crate) fn provisioned_marker(&self) -> PathBuf {
        self.target().join("provisioned")
    }

    pub(crate) fn is_provisioned(&self) -> bool {
        self.provisioned_marker().exists()
    }
}
