//! The `writeback` binary: parses the command line, sets up logging, and turns errors into one line.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use writeback::cli::{Cli, LogFormat, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` joins the context chain with ": ", which keeps the cause on one line.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WRITEBACK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sled=warn,ldap3=warn"));
    // Colours only for a person at a terminal; files and pipes get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writeback::progress::log_writer())
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
