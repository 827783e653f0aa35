//! The bench's own LDAP work on the test DC: OpenLDAP tools for bulk adds, users with their SIDs, and the
//! searches that watch what the agent wrote.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{Ldap, Scope, SearchEntry, SearchResult, ldap_escape};
use writeback_tests::dc::{TestDc, binary_value, first_value, sid_to_string};

/// A user the bench created in AD.
#[derive(Debug, Clone)]
pub struct AdUser {
    pub sam: String,
    /// The DN as the server spells it.
    pub dn: String,
    pub sid: String,
}

/// Runs an OpenLDAP client tool (`ldapadd`, …) bound as the DC's Administrator over verified LDAPS, at `url`
/// (the DC's own when `None`). The password is read from its file (`-y`), never put on a command line.
/// Returns the wall time of the tool.
pub async fn ldap_tool(dc: &TestDc, url: Option<&str>, tool: &str, args: &[&str]) -> Result<Duration> {
    let info = dc.info();
    let mut command = tokio::process::Command::new(tool);
    command
        .env("LDAPTLS_CACERT", &info.ca_file)
        .env("LDAPTLS_REQCERT", "demand")
        .args(["-H", url.unwrap_or(&info.url), "-x", "-D", &info.admin_dn, "-y"])
        .arg(&info.admin_password_file)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let output = command.output().await.with_context(|| format!("running {tool} (is ldap-utils installed?)"))?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        bail!(
            "{tool} {} failed ({}): {}",
            args.join(" "),
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
    }
    Ok(elapsed)
}

/// Adds every entry of an LDIF file with one `ldapadd` at `url` (the DC's own when `None`) and returns how
/// long it took.
pub async fn ldapadd(dc: &TestDc, url: Option<&str>, ldif: &Path) -> Result<Duration> {
    let path = ldif.to_str().with_context(|| format!("{} is not UTF-8", ldif.display()))?;
    ldap_tool(dc, url, "ldapadd", &["-f", path]).await
}

/// Creates users `CN=<sam>,<ou_dn>` (one LDIF, one `ldapadd`) and reads their DNs and SIDs back.
pub async fn create_users(dc: &TestDc, ou_dn: &str, sams: &[String], scratch: &Path) -> Result<Vec<AdUser>> {
    let mut ldif = String::with_capacity(sams.len() * 120);
    for sam in sams {
        ldif.push_str(&format!("dn: CN={sam},{ou_dn}\nobjectClass: user\nsAMAccountName: {sam}\n\n"));
    }
    let path = scratch.join("users.ldif");
    std::fs::write(&path, ldif).with_context(|| format!("writing {}", path.display()))?;
    ldapadd(dc, None, &path).await.context("creating the users")?;
    read_users(dc, ou_dn, sams).await
}

/// The users named `sams` directly in `ou_dn`, in the order of `sams`.
async fn read_users(dc: &TestDc, ou_dn: &str, sams: &[String]) -> Result<Vec<AdUser>> {
    let mut ldap = dc.admin().await?;
    let entries =
        paged_search(&mut ldap, ou_dn, Scope::OneLevel, "(objectClass=user)", &["sAMAccountName", "objectSid"]).await?;
    ldap.unbind().await.ok();
    let wanted: HashSet<&str> = sams.iter().map(String::as_str).collect();
    let mut found = HashMap::new();
    for entry in entries {
        let Some(sam) = first_value(&entry, "sAMAccountName").map(str::to_owned) else { continue };
        if !wanted.contains(sam.as_str()) {
            continue;
        }
        let bytes = binary_value(&entry, "objectSid").with_context(|| format!("{} has no objectSid", entry.dn))?;
        let sid = sid_to_string(&bytes).with_context(|| format!("{}: objectSid", entry.dn))?;
        found.insert(sam.clone(), AdUser { sam, dn: entry.dn, sid });
    }
    sams.iter()
        .map(|sam| found.remove(sam).with_context(|| format!("user {sam} was not found in {ou_dn} after ldapadd")))
        .collect()
}

