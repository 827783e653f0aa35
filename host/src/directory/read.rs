//! Reads: managed groups found by their anchor, and the principals that members name.
//!
//! Searches ask for extended DNs in string form, so each DN (of the entry and of every `member` value)
//! arrives as `<GUID=…>;<SID=…>;CN=…`. Members are then compared by SID, which survives renames and the
//! DC's own DN spelling.

use std::collections::{HashMap, HashSet};

use ldap3::adapters::{EntriesOnly, PagedResults};
use ldap3::controls::RawControl;
use ldap3::{Scope, SearchEntry, ldap_escape};

use super::{Directory, DirectoryError, sid};
use crate::model::anchor_value;
use crate::ownership::{self, Candidate, anchor_id};
use crate::plan::{DirectoryGroup, DirectoryMember, Principal};

/// Extended DN control, asking for GUID and SID in string form (`useStringFormat = 1`).
pub(crate) fn extended_dn_control() -> RawControl {
    RawControl { ctype: "1.2.840.113556.1.4.529".into(), crit: false, val: Some(vec![0x30, 0x03, 0x02, 0x01, 0x01]) }
}

/// The attributes read from every managed group: those of [`crate::attributes::read_back`] (what the agent
/// writes, its name, protection mark and members) and `extra` (the tenant's transform attributes), each once.
pub(super) fn group_attributes(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let known = crate::attributes::read_back().map(str::to_string);
    for name in known.chain(extra.iter().cloned()) {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            names.push(name);
        }
    }
    names
}

/// How many values one OR filter carries; keeps filters well under server limits.
pub(super) const FILTER_CHUNK: usize = 100;

/// What is read of a principal that a member value names.
const PRINCIPAL_ATTRIBUTES: [&str; 3] = ["objectSid", "groupType", "objectClass"];

/// An extended DN split into its parts.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ExtendedDn {
    pub guid: Option<String>,
    pub sid: Option<String>,
    pub dn: String,
}

/// Splits `<GUID=…>;<SID=…>;CN=…` into its parts. A plain DN comes back unchanged.
pub(crate) fn parse_extended_dn(text: &str) -> ExtendedDn {
    let mut out = ExtendedDn::default();
    let mut rest = text;
    while let Some(stripped) = rest.strip_prefix('<') {
        let Some(end) = stripped.find('>') else { break };
        let (tag, value) = stripped[..end].split_once('=').unwrap_or((&stripped[..end], ""));
        match tag.to_ascii_uppercase().as_str() {
            "GUID" => out.guid = Some(value.to_lowercase()),
            "SID" => out.sid = Some(value.to_uppercase()),
            _ => {}
        }
        rest = stripped[end + 1..].strip_prefix(';').unwrap_or(&stripped[end + 1..]);
    }
    out.dn = rest.to_string();
    out
}

/// A filter matching groups that carry any of the anchors of `ids`, every value escaped (RFC 4515).
pub(crate) fn anchor_filter(ids: &[String]) -> String {
    let anchors: String =
        ids.iter().map(|id| format!("(adminDescription={})", ldap_escape(anchor_value(id)))).collect();
    format!("(&(objectClass=group)(|{anchors}))")
}

/// Entries grouped by the id among `ids` whose anchor they carry (the DC matches anchors ignoring case, so a
/// copy may spell the id differently); entries carrying none of them are dropped.
fn by_anchor(ids: &[String], entries: Vec<SearchEntry>) -> HashMap<String, Vec<SearchEntry>> {
    let mut by_id: HashMap<String, Vec<SearchEntry>> = HashMap::new();
    for entry in entries {
        let anchor = entry.attrs.get("adminDescription").and_then(|v| v.first()).and_then(|a| anchor_id(a));
        if let Some(id) = anchor.and_then(|a| ids.iter().find(|id| id.eq_ignore_ascii_case(a))) {
            by_id.entry(id.clone()).or_default().push(entry);
        }
    }
    by_id
}

/// A GUID in its 8-4-4-4-12 form as an LDAP filter value of objectGUID: its 16 bytes escaped, the first three
/// fields little-endian as AD stores them. `None` when it is not a GUID.
pub(crate) fn guid_filter_value(guid: &str) -> Option<String> {
    if !crate::ownership::is_guid(guid) {
        return None;
    }
    let hex: String = guid.chars().filter(|c| *c != '-').collect();
    let bytes: Vec<u8> =
        (0..16).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)).collect::<Result<_, _>>().ok()?;
    let order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    Some(order.iter().map(|&i| format!("\\{:02x}", bytes[i])).collect())
}

