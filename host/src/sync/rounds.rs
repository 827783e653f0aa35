//! Delta rounds: Graph's pages merged into the state, page by page, and the end of full rounds.

use super::{CycleReport, SyncError, TenantSync};
use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use crate::cloud::Removal;
use crate::config::WritebackSource;
use crate::graph::delta::{self, NextLink};
use crate::graph::{GraphError, MAX_ROUND_PAGES, Page, Presence, STORED_LINK_REFUSALS};
use crate::state::{Cursor, Resource, Unreadable};

/// What keeps a delta round finite: a link read twice, or more pages than any tenant has, is a Graph fault
/// that would otherwise loop for ever.
#[derive(Default)]
struct RoundGuard {
    /// Hashes of the links read so far (links carry long tokens; their hashes are enough to see a repeat).
    seen: HashSet<u64>,
}

impl RoundGuard {
    fn next(&mut self, link: &str) -> Result<(), GraphError> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        link.hash(&mut hasher);
        if !self.seen.insert(hasher.finish()) {
            return Err(GraphError::LinkLoop { path: crate::graph::path_of(link) });
        }
        if self.seen.len() > MAX_ROUND_PAGES {
            return Err(GraphError::EndlessRound { path: crate::graph::path_of(link), pages: MAX_ROUND_PAGES });
        }
        Ok(())
    }
}

