//! The LDAP side of the writer lease: reading the lease object, creating it once, and the compare-and-swap
//! modify that takes, renews and releases it. The protocol itself lives in [`crate::lease`].

use std::collections::HashSet;

use ldap3::{LdapError, Mod, Scope};

use super::{Directory, DirectoryError};

/// The single-valued attribute that holds the lease value. A second add fails, so it also works as a CAS
/// on an empty attribute.
const VALUE_ATTRIBUTE: &str = "adminDisplayName";
/// A multi-valued attribute where each agent keeps its presence: `<agent id> <DC time>`.
const PRESENCE_ATTRIBUTE: &str = "description";
/// Marks the object as ours for an admin reading the OU.
const MARKER: &str = "writeback lease";

/// The lease object as read, with the DC's clock at the time of the read.
#[derive(Debug, Clone, Default)]
pub struct LeaseObject {
    /// The lease value; `None` when the object has none yet.
    pub value: Option<String>,
    /// Every agent's presence value.
    pub presence: Vec<String>,
    /// The DC's `currentTime`, in seconds since the Unix epoch.
    pub dc_time: u64,
}

impl Directory {
    /// Reads the lease object at `dn`, creating it when it is missing.
    pub async fn read_lease(&mut self, dn: &str) -> Result<LeaseObject, DirectoryError> {
        let dc_time = self.dc_time().await?;
        let entry =
            match self.search(dn, Scope::Base, "(objectClass=container)", &[VALUE_ATTRIBUTE, PRESENCE_ATTRIBUTE]).await
            {
                Ok(entries) => entries.into_iter().next(),
                Err(DirectoryError::Ldap { code: 32, .. }) => None,
                Err(e) => return Err(e),
            };
        let Some(entry) = entry else {
            self.create_lease_object(dn).await?;
            return Ok(LeaseObject { dc_time, ..Default::default() });
        };
        let values = |name: &str| {
            entry.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).unwrap_or_default()
        };
        Ok(LeaseObject {
            value: values(VALUE_ATTRIBUTE).into_iter().next(),
            presence: values(PRESENCE_ATTRIBUTE),
            dc_time,
        })
    }

    /// Creates the lease object; another agent creating it first is fine.
    async fn create_lease_object(&mut self, dn: &str) -> Result<(), DirectoryError> {
        let attrs = vec![("objectClass", HashSet::from(["container"])), ("adminDescription", HashSet::from([MARKER]))];
        match self.ldap.with_timeout(self.timeout).add(dn, attrs).await.and_then(|r| r.success()) {
            Ok(_) => Ok(()),
            Err(LdapError::LdapResult { result }) if result.rc == 68 => Ok(()),
            Err(e) => Err(DirectoryError::from_ldap(&format!("create lease object {dn}"), e)),
        }
    }

    /// Replaces the lease value `old` (none: the attribute is empty) with `new` in one modify. Returns
    /// `false` when the value was no longer `old`: another agent changed it first.
    pub async fn swap_lease(&mut self, dn: &str, old: Option<&str>, new: &str) -> Result<bool, DirectoryError> {
        self.swap(dn, VALUE_ATTRIBUTE, old, new).await
    }

    /// Replaces this agent's presence value `old` with `new`.
    pub async fn swap_presence(&mut self, dn: &str, old: Option<&str>, new: &str) -> Result<bool, DirectoryError> {
        self.swap(dn, PRESENCE_ATTRIBUTE, old, new).await
    }

    /// Removes one presence value (a long-gone agent's).
    pub async fn remove_presence(&mut self, dn: &str, value: &str) -> Result<(), DirectoryError> {
        let mods = vec![Mod::Delete(PRESENCE_ATTRIBUTE, HashSet::from([value]))];
        match self.ldap.with_timeout(self.timeout).modify(dn, mods).await.and_then(|r| r.success()) {
            Ok(_) => Ok(()),
            Err(LdapError::LdapResult { result }) if result.rc == 16 => Ok(()),
            Err(e) => Err(DirectoryError::from_ldap(&format!("lease modify on {dn}"), e)),
        }
    }

    async fn swap(&mut self, dn: &str, attribute: &str, old: Option<&str>, new: &str) -> Result<bool, DirectoryError> {
        let mut mods = Vec::new();
        if let Some(old) = old {
            mods.push(Mod::Delete(attribute, HashSet::from([old])));
        }
        mods.push(Mod::Add(attribute, HashSet::from([new])));
        match self.ldap.with_timeout(self.timeout).modify(dn, mods).await.and_then(|r| r.success()) {
            Ok(_) => Ok(true),
            // 16: the old value is gone; 20: a value is already there (an empty single-valued attribute
            // was filled by someone else).
            Err(LdapError::LdapResult { result }) if matches!(result.rc, 16 | 20) => Ok(false),
            Err(e) => Err(DirectoryError::from_ldap(&format!("lease modify on {dn}"), e)),
        }
    }

    /// The DC's clock (rootDSE `currentTime`), so that agents on different hosts compare one clock.
    pub async fn dc_time(&mut self) -> Result<u64, DirectoryError> {
        let entry = self.search_one("", Scope::Base, "(objectClass=*)", &["currentTime"]).await?;
        entry
            .and_then(|e| parse_generalized_time(e.attrs.get("currentTime")?.first()?))
            .ok_or(DirectoryError::RootDse("currentTime"))
    }
}

/// `20261122045101.0Z` → seconds since the Unix epoch.
fn parse_generalized_time(text: &str) -> Option<u64> {
    let digits = text.get(..14)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &digits[..4],
        &digits[4..6],
        &digits[6..8],
        &digits[8..10],
        &digits[10..12],
        &digits[12..14]
    );
    let time = humantime::parse_rfc3339(&rfc3339).ok()?;
    time.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generalized_time_is_read_in_utc() {
        assert_eq!(parse_generalized_time("20261122045101.0Z"), Some(1_795_323_061));
        assert_eq!(parse_generalized_time("19700101000000.0Z"), Some(0));
        assert_eq!(parse_generalized_time("2026112204"), None);
        assert_eq!(parse_generalized_time("2026x122045101.0Z"), None);
    }
}
