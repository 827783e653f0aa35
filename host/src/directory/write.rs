//! Writes: applying one planned operation.
//!
//! Existing groups are addressed as `<GUID=…>`, so an operation still finds its group after a rename or
//! move earlier in the same apply. Member changes add and delete exactly the planned values. Samba fails a
//! whole modify when one value is already present (or already gone) even under the permissive-modify
//! control, so on exactly those results the values are retried one by one and those results count as done.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ldap3::{Ldap, LdapError, LdapResult, Mod, Scope, SearchEntry, ldap_escape};

use super::read::{FILTER_CHUNK, parse_extended_dn};
use super::{Directory, DirectoryError, GoOn, Sent, describe_rc, innermost};
use crate::plan::{AttributeChange, GroupRef, MemberValue, Op};

/// At most this many writes are in flight at once on the connection. `ldapadd` waits for each answer; keeping a
/// few in flight hides the round trip, which matters most for a DC in another site.
const WRITES_IN_FLIGHT: usize = 8;

/// How many member values one modify carries.
const MEMBER_CHUNK: usize = 500;

/// How long to wait before sending a write again after the DC answered busy (51) or unavailable (52).
/// Those results mean the DC did not perform the request, so sending it again is safe. After the last
/// delay the error ends the cycle, and a later cycle starts over from the directory's state.
const BUSY_BACKOFF: [Duration; 3] = [Duration::from_millis(250), Duration::from_secs(1), Duration::from_secs(3)];

/// What a successful operation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A group was created; its GUID, SID and DN as the DC stored them.
    Created { guid: String, sid: Option<String>, dn: String },
    /// A group was renamed or moved to this DN.
    Moved { dn: String },
    /// Anything else.
    Done,
}

/// Why one operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The name (CN or sAMAccountName) belongs to an object that is not ours.
    #[error("{message} (LDAP result {code}): the name is taken by an object that writeback does not manage")]
    Conflict { code: u32, message: String },
    /// The group to take over gained an adminDescription after it was read, so it was not taken over.
    #[error(
        "the DC refused the take-over ({message}, LDAP result {code}), most likely because its adminDescription was set after it was read; it was not taken over: find out what set it"
    )]
    AnchorTaken { code: u32, message: String },
    /// The DC refused this one operation.
    #[error("{message} (LDAP result {code})")]
    Refused { code: u32, message: String },
    /// The connection or the DC failed; the cycle should stop and retry later.
    #[error("{0}")]
    Directory(#[from] DirectoryError),
}

impl ApplyError {
    fn from_ldap(operation: &str, error: LdapError) -> Self {
        match error {
            LdapError::LdapResult { result } if matches!(result.rc, 51 | 52) => {
                ApplyError::Directory(DirectoryError::Ldap {
                    operation: operation.into(),
                    code: result.rc,
                    message: describe_rc(result.rc, &result.text),
                })
            }
            LdapError::LdapResult { result } => {
                ApplyError::Refused { code: result.rc, message: describe_rc(result.rc, &result.text) }
            }
            other => ApplyError::Directory(DirectoryError::Transport {
                operation: operation.into(),
                cause: innermost(&other),
            }),
        }
    }

    fn conflict_on(self, codes: &[u32]) -> Self {
        match self {
            ApplyError::Refused { code, message } if codes.contains(&code) => ApplyError::Conflict { code, message },
            other => other,
        }
    }
}

/// The first value of attribute `name` among `attributes`.
fn single_value<'a>(attributes: &'a [(String, Vec<String>)], name: &str) -> Option<&'a str> {
    attributes.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| v.first()).map(String::as_str)
}

