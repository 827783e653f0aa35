//! End-to-end tests of the simulator over real HTTP, as the agent sees it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::*;

/// A running simulator plus an HTTP client holding a valid token.
struct Harness {
    sim: GraphSim,
    http: reqwest::Client,
    token: String,
}

impl Harness {
    async fn start(config: SimConfig) -> Self {
        let sim = GraphSim::start(config).expect("simulator starts");
        let http = reqwest::Client::new();
        let mut harness = Self { sim, http, token: String::new() };
        harness.token = harness.fetch_token().await;
        harness
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    async fn token_request(&self, tenant: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let url = self.url(&format!("/{tenant}/oauth2/v2.0/token"));
        self.http.post(url).form(form).send().await.expect("token request sent")
    }

    fn good_form(&self) -> Vec<(&'static str, String)> {
        vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", self.sim.config().client_id.clone()),
            ("client_secret", self.sim.config().client_secret.clone()),
            ("scope", format!("{}/.default", self.sim.base_url())),
        ]
    }

    async fn fetch_token(&self) -> String {
        let form = self.good_form();
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = self.token_request(&self.sim.config().tenant_id, &form).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("token JSON");
        body["access_token"].as_str().expect("access_token").to_owned()
    }

    async fn get(&self, url: &str) -> reqwest::Response {
        self.http.get(url).bearer_auth(&self.token).send().await.expect("request sent")
    }

    async fn get_json(&self, url: &str) -> Value {
        let response = self.get(url).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {url}");
        response.json().await.expect("JSON body")
    }

    /// Follows nextLinks from `url` to the deltaLink; returns every entry,
    /// the deltaLink and the number of pages.
    async fn round(&self, url: &str) -> Round {
        let mut round = Round::default();
        let mut next = url.to_owned();
        loop {
            let page = self.get_json(&next).await;
            round.pages += 1;
            round.entries.extend(page["value"].as_array().cloned().unwrap_or_default());
            if let Some(link) = page["@odata.nextLink"].as_str() {
                assert!(page.get("@odata.deltaLink").is_none(), "a page has both links: {page}");
                assert!(!link.contains("$select"), "nextLink repeats $select: {link}");
                next = link.to_owned();
                continue;
            }
            round.delta_link = page["@odata.deltaLink"].as_str().expect("last page has a deltaLink").to_owned();
            return round;
        }
    }
}

#[derive(Debug, Default)]
struct Round {
    entries: Vec<Value>,
    delta_link: String,
    pages: usize,
}

/// A group as a client rebuilds it from delta entries.
#[derive(Debug, Default, PartialEq)]
struct Merged {
    properties: BTreeMap<String, Value>,
    members: BTreeSet<String>,
    removed: Option<String>,
}

/// Merges entries the way the agent must: same id anywhere, in any order.
fn merge(entries: &[Value]) -> BTreeMap<String, Merged> {
    let mut merged: BTreeMap<String, Merged> = BTreeMap::new();
    for entry in entries {
        let id = entry["id"].as_str().expect("entry id").to_owned();
        let object = merged.entry(id).or_default();
        for (name, value) in entry.as_object().expect("entry object") {
            match name.as_str() {
                "id" => {}
                "@removed" => object.removed = value["reason"].as_str().map(str::to_owned),
                "members@delta" => merge_members(&mut object.members, value),
                _ => {
                    object.properties.insert(name.clone(), value.clone());
                }
            }
        }
    }
    merged
}

fn merge_members(members: &mut BTreeSet<String>, changes: &Value) {
    for change in changes.as_array().expect("members@delta array") {
        let id = change["id"].as_str().expect("member id").to_owned();
        if change.get("@removed").is_some() {
            members.remove(&id);
        } else {
            members.insert(id);
        }
    }
}

const GROUP_SELECT: &str = "displayName,description,writebackConfiguration,members";

fn groups_delta_url(h: &Harness) -> String {
    h.url(&format!("/beta/groups/delta?$select={GROUP_SELECT}"))
}

fn member_ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i}")).collect()
}

fn group_with_members(id: &str, members: &[String]) -> Group {
    Group { members: members.iter().map(MemberRef::user).collect(), ..Group::security(id, id.to_uppercase()) }
}

