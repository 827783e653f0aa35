//! The command line: the commands, one file each, and the dispatch. What several commands set up from the
//! config (tenants, store, plugins, a tenant's sync) is in [`setup`].

mod audit;
mod doctor;
mod lease;
mod plan;
mod plugin_check;
mod plugin_new;
mod reload;
mod reset_state;
mod run;
mod setup;
mod status;
mod sync;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;

/// Writes Microsoft Entra ID groups back into on-premises Active Directory.
#[derive(Debug, Parser)]
#[command(name = "writeback", version)]
pub struct Cli {
    /// The agent's TOML configuration file (given before the command; `plugin check` takes its own
    /// `--config KEY=VALUE` settings, and reads this file only with `--tenant`).
    #[arg(long, short, env = "WRITEBACK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The agent's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one sync cycle for each tenant and exit.
    Sync(sync::SyncArgs),
    /// Run as a daemon: a delta cycle every `interval`, a full reconcile every `reconcile_interval`.
    Run,
    /// Print every directory change the next cycle would make; write nothing.
    Plan(plan::PlanArgs),
    /// Print each tenant's last cycle, managed groups, skipped members, conflicts and held deletes.
    Status(status::StatusArgs),
    /// Forget a tenant's local state; the next cycle resyncs from Graph and the directory.
    ResetState(reset_state::ResetStateArgs),
    /// Print the audit log of directory writes as JSON lines.
    Audit(audit::AuditArgs),
    /// Check each tenant's setup: credentials, Graph permissions, LDAPS, bind, rights and schema.
    Doctor(doctor::DoctorArgs),
    /// Tools for plugin authors.
    #[command(subcommand)]
    Plugin(plugin_check::PluginCommand),
    /// The writer lease of tenants that several agents share.
    #[command(subcommand)]
    Lease(lease::LeaseCommand),
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    // `plugin check` needs no agent config.
    if let Command::Plugin(command) = cli.command {
        let config = cli.config.clone();
        return crate::plugins::off_reactor(|| plugin_check::run(command, config.as_deref()));
    }
    let config_path = cli.config.clone().context("no config file given; pass --config FILE")?;
    let config = Config::load(&config_path)?;
    match cli.command {
        Command::Sync(args) => sync::run(&config, args).await,
        Command::Run => run::run(&config).await,
        Command::Plan(args) => plan::run(&config, args).await,
        Command::Status(args) => status::run(&config, args),
        Command::ResetState(args) => reset_state::run(&config, args),
        Command::Audit(args) => audit::run(&config, args),
        Command::Doctor(args) => doctor::run(&config, args).await,
        Command::Plugin(_) => unreachable!("handled above"),
        Command::Lease(command) => lease::run(&config, command).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn plugin_check_takes_settings_after_the_file() {
        let cli = Cli::try_parse_from(["writeback", "plugin", "check", "p.wasm", "--config", "a=b", "--config", "c=d"])
            .unwrap();
        let Command::Plugin(plugin_check::PluginCommand::Check(args)) = cli.command else {
            panic!("plugin check expected")
        };
        assert_eq!(args.settings, ["a=b", "c=d"]);
    }
}
