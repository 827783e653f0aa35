//! Plugins end to end: the real binary with tenant plugins against the Graph simulator and the Samba DC.

use std::time::Duration;

use writeback_tests::agents::{Agent, until};
use writeback_tests::e2e::{Env, enabled_group, new_id, plugin_wasm, text, toml_escape, writeback_bin};

fn wasm(name: &str) -> String {
    toml_escape(&plugin_wasm(name).unwrap().display().to_string())
}

#[tokio::test]
async fn department_routing_and_provenance_notes_land_in_ad() -> anyhow::Result<()> {
    let mut env = Env::new("plug-route").await?;
    let finance = env.dc.create_ou(&env.ou.groups_dn, "Finance").await?;
    env.append_config(&format!(
        "[tenant.plugins]\nnaming = \"{}\"\ntransforms = [\"{}\"]\n[tenant.plugins.config]\nprefixes = \"FIN-\"\n\"ou.FIN-\" = \"{}\"\nexclude = \"scratch*\"\nnote = \"Entra group {{id}}\"\n",
        wasm("department_ou"),
        wasm("provenance_note"),
        toml_escape(&finance)
    ))?;
    let (payroll, marketing, scratch) = (new_id(), new_id(), new_id());
    let mut g = enabled_group(&payroll, "FIN-Payroll", &[]);
    g.mail_nickname = Some("fin-payroll".into());
    env.sim.add_group(g).unwrap();
    env.sim.add_group(enabled_group(&marketing, "Marketing", &[])).unwrap();
    env.sim.add_group(enabled_group(&scratch, "Scratch space", &[])).unwrap();
    env.sync(&[]).await?;

    let routed = env.group(&payroll).await?.expect("routed group written");
    assert!(writeback::dn::same(&writeback::dn::parent(&routed.dn).unwrap(), &finance), "{}", routed.dn);
    assert_eq!(routed.sam, "fin-payroll");
    let info = env.dc.entry(&routed.dn, &["info"]).await?.unwrap();
    assert_eq!(writeback_tests::dc::first_value(&info, "info"), Some(format!("Entra group {payroll}").as_str()));
    let default = env.group(&marketing).await?.expect("unrouted group written");
    assert!(writeback::dn::same(&writeback::dn::parent(&default.dn).unwrap(), &env.ou.groups_dn));
    assert!(env.group(&scratch).await?.is_none(), "the excluded group is not written");
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains(&format!("group {scratch}: excluded by provenance_note")), "{status}");
    Ok(())
}

#[tokio::test]
async fn what_a_transform_wrote_is_read_back_so_a_full_reconcile_writes_nothing_and_a_clear_clears()
-> anyhow::Result<()> {
    let mut env = Env::new("plug-readback").await?;
    let plugin = |note: &str| {
        format!(
            "[tenant.plugins]\ntransforms = [\"{}\"]\n[tenant.plugins.config]\nnote = \"{note}\"\n",
            wasm("provenance_note")
        )
    };
    env.append_config(&plugin("Entra group {id}"))?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Noted", &[])).unwrap();
    env.sync(&[]).await?;
    let written = env.group(&id).await?.expect("written");
    let info = env.dc.entry(&written.dn, &["info"]).await?.unwrap();
    assert_eq!(writeback_tests::dc::first_value(&info, "info"), Some(format!("Entra group {id}").as_str()));

    // A full reconcile compares info with what AD holds, and so sends nothing. (Samba does not count a
    // replace by the same value as a change, so the audit log, not the USN, shows a rewrite.)
    let audited = env.state_audit().await?.len();
    env.sync(&["--full"]).await?;
    let rewrites = env.state_audit().await?.split_off(audited);
    assert!(rewrites.is_empty(), "a full reconcile rewrote what the transform had written: {rewrites:?}");

    // A blank note makes the transform clear info, and AD follows.
    env.edit_config(|text| text.replace("note = \"Entra group {id}\"", "note = \" \""))?;
    env.sync(&[]).await?;
    let info = env.dc.entry(&written.dn, &["info"]).await?.unwrap();
    assert_eq!(writeback_tests::dc::first_value(&info, "info"), None, "the cleared info stayed in AD");
    Ok(())
}