#[tokio::test]
async fn token_endpoint_issues_tokens_and_reports_entra_errors() {
    let h = Harness::start(SimConfig::default()).await;
    let config = h.sim.config().clone();
    let scope = format!("{}/.default", h.sim.base_url());

    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", config.client_id.as_str()),
        ("client_secret", config.client_secret.as_str()),
        ("scope", scope.as_str()),
    ];
    let ok = h.token_request(&config.tenant_id, &form).await;
    assert_eq!(ok.headers()["content-type"], wire::TOKEN_CONTENT_TYPE);
    let body: Value = ok.json().await.expect("JSON");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert!(body["access_token"].as_str().is_some_and(|t| t.len() > 40));

    let (tenant, client, secret) =
        (config.tenant_id.as_str(), config.client_id.as_str(), config.client_secret.as_str());
    let graph_scope = "https://graph.microsoft.com/.default";
    let cases = [
        (tenant, "wrong", client, scope.as_str(), 401, "invalid_client", 7_000_215),
        (tenant, secret, "someone-else", scope.as_str(), 400, "unauthorized_client", 700_016),
        ("other-tenant", secret, client, scope.as_str(), 400, "invalid_request", 90_002),
        (tenant, secret, client, graph_scope, 400, "invalid_scope", 70_011),
    ];
    for (tenant, secret, client, scope, status, error, code) in cases {
        let form =
            [("grant_type", "client_credentials"), ("client_id", client), ("client_secret", secret), ("scope", scope)];
        let response = h.token_request(tenant, &form).await;
        assert_eq!(response.status().as_u16(), status, "{error}");
        let body: Value = response.json().await.expect("JSON error");
        assert_eq!(body["error"], error);
        assert_eq!(body["error_codes"], json!([code]));
        assert!(body["error_description"].as_str().is_some_and(|d| d.starts_with(&format!("AADSTS{code}:"))));
    }

    let assertion = [
        ("grant_type", "client_credentials"),
        ("client_id", config.client_id.as_str()),
        ("client_assertion_type", oauth::JWT_BEARER),
        ("client_assertion", "a.b.c"),
        ("scope", scope.as_str()),
    ];
    let response = h.token_request(&config.tenant_id, &assertion).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.expect("JSON error");
    assert_eq!(body["error_codes"], json!([700_027]));
}

#[tokio::test]
async fn graph_requires_a_valid_bearer_token_and_sets_common_headers() {
    let h = Harness::start(SimConfig::default()).await;
    let url = groups_delta_url(&h);

    let anonymous = h.http.get(&url).header("client-request-id", "abc-123").send().await.expect("sent");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers()["client-request-id"], "abc-123");
    assert_eq!(anonymous.headers()["x-ms-resource-unit"], "1");
    assert_eq!(anonymous.headers()["request-id"].len(), 36);
    let body: Value = anonymous.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(body["error"]["innerError"]["client-request-id"], "abc-123");

    let forged = h.http.get(&url).bearer_auth("forged").send().await.expect("sent");
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);

    let ok = h.get(&url).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["content-type"], wire::GRAPH_CONTENT_TYPE);
}

#[tokio::test]
async fn initial_round_pages_to_a_delta_link_and_split_members_merge_back() {
    let config = SimConfig { page_size: 2, members_per_entry: 2, shuffle_seed: Some(7), ..SimConfig::default() };
    let h = Harness::start(config).await;
    let big = member_ids("u", 7);
    h.sim.add_group(group_with_members("big", &big)).expect("add big");
    h.sim.add_group(group_with_members("small", &member_ids("s", 1))).expect("add small");
    h.sim.add_group(Group::unified("empty", "Empty", "empty")).expect("add empty");

    let round = h.round(&groups_delta_url(&h)).await;
    // 4 entries for "big" (7 members, 2 per entry), one each for the others.
    assert_eq!(round.entries.len(), 6);
    assert_eq!(round.pages, 3);
    let big_entries = round.entries.iter().filter(|e| e["id"] == "big").count();
    assert_eq!(big_entries, 4);
    assert!(round.entries.iter().filter(|e| e["id"] == "big").all(|e| e["displayName"] == "BIG"));

    // Unshuffled, the tenant's order (big, empty, small) would come back.
    let order: Vec<&str> = round.entries.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_ne!(order, ["big", "big", "big", "big", "empty", "small"], "seeded round was not shuffled");

    let merged = merge(&round.entries);
    assert_eq!(merged["big"].members, big.iter().cloned().collect());
    assert_eq!(merged["small"].members, BTreeSet::from(["s0".to_owned()]));
    assert!(merged["empty"].members.is_empty());
    assert!(round.entries.iter().any(|e| e["id"] == "empty" && e.get("members@delta").is_none()));
    assert_eq!(
        merged["empty"].properties["writebackConfiguration"],
        json!({"isEnabled": null, "onPremisesGroupType": null})
    );
    assert!(!merged["empty"].properties.contains_key("description"), "an unset property is left out of a full entry");
    assert!(!merged["empty"].properties.contains_key("mailNickname"), "unselected property emitted");
}

