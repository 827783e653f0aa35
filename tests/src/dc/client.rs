//! LDAP helpers the tests use to arrange and inspect the directory: verified
//! LDAPS connections, per-test OUs, users, groups and reads.

use std::collections::HashSet;
use std::fs;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::controls::RawControl;
use ldap3::{
    Ldap, LdapConnAsync, LdapConnSettings, LdapResult, Mod, Scope, SearchEntry, SearchResult, dn_escape, ldap_escape,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::sid::{guid_to_string, sid_to_string};
use super::{ADMIN_DN, BASE_DN, DcInfo, TestDc};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Below Samba's default MaxPageSize of 1000, past which an unpaged search fails.
const PAGE_SIZE: i32 = 500;
/// LDAP_SERVER_TREE_DELETE_OID: delete an entry with everything under it.
const TREE_DELETE_OID: &str = "1.2.840.113556.1.4.805";
const NO_SUCH_OBJECT: u32 = 32;
const GROUP_ATTRS: [&str; 11] = [
    "cn",
    "sAMAccountName",
    "groupType",
    "adminDescription",
    "description",
    "displayName",
    "member",
    "objectGUID",
    "mail",
    "proxyAddresses",
    "objectSid",
];

/// A fresh OU for one test, with `OU=Users` and `OU=Groups` below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOu {
    /// `OU=<name>-<6 hex>,DC=corp,DC=example,DC=test`.
    pub dn: String,
    /// `OU=Users,<dn>`.
    pub users_dn: String,
    /// `OU=Groups,<dn>`: the agent's target OU.
    pub groups_dn: String,
}

/// An object the harness created, with the identities AD gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdObject {
    /// The DN as the server spells it.
    pub dn: String,
    /// `objectSid` as `S-1-5-21-…`.
    pub sid: String,
    /// `objectGUID` as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub guid: String,
}

/// A group as read back from the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub dn: String,
    pub cn: String,
    pub sam: String,
    pub group_type: i32,
    pub admin_description: Option<String>,
    pub description: Option<String>,
    pub display_name: Option<String>,
    /// Member DNs, all of them (ranged values are followed up).
    pub members: Vec<String>,
    pub guid: String,
    pub sid: String,
    pub mail: Option<String>,
    pub proxy_addresses: Vec<String>,
}

/// Opens an LDAPS connection to the DC and simple-binds as `bind_dn`,
/// verifying the server certificate against the test CA and the URL's host.
pub(crate) async fn connect(info: &DcInfo, bind_dn: &str, password: &str) -> Result<Ldap> {
    // The one samba process serves every test of the run; when it is busy, a connection can time out.
    let mut attempt = 1;
    loop {
        match connect_once(info, bind_dn, password).await {
            Err(e) if attempt < 3 && format!("{e:#}").contains(&format!("connecting to {}", info.url)) => attempt += 1,
            other => return other,
        }
    }
}

async fn connect_once(info: &DcInfo, bind_dn: &str, password: &str) -> Result<Ldap> {
    let settings = LdapConnSettings::new().set_conn_timeout(CONNECT_TIMEOUT).set_config(tls_config(info)?);
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &info.url)
        .await
        .with_context(|| format!("connecting to {}", info.url))?;
    ldap3::drive!(conn);
    // conn_timeout covers TCP and TLS only; a hung server must not hang the bind.
    ldap.with_timeout(CONNECT_TIMEOUT)
        .simple_bind(bind_dn, password)
        .await
        .and_then(LdapResult::success)
        .with_context(|| format!("binding to {} as {bind_dn}", info.url))?;
    Ok(ldap)
}

