//! `writeback lease release`: hands this agent's writer leases to a standby, for maintenance.

use anyhow::{Result, bail};
use clap::Subcommand;

use super::setup::selected;
use crate::config::Config;
use crate::lease::{Leases, Mode};

/// `writeback lease …`
#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Hand this agent's writer leases to a standby, for maintenance. A running daemon of this agent stops
    /// writing before its next batch and does not take the lease back while another agent wants it.
    Release {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// Runs `lease …`.
pub async fn run(config: &Config, command: LeaseCommand) -> Result<()> {
    match command {
        LeaseCommand::Release { tenant } => release(config, tenant.as_deref()).await,
    }
}

/// `lease release`: hands over the leases this agent holds.
async fn release(config: &Config, tenant: Option<&str>) -> Result<()> {
    let tenants = selected(config, tenant)?;
    let leases = Leases::new(&config.agent.agent_id(), tenants.iter().copied(), Mode::Claim);
    if leases.is_empty() {
        bail!("no selected tenant has a [tenant.lease] table, so there is no lease to release");
    }
    let mut failed = Vec::new();
    for line in leases.release_all().await {
        match line {
            Ok(text) => println!("{text}"),
            Err(text) => failed.push(text),
        }
    }
    if failed.is_empty() { Ok(()) } else { bail!("{}", failed.join(" / ")) }
}
