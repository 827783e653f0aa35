//! How the agent speaks Graph, end to end: paging and split members, partial updates from the users
//! delta, resyncs, stored links Graph refuses, throttling (and a stop during a long wait), token refresh,
//! malformed pages and bodies past the size limit.

use writeback_tests::e2e::{Env, enabled_group, new_id, text};
use writeback_tests::graphsim::{Endpoint, Fault, FaultKind, FaultTarget, Group, MemberRef, SimConfig, UserPatch};

fn fault(target: FaultTarget, kind: FaultKind) -> Fault {
    Fault { target, kind }
}

#[tokio::test]
async fn members_split_over_shuffled_pages_are_merged() -> anyhow::Result<()> {
    let config = SimConfig { page_size: 2, members_per_entry: 2, shuffle_seed: Some(7), ..SimConfig::default() };
    let env = Env::with_sim("paging", config).await?;
    let mut users = Vec::new();
    for i in 0..7 {
        users.push(env.synced_user(&format!("page-u{i}")).await?);
    }
    let ids: Vec<&str> = users.iter().map(|(id, _)| id.as_str()).collect();
    let (big, small) = (new_id(), new_id());
    env.sim.add_group(enabled_group(&big, "Big", &ids)).unwrap();
    env.sim.add_group(enabled_group(&small, "Small", &ids[..1])).unwrap();
    env.sync(&[]).await?;
    let pages = env.sim.requests().iter().filter(|r| r.endpoint == Endpoint::GroupsDelta).count();
    assert!(pages >= 3, "the round took {pages} pages");
    assert_eq!(env.group(&big).await?.unwrap().members.len(), 7);
    assert_eq!(env.group(&small).await?.unwrap().members.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_user_synced_later_becomes_a_member() -> anyhow::Result<()> {
    let env = Env::new("late-user").await?;
    let ad = env.dc.create_user(&env.ou.users_dn, "late-u1").await?;
    let user = new_id();
    env.sim.add_user(writeback_tests::graphsim::User::cloud(user.clone(), "late@contoso.com")).unwrap();
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Late", &[&user])).unwrap();
    env.sync(&[]).await?;
    assert!(env.group(&id).await?.unwrap().members.is_empty());
    // The user is now synced from AD: only the users delta carries the change.
    let patch = UserPatch {
        on_premises_sync_enabled: Some(Some(true)),
        on_premises_security_identifier: Some(Some(ad.sid.clone())),
        ..Default::default()
    };
    env.sim.update_user(&user, patch).unwrap();
    env.sync(&[]).await?;
    let members = env.group(&id).await?.unwrap().members;
    assert_eq!(members.len(), 1);
    assert!(writeback::dn::same(&members[0], &ad.dn));
    Ok(())
}

#[tokio::test]
async fn an_expired_delta_token_resyncs_and_confirms_hard_deletes() -> anyhow::Result<()> {
    let env = Env::new("resync").await?;
    let (u1, _) = env.synced_user("resync-u1").await?;
    let (gone, soft, kept) = (new_id(), new_id(), new_id());
    env.sim.add_group(enabled_group(&gone, "Gone", &[&u1])).unwrap();
    let mut m365 = Group::unified(&soft, "Soft", "soft");
    m365.members = vec![MemberRef::user(&u1)];
    env.sim.add_group(m365).unwrap();
    env.sim.add_group(enabled_group(&kept, "Kept", &[&u1])).unwrap();
    env.sync(&[]).await?;
    assert_eq!(env.groups().await?.len(), 3);

    env.sim.hard_delete_group(&gone).unwrap();
    env.sim.soft_delete_group(&soft).unwrap();
    env.sim.remove_members(&kept, &[&u1]).unwrap();
    env.sim.expire_delta_tokens();
    env.sim.clear_requests();
    env.sync(&[]).await?;
    let requests = env.sim.requests();
    assert!(requests.iter().any(|r| r.status == Some(410)), "the old token was refused");
    let asked = |id: &str| requests.iter().any(|r| r.endpoint == Endpoint::DeletedItems && r.path.ends_with(id));
    assert!(asked(&gone) && asked(&soft), "missing groups are checked in deleted items");
    assert!(env.group(&gone).await?.is_none(), "hard-deleted (404 in deleted items) is deleted");
    assert!(env.group(&soft).await?.is_some(), "soft-deleted (still in deleted items) is kept");
    assert!(env.group(&kept).await?.unwrap().members.is_empty(), "a resync replaces stale members");
    Ok(())
}

#[tokio::test]
async fn throttling_and_transient_errors_are_retried_after_the_asked_delay() -> anyhow::Result<()> {
    let env = Env::new("throttle").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Throttled", &[])).unwrap();
    env.sim.inject(fault(FaultTarget::GroupsDelta, FaultKind::Throttle429 { retry_after_secs: 1 }));
    env.sim.inject(fault(FaultTarget::GroupsDelta, FaultKind::Unavailable503 { retry_after_secs: Some(0) }));
    env.sim.inject(fault(FaultTarget::UsersDelta, FaultKind::GatewayTimeout504));
    env.sim.inject(fault(FaultTarget::UsersDelta, FaultKind::ResetConnection));
    env.sync(&[]).await?;
    assert!(env.group(&id).await?.is_some());
    let groups: Vec<_> = env.sim.requests().into_iter().filter(|r| r.endpoint == Endpoint::GroupsDelta).collect();
    assert_eq!(groups[0].status, Some(429));
    assert!(groups[1].at_ms - groups[0].at_ms >= 1000, "Retry-After was not honoured: {groups:?}");
    assert_eq!(env.sim.pending_faults(), 0);
    Ok(())
}

#[tokio::test]
async fn a_refused_token_is_refreshed_once() -> anyhow::Result<()> {
    let env = Env::new("token").await?;
    env.sim.inject(fault(FaultTarget::GroupsDelta, FaultKind::Status401));
    env.sync(&[]).await?;
    let tokens = env.sim.requests().iter().filter(|r| r.endpoint == Endpoint::Token).count();
    assert_eq!(tokens, 2, "one token at start, one after the 401");
    Ok(())
}

#[tokio::test]
async fn a_malformed_page_fails_the_cycle_without_advancing_the_cursor() -> anyhow::Result<()> {
    let env = Env::new("malformed").await?;
    env.sync(&[]).await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "After the bad page", &[])).unwrap();
    env.sim.inject(fault(FaultTarget::GroupsDelta, FaultKind::MalformedBody));
    let output = env.run(&["sync", "--once"]).await?;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(error[0].contains("malformed page"), "{stderr}");
    assert!(env.group(&id).await?.is_none());
    env.sync(&[]).await?;
    assert!(env.group(&id).await?.is_some(), "the change behind the bad page is applied on the next cycle");
    Ok(())
}

