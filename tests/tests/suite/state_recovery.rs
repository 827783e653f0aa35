//! A damaged state directory: a clear error or a clean resync, and `reset-state` as the documented
//! recovery, which rebuilds the state without recreating a single group.

use std::io::{Seek, SeekFrom, Write};

use writeback_tests::e2e::{Env, new_id, text};
use writeback_tests::graphsim::{Group, MemberRef, WritebackConfiguration};

#[tokio::test]
async fn a_damaged_state_is_named_and_reset_state_recovers_without_recreating_groups() -> anyhow::Result<()> {
    let env = Env::new("torn-state").await?;
    let (u1, _) = env.synced_user("torn-u1").await?;
    for i in 0..20 {
        let mut g = Group::security(new_id(), format!("Torn {i}"));
        g.writeback = Some(WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: None });
        g.members = vec![MemberRef::user(&u1)];
        env.sim.add_group(g).unwrap();
    }
    env.sync(&[]).await?;
    let before: Vec<String> = env.groups().await?.into_iter().map(|g| g.guid).collect();

    // Tear the database file: overwrite its middle with garbage, as a bad disk or a half-written copy would.
    let db = env.state_dir().join("db").join("db");
    let len = std::fs::metadata(&db)?.len();
    let mut file = std::fs::OpenOptions::new().write(true).open(&db)?;
    file.seek(SeekFrom::Start(len / 3))?;
    file.write_all(&vec![0xA5; (len / 3) as usize])?;
    drop(file);

    let damaged = env.run(&["sync", "--once"]).await?;
    let stderr = text(&damaged.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    println!(
        "with the damaged state, sync {}: {}",
        if damaged.status.success() { "resynced" } else { "stopped" },
        stderr.lines().last().unwrap_or_default()
    );
    if damaged.status.success() {
        // sled dropped what it could not read: the cycle resynced, and found every group by its anchor.
        let now: Vec<String> = env.groups().await?.into_iter().map(|g| g.guid).collect();
        assert_eq!(now.len(), 20);
        assert!(now.iter().all(|g| before.contains(g)), "no group was recreated");
    } else {
        let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
        assert!(error.contains("reset-state"), "the error names the recovery: {stderr}");
    }

    let reset = env.run(&["reset-state", "--tenant", "contoso"]).await?;
    assert!(reset.status.success(), "{}", text(&reset.stderr));
    env.sync(&["--full"]).await?;
    let after: Vec<String> = env.groups().await?.into_iter().map(|g| g.guid).collect();
    assert_eq!(after.len(), 20);
    assert!(after.iter().all(|g| before.contains(g)), "no group was recreated");
    Ok(())
}

/// A delta cursor records the `$select` it was made with, because Graph keeps the select in its links: a
/// cursor made with another one (an older version's, before a property was added to the attribute table) starts
/// a full round by itself, and the next cursor records this version's select.
#[tokio::test]
async fn a_cursor_made_with_another_select_starts_a_full_round() -> anyhow::Result<()> {
    use writeback::state::{Resource, Store};
    use writeback::status::StatusFile;

    let env = Env::new("old-select").await?;
    let mut g = Group::security(new_id(), "Old Select");
    g.writeback = Some(WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: None });
    env.sim.add_group(g).unwrap();
    env.sync(&[]).await?;
    env.sync(&[]).await?;
    let full = || -> anyhow::Result<bool> {
        Ok(StatusFile::load(&env.state_dir())?.tenants.get("contoso").is_some_and(|s| s.full))
    };
    assert!(!full()?, "with this version's cursor, a cycle is a delta cycle");

    let current = writeback::attributes::group_select();
    {
        let store = Store::open(&env.state_dir())?;
        let state = store.tenant("contoso")?;
        let cursor = state.cursor(Resource::Groups)?.expect("a groups cursor");
        assert_eq!(cursor.select.as_deref(), Some(current.as_str()));
        let older = writeback::state::Cursor { select: Some("id,displayName,members".into()), ..cursor };
        state.merge_group_page(&[], &[], &older)?;
        store.flush().await?;
    }
    env.sync(&[]).await?;
    assert!(full()?, "a cursor made with another $select starts a full round, and so a full cycle");
    let store = Store::open(&env.state_dir())?;
    let cursor = store.tenant("contoso")?.cursor(Resource::Groups)?.expect("a groups cursor");
    assert_eq!(cursor.select.as_deref(), Some(current.as_str()));
    assert!(!cursor.full, "the full round finished");
    Ok(())
}

#[tokio::test]
async fn after_reset_state_more_groups_than_one_anchor_search_holds_are_found_by_anchor_not_recreated()
-> anyhow::Result<()> {
    // Over 100 groups whose GUIDs the state does not know: the agent lists the anchored groups once and reads
    // the wanted ones by objectGUID, instead of naming every anchor in one filter.
    let env = Env::new("many-anchors").await?;
    let (u1, _) = env.synced_user("many-u1").await?;
    for i in 0..130 {
        let mut g = Group::security(new_id(), format!("Many {i}"));
        g.writeback = Some(WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: None });
        g.members = vec![MemberRef::user(&u1)];
        env.sim.add_group(g).unwrap();
    }
    env.sync(&[]).await?;
    let mut before: Vec<String> = env.groups().await?.into_iter().map(|g| g.guid).collect();
    assert_eq!(before.len(), 130);

    let reset = env.run(&["reset-state", "--tenant", "contoso"]).await?;
    assert!(reset.status.success(), "{}", text(&reset.stderr));
    env.sync(&["--full"]).await?;
    let mut after: Vec<String> = env.groups().await?.into_iter().map(|g| g.guid).collect();
    before.sort();
    after.sort();
    assert_eq!(after, before, "every group was found by its anchor; none was recreated");
    // The audit log outlives reset-state: it holds the first sync's creates and no others.
    let creates = env.state_audit().await?.iter().filter(|r| r.operation == "create").count();
    assert_eq!(creates, 130, "nothing was created again");
    Ok(())
}