/// An entry's objectSid. ldap3 files a value that happens to be valid UTF-8 as text, and short SIDs such as
/// `S-1-5-11` (Authenticated Users) or `S-1-5-32-544` are, so both places are looked at.
pub(super) fn object_sid(entry: &SearchEntry) -> Option<String> {
    let binary = entry.bin_attrs.get("objectSid").and_then(|v| v.first()).cloned();
    let text = || entry.attrs.get("objectSid").and_then(|v| v.first()).map(|t| t.as_bytes().to_vec());
    sid::to_string(&binary.or_else(text)?)
}

/// A `member;range=low-high` attribute name: where the next range starts, or `None` on the last range.
pub(crate) fn next_range_start(attr: &str) -> Option<Option<usize>> {
    let range = attr.to_ascii_lowercase().strip_prefix("member;range=")?.to_string();
    let (_, high) = range.split_once('-')?;
    if high == "*" {
        return Some(None);
    }
    // A range ending at usize::MAX has nothing after it.
    Some(high.parse::<usize>().ok()?.checked_add(1))
}

/// The anchored groups of the domain, as listed and then brought up to date (see
/// [`Directory::anchored_listing`]).
#[derive(Debug, Default)]
pub(super) struct Listing {
    /// The DC's highestCommittedUSN read just before the last search.
    usn: u64,
    /// By objectGUID; one the DC gave without a GUID by `dn:` and its DN.
    entries: HashMap<String, Listed>,
}

/// An anchored group as the domain-wide listing found it.
#[derive(Debug, Clone)]
pub(super) struct Listed {
    /// Its adminDescription.
    anchor: String,
    /// Its objectGUID, when the DC gave one.
    guid: Option<String>,
    /// Its DN when listed.
    dn: String,
}

/// What an anchor search found for some cloud groups (see [`crate::ownership`]).
#[derive(Debug, Default)]
pub struct ManagedGroups {
    /// Each group's own object, by cloud id.
    pub groups: HashMap<String, DirectoryGroup>,
    /// Objects carrying a group's anchor that are not its own: (cloud id, DN).
    pub lookalikes: Vec<(String, String)>,
    /// Groups whose own object cannot be told: (cloud id, why).
    pub conflicts: Vec<(String, String)>,
}

/// A group changed after some USN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedGroup {
    /// Its objectGUID, in lower case.
    pub guid: String,
    pub usn: u64,
    /// The cloud id its anchor names, if it carries one.
    pub anchor_id: Option<String>,
}

impl Directory {
    /// The managed groups of `ids`: for each, the object whose objectGUID `recorded` holds, or else the only
    /// object carrying its anchor inside `ous`. Other objects carrying the anchor are look-alikes.
    pub async fn managed_groups(
        &mut self,
        ids: &[String],
        recorded: &HashMap<String, String>,
        ous: &[String],
    ) -> Result<ManagedGroups, DirectoryError> {
        let mut found = ManagedGroups::default();
        let by_id = if ids.len() > FILTER_CHUNK { self.anchored_many(ids).await? } else { self.anchored(ids).await? };
        for (id, entries) in by_id {
            self.judge_candidates(id, entries, recorded, ous, &mut found).await?;
        }
        Ok(found)
    }

    /// Every group of the domain carrying the anchor of one of `ids` (a few), read whole, by id: one search
    /// naming each anchor.
    async fn anchored(&mut self, ids: &[String]) -> Result<HashMap<String, Vec<SearchEntry>>, DirectoryError> {
        let attrs = self.group_attrs.clone();
        let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let entries = self.paged_search(&anchor_filter(ids), &attrs).await?;
        Ok(by_anchor(ids, entries))
    }

