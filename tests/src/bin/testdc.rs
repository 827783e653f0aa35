//! `testdc`: start, stop or restart the Samba AD DC the integration tests
//! share. See `writeback_tests::dc` for what it sets up.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use writeback_tests::dc::{self, DcInfo};

#[derive(Parser)]
#[command(about = "Manage the Samba AD DC shared by the writeback integration tests")]
struct Cli {
    /// DC directory [default: WORKSPACE/target/testdc]
    #[arg(long, global = true, env = "WRITEBACK_TESTDC_DIR")]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the DC unless it already answers on LDAPS (provisioning it the
    /// first time), then print info.json.
    Ensure,
    /// Stop the DC, keeping its directory.
    Stop,
    /// Stop and start the DC with its data intact, then print info.json.
    Restart,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = cli.dir.unwrap_or_else(dc::default_dir);
    let outcome = match cli.command {
        Cmd::Ensure => dc::ensure(&dir).and_then(|info| print_info(&info)),
        Cmd::Restart => dc::restart(&dir).and_then(|info| print_info(&info)),
        Cmd::Stop => dc::stop(&dir).map(|pid| match pid {
            Some(pid) => println!("stopped samba pid {pid}"),
            None => println!("not running"),
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testdc: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_info(info: &DcInfo) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(info)?);
    Ok(())
}