#[tokio::test]
async fn a_no_change_cycle_reads_two_delta_links_and_writes_nothing() -> anyhow::Result<()> {
    let env = Env::new("quiet").await?;
    let (u1, _) = env.synced_user("quiet-u1").await?;
    env.sim.add_group(enabled_group(&new_id(), "Quiet", &[&u1])).unwrap();
    env.sync(&[]).await?;
    env.sim.clear_requests();
    let usn = env.dc.subtree_usn(&env.ou.dn).await?;
    env.sync(&[]).await?;
    let deltas: Vec<_> = env.sim.requests().into_iter().filter(|r| r.endpoint != Endpoint::Token).collect();
    assert_eq!(deltas.len(), 2, "{deltas:?}");
    assert_eq!(env.dc.subtree_usn(&env.ou.dn).await?, usn);
    Ok(())
}

#[tokio::test]
async fn a_response_slower_than_the_client_timeout_is_retried() -> anyhow::Result<()> {
    let mut env = Env::new("slow-graph").await?;
    env.tenant_settings("graph_timeout = \"1s\"")?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Slow", &[])).unwrap();
    env.sim.inject(fault(FaultTarget::GroupsDelta, FaultKind::Delay(std::time::Duration::from_secs(3))));
    let output = env.sync(&[]).await?;
    assert!(text(&output.stderr).contains("the request timed out"), "{}", text(&output.stderr));
    // The simulator answered only after 3 s, past the 1 s timeout; the group is there, so it was asked again.
    assert_eq!(env.sim.pending_faults(), 0);
    assert!(env.group(&id).await?.is_some());
    Ok(())
}