    /// The same for many ids. `adminDescription` has no index in a default schema, so the DC tests every group
    /// of the domain against every anchor a filter names: 1,000 anchors cost seconds on a domain of 20,000
    /// groups, however few groups match. So the anchored groups are listed with a filter of one term instead,
    /// and those carrying a wanted anchor are read whole by objectGUID, which is indexed.
    async fn anchored_many(&mut self, ids: &[String]) -> Result<HashMap<String, Vec<SearchEntry>>, DirectoryError> {
        let wanted: HashSet<String> = ids.iter().map(|id| id.to_ascii_lowercase()).collect();
        let mut values = Vec::new();
        for listed in self.anchored_listing().await?.entries.values() {
            if !anchor_id(&listed.anchor).is_some_and(|id| wanted.contains(&id.to_ascii_lowercase())) {
                continue;
            }
            // Dropping an anchored object would make its group look absent and be created again.
            let guid = listed.guid.as_deref().and_then(guid_filter_value);
            values.push(guid.ok_or_else(|| DirectoryError::Ldap {
                operation: "search for anchored groups".into(),
                code: 0,
                message: format!("{} came without a readable objectGUID; the cycle stops rather than guess", listed.dn),
            })?);
        }
        self.release_listing();
        let attrs = self.group_attrs.clone();
        let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let mut entries = Vec::new();
        for chunk in values.chunks(FILTER_CHUNK) {
            let terms: String = chunk.iter().map(|v| format!("(objectGUID={v})")).collect();
            entries.extend(self.unique_search(&format!("(&(objectClass=group)(|{terms}))"), &attrs).await?);
        }
        // Each entry's anchor is read again: it may have changed between the two searches.
        Ok(by_anchor(ids, entries))
    }

    async fn judge_candidates(
        &mut self,
        id: String,
        entries: Vec<SearchEntry>,
        recorded: &HashMap<String, String>,
        ous: &[String],
        found: &mut ManagedGroups,
    ) -> Result<(), DirectoryError> {
        // An entry without a GUID cannot be told apart from its copies, so it is never a candidate.
        let (candidates, entries): (Vec<Candidate>, Vec<SearchEntry>) = entries
            .into_iter()
            .filter_map(|e| {
                let ext = parse_extended_dn(&e.dn);
                Some((Candidate { guid: ext.guid?, dn: ext.dn }, e))
            })
            .unzip();
        let recorded = recorded.get(&id).map(String::as_str);
        let verdict = ownership::judge(&candidates, recorded, ous);
        for &i in &verdict.lookalikes {
            found.lookalikes.push((id.clone(), candidates[i].dn.clone()));
        }
        if !verdict.conflicting.is_empty() {
            let dns: Vec<&str> = verdict.conflicting.iter().map(|&i| candidates[i].dn.as_str()).collect();
            let why = format!(
                "{} objects inside the tenant's OUs carry this group's anchor ({}) and none is recorded as its own; nothing is written until all but one lose the anchor",
                dns.len(),
                dns.join("; ")
            );
            found.conflicts.push((id, why));
            return Ok(());
        }
        // The recorded object may still exist with its anchor taken off, and the anchor put on a copy.
        let adopting = verdict.ours.filter(|&i| recorded.is_some_and(|g| !candidates[i].guid.eq_ignore_ascii_case(g)));
        if let (Some(i), Some(guid)) = (adopting, recorded)
            && let Some(original) = self.object_by_guid(guid).await?
        {
            let why = format!(
                "the object recorded as this group's own ({original}) no longer carries its anchor, and {} does; nothing is written until an admin puts the anchor back or deletes one of them",
                candidates[i].dn
            );
            found.conflicts.push((id, why));
            return Ok(());
        }
        if let Some(entry) = verdict.ours.and_then(|i| entries.into_iter().nth(i)) {
            let group = self.managed_group(entry).await?;
            found.groups.insert(id, group);
        }
        Ok(())
    }

    /// The groups with the given SIDs, read whole, by upper-case SID: the AD groups that converted cloud groups
    /// came from. SIDs that name no group are left out.
    pub async fn groups_by_sid(&mut self, sids: &[String]) -> Result<HashMap<String, DirectoryGroup>, DirectoryError> {
        let mut found = HashMap::new();
        let valid: Vec<String> = sids.iter().filter_map(|s| sid::filter_value(s)).collect();
        for chunk in valid.chunks(FILTER_CHUNK) {
            let values: String = chunk.iter().map(|f| format!("(objectSid={f})")).collect();
            // Whether AD counts it among its own critical objects, which are never taken over.
            let attrs = self.group_attrs.clone();
            let attrs: Vec<&str> =
                attrs.iter().map(String::as_str).chain(std::iter::once("isCriticalSystemObject")).collect();
            for entry in self.unique_search(&format!("(&(objectClass=group)(|{values}))"), &attrs).await? {
                let group = self.managed_group(entry).await?;
                if let Some(sid) = group.sid.clone() {
                    found.insert(sid.to_uppercase(), group);
                }
            }
        }
        Ok(found)
    }

