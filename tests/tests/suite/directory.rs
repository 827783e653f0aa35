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

/// The reads around an initial sync cost the DC as little as the writes allow: principals looked up by SID and
/// groups just created are read with one search per hundred, and without the paged results control, which
/// makes Samba find every match and then fetch each one again. Creates that failed are not read back.
#[tokio::test]
async fn sid_lookups_and_read_backs_of_new_groups_take_one_unpaged_search_per_hundred() -> anyhow::Result<()> {
    use writeback::directory::{Applied, ApplyError};
    use writeback::plan::Op;
    use writeback_tests::ldap_proxy::FaultProxy;
    let dc = tokio::task::spawn_blocking(TestDc::shared).await??;
    let ou = dc.test_ou("read-back").await?;
    let user = dc.create_user(&ou.users_dn, "read-back-user").await?;
    let taken = dc.create_group(&ou.groups_dn, "read-back-taken", writeback_tests::dc::GLOBAL_SECURITY).await?;
    let proxy = FaultProxy::start(&dc)?;
    let password = Secret::new(dc.admin_password().to_string());
    let mut directory = Directory::connect(&config(&dc, proxy.url(), &ou.groups_dn), &password).await?;

    // 150 SIDs of this domain that name nothing, and the user's.
    let domain = user.sid.rsplit_once('-').unwrap().0;
    let mut sids: Vec<String> = (0..150).map(|i| format!("{domain}-{}", 900_000 + i)).collect();
    sids.push(user.sid.clone());
    let before = proxy.searches();
    let found = directory.principals(&sids).await?;
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(writeback::dn::same(&found[&user.sid.to_uppercase()].dn, &user.dn));
    let after = proxy.searches();
    assert_eq!((after.0 - before.0, after.1 - before.1), (2, 0), "searches, paged ones: two chunks, no paging");

    // sAMAccountNames are unique in the domain: the OU's random suffix keeps each run's apart.
    let rdn = ou.dn.split(',').next().unwrap();
    let sam = |i: usize| format!("rb{}{i:03}", &rdn[rdn.len() - 6..]);
    let create = |cn: String, sam: String, anchor: String| Op::Create {
        group_id: anchor.clone(),
        dn: format!("CN={cn},{}", ou.groups_dn),
        attributes: vec![
            ("objectClass".into(), vec!["group".into()]),
            ("sAMAccountName".into(), vec![sam]),
            ("adminDescription".into(), vec![format!("Group_{anchor}")]),
        ],
    };
    let mut ops: Vec<Op> = (0..120).map(|i| create(format!("rb {i}"), sam(i), format!("id-{i}"))).collect();
    // Its CN is taken: the DC refuses it, and the others are still read back.
    ops.push(create("read-back-taken".into(), sam(999), "id-taken".into()));
    let refs: Vec<&Op> = ops.iter().collect();
    let before = proxy.searches();
    let results = directory.apply_all(&refs, &Default::default(), &|| true).await;
    let after = proxy.searches();
    assert_eq!((after.0 - before.0, after.1 - before.1), (2, 0), "120 new groups read back in two searches");
    let groups = dc.groups_under(&ou.groups_dn).await?;
    for (i, result) in results[..120].iter().enumerate() {
        let Some(Ok(Applied::Created { guid, sid, dn })) = result else { panic!("group {i}: {result:?}") };
        let stored = groups.iter().find(|g| g.sam == sam(i)).expect("created");
        assert_eq!((guid, sid.as_deref()), (&stored.guid, Some(stored.sid.as_str())), "group {i}");
        assert!(writeback::dn::same(dn, &stored.dn), "{dn} is {}", stored.dn);
    }
    assert!(matches!(results[120], Some(Err(ApplyError::Conflict { .. }))), "{:?}", results[120]);
    assert!(groups.iter().any(|g| g.guid == taken.guid), "the group whose CN was taken is untouched");
    directory.close().await;
    Ok(())
}

/// A reconcile lists the domain's anchored groups once and then asks only for those changed since: an anchor
/// that someone else sets during the reconcile is seen by its next batch, as is a group this agent created.
#[tokio::test]
async fn a_held_listing_of_anchored_groups_sees_anchors_set_since() -> anyhow::Result<()> {
    let dc = tokio::task::spawn_blocking(TestDc::shared).await??;
    let ou = dc.test_ou("held-listing").await?;
    let password = Secret::new(dc.admin_password().to_string());
    let mut directory = Directory::connect(&config(&dc, &dc.info().url, &ou.groups_dn), &password).await?;
    let ous = vec![ou.groups_dn.clone()];
    directory.hold_listing(true);
    assert!(directory.managed_index(&ous).await?.is_empty());
    // More than 100 ids, so the batch reads the listing rather than naming each anchor.
    let mut ids: Vec<String> = (0..120).map(|i| format!("00000000-0000-4000-8000-{i:012}")).collect();
    let id = "1d2c3b4a-0000-4000-8000-000000000001".to_string();
    ids.push(id.clone());
    let group = dc.create_group(&ou.groups_dn, "anchored-meanwhile", writeback_tests::dc::GLOBAL_SECURITY).await?;
    dc.set_attribute(&group.dn, "adminDescription", &format!("Group_{id}")).await?;
    let found = directory.managed_groups(&ids, &Default::default(), &ous).await?;
    assert_eq!(found.groups.keys().collect::<Vec<_>>(), [&id], "{found:?}");
    assert_eq!(found.groups[&id].guid, group.guid);
    let index = directory.managed_index(&ous).await?;
    assert!(index.len() == 1 && index[0].0 == id && writeback::dn::same(&index[0].1, &group.dn), "{index:?}");
    directory.hold_listing(false);
    directory.close().await;
    Ok(())
}
