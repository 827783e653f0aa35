//! Security behaviour end to end: protected groups, TLS verification, file permissions, hostile names and
//! secrets that never show.

use std::collections::HashSet;

use ldap3::Mod;
use writeback_tests::dc::UNIVERSAL_SECURITY;
use writeback_tests::e2e::{Env, enabled_group, new_id, text};
use writeback_tests::graphsim::MemberRef;

#[tokio::test]
async fn members_are_not_added_to_groups_nested_in_protected_groups() -> anyhow::Result<()> {
    let mut env = Env::new("protected").await?;
    let (u1, _) = env.synced_user("prot-u1").await?;
    let (u2, u2_ad) = env.synced_user("prot-u2").await?;
    let (id, listed_id) = (new_id(), new_id());
    env.sim.add_group(enabled_group(&id, "Helpdesk", &[&u1])).unwrap();
    env.sim.add_group(enabled_group(&listed_id, "Listed", &[&u1])).unwrap();
    env.sync(&[]).await?;
    let group = env.group(&id).await?.unwrap();
    let listed = env.group(&listed_id).await?.unwrap();

    // On-prem, an admin nests the group (through another one) into a group carrying adminCount=1, and a
    // second one into a group the tenant lists as protected.
    let tier0 = env.dc.create_group(&env.ou.users_dn, "Tier0 Admins", UNIVERSAL_SECURITY).await?;
    let middle = env.dc.create_group(&env.ou.users_dn, "Middle", UNIVERSAL_SECURITY).await?;
    let vault = env.dc.create_group(&env.ou.users_dn, "Vault Admins", UNIVERSAL_SECURITY).await?;
    let mut ldap = env.dc.admin().await?;
    ldap.modify(
        &tier0.dn,
        vec![Mod::Replace("adminCount", HashSet::from(["1"])), Mod::Add("member", HashSet::from([middle.dn.as_str()]))],
    )
    .await?
    .success()?;
    env.dc.add_member(&middle.dn, &group.dn).await?;
    env.dc.add_member(&vault.dn, &listed.dn).await?;
    env.tenant_settings(&format!("protected_groups = [\"{}\"]", writeback_tests::e2e::toml_escape(&vault.dn)))?;

    env.sim.add_members(&id, &[MemberRef::user(&u2)]).unwrap();
    env.sim.add_members(&listed_id, &[MemberRef::user(&u2)]).unwrap();
    env.sync(&[]).await?;
    assert_eq!(env.group(&id).await?.unwrap().members.len(), 1, "the add was refused");
    assert_eq!(env.group(&listed_id).await?.unwrap().members.len(), 1, "the add was refused");
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains("Tier0 Admins") && status.contains("Vault Admins"), "{status}");
    assert!(status.contains("allow_protected_groups"), "{status}");

    // An admin who means it allows the group; a full cycle then adds the member.
    env.tenant_settings(&format!("allow_protected_groups = [\"{id}\"]"))?;
    env.sync(&["--full"]).await?;
    let members = env.group(&id).await?.unwrap().members;
    assert!(members.iter().any(|m| writeback::dn::same(m, &u2_ad.dn)), "{members:?}");
    assert_eq!(env.group(&listed_id).await?.unwrap().members.len(), 1, "the other group is still protected");
    Ok(())
}