/// A paged search (500 per page), so thousands of entries do not hit the server's size limit.
pub async fn paged_search(
    ldap: &mut Ldap,
    base: &str,
    scope: Scope,
    filter: &str,
    attrs: &[&str],
) -> Result<Vec<SearchEntry>> {
    let attrs: Vec<String> = attrs.iter().map(ToString::to_string).collect();
    let adapters: Vec<Box<dyn Adapter<_, _>>> = vec![Box::new(EntriesOnly::new()), Box::new(PagedResults::new(500))];
    let context = || format!("searching {base} for {filter}");
    let mut stream = ldap.streaming_search_with(adapters, base, scope, filter, attrs).await.with_context(context)?;
    let mut entries = Vec::new();
    while let Some(entry) = stream.next().await.with_context(context)? {
        entries.push(SearchEntry::construct(entry));
    }
    stream.finish().await.success().with_context(context)?;
    Ok(entries)
}

/// How many objects the DC's domain partition holds (live ones; deleted objects are not counted).
pub async fn count_objects(dc: &TestDc) -> Result<usize> {
    let mut ldap = dc.admin().await?;
    let base = dc.info().base_dn.clone();
    let entries = paged_search(&mut ldap, &base, Scope::Subtree, "(objectClass=*)", &["1.1"]).await?;
    ldap.unbind().await.ok();
    Ok(entries.len())
}

/// Adds `count` groups without members to the OU at `ou_dn` (one LDIF, one `ldapadd`), to grow the DC.
pub async fn add_filler_groups(dc: &TestDc, ou_dn: &str, count: usize, scratch: &Path) -> Result<Duration> {
    let mut ldif = String::with_capacity(count * 160);
    for i in 0..count {
        ldif.push_str(&format!(
            "dn: CN=Filler {i:06},{ou_dn}\nobjectClass: group\nsAMAccountName: filler{i:06}\ndescription: grows the DC\n\n"
        ));
    }
    let path = scratch.join("filler.ldif");
    std::fs::write(&path, ldif).with_context(|| format!("writing {}", path.display()))?;
    ldapadd(dc, None, &path).await.context("adding the filler groups")
}

/// Whether the group at `group_dn` lists `member_dn` as a `member` value (one base search, equality match).
pub async fn has_member(ldap: &mut Ldap, group_dn: &str, member_dn: &str) -> Result<bool> {
    let filter = format!("(member={})", ldap_escape(member_dn));
    let SearchResult(entries, result) = ldap
        .search(group_dn, Scope::Base, &filter, vec!["1.1"])
        .await
        .with_context(|| format!("searching {group_dn}"))?;
    result.success().with_context(|| format!("searching {group_dn} for member {member_dn}"))?;
    Ok(!entries.is_empty())
}

/// How many objects in the subtree at `base` changed after `usn` (`uSNChanged > usn`). Objects deleted since
/// have left the subtree and are not counted.
pub async fn changed_since(dc: &TestDc, base: &str, usn: u64) -> Result<usize> {
    let mut ldap = dc.admin().await?;
    let filter = format!("(uSNChanged>={})", usn + 1);
    let entries = paged_search(&mut ldap, base, Scope::Subtree, &filter, &["1.1"]).await?;
    ldap.unbind().await.ok();
    Ok(entries.len())
}

/// Waits until `group_dn` lists `member_dn`, polling every `poll`; fails after `timeout`.
pub async fn wait_for_member(
    ldap: &mut Ldap,
    group_dn: &str,
    member_dn: &str,
    poll: Duration,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if has_member(ldap, group_dn, member_dn).await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{member_dn} did not appear in {group_dn} within {timeout:?}");
        }
        tokio::time::sleep(poll).await;
    }
}

/// Unbinds, ignoring a connection that is already gone.
pub async fn close(mut ldap: Ldap) {
    let _: Result<(), _> = ldap.unbind().await;
}
