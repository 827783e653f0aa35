//! Where each delta round stands, and what the tenant's last cycles recorded about Graph: refused links,
//! resync requests, the writeback source, the Microsoft 365 default and the policy fingerprint.

use super::*;

/// Which delta query a cursor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Groups,
    Users,
}

impl Resource {
    pub(super) fn key(self) -> &'static [u8] {
        match self {
            Resource::Groups => b"c\0groups",
            Resource::Users => b"c\0users",
        }
    }

    /// Set when this resource must be read in a full round again.
    pub(super) fn resync_key(self) -> &'static [u8] {
        match self {
            Resource::Groups => b"c\0resync-groups",
            Resource::Users => b"c\0resync-users",
        }
    }

    /// How many cycles in a row Graph refused this resource's stored delta link.
    pub(super) fn refusals_key(self) -> &'static [u8] {
        match self {
            Resource::Groups => b"c\0refused-groups",
            Resource::Users => b"c\0refused-users",
        }
    }

    /// Set when the full round in progress met an entry without a readable id: any object it did not list
    /// may be that one, so none of them counts as gone.
    pub(super) fn unnamed_key(self) -> &'static [u8] {
        match self {
            Resource::Groups => b"c\0unnamed-groups",
            Resource::Users => b"c\0unnamed-users",
        }
    }
}

/// Where a delta round stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The next page to fetch, or, when `complete`, the deltaLink that starts the next round.
    pub link: String,
    /// Whether the round in progress lists every object (initial sync or resync).
    pub full: bool,
    /// Whether `link` is a deltaLink.
    pub complete: bool,
    /// The `$select` the round was started with (Graph keeps it in the links). `None` in cursors written
    /// before it was recorded.
    #[serde(default)]
    pub select: Option<String>,
}

impl TenantState {
    /// Where a delta round stands, if one was ever started.
    pub fn cursor(&self, resource: Resource) -> Result<Option<Cursor>, StateError> {
        self.get(resource.key())
    }

    /// Forgets a delta cursor so the next cycle starts a full round.
    pub fn drop_cursor(&self, resource: Resource) -> Result<(), StateError> {
        self.tree.remove(resource.key())?;
        Ok(())
    }

    /// Whether a delta round met an unreadable entry (or a change to a group held for one), so the objects
    /// must be read in a full round again. Taking the request clears it.
    pub fn take_resync_request(&self, resource: Resource) -> Result<bool, StateError> {
        Ok(self.tree.remove(resource.resync_key())?.is_some())
    }

    /// Records where `writebackConfiguration` is read from (`delta` or `batch`); returns whether that changed
    /// since the last call, which only a full round can make good.
    pub fn note_writeback_source(&self, source: &str) -> Result<bool, StateError> {
        let key: &[u8] = b"c\0writeback-source";
        let previous = self.tree.get(key)?;
        if previous.as_deref() == Some(source.as_bytes()) {
            // Quiet cycles write nothing.
            return Ok(false);
        }
        self.tree.insert(key, source.as_bytes())?;
        Ok(previous.is_some())
    }

    /// The tenant's `NewUnifiedGroupWritebackDefault` as last read from Graph.
    pub fn m365_default(&self) -> Result<Option<bool>, StateError> {
        self.get(b"c\0m365-default")
    }

    /// Records the tenant's `NewUnifiedGroupWritebackDefault`.
    pub fn set_m365_default(&self, value: bool) -> Result<(), StateError> {
        self.tree.insert(b"c\0m365-default", encode(&value))?;
        Ok(())
    }

    /// Counts one more cycle in which Graph refused the stored delta link, and returns the count in a row.
    pub fn count_link_refusal(&self, resource: Resource) -> Result<u32, StateError> {
        let previous = self
            .tree
            .get(resource.refusals_key())?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map_or(0, u32::from_be_bytes);
        let count = previous.saturating_add(1);
        self.tree.insert(resource.refusals_key(), &count.to_be_bytes())?;
        Ok(count)
    }

    /// Forgets the refusals of the stored delta link: it was read, or replaced by a full round.
    pub fn clear_link_refusals(&self, resource: Resource) -> Result<(), StateError> {
        self.tree.remove(resource.refusals_key())?;
        Ok(())
    }

    /// The fingerprint of the policy the groups were last planned with.
    pub fn policy_fingerprint(&self) -> Result<Option<String>, StateError> {
        Ok(self.tree.get(b"c\0policy")?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records the fingerprint of the policy in use.
    pub fn set_policy_fingerprint(&self, fingerprint: &str) -> Result<(), StateError> {
        self.tree.insert(b"c\0policy", fingerprint.as_bytes())?;
        Ok(())
    }
}
