//! Plugin costs through the real host: compile, load from cache, warm calls (with validation) and fresh
//! instances. Run `plugins/build.sh` first, then `cargo bench -p writeback --bench plugins`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use writeback::attributes::SchemaSupport;
use writeback::cloud::CloudGroup;
use writeback::config::PluginsConfig;
use writeback::model::{self, GroupKind, GroupPolicy, ModelSettings};
use writeback::plugins::{PluginEngine, TenantPlugins};

fn wasm(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing; run plugins/build.sh first", path.display());
    path
}

/// Runs `f` `n` times and returns the mean time per run.
fn mean(n: u32, mut f: impl FnMut()) -> Duration {
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed() / n
}

fn main() {
    let config = PluginsConfig { naming: Some(wasm("cloud_sync_naming")), ..PluginsConfig::default() };
    let cache = tempfile::tempdir().expect("temp dir");
    let settings = ModelSettings {
        m365_default_writeback: true,
        target_ou: "OU=Writeback,DC=corp,DC=example".into(),
        allowed_ous: vec![],
        schema: SchemaSupport::default(),
        rules: Default::default(),
        group_scope: Default::default(),
    };
    let group = CloudGroup {
        id: "6f1c2a9e-0b1d-4c3e-9f6a-1b2c3d4e5f60".into(),
        display_name: Some("Finance Team".into()),
        writeback_enabled: Some(true),
        ..Default::default()
    };

    let compile = mean(5, || {
        let engine = PluginEngine::new(None).expect("engine");
        TenantPlugins::load(&engine, &config).expect("load");
    });
    let engine = PluginEngine::new(Some(cache.path().to_path_buf())).expect("engine");
    TenantPlugins::load(&engine, &config).expect("first load fills the cache");
    let cached = mean(50, || {
        TenantPlugins::load(&engine, &config).expect("load from cache");
    });

    let mut plugins = TenantPlugins::load(&engine, &config).expect("load");
    let view = model::policy_group(&group, GroupKind::Security, settings.group_scope, 0).expect("named group");
    let naming_only = mean(200_000, || {
        let placement = plugins.place(&view).expect("placement");
        model::check_placement(&placement, &settings).expect("valid placement");
    });
    let place_only = mean(200_000, || {
        plugins.place(&view).expect("placement");
    });
    let placement = plugins.place(&view).expect("placement");
    let check_only = mean(200_000, || {
        model::check_placement(&placement, &settings).expect("valid placement");
    });
    let mut call = || {
        model::place_and_transform(&group, GroupKind::Security, 0, &settings, &mut plugins)
            .expect("valid placement")
            .expect("written, not excluded");
    };
    call();
    let calls = 200_000;
    let warm = mean(calls, &mut call);
    let fresh = mean(2_000, || {
        plugins.drop_instances();
        model::place_and_transform(&group, GroupKind::Security, 0, &settings, &mut plugins)
            .expect("valid placement")
            .expect("written, not excluded");
    });
    let builtin = mean(calls, || {
        model::place_and_transform(&group, GroupKind::Security, 0, &settings, &mut model::BuiltinPolicy)
            .expect("valid placement")
            .expect("written, not excluded");
    });

    println!(
        "plugin benchmark (cloud_sync_naming.wasm, {} bytes)",
        std::fs::metadata(wasm("cloud_sync_naming")).map(|m| m.len()).unwrap_or(0)
    );
    println!("  load: compile (engine, compile, link, InstancePre) {:>9.3} ms", compile.as_secs_f64() * 1e3);
    println!("  load: from the compile cache (link, InstancePre)    {:>9.3} ms", cached.as_secs_f64() * 1e3);
    println!(
        "  warm naming call incl. validation                   {:>9.3} µs  ({:.0} calls/s)",
        naming_only.as_secs_f64() * 1e6,
        1.0 / naming_only.as_secs_f64()
    );
    println!("    of which the plugin call                          {:>9.3} µs", place_only.as_secs_f64() * 1e6);
    println!("    of which validation                               {:>9.3} µs", check_only.as_secs_f64() * 1e6);
    println!("  whole model step (naming, validation, attributes)   {:>9.3} µs", warm.as_secs_f64() * 1e6);
    println!("  naming call on a fresh instance                     {:>9.3} µs", fresh.as_secs_f64() * 1e6);
    println!("  the same step with the built-in naming              {:>9.3} µs", builtin.as_secs_f64() * 1e6);
}