#[tokio::test]
async fn a_failing_plugin_holds_one_group_and_the_others_go_on() -> anyhow::Result<()> {
    let mut env = Env::new("plug-fail").await?;
    env.append_config(&format!("[tenant.plugins]\nnaming = \"{}\"\n", wasm("panics")))?;
    let (bad, good) = (new_id(), new_id());
    env.sim.add_group(enabled_group(&bad, "boom", &[])).unwrap();
    env.sim.add_group(enabled_group(&good, "Fine", &[])).unwrap();
    let output = env.sync(&[]).await?;
    assert!(env.group(&good).await?.is_some());
    assert!(env.group(&bad).await?.is_none(), "nothing of the failed group is written, under no other name");
    assert_eq!(env.groups().await?.len(), 1);
    assert!(text(&output.stderr).contains("panicked"), "the plugin's panic message reaches the log");
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains(&format!("group {bad}: plugin panics failed")), "{status}");
    Ok(())
}

#[tokio::test]
async fn a_plugin_that_sleeps_holds_its_group_and_the_sync_ends() -> anyhow::Result<()> {
    let mut env = Env::new("plug-sleep").await?;
    env.append_config(&format!("[tenant.plugins]\nnaming = \"{}\"\n", wasm("sleeper")))?;
    let (sleepy, awake) = (new_id(), new_id());
    env.sim.add_group(enabled_group(&sleepy, "sleep well", &[])).unwrap();
    env.sim.add_group(enabled_group(&awake, "Awake", &[])).unwrap();
    // The plugin asks for an hour; the sync must end at the plugin's timeout instead.
    env.sync(&[]).await?;
    assert!(env.group(&awake).await?.is_some());
    assert!(env.group(&sleepy).await?.is_none(), "nothing of the held group is written");
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains(&format!("group {sleepy}: plugin sleeper tried to wait")), "{status}");
    Ok(())
}

#[tokio::test]
async fn placements_outside_the_allowed_ous_are_held() -> anyhow::Result<()> {
    let mut env = Env::new("plug-escape").await?;
    env.append_config(&format!("[tenant.plugins]\nnaming = \"{}\"\n", wasm("escape_ou")))?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Escapee", &[])).unwrap();
    env.sync(&[]).await?;
    assert!(env.groups().await?.is_empty());
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(status.contains("is outside the target OU and every allowed_ous entry"), "{status}");
    Ok(())
}

#[tokio::test]
async fn plugin_output_reaches_the_log_tagged_with_its_name() -> anyhow::Result<()> {
    let mut env = Env::new("plug-chatty").await?;
    env.append_config(&format!("[tenant.plugins]\nnaming = \"{}\"\n", wasm("chatty")))?;
    env.sim.add_group(enabled_group(&new_id(), "Talkative", &[])).unwrap();
    let stderr = text(&env.sync(&[]).await?.stderr);
    for line in ["chatty-stdout", "chatty-stderr", "chatty-log"] {
        let found = stderr.lines().find(|l| l.contains(line)).unwrap_or_else(|| panic!("{line} missing: {stderr}"));
        assert!(found.contains("plugin=\"chatty\""), "{found}");
    }
    Ok(())
}

