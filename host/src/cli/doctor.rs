//! `writeback doctor`: checks each tenant's setup step by step and prints one line per check, with the fix
//! when it fails. A failed step skips the steps that depend on it.

use std::collections::HashMap;
use std::fmt::Display;

use anyhow::Result;
use clap::Args;

use crate::config::{Config, TenantConfig};
use crate::directory::{Applied, Directory};
use crate::graph::GraphClient;
use crate::plan::Op;

/// The outcome of one check.
struct Check {
    ok: bool,
    what: String,
    detail: String,
}

impl Check {
    fn pass(what: &str, detail: impl Display) -> Check {
        Check { ok: true, what: what.into(), detail: detail.to_string() }
    }
    fn fail(what: &str, cause: impl Display, fix: &str) -> Check {
        Check { ok: false, what: what.into(), detail: format!("{cause}; fix: {fix}") }
    }
}

/// Arguments of `doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
}

/// Runs `doctor`.
pub async fn run(config: &Config, args: DoctorArgs) -> Result<()> {
    check(config, &super::setup::selected(config, args.tenant.as_deref())?).await
}

/// Runs every check for the given tenants; fails when any check fails.
async fn check(config: &Config, tenants: &[&TenantConfig]) -> Result<()> {
    println!("pass  config: {} tenants, state in {}", config.tenants.len(), config.agent.state_dir.display());
    let mut failed = 0;
    for tenant in tenants {
        println!("tenant {}", tenant.name);
        let mut checks = Vec::new();
        check_graph(tenant, &mut checks).await;
        check_directory(tenant, &mut checks).await;
        for check in &checks {
            println!("  {}  {}: {}", if check.ok { "pass" } else { "FAIL" }, check.what, check.detail);
        }
        failed += checks.iter().filter(|c| !c.ok).count();
    }
    if failed > 0 {
        anyhow::bail!("{failed} checks failed");
    }
    Ok(())
}

fn file_mode_check(checks: &mut Vec<Check>, what: &str, path: Option<&std::path::Path>) {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = path else { return };
    match std::fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o004 != 0 => checks.push(Check::fail(
            what,
            format!("{} is readable by every user", path.display()),
            &format!("chmod 600 {}", path.display()),
        )),
        Ok(_) => checks.push(Check::pass(what, format!("{} is private", path.display()))),
        Err(e) => checks.push(Check::fail(
            what,
            format!("cannot read {}: {e}", path.display()),
            "point the setting at a readable file",
        )),
    }
}

async fn check_graph(tenant: &TenantConfig, checks: &mut Vec<Check>) {
    file_mode_check(checks, "client secret file", tenant.client_secret_file.as_deref());
    file_mode_check(checks, "client key file", tenant.client_key_file.as_deref());
    let credential = match tenant.client_credential() {
        Ok(credential) => credential,
        Err(e) => {
            return checks.push(Check::fail("client credential", e, "set a client secret or a certificate and key"));
        }
    };
    let graph = match GraphClient::new(tenant, credential) {
        Ok(graph) => graph,
        Err(e) => return checks.push(Check::fail("Graph client", e, "check login_url and graph_url")),
    };
    if let Err(e) = graph.authenticate().await {
        return checks.push(Check::fail(
            "token request",
            e,
            "check tenant_id, client_id and the credential in the app registration",
        ));
    }
    checks.push(Check::pass("token request", format!("token issued by {}", tenant.login_base())));
    // `$deltatoken=latest` answers with no data, so these cost one cheap request each.
    for (what, start, permission) in [
        ("Graph group read", graph.groups_delta_start(), "Group.Read.All"),
        ("Graph user read", graph.users_delta_start(), "User.Read.All"),
    ] {
        match graph.delta_page(&format!("{start}&$deltatoken=latest")).await {
            Ok(_) => checks.push(Check::pass(what, format!("{permission} works"))),
            Err(e) => checks.push(Check::fail(
                what,
                e,
                &format!("grant the application permission {permission} with admin consent"),
            )),
        }
    }
    checks.push(check_writeback_source(tenant, &graph).await);
    if tenant.pim.enabled {
        let what = "PIM for Groups schedule read";
        // A group id no tenant has: the answer is an empty list when the permission is there.
        match graph.schedule_instances("00000000-0000-0000-0000-000000000000").await {
            Ok(_) => checks.push(Check::pass(what, "PrivilegedAssignmentSchedule.Read.AzureADGroup works")),
            Err(e) => checks.push(Check::fail(
                what,
                e,
                "grant the application permission PrivilegedAssignmentSchedule.Read.AzureADGroup with admin consent, or set [tenant.pim] enabled = false",
            )),
        }
    }
    let what = "Microsoft 365 writeback default";
    match (tenant.m365_default_writeback, graph.m365_writeback_default().await) {
        (Some(value), _) => {
            checks.push(Check::pass(what, format!("{value}, from the config (m365_default_writeback)")))
        }
        (None, Ok(value)) => {
            checks.push(Check::pass(what, format!("{value}, from the tenant setting NewUnifiedGroupWritebackDefault")))
        }
        (None, Err(e)) => {
            checks.push(Check::fail(what, e, "grant Group.Read.All, or set m365_default_writeback in the config"))
        }
    }
}

