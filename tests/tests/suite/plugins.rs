//! Plugins through the real host, without a directory: the shipped plugins' behaviour, the sandbox's
//! limits, output validation and the compile cache.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use writeback::attributes::SchemaSupport;
use writeback::cloud::CloudGroup;
use writeback::config::PluginsConfig;
use writeback::model::{self, BuiltinPolicy, GroupKind, GroupPolicy, ModelSettings, PolicyGroup};
use writeback::plugins::{PluginEngine, TenantPlugins};
use writeback_tests::e2e::plugin_wasm;

const TARGET_OU: &str = "OU=Writeback,DC=corp,DC=example,DC=test";

fn plugins(naming: Option<&str>, transforms: &[&str], settings: &[(&str, &str)]) -> TenantPlugins {
    let config = PluginsConfig {
        naming: naming.map(|n| plugin_wasm(n).unwrap()),
        transforms: transforms.iter().map(|t| plugin_wasm(t).unwrap()).collect(),
        config: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..PluginsConfig::default()
    };
    TenantPlugins::load(&PluginEngine::new(None).unwrap(), &config).unwrap()
}

fn group<'a>(id: &'a str, name: &'a str) -> PolicyGroup<'a> {
    PolicyGroup {
        id,
        display_name: name,
        description: None,
        mail_nickname: None,
        mail: None,
        unified: false,
        kind: GroupKind::Security,
        scope: Default::default(),
        group_types: &[],
        member_count: 0,
    }
}

fn settings(allowed_ous: &[&str]) -> ModelSettings {
    ModelSettings {
        m365_default_writeback: true,
        target_ou: TARGET_OU.into(),
        allowed_ous: allowed_ous.iter().map(|s| s.to_string()).collect(),
        schema: SchemaSupport::default(),
        rules: Default::default(),
        group_scope: Default::default(),
    }
}

fn cloud_group(id: &str, name: &str) -> CloudGroup {
    CloudGroup { id: id.into(), display_name: Some(name.into()), writeback_enabled: Some(true), ..Default::default() }
}

const ID: &str = "6f1c2a9e-0b1d-4c3e-9f6a-1b2c3d4e5f60";

#[test]
fn cloud_sync_naming_reproduces_the_builtin_default_on_a_corpus() {
    let mut plugin = plugins(Some("cloud_sync_naming"), &[], &[]);
    let names = [
        "Finance",
        "  padded  ",
        r#"Ops, "Tier 0" + #Admins\"#,
        "#hash",
        "semi;colon=eq<less>more",
        "Ünïcødé 名前 ✓",
        &"x".repeat(51),
        &"y".repeat(52),
        &"z".repeat(80),
        &format!("{}   tail", "a".repeat(49)),
        "tab\there",
        "line\nfeed",
        "a",
        "😀 emoji group",
        " ",
    ];
    let ids = [ID, "0a7b9c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d", "short-id", "ABCDEF012345", "--------------------"];
    let mut compared = 0;
    for id in ids {
        for name in names {
            let builtin = BuiltinPolicy.place(&group(id, name));
            let from_plugin = plugin.place(&group(id, name));
            match (&builtin, &from_plugin) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{id} {name:?}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{id} {name:?}: built-in {builtin:?} but plugin {from_plugin:?}"),
            }
            compared += 1;
        }
    }
    assert_eq!(compared, names.len() * ids.len());
}

#[test]
fn an_endless_loop_costs_one_call_and_the_next_call_still_runs() {
    let mut spin = plugins(Some("spin"), &[], &[]);
    for _ in 0..2 {
        let started = Instant::now();
        let err = spin.place(&group(ID, "Anything")).unwrap_err().to_string();
        assert!(err.contains("ran past its 100 ms limit"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10), "the deadline did not stop the loop");
    }
}

#[test]
fn a_plugin_that_sleeps_in_the_host_is_stopped_and_the_next_call_still_runs() {
    // Epoch interruption cannot stop a wait inside the host: without the trapping poll this call never returns.
    let mut sleeper = plugins(Some("sleeper"), &[], &[]);
    let err = sleeper.place(&group(ID, "sleep on it")).unwrap_err().to_string();
    assert!(err.contains("plugin sleeper tried to wait"), "{err}");
    let next = sleeper.place(&group(ID, "Fine")).unwrap();
    assert_eq!(next.cn, "Fine_1b2c3d4e5f60");
}

#[test]
fn a_panic_costs_one_call_and_a_fresh_instance_serves_the_next() {
    let mut panics = plugins(Some("panics"), &[], &[]);
    let err = panics.place(&group(ID, "boom")).unwrap_err().to_string();
    assert!(err.contains("a panic"), "{err}");
    let next = panics.place(&group(ID, "Fine")).unwrap();
    assert_eq!(next.cn, "Fine_1b2c3d4e5f60");
}