#[tokio::test]
async fn later_round_carries_only_changes_and_can_be_replayed() {
    let h = Harness::start(SimConfig { changed_only: true, ..SimConfig::default() }).await;
    h.sim.add_group(group_with_members("g", &member_ids("u", 2))).expect("add");
    h.sim.add_group(Group::security("quiet", "Quiet")).expect("add");
    let first = h.round(&groups_delta_url(&h)).await;

    let patch = GroupPatch { description: Some(Some("now described".into())), ..GroupPatch::default() };
    h.sim.update_group("g", patch).expect("patch");
    h.sim.add_members("g", &[MemberRef::group("quiet")]).expect("add member");
    h.sim.remove_members("g", &["u0"]).expect("remove member");
    h.sim.add_group(Group::security("new", "New")).expect("add new");

    let second = h.round(&first.delta_link).await;
    let changed: Vec<&Value> = second.entries.iter().filter(|e| e["id"] == "g").collect();
    assert_eq!(changed.len(), 1);
    let entry = changed[0];
    assert_eq!(entry["description"], "now described");
    assert!(entry.get("displayName").is_none(), "unchanged property in a minimal round: {entry}");
    assert_eq!(
        entry["members@delta"],
        json!([
            {"@odata.type": "#microsoft.graph.group", "id": "quiet"},
            {"@odata.type": "#microsoft.graph.user", "id": "u0", "@removed": {"reason": "deleted"}}
        ])
    );
    let new = second.entries.iter().find(|e| e["id"] == "new").expect("new group reported");
    assert_eq!(new["displayName"], "New");
    assert!(!second.entries.iter().any(|e| e["id"] == "quiet"), "unchanged group reported");

    let replay = h.round(&first.delta_link).await;
    assert_eq!(merge(&replay.entries), merge(&second.entries));
    let third = h.round(&second.delta_link).await;
    assert!(third.entries.is_empty());
}

#[tokio::test]
async fn updates_resend_every_selected_property_unless_return_minimal_is_preferred() {
    // Graph's default: an updated object comes with all its selected properties, not only the changed ones.
    let h = Harness::start(SimConfig::default()).await;
    h.sim.add_group(Group::security("g", "G")).expect("add");
    let first = h.round(&groups_delta_url(&h)).await;
    let patch = GroupPatch { description: Some(Some("d".into())), ..GroupPatch::default() };
    h.sim.update_group("g", patch).expect("patch");

    let full = h.round(&first.delta_link).await;
    assert_eq!(full.entries[0]["displayName"], "G");
    assert_eq!(full.entries[0]["description"], "d");

    let minimal = h.http.get(&first.delta_link).bearer_auth(&h.token).header("Prefer", "return=minimal");
    let body: Value = minimal.send().await.expect("sent").json().await.expect("JSON");
    assert!(body["value"][0].get("displayName").is_none());
    assert_eq!(body["value"][0]["description"], "d");
}

#[tokio::test]
async fn a_group_converted_to_cloud_management_keeps_its_sid_and_is_no_longer_synced() {
    // Microsoft's SOA conversion: onPremisesSyncEnabled becomes null, the AD group's SID stays.
    let h = Harness::start(SimConfig::default()).await;
    let sid = "S-1-5-21-1-2-3-1500";
    h.sim.add_group(Group { on_premises_sync_enabled: Some(true), ..Group::converted("g", "G", sid) }).expect("add");
    let url = h.url("/beta/groups/delta?$select=displayName,onPremisesSyncEnabled,onPremisesSecurityIdentifier");
    let first = h.round(&url).await;
    assert_eq!(first.entries[0]["onPremisesSyncEnabled"], true);
    let patch = GroupPatch { on_premises_sync_enabled: Some(None), ..GroupPatch::default() };
    h.sim.update_group("g", patch).expect("convert");

    let second = h.round(&first.delta_link).await;
    assert_eq!(
        second.entries[0].get("onPremisesSyncEnabled"),
        Some(&Value::Null),
        "a cleared property is sent as null"
    );
    assert_eq!(second.entries[0]["onPremisesSecurityIdentifier"], sid);
    let fresh = h.round(&url).await;
    let served = merge(&fresh.entries);
    assert!(!served["g"].properties.contains_key("onPremisesSyncEnabled"), "unset, so left out of a full round");
    assert_eq!(served["g"].properties["onPremisesSecurityIdentifier"], sid);
}

