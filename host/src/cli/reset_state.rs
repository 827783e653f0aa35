//! `writeback reset-state`: forgets a tenant's local state; the next cycle resyncs from Graph and the directory.

use anyhow::{Context, Result};
use clap::Args;

use super::setup::selected;
use crate::config::Config;
use crate::state::Store;

/// Arguments of `reset-state`.
#[derive(Debug, Args)]
pub struct ResetStateArgs {
    #[arg(long)]
    pub tenant: String,
}

/// Runs `reset-state`.
pub fn run(config: &Config, args: ResetStateArgs) -> Result<()> {
    reset_state(config, &args.tenant)
}

fn reset_state(config: &Config, tenant: &str) -> Result<()> {
    let tenant = selected(config, Some(tenant))?[0];
    let path = &config.agent.state_dir;
    match Store::open(path) {
        Ok(store) => store.tenant(&tenant.name)?.reset()?,
        Err(e) => {
            // A store too damaged to open is moved aside whole; every tenant then resyncs.
            let aside = path.join(format!("db.damaged-{}", std::process::id()));
            std::fs::rename(path.join("db"), &aside)
                .with_context(|| format!("cannot move the damaged state ({e}) aside"))?;
            println!("the state could not be opened ({e}); moved it to {}", aside.display());
        }
    }
    println!("state of tenant {} reset; the next cycle resyncs from Graph and the directory", tenant.name);
    Ok(())
}
