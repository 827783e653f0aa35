//! The directory layer through the library API against the real DC: TLS modes, schema detection and SID
//! resolution.

use writeback::config::{DirectoryConfig, Secret};
use writeback::directory::Directory;
use writeback_tests::dc::TestDc;

fn config(dc: &TestDc, url: &str, target_ou: &str) -> DirectoryConfig {
    let info = dc.info();
    DirectoryConfig {
        url: url.into(),
        bind_dn: info.admin_dn.clone(),
        password_file: Some(info.admin_password_file.clone()),
        password_env: None,
        ca_file: Some(info.ca_file.clone()),
        target_ou: target_ou.into(),
        timeout: std::time::Duration::from_secs(10),
        insecure_skip_verify: false,
    }
}

#[tokio::test]
async fn ldap_urls_are_upgraded_with_starttls_and_the_schema_is_read() -> anyhow::Result<()> {
    let dc = tokio::task::spawn_blocking(TestDc::shared).await??;
    let ou = dc.test_ou("starttls").await?;
    let password = Secret::new(dc.admin_password().to_string());
    for url in ["ldap://127.0.0.1:389", "ldaps://127.0.0.1:636"] {
        let directory = Directory::connect(&config(&dc, url, &ou.groups_dn), &password).await?;
        assert_eq!(directory.base_dn, dc.info().base_dn, "{url}");
        // Samba's default (2012 R2) schema has neither Exchange's mailNickname nor the 2016 attribute.
        assert!(
            !directory.schema.has("mailNickname") && !directory.schema.has("msDS-ExternalDirectoryObjectId"),
            "{url}"
        );
        directory.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn sids_resolve_to_existing_principals_only() -> anyhow::Result<()> {
    let dc = tokio::task::spawn_blocking(TestDc::shared).await??;
    let ou = dc.test_ou("sids").await?;
    let user = dc.create_user(&ou.users_dn, "sid-user").await?;
    let local = dc.create_group(&ou.users_dn, "sid-local", writeback_tests::dc::DOMAIN_LOCAL_SECURITY).await?;
    let password = Secret::new(dc.admin_password().to_string());
    let mut directory = Directory::connect(&config(&dc, &dc.info().url, &ou.groups_dn), &password).await?;
    // A SID of this domain that names nothing would become a foreign security principal if written.
    let unknown = format!("{}-999999", user.sid.rsplit_once('-').unwrap().0);
    let sids = vec![user.sid.clone(), local.sid.clone(), unknown.clone(), "not a sid".to_string()];
    let found = directory.principals(&sids).await?;
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(writeback::dn::same(&found[&user.sid.to_uppercase()].dn, &user.dn));
    assert_eq!(found[&user.sid.to_uppercase()].group_type, None);
    assert_eq!(found[&local.sid.to_uppercase()].group_type, Some(writeback_tests::dc::DOMAIN_LOCAL_SECURITY));
    directory.close().await;
    Ok(())
}

/// A take-over adds the anchor, so it cannot overwrite an adminDescription set after the group was read, and the
/// rest of its write is not applied then either. Groups are found by SID, and only groups.
#[tokio::test]
async fn a_take_over_adds_the_anchor_and_changes_nothing_when_the_group_gained_one() -> anyhow::Result<()> {
    use writeback::directory::ApplyError;
    use writeback::plan::{AttributeChange, Op};
    let dc = tokio::task::spawn_blocking(TestDc::shared).await??;
    let ou = dc.test_ou("take-over").await?;
    let free = dc.create_group(&ou.users_dn, "to-take", writeback_tests::dc::GLOBAL_SECURITY).await?;
    let raced = dc.create_group(&ou.users_dn, "raced", writeback_tests::dc::GLOBAL_SECURITY).await?;
    let user = dc.create_user(&ou.users_dn, "not-a-group").await?;
    let password = Secret::new(dc.admin_password().to_string());
    let mut directory = Directory::connect(&config(&dc, &dc.info().url, &ou.groups_dn), &password).await?;
    let found = directory.groups_by_sid(&[free.sid.clone(), raced.sid.clone(), user.sid.clone(), "x".into()]).await?;
    assert_eq!(found.len(), 2, "groups only: {:?}", found.keys());
    assert_eq!(found[&free.sid.to_uppercase()].guid, free.guid);

    let take_over = |group: &writeback_tests::dc::AdObject| Op::TakeOver {
        group_id: "g".into(),
        guid: group.guid.clone(),
        dn: group.dn.clone(),
        sid: group.sid.clone(),
        changes: vec![
            AttributeChange::Replace("adminDescription".into(), vec!["Group_mine".into()]),
            AttributeChange::Replace("description".into(), vec!["from the cloud".into()]),
        ],
    };
    directory.apply(&take_over(&free), &Default::default()).await?;
    let entry = dc.entry(&free.dn, &["adminDescription", "description"]).await?.expect("still there");
    assert_eq!(writeback_tests::dc::first_value(&entry, "adminDescription"), Some("Group_mine"));

    // Something set its adminDescription between the read and the write.
    dc.set_attribute(&raced.dn, "adminDescription", "Group_DoNotSync").await?;
    let refused = directory.apply(&take_over(&raced), &Default::default()).await;
    assert!(matches!(refused, Err(ApplyError::AnchorTaken { .. })), "{refused:?}");
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("its adminDescription was set after it was read; it was not taken over"), "{message}");
    let entry = dc.entry(&raced.dn, &["adminDescription", "description"]).await?.expect("still there");
    assert_eq!(writeback_tests::dc::first_value(&entry, "adminDescription"), Some("Group_DoNotSync"));
    assert_eq!(writeback_tests::dc::first_value(&entry, "description"), None, "nothing of the write applied");
    directory.close().await;
    Ok(())
}