impl TenantSync<'_> {
    /// Reads one delta round to its end, restarting once with a full round when Graph asks for a resync or
    /// refuses the stored link for the [`STORED_LINK_REFUSALS`]th cycle in a row, or when the last delta round
    /// met an entry it could not read. Returns whether the round read was a full one.
    pub(super) async fn read_round(&self, resource: Resource, report: &mut CycleReport) -> Result<bool, SyncError> {
        if self.state.take_resync_request(resource)? {
            tracing::warn!(tenant = %self.config.name, ?resource, "the last delta round had an entry that could not be read; reading everything again in a full round");
            self.state.drop_cursor(resource)?;
        }
        // Graph keeps the `$select` in its links, so a cursor made with another one would never deliver what
        // this version reads (a property added to the attribute table, say).
        let select = self.select(resource);
        if self.state.cursor(resource)?.is_some_and(|c| c.select.as_deref() != Some(select.as_str())) {
            tracing::info!(tenant = %self.config.name, ?resource, "the delta cursor was made with another $select; reading everything again in a full round");
            self.state.drop_cursor(resource)?;
        }
        match self.read_pages(resource, report).await {
            Err(SyncError::Graph(GraphError::ResyncRequired { .. })) => {
                tracing::warn!(tenant = %self.config.name, ?resource, "Graph asked for a full resync; starting a full round");
                self.state.drop_cursor(resource)?;
                self.read_pages(resource, report).await
            }
            // A link Graph keeps refusing would fail every cycle until `reset-state`; a full round needs no link.
            Err(SyncError::Graph(refused @ GraphError::StoredLinkRefused { .. })) => {
                // Counted in the state, so that one-shot runs from a timer count too.
                let refusals = self.state.count_link_refusal(resource)?;
                if refusals < STORED_LINK_REFUSALS {
                    return Err(refused.into());
                }
                tracing::warn!(tenant = %self.config.name, ?resource, refusals, "Graph refused the stored delta link again: {refused}; starting a full round");
                self.state.drop_cursor(resource)?;
                self.state.clear_link_refusals(resource)?;
                self.read_pages(resource, report).await
            }
            other => other,
        }
    }

    /// Reads pages from the cursor (or the start of a full round) to the round's end, merging each. A stop
    /// ends it early, even in the middle of a Graph call, with the cursor at the last page merged.
    pub(super) async fn read_pages(&self, resource: Resource, report: &mut CycleReport) -> Result<bool, SyncError> {
        // `stored`: the next link comes from the cursor, not from Graph in this round.
        let (mut link, full, mut stored) = match self.state.cursor(resource)? {
            None => (self.start_url(resource), true, false),
            Some(c) if c.complete => {
                self.finish_full_round(resource, &c).await?;
                (c.link, false, true)
            }
            Some(c) => (c.link, c.full, true),
        };
        let mut read = RoundGuard::default();
        loop {
            if self.stop.is_set() {
                return Ok(full);
            }
            read.next(&link)?;
            let Some(page) = self.unless_stopped(self.page(&link, stored)).await else {
                return Ok(full);
            };
            let mut page = page?;
            // A page merged without the values it needs would take every group out of scope: a stop ends the
            // round before it, and the cursor stays.
            if resource == Resource::Groups
                && self.config.writeback_source == WritebackSource::Batch
                && !self.read_writeback_in_batches(&mut page.entries).await?
            {
                return Ok(full);
            }
            if std::mem::take(&mut stored) {
                // The stored link was read: its refusals are no longer in a row.
                self.state.clear_link_refusals(resource)?;
            }
            let (next, complete) = match page.link {
                NextLink::Next(next) => (next, false),
                NextLink::Delta(delta) => (delta, true),
            };
            let cursor = Cursor { link: next.clone(), full, complete, select: Some(self.select(resource)) };
            self.merge(resource, &page.entries, &cursor, report)?;
            self.store.flush().await?;
            if complete {
                self.finish_full_round(resource, &cursor).await?;
                return Ok(full);
            }
            link = next;
        }
    }

    /// Puts each group's `writebackConfiguration`, as a GET of the group gives it, into the page's entries of
    /// that group, for a tenant whose delta query does not return it. Removed groups are not asked about.
    /// Returns false when a stop cut the reads short.
    async fn read_writeback_in_batches(&self, entries: &mut [serde_json::Value]) -> Result<bool, SyncError> {
        let mut ids: Vec<String> = entries
            .iter()
            .filter(|e| e.get("@removed").is_none())
            .filter_map(|e| e.get("id")?.as_str().map(str::to_string))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(true);
        }
        let Some(found) = self.unless_stopped(self.graph.writeback_configurations(&ids)).await else {
            return Ok(false);
        };
        let found = found?;
        for entry in entries.iter_mut() {
            let id = entry.get("id").and_then(|v| v.as_str()).map(str::to_string);
            if let (Some(value), Some(object)) = (id.and_then(|id| found.get(&id)), entry.as_object_mut()) {
                object.insert("writebackConfiguration".into(), value.clone());
            }
        }
        Ok(true)
    }

    /// One delta page. A link from the cursor is fetched so that Graph's refusals of it are counted.
    async fn page(&self, link: &str, stored: bool) -> Result<Page, GraphError> {
        if stored { self.graph.stored_delta_page(link).await } else { self.graph.delta_page(link).await }
    }

    /// Awaits a Graph call unless a stop is asked for first. A Retry-After wait can last five minutes, and
    /// SIGTERM must not wait for it. Dropping the call loses nothing: the cursor moves only after a page is
    /// merged, and a full round is marked finished only after its last lookup.
    pub(super) async fn unless_stopped<T>(&self, call: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            // A stop already asked for wins, so that no new request is sent.
            biased;
            () = self.stop.stopped() => None,
            result = call => Some(result),
        }
    }

    /// The `$select` this version reads `resource` with.
    fn select(&self, resource: Resource) -> String {
        match resource {
            Resource::Groups => crate::attributes::group_select(),
            Resource::Users => delta::USER_SELECT.to_string(),
        }
    }

    pub(super) fn start_url(&self, resource: Resource) -> String {
        match resource {
            Resource::Groups => self.graph.groups_delta_start(),
            Resource::Users => self.graph.users_delta_start(),
        }
    }

    pub(super) fn merge(
        &self,
        resource: Resource,
        entries: &[serde_json::Value],
        cursor: &Cursor,
        report: &mut CycleReport,
    ) -> Result<(), SyncError> {
        let mut unreadable = Vec::new();
        let mut bad = |err: delta::EntryError| unreadable.push(Unreadable { id: err.id, reason: err.reason });
        match resource {
            Resource::Groups => {
                let parsed: Vec<_> =
                    entries.iter().filter_map(|e| delta::parse_group(e).map_err(&mut bad).ok()).collect();
                self.state.merge_group_page(&parsed, &unreadable, cursor)?;
                report.read_groups += parsed.len();
            }
            Resource::Users => {
                let parsed: Vec<_> =
                    entries.iter().filter_map(|e| delta::parse_user(e).map_err(&mut bad).ok()).collect();
                self.state.merge_user_page(&parsed, &unreadable, cursor)?;
                report.read_users += parsed.len();
            }
        }
        for entry in &unreadable {
            tracing::warn!(tenant = %self.config.name, "held an object whose Graph entry cannot be read: {}", entry.reason);
        }
        report.status.bad_entries.extend(unreadable.into_iter().map(|u| u.reason));
        self.progress.reading(report.read_groups, report.read_users);
        Ok(())
    }

    /// After a full round, objects it did not list may be gone. Graph decides: an object is gone only when
    /// neither it nor deleted items can be found; one Graph still returns is kept as it is. A stop ends it
    /// early with the cursor still full and complete, so the next cycle finishes it.
    pub(super) async fn finish_full_round(&self, resource: Resource, cursor: &Cursor) -> Result<(), SyncError> {
        if !(cursor.full && cursor.complete) {
            return Ok(());
        }
        match resource {
            Resource::Users => {
                let mut gone = Vec::new();
                for id in self.state.users_missing_from_full_round()? {
                    let Some(presence) = self.unless_stopped(self.graph.user_presence(&id)).await else {
                        return Ok(());
                    };
                    match presence? {
                        Presence::Gone => gone.push(id),
                        // A soft-deleted user keeps its memberships in Entra ID until the hard delete.
                        Presence::SoftDeleted => {}
                        Presence::Live => self.unlisted_but_live("user", &id),
                    }
                }
                self.state.drop_users(&gone)?;
                self.state.clear_user_round_marks()?;
            }
            Resource::Groups => {
                for id in self.state.groups_missing_from_full_round()? {
                    let Some(presence) = self.unless_stopped(self.graph.group_presence(&id)).await else {
                        return Ok(());
                    };
                    match presence? {
                        Presence::Gone => self.state.mark_removed(&id, Removal::Deleted)?,
                        Presence::SoftDeleted => self.state.mark_removed(&id, Removal::Changed)?,
                        Presence::Live => self.unlisted_but_live("group", &id),
                    }
                }
                self.state.clear_group_round_marks()?;
            }
        }
        let done = Cursor { full: false, ..cursor.clone() };
        match resource {
            Resource::Groups => self.state.merge_group_page(&[], &[], &done)?,
            Resource::Users => self.state.merge_user_page(&[], &[], &done)?,
        };
        self.store.flush().await?;
        Ok(())
    }

    fn unlisted_but_live(&self, kind: &str, id: &str) {
        tracing::warn!(tenant = %self.config.name, "{kind} {id} was not listed in a full delta round, but Graph still returns it; it is kept as it was");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_read_twice_in_one_round_ends_it() {
        let mut guard = RoundGuard::default();
        guard.next("https://graph.microsoft.com/beta/groups/delta?$skiptoken=a").unwrap();
        guard.next("https://graph.microsoft.com/beta/groups/delta?$skiptoken=b").unwrap();
        let err = guard.next("https://graph.microsoft.com/beta/groups/delta?$skiptoken=a").unwrap_err();
        assert!(matches!(err, GraphError::LinkLoop { .. }), "{err}");
        assert!(!err.to_string().contains("skiptoken=a"), "tokens stay out of errors: {err}");
    }
}