#[tokio::test]
async fn deletions_use_documented_forms_and_deleted_items_agree() {
    let h = Harness::start(SimConfig::default()).await;
    let team = Group { members: vec![MemberRef::user("u1")], ..Group::unified("team", "Team", "team") };
    h.sim.add_group(team).expect("add team");
    h.sim.add_group(Group::security("sec", "Sec")).expect("add sec");
    h.sim.add_group(Group::security("gone", "Gone")).expect("add gone");
    let first = h.round(&groups_delta_url(&h)).await;

    assert_eq!(h.sim.soft_delete_group("team"), Ok(DeleteOutcome::SoftDeleted));
    assert_eq!(h.sim.soft_delete_group("sec"), Ok(DeleteOutcome::HardDeleted));
    h.sim.hard_delete_group("gone").expect("hard delete");
    let second = h.round(&first.delta_link).await;
    let merged = merge(&second.entries);
    assert_eq!(merged["team"].removed.as_deref(), Some("changed"));
    assert_eq!(merged["sec"].removed.as_deref(), Some("deleted"));
    assert_eq!(merged["gone"].removed.as_deref(), Some("deleted"));
    assert!(
        second.entries.iter().all(|e| e.as_object().is_some_and(|o| o.len() == 2)),
        "removed entries carry only id and @removed"
    );

    let item = h.get_json(&h.url("/beta/directory/deletedItems/team")).await;
    assert_eq!(item["@odata.type"], "#microsoft.graph.group");
    assert_eq!(item["displayName"], "Team");
    assert!(item["deletedDateTime"].as_str().is_some_and(|t| t.ends_with('Z')));

    let missing = h.get(&h.url("/beta/directory/deletedItems/sec")).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "Request_ResourceNotFound");

    h.sim.restore_group("team").expect("restore");
    let third = h.round(&second.delta_link).await;
    let restored = &merge(&third.entries)["team"];
    assert_eq!(restored.properties["displayName"], "Team");
    assert_eq!(restored.members, BTreeSet::from(["u1".to_owned()]));
}

#[tokio::test]
async fn latest_token_skips_existing_state() {
    let h = Harness::start(SimConfig::default()).await;
    h.sim.add_group(Group::security("old", "Old")).expect("add");
    let latest = h.get_json(&h.url("/beta/groups/delta?$select=displayName&$deltatoken=latest")).await;
    assert_eq!(latest["value"], json!([]));
    let link = latest["@odata.deltaLink"].as_str().expect("deltaLink");

    h.sim.add_group(Group::security("fresh", "Fresh")).expect("add");
    let round = h.round(link).await;
    let ids: Vec<&Value> = round.entries.iter().map(|e| &e["id"]).collect();
    assert_eq!(ids, vec!["fresh"]);
}

#[tokio::test]
async fn malformed_state_and_queries_are_rejected_like_graph() {
    let h = Harness::start(SimConfig { page_size: 1, ..SimConfig::default() }).await;
    h.sim.add_group(Group::security("a", "A")).expect("add");
    h.sim.add_group(Group::security("b", "B")).expect("add");
    let first_page = h.get_json(&groups_delta_url(&h)).await;
    let next = first_page["@odata.nextLink"].as_str().expect("nextLink");

    let with_select = h.get(&format!("{next}&$select=displayName")).await;
    assert_eq!(with_select.status(), StatusCode::BAD_REQUEST);

    let garbled = h.get(&h.url("/beta/groups/delta?$deltatoken=not-a-token")).await;
    assert_eq!(garbled.status(), StatusCode::BAD_REQUEST);
    let body: Value = garbled.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "syncStateNotFound");

    let unknown_property = h.get(&h.url("/beta/groups/delta?$select=displayName,nonsense")).await;
    assert_eq!(unknown_property.status(), StatusCode::BAD_REQUEST);
    let v1_writeback = h.get(&h.url("/v1.0/groups/delta?$select=writebackConfiguration")).await;
    assert_eq!(v1_writeback.status(), StatusCode::BAD_REQUEST);
    let v1 = h.get_json(&h.url("/v1.0/groups/delta")).await;
    assert!(v1["value"][0].get("writebackConfiguration").is_none());
}

