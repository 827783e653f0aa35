//! State tokens and the rounds they page through. A round is snapshotted
//! when its first request arrives; every `$skiptoken` names a page of that
//! snapshot and the round's `$deltatoken` remembers the log position it was
//! taken at.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::delta::{Query, Resource};
use super::wire::{base64url, random_token};

/// What a token stands for.
#[derive(Clone, Debug)]
pub(crate) enum TokenTarget {
    /// Page `page` of round `round`.
    Page { round: usize, page: usize },
    /// Changes after log position `seq`, for `query`.
    Delta { query: Query, seq: u64 },
}

/// Why a token cannot be used.
#[derive(Clone, Debug)]
pub(crate) enum TokenProblem {
    /// Never issued (garbled, or from another simulator).
    Unknown,
    /// Issued, then expired; the client must start `query` again.
    Expired(Query),
}

#[derive(Debug)]
struct TokenEntry {
    target: TokenTarget,
    expired: bool,
}

/// A snapshot round split into pages.
#[derive(Debug)]
struct Round {
    query: Query,
    pages: Vec<Vec<Value>>,
    /// `page_tokens[i]` is the skiptoken of page i (page 0 has none).
    page_tokens: Vec<String>,
    delta_token: String,
}

/// One page of a round, ready to render.
pub(crate) struct PageView<'a> {
    query: &'a Query,
    entries: &'a [Value],
    link: Link<'a>,
}

enum Link<'a> {
    Next(&'a str),
    Delta(&'a str),
}

/// Every token issued and every round snapshotted.
#[derive(Debug, Default)]
pub(crate) struct Rounds {
    tokens: HashMap<String, TokenEntry>,
    rounds: Vec<Round>,
}

impl Rounds {
    /// How many rounds have been started; also seeds per-round shuffling.
    pub(crate) fn started(&self) -> usize {
        self.rounds.len()
    }

    /// Issues a delta token for changes after `seq`.
    pub(crate) fn issue_delta_token(&mut self, query: &Query, seq: u64) -> String {
        let token = mint("delta", query, json!(seq));
        self.tokens.insert(
            token.clone(),
            TokenEntry { target: TokenTarget::Delta { query: query.clone(), seq }, expired: false },
        );
        token
    }

    /// Snapshots a round of `entries` taken at log position `seq`, in pages of
    /// `page_size`, and returns its index.
    pub(crate) fn start(&mut self, query: Query, seq: u64, entries: Vec<Value>, page_size: usize) -> usize {
        let round = self.rounds.len();
        let mut pages: Vec<Vec<Value>> = entries.chunks(page_size.max(1)).map(<[Value]>::to_vec).collect();
        if pages.is_empty() {
            pages.push(Vec::new());
        }
        let page_tokens = (0..pages.len()).map(|page| self.issue_page_token(&query, round, page)).collect();
        let delta_token = self.issue_delta_token(&query, seq);
        self.rounds.push(Round { query, pages, page_tokens, delta_token });
        round
    }

    fn issue_page_token(&mut self, query: &Query, round: usize, page: usize) -> String {
        let token = mint("page", query, json!([round, page]));
        self.tokens.insert(token.clone(), TokenEntry { target: TokenTarget::Page { round, page }, expired: false });
        token
    }

    /// Looks a token up.
    pub(crate) fn resolve(&self, token: &str) -> Result<TokenTarget, TokenProblem> {
        let entry = self.tokens.get(token).ok_or(TokenProblem::Unknown)?;
        if entry.expired {
            return Err(TokenProblem::Expired(self.query_of(&entry.target).clone()));
        }
        Ok(entry.target.clone())
    }

    fn query_of<'a>(&'a self, target: &'a TokenTarget) -> &'a Query {
        match target {
            TokenTarget::Delta { query, .. } => query,
            TokenTarget::Page { round, .. } => &self.rounds[*round].query,
        }
    }

    /// The query a token belongs to, expired or not.
    pub(crate) fn query_for_token(&self, token: &str) -> Option<Query> {
        self.tokens.get(token).map(|e| self.query_of(&e.target).clone())
    }

    /// A page of a started round.
    pub(crate) fn page(&self, round: usize, page: usize) -> Option<PageView<'_>> {
        let snapshot = self.rounds.get(round)?;
        let entries = snapshot.pages.get(page)?;
        let link = match snapshot.page_tokens.get(page + 1) {
            Some(next) => Link::Next(next),
            None => Link::Delta(&snapshot.delta_token),
        };
        Some(PageView { query: &snapshot.query, entries, link })
    }

    /// Makes every token issued so far answer 410 Gone.
    pub(crate) fn expire_all(&mut self) {
        self.tokens.values_mut().for_each(|e| e.expired = true);
    }
}

