//! `graph-sim`: the Microsoft Graph simulator as a standalone server for
//! demos and scripts. Loads a tenant fixture, prints
//! `graph-sim listening on http://127.0.0.1:PORT` once ready, and serves
//! until interrupted. The tenant can be changed over `/_sim/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Parser;
use writeback_tests::graphsim::{Fixture, GraphSim, SimConfig};

/// Serve a simulated Entra ID tenant over the Microsoft Graph protocol.
#[derive(Debug, Parser)]
#[command(name = "graph-sim", version)]
struct Args {
    /// Loopback address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Tenant id the token endpoint accepts.
    #[arg(long)]
    tenant_id: String,
    /// Client id the token endpoint accepts.
    #[arg(long)]
    client_id: String,
    /// File holding the client secret (surrounding whitespace is ignored).
    #[arg(long)]
    client_secret_file: PathBuf,
    /// Tenant fixture: `{"users": [...], "groups": [...]}` in Graph's JSON.
    #[arg(long)]
    fixture: Option<PathBuf>,
    /// Write the base URL here once listening, for scripts to wait on.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Entries per delta page.
    #[arg(long)]
    page_size: Option<usize>,
    /// Member changes per group entry before the group is repeated.
    #[arg(long)]
    members_per_entry: Option<usize>,
    /// Shuffle each round's entries with this seed.
    #[arg(long)]
    shuffle_seed: Option<u64>,
    /// Lifetime of issued access tokens, in seconds.
    #[arg(long)]
    token_lifetime_secs: Option<u64>,
}

impl Args {
    fn config(&self) -> anyhow::Result<SimConfig> {
        let secret = std::fs::read_to_string(&self.client_secret_file)
            .with_context(|| format!("reading {}", self.client_secret_file.display()))?;
        let defaults = SimConfig::default();
        Ok(SimConfig {
            tenant_id: self.tenant_id.clone(),
            client_id: self.client_id.clone(),
            client_secret: secret.trim().to_owned(),
            token_lifetime_secs: self.token_lifetime_secs.unwrap_or(defaults.token_lifetime_secs),
            page_size: self.page_size.unwrap_or(defaults.page_size),
            members_per_entry: self.members_per_entry.unwrap_or(defaults.members_per_entry),
            shuffle_seed: self.shuffle_seed,
            ..defaults
        })
    }
}

/// Writes via a temporary file and a rename, so a watcher never reads half a URL.
fn write_ready_file(path: &Path, url: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{url}\n")).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    anyhow::ensure!(args.listen.ip().is_loopback(), "--listen must be a loopback address, not {}", args.listen);
    let sim = GraphSim::start_on(args.config()?, args.listen)?;
    if let Some(path) = &args.fixture {
        sim.load_fixture(Fixture::from_path(path)?).context("loading fixture")?;
    }
    println!("graph-sim listening on {}", sim.base_url());
    if let Some(path) = &args.ready_file {
        write_ready_file(path, sim.base_url())?;
    }
    shutdown_signal().await
}
