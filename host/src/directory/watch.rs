//! LDAP change notification (`LDAP_SERVER_NOTIFICATION_OID`): the DC tells of every change under a base as it
//! commits, which wakes the drift watch at once instead of at its next look.

use std::sync::Arc;

use ldap3::controls::RawControl;
use ldap3::{Ldap, Scope};

use super::{Directory, DirectoryError};

/// Whether a DC refused a notification search, rather than failed.
const REFUSED: [u32; 3] = [12, 50, 53];

impl Directory {
    /// Wakes `notify` at each change the DC reports directly under `bases`: one level, all Windows AD allows.
    /// Samba allows a subtree too, but while one is open every write of the DC takes about twelve times as
    /// long (300 group creates: 1.1 s, and 13.2 s beside one subtree notification search anywhere in the
    /// domain; 1.6 s beside a one-level one). Returns when the connection ends; `Ok(false)` when the DC
    /// refuses change notification.
    pub async fn notify_changes(
        &mut self,
        bases: &[String],
        notify: Arc<tokio::sync::Notify>,
    ) -> Result<bool, DirectoryError> {
        let mut searches = tokio::task::JoinSet::new();
        for base in bases {
            searches.spawn(watch_base(self.ldap.clone(), base.clone(), Arc::clone(&notify)));
        }
        let mut offered = false;
        while let Some(ended) = searches.join_next().await {
            match ended {
                Ok(Ok(watched)) => offered |= watched,
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    let cause = format!("a change notification search ended: {e}");
                    return Err(DirectoryError::Connect { url: bases.join("; "), cause });
                }
            }
        }
        Ok(offered)
    }
}

/// One base's notification search; `Ok(false)` when the DC refuses it.
async fn watch_base(mut ldap: Ldap, base: String, notify: Arc<tokio::sync::Notify>) -> Result<bool, DirectoryError> {
    let err = |e| DirectoryError::from_ldap("search", e);
    let control = RawControl { ctype: "1.2.840.113556.1.4.528".into(), crit: true, val: None };
    let mut stream = ldap
        .with_controls(control)
        .streaming_search(&base, Scope::OneLevel, "(objectClass=*)", vec!["1.1"])
        .await
        .map_err(err)?;
    let mut told = false;
    while stream.next().await.map_err(err)?.is_some() {
        told = true;
        notify.notify_one();
    }
    let done = stream.finish().await;
    if !told && REFUSED.contains(&done.rc) {
        return Ok(false);
    }
    done.success().map_err(err)?;
    Ok(true)
}
