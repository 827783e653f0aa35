//! Faults on the directory side: one bad group never blocks the others, and a group that keeps failing is
//! quarantined with its reason.

use writeback_tests::e2e::{Env, new_id, text};
use writeback_tests::graphsim::{Group, GroupPatch, WritebackConfiguration};

fn enabled(id: &str, name: &str) -> Group {
    let mut g = Group::security(id, name);
    g.writeback = Some(WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: None });
    g
}

#[tokio::test]
async fn a_group_that_keeps_failing_is_quarantined_and_the_others_go_on() -> anyhow::Result<()> {
    let env = Env::new("quarantine").await?;
    // The DC refuses this group every time: a proxy address longer than AD allows (rangeUpper 1123).
    let bad = new_id();
    let mut g = Group::unified(&bad, "Oversized", "oversized");
    g.proxy_addresses = vec![format!("smtp:{}@contoso.com", "x".repeat(2000))];
    env.sim.add_group(g).unwrap();
    let good = new_id();
    env.sim.add_group(enabled(&good, "Healthy")).unwrap();

    let attempts = |audit: &[writeback::state::AuditRecord]| audit.iter().filter(|r| r.group_id == bad).count();
    for round in 1..=3 {
        let output = env.run(&["sync", "--once"]).await?;
        assert!(!output.status.success(), "round {round}: a failing group needs attention");
        assert!(text(&output.stderr).contains("groups failed to apply"), "{}", text(&output.stderr));
        assert!(env.group(&good).await?.is_some(), "the healthy group is written from the first cycle");
    }
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains(&format!("group {bad}: quarantined after 3 failed attempts")), "{status}");
    let audit = env.state_audit().await?;
    assert_eq!(attempts(&audit), 3, "one attempt per cycle");

    // Quarantined: the next quiet cycle does not try again.
    let _ = env.run(&["sync", "--once"]).await?;
    assert_eq!(attempts(&env.state_audit().await?), 3);

    // Fixed in the cloud: the change lifts the quarantine and the group is written.
    let patch = GroupPatch { proxy_addresses: Some(vec!["SMTP:oversized@contoso.com".into()]), ..Default::default() };
    env.sim.update_group(&bad, patch).unwrap();
    env.sync(&[]).await?;
    assert!(env.group(&bad).await?.is_some());
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(!status.contains("quarantined"), "{status}");
    Ok(())
}