#[tokio::test]
async fn renames_by_a_new_plugin_version_over_the_threshold_are_held() -> anyhow::Result<()> {
    let mut env = Env::new("plug-rename").await?;
    env.tenant_settings("rename_threshold = 1")?;
    let ids = [new_id(), new_id()];
    for (i, id) in ids.iter().enumerate() {
        env.sim.add_group(enabled_group(id, &format!("Team {i}"), &[])).unwrap();
    }
    env.sync(&[]).await?;
    let before: Vec<String> = env.groups().await?.into_iter().map(|g| g.cn).collect();
    env.append_config(&format!("[tenant.plugins]\nnaming = \"{}\"\n", wasm("suffix_v2")))?;

    // No --full: a changed plugin makes the next cycle plan every group again.
    let plan = text(&env.run(&["plan"]).await?.stdout);
    assert_eq!(plan.matches("held (more renames than rename_threshold): rename").count(), 2, "{plan}");
    let output = env.run(&["sync", "--once"]).await?;
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("2 renames or moves held"), "{}", text(&output.stderr));
    let unchanged: Vec<String> = env.groups().await?.into_iter().map(|g| g.cn).collect();
    assert_eq!(unchanged, before);

    env.sync(&["--allow-renames"]).await?;
    for (i, id) in ids.iter().enumerate() {
        let group = env.group(id).await?.unwrap();
        assert!(group.cn.starts_with(&format!("Team {i} (v2)_")), "{}", group.cn);
    }
    Ok(())
}

#[tokio::test]
async fn two_tenants_use_different_naming_plugins_in_one_agent() -> anyhow::Result<()> {
    let mut first = Env::new("plug-tenant-a").await?;
    let mut second = Env::new("plug-tenant-b").await?;
    first.append_config(&format!("[tenant.plugins]\nnaming = \"{}\"\n", wasm("cloud_sync_naming")))?;
    second.append_config(&format!("[tenant.plugins]\nnaming = \"{}\"\n", wasm("suffix_v2")))?;
    let (a, b) = (new_id(), new_id());
    first.sim.add_group(enabled_group(&a, "Alpha", &[])).unwrap();
    second.sim.add_group(enabled_group(&b, "Beta", &[])).unwrap();
    // One agent, both tenants: the first world's [agent] table and both [[tenant]] blocks.
    let config = std::fs::read_to_string(&first.config_path)?;
    let agent = config.split("[[tenant]]").next().unwrap().to_string();
    let combined = format!("{agent}{}\n{}", first.tenant_block("alpha")?, second.tenant_block("beta")?);
    let path = first.dir.path().join("two-tenants.toml");
    std::fs::write(&path, combined)?;
    let mut command = std::process::Command::new(writeback_bin()?);
    command.arg("--config").arg(&path).args(["sync", "--once"]);
    // Off the test's runtime: the simulators answer on it.
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(first.group(&a).await?.unwrap().cn.starts_with("Alpha_"));
    assert!(second.group(&b).await?.unwrap().cn.starts_with("Beta (v2)_"));
    Ok(())
}

#[tokio::test]
async fn a_plugin_replaced_during_run_is_checked_before_it_is_used() -> anyhow::Result<()> {
    let mut env = Env::new("plug-reload").await?;
    let live = env.dir.path().join("naming.wasm");
    std::fs::copy(plugin_wasm("cloud_sync_naming")?, &live)?;
    env.append_config(&format!("[tenant.plugins]\nnaming = \"{}\"\n", toml_escape(&live.display().to_string())))?;
    let first = new_id();
    env.sim.add_group(enabled_group(&first, "Before", &[])).unwrap();
    let daemon = env.start_daemon()?;
    env.eventually(Duration::from_secs(20), || async { Ok(env.group(&first).await?.is_some()) }).await?;

    // A broken file is refused, the agent goes on with the version it has.
    std::fs::write(&live, b"\0asm this is not a component")?;
    env.eventually(Duration::from_secs(20), || async { Ok(env.daemon_log().contains("keeping the current plugins")) })
        .await?;
    let second = new_id();
    env.sim.add_group(enabled_group(&second, "During", &[])).unwrap();
    env.eventually(Duration::from_secs(20), || async {
        Ok(env.group(&second).await?.is_some_and(|g| g.cn.starts_with("During_")))
    })
    .await?;

    // A version whose output is invalid for the current groups is refused too.
    std::fs::copy(plugin_wasm("escape_ou")?, &live)?;
    env.eventually(Duration::from_secs(20), || async {
        Ok(env.daemon_log().contains("gives invalid output for group"))
    })
    .await?;

    // A valid new version is switched to on SIGHUP as well as on change, and renames the groups.
    std::fs::copy(plugin_wasm("suffix_v2")?, &live)?;
    daemon.signal(rustix::process::Signal::HUP)?;
    env.eventually(Duration::from_secs(20), || async {
        Ok(env.group(&first).await?.is_some_and(|g| g.cn.starts_with("Before (v2)_")))
    })
    .await?;
    assert!(env.daemon_log().contains("switched to the new plugin version"));
    Ok(())
}