/// Whether the group delta query returns `writebackConfiguration`: no published source says so, so one group's
/// value from delta is compared with a GET of the same group.
async fn check_writeback_source(tenant: &TenantConfig, graph: &GraphClient) -> Check {
    let what = "writebackConfiguration source";
    if tenant.writeback_source == crate::config::WritebackSource::Batch {
        return Check::pass(what, "read with GET in $batch requests (writeback_source = \"batch\")");
    }
    let page = match graph.delta_page(&graph.groups_delta_start()).await {
        Ok(page) => page,
        Err(e) => return Check::fail(what, e, "grant Group.Read.All with admin consent"),
    };
    let Some(entry) =
        page.entries.iter().find(|e| e.get("@removed").is_none() && e.get("id").is_some_and(|id| id.is_string()))
    else {
        return Check::pass(what, "no group to compare yet");
    };
    let id = entry["id"].as_str().unwrap_or_default().to_string();
    let from_delta = entry.get("writebackConfiguration").cloned().unwrap_or(serde_json::Value::Null);
    let from_get = match graph.writeback_configurations(std::slice::from_ref(&id)).await {
        Ok(found) => found.get(&id).cloned().unwrap_or(serde_json::Value::Null),
        Err(e) => return Check::fail(what, e, "grant Group.Read.All with admin consent"),
    };
    if from_delta == from_get {
        Check::pass(what, format!("group delta returns it (group {id} reads the same both ways)"))
    } else {
        Check::fail(
            what,
            format!("group delta says {from_delta} for group {id}, but a GET of the group says {from_get}"),
            "set writeback_source = \"batch\" for this tenant",
        )
    }
}

async fn check_directory(tenant: &TenantConfig, checks: &mut Vec<Check>) {
    let settings = &tenant.directory;
    file_mode_check(checks, "bind password file", settings.password_file.as_deref());
    let password = match settings.password(&tenant.name) {
        Ok(password) => password,
        Err(e) => return checks.push(Check::fail("bind password", e, "set password_file or password_env")),
    };
    let mut directory = match Directory::connect(settings, &password).await {
        Ok(directory) => directory,
        Err(e) => {
            return checks.push(Check::fail(
                "LDAPS connection, certificate and bind",
                e,
                "check url, ca_file, bind_dn and the bind password",
            ));
        }
    };
    let tls = if settings.insecure_skip_verify {
        "certificate NOT verified (insecure_skip_verify)"
    } else {
        "certificate and host name verified"
    };
    checks.push(Check::pass(
        "LDAPS connection, certificate and bind",
        format!("{}: {tls}, bound as {}", settings.url, settings.bind_dn),
    ));
    let schema = &directory.schema;
    checks.push(Check::pass(
        "schema",
        crate::attributes::schema_optional()
            .map(|name| format!("{name} {}", if schema.has(name) { "present" } else { "absent (not written)" }))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    checks.push(probe_rights(&mut directory, &settings.target_ou).await);
    if tenant.pim.enabled {
        use crate::directory::GroupDirectory;
        let how = if directory.time_to_live_links().await {
            "written as TTL links: the forest's Privileged Access Management feature removes them at their end, even while no agent runs"
        } else {
            "removed by the agent at their end: the forest has no Privileged Access Management feature, so a membership outlives its end while no agent runs"
        };
        checks.push(Check::pass("time-bound members", how));
    }
    directory.close().await;
}

/// Creates and deletes a probe group in the target OU: the rights the agent needs there.
async fn probe_rights(directory: &mut Directory, target_ou: &str) -> Check {
    let what = "rights in the target OU";
    let name = format!("writeback-doctor-probe-{:08x}", rand::random::<u32>());
    let create = Op::Create {
        group_id: "doctor-probe".into(),
        dn: crate::dn::child(&name, target_ou),
        attributes: vec![
            ("objectClass".into(), vec!["group".into()]),
            ("sAMAccountName".into(), vec![name.chars().take(20).collect()]),
            ("groupType".into(), vec![crate::model::UNIVERSAL_SECURITY.to_string()]),
        ],
    };
    let fix = "delegate to the bind account: create and delete group objects in the target OU (see the README)";
    let guid = match directory.apply(&create, &HashMap::new()).await {
        Ok(Applied::Created { guid, .. }) => guid,
        Ok(_) => return Check::fail(what, "the probe group was not created", fix),
        Err(e) => return Check::fail(what, format!("cannot create a group in {target_ou}: {e}"), fix),
    };
    let delete = Op::Delete { group_id: "doctor-probe".into(), guid, dn: name.clone() };
    match directory.apply(&delete, &HashMap::new()).await {
        Ok(_) => Check::pass(what, format!("created and deleted a probe group in {target_ou}")),
        Err(e) => Check::fail(what, format!("created but cannot delete the probe group {name}: {e}"), fix),
    }
}