/// A client config trusting only the test CA. The provider is named
/// explicitly because a program that also links reqwest's rustls has more
/// than one, and then rustls cannot pick a process default by itself.
fn tls_config(info: &DcInfo) -> Result<Arc<rustls::ClientConfig>> {
    let pem = fs::read(&info.ca_file).with_context(|| format!("reading {}", info.ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.with_context(|| format!("parsing {}", info.ca_file.display()))?;
        roots.add(cert).context("adding the test CA to the root store")?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl TestDc {
    /// An LDAPS connection bound as CORP\Administrator.
    pub async fn admin(&self) -> Result<Ldap> {
        connect(self.info(), ADMIN_DN, self.admin_password()).await
    }

    /// An LDAPS connection bound as `bind_dn`, e.g. a less privileged account
    /// or a wrong password in a failure test.
    pub async fn connect_as(&self, bind_dn: &str, password: &str) -> Result<Ldap> {
        connect(self.info(), bind_dn, password).await
    }

    /// Creates `OU=<name>-<6 random hex>` under the domain root with child OUs
    /// `Users` and `Groups`, after deleting OUs left for `name` by earlier runs.
    pub async fn test_ou(&self, name: &str) -> Result<TestOu> {
        let mut ldap = self.admin().await?;
        for stale in stale_test_ous(&mut ldap, name).await? {
            // Best effort: the new OU has a fresh suffix, so a stale one left behind does not matter. Samba
            // may drop the connection while it deletes a large tree under load; carry on with a new one.
            if let Err(e) = tree_delete(&mut ldap, &stale).await {
                eprintln!("leaving stale test OU {stale}: {e:#}");
                ldap = self.admin().await?;
            }
        }
        let suffix = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let dn = format!("OU={},{BASE_DN}", dn_escape(format!("{name}-{suffix}")));
        let ou = TestOu { users_dn: format!("OU=Users,{dn}"), groups_dn: format!("OU=Groups,{dn}"), dn };
        for dn in [&ou.dn, &ou.users_dn, &ou.groups_dn] {
            add_ou(&mut ldap, dn).await?;
        }
        ldap.unbind().await.ok();
        Ok(ou)
    }

    /// Creates a child OU `OU=<name>,<parent_dn>` and returns its DN.
    pub async fn create_ou(&self, parent_dn: &str, name: &str) -> Result<String> {
        let mut ldap = self.admin().await?;
        let dn = format!("OU={},{parent_dn}", dn_escape(name));
        add_ou(&mut ldap, &dn).await?;
        ldap.unbind().await.ok();
        Ok(dn)
    }

    /// Creates user `CN=<sam>,<ou_dn>` by a plain LDAP add. Samba creates it
    /// disabled and without a password, which is fine for group membership.
    pub async fn create_user(&self, ou_dn: &str, sam: &str) -> Result<AdObject> {
        let dn = format!("CN={},{ou_dn}", dn_escape(sam));
        let attrs = vec![("objectClass", HashSet::from(["user"])), ("sAMAccountName", HashSet::from([sam]))];
        self.add_and_read_back(&dn, attrs).await
    }

    /// Creates group `CN=<name>,<ou_dn>` with sAMAccountName `name`. Use it for
    /// AD-mastered groups, domain-local groups, or objects that squat a name.
    pub async fn create_group(&self, ou_dn: &str, name: &str, group_type: i32) -> Result<AdObject> {
        let dn = format!("CN={},{ou_dn}", dn_escape(name));
        let group_type = group_type.to_string();
        let attrs = vec![
            ("objectClass", HashSet::from(["group"])),
            ("sAMAccountName", HashSet::from([name])),
            ("groupType", HashSet::from([group_type.as_str()])),
        ];
        self.add_and_read_back(&dn, attrs).await
    }

    /// Adds `member` (a DN, or `<SID=…>` / `<GUID=…>`) to the group `group_dn`.
    pub async fn add_member(&self, group_dn: &str, member: &str) -> Result<()> {
        let mut ldap = self.admin().await?;
        ldap.modify(group_dn, vec![Mod::Add("member", HashSet::from([member]))])
            .await
            .and_then(LdapResult::success)
            .with_context(|| format!("adding member {member} to {group_dn}"))?;
        ldap.unbind().await.ok();
        Ok(())
    }

    /// Replaces every value of `attr` on `dn` with `value`, as an admin (or an attacker with write access to
    /// the object) would.
    pub async fn set_attribute(&self, dn: &str, attr: &str, value: &str) -> Result<()> {
        let mut ldap = self.admin().await?;
        ldap.modify(dn, vec![Mod::Replace(attr, HashSet::from([value]))])
            .await
            .and_then(LdapResult::success)
            .with_context(|| format!("setting {attr} on {dn}"))?;
        ldap.unbind().await.ok();
        Ok(())
    }

    /// The rootDSE's `highestCommittedUSN`: it moves on every real write.
    pub async fn highest_committed_usn(&self) -> Result<u64> {
        let mut ldap = self.admin().await?;
        let root = read_entry(&mut ldap, "", &["highestCommittedUSN"]).await?.context("rootDSE not readable")?;
        ldap.unbind().await.ok();
        let text = first_value(&root, "highestCommittedUSN").context("rootDSE has no highestCommittedUSN")?;
        text.parse().with_context(|| format!("highestCommittedUSN {text:?} is not a number"))
    }

    /// The highest `uSNChanged` of any object in the subtree at `dn`. Unlike the rootDSE's
    /// highestCommittedUSN it ignores writes elsewhere, so tests running in parallel on the shared DC
    /// can each count their own writes. (Deleted objects leave the subtree; count those separately.)
    pub async fn subtree_usn(&self, dn: &str) -> Result<u64> {
        let mut ldap = self.admin().await?;
        let entries = search_all(&mut ldap, dn, Scope::Subtree, "(objectClass=*)", &["uSNChanged"]).await?;
        ldap.unbind().await.ok();
        let mut highest = 0;
        for entry in &entries {
            let text = first_value(entry, "uSNChanged").context("an entry has no uSNChanged")?;
            highest = highest.max(text.parse::<u64>().with_context(|| format!("uSNChanged {text:?}"))?);
        }
        Ok(highest)
    }

    /// Deletes `dn` and everything below it. A DN that does not exist counts
    /// as deleted, so cleanup can run twice.
    pub async fn delete_tree(&self, dn: &str) -> Result<()> {
        let mut ldap = self.admin().await?;
        tree_delete(&mut ldap, dn).await?;
        ldap.unbind().await.ok();
        Ok(())
    }

    /// Every group in the subtree at `dn`, with all members.
    pub async fn groups_under(&self, dn: &str) -> Result<Vec<GroupEntry>> {
        let mut ldap = self.admin().await?;
        let entries = search_all(&mut ldap, dn, Scope::Subtree, "(objectClass=group)", &GROUP_ATTRS).await?;
        let mut groups = Vec::with_capacity(entries.len());
        for entry in entries {
            let members = all_members(&mut ldap, &entry).await?;
            groups.push(group_entry(&entry, members)?);
        }
        ldap.unbind().await.ok();
        Ok(groups)
    }

    /// The entry at `dn` with `attrs`, or `None` if there is no such object.
    pub async fn entry(&self, dn: &str, attrs: &[&str]) -> Result<Option<SearchEntry>> {
        let mut ldap = self.admin().await?;
        let entry = read_entry(&mut ldap, dn, attrs).await?;
        ldap.unbind().await.ok();
        Ok(entry)
    }

    /// Creates an enabled user `CN=<sam>,<ou_dn>` with `password`, to bind as a delegated, non-admin account.
    pub async fn create_account(&self, ou_dn: &str, sam: &str, password: &str) -> Result<AdObject> {
        let dn = format!("CN={},{ou_dn}", dn_escape(sam));
        // AD takes a password only as the UTF-16LE bytes of the quoted text, and only over TLS.
        let quoted: Vec<u8> = format!("\"{password}\"").encode_utf16().flat_map(u16::to_le_bytes).collect();
        let attrs: Vec<(Vec<u8>, HashSet<Vec<u8>>)> = vec![
            (b"objectClass".to_vec(), HashSet::from([b"user".to_vec()])),
            (b"sAMAccountName".to_vec(), HashSet::from([sam.as_bytes().to_vec()])),
            (b"unicodePwd".to_vec(), HashSet::from([quoted])),
            // A normal, enabled account.
            (b"userAccountControl".to_vec(), HashSet::from([b"512".to_vec()])),
        ];
        let mut ldap = self.admin().await?;
        ldap.add(&dn, attrs).await.and_then(LdapResult::success).with_context(|| format!("adding account {dn}"))?;
        let entry = read_entry(&mut ldap, &dn, &["objectSid", "objectGUID"])
            .await?
            .with_context(|| format!("{dn} vanished right after it was added"))?;
        ldap.unbind().await.ok();
        Ok(AdObject { sid: sid_of(&entry)?, guid: guid_of(&entry)?, dn: entry.dn })
    }

    /// Adds the ACEs in `sddl` to the security descriptor of `object_dn`, through `samba-tool dsacl` on the
    /// DC's own database (Samba offers no LDAP way to edit a descriptor as text).
    pub fn grant(&self, object_dn: &str, sddl: &str) -> Result<()> {
        let dc = &self.info().dir.join("dc");
        let output = std::process::Command::new("samba-tool")
            .args(["dsacl", "set", "-s"])
            .arg(dc.join("etc/smb.conf"))
            .arg("-H")
            .arg(dc.join("private/sam.ldb"))
            .arg(format!("--objectdn={object_dn}"))
            .arg(format!("--sddl={sddl}"))
            .output()
            .context("running samba-tool dsacl set")?;
        if !output.status.success() {
            anyhow::bail!(
                "samba-tool dsacl set on {object_dn} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    async fn add_and_read_back(&self, dn: &str, attrs: Vec<(&str, HashSet<&str>)>) -> Result<AdObject> {
        let mut ldap = self.admin().await?;
        ldap.add(dn, attrs).await.and_then(LdapResult::success).with_context(|| format!("adding {dn}"))?;
        let entry = read_entry(&mut ldap, dn, &["objectSid", "objectGUID"])
            .await?
            .with_context(|| format!("{dn} vanished right after it was added"))?;
        ldap.unbind().await.ok();
        Ok(AdObject { sid: sid_of(&entry)?, guid: guid_of(&entry)?, dn: entry.dn })
    }
}

/// Test OUs an earlier run left for `name`: `<name>-` plus exactly six hex
/// digits, so the OU of a test called `<name>-more` is never mistaken for one.
async fn stale_test_ous(ldap: &mut Ldap, name: &str) -> Result<Vec<String>> {
    let filter = format!("(&(objectClass=organizationalUnit)(ou={}-*))", ldap_escape(name));
    let entries = search_all(ldap, BASE_DN, Scope::OneLevel, &filter, &["ou"]).await?;
    Ok(entries
        .into_iter()
        .filter(|entry| first_value(entry, "ou").is_some_and(|ou| is_test_ou_name(ou, name)))
        .map(|entry| entry.dn)
        .collect())
}

fn is_test_ou_name(ou: &str, name: &str) -> bool {
    // AD compares names case-insensitively, so a stale OU may differ in case.
    let Some(suffix) = ou
        .get(..name.len())
        .filter(|prefix| prefix.eq_ignore_ascii_case(name))
        .and_then(|_| ou[name.len()..].strip_prefix('-'))
    else {
        return false;
    };
    suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn add_ou(ldap: &mut Ldap, dn: &str) -> Result<()> {
    let attrs = vec![("objectClass", HashSet::from(["organizationalUnit"]))];
    ldap.add(dn, attrs).await.and_then(LdapResult::success).with_context(|| format!("adding OU {dn}"))?;
    Ok(())
}

async fn tree_delete(ldap: &mut Ldap, dn: &str) -> Result<()> {
    let control = RawControl { ctype: TREE_DELETE_OID.to_owned(), crit: true, val: None };
    let result = ldap.with_controls(control).delete(dn).await.with_context(|| format!("tree-deleting {dn}"))?;
    if result.rc != 0 && result.rc != NO_SUCH_OBJECT {
        bail!("tree-deleting {dn}: {result}");
    }
    Ok(())
}

/// A base read of `dn`; `None` when it does not exist.
async fn read_entry(ldap: &mut Ldap, dn: &str, attrs: &[&str]) -> Result<Option<SearchEntry>> {
    let SearchResult(entries, result) =
        ldap.search(dn, Scope::Base, "(objectClass=*)", attrs).await.with_context(|| format!("reading {dn:?}"))?;
    match result.rc {
        0 => Ok(entries.into_iter().next().map(SearchEntry::construct)),
        NO_SUCH_OBJECT => Ok(None),
        _ => bail!("reading {dn:?}: {result}"),
    }
}

/// A paged search, so tests with thousands of objects do not hit the server's
/// size limit.
async fn search_all(
    ldap: &mut Ldap,
    base: &str,
    scope: Scope,
    filter: &str,
    attrs: &[&str],
) -> Result<Vec<SearchEntry>> {
    let attrs: Vec<String> = attrs.iter().map(ToString::to_string).collect();
    let adapters: Vec<Box<dyn Adapter<_, _>>> =
        vec![Box::new(EntriesOnly::new()), Box::new(PagedResults::new(PAGE_SIZE))];
    let context = || format!("searching {base} for {filter}");
    let mut stream = ldap.streaming_search_with(adapters, base, scope, filter, attrs).await.with_context(context)?;
    let mut entries = Vec::new();
    while let Some(entry) = stream.next().await.with_context(context)? {
        entries.push(SearchEntry::construct(entry));
    }
    stream.finish().await.success().with_context(context)?;
    Ok(entries)
}

/// All `member` values of a group. Samba returns them in one piece; Windows AD
/// sends at most 1500 as `member;range=0-1499` and wants follow-up reads.
async fn all_members(ldap: &mut Ldap, entry: &SearchEntry) -> Result<Vec<String>> {
    let mut members = all_values(entry, "member");
    let mut next = ranged_member_values(entry, &mut members);
    while let Some(start) = next {
        let attr = format!("member;range={start}-*");
        let page = read_entry(ldap, &entry.dn, &[attr.as_str()])
            .await?
            .with_context(|| format!("{} vanished while reading its members", entry.dn))?;
        next = ranged_member_values(&page, &mut members);
    }
    Ok(members)
}

/// Appends the values of a `member;range=a-b` attribute to `members` and
/// returns where the next range starts, or `None` once the range ends in `*`.
fn ranged_member_values(entry: &SearchEntry, members: &mut Vec<String>) -> Option<u64> {
    let (key, values) = entry.attrs.iter().find(|(key, _)| key.to_ascii_lowercase().starts_with("member;range="))?;
    members.extend(values.iter().cloned());
    let end = key.rsplit('-').next()?;
    end.parse::<u64>().ok().map(|end| end + 1)
}

fn group_entry(entry: &SearchEntry, members: Vec<String>) -> Result<GroupEntry> {
    let required =
        |attr: &str| first_value(entry, attr).map(str::to_owned).with_context(|| format!("{} has no {attr}", entry.dn));
    let group_type = required("groupType")?;
    Ok(GroupEntry {
        dn: entry.dn.clone(),
        cn: required("cn")?,
        sam: required("sAMAccountName")?,
        group_type: group_type.parse().with_context(|| format!("{}: groupType {group_type:?}", entry.dn))?,
        admin_description: first_value(entry, "adminDescription").map(str::to_owned),
        description: first_value(entry, "description").map(str::to_owned),
        display_name: first_value(entry, "displayName").map(str::to_owned),
        members,
        guid: guid_of(entry)?,
        sid: sid_of(entry)?,
        mail: first_value(entry, "mail").map(str::to_owned),
        proxy_addresses: all_values(entry, "proxyAddresses"),
    })
}

fn sid_of(entry: &SearchEntry) -> Result<String> {
    let bytes = binary_value(entry, "objectSid").with_context(|| format!("{} has no objectSid", entry.dn))?;
    sid_to_string(&bytes).with_context(|| format!("{}: objectSid", entry.dn))
}

fn guid_of(entry: &SearchEntry) -> Result<String> {
    let bytes = binary_value(entry, "objectGUID").with_context(|| format!("{} has no objectGUID", entry.dn))?;
    guid_to_string(&bytes).with_context(|| format!("{}: objectGUID", entry.dn))
}

/// Attribute names come back in the server's spelling, so look them up
/// ignoring case.
fn values<'e, V>(map: &'e std::collections::HashMap<String, Vec<V>>, attr: &str) -> Option<&'e [V]> {
    map.iter().find(|(key, _)| key.eq_ignore_ascii_case(attr)).map(|(_, values)| values.as_slice())
}

/// The first value of a text attribute.
pub fn first_value<'e>(entry: &'e SearchEntry, attr: &str) -> Option<&'e str> {
    values(&entry.attrs, attr)?.first().map(String::as_str)
}

/// Every value of a text attribute; empty when it is absent.
pub fn all_values(entry: &SearchEntry, attr: &str) -> Vec<String> {
    values(&entry.attrs, attr).map(<[String]>::to_vec).unwrap_or_default()
}

/// The first value of a binary attribute such as objectSid. ldap3 files a
/// value that happens to be valid UTF-8 under `attrs` instead of `bin_attrs`;
/// its bytes are unchanged either way.
pub fn binary_value(entry: &SearchEntry, attr: &str) -> Option<Vec<u8>> {
    values(&entry.bin_attrs, attr)
        .and_then(<[Vec<u8>]>::first)
        .cloned()
        .or_else(|| first_value(entry, attr).map(|text| text.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn entry(attrs: &[(&str, &[&str])]) -> SearchEntry {
        SearchEntry {
            dn: "CN=g,DC=x".to_owned(),
            attrs: attrs.iter().map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect())).collect(),
            bin_attrs: HashMap::new(),
        }
    }

    #[test]
    fn test_ou_names_match_exactly() {
        assert!(is_test_ou_name("sync-0a1b2c", "sync"));
        assert!(is_test_ou_name("SYNC-0A1B2C", "sync"));
        assert!(!is_test_ou_name("sync-large-0a1b2c", "sync"));
        assert!(!is_test_ou_name("sync-0a1b2", "sync"));
        assert!(!is_test_ou_name("sync-0a1b2g", "sync"));
        assert!(!is_test_ou_name("syn", "sync"));
        assert!(!is_test_ou_name("Ünï-0a1b2c", "Ün"));
    }

    #[test]
    fn member_ranges() {
        let mut members = vec![];
        let first = entry(&[("member;range=0-1", &["a", "b"])]);
        assert_eq!(ranged_member_values(&first, &mut members), Some(2));
        let last = entry(&[("member;range=2-*", &["c"])]);
        assert_eq!(ranged_member_values(&last, &mut members), None);
        assert_eq!(members, ["a", "b", "c"]);
        // Samba's whole-attribute answer has no range to follow.
        assert_eq!(ranged_member_values(&entry(&[("member", &["a"])]), &mut members), None);
    }

    #[test]
    fn attribute_lookup_ignores_case() {
        let e = entry(&[("sAMAccountName", &["x"])]);
        assert_eq!(first_value(&e, "samaccountname"), Some("x"));
        assert_eq!(all_values(&e, "member"), Vec::<String>::new());
    }

    #[test]
    fn binary_value_survives_utf8_filing() {
        let mut e = entry(&[("objectGUID", &["abc"])]);
        assert_eq!(binary_value(&e, "objectGUID"), Some(b"abc".to_vec()));
        e.bin_attrs.insert("objectSid".to_owned(), vec![vec![0xff, 0x01]]);
        assert_eq!(binary_value(&e, "objectsid"), Some(vec![0xff, 0x01]));
    }
}