#[tokio::test]
async fn a_graph_that_stays_slow_fails_the_cycle_in_one_line_and_loses_nothing() -> anyhow::Result<()> {
    let mut env = Env::new("slow-graph-long").await?;
    env.tenant_settings("graph_timeout = \"1s\"")?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Late", &[])).unwrap();
    for _ in 0..8 {
        env.sim.inject(fault(FaultTarget::GroupsDelta, FaultKind::Delay(std::time::Duration::from_secs(3))));
    }
    let output = env.run(&["sync", "--once"]).await?;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("timed out"), "last line {last:?} of:\n{stderr}");
    assert!(env.group(&id).await?.is_none());
    // Once Graph answers in time again, the next cycle writes the group: the cursor did not move past it.
    env.sim.clear_faults();
    env.sync(&[]).await?;
    assert!(env.group(&id).await?.is_some());
    Ok(())
}

#[tokio::test]
async fn tokens_come_from_the_login_url_for_the_graph_scope_and_each_delta_from_its_version() -> anyhow::Result<()> {
    let env = Env::new("endpoints").await?;
    let base = env.sim.base_url().to_string();
    env.edit_config(|text| {
        text.replacen(&format!("login_url = \"{base}\""), &format!("login_url = \"{base}/login\""), 1)
    })?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Endpoints", &[])).unwrap();
    env.sync(&[]).await?;
    assert!(env.group(&id).await?.is_some());
    let requests = env.sim.requests();
    let tenant = &env.sim.config().tenant_id;
    let tokens: Vec<_> = requests.iter().filter(|r| r.endpoint == Endpoint::Token).collect();
    assert!(!tokens.is_empty());
    // The simulator refuses a scope other than `{graph_url}/.default`, so an issued token proves the scope.
    for token in tokens {
        assert_eq!(token.path, format!("/login/{tenant}/oauth2/v2.0/token"));
        assert_eq!(token.status, Some(200));
    }
    let paths = |endpoint: Endpoint| requests.iter().filter(move |r| r.endpoint == endpoint).map(|r| r.path.as_str());
    assert!(paths(Endpoint::GroupsDelta).all(|p| p == "/beta/groups/delta"), "{requests:?}");
    assert!(paths(Endpoint::UsersDelta).all(|p| p == "/v1.0/users/delta"), "{requests:?}");
    Ok(())
}

#[tokio::test]
async fn sync_state_not_found_and_resync_required_restart_the_round() -> anyhow::Result<()> {
    let env = Env::new("resync-signals").await?;
    env.sync(&[]).await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "After the resync", &[])).unwrap();
    env.sim.inject(fault(FaultTarget::GroupsDelta, FaultKind::SyncStateNotFound));
    env.sim.inject(fault(FaultTarget::UsersDelta, FaultKind::ResyncRequired));
    env.sim.clear_requests();
    env.sync(&[]).await?;
    assert!(env.group(&id).await?.is_some());
    assert_eq!(env.sim.pending_faults(), 0);
    for endpoint in [Endpoint::GroupsDelta, Endpoint::UsersDelta] {
        let asked: Vec<_> = env.sim.requests().into_iter().filter(|r| r.endpoint == endpoint).collect();
        assert_eq!(asked[0].status, Some(400), "{asked:?}");
        // The next request starts a new round: no cursor of the old one.
        let next = asked[1].query.as_deref().unwrap_or_default();
        assert!(!next.contains("deltatoken") && !next.contains("skiptoken"), "{asked:?}");
    }
    Ok(())
}

#[tokio::test]
async fn every_spelling_of_a_resync_signal_restarts_the_round_and_makes_a_full_cycle() -> anyhow::Result<()> {
    let env = Env::new("resync-spellings").await?;
    env.sync(&[]).await?;
    for code in ["SyncStateNotFound", "syncStateInvalid", "Directory_ExpiredPageToken"] {
        let id = new_id();
        env.sim.add_group(enabled_group(&id, &format!("After {code}"), &[])).unwrap();
        env.sim.inject(fault(FaultTarget::GroupsDelta, FaultKind::Status400(code.into())));
        env.sync(&[]).await?;
        assert!(env.group(&id).await?.is_some(), "{code}");
        assert_eq!(env.sim.pending_faults(), 0, "{code}");
        let status = text(&env.run(&["status"]).await?.stdout);
        assert!(status.contains("(full)"), "a cycle that resynced is a full one ({code}): {status}");
    }
    Ok(())
}

