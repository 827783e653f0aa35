//! The agent needs no admin rights: a plain account with exactly the rights the README lists on the target
//! OU does everything (create, rename, members, delete, the lease, doctor's probe), and the same account
//! without them is refused with one line naming the cause.

use anyhow::Result;
use writeback_tests::agents::share_tenant;
use writeback_tests::e2e::{Env, enabled_group, new_id, text, toml_escape};
use writeback_tests::graphsim::{Group, GroupPatch, MemberRef, WritebackConfiguration};

/// The `group` and `container` schema classes.
const GROUP_CLASS: &str = "bf967a9c-0de6-11d0-a285-00aa003049e2";
const CONTAINER_CLASS: &str = "bf967a8b-0de6-11d0-a285-00aa003049e2";

/// The ACEs the README documents for the bind account on the target OU, for the account with SID `sid`.
fn documented_rights(sid: &str) -> String {
    format!(
        "(OA;CI;CCDC;{GROUP_CLASS};;{sid})(OA;CIIO;RPWPLCLORC;;{GROUP_CLASS};{sid})\
         (OA;CI;CC;{CONTAINER_CLASS};;{sid})(OA;CIIO;RPWPLCLORC;;{CONTAINER_CLASS};{sid})"
    )
}

/// The one ACE the README documents on each `[tenant.adopt] ous` entry: read and write the properties of its
/// groups, for the account with SID `sid`.
fn documented_takeover_rights(sid: &str) -> String {
    format!("(OA;CIIO;RPWPLCLORC;;{GROUP_CLASS};{sid})")
}

/// A world whose config binds as a new non-admin account; returns the account's SID.
async fn delegated_world(name: &str) -> Result<(Env, String)> {
    let mut env = Env::new(name).await?;
    share_tenant(&mut env, "6s")?;
    // The lease object goes to its default place under the target OU, whose rights are the documented ones.
    env.edit_config(|t| t.lines().filter(|l| !l.starts_with("dn = ")).collect::<Vec<_>>().join("\n"))?;
    let password = format!("Wb-{}-aA1!", &new_id()[..13]);
    let account = env.dc.create_account(&env.ou.users_dn, &format!("svc-{}", &new_id()[..8]), &password).await?;
    let password_file = env.dir.path().join("svc.password");
    std::fs::write(&password_file, &password)?;
    std::fs::set_permissions(&password_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let (admin_dn, admin_password) =
        (env.dc.info().admin_dn.clone(), env.dc.info().admin_password_file.display().to_string());
    env.edit_config(|t| {
        t.replace(&format!("bind_dn = \"{admin_dn}\""), &format!("bind_dn = \"{}\"", toml_escape(&account.dn)))
            .replace(&admin_password, &password_file.display().to_string())
    })?;
    Ok((env, account.sid))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegated_account_with_the_documented_rights_does_everything() -> Result<()> {
    let (env, sid) = delegated_world("least-priv").await?;
    env.dc.grant(&env.ou.groups_dn, &documented_rights(&sid))?;
    let (alice, _) = env.synced_user("lp-alice").await?;
    let (bob, _) = env.synced_user("lp-bob").await?;
    let (keep, gone) = (new_id(), new_id());
    env.sim.add_group(enabled_group(&keep, "Keep", &[&alice, &bob])).unwrap();
    env.sim.add_group(enabled_group(&gone, "Gone", &[&alice])).unwrap();
    env.sync(&[]).await?;
    assert_eq!(env.group(&keep).await?.expect("created").members.len(), 2);

    env.sim.update_group(&keep, GroupPatch { display_name: Some("Kept".into()), ..Default::default() }).unwrap();
    env.sim.remove_members(&keep, &[&bob]).unwrap();
    env.sim.hard_delete_group(&gone).unwrap();
    env.sync(&[]).await?;
    let kept = env.group(&keep).await?.expect("still there");
    assert!(kept.cn.starts_with("Kept_"), "renamed: {}", kept.cn);
    assert_eq!(kept.members.len(), 1);
    assert!(env.group(&gone).await?.is_none(), "deleted");
    assert!(
        env.dc.entry(&format!("CN=writeback-lease,{}", env.ou.groups_dn), &["1.1"]).await?.is_some(),
        "the lease object was created"
    );

    let doctor = env.run(&["doctor"]).await?;
    assert!(doctor.status.success(), "{}{}", text(&doctor.stdout), text(&doctor.stderr));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_account_without_the_rights_is_refused_with_the_cause() -> Result<()> {
    let (env, _) = delegated_world("least-priv-none").await?;
    let (alice, _) = env.synced_user("lpn-alice").await?;
    env.sim.add_group(enabled_group(&new_id(), "Denied", &[&alice])).unwrap();
    let output = env.run(&["sync", "--once"]).await?;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("insufficient access rights"), "{stderr}");
    assert!(env.groups().await?.is_empty(), "nothing was written");
    Ok(())
}

/// Taking over a converted group needs only the documented ACE on the OU it is in: the group existed before the
/// ACE was granted, as it does in a real domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegated_account_with_the_documented_rights_takes_over_a_converted_group() -> Result<()> {
    let (env, sid) = delegated_world("least-priv-adopt").await?;
    env.dc.grant(&env.ou.groups_dn, &documented_rights(&sid))?;
    let legacy = env.dc.create_ou(&env.ou.dn, "Legacy").await?;
    let (alice, alice_ad) = env.synced_user("lpa-alice").await?;
    let bob = env.dc.create_user(&env.ou.users_dn, "lpa-bob").await?;
    let original = env.dc.create_group(&legacy, "Legacy Ops", writeback_tests::dc::GLOBAL_SECURITY).await?;
    env.dc.add_member(&original.dn, &bob.dn).await?;
    // Edited in place: rewriting the config would bind as the admin again. This test is about rights, not
    // failover, so the tenant is not shared: a lease of the shortest ttl can lapse under a loaded suite.
    env.edit_config(|t| {
        let lease = |l: &&str| *l == "[tenant.lease]" || l.starts_with("ttl = ") || l.starts_with("renew_every = ");
        let unshared: Vec<&str> = t.lines().filter(|l| !lease(l)).collect();
        let unshared = unshared.join("\n");
        format!("{unshared}\n[tenant.adopt]\nous = [\"{legacy}\"]\n")
    })?;
    assert!(!std::fs::read_to_string(&env.config_path)?.contains("[tenant.lease]"), "the tenant is not shared");
    let id = new_id();
    let mut group = Group::converted(&id, "Ops", &original.sid);
    group.writeback = Some(WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: None });
    group.members = vec![MemberRef::user(&alice)];
    env.sim.add_group(group).unwrap();
    // Without the ACE, the take-over is refused by the DC and the group is left as it was.
    env.run(&["sync", "--once"]).await?;
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains("insufficient access rights"), "{status}");
    assert!(env.group(&id).await?.is_none(), "not taken over");

    env.dc.grant(&legacy, &documented_takeover_rights(&sid))?;
    let output = env.run(&["sync", "--once"]).await?;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let taken = env.group(&id).await?.expect("taken over");
    assert_eq!(taken.guid, original.guid);
    assert_eq!(taken.members.len(), 1, "{:?}", taken.members);
    assert!(writeback::dn::same(&taken.members[0], &alice_ad.dn));
    Ok(())
}