#[tokio::test]
async fn gone_faults_and_expired_tokens_point_to_a_fresh_start() {
    let h = Harness::start(SimConfig::default()).await;
    h.sim.add_group(Group::security("g", "G")).expect("add");
    let first = h.round(&groups_delta_url(&h)).await;

    h.sim.inject(Fault::new(FaultTarget::GroupsDelta, FaultKind::Gone410));
    let gone = h.get(&first.delta_link).await;
    assert_eq!(gone.status(), StatusCode::GONE);
    let location = gone.headers()["location"].to_str().expect("ASCII").to_owned();
    assert_eq!(location, format!("{}/beta/groups/delta?$select={GROUP_SELECT}&$deltatoken=", h.sim.base_url()));
    let restart = h.round(&location).await;
    assert_eq!(merge(&restart.entries)["g"].properties["displayName"], "G");

    h.sim.expire_delta_tokens();
    let expired = h.get(&first.delta_link).await;
    assert_eq!(expired.status(), StatusCode::GONE);
    assert_eq!(expired.headers()["location"].to_str().ok(), Some(location.as_str()));
    assert_eq!(h.get(&restart.delta_link).await.status(), StatusCode::GONE);
}

#[tokio::test]
async fn throttling_and_server_faults_hit_only_their_target_once() {
    let h = Harness::start(SimConfig::default()).await;
    let url = groups_delta_url(&h);
    h.sim.inject(Fault::new(FaultTarget::UsersDelta, FaultKind::Status500));
    h.sim.inject(Fault::new(FaultTarget::GroupsDelta, FaultKind::Throttle429 { retry_after_secs: 7 }));
    h.sim.inject(Fault::new(FaultTarget::GroupsDelta, FaultKind::Unavailable503 { retry_after_secs: None }));

    let throttled = h.get(&url).await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.headers()["retry-after"], "7");
    let body: Value = throttled.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "TooManyRequests");

    let unavailable = h.get(&url).await;
    assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(unavailable.headers().get("retry-after").is_none());

    assert_eq!(h.get(&url).await.status(), StatusCode::OK);
    assert_eq!(h.sim.pending_faults(), 1, "the users-delta fault is still queued");
    let users = h.get(&h.url("/v1.0/users/delta")).await;
    assert_eq!(users.status(), StatusCode::INTERNAL_SERVER_ERROR);

    let log = h.sim.requests();
    assert_eq!(h.sim.request_count("/beta/groups/delta"), 3);
    assert_eq!(log.iter().filter(|r| r.fault.is_some()).count(), 3);
}

#[tokio::test]
async fn malformed_bodies_delays_and_resets_are_injectable() {
    let h = Harness::start(SimConfig::default()).await;
    let url = groups_delta_url(&h);

    h.sim.inject(Fault::new(FaultTarget::Any, FaultKind::MalformedBody));
    let malformed = h.get(&url).await;
    assert_eq!(malformed.status(), StatusCode::OK);
    let text = malformed.text().await.expect("body");
    assert!(serde_json::from_str::<Value>(&text).is_err(), "body parsed: {text}");

    h.sim.inject(Fault::new(FaultTarget::GroupsDelta, FaultKind::Delay(Duration::from_millis(50))));
    let started = std::time::Instant::now();
    assert_eq!(h.get(&url).await.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(50));

    h.sim.inject(Fault::new(FaultTarget::GroupsDelta, FaultKind::ResetConnection));
    let reset = h.http.get(&url).bearer_auth(&h.token).send().await;
    assert!(reset.is_err(), "a reset connection produced a response");
    assert_eq!(h.get(&url).await.status(), StatusCode::OK);
    assert!(h.sim.requests().iter().any(|r| r.status.is_none()));
}

