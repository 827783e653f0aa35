//! `writeback plugin check`: runs a plugin on sample groups through the real host, with the same validation
//! the agent applies, and prints each result with its verdict.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;

use crate::attributes::SchemaSupport;
use crate::cloud::CloudGroup;
use crate::config::{Config, PluginsConfig};
use crate::model::{self, ModelSettings};
use crate::plugins::{PluginEngine, TenantPlugins};

/// `writeback plugin …`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run a plugin on sample groups and print each result with its validation verdict.
    Check(CheckArgs),
    /// Write a buildable plugin project: the contract, a sample policy, its test and a build script.
    New(super::plugin_new::NewArgs),
}

/// Runs `plugin …`; `config` is the agent's config file, when one was given.
pub fn run(command: PluginCommand, config: Option<&std::path::Path>) -> Result<()> {
    match command {
        PluginCommand::Check(args) => check(&args, config),
        PluginCommand::New(args) => super::plugin_new::run(&args),
    }
}

/// Arguments of `plugin check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The plugin: a component of the naming-policy or the transformer world.
    pub file: PathBuf,
    /// One group as JSON (Graph's names: id, displayName, description, mailNickname, mail, groupTypes,
    /// onPremisesGroupType).
    #[arg(long, conflicts_with = "groups")]
    pub group: Option<String>,
    /// A file holding a JSON list of such groups.
    #[arg(long)]
    pub groups: Option<PathBuf>,
    /// A plugin setting, as the tenant's [tenant.plugins.config] would give it.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// The target OU the placements are checked against: by default the tenant's with `--tenant`, else
    /// OU=Writeback,DC=corp,DC=example.
    #[arg(long)]
    pub target_ou: Option<String>,
    /// Further OUs the plugin may place groups in, besides the tenant's `allowed_ous` with `--tenant`.
    #[arg(long = "allowed-ou")]
    pub allowed_ous: Vec<String>,
    /// Take the plugin settings, limits, OUs, group scope and compile cache of this tenant of the agent's config
    /// (`writeback --config FILE plugin check … --tenant NAME`); the options here override them.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Wall-clock limit of one call, as the tenant's `timeout` (default 100ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Memory limit of one instance in MiB, as the tenant's `memory_limit_mib` (default 64).
    #[arg(long)]
    pub memory_limit_mib: Option<usize>,
}

/// A sample group in Graph's shape.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SampleGroup {
    id: String,
    display_name: Option<String>,
    description: Option<String>,
    mail_nickname: Option<String>,
    mail: Option<String>,
    #[serde(default)]
    group_types: Vec<String>,
    on_premises_group_type: Option<String>,
}

impl SampleGroup {
    fn cloud_group(self) -> CloudGroup {
        CloudGroup {
            id: self.id,
            display_name: self.display_name,
            description: self.description,
            mail_nickname: self.mail_nickname,
            mail: self.mail,
            group_types: Some(self.group_types),
            writeback_enabled: Some(true),
            writeback_group_type: self.on_premises_group_type,
            ..Default::default()
        }
    }
}

/// Groups used when none are given: ordinary names and the awkward ones.
const BUILTIN_SAMPLES: &str = r#"[
  {"id": "6f1c2a9e-0b1d-4c3e-9f6a-1b2c3d4e5f60", "displayName": "Finance Team", "mailNickname": "finance"},
  {"id": "0a7b9c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d", "displayName": "FIN-Payroll", "mailNickname": "fin-payroll"},
  {"id": "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b", "displayName": "Ops, \"Tier 0\" + #Admins\\", "description": "DN specials"},
  {"id": "1b2c3d4e-5f60-4718-8293-a4b5c6d7e8f9", "displayName": "Marketing", "mailNickname": "marketing",
   "mail": "marketing@contoso.com", "groupTypes": ["Unified"]},
  {"id": "2c3d4e5f-6071-4829-93a4-b5c6d7e8f9a0", "displayName": "A very long display name that goes well past the fifty-one characters a CN keeps"}
]"#;

/// The target OU when neither a tenant nor `--target-ou` names one.
const DEFAULT_TARGET_OU: &str = "OU=Writeback,DC=corp,DC=example";

/// The agent's compile cache, when it exists and belongs to whoever runs the check. Compiled code from the cache
/// runs natively, so an admin running the check as root must not take it from a directory the agent's own
/// account can write; nor is it created here, where it would belong to root and shut the agent out.
fn own_cache(dir: &std::path::Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).ok()?;
    // Linux gives /proc/self to the process's effective user.
    let me = std::fs::metadata("/proc/self").ok()?.uid();
    let own = meta.uid() == me && meta.mode() & 0o022 == 0;
    if !own {
        println!("not using the agent's compile cache {}: it belongs to another user", dir.display());
    }
    own.then(|| dir.to_path_buf())
}

