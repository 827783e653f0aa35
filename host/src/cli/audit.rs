//! `writeback audit`: the audit log of directory writes as JSON lines.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;

use crate::config::Config;
use crate::state::AuditRecord;

/// Arguments of `audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only records since this time (2026-11-22T10:00:00Z) or this long ago (2h).
    #[arg(long)]
    pub since: Option<String>,
    /// Only records of this cloud group id.
    #[arg(long)]
    pub group: Option<String>,
}

/// Runs `audit`.
pub fn run(config: &Config, args: AuditArgs) -> Result<()> {
    let since = args.since.as_deref().map(parse_since).transpose()?;
    print(config, &super::setup::selected(config, args.tenant.as_deref())?, &Filter { since, group: args.group })
}

/// Which records to print.
#[derive(Debug, Default)]
pub struct Filter {
    /// Seconds since the epoch; older records are left out.
    pub since: Option<u64>,
    /// Only records of this cloud group.
    pub group: Option<String>,
}

impl Filter {
    fn keeps(&self, record: &AuditRecord) -> bool {
        self.since.is_none_or(|since| record.time >= since) && self.group.as_ref().is_none_or(|g| &record.group_id == g)
    }
}

/// Reads `--since`: an RFC 3339 time (`2026-11-22T10:00:00Z`) or a span back from now (`2h`, `30m`).
pub fn parse_since(text: &str) -> Result<u64> {
    if let Ok(span) = humantime::parse_duration(text) {
        let at = SystemTime::now().checked_sub(span).unwrap_or(UNIX_EPOCH);
        return Ok(at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs());
    }
    let at = humantime::parse_rfc3339_weak(text)
        .with_context(|| format!("--since {text:?} is neither a time like 2026-11-22T10:00:00Z nor a span like 2h"))?;
    Ok(at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs())
}

/// Prints the selected tenants' audit records, oldest first, one JSON object per line.
pub fn print(config: &Config, tenants: &[&crate::config::TenantConfig], filter: &Filter) -> Result<()> {
    let store = super::setup::open_store(config)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for tenant in tenants {
        for record in store.tenant(&tenant.name)?.audit_log()?.iter().filter(|r| filter.keeps(r)) {
            serde_json::to_writer(&mut out, record)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_span() {
        assert_eq!(parse_since("1970-01-01T00:01:40Z").unwrap(), 100);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let hour_ago = parse_since("1h").unwrap();
        assert!(now - hour_ago >= 3600 && now - hour_ago < 3700);
        assert!(parse_since("yesterday-ish").unwrap_err().to_string().contains("--since"));
    }

    #[test]
    fn filter_keeps_matching_records() {
        let record = AuditRecord {
            time: 50,
            tenant: "t".into(),
            group_id: "g".into(),
            operation: "create".into(),
            dn: "CN=x".into(),
            detail: String::new(),
            outcome: "ok".into(),
            cause: None,
            found: None,
        };
        assert!(Filter::default().keeps(&record));
        assert!(!Filter { since: Some(51), group: None }.keeps(&record));
        assert!(!Filter { since: None, group: Some("h".into()) }.keeps(&record));
        assert!(Filter { since: Some(50), group: Some("g".into()) }.keeps(&record));
    }
}