#[tokio::test]
async fn revoked_and_expired_tokens_are_refused() {
    let mut h = Harness::start(SimConfig::default()).await;
    let url = groups_delta_url(&h);
    assert_eq!(h.get(&url).await.status(), StatusCode::OK);

    h.sim.revoke_tokens();
    let revoked = h.get(&url).await;
    assert_eq!(revoked.status(), StatusCode::UNAUTHORIZED);
    let body: Value = revoked.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");

    h.token = h.fetch_token().await;
    assert_eq!(h.get(&url).await.status(), StatusCode::OK);
    h.sim.advance_clock(Duration::from_secs(3600));
    assert_eq!(h.get(&url).await.status(), StatusCode::UNAUTHORIZED);

    h.sim.inject(Fault::new(FaultTarget::Token, FaultKind::Status401));
    let form = h.good_form();
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let refused = h.token_request(&h.sim.config().tenant_id, &form).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(body["error"], "invalid_client");
}

#[tokio::test]
async fn users_delta_reports_users_and_their_deletion() {
    let h = Harness::start(SimConfig::default()).await;
    h.sim.add_user(User::synced("u1", "ann@contoso.com", "S-1-5-21-1-2-3-1001", "ann")).expect("add");
    h.sim.add_user(User::cloud("u2", "bob@contoso.com")).expect("add");
    let url = h.url("/v1.0/users/delta?$select=id,onPremisesSecurityIdentifier,onPremisesSamAccountName");
    let first = h.round(&url).await;
    let merged = merge(&first.entries);
    assert_eq!(merged["u1"].properties["onPremisesSecurityIdentifier"], "S-1-5-21-1-2-3-1001");
    assert!(
        !merged["u2"].properties.contains_key("onPremisesSamAccountName"),
        "an unset property is left out of a full entry"
    );
    assert!(!merged["u1"].properties.contains_key("userPrincipalName"));

    h.sim.delete_user("u1", false).expect("soft delete");
    h.sim.delete_user("u2", true).expect("hard delete");
    let second = merge(&h.round(&first.delta_link).await.entries);
    assert_eq!(second["u1"].removed.as_deref(), Some("changed"));
    assert_eq!(second["u2"].removed.as_deref(), Some("deleted"));
    let item = h.get_json(&h.url("/beta/directory/deletedItems/u1")).await;
    assert_eq!(item["@odata.type"], "#microsoft.graph.user");
}

#[tokio::test]
async fn control_api_drives_the_same_tenant() {
    let h = Harness::start(SimConfig::default()).await;
    let group = json!({"id": "c1", "displayName": "Via HTTP", "securityEnabled": true,
                       "members": [{"@odata.type": "#microsoft.graph.user", "id": "u9"}]});
    let created = h.http.post(h.url("/_sim/groups")).json(&group).send().await.expect("sent");
    assert_eq!(created.status(), StatusCode::OK);
    let duplicate = h.http.post(h.url("/_sim/groups")).json(&group).send().await.expect("sent");
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    let patch = h.http.patch(h.url("/_sim/groups/c1")).json(&json!({"description": "d"})).send().await.expect("sent");
    assert_eq!(patch.status(), StatusCode::OK);
    assert_eq!(h.sim.group("c1").and_then(|g| g.description).as_deref(), Some("d"));

    let fault = json!({"target": "groupsDelta", "kind": "throttle429", "retryAfterSecs": 3, "times": 2});
    let queued = h.http.post(h.url("/_sim/faults")).json(&fault).send().await.expect("sent");
    assert_eq!(queued.status(), StatusCode::OK);
    assert_eq!(h.sim.pending_faults(), 2);
    let bad = h.http.post(h.url("/_sim/faults")).json(&json!({"target": "any", "kind": "meteor"})).send().await;
    assert_eq!(bad.expect("sent").status(), StatusCode::BAD_REQUEST);

    let deleted = h.http.delete(h.url("/_sim/groups/c1?hard=true")).send().await.expect("sent");
    assert_eq!(deleted.status(), StatusCode::OK);
    assert!(h.sim.group("c1").is_none());
    let log: Value = h.http.get(h.url("/_sim/requests")).send().await.expect("sent").json().await.expect("JSON");
    assert!(
        log.as_array().is_some_and(|l| { l.iter().all(|r| !r["path"].as_str().unwrap_or("").starts_with("/_sim")) })
    );
}