    /// The cloud id and DN of every managed group inside `ous`, without attributes or members: a full
    /// reconcile walks this index in batches instead of holding every group at once. Anchored groups
    /// elsewhere are another tenant's or look-alikes, and only anchors of the form `Group_<GUID>` count.
    pub async fn managed_index(&mut self, ous: &[String]) -> Result<Vec<(String, String)>, DirectoryError> {
        let index = self
            .anchored_listing()
            .await?
            .entries
            .values()
            .filter_map(|listed| {
                // Graph writes ids in lower case; a copy spelled otherwise must not become a group of its own.
                let id = anchor_id(&listed.anchor)?.to_ascii_lowercase();
                ous.iter().any(|ou| crate::dn::is_within(&listed.dn, ou)).then(|| (id, listed.dn.clone()))
            })
            .collect();
        self.release_listing();
        Ok(index)
    }

    /// Drops a listing no reconcile holds: the next read lists again anyway.
    fn release_listing(&mut self) {
        if !self.listing_held {
            self.anchored = None;
        }
    }

    /// Every group of the domain that carries an anchor. The listing tests every group of the domain, since
    /// `adminDescription` has no index; so while a reconcile holds it (see [`Directory::hold_listing`]), later
    /// reads only ask for the anchored groups changed since, on the indexed `uSNChanged`. Those include the
    /// groups this agent created, and anchors that anyone else set meanwhile.
    async fn anchored_listing(&mut self) -> Result<&Listing, DirectoryError> {
        let since = self.anchored.as_ref().filter(|_| self.listing_held).map(|listing| listing.usn);
        // Read first: a change committed during the search is in it, or in the next update.
        let usn = self.highest_committed_usn().await?;
        let filter = match since {
            Some(since) => format!("(&(objectClass=group)(uSNChanged>={})(adminDescription=Group_*))", since + 1),
            None => "(&(objectClass=group)(adminDescription=Group_*))".to_string(),
        };
        let found = self.paged_search(&filter, &["adminDescription"]).await?;
        let mut listing = self.anchored.take().filter(|_| since.is_some()).unwrap_or_default();
        listing.usn = usn;
        for entry in found {
            let Some(anchor) = entry.attrs.get("adminDescription").and_then(|v| v.first()).cloned() else { continue };
            let ext = parse_extended_dn(&entry.dn);
            let key = ext.guid.clone().unwrap_or_else(|| format!("dn:{}", crate::dn::key(&ext.dn)));
            listing.entries.insert(key, Listed { anchor, guid: ext.guid, dn: ext.dn });
        }
        Ok(self.anchored.insert(listing))
    }

    /// Keeps the listing of anchored groups from one read to the next (brought up to date each time) until
    /// called with `false`, when it is dropped; each hold starts from a new listing.
    pub fn hold_listing(&mut self, hold: bool) {
        self.anchored = None;
        self.listing_held = hold;
    }

    /// Every group of the domain changed after `usn` on this DC: one search on the indexed `uSNChanged`,
    /// wherever the group now is, so that a group moved out of its OU is found too.
    pub async fn groups_changed_since(&mut self, usn: u64) -> Result<Vec<ChangedGroup>, DirectoryError> {
        let filter = format!("(&(objectClass=group)(uSNChanged>={}))", usn.saturating_add(1));
        // Deleted groups too: their tombstones keep the objectGUID, so a group deleted on-premises is found.
        let show_deleted = RawControl { ctype: "1.2.840.113556.1.4.417".into(), crit: false, val: None };
        let attrs = ["uSNChanged", "adminDescription"];
        let entries = self.paged_search_with(&filter, &attrs, vec![extended_dn_control(), show_deleted]).await?;
        Ok(entries
            .into_iter()
            .filter_map(|entry| {
                let ext = parse_extended_dn(&entry.dn);
                Some(ChangedGroup {
                    guid: ext.guid?,
                    usn: entry.attrs.get("uSNChanged")?.first()?.parse().ok()?,
                    anchor_id: entry
                        .attrs
                        .get("adminDescription")
                        .and_then(|v| v.first())
                        .and_then(|a| anchor_id(a))
                        .map(|id| id.to_ascii_lowercase()),
                })
            })
            .collect())
    }