#[tokio::test]
async fn a_round_cut_off_after_some_pages_resumes_from_the_last_page_read() -> anyhow::Result<()> {
    use std::time::Duration;
    let env = Env::with_sim("resume", SimConfig { page_size: 1, ..SimConfig::default() }).await?;
    let ids: Vec<String> = (0..4).map(|_| new_id()).collect();
    for (i, id) in ids.iter().enumerate() {
        env.sim.add_group(enabled_group(id, &format!("Paged {i}"), &[])).unwrap();
    }
    // Two pages pass untouched; the third is cut off.
    env.sim.inject(fault(FaultTarget::GroupsDelta, FaultKind::Delay(Duration::ZERO)));
    env.sim.inject(fault(FaultTarget::GroupsDelta, FaultKind::Delay(Duration::ZERO)));
    env.sim.inject(fault(FaultTarget::GroupsDelta, FaultKind::MalformedBody));
    let output = env.run(&["sync", "--once"]).await?;
    assert!(!output.status.success());
    let first: Vec<_> = env.sim.requests().into_iter().filter(|r| r.endpoint == Endpoint::GroupsDelta).collect();
    assert_eq!(first.len(), 3, "{first:?}");

    env.sim.clear_requests();
    env.sync(&[]).await?;
    let resumed: Vec<_> = env.sim.requests().into_iter().filter(|r| r.endpoint == Endpoint::GroupsDelta).collect();
    // The third page is asked again, by the link the second page gave, not the round from its start.
    assert_eq!(resumed[0].query, first[2].query, "{resumed:?}");
    assert!(resumed[0].query.as_deref().unwrap_or_default().contains("skiptoken"), "{resumed:?}");
    for id in &ids {
        assert!(env.group(id).await?.is_some(), "group {id} from the pages before the cut is written");
    }
    Ok(())
}

#[tokio::test]
async fn throttling_that_does_not_end_fails_the_cycle_after_bounded_retries() -> anyhow::Result<()> {
    let env = Env::new("throttle-long").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Throttled for long", &[])).unwrap();
    for _ in 0..20 {
        env.sim.inject(fault(FaultTarget::GroupsDelta, FaultKind::Throttle429 { retry_after_secs: 0 }));
    }
    let output = env.run(&["sync", "--once"]).await?;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("429"), "{stderr}");
    let asked = env.sim.requests().iter().filter(|r| r.endpoint == Endpoint::GroupsDelta).count();
    assert_eq!(asked, 6, "six attempts, as documented");
    assert_eq!(env.sim.pending_faults(), 20 - asked);
    env.sim.clear_faults();
    env.sync(&[]).await?;
    assert!(env.group(&id).await?.is_some(), "nothing was lost");
    Ok(())
}

/// The one `error:` line of a failed run.
fn one_error_line(output: &std::process::Output) -> String {
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_string()
}