#[tokio::test]
async fn insecure_skip_verify_connects_to_an_unknown_ca_and_says_so_loudly() -> anyhow::Result<()> {
    let env = Env::new("insecure").await?;
    env.trust_another_ca()?;
    assert!(!env.run(&["sync", "--once"]).await?.status.success(), "an unknown CA is refused by default");
    env.edit_config(|t| t.replace("target_ou = ", "insecure_skip_verify = true\ntarget_ou = "))?;
    let output = env.sync(&[]).await?;
    let stderr = text(&output.stderr);
    assert!(
        stderr.lines().any(|l| l.contains("WARN") && l.contains("INSECURE") && l.contains("NOT verified")),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn world_readable_secret_and_config_files_are_warned_about() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new("perms").await?;
    let secret = env.dir.path().join("client.secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644))?;
    std::fs::set_permissions(&env.config_path, std::fs::Permissions::from_mode(0o644))?;
    let stderr = text(&env.sync(&[]).await?.stderr);
    assert!(stderr.contains("client secret is readable by every user"), "{stderr}");
    assert!(stderr.contains("the config file is readable by every user"), "{stderr}");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    std::fs::set_permissions(&env.config_path, std::fs::Permissions::from_mode(0o600))?;
    let stderr = text(&env.sync(&[]).await?.stderr);
    assert!(!stderr.contains("readable by every user"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn hostile_display_names_are_written_exactly_or_refused() -> anyhow::Result<()> {
    let env = Env::new("hostile").await?;
    let names = [
        "Domain Admins",
        "Administrators",
        "krbtgt",
        "*)(objectClass=*",
        r"\2a\29",
        "#leading hash",
        " leading space",
        "trailing space ",
        r#",+"\<>;="#,
        "名前 ✓ Ünïcødé",
        "a\u{0}b",
        "line\nfeed",
        "tab\tinside",
        &"long".repeat(100),
    ];
    let ids: Vec<String> = names.iter().map(|_| new_id()).collect();
    for (id, name) in ids.iter().zip(names) {
        env.sim.add_group(enabled_group(id, name, &[])).unwrap();
    }
    let base = env.dc.info().base_dn.clone();
    let well_known = [
        format!("CN=Domain Admins,CN=Users,{base}"),
        format!("CN=Administrators,CN=Builtin,{base}"),
        format!("CN=krbtgt,CN=Users,{base}"),
    ];
    let mut usn_before = Vec::new();
    for dn in &well_known {
        usn_before.push(env.dc.subtree_usn(dn).await?);
    }
    env.sync(&[]).await?;
    let status = text(&env.run(&["status"]).await?.stdout);
    for (id, name) in ids.iter().zip(names) {
        match env.group(id).await? {
            Some(group) => {
                let shown: String = name.chars().take(256).collect();
                assert_eq!(group.display_name, Some(shown), "displayName is exact up to AD's 256 characters");
                let cut: String = name.trim().chars().take(51).collect();
                assert_eq!(group.cn, format!("{}_{}", cut.trim_end(), &id[id.len() - 12..]));
                assert!(writeback::dn::is_within(&group.dn, &env.ou.groups_dn), "{}", group.dn);
            }
            None => {
                assert!(name.chars().any(char::is_control), "{name:?} was neither written nor should be refused");
                assert!(
                    status.contains(&format!("group {id}: the display name contains a control character")),
                    "{status}"
                );
            }
        }
    }
    let written = env.groups().await?.len();
    assert_eq!(written, names.iter().filter(|n| !n.chars().any(char::is_control)).count());
    // The well-known objects whose names the groups borrow are untouched, and none of the groups landed
    // outside the test's OU.
    for (dn, usn) in well_known.iter().zip(usn_before) {
        assert_eq!(env.dc.subtree_usn(dn).await?, usn, "{dn} was modified");
    }
    let anchors: HashSet<String> = ids.iter().map(|id| format!("Group_{id}")).collect();
    let everywhere = env.dc.groups_under(&base).await?;
    let ours: Vec<_> =
        everywhere.iter().filter(|g| g.admin_description.as_ref().is_some_and(|a| anchors.contains(a))).collect();
    assert_eq!(ours.len(), written);
    assert!(ours.iter().all(|g| writeback::dn::is_within(&g.dn, &env.ou.groups_dn)));
    Ok(())
}

#[tokio::test]
async fn secrets_never_appear_in_any_output() -> anyhow::Result<()> {
    let env = Env::new("secrets").await?;
    let (u1, _) = env.synced_user("secret-u1").await?;
    env.sim.add_group(enabled_group(&new_id(), "Secretive", &[&u1])).unwrap();
    let mut outputs = Vec::new();
    for args in [&["plan"][..], &["sync", "--once"], &["status"], &["sync", "--once", "--full"]] {
        let output = env.run(args).await?;
        outputs.push(text(&output.stdout));
        outputs.push(text(&output.stderr));
    }
    let bad = env.dir.path().join("wrong.password");
    std::fs::write(&bad, "a-wrong-password-7f3k")?;
    let original = env.dc.info().admin_password_file.display().to_string();
    env.edit_config(|t| t.replace(&original, &bad.display().to_string()))?;
    let failed = env.run(&["sync", "--once"]).await?;
    outputs.push(text(&failed.stderr));
    outputs.push(std::fs::read_to_string(env.state_dir().join("status.json"))?);
    outputs.push(format!("{:?}", env.state_audit().await?));
    let mut secrets = env.secrets();
    secrets.push("a-wrong-password-7f3k".into());
    for output in &outputs {
        for secret in &secrets {
            assert!(!output.contains(secret.as_str()), "a secret leaked into: {output}");
        }
    }
    Ok(())
}