    /// A search of the domain whose filter names at most [`FILTER_CHUNK`] values of a unique attribute
    /// (objectSid, objectGUID), so it matches at most that many objects: well under any server's page size, so
    /// it asks for no paging. Samba answers a paged search by finding the matches and then fetching each one
    /// again, which costs more than the lookup itself. A server that still cut the answer short would say so
    /// (size limit exceeded), and that fails the search rather than losing entries.
    pub(super) async fn unique_search(&self, filter: &str, attrs: &[&str]) -> Result<Vec<SearchEntry>, DirectoryError> {
        let (entries, _) = self
            .ldap
            .clone()
            .with_controls(vec![extended_dn_control()])
            .with_timeout(self.timeout)
            .search(&self.base_dn, Scope::Subtree, filter, attrs.to_vec())
            .await
            .map_err(|e| DirectoryError::from_ldap("search", e))?
            .success()
            .map_err(|e| DirectoryError::from_ldap("search", e))?;
        Ok(entries.into_iter().map(SearchEntry::construct).collect())
    }

    async fn paged_search(&mut self, filter: &str, attrs: &[&str]) -> Result<Vec<SearchEntry>, DirectoryError> {
        self.paged_search_with(filter, attrs, vec![extended_dn_control()]).await
    }

    async fn paged_search_with(
        &mut self,
        filter: &str,
        attrs: &[&str],
        controls: Vec<RawControl>,
    ) -> Result<Vec<SearchEntry>, DirectoryError> {
        let err = |e| DirectoryError::from_ldap("search", e);
        let adapters: Vec<Box<dyn ldap3::adapters::Adapter<_, _>>> =
            vec![Box::new(EntriesOnly::new()), Box::new(PagedResults::new(500))];
        let base = self.base_dn.clone();
        let mut stream = self
            .ldap
            .with_controls(controls)
            .with_timeout(self.timeout)
            .streaming_search_with(adapters, &base, Scope::Subtree, filter, attrs.to_vec())
            .await
            .map_err(err)?;
        let mut entries = Vec::new();
        while let Some(entry) = stream.next().await.map_err(err)? {
            entries.push(SearchEntry::construct(entry));
        }
        stream.finish().await.success().map_err(err)?;
        Ok(entries)
    }

