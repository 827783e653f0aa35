//! Crash consistency: the agent is killed with SIGKILL at many points during a large initial sync and during
//! delta cycles that add, remove, rename and delete, and restarted each time. The directory must end exactly
//! as the cloud says, and the audit log must account for every write.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use writeback_tests::e2e::{Env, enabled_group, new_id, writeback_bin};
use writeback_tests::graphsim::{GroupPatch, MemberRef, SimConfig};

const GROUPS: usize = 240;
const USERS: usize = 200;
const MEMBERS_PER_GROUP: usize = 12;

/// Runs `sync --once` again and again, killing each run with SIGKILL once the DC has taken `step` more
/// writes (a kill point by write count), until a run finishes by itself. Returns the number of kills.
async fn kill_until_done(env: &Env, steps: impl Iterator<Item = u64>) -> Result<usize> {
    let mut kills = 0;
    for step in steps {
        let mut child = Command::new(writeback_bin()?)
            .arg("--config")
            .arg(&env.config_path)
            .args(["sync", "--once", "--allow-deletes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let start = env.dc.highest_committed_usn().await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(kills);
            }
            if env.dc.highest_committed_usn().await? >= start.saturating_add(step) {
                child.kill()?;
                child.wait()?;
                kills += 1;
                break;
            }
            if Instant::now() > deadline {
                child.kill()?;
                bail!("a sync run made no progress for 120 s");
            }
        }
    }
    Ok(kills)
}

/// Kill points for one phase: varied write counts, so the runs die in different places. They are small, because
/// the agent keeps several writes in flight and a kill lands some writes after its point.
fn steps(base: u64, count: usize) -> impl Iterator<Item = u64> {
    (0..count as u64).map(move |i| base + (i * 5) % 7).chain(std::iter::repeat(u64::MAX))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_many_points_converges_exactly_and_every_write_is_audited() -> Result<()> {
    let config = SimConfig { page_size: 40, members_per_entry: 25, ..SimConfig::default() };
    let mut env = Env::with_sim("crash", config).await?;
    env.tenant_settings("delete_threshold = 10000\nrename_threshold = 10000")?;
    let mut users = Vec::new();
    for i in 0..USERS {
        users.push(env.synced_user(&format!("crash-u{i:03}")).await?);
    }
    let user_dn: BTreeMap<String, String> = users.iter().map(|(id, ad)| (id.clone(), ad.dn.clone())).collect();
    let ids: Vec<String> = (0..GROUPS).map(|_| new_id()).collect();
    for (g, id) in ids.iter().enumerate() {
        let members: Vec<String> = (0..MEMBERS_PER_GROUP).map(|k| users[(g * 7 + k * 13) % USERS].0.clone()).collect();
        env.sim
            .add_group(enabled_group(
                id,
                &format!("Crash {g:03}"),
                &members.iter().map(String::as_str).collect::<Vec<_>>(),
            ))
            .unwrap();
    }

    let initial_kills = kill_until_done(&env, steps(2, 48)).await?;

    // Delta changes of every kind.
    for (g, id) in ids.iter().enumerate().take(100) {
        match g % 4 {
            0 => env.sim.add_members(id, &[MemberRef::user(&users[(g + 101) % USERS].0)]).map(|_| ()),
            1 => env.sim.remove_members(id, &[env.sim.group(id).unwrap().members[0].id.clone()]).map(|_| ()),
            2 => env
                .sim
                .update_group(id, GroupPatch { display_name: Some(format!("Renamed {g:03}")), ..Default::default() })
                .map(|_| ()),
            _ => env.sim.hard_delete_group(id).map(|_| ()),
        }
        .unwrap();
    }
    for (g, user) in users.iter().take(15).enumerate() {
        env.sim.add_group(enabled_group(&new_id(), &format!("Late {g:02}"), &[user.0.as_str()])).unwrap();
    }
    let delta_kills = kill_until_done(&env, steps(1, 24)).await?;
    println!("killed {initial_kills} times during the initial sync and {delta_kills} times during delta cycles");
    assert!(initial_kills + delta_kills >= 20, "only {initial_kills} + {delta_kills} kill points were reached");

    // A last run to the end, then the directory must equal the cloud.
    env.sync(&[]).await?;
    verify_directory(&env, &user_dn).await?;
    verify_audit(&env).await?;
    Ok(())
}

/// Every written-back cloud group exists once, in the target OU, named and filled exactly as the cloud says.
async fn verify_directory(env: &Env, user_dn: &BTreeMap<String, String>) -> Result<()> {
    let in_ad = env.groups().await?;
    let mut by_anchor: BTreeMap<String, Vec<&writeback_tests::dc::GroupEntry>> = BTreeMap::new();
    for group in &in_ad {
        let anchor = group.admin_description.clone().context("a group without an anchor in the test OU")?;
        by_anchor.entry(anchor).or_default().push(group);
    }
    let cloud = env.sim.groups();
    assert_eq!(by_anchor.len(), cloud.len(), "AD holds exactly the cloud's groups");
    for group in cloud {
        let found =
            by_anchor.get(&format!("Group_{}", group.id)).with_context(|| format!("group {} is missing", group.id))?;
        assert_eq!(found.len(), 1, "group {} exists {} times", group.id, found.len());
        let ad = found[0];
        assert_eq!(ad.cn, format!("{}_{}", group.display_name, &group.id[group.id.len() - 12..]));
        assert!(writeback::dn::same(&writeback::dn::parent(&ad.dn).unwrap(), &env.ou.groups_dn), "{}", ad.dn);
        let want: BTreeSet<String> = group.members.iter().map(|m| user_dn[&m.id].to_lowercase()).collect();
        let have: BTreeSet<String> = ad.members.iter().map(|m| m.to_lowercase()).collect();
        assert_eq!(have, want, "members of {}", group.id);
    }
    Ok(())
}

/// Every group and every member value in the directory was written by an audited operation.
async fn verify_audit(env: &Env) -> Result<()> {
    let audit = env.state_audit().await?;
    let interrupted = audit.iter().filter(|r| r.outcome.starts_with("interrupted")).count();
    assert!(interrupted > 0, "no kill landed between a write and its audit record");
    for group in env.groups().await? {
        let id = group.admin_description.as_deref().and_then(|a| a.strip_prefix("Group_")).unwrap();
        let records: Vec<_> = audit.iter().filter(|r| r.group_id == id).collect();
        assert!(records.iter().any(|r| r.operation == "create"), "no create audited for {id}");
        for member in &group.members {
            let rdn = member.split(',').next().unwrap();
            // A new group's members are written inside its create; later ones by member adds.
            let audited = records
                .iter()
                .any(|r| matches!(r.operation.as_str(), "add-members" | "create") && r.detail.contains(rdn));
            assert!(audited, "member {member} of {id} was never audited as added");
        }
    }
    Ok(())
}