/// Whether anything connected to `trap` (a connection attempt is in its accept queue once the client has
/// finished, so a non-blocking accept after the run tells).
fn anything_arrived(trap: &std::net::TcpListener) -> bool {
    !matches!(trap.accept(), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test]
async fn a_redirect_from_the_token_endpoint_or_graph_is_never_followed() -> anyhow::Result<()> {
    let env = Env::new("redirect").await?;
    let trap = std::net::TcpListener::bind("127.0.0.1:0")?;
    trap.set_nonblocking(true)?;
    let target = format!("http://{}/collect", trap.local_addr()?);
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Behind a redirect", &[])).unwrap();
    for endpoint in [FaultTarget::Token, FaultTarget::GroupsDelta] {
        env.sim.inject(fault(endpoint, FaultKind::Redirect307(target.clone())));
        let error = one_error_line(&env.run(&["sync", "--once"]).await?);
        assert!(error.contains("redirect") && error.contains("307"), "{endpoint:?}: {error}");
        assert!(!anything_arrived(&trap), "{endpoint:?}: the redirect was followed, with the secret or the token");
    }
    env.sync(&[]).await?;
    assert!(env.group(&id).await?.is_some(), "nothing was lost");
    Ok(())
}

#[tokio::test]
async fn a_next_link_that_loops_fails_the_round_in_one_line_and_loses_nothing() -> anyhow::Result<()> {
    let env = Env::new("link-loop").await?;
    env.sync(&[]).await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "After the loop", &[])).unwrap();
    env.sim.inject(fault(FaultTarget::GroupsDelta, FaultKind::NextLinkLoop));
    let pages = || env.sim.requests().iter().filter(|r| r.endpoint == Endpoint::GroupsDelta).count();
    let before = pages();
    let error = one_error_line(&env.run(&["sync", "--once"]).await?);
    assert!(error.contains("already read") && !error.contains("deltatoken="), "{error}");
    assert_eq!(pages() - before, 1, "the link that came back was not asked again");
    env.sync(&[]).await?;
    assert!(env.group(&id).await?.is_some(), "the change behind the loop is applied on the next cycle");
    Ok(())
}

#[tokio::test]
async fn a_throttled_or_failing_token_endpoint_is_retried() -> anyhow::Result<()> {
    let env = Env::new("token-retry").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "After a throttled sign-in", &[])).unwrap();
    env.sim.inject(fault(FaultTarget::Token, FaultKind::Throttle429 { retry_after_secs: 0 }));
    env.sim.inject(fault(FaultTarget::Token, FaultKind::Unavailable503 { retry_after_secs: None }));
    env.sync(&[]).await?;
    assert_eq!(env.sim.pending_faults(), 0);
    let tokens = env.sim.requests().iter().filter(|r| r.endpoint == Endpoint::Token).count();
    assert!(tokens >= 3, "{tokens} token requests");
    assert!(env.group(&id).await?.is_some());
    Ok(())
}

/// The group delta requests the simulator has logged, oldest first.
fn group_pages(env: &Env) -> Vec<writeback_tests::graphsim::RequestRecord> {
    env.sim.requests().into_iter().filter(|r| r.endpoint == Endpoint::GroupsDelta).collect()
}

#[tokio::test]
async fn a_stored_link_refused_in_two_cycles_in_a_row_starts_a_full_round_and_loses_nothing() -> anyhow::Result<()> {
    use writeback_tests::agents::converged;
    let env = Env::new("refused-link").await?;
    let mut users = Vec::new();
    for i in 0..3 {
        let (id, ad) = env.synced_user(&format!("refused-u{i}")).await?;
        users.push((id, ad.dn));
    }
    let (kept, gone) = (new_id(), new_id());
    env.sim.add_group(enabled_group(&kept, "Kept", &[&users[0].0, &users[1].0])).unwrap();
    env.sim.add_group(enabled_group(&gone, "Gone", &[&users[0].0])).unwrap();
    env.sync(&[]).await?;

    // While Graph refuses the stored link, only a full round can bring these changes.
    env.sim.add_group(enabled_group(&new_id(), "Added", &[&users[2].0])).unwrap();
    env.sim.remove_members(&kept, &[&users[1].0]).unwrap();
    env.sim.add_members(&kept, &[MemberRef::user(&users[2].0)]).unwrap();
    env.sim.hard_delete_group(&gone).unwrap();
    let refusal = FaultKind::ClientError { status: 400, code: "Request_UnsupportedQuery".into() };
    for _ in 0..2 {
        env.sim.inject(fault(FaultTarget::GroupsDeltaLink, refusal.clone()));
    }
    // The first refusal fails the cycle in one line naming the status and the resource, not the link's token.
    let error = one_error_line(&env.run(&["sync", "--once"]).await?);
    assert!(error.contains("HTTP 400") && error.contains("/beta/groups/delta"), "{error}");
    assert!(!error.contains("deltatoken"), "{error}");

    // The next run, a new process, is refused again and starts a full round: the count is in the state.
    let output = env.sync(&[]).await?;
    assert_eq!(env.sim.pending_faults(), 0);
    let log = text(&output.stderr);
    let restarts: Vec<&str> = log.lines().filter(|l| l.contains("refused the stored delta link again")).collect();
    assert_eq!(restarts.len(), 1, "{log}");
    assert!(restarts[0].contains("HTTP 400") && restarts[0].contains("Groups"), "{}", restarts[0]);
    assert!(!restarts[0].contains("deltatoken"), "{}", restarts[0]);
    assert!(converged(&env, &users).await?, "nothing is lost");
    let pages = group_pages(&env);
    let last_refused = pages.iter().rposition(|r| r.fault.is_some()).expect("the stored link was refused");
    let next = pages.get(last_refused + 1).and_then(|r| r.query.as_deref()).unwrap_or_default();
    assert!(
        !next.contains("deltatoken") && !next.contains("skiptoken"),
        "the next request starts a full round: {pages:?}"
    );
    assert!(env.group(&gone).await?.is_none(), "the full round found the hard delete");
    Ok(())
}