/// What the DC stored for the group created at `dn` with sAMAccountName `name` and adminDescription `anchor`,
/// among `entries`: only an entry at that DN with both values counts. Another DC of the domain may have let a
/// copy with the same name and anchor in elsewhere, and that is not the group this agent created.
fn created_entry(entries: &[SearchEntry], dn: &str, name: &str, anchor: Option<&str>) -> Option<Applied> {
    let has = |entry: &SearchEntry, attr: &str, value: &str| {
        entry.attrs.get(attr).and_then(|v| v.first()).is_some_and(|found| found.eq_ignore_ascii_case(value))
    };
    entries.iter().find_map(|entry| {
        let ext = parse_extended_dn(&entry.dn);
        let ours = crate::dn::same(&ext.dn, dn)
            && has(entry, "sAMAccountName", name)
            && anchor.is_none_or(|anchor| has(entry, "adminDescription", anchor));
        Some(Applied::Created { guid: ext.guid.filter(|_| ours)?, sid: ext.sid, dn: ext.dn })
    })
}

/// A failed read-back: the group's failure when the DC answered, the whole directory's when the connection
/// failed or the DC is busy.
fn read_back_failed(dn: &str, error: DirectoryError) -> ApplyError {
    match error {
        DirectoryError::Ldap { code, message, .. } if !matches!(code, 51 | 52) => {
            ApplyError::Refused { code, message: format!("the group written at {dn} cannot be read back: {message}") }
        }
        other => ApplyError::Directory(other),
    }
}

fn guid_dn(guid: &str) -> String {
    format!("<GUID={guid}>")
}

fn set(values: &[String]) -> HashSet<&str> {
    values.iter().map(String::as_str).collect()
}