#[tokio::test]
async fn a_new_version_is_not_refused_for_what_the_current_one_refuses_or_fails_already() -> anyhow::Result<()> {
    let mut env = Env::new("plug-reload-held").await?;
    let live = env.dir.path().join("naming.wasm");
    std::fs::copy(plugin_wasm("panics")?, &live)?;
    env.append_config(&format!("[tenant.plugins]\nnaming = \"{}\"\n", toml_escape(&live.display().to_string())))?;
    let (fine, failing, refused) = (new_id(), new_id(), new_id());
    env.sim.add_group(enabled_group(&fine, "Before", &[])).unwrap();
    // `panics` traps on this one, and `sleeper` is stopped on it: a failure under both versions.
    env.sim.add_group(enabled_group(&failing, "boom sleep", &[])).unwrap();
    // The naming rules of every version refuse a control character: a policy's answer, not a fault.
    env.sim.add_group(enabled_group(&refused, "tab\there", &[])).unwrap();
    let daemon = env.start_daemon()?;
    env.eventually(Duration::from_secs(20), || async { Ok(env.group(&fine).await?.is_some()) }).await?;

    std::fs::copy(plugin_wasm("sleeper")?, &live)?;
    env.eventually(Duration::from_secs(20), || async {
        Ok(env.daemon_log().contains("switched to the new plugin version"))
    })
    .await?;
    assert!(!env.daemon_log().contains("keeping the current plugins"), "{}", env.daemon_log());

    // A version that renames everything, and still refuses the same group, is taken as well.
    std::fs::copy(plugin_wasm("suffix_v2")?, &live)?;
    daemon.signal(rustix::process::Signal::HUP)?;
    env.eventually(Duration::from_secs(20), || async {
        Ok(env.group(&fine).await?.is_some_and(|g| g.cn.starts_with("Before (v2)_")))
    })
    .await?;
    assert!(env.group(&refused).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn plugin_check_prints_verdicts_and_fails_on_invalid_output() -> anyhow::Result<()> {
    // These runs need no simulator, so blocking the test's runtime is harmless.
    let check = |plugin: &str, extra: &[&str]| {
        let mut command = std::process::Command::new(writeback_bin().unwrap());
        command.args(["plugin", "check"]).arg(plugin_wasm(plugin).unwrap()).args(extra);
        command.output().unwrap()
    };
    let good = check(
        "cloud_sync_naming",
        &["--group", r#"{"id":"6f1c2a9e-0b1d-4c3e-9f6a-1b2c3d4e5f60","displayName":"Finance"}"#],
    );
    assert!(good.status.success(), "{}", text(&good.stderr));
    assert!(text(&good.stdout).contains(r#"valid    "Finance": cn="Finance_1b2c3d4e5f60""#), "{}", text(&good.stdout));
    let bad = check("bad_names", &[]);
    assert!(!bad.status.success());
    assert!(text(&bad.stdout).contains("INVALID"), "{}", text(&bad.stdout));
    // An import no linker satisfies is named, with the linker's own reason.
    let misfit = check("misfit", &[]);
    assert!(!misfit.status.success());
    let err = text(&misfit.stderr);
    assert!(
        err.contains("cannot be linked as a naming-policy plugin")
            && err.contains("component imports instance `wasi:cli/bogus@0.2.0`"),
        "{err}"
    );
    let transform = check("provenance_note", &["--config", "exclude=Mark*"]);
    assert!(transform.status.success());
    let out = text(&transform.stdout);
    assert!(
        out.contains("(transformer)")
            && out.contains("excluded \"Marketing\"")
            && out.contains("info: Managed by writeback"),
        "{out}"
    );
    Ok(())
}

#[tokio::test]
async fn a_tenant_whose_plugin_does_not_load_is_held_while_the_other_tenants_run() -> anyhow::Result<()> {
    let mut broken = Env::new("plug-unloaded-a").await?;
    let healthy = Env::new("plug-unloaded-b").await?;
    let live = broken.dir.path().join("naming.wasm");
    std::fs::write(&live, b"\0asm this is not a component")?;
    broken.append_config(&format!("[tenant.plugins]\nnaming = \"{}\"\n", toml_escape(&live.display().to_string())))?;
    let (a, b) = (new_id(), new_id());
    broken.sim.add_group(enabled_group(&a, "Alpha", &[])).unwrap();
    healthy.sim.add_group(enabled_group(&b, "Beta", &[])).unwrap();
    let tenants = format!("{}\n{}", broken.tenant_block("alpha")?, healthy.tenant_block("beta")?);
    let mut agent = Agent::new(broken.dir.path(), "agent", &tenants)?;
    agent.start()?;

    // The agent runs on: the other tenant is written, and this one's group is held with the cause.
    let held = |agent: &Agent| {
        let status = writeback::status::StatusFile::load(&agent.dir.join("state")).ok()?;
        status.tenants.get("alpha")?.held_groups.iter().find(|p| p.group_id == a).map(|p| p.reason.to_string())
    };
    until(
        &[&agent],
        Duration::from_secs(30),
        async || Ok(healthy.group(&b).await?.is_some() && held(&agent).is_some()),
    )
    .await?;
    let reason = held(&agent).unwrap_or_default();
    assert!(reason.contains("did not load") && reason.contains("not a valid WebAssembly component"), "{reason}");
    assert!(broken.group(&a).await?.is_none(), "nothing of the tenant is written under another naming");

    // A fixed file is loaded by the hot reload, and the held group is written.
    std::fs::copy(plugin_wasm("cloud_sync_naming")?, &live)?;
    until(&[&agent], Duration::from_secs(30), async || Ok(broken.group(&a).await?.is_some())).await?;
    agent.stop().await
}

/// A naming policy built against `writeback:plugin@0.2.0` chooses each group's scope: the groups are written with
/// it, and nesting between them follows Windows AD's rules for the scopes each has.
#[tokio::test]
async fn a_naming_policy_chooses_each_groups_scope() -> anyhow::Result<()> {
    use writeback_tests::dc::{DOMAIN_LOCAL_SECURITY, GLOBAL_SECURITY, UNIVERSAL_SECURITY};
    use writeback_tests::graphsim::MemberRef;
    let mut env = Env::new("plug-scope").await?;
    env.append_config(&format!("[tenant.plugins]\nnaming = \"{}\"\n", wasm("scope_by_prefix")))?;
    let (alice, _) = env.synced_user("plug-scope-alice").await?;
    let (global, local, plain) = (new_id(), new_id(), new_id());
    env.sim.add_group(enabled_group(&global, "GG-Operators", &[&alice])).unwrap();
    let mut l = enabled_group(&local, "DL-Share", &[&alice]);
    l.members.push(MemberRef::group(&global));
    env.sim.add_group(l).unwrap();
    let mut p = enabled_group(&plain, "Everyone", &[&alice]);
    p.members.extend([MemberRef::group(&global), MemberRef::group(&local)]);
    env.sim.add_group(p).unwrap();
    env.sync(&[]).await?;

    let (g, l, p) =
        (env.group(&global).await?.unwrap(), env.group(&local).await?.unwrap(), env.group(&plain).await?.unwrap());
    assert_eq!(
        (g.group_type, l.group_type, p.group_type),
        (GLOBAL_SECURITY, DOMAIN_LOCAL_SECURITY, UNIVERSAL_SECURITY)
    );
    assert_eq!(l.members.len(), 2, "a domain-local group holds a global one: {:?}", l.members);
    assert!(p.members.iter().any(|m| writeback::dn::same(m, &g.dn)), "a universal group holds a global one");
    assert!(!p.members.iter().any(|m| writeback::dn::same(m, &l.dn)), "but not a domain-local one");
    let status = text(&env.run(&["status"]).await?.stdout);
    assert!(
        status.contains(&format!(
            "group {plain} member {local}: A universal group cannot have a local group as a member"
        )),
        "{status}"
    );
    Ok(())
}

/// `plugin check --tenant` runs a plugin with that tenant's limits and settings, the options override them, and
/// every call's time is printed.
#[tokio::test]
async fn plugin_check_takes_a_tenants_limits_and_times_each_call() -> anyhow::Result<()> {
    let mut env = Env::new("plug-check-tenant").await?;
    env.append_config("[tenant.plugins]\ntimeout = \"40ms\"\nmemory_limit_mib = 16\n[tenant.plugins.config]\nnote = \"from the tenant\"\n")?;
    let wasm = |name: &str| plugin_wasm(name).unwrap().display().to_string();
    let check = async |plugin: &str, extra: &[&str]| {
        let mut args = vec!["plugin", "check"];
        let file = wasm(plugin);
        args.push(&file);
        args.extend_from_slice(&["--tenant", "contoso"]);
        args.extend_from_slice(extra);
        env.run(&args).await.map(|o| (o.status.success(), text(&o.stdout), text(&o.stderr)))
    };
    let (ok, out, _) = check("spin", &[]).await?;
    assert!(!ok && out.contains("timeout 40ms") && out.contains("ran past its 40 ms limit"), "{out}");
    let (ok, out, _) = check("spin", &["--timeout", "25ms"]).await?;
    assert!(!ok && out.contains("ran past its 25 ms limit"), "{out}");
    let (ok, out, _) = check("hog", &[]).await?;
    assert!(!ok && out.contains("went over its memory limit of 16 MiB"), "{out}");
    let (ok, out, err) = check("provenance_note", &[]).await?;
    assert!(ok, "{err}");
    assert!(out.contains("info: from the tenant"), "the tenant's plugin settings: {out}");
    assert!(out.lines().filter(|l| l.starts_with("valid")).all(|l| l.ends_with(" µs)")), "a time on every call: {out}");
    // The tenant's settings come from the agent's config, which must be given.
    let bare = std::process::Command::new(writeback_bin()?)
        .args(["plugin", "check", &wasm("spin"), "--tenant", "contoso"])
        .output()?;
    assert!(text(&bare.stderr).contains("--tenant needs the agent's config"), "{}", text(&bare.stderr));
    Ok(())
}

/// `plugin new` writes a Rust project that tests, builds into a component and passes `plugin check` as it is; a
/// directory that exists, and a name that is not one, are refused with the reason.
#[tokio::test]
async fn plugin_new_writes_a_rust_project_that_builds_and_passes_check() -> anyhow::Result<()> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let dir = tempfile::tempdir()?;
    let writeback = |args: &[&str]| std::process::Command::new(writeback_bin().unwrap()).args(args).output().unwrap();
    let dir_arg = dir.path().display().to_string();
    let made = writeback(&["plugin", "new", "kit-policy", "--dir", &dir_arg]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let project = dir.path().join("kit-policy");
    // The shipped plugins' lock and build directories, so that the test builds no dependency again.
    std::fs::copy(repo.join("plugins/Cargo.lock"), project.join("Cargo.lock"))?;
    let cargo_test = std::process::Command::new("cargo")
        .arg("test")
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", repo.join("target/wasm-native"))
        .output()?;
    assert!(cargo_test.status.success(), "{}", text(&cargo_test.stderr));
    let build = std::process::Command::new(project.join("build.sh"))
        .env("CARGO_TARGET_DIR", repo.join("target/wasm"))
        .output()?;
    assert!(build.status.success(), "{}", text(&build.stderr));
    let wasm = text(&build.stdout).trim().to_string();
    let check = writeback(&["plugin", "check", &wasm, "--config", "ou=OU=Security,OU=Writeback,DC=corp,DC=example"]);
    assert!(check.status.success(), "{}{}", text(&check.stdout), text(&check.stderr));
    assert!(
        text(&check.stdout).contains(r#"valid    "Finance Team": cn="SG-finance_1b2c3d4e5f60""#),
        "{}",
        text(&check.stdout)
    );

    let again = writeback(&["plugin", "new", "kit-policy", "--dir", &dir_arg]);
    assert!(!again.status.success() && text(&again.stderr).contains("exists already"), "{}", text(&again.stderr));
    let bad = writeback(&["plugin", "new", "1-policy", "--dir", &dir_arg]);
    assert!(
        !bad.status.success() && text(&bad.stderr).contains("must be lower-case letters, digits and hyphens"),
        "{}",
        text(&bad.stderr)
    );
    Ok(())
}

/// Writes a `plugin new` project in `lang`, runs its own tests with `test`, builds it, and returns `plugin check`'s
/// output on the component.
fn kit(lang: &str, test: &[&str]) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let name = format!("{lang}-policy");
    let made = std::process::Command::new(writeback_bin()?)
        .args(["plugin", "new", &name, "--lang", lang, "--dir"])
        .arg(dir.path())
        .output()?;
    anyhow::ensure!(made.status.success(), "plugin new: {}", text(&made.stderr));
    let project = dir.path().join(&name);
    // pip's user scripts, where componentize-py lands when pip installs for the user.
    let path = format!("{}:{}/.local/bin", std::env::var("PATH")?, std::env::var("HOME").unwrap_or_default());
    let tested =
        std::process::Command::new(test[0]).args(&test[1..]).current_dir(&project).env("PATH", &path).output()?;
    anyhow::ensure!(tested.status.success(), "{test:?}: {}{}", text(&tested.stdout), text(&tested.stderr));
    let built = std::process::Command::new(project.join("build.sh")).env("PATH", &path).output()?;
    anyhow::ensure!(built.status.success(), "build.sh: {}", text(&built.stderr));
    let wasm = text(&built.stdout).trim().to_string();
    let check = std::process::Command::new(writeback_bin()?).args(["plugin", "check", &wasm]).output()?;
    anyhow::ensure!(check.status.success(), "plugin check: {}{}", text(&check.stdout), text(&check.stderr));
    Ok(text(&check.stdout))
}

/// The Python project `plugin new` writes tests, builds with componentize-py, and passes `plugin check` as it is.
#[tokio::test]
async fn plugin_new_writes_a_python_project_that_builds_and_passes_check() -> anyhow::Result<()> {
    let out = tokio::task::spawn_blocking(|| kit("python", &["python3", "-m", "unittest"])).await??;
    assert!(out.contains(r#"valid    "Finance Team": cn="SG-finance_1b2c3d4e5f60""#), "{out}");
    Ok(())
}

/// The JavaScript project `plugin new` writes tests, builds with componentize-js (whose default build imports
/// `wasi:http`, which the agent does not provide), and passes `plugin check` as it is.
#[tokio::test]
async fn plugin_new_writes_a_javascript_project_that_builds_and_passes_check() -> anyhow::Result<()> {
    let out = tokio::task::spawn_blocking(|| kit("js", &["node", "--test"])).await??;
    assert!(out.contains(r#"valid    "Finance Team": cn="SG-finance_1b2c3d4e5f60""#), "{out}");
    Ok(())
}
