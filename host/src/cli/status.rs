//! `writeback status`: each tenant's last cycle, as text or as JSON, read from `status.json` so that it works
//! while a daemon holds the state.

use anyhow::{Context, Result};
use clap::Args;

use super::setup::selected;
use crate::config::Config;
use crate::status::StatusFile;

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Print one JSON document, `{"tenants": {NAME: STATUS}}`, in the shape the README documents.
    #[arg(long)]
    pub json: bool,
}

/// Runs `status`.
pub fn run(config: &Config, args: StatusArgs) -> Result<()> {
    let tenant = args.tenant.as_deref();
    let file = StatusFile::load(&config.agent.state_dir)
        .with_context(|| format!("cannot read the status in {}", config.agent.state_dir.display()))?;
    let mut shown = StatusFile::default();
    for tenant in selected(config, tenant)? {
        let status = file.tenants.get(&tenant.name).cloned().unwrap_or_default();
        if args.json {
            shown.tenants.insert(tenant.name.clone(), status);
        } else {
            print!("{}", status.render(&tenant.name));
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
    }
    Ok(())
}