impl Directory {
    /// Applies one operation. `created` maps cloud ids of groups created earlier in this apply to their DNs.
    pub async fn apply(&self, op: &Op, created: &HashMap<String, String>) -> Result<Applied, ApplyError> {
        match op {
            Op::Create { dn, attributes, .. } => self.create(dn, attributes).await,
            Op::Rename { guid, dn, new_cn, new_parent, .. } => {
                // Samba answers "no such object" to a modrdn of a <GUID=…> DN without a new superior,
                // so the current parent is always named.
                let parent = new_parent.clone().or_else(|| crate::dn::parent(dn)).unwrap_or_default();
                self.rename(guid, new_cn, &parent).await
            }
            Op::Modify { guid, changes, .. } => self.modify_attributes(guid, changes, false).await,
            Op::TakeOver { guid, changes, .. } => {
                self.modify_attributes(guid, changes, true).await.map_err(|e| match e {
                    // Adding a value to the single-valued adminDescription fails when it has one.
                    ApplyError::Refused { code: code @ (19 | 20), message } => {
                        ApplyError::AnchorTaken { code, message }
                    }
                    other => other,
                })
            }
            Op::AddMembers { group_id, target, values } => {
                let target = match target {
                    GroupRef::Existing { guid, .. } => guid_dn(guid),
                    GroupRef::New => created.get(group_id).cloned().ok_or_else(|| ApplyError::Refused {
                        code: 0,
                        message: "the group was not created, so its members cannot be added".into(),
                    })?,
                };
                let values: Vec<String> = values
                    .iter()
                    .filter_map(|v| match v {
                        MemberValue::Dn(dn) => Some(dn.clone()),
                        MemberValue::NewGroup(id) => created.get(id).cloned(),
                    })
                    .collect();
                self.change_members(&target, &values, true).await
            }
            Op::RemoveMembers { guid, values, .. } => self.change_members(&guid_dn(guid), values, false).await,
            Op::Delete { guid, .. } => {
                let (target, timeout) = (guid_dn(guid), self.timeout);
                match self.send("delete", &target, async |ldap| ldap.with_timeout(timeout).delete(&target).await).await
                {
                    Ok(()) | Err(ApplyError::Refused { code: 32, .. }) => Ok(Applied::Done),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Applies operations that do not depend on each other, up to [`WRITES_IN_FLIGHT`] at once over the one
    /// connection (LDAP answers each by its message id); the results come in the order of `ops`. Once `go_on`
    /// says no, or one fails for the whole directory, the operations not started yet are not sent (`None`): a
    /// DC that timed out or went away is not handed the rest of the batch.
    pub async fn apply_all(&self, ops: &[&Op], created: &HashMap<String, String>, go_on: GoOn<'_>) -> Vec<Sent> {
        use futures::stream::{self, StreamExt};
        use std::sync::atomic::{AtomicBool, Ordering};
        let broken = AtomicBool::new(false);
        let send = async |op: &Op| {
            if broken.load(Ordering::SeqCst) || !go_on() {
                return None;
            }
            let result = match op {
                // Read back below, together.
                Op::Create { dn, attributes, .. } => self.add(dn, attributes).await.map(|()| Applied::Done),
                _ => self.apply(op, created).await,
            };
            if matches!(result, Err(ApplyError::Directory(_))) {
                broken.store(true, Ordering::SeqCst);
            }
            Some(result)
        };
        let mut results: Vec<Sent> = stream::iter(ops).map(|&op| send(op)).buffered(WRITES_IN_FLIGHT).collect().await;
        self.read_back_created(ops, &mut results).await;
        results
    }

    async fn create(&self, dn: &str, attributes: &[(String, Vec<String>)]) -> Result<Applied, ApplyError> {
        self.add(dn, attributes).await?;
        self.read_back(dn).await
    }

    async fn add(&self, dn: &str, attributes: &[(String, Vec<String>)]) -> Result<(), ApplyError> {
        let attrs: Vec<(&str, HashSet<&str>)> = attributes.iter().map(|(k, v)| (k.as_str(), set(v))).collect();
        let timeout = self.timeout;
        self.send("add", dn, async |ldap| ldap.with_timeout(timeout).add(dn, attrs.clone()).await)
            .await
            .map_err(|e| e.conflict_on(&[68]))
    }

    /// Reads the GUID, SID and DN of each group that `ops` created (their results are `Ok`) into its result:
    /// one search per [`FILTER_CHUNK`] groups, by sAMAccountName, which the domain indexes. A search for each
    /// group would cost the DC about a tenth of the create itself. A group not found at its DN with the name and
    /// anchor it was created with is read at its DN alone, as before. They are read even after another write
    /// failed for the whole connection: a busy DC or a lost lease still answers reads, and a dead connection
    /// fails them at once.
    async fn read_back_created(&self, ops: &[&Op], results: &mut [Sent]) {
        let mut by_name: Vec<(usize, &str, &str)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let (Op::Create { dn, attributes, .. }, Some(Ok(_))) = (op, &results[i]) else { continue };
            match single_value(attributes, "sAMAccountName") {
                Some(name) => by_name.push((i, dn, name)),
                None => results[i] = Some(self.read_back(dn).await),
            }
        }
        for chunk in by_name.chunks(FILTER_CHUNK) {
            let terms: String =
                chunk.iter().map(|(_, _, name)| format!("(sAMAccountName={})", ldap_escape(*name))).collect();
            let filter = format!("(&(objectClass=group)(|{terms}))");
            let found = self.unique_search(&filter, &["sAMAccountName", "adminDescription"]).await;
            for &(i, dn, name) in chunk {
                let Op::Create { attributes, .. } = ops[i] else { continue };
                let anchor = single_value(attributes, "adminDescription");
                results[i] = Some(match &found {
                    Ok(entries) => match created_entry(entries, dn, name, anchor) {
                        Some(created) => Ok(created),
                        None => self.read_back(dn).await,
                    },
                    Err(e) => Err(read_back_failed(dn, e.clone())),
                });
            }
        }
    }

    /// Reads a just-written group's GUID, SID and DN as the DC stored them.
    async fn read_back(&self, dn: &str) -> Result<Applied, ApplyError> {
        let control = super::read::extended_dn_control();
        let (entries, _) = self
            .ldap
            .clone()
            .with_controls(control)
            .with_timeout(self.timeout)
            .search(dn, Scope::Base, "(objectClass=group)", vec!["1.1"])
            .await
            .and_then(|r| r.success())
            .map_err(|e| ApplyError::from_ldap("read back", e))?;
        let entry = entries.into_iter().next().map(SearchEntry::construct).ok_or_else(|| ApplyError::Refused {
            code: 32,
            message: format!("the group written at {dn} cannot be read back"),
        })?;
        let ext = parse_extended_dn(&entry.dn);
        Ok(Applied::Created { guid: ext.guid.unwrap_or_default(), sid: ext.sid, dn: ext.dn })
    }

    async fn rename(&self, guid: &str, new_cn: &str, new_parent: &str) -> Result<Applied, ApplyError> {
        let rdn = format!("CN={}", crate::dn::escape_value(new_cn));
        let (target, timeout) = (guid_dn(guid), self.timeout);
        self.send("rename", &target, async |ldap| {
            ldap.with_timeout(timeout).modifydn(&target, &rdn, true, Some(new_parent)).await
        })
        .await
        .map_err(|e| e.conflict_on(&[68]))?;
        match self.read_back(&guid_dn(guid)).await? {
            Applied::Created { dn, .. } => Ok(Applied::Moved { dn }),
            other => Ok(other),
        }
    }

    /// Changes attributes. On a take-over the anchor is added, not replaced, so that the write fails if anything
    /// gave the group an adminDescription since it was read.
    async fn modify_attributes(
        &self,
        guid: &str,
        changes: &[AttributeChange],
        take_over: bool,
    ) -> Result<Applied, ApplyError> {
        let mods: Vec<Mod<&str>> = changes
            .iter()
            .map(|change| match change {
                AttributeChange::Replace(name, values)
                    if take_over && name.eq_ignore_ascii_case("adminDescription") =>
                {
                    Mod::Add(name.as_str(), set(values))
                }
                AttributeChange::Replace(name, values) => Mod::Replace(name.as_str(), set(values)),
                AttributeChange::Clear(name) => Mod::Replace(name.as_str(), HashSet::new()),
            })
            .collect();
        // A take-over of a group that carries its anchor already and needs nothing else writes nothing.
        if mods.is_empty() {
            return Ok(Applied::Done);
        }
        let (target, timeout) = (guid_dn(guid), self.timeout);
        self.send("modify", &target, async |ldap| ldap.with_timeout(timeout).modify(&target, mods.clone()).await)
            .await
            .map_err(|e| e.conflict_on(&[68]))?;
        Ok(Applied::Done)
    }

    async fn change_members(&self, target: &str, values: &[String], add: bool) -> Result<Applied, ApplyError> {
        for chunk in values.chunks(MEMBER_CHUNK) {
            match self.member_modify(target, chunk, add).await {
                Err(ApplyError::Refused { code, .. }) if already_done(code, add) && chunk.len() > 1 => {
                    for value in chunk {
                        match self.member_modify(target, std::slice::from_ref(value), add).await {
                            Err(ApplyError::Refused { code, .. }) if already_done(code, add) => {}
                            other => {
                                other?;
                            }
                        }
                    }
                }
                Err(ApplyError::Refused { code, .. }) if already_done(code, add) => {}
                other => {
                    other?;
                }
            }
        }
        Ok(Applied::Done)
    }

    async fn member_modify(&self, target: &str, values: &[String], add: bool) -> Result<Applied, ApplyError> {
        let values: HashSet<&str> = set(values);
        let change = if add { Mod::Add("member", values) } else { Mod::Delete("member", values) };
        let (operation, timeout) = (if add { "add members" } else { "remove members" }, self.timeout);
        self.send(operation, target, async |ldap| {
            ldap.with_timeout(timeout).modify(target, vec![change.clone()]).await
        })
        .await?;
        Ok(Applied::Done)
    }

    /// Sends one write to `target` once the lease fence allows it, and sends it again, a bounded number of
    /// times, while the DC answers busy or unavailable.
    async fn send(
        &self,
        operation: &str,
        target: &str,
        mut request: impl AsyncFnMut(&mut Ldap) -> ldap3::result::Result<LdapResult>,
    ) -> Result<(), ApplyError> {
        let mut delays = BUSY_BACKOFF.iter();
        loop {
            // Held across the check and the send, so that a release waits for a write already checked.
            let permit = self.write_permit().await;
            self.check_fence()?;
            let sent = request(&mut self.ldap.clone()).await.and_then(|r| r.success());
            drop(permit);
            match sent {
                Ok(_) => return Ok(()),
                Err(LdapError::LdapResult { result }) if matches!(result.rc, 51 | 52) => {
                    let Some(delay) = delays.next() else {
                        return Err(ApplyError::from_ldap(operation, LdapError::LdapResult { result }));
                    };
                    let cause = describe_rc(result.rc, &result.text);
                    tracing::warn!(
                        "LDAP {operation} of {target}: the DC answered {cause}; sending it again in {delay:?}"
                    );
                    tokio::time::sleep(*delay).await;
                }
                Err(e) => return Err(ApplyError::from_ldap(operation, e)),
            }
        }
    }
}

/// The results Samba gives for adding a present value (20, 68) or deleting an absent one (16, 53).
fn already_done(code: u32, add: bool) -> bool {
    if add { matches!(code, 20 | 68) } else { matches!(code, 16 | 53) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(rc: u32) -> ApplyError {
        let result = LdapResult { rc, matched: String::new(), text: "server text".into(), refs: vec![], ctrls: vec![] };
        ApplyError::from_ldap("add", LdapError::LdapResult { result }).conflict_on(&[68])
    }

    #[test]
    fn only_entry_already_exists_is_a_name_conflict() {
        let exists = refused(68);
        assert!(matches!(exists, ApplyError::Conflict { code: 68, .. }), "{exists}");
        let constraint = refused(19);
        assert!(matches!(constraint, ApplyError::Refused { code: 19, .. }), "{constraint}");
        let text = constraint.to_string();
        assert!(text.contains("constraint violation") && !text.contains("name is taken"), "{text}");
    }

    fn entry(name: &str, parent: &str, anchor: Option<&str>) -> SearchEntry {
        let mut attrs = HashMap::from([("sAMAccountName".to_string(), vec![name.to_string()])]);
        if let Some(anchor) = anchor {
            attrs.insert("adminDescription".into(), vec![anchor.into()]);
        }
        let guid = if parent == "DC=corp" {
            "0f0e0d0c-0b0a-0908-0706-050403020100"
        } else {
            "aaaaaaaa-0000-4000-8000-0000000000aa"
        };
        let dn = format!("<GUID={guid}>;<SID=S-1-5-21-1-2-3-1104>;CN={name},{parent}");
        SearchEntry { dn, attrs, bin_attrs: HashMap::new() }
    }

    #[test]
    fn a_group_read_back_by_name_counts_only_at_its_dn_with_the_anchor_it_was_created_with() {
        // A copy with the same name and anchor in another OU (let in by another DC) comes first.
        let copy = entry("G_Sales", "OU=Elsewhere,DC=corp", Some("Group_abc"));
        let found =
            [copy, entry("G_other", "DC=corp", Some("Group_1")), entry("G_Sales", "DC=corp", Some("group_ABC"))];
        let created = created_entry(&found, "cn=g_sales,dc=corp", "g_sales", Some("Group_abc"));
        let Some(Applied::Created { guid, sid, dn }) = created else { panic!("{created:?}") };
        assert_eq!(guid, "0f0e0d0c-0b0a-0908-0706-050403020100");
        assert_eq!((sid.as_deref(), dn.as_str()), (Some("S-1-5-21-1-2-3-1104"), "CN=G_Sales,DC=corp"));
        // Someone else's group at that DN by now, or ours with its anchor changed: not taken for ours.
        assert_eq!(created_entry(&found, "CN=G_Sales,DC=corp", "G_Sales", Some("Group_def")), None);
        let unanchored = [entry("G_Sales", "DC=corp", None)];
        assert_eq!(created_entry(&unanchored, "CN=G_Sales,DC=corp", "G_Sales", Some("Group_abc")), None);
        assert_eq!(created_entry(&found, "CN=G_Sales,DC=corp", "G_Missing", None), None);
    }
}