#[tokio::test]
async fn redirects_and_looping_next_links_are_injectable() {
    let h = Harness::start(SimConfig::default()).await;
    let url = groups_delta_url(&h);
    let target = "http://127.0.0.1:9/elsewhere".to_owned();
    h.sim.inject(Fault::new(FaultTarget::GroupsDelta, FaultKind::Redirect307(target.clone())));
    h.sim.inject(Fault::new(FaultTarget::GroupsDelta, FaultKind::NextLinkLoop));
    let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let redirected = plain.get(&url).bearer_auth(&h.token).send().await.expect("sent");
    assert_eq!(redirected.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(redirected.headers()["location"].to_str().ok(), Some(target.as_str()));
    let looping = h.get_json(&url).await;
    assert_eq!(looping["value"], json!([]));
    assert_eq!(looping["@odata.nextLink"].as_str(), Some(url.as_str()));
    let normal = h.get_json(&url).await;
    assert!(normal["@odata.nextLink"] != json!(url), "one fault, one answer");
}

#[tokio::test]
async fn a_soft_deleted_user_stays_a_member_until_the_hard_delete() {
    let h = Harness::start(SimConfig::default()).await;
    h.sim.add_user(User::cloud("u", "ann@contoso.com")).expect("add user");
    h.sim.add_group(group_with_members("g", &["u".to_owned()])).expect("add group");
    let users_url = h.url("/v1.0/users/delta?$select=id,displayName");
    let groups = h.round(&groups_delta_url(&h)).await;
    let users = h.round(&users_url).await;

    h.sim.delete_user("u", false).expect("soft delete");
    let after_soft = h.round(&groups.delta_link).await;
    assert!(
        after_soft.entries.is_empty(),
        "group delta says nothing of a soft-deleted member: {:?}",
        after_soft.entries
    );
    let users_after = h.round(&users.delta_link).await;
    assert_eq!(merge(&users_after.entries)["u"].removed.as_deref(), Some("changed"));
    let kept = h.sim.group("g").expect("group g").members;
    assert!(kept.iter().any(|m| m.id == "u"), "the membership is kept: {kept:?}");

    h.sim.delete_user("u", true).expect("hard delete");
    let after_hard = h.round(&after_soft.delta_link).await;
    assert_eq!(after_hard.entries[0]["members@delta"][0]["@removed"]["reason"], "deleted");
    assert!(h.sim.group("g").expect("group g").members.is_empty());
}

/// Posts a fault to the control API.
async fn post_fault(h: &Harness, fault: Value) -> reqwest::Response {
    h.http.post(h.url("/_sim/faults")).json(&fault).send().await.expect("sent")
}

#[tokio::test]
async fn every_resync_signal_spelling_can_be_sent() {
    let h = Harness::start(SimConfig::default()).await;
    let url = groups_delta_url(&h);
    let spellings =
        ["syncStateNotFound", "SyncStateNotFound", "resyncRequired", "syncStateInvalid", "Directory_ExpiredPageToken"];
    for code in spellings {
        let fault = json!({"target": "groupsDelta", "kind": "status400", "code": code});
        let queued = post_fault(&h, fault).await;
        assert_eq!(queued.status(), StatusCode::OK, "{code}");
        let answer = h.get(&url).await;
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{code}");
        let body: Value = answer.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], code);
    }
    let no_code = post_fault(&h, json!({"target": "groupsDelta", "kind": "status400"})).await;
    assert_eq!(no_code.status(), StatusCode::BAD_REQUEST);
    for (kind, code) in [
        (FaultKind::SyncStateNotFound, "syncStateNotFound"),
        (FaultKind::ResyncRequired, "resyncRequired"),
        (FaultKind::Gone410, "resyncRequired"),
    ] {
        h.sim.inject(Fault::new(FaultTarget::GroupsDelta, kind.clone()));
        let body: Value = h.get(&url).await.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], code, "{kind:?}");
    }
}

#[tokio::test]
async fn a_long_retry_after_is_sent_as_asked() {
    let h = Harness::start(SimConfig::default()).await;
    let url = groups_delta_url(&h);
    for (kind, status) in
        [("throttle429", StatusCode::TOO_MANY_REQUESTS), ("unavailable503", StatusCode::SERVICE_UNAVAILABLE)]
    {
        let fault = json!({"target": "groupsDelta", "kind": kind, "retryAfterSecs": 300});
        assert_eq!(post_fault(&h, fault).await.status(), StatusCode::OK);
        let answer = h.get(&url).await;
        assert_eq!(answer.status(), status, "{kind}");
        assert_eq!(answer.headers()["retry-after"], "300", "{kind}");
    }
}