#[test]
fn a_runaway_allocation_costs_one_call() {
    // A generous deadline, so that on a loaded machine it is the memory limit that stops the plugin.
    let config = PluginsConfig {
        naming: Some(plugin_wasm("hog").unwrap()),
        timeout: Duration::from_secs(30),
        ..PluginsConfig::default()
    };
    let mut hog = TenantPlugins::load(&PluginEngine::new(None).unwrap(), &config).unwrap();
    let err = hog.place(&group(ID, "Anything")).unwrap_err().to_string();
    assert!(err.contains("went over its memory limit of 64 MiB"), "{err}");
}

#[test]
fn placements_outside_the_allowed_ous_and_bad_names_are_invalid() {
    let group = cloud_group(ID, "Escapee");
    let mut escape = plugins(Some("escape_ou"), &[], &[]);
    let err = model::place_and_transform(&group, GroupKind::Security, 0, &settings(&[]), &mut escape)
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the target OU"), "{err}");
    let allowed = settings(&["OU=Elsewhere,DC=evil,DC=example"]);
    assert!(model::place_and_transform(&group, GroupKind::Security, 0, &allowed, &mut escape).is_ok());
    let mut bad = plugins(Some("bad_names"), &[], &[("break", "sam")]);
    let err =
        model::place_and_transform(&group, GroupKind::Security, 0, &settings(&[]), &mut bad).unwrap_err().to_string();
    assert!(err.contains("sAMAccountName"), "{err}");
}

#[test]
fn department_ou_routes_by_prefix_and_names_from_the_mail_nickname() {
    let finance = format!("OU=Finance,{TARGET_OU}");
    let mut routed = plugins(
        Some("department_ou"),
        &[],
        &[("prefixes", "FIN-,HR-"), ("ou.FIN-", &finance), ("ou.HR-", &format!("OU=HR,{TARGET_OU}"))],
    );
    let mut payroll = group(ID, "fin-Payroll");
    payroll.mail_nickname = Some("fin.payroll");
    let placed = routed.place(&payroll).unwrap();
    assert_eq!(placed.ou.as_deref(), Some(finance.as_str()));
    assert_eq!(placed.sam_account_name, "fin.payroll");
    let other = routed.place(&group(ID, "Marketing")).unwrap();
    assert_eq!(other.ou, None, "no prefix: the tenant's target OU");
    assert!(other.sam_account_name.starts_with("G_"), "no mailNickname: the id-derived name");
}

#[test]
fn the_provenance_transform_writes_info_and_excludes_by_pattern() {
    let mut note = plugins(None, &["provenance_note"], &[("note", "from {displayName} ({id})"), ("exclude", "tmp-*")]);
    let mut attributes = BTreeMap::from([("description".to_string(), vec!["d".to_string()])]);
    let kept = note.transform(&group(ID, "Finance"), &mut attributes).unwrap();
    assert_eq!(kept, model::Transformed::Write);
    assert_eq!(attributes["info"], [format!("from Finance ({ID})")]);
    assert_eq!(attributes["description"], ["d"], "attributes the transform leaves out keep their values");
    let excluded = note.transform(&group(ID, "TMP-scratch"), &mut BTreeMap::new()).unwrap();
    assert!(matches!(excluded, model::Transformed::Exclude(ref r) if r.contains("tmp-*")), "{excluded:?}");
}

#[test]
fn a_transform_may_not_touch_protected_attributes() {
    let mut greedy = plugins(None, &["greedy_transform"], &[]);
    let err = greedy.transform(&group(ID, "Any"), &mut BTreeMap::new()).unwrap_err().to_string();
    assert!(err.contains("not in the allowed attributes"), "{err}");
}

#[test]
fn compiled_plugins_are_cached_by_content_and_engine() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let config = PluginsConfig { naming: Some(plugin_wasm("cloud_sync_naming").unwrap()), ..PluginsConfig::default() };
    let files = || -> Vec<PathBuf> {
        let mut f: Vec<PathBuf> =
            std::fs::read_dir(&cache).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
        f.sort();
        f
    };
    TenantPlugins::load(&PluginEngine::new(Some(cache.clone())).unwrap(), &config).unwrap();
    let first = files();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].extension().is_some_and(|e| e == "cwasm"));
    // A second engine with the same settings reuses the artifact.
    let mut again = TenantPlugins::load(&PluginEngine::new(Some(cache.clone())).unwrap(), &config).unwrap();
    assert_eq!(files(), first);
    assert!(again.place(&group(ID, "Cached")).is_ok());
    // A damaged artifact is ignored and replaced, never trusted.
    std::fs::write(&first[0], b"not a compiled component").unwrap();
    let mut rebuilt = TenantPlugins::load(&PluginEngine::new(Some(cache.clone())).unwrap(), &config).unwrap();
    assert!(rebuilt.place(&group(ID, "Rebuilt")).is_ok());
    assert_ne!(std::fs::read(&first[0]).unwrap(), b"not a compiled component");
}

