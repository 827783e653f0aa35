//! The Samba DC harness against the real, shared DC: objects it creates,
//! SID-form members, and highestCommittedUSN as a write counter.

use std::collections::HashSet;
use std::process::Command;
use std::thread;

use anyhow::{Context, Result, ensure};
use ldap3::{LdapConnAsync, LdapError, Mod};
use writeback_tests::dc::{
    ADMIN_DN, AdObject, DcInfo, LDAP_PORT, LISTEN_IP, TestDc, TestOu, UNIVERSAL_SECURITY, first_value,
};

#[tokio::test]
async fn creates_objects_resolves_sid_members_and_counts_writes() -> Result<()> {
    let dc = TestDc::shared()?;
    let ou = dc.test_ou("dc-harness").await?;
    let outcome = exercise(&dc, &ou).await;
    dc.delete_tree(&ou.dn).await?;
    outcome?;
    ensure!(dc.entry(&ou.dn, &["ou"]).await?.is_none(), "{} still exists after delete_tree", ou.dn);
    Ok(())
}

async fn exercise(dc: &TestDc, ou: &TestOu) -> Result<()> {
    for dn in [&ou.users_dn, &ou.groups_dn] {
        ensure!(dc.entry(dn, &["ou"]).await?.is_some(), "{dn} missing");
    }
    let user = dc.create_user(&ou.users_dn, "harness-user").await?;
    let group = dc.create_group(&ou.groups_dn, "harness-group", UNIVERSAL_SECURITY).await?;
    check_identities(dc, &user).await?;
    check_identities(dc, &group).await?;

    // Other tests write to the shared DC at the same time, so reads are checked against this OU's
    // objects only; the global counter is only asked to move forward on a write.
    let before_reads = dc.subtree_usn(&ou.dn).await?;
    dc.groups_under(&ou.dn).await?;
    dc.entry(&user.dn, &["objectSid"]).await?;
    let after_reads = dc.subtree_usn(&ou.dn).await?;
    ensure!(before_reads == after_reads, "reads moved the USN: {before_reads} -> {after_reads}");

    let global_before = dc.highest_committed_usn().await?;
    add_member_by_sid(dc, &group.dn, &user.sid).await?;
    ensure!(dc.highest_committed_usn().await? > global_before, "a write did not move highestCommittedUSN");
    let after_write = dc.subtree_usn(&ou.dn).await?;
    ensure!(after_write > after_reads, "a write did not move the USN: {after_reads} -> {after_write}");

    let groups = dc.groups_under(&ou.dn).await?;
    let [read] = groups.as_slice() else {
        anyhow::bail!("expected one group under {}, got {groups:?}", ou.dn);
    };
    ensure!(read.guid == group.guid && read.sid == group.sid, "{read:?} vs {group:?}");
    ensure!(read.sam == "harness-group", "sAMAccountName {:?}", read.sam);
    ensure!(read.group_type == UNIVERSAL_SECURITY, "groupType {}", read.group_type);
    // The member was written as <SID=…> and must read back as the user's DN.
    let [member] = read.members.as_slice() else {
        anyhow::bail!("expected one member, got {:?}", read.members);
    };
    ensure!(member.eq_ignore_ascii_case(&user.dn), "member {member} is not {}", user.dn);
    Ok(())
}

/// The SID and GUID strings must be the forms AD itself accepts: looking the
/// object up by `<SID=…>` and `<GUID=…>` finds it.
async fn check_identities(dc: &TestDc, object: &AdObject) -> Result<()> {
    ensure!(object.sid.starts_with("S-1-5-21-"), "SID {}", object.sid);
    for key in [format!("<SID={}>", object.sid), format!("<GUID={}>", object.guid)] {
        let found = dc.entry(&key, &["cn"]).await?;
        let dn = found.map(|entry| entry.dn).unwrap_or_default();
        ensure!(dn.eq_ignore_ascii_case(&object.dn), "{key} finds {dn:?}, not {}", object.dn);
    }
    Ok(())
}