#[tokio::test]
async fn a_client_error_on_delta_links_spares_starts_and_next_links() {
    let h = Harness::start(SimConfig { page_size: 1, ..SimConfig::default() }).await;
    h.sim.add_group(Group::security("a", "A")).expect("add");
    h.sim.add_group(Group::security("b", "B")).expect("add");
    let fault = json!({"target": "groupsDeltaLink", "kind": "clientError",
                       "status": 404, "code": "UnknownError"});
    assert_eq!(post_fault(&h, fault).await.status(), StatusCode::OK);
    h.sim.inject(Fault::new(
        FaultTarget::GroupsDeltaLink,
        FaultKind::ClientError { status: 400, code: "Request_UnsupportedQuery".into() },
    ));
    // A round from its start, through its nextLink, is untouched.
    let round = h.round(&groups_delta_url(&h)).await;
    assert_eq!(round.pages, 2);
    assert_eq!(h.sim.pending_faults(), 2);

    for (status, code) in
        [(StatusCode::NOT_FOUND, "UnknownError"), (StatusCode::BAD_REQUEST, "Request_UnsupportedQuery")]
    {
        let refused = h.get(&round.delta_link).await;
        assert_eq!(refused.status(), status);
        let body: Value = refused.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], code);
    }
    assert_eq!(h.get(&round.delta_link).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn huge_bodies_are_sent_chunked_or_with_their_length() {
    let h = Harness::start(SimConfig::default()).await;
    let url = groups_delta_url(&h);
    let bytes = (1 << 20) + 3;
    for content_length in [false, true] {
        h.sim.inject(Fault::new(FaultTarget::GroupsDelta, FaultKind::HugeBody { bytes, content_length }));
        let answer = h.get(&url).await;
        assert_eq!(answer.status(), StatusCode::OK);
        let announced = answer.headers().get("content-length").cloned();
        if content_length {
            let size = reqwest::header::HeaderValue::from(bytes);
            assert_eq!(announced, Some(size), "the size is announced");
        } else {
            assert_eq!(announced, None, "a streamed body announces no size");
        }
        let body = answer.bytes().await.expect("body");
        assert_eq!(body.len(), bytes);
        assert!(body.starts_with(br#"{"value":["#) && body.ends_with(b"]}"));
    }
}

#[tokio::test]
async fn group_settings_carry_the_unified_writeback_default_only_once_the_tenant_sets_it() {
    let h = Harness::start(SimConfig::default()).await;
    let url = h.url("/v1.0/groupSettings");
    // A new tenant has no Group.Unified setting object at all.
    let body: Value = h.get(&url).await.json().await.expect("json");
    assert_eq!(body["value"], json!([]));
    h.sim.set_unified_writeback_default(Some(false));
    let body: Value = h.get(&url).await.json().await.expect("json");
    let setting = &body["value"][0];
    assert_eq!(setting["displayName"], "Group.Unified");
    assert_eq!(setting["templateId"], "62375ab9-6b52-47ed-826b-58e47e0e304b");
    let values = setting["values"].as_array().expect("values");
    assert!(values.contains(&json!({"name": "NewUnifiedGroupWritebackDefault", "value": "false"})), "{values:?}");
}

#[tokio::test]
async fn a_batch_answers_each_group_get_by_id_and_refuses_more_than_twenty() {
    let h = Harness::start(SimConfig::default()).await;
    let mut group = Group::security("g1", "One");
    group.writeback = Some(WritebackConfiguration { is_enabled: Some(true), on_premises_group_type: None });
    h.sim.add_group(group).expect("add");
    let request = |id: &str, n: usize| json!({"id": n.to_string(), "method": "GET", "url": format!("/groups/{id}?$select=id,writebackConfiguration")});
    let answer: Value = h
        .http
        .post(h.url("/beta/$batch"))
        .bearer_auth(&h.token)
        .json(&json!({"requests": [request("g1", 0), request("gone", 1)]}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let responses = answer["responses"].as_array().expect("responses");
    let by_id = |n: &str| responses.iter().find(|r| r["id"] == n).expect("answered");
    assert_eq!(by_id("0")["status"], 200);
    assert_eq!(by_id("0")["body"]["writebackConfiguration"]["isEnabled"], true);
    assert_eq!(by_id("1")["status"], 404);
    let too_many: Vec<Value> = (0..21).map(|n| request("g1", n)).collect();
    let refused = h
        .http
        .post(h.url("/beta/$batch"))
        .bearer_auth(&h.token)
        .json(&json!({"requests": too_many}))
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
}