impl PageView<'_> {
    /// The collection the page belongs to.
    pub(crate) fn resource(&self) -> Resource {
        self.query.resource
    }

    /// The page as Graph sends it.
    pub(crate) fn body(&self, base_url: &str) -> Value {
        let url = self.query.delta_url(base_url);
        let mut body = json!({
            "@odata.context": self.query.context_url(base_url),
            "value": self.entries,
        });
        match self.link {
            Link::Next(token) => body["@odata.nextLink"] = json!(format!("{url}?$skiptoken={token}")),
            Link::Delta(token) => body["@odata.deltaLink"] = json!(format!("{url}?$deltatoken={token}")),
        }
        body
    }
}

/// The body answering `$deltatoken=latest`: no data, just a deltaLink.
pub(crate) fn latest_body(base_url: &str, query: &Query, token: &str) -> Value {
    json!({
        "@odata.context": query.context_url(base_url),
        "@odata.deltaLink": format!("{}?$deltatoken={token}", query.delta_url(base_url)),
        "value": [],
    })
}

/// Token text: readable state for whoever debugs a capture, plus a random
/// part so that tokens are unguessable and never repeat. The server keeps
/// the authoritative state; clients must treat the text as opaque.
fn mint(kind: &str, query: &Query, position: Value) -> String {
    let payload = json!({
        "k": kind,
        "r": query.resource.segment(),
        "v": query.version.segment(),
        "p": position,
        "s": query.select_param(),
        "n": random_token(12),
    });
    base64url(payload.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graphsim::delta::ApiVersion;

    fn query() -> Query {
        Query::new(Resource::Groups, ApiVersion::Beta, Some("displayName"), false).expect("valid")
    }

    #[test]
    fn pages_link_to_each_other_and_end_with_a_delta_link() {
        let mut rounds = Rounds::default();
        let entries = (0..5).map(|i| json!({ "id": i.to_string() })).collect();
        let round = rounds.start(query(), 7, entries, 2);
        let first = rounds.page(round, 0).expect("page 0").body("http://sim");
        let next = first["@odata.nextLink"].as_str().expect("nextLink");
        let token = next.split("$skiptoken=").nth(1).expect("skiptoken");
        assert!(matches!(rounds.resolve(token), Ok(TokenTarget::Page { page: 1, .. })));
        let last = rounds.page(round, 2).expect("page 2").body("http://sim");
        assert!(last.get("@odata.nextLink").is_none());
        let delta = last["@odata.deltaLink"].as_str().expect("deltaLink");
        let token = delta.split("$deltatoken=").nth(1).expect("deltatoken");
        assert!(matches!(rounds.resolve(token), Ok(TokenTarget::Delta { seq: 7, .. })));
    }

    #[test]
    fn expired_and_unknown_tokens_are_told_apart() {
        let mut rounds = Rounds::default();
        let token = rounds.issue_delta_token(&query(), 3);
        rounds.expire_all();
        assert!(matches!(rounds.resolve(&token), Err(TokenProblem::Expired(_))));
        assert!(matches!(rounds.resolve("garbage"), Err(TokenProblem::Unknown)));
        let fresh = rounds.issue_delta_token(&query(), 4);
        assert!(rounds.resolve(&fresh).is_ok());
    }
}