/// Written through a raw admin connection, the way the agent writes members.
async fn add_member_by_sid(dc: &TestDc, group_dn: &str, sid: &str) -> Result<()> {
    let mut ldap = dc.admin().await?;
    let value = format!("<SID={sid}>");
    ldap.modify(group_dn, vec![Mod::Add("member", HashSet::from([value.as_str()]))])
        .await?
        .success()
        .with_context(|| format!("adding {value} to {group_dn}"))?;
    ldap.unbind().await?;
    Ok(())
}

/// Many test processes call `shared()` at once at the start of a run; they
/// must all get the one DC rather than race to provision their own.
#[test]
fn concurrent_callers_share_one_dc() -> Result<()> {
    let pids: Vec<u32> = thread::scope(|scope| {
        let callers: Vec<_> = (0..4).map(|_| scope.spawn(|| TestDc::shared().map(|dc| dc.info().pid))).collect();
        callers.into_iter().map(|caller| caller.join().expect("caller panicked")).collect::<Result<_>>()
    })?;
    ensure!(pids.iter().all(|&pid| pid == pids[0]), "callers got different DCs: {pids:?}");
    let again = TestDc::shared()?;
    ensure!(again.info().pid == pids[0], "DC changed between calls");
    Ok(())
}

#[tokio::test]
async fn root_dse_names_the_test_domain() -> Result<()> {
    let dc = TestDc::shared()?;
    let root = dc.entry("", &["defaultNamingContext"]).await?.context("no rootDSE")?;
    let naming_context = first_value(&root, "defaultNamingContext");
    ensure!(naming_context == Some(dc.info().base_dn.as_str()), "defaultNamingContext {naming_context:?}");
    Ok(())
}

/// The agent reports a bad password as such, so the DC must say 49.
#[tokio::test]
async fn wrong_password_is_invalid_credentials() -> Result<()> {
    let dc = TestDc::shared()?;
    let Err(error) = dc.connect_as(ADMIN_DN, "not-the-password").await else {
        anyhow::bail!("bind with a wrong password succeeded");
    };
    ensure!(ldap_rc(&error) == Some(49), "expected invalidCredentials: {error:#}");
    Ok(())
}

/// Samba refuses simple binds without TLS (strongerAuthRequired), so nothing
/// can send the password in clear text by mistake.
#[tokio::test]
async fn plaintext_simple_bind_is_refused() -> Result<()> {
    let dc = TestDc::shared()?;
    let url = format!("ldap://{LISTEN_IP}:{LDAP_PORT}");
    let (conn, mut ldap) = LdapConnAsync::new(&url).await?;
    ldap3::drive!(conn);
    let result = ldap.simple_bind(ADMIN_DN, dc.admin_password()).await?;
    ensure!(result.rc == 8, "expected strongerAuthRequired, got {result}");
    Ok(())
}

fn ldap_rc(error: &anyhow::Error) -> Option<u32> {
    error.chain().find_map(|cause| match cause.downcast_ref::<LdapError>() {
        Some(LdapError::LdapResult { result }) => Some(result.rc),
        _ => None,
    })
}

/// The harness verifies samba's certificate for real: trusting a different CA
/// must make the connection fail.
#[tokio::test]
async fn certificate_from_another_ca_is_rejected() -> Result<()> {
    let dc = TestDc::shared()?;
    let scratch = tempfile::tempdir()?;
    let other_ca = scratch.path().join("other-ca.pem");
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-days", "1", "-subj", "/CN=other CA", "-keyout"])
        .arg(scratch.path().join("other-ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .status()?;
    ensure!(status.success(), "openssl failed: {status}");
    let untrusting = TestDc::from_info(DcInfo { ca_file: other_ca, ..dc.info().clone() })?;
    let Err(error) = untrusting.admin().await else {
        anyhow::bail!("connected although samba's CA is not trusted");
    };
    ensure!(format!("{error:#}").contains("certificate"), "expected a certificate error: {error:#}");
    Ok(())
}
