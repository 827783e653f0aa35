//! The shipped systemd unit is valid and hardened, checked by systemd's own analyser.

use std::process::Command;

use writeback_tests::e2e::{text, writeback_bin};

#[test]
fn the_systemd_unit_verifies_and_is_hardened() -> anyhow::Result<()> {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let unit = std::fs::read_to_string(workspace.join("host/dist/writeback.service"))?;
    // Point ExecStart at the binary this run built, so `verify` can check that it exists.
    let bin = writeback_bin()?;
    let unit = unit.replace("/usr/local/bin/writeback", &bin.display().to_string());
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("writeback.service");
    std::fs::write(&path, unit)?;

    let verify = Command::new("systemd-analyze").arg("verify").arg(&path).output()?;
    assert!(verify.status.success() && verify.stderr.is_empty(), "{}", text(&verify.stderr));
    let security = Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(&path).output()?;
    let report = text(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for writeback.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{report}");
    Ok(())
}

/// Every `writeback_…` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("writeback_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn the_alert_rules_and_dashboard_check_and_name_only_metrics_the_agent_exports() -> anyhow::Result<()> {
    use std::time::Duration;
    use writeback_tests::e2e::{Env, free_port};
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let rules = workspace.join("host/dist/writeback.rules.yml");
    let check = Command::new("promtool").arg("check").arg("rules").arg(&rules).output()?;
    assert!(check.status.success(), "{}{}", text(&check.stdout), text(&check.stderr));
    let dashboard = std::fs::read_to_string(workspace.join("host/dist/grafana-dashboard.json"))?;
    let parsed: serde_json::Value = serde_json::from_str(&dashboard)?;
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()), "the dashboard has panels");

    // What the agent exports: each family's `# TYPE`, with the suffixes its samples carry.
    let mut env = Env::new("dist-metrics").await?;
    // A shared tenant, so that the lease's metrics are exported too.
    writeback_tests::agents::share_tenant(&mut env, writeback_tests::agents::TEST_TTL)?;
    let port = free_port()?;
    env.agent_settings(&format!("metrics_addr = \"127.0.0.1:{port}\""))?;
    // A group to write, so that the directory's metrics have samples.
    env.sim.add_group(writeback_tests::e2e::enabled_group(&writeback_tests::e2e::new_id(), "Exported", &[])).unwrap();
    let _daemon = env.start_daemon()?;
    let scrape = || async {
        Ok::<_, anyhow::Error>(reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await?.text().await?)
    };
    env.eventually(Duration::from_secs(20), || async {
        let ready = ["writeback_lease_active{", "writeback_groups{", "writeback_directory_operations_total{"];
        Ok(scrape().await.is_ok_and(|m| ready.iter().all(|name| m.contains(name))))
    })
    .await?;
    let mut exported = std::collections::BTreeSet::new();
    for line in scrape().await?.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        exported.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    for (file, content) in
        [("writeback.rules.yml", std::fs::read_to_string(&rules)?), ("grafana-dashboard.json", dashboard)]
    {
        let unknown: Vec<String> = metric_names(&content).into_iter().filter(|n| !exported.contains(n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics the agent does not export: {unknown:?}\nexported: {exported:?}"
        );
    }
    for needed in
        ["writeback_drift_repairs_total", "writeback_pim_expiry_lateness_seconds_bucket", "writeback_lease_lost_total"]
    {
        assert!(exported.contains(needed), "{needed} in {exported:?}");
    }
    Ok(())
}