/// A loaded policy's fingerprint is that of the bytes it loaded, not of the file as it is later: a file
/// replaced after the load must not count as what the groups were planned with.
#[test]
fn the_fingerprint_is_that_of_the_bytes_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("naming.wasm");
    std::fs::copy(plugin_wasm("cloud_sync_naming").unwrap(), &live).unwrap();
    let config = PluginsConfig { naming: Some(live.clone()), ..PluginsConfig::default() };
    let loaded = TenantPlugins::load(&PluginEngine::new(None).unwrap(), &config).unwrap();
    assert_eq!(loaded.fingerprint(), writeback::plugins::fingerprint(&config), "the same bytes, the same fingerprint");
    std::fs::copy(plugin_wasm("suffix_v2").unwrap(), &live).unwrap();
    assert_ne!(loaded.fingerprint(), writeback::plugins::fingerprint(&config));
    let reloaded = TenantPlugins::load(&PluginEngine::new(None).unwrap(), &config).unwrap();
    assert_eq!(reloaded.fingerprint(), writeback::plugins::fingerprint(&config));
}

/// Plugins built against each contract version load side by side in one tenant: a 0.1.0 naming policy with
/// 0.2.0 transforms, and a 0.2.0 naming policy that chooses a group's scope. A 0.2.0 transform is told the
/// group's scope, types and member count.
#[test]
fn plugins_of_both_contract_versions_load_side_by_side() {
    use writeback::model::GroupScope;
    let mut mixed = plugins(Some("suffix_v2"), &["judge"], &[]);
    let types = vec!["DynamicMembership".to_string()];
    let view = PolicyGroup { scope: GroupScope::Global, group_types: &types, member_count: 7, ..group(ID, "Finance") };
    let placement = mixed.place(&view).expect("the 0.1.0 naming policy answers");
    assert!(placement.cn.starts_with("Finance (v2)_"), "{}", placement.cn);
    assert_eq!(placement.scope, None, "0.1.0 has no scope to choose");
    let mut attributes = BTreeMap::new();
    mixed.transform(&view, &mut attributes).expect("the 0.2.0 transforms answer");
    let info = attributes.get("info").and_then(|v| v.first()).cloned().unwrap_or_default();
    assert_eq!(info, "members=7 types=DynamicMembership scope=global target=security");

    // Through the model: the transform judges the group with the scope the naming policy chose, and its count.
    let mut chosen = plugins(Some("scope_by_prefix"), &["judge"], &[]);
    let (_, attributes) =
        model::place_and_transform(&cloud_group(ID, "GG-Ops"), GroupKind::Security, 3, &settings(&[]), &mut chosen)
            .expect("placed")
            .expect("written");
    assert_eq!(attributes["info"], ["members=3 types= scope=global target=security"]);
    assert_eq!(attributes["groupType"], [GroupKind::Security.group_type(GroupScope::Global).to_string()]);

    let mut scoped = plugins(Some("scope_by_prefix"), &[], &[]);
    let scope_of = |name: &str, plugins: &mut TenantPlugins| plugins.place(&group(ID, name)).unwrap().scope;
    assert_eq!(scope_of("GG-Admins", &mut scoped), Some(GroupScope::Global));
    assert_eq!(scope_of("DL-Share", &mut scoped), Some(GroupScope::DomainLocal));
    assert_eq!(scope_of("Finance", &mut scoped), None);
}

/// A component that imports an interface the agent does not provide (as componentize-js imports `wasi:http`)
/// loads, names groups, and fails only the calls that use that import, saying which; the next call still runs.
#[test]
fn an_import_the_agent_does_not_provide_traps_only_when_called() {
    let mut fetcher = plugins(Some("fetcher"), &[], &[]);
    assert!(fetcher.place(&group(ID, "Finance")).is_ok(), "it loads and names a group");
    for (name, called) in
        [("fetch it", "acme:net/fetch@1.0.0#get"), ("connect", "acme:net/fetch@1.0.0#[constructor]connection")]
    {
        let refused = fetcher.place(&group(ID, name)).unwrap_err().to_string();
        assert!(
            refused.contains(&format!("the plugin called {called}, which the agent does not provide")),
            "{refused}"
        );
    }
    assert!(fetcher.place(&group(ID, "Finance")).is_ok(), "a fresh instance serves the next call");
}