/// What the check runs with: a tenant's settings, or the defaults, and the options on top.
struct Setup {
    plugins: PluginsConfig,
    settings: ModelSettings,
    cache: Option<PathBuf>,
}

/// The tenant's settings when `--tenant` names one, else the defaults; the options override either.
fn setup(args: &CheckArgs, config: Option<&std::path::Path>) -> Result<Setup> {
    let mut settings = ModelSettings {
        m365_default_writeback: true,
        target_ou: DEFAULT_TARGET_OU.to_string(),
        allowed_ous: Vec::new(),
        schema: SchemaSupport::default(),
        rules: Default::default(),
        group_scope: Default::default(),
    };
    let (mut plugins, cache) = match &args.tenant {
        Some(name) => {
            let path = config.context("--tenant needs the agent's config: writeback --config FILE plugin check …")?;
            let config = Config::load(path)?;
            let tenant = config.tenant(name).with_context(|| format!("{} has no tenant {name:?}", path.display()))?;
            settings.target_ou = tenant.directory.target_ou.clone();
            settings.group_scope = tenant.group_scope;
            let plugins = PluginsConfig { naming: None, transforms: Vec::new(), ..tenant.plugins.clone() };
            (plugins, own_cache(&config.agent.state_dir.join("plugin-cache")))
        }
        None => (PluginsConfig::default(), None),
    };
    if let Some(ou) = &args.target_ou {
        settings.target_ou = ou.clone();
    }
    for setting in &args.settings {
        let (key, value) = setting.split_once('=').with_context(|| format!("--config {setting:?} is not KEY=VALUE"))?;
        plugins.config.insert(key.to_string(), value.to_string());
    }
    plugins.allowed_ous.extend(args.allowed_ous.iter().cloned());
    settings.allowed_ous = plugins.allowed_ous.clone();
    if let Some(timeout) = args.timeout {
        plugins.timeout = timeout;
    }
    if let Some(mib) = args.memory_limit_mib {
        plugins.memory_limit_mib = mib;
    }
    Ok(Setup { plugins, settings, cache })
}

/// Runs the check; fails when any output is invalid.
fn check(args: &CheckArgs, config: Option<&std::path::Path>) -> Result<()> {
    let samples = samples(args)?;
    let Setup { plugins: plugin_config, settings, cache } = setup(args, config)?;
    let engine = PluginEngine::new(cache)?;
    let world = crate::plugins::world_of(&engine, &args.file)?;
    let loaded = match world {
        "naming-policy" => PluginsConfig { naming: Some(args.file.clone()), ..plugin_config.clone() },
        _ => PluginsConfig { transforms: vec![args.file.clone()], ..plugin_config.clone() },
    };
    let mut plugins = TenantPlugins::load(&engine, &loaded)?;
    println!(
        "plugin {} ({world}), target OU {}, timeout {:?}, memory limit {} MiB",
        args.file.display(),
        settings.target_ou,
        plugin_config.timeout,
        plugin_config.memory_limit_mib
    );
    let mut invalid = 0;
    for sample in samples {
        let group = sample.cloud_group();
        let kind = match model::scope(&group, true, &model::OPTED_IN) {
            Ok(kind) => kind,
            Err(_) => bail!(
                "group {}: onPremisesGroupType {:?} is not a writeback type",
                group.id,
                group.writeback_group_type
            ),
        };
        let name = group.display_name.clone().unwrap_or_default();
        let started = std::time::Instant::now();
        let outcome = model::place_and_transform(&group, kind, 0, &settings, &mut plugins);
        let took = format!("{:.1} µs", started.elapsed().as_secs_f64() * 1e6);
        match outcome {
            Ok(Ok((placement, attributes))) => {
                let ou = placement.ou.as_deref().unwrap_or("(target OU)");
                let scope = placement.scope.map_or("(tenant's group_scope)", |s| s.name());
                println!(
                    "valid    {name:?}: cn={:?} sAMAccountName={:?} ou={ou} scope={scope} ({took})",
                    placement.cn, placement.sam_account_name
                );
                if world == "transformer" {
                    for (attribute, values) in attributes.iter().filter(|(_, v)| !v.is_empty()) {
                        println!("           {attribute}: {}", values.join("; "));
                    }
                }
            }
            Ok(Err(reason)) => println!("excluded {name:?}: {reason} ({took})"),
            Err(reason) => {
                invalid += 1;
                println!("INVALID  {name:?}: {reason} ({took})");
            }
        }
    }
    if invalid > 0 {
        bail!("{invalid} invalid outputs");
    }
    Ok(())
}

fn samples(args: &CheckArgs) -> Result<Vec<SampleGroup>> {
    if let Some(json) = &args.group {
        return Ok(vec![serde_json::from_str(json).context("--group is not a group in JSON")?]);
    }
    let text = match &args.groups {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => BUILTIN_SAMPLES.to_string(),
    };
    serde_json::from_str(&text).context("the groups are not a JSON list of groups")
}
