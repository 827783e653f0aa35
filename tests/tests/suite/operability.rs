//! What operators use: the metrics endpoint and health check, the audit log as JSON lines, and `status --json`
//! and `plan --json` for scripts and monitoring.

use std::time::Duration;

use writeback_tests::e2e::{Env, enabled_group, free_port, metric_sample, new_id, text};
use writeback_tests::graphsim::{Fault, FaultKind, FaultTarget, Group, MemberRef, WritebackConfiguration};

#[tokio::test]
async fn metrics_are_scraped_and_health_follows_the_last_cycle() -> anyhow::Result<()> {
    let env = Env::new("metrics").await?;
    let port = free_port()?;
    env.edit_config(|t| {
        t.replace("interval = \"1s\"", &format!("interval = \"1s\"\nmetrics_addr = \"127.0.0.1:{port}\""))
    })?;
    let (u1, _) = env.synced_user("metrics-u1").await?;
    let cloud_only = new_id();
    env.sim.add_user(writeback_tests::graphsim::User::cloud(cloud_only.clone(), "c@contoso.com")).unwrap();
    env.sim.add_group(enabled_group(&new_id(), "Measured", &[&u1, &cloud_only])).unwrap();
    let _daemon = env.start_daemon()?;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let scrape = || async { Ok::<_, anyhow::Error>(http.get(format!("{base}/metrics")).send().await?.text().await?) };
    env.eventually(Duration::from_secs(20), || async {
        Ok(scrape()
            .await
            .ok()
            .and_then(|m| metric_sample(&m, r#"writeback_cycles_total{tenant="contoso",outcome="ok"}"#))
            .is_some_and(|v| v >= 1.0))
    })
    .await?;
    let metrics = scrape().await?;
    assert_eq!(
        metric_sample(&metrics, r#"writeback_directory_operations_total{tenant="contoso",kind="create",outcome="ok"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_sample(&metrics, r#"writeback_groups{tenant="contoso",state="managed"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_sample(&metrics, r#"writeback_members_skipped{tenant="contoso",reason="cloud_only_user"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert!(metrics.contains("writeback_cycle_duration_seconds_bucket"), "{metrics}");
    assert!(
        metric_sample(&metrics, r#"writeback_graph_requests_total{tenant="contoso",status="200"}"#)
            .is_some_and(|v| v >= 2.0),
        "{metrics}"
    );

    // A throttled Graph answer is counted.
    env.sim.inject(Fault { target: FaultTarget::GroupsDelta, kind: FaultKind::Throttle429 { retry_after_secs: 0 } });
    env.eventually(Duration::from_secs(20), || async {
        Ok(scrape()
            .await
            .ok()
            .and_then(|m| metric_sample(&m, r#"writeback_graph_throttled_total{tenant="contoso"}"#))
            .is_some_and(|v| v >= 1.0))
    })
    .await?;
    assert_eq!(http.get(format!("{base}/healthz")).send().await?.status(), 200);

    // Quiet cycles (nothing changed in the cloud) do not even connect to the DC.
    let connections = metric_sample(&metrics, r#"writeback_directory_connections_total{tenant="contoso"}"#);
    let cycles = metric_sample(&metrics, r#"writeback_cycles_total{tenant="contoso",outcome="ok"}"#).unwrap();
    env.eventually(Duration::from_secs(20), || async {
        Ok(scrape()
            .await
            .ok()
            .and_then(|m| metric_sample(&m, r#"writeback_cycles_total{tenant="contoso",outcome="ok"}"#))
            .is_some_and(|v| v >= cycles + 2.0))
    })
    .await?;
    assert_eq!(
        metric_sample(&scrape().await?, r#"writeback_directory_connections_total{tenant="contoso"}"#),
        connections
    );

    // Graph refuses the token twice in a row: the cycle fails and the health check says so.
    for _ in 0..2 {
        env.sim.inject(Fault { target: FaultTarget::GroupsDelta, kind: FaultKind::Status401 });
    }
    env.eventually(Duration::from_secs(20), || async {
        Ok(http.get(format!("{base}/healthz")).send().await?.status() == 503)
    })
    .await?;
    let why = http.get(format!("{base}/healthz")).send().await?.text().await?;
    assert!(why.contains("tenant contoso: last cycle failed"), "{why}");
    assert!(
        !why.contains("401") && !why.contains("127.0.0.1") && !why.contains("http"),
        "/healthz keeps causes and hosts to itself: {why}"
    );
    // The next good cycle makes it healthy again.
    env.eventually(Duration::from_secs(20), || async {
        Ok(http.get(format!("{base}/healthz")).send().await?.status() == 200)
    })
    .await?;
    Ok(())
}

/// `plan --json` and `status --json` print one document each, in the shape the README documents, with every
/// reason as an object of a `kind` and its fields.
#[tokio::test]
async fn plan_and_status_print_json_with_typed_reasons() -> anyhow::Result<()> {
    let env = Env::new("json-status").await?;
    let (u1, _) = env.synced_user("json-u1").await?;
    let cloud_only = new_id();
    env.sim.add_user(writeback_tests::graphsim::User::cloud(cloud_only.clone(), "j@contoso.com")).unwrap();
    let (written, odd) = (new_id(), new_id());
    env.sim.add_group(enabled_group(&written, "Json Written", &[&u1, &cloud_only])).unwrap();
    // A type Graph may add one day: the group is held, with the reason.
    let mut future = enabled_group(&odd, "Json Future Type", &[]);
    future.writeback =
        Some(WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: Some("futureGroup".into()) });
    env.sim.add_group(future).unwrap();

    let json = |output: &std::process::Output| -> anyhow::Result<serde_json::Value> {
        assert!(output.status.success(), "{}", text(&output.stderr));
        Ok(serde_json::from_slice(&output.stdout)?)
    };
    let plan = json(&env.run(&["plan", "--json"]).await?)?;
    let tenant = &plan["tenants"]["contoso"];
    let changes = tenant["changes"].as_array().expect("changes");
    assert!(changes.iter().any(|c| c["operation"] == "create" && c["group_id"] == written.as_str()), "{plan:#}");
    assert_eq!(tenant["skipped_members"][0]["reason"], serde_json::json!({"kind": "cloud_only_user"}), "{plan:#}");
    assert_eq!(tenant["held_groups"][0]["group_id"], odd.as_str(), "{plan:#}");
    assert_eq!(tenant["held_groups"][0]["reason"]["kind"], "refused", "{plan:#}");

    env.sync(&[]).await?;
    let status = json(&env.run(&["status", "--json"]).await?)?;
    let tenant = &status["tenants"]["contoso"];
    assert_eq!(tenant["managed_groups"], 1, "{status:#}");
    assert_eq!(tenant["skipped_members"][0]["member_id"], cloud_only.as_str(), "{status:#}");
    assert_eq!(tenant["skipped_members"][0]["reason"]["kind"], "cloud_only_user", "{status:#}");
    let held = &tenant["held_groups"][0]["reason"];
    assert_eq!(held["kind"], "refused", "{status:#}");
    assert!(held["cause"].as_str().is_some_and(|c| c.contains("futureGroup")), "{status:#}");
    // The text report says the same, in words.
    let plain = text(&env.run(&["status"]).await?.stdout);
    assert!(plain.contains("cloud-only user (no on-premises SID)") && plain.contains("futureGroup"), "{plain}");
    Ok(())
}

#[tokio::test]
async fn the_audit_log_prints_as_filtered_json_lines() -> anyhow::Result<()> {
    let env = Env::new("audit").await?;
    let (u1, _) = env.synced_user("audit-u1").await?;
    let (a, b) = (new_id(), new_id());
    env.sim.add_group(enabled_group(&a, "Audited A", &[&u1])).unwrap();
    env.sim.add_group(enabled_group(&b, "Audited B", &[])).unwrap();
    env.sync(&[]).await?;
    let output = env.run(&["audit"]).await?;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let records: Vec<serde_json::Value> =
        text(&output.stdout).lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let ops: Vec<(&str, &str)> =
        records.iter().map(|r| (r["group_id"].as_str().unwrap(), r["operation"].as_str().unwrap())).collect();
    assert!(ops.contains(&(a.as_str(), "create")) && ops.contains(&(b.as_str(), "create")), "{ops:?}");
    // A new group's members are written inside its create, and its audit record lists them.
    let create_a = records.iter().find(|r| r["group_id"] == a.as_str()).unwrap();
    assert!(create_a["detail"].as_str().unwrap().contains("member=CN=audit-u1"), "{create_a}");
    assert!(records.iter().all(|r| r["outcome"] == "ok" && r["tenant"] == "contoso" && r["time"].as_u64().is_some()));

    let only_b = text(&env.run(&["audit", "--group", &b]).await?.stdout);
    assert_eq!(only_b.lines().count(), 1, "{only_b}");
    assert_eq!(text(&env.run(&["audit", "--since", "1h"]).await?.stdout).lines().count(), records.len());
    assert_eq!(text(&env.run(&["audit", "--since", "2999-01-01T00:00:00Z"]).await?.stdout).lines().count(), 0);
    let bad = env.run(&["audit", "--since", "soon"]).await?;
    assert!(!bad.status.success() && text(&bad.stderr).contains("--since"));
    Ok(())
}

#[tokio::test]
async fn doctor_passes_a_good_setup_and_names_the_fix_for_a_broken_one() -> anyhow::Result<()> {
    let env = Env::new("doctor").await?;
    let good = env.run(&["doctor"]).await?;
    let out = text(&good.stdout);
    assert!(good.status.success(), "{out}{}", text(&good.stderr));
    for check in [
        "token request",
        "Graph group read",
        "Graph user read",
        "LDAPS connection, certificate and bind",
        "schema",
        "rights in the target OU",
    ] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with("pass") && l.contains(check)),
            "{check} missing:\n{out}"
        );
    }
    assert!(env.groups().await?.is_empty(), "the probe group was deleted again");

    let wrong = env.dir.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password")?;
    let original = env.dc.info().admin_password_file.display().to_string();
    env.edit_config(|t| t.replace(&original, &wrong.display().to_string()))?;
    let broken = env.run(&["doctor"]).await?;
    let out = text(&broken.stdout);
    assert!(!broken.status.success());
    let line = out.lines().find(|l| l.contains("FAIL") && l.contains("LDAPS connection")).unwrap_or_default();
    assert!(line.contains("invalid credentials") && line.contains("fix:"), "{out}");
    assert!(out.lines().any(|l| l.contains("pass") && l.contains("token request")), "Graph checks still run: {out}");
    assert!(!out.contains("not-the-password"));
    Ok(())
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_cycle_span() -> anyhow::Result<()> {
    let env = Env::new("json-logs").await?;
    env.sim.add_group(enabled_group(&new_id(), "Logged", &[])).unwrap();
    let mut command = std::process::Command::new(writeback_tests::e2e::writeback_bin()?);
    command.args(["--log-format", "json", "--config"]).arg(&env.config_path).args(["sync", "--once"]);
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines: Vec<serde_json::Value> =
        text(&output.stderr).lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let finished = lines.iter().find(|l| l["fields"]["message"] == "cycle finished").expect("a cycle-finished line");
    assert_eq!(finished["level"], "INFO");
    let in_cycle = lines.iter().any(|l| l["span"]["name"] == "cycle" && l["span"]["tenant"] == "contoso");
    assert!(
        in_cycle
            || lines.iter().any(|l| l["spans"].as_array().is_some_and(|s| s.iter().any(|s| s["tenant"] == "contoso"))),
        "{lines:?}"
    );
    Ok(())
}

/// Whether `line` is the progress bar: counts and an ETA, which no log or summary line has.
fn is_bar(line: &str) -> bool {
    line.contains("/") && line.contains(" writes, ") && line.contains(" left")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_sync_on_a_terminal_shows_a_progress_bar_and_a_pipe_gets_none() -> anyhow::Result<()> {
    let env = Env::new("progress").await?;
    let (alice, _) = env.synced_user("progress-alice").await?;
    for g in 0..400 {
        let mut group = Group::security(new_id(), format!("Progress {g:03}"));
        group.writeback = Some(WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: None });
        group.members = vec![MemberRef::user(&alice)];
        env.sim.add_group(group).unwrap();
    }
    // A real terminal: tmux runs the sync in a pane, and the pane is read while the sync writes.
    let session = format!("writeback-progress-{}", &new_id()[..8]);
    let command = format!(
        "{} --config {} sync --once; echo EXIT=$?; sleep 60",
        writeback_tests::e2e::writeback_bin()?.display(),
        env.config_path.display()
    );
    let started = std::process::Command::new("tmux")
        .args(["new-session", "-d", "-x", "160", "-y", "40", "-s", &session, &command])
        .status()?;
    assert!(started.success(), "tmux could not start a session");
    let mut seen_bar = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let screen = loop {
        let capture = std::process::Command::new("tmux").args(["capture-pane", "-p", "-t", &session]).output()?;
        let screen = text(&capture.stdout);
        if seen_bar.is_none() {
            seen_bar = screen.lines().find(|l| is_bar(l)).map(str::to_string);
        }
        if screen.contains("EXIT=") || std::time::Instant::now() > deadline {
            break screen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = std::process::Command::new("tmux").args(["kill-session", "-t", &session]).status();
    assert!(screen.contains("EXIT=0"), "the sync in the terminal failed:\n{screen}");
    let bar = seen_bar.unwrap_or_else(|| panic!("no progress bar was drawn; last screen:\n{screen}"));
    assert!(bar.contains("contoso: [") && bar.contains("/400 writes"), "{bar}");
    assert!(!screen.lines().any(is_bar), "the bar is cleared at the end:\n{screen}");

    // Output that is not a terminal gets log lines only, for as many writes.
    for g in 0..150 {
        let mut group = Group::security(new_id(), format!("Piped {g:03}"));
        group.writeback = Some(WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: None });
        group.members = vec![MemberRef::user(&alice)];
        env.sim.add_group(group).unwrap();
    }
    let piped = env.run(&["sync", "--once", "--full"]).await?;
    assert!(text(&piped.stdout).contains(": 150 writes"), "{}", text(&piped.stdout));
    assert!(piped.status.success());
    let all = format!("{}{}", text(&piped.stdout), text(&piped.stderr));
    assert!(!all.lines().any(is_bar) && !all.contains('\r'), "{all}");
    Ok(())
}