/// Starts a daemon, waits until Graph has answered it 429 with Retry-After: 300 at `target`, sends SIGTERM,
/// and checks that the daemon exits 0 long before that wait would end.
async fn stop_during_a_long_retry_after(env: &Env, target: FaultTarget) -> anyhow::Result<()> {
    use rustix::process::Signal;
    use std::time::Duration;
    env.sim.clear_requests();
    env.sim.inject(fault(target, FaultKind::Throttle429 { retry_after_secs: 300 }));
    let mut daemon = env.start_daemon()?;
    let throttled = || env.sim.requests().iter().any(|r| r.status == Some(429));
    env.eventually(Duration::from_secs(30), || async { Ok(throttled()) }).await?;
    daemon.signal(Signal::TERM)?;
    // A bound on the wait, not a sleep: the test goes on as soon as the daemon has exited.
    let status = daemon.wait(Duration::from_secs(60)).await?;
    assert!(status.success(), "{target:?}: exit status {status:?}; log:\n{}", env.daemon_log());
    assert!(env.daemon_log().contains("writeback stopped"), "{target:?}: {}", env.daemon_log());
    Ok(())
}

#[tokio::test]
async fn sigterm_cuts_a_long_retry_after_short_and_loses_nothing() -> anyhow::Result<()> {
    let env = Env::new("term-throttled").await?;
    let id = new_id();
    env.sim.add_group(enabled_group(&id, "Throttled at shutdown", &[])).unwrap();
    // A throttled delta page: the next run reads what the stopped daemon did not.
    stop_during_a_long_retry_after(&env, FaultTarget::GroupsDelta).await?;
    env.sync(&[]).await?;
    assert!(env.group(&id).await?.is_some());
    // A throttled deleted-items lookup of a group that a resync no longer lists: the next run confirms the
    // hard delete.
    env.sim.hard_delete_group(&id).unwrap();
    env.sim.expire_delta_tokens();
    stop_during_a_long_retry_after(&env, FaultTarget::DeletedItems).await?;
    env.sync(&[]).await?;
    assert!(env.group(&id).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn a_body_past_the_size_limit_fails_the_cycle_in_one_line_and_the_cursor_stays() -> anyhow::Result<()> {
    let env = Env::new("huge-body").await?;
    env.sync(&[]).await?;
    let bytes = writeback::graph::MAX_BODY_BYTES + (1 << 20);
    // Chunked, the body must be cut off while it is read; with Content-Length, it is refused before.
    for content_length in [false, true] {
        let id = new_id();
        env.sim.add_group(enabled_group(&id, &format!("Behind a huge body {content_length}"), &[])).unwrap();
        env.sim.inject(fault(FaultTarget::GroupsDelta, FaultKind::HugeBody { bytes, content_length }));
        env.sim.clear_requests();
        let error = one_error_line(&env.run(&["sync", "--once"]).await?);
        assert!(error.contains("larger than 64 MiB"), "{error}");
        assert!(env.group(&id).await?.is_none());
        let refused = group_pages(&env).first().and_then(|r| r.query.clone());

        env.sim.clear_requests();
        env.sync(&[]).await?;
        let asked = group_pages(&env).first().and_then(|r| r.query.clone());
        assert_eq!(asked, refused, "the cursor did not move past the huge page");
        assert!(env.group(&id).await?.is_some(), "nothing was lost");
    }
    Ok(())
}