    /// The DN of the object with this objectGUID, if there is one.
    async fn object_by_guid(&mut self, guid: &str) -> Result<Option<String>, DirectoryError> {
        // A GUID from the state is checked before it is put into a DN.
        if !ownership::is_guid(guid) {
            return Ok(None);
        }
        match self.search(&format!("<GUID={guid}>"), Scope::Base, "(objectClass=*)", &["1.1"]).await {
            Ok(entries) => Ok(entries.into_iter().next().map(|e| parse_extended_dn(&e.dn).dn)),
            Err(DirectoryError::Ldap { code: 32, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a judged entry whole: its attributes and every member.
    async fn managed_group(&mut self, mut entry: SearchEntry) -> Result<DirectoryGroup, DirectoryError> {
        let ext = parse_extended_dn(&entry.dn);
        let members = self.members(&entry.dn, &mut entry.attrs).await?;
        let attributes = entry
            .attrs
            .into_iter()
            .filter(|(name, _)| !name.to_ascii_lowercase().starts_with("member"))
            .map(|(name, values)| (name.to_lowercase(), values))
            .collect();
        Ok(DirectoryGroup { guid: ext.guid.unwrap_or_default(), sid: ext.sid, dn: ext.dn, attributes, members })
    }

    /// All values of `member`, following ranged retrieval (`member;range=0-1499`) as Windows AD returns it.
    async fn members(
        &mut self,
        entry_dn: &str,
        attrs: &mut HashMap<String, Vec<String>>,
    ) -> Result<Vec<DirectoryMember>, DirectoryError> {
        let mut values = attrs.remove("member").unwrap_or_default();
        let ranged: Vec<String> = attrs.keys().filter(|k| next_range_start(k).is_some()).cloned().collect();
        for attr in ranged {
            let mut next = next_range_start(&attr).flatten();
            values.extend(attrs.remove(&attr).unwrap_or_default());
            while let Some(start) = next {
                let (chunk, following) = self.member_range(entry_dn, start).await?;
                values.extend(chunk);
                // A DC that answered a range not past the one asked for would otherwise be asked forever.
                next = following.filter(|&n| n > start);
            }
        }
        Ok(values
            .iter()
            .map(|v| {
                let ext = parse_extended_dn(v);
                DirectoryMember { dn: ext.dn, sid: ext.sid }
            })
            .collect())
    }

    async fn member_range(
        &mut self,
        entry_dn: &str,
        start: usize,
    ) -> Result<(Vec<String>, Option<usize>), DirectoryError> {
        let attr = format!("member;range={start}-*");
        let base = parse_extended_dn(entry_dn).dn;
        let (entries, _) = self
            .ldap
            .with_controls(extended_dn_control())
            .with_timeout(self.timeout)
            .search(&base, Scope::Base, "(objectClass=*)", vec![attr.as_str()])
            .await
            .and_then(|r| r.success())
            .map_err(|e| DirectoryError::from_ldap("ranged member read", e))?;
        let Some(entry) = entries.into_iter().next().map(SearchEntry::construct) else {
            return Ok((Vec::new(), None));
        };
        for (name, values) in entry.attrs {
            if let Some(next) = next_range_start(&name) {
                return Ok((values, next));
            }
        }
        Ok((Vec::new(), None))
    }

    /// A protected group that `group_dn` is nested in, directly or through other groups: one carrying
    /// adminCount=1 (as AD's protected groups and their nested members do) or listed in `deny`. A member
    /// added to `group_dn` would gain that group's rights.
    pub async fn protecting_group(
        &mut self,
        group_dn: &str,
        deny: &[String],
    ) -> Result<Option<String>, DirectoryError> {
        let listed: String =
            deny.iter().map(|dn| format!("(distinguishedName={})", ldap_escape(dn.as_str()))).collect();
        let filter = format!(
            "(&(objectClass=group)(|(adminCount=1){listed})(member:1.2.840.113556.1.4.1941:={}))",
            ldap_escape(group_dn)
        );
        let found = self.paged_search(&filter, &["1.1"]).await?;
        Ok(found.into_iter().next().map(|e| parse_extended_dn(&e.dn).dn))
    }

    /// The principals the given SIDs name, by upper-case SID. Unknown SIDs are simply absent.
    pub async fn principals(&mut self, sids: &[String]) -> Result<HashMap<String, Principal>, DirectoryError> {
        let mut found = HashMap::new();
        let valid: Vec<String> = sids.iter().filter_map(|s| sid::filter_value(s)).collect();
        for chunk in valid.chunks(FILTER_CHUNK) {
            let values: String = chunk.iter().map(|f| format!("(objectSid={f})")).collect();
            self.collect_principals(&format!("(|{values})"), true, &mut found).await?;
        }
        Ok(found)
    }

    /// The groups `dn` is a direct member of, as principals by upper-case SID, with their groupType.
    pub async fn containing_groups(&mut self, dn: &str) -> Result<HashMap<String, Principal>, DirectoryError> {
        let mut found = HashMap::new();
        let filter = format!("(&(objectClass=group)(member={}))", ldap_escape(dn));
        self.collect_principals(&filter, false, &mut found).await?;
        Ok(found)
    }

    /// The groups that are members of any of `group_dns`, as principals by upper-case SID: the group type
    /// of members already present, which their extended DNs do not tell.
    pub async fn member_groups(&mut self, group_dns: &[String]) -> Result<HashMap<String, Principal>, DirectoryError> {
        let mut found = HashMap::new();
        for chunk in group_dns.chunks(FILTER_CHUNK) {
            let values: String = chunk.iter().map(|dn| format!("(memberOf={})", ldap_escape(dn.as_str()))).collect();
            let filter = format!("(&(objectClass=group)(|{values}))");
            self.collect_principals(&filter, false, &mut found).await?;
        }
        Ok(found)
    }

    /// Adds the principals `filter` matches to `found`; `unique` when the filter names SIDs, each matching one
    /// object at most.
    async fn collect_principals(
        &mut self,
        filter: &str,
        unique: bool,
        found: &mut HashMap<String, Principal>,
    ) -> Result<(), DirectoryError> {
        let entries = if unique {
            self.unique_search(filter, &PRINCIPAL_ATTRIBUTES).await?
        } else {
            self.paged_search(filter, &PRINCIPAL_ATTRIBUTES).await?
        };
        for entry in entries {
            let Some(sid) = object_sid(&entry) else {
                continue;
            };
            let group_type = entry.attrs.get("groupType").and_then(|v| v.first()).and_then(|t| t.parse().ok());
            let classes = entry.attrs.get("objectClass").cloned().unwrap_or_default();
            found.insert(sid.to_uppercase(), Principal { dn: parse_extended_dn(&entry.dn).dn, group_type, classes });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_attribute_the_agent_or_a_default_transform_writes_is_read_back() {
        let defaults: Vec<String> = crate::attributes::transform_defaults().map(str::to_string).collect();
        let read = group_attributes(&defaults);
        let written = crate::attributes::written().map(|a| a.ad);
        for name in written.chain(defaults.iter().map(String::as_str)) {
            assert!(read.iter().any(|r| r.eq_ignore_ascii_case(name)), "{name} is written but never read back");
        }
        assert_eq!(read.len(), read.iter().map(|r| r.to_lowercase()).collect::<std::collections::BTreeSet<_>>().len());
    }

    #[test]
    fn extended_dns_split() {
        let ext = parse_extended_dn("<GUID=AB-cd>;<SID=s-1-5-21-1>;CN=a\\,b,DC=x");
        assert_eq!(
            ext,
            ExtendedDn { guid: Some("ab-cd".into()), sid: Some("S-1-5-21-1".into()), dn: "CN=a\\,b,DC=x".into() }
        );
        let plain = parse_extended_dn("<GUID=g>;CN=contact,DC=x");
        assert_eq!((plain.sid, plain.dn.as_str()), (None, "CN=contact,DC=x"));
        assert_eq!(parse_extended_dn("CN=plain,DC=x").dn, "CN=plain,DC=x");
    }

    #[test]
    fn a_guid_is_searched_for_in_the_byte_order_ad_stores_it() {
        assert_eq!(
            guid_filter_value("01020304-0506-0708-090a-0B0C0D0E0F10").as_deref(),
            Some(r"\04\03\02\01\06\05\08\07\09\0a\0b\0c\0d\0e\0f\10")
        );
        assert_eq!(guid_filter_value("*)(objectClass=*"), None);
        assert_eq!(guid_filter_value("0102030405060708090a0b0c0d0e0f10"), None);
    }

    #[test]
    fn anchor_filters_escape_hostile_ids() {
        let ids = vec!["a".to_string(), "*)(objectClass=*".to_string(), "x\\00".to_string()];
        assert_eq!(
            anchor_filter(&ids),
            r"(&(objectClass=group)(|(adminDescription=Group_a)(adminDescription=Group_\2a\29\28objectClass=\2a)(adminDescription=Group_x\5c00)))"
        );
    }

    #[test]
    fn a_sid_that_is_valid_utf8_is_read_too() {
        let mut entry = SearchEntry { dn: "CN=S-1-5-11".into(), attrs: HashMap::new(), bin_attrs: HashMap::new() };
        entry.attrs.insert("objectSid".into(), vec![String::from_utf8(sid::to_binary("S-1-5-11").unwrap()).unwrap()]);
        assert_eq!(object_sid(&entry).as_deref(), Some("S-1-5-11"));
        entry.attrs.clear();
        entry.bin_attrs.insert("objectSid".into(), vec![sid::to_binary("S-1-5-21-1-2-3-500").unwrap()]);
        assert_eq!(object_sid(&entry).as_deref(), Some("S-1-5-21-1-2-3-500"));
    }

    #[test]
    fn ranges_follow_windows_format() {
        assert_eq!(next_range_start("member;range=0-1499"), Some(Some(1500)));
        assert_eq!(next_range_start("Member;Range=1500-*"), Some(None));
        assert_eq!(next_range_start("member"), None);
        assert_eq!(next_range_start("member;range=0-x"), None);
        assert_eq!(next_range_start(&format!("member;range=0-{}", usize::MAX)), Some(None));
        assert_eq!(next_range_start("description"), None);
    }
}
