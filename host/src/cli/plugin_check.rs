//! `writeback plugin check`: runs a plugin on sample groups through the real host, with the same validation
//! the agent applies, and prints each result with its verdict.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;

use crate::attributes::SchemaSupport;
use crate::cloud::CloudGroup;
use crate::config::PluginsConfig;
use crate::model::{self, ModelSettings};
use crate::plugins::{PluginEngine, PluginError, TenantPlugins};

/// `writeback plugin …`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run a plugin on sample groups and print each result with its validation verdict.
    Check(CheckArgs),
}

/// Runs `plugin …`.
pub fn run(command: PluginCommand) -> Result<()> {
    match command {
        PluginCommand::Check(args) => check(&args),
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
    /// The tenant's target OU, for checking the placements.
    #[arg(long, default_value = "OU=Writeback,DC=corp,DC=example")]
    pub target_ou: String,
    /// Further OUs the plugin may place groups in.
    #[arg(long = "allowed-ou")]
    pub allowed_ous: Vec<String>,
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

/// Runs the check; fails when any output is invalid.
fn check(args: &CheckArgs) -> Result<()> {
    let samples = samples(args)?;
    let mut plugin_config = PluginsConfig::default();
    for setting in &args.settings {
        let (key, value) = setting.split_once('=').with_context(|| format!("--config {setting:?} is not KEY=VALUE"))?;
        plugin_config.config.insert(key.to_string(), value.to_string());
    }
    plugin_config.allowed_ous = args.allowed_ous.clone();
    let engine = PluginEngine::new(None)?;
    let (mut plugins, world) = load_any_world(&engine, &plugin_config, &args.file)?;
    println!("plugin {} ({world}), target OU {}", args.file.display(), args.target_ou);
    let settings = ModelSettings {
        m365_default_writeback: true,
        target_ou: args.target_ou.clone(),
        allowed_ous: args.allowed_ous.clone(),
        schema: SchemaSupport::default(),
        rules: Default::default(),
        group_scope: Default::default(),
    };
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
        match model::place_and_transform(&group, kind, 0, &settings, &mut plugins) {
            Ok(Ok((placement, attributes))) => {
                let ou = placement.ou.as_deref().unwrap_or("(target OU)");
                let scope = placement.scope.map_or("(tenant's group_scope)", |s| s.name());
                println!(
                    "valid    {name:?}: cn={:?} sAMAccountName={:?} ou={ou} scope={scope}",
                    placement.cn, placement.sam_account_name
                );
                if world == "transformer" {
                    for (attribute, values) in attributes.iter().filter(|(_, v)| !v.is_empty()) {
                        println!("           {attribute}: {}", values.join("; "));
                    }
                }
            }
            Ok(Err(reason)) => println!("excluded {name:?}: {reason}"),
            Err(reason) => {
                invalid += 1;
                println!("INVALID  {name:?}: {reason}");
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

/// Loads the file as a naming plugin, or else as a transform (with the built-in naming).
fn load_any_world(
    engine: &PluginEngine,
    config: &PluginsConfig,
    file: &std::path::Path,
) -> Result<(TenantPlugins, &'static str)> {
    let naming = PluginsConfig { naming: Some(file.to_path_buf()), ..config.clone() };
    let as_naming = match TenantPlugins::load(engine, &naming) {
        Ok(plugins) => return Ok((plugins, "naming-policy")),
        Err(e @ PluginError::World { .. }) => e,
        Err(e) => return Err(e.into()),
    };
    let transform = PluginsConfig { transforms: vec![file.to_path_buf()], ..config.clone() };
    let as_transform = match TenantPlugins::load(engine, &transform) {
        Ok(plugins) => return Ok((plugins, "transformer")),
        Err(e @ PluginError::World { .. }) => e,
        Err(e) => return Err(e.into()),
    };
    // A world the component does export, but of a contract version this agent does not run, says so itself. (One
    // that cannot be linked was reported above, with the linker's reason.)
    let reason =
        [as_naming, as_transform].into_iter().find(|e| !e.to_string().contains("exports no writeback:plugin/"));
    match reason {
        Some(e) => Err(e.into()),
        None => bail!("{} implements neither the naming-policy nor the transformer world", file.display()),
    }
}
