//! Delta rounds: Graph's pages merged into the state, page by page, and the end of full rounds.

use super::{CycleReport, SyncError, TenantSync};
use crate::graph::GraphError;
use crate::graph::delta::{self, NextLink, Removal};
use crate::state::{Cursor, Resource};

impl TenantSync<'_> {
    /// Reads one delta round to its end, restarting once with a full round when Graph asks for a resync.
    pub(super) async fn read_round(&self, resource: Resource, report: &mut CycleReport) -> Result<(), SyncError> {
        match self.read_pages(resource, report).await {
            Err(SyncError::Graph(GraphError::ResyncRequired { .. })) => {
                tracing::warn!(tenant = %self.config.name, ?resource, "Graph asked for a full resync; starting a full round");
                self.state.drop_cursor(resource)?;
                self.read_pages(resource, report).await
            }
            other => other,
        }
    }

    pub(super) async fn read_pages(&self, resource: Resource, report: &mut CycleReport) -> Result<(), SyncError> {
        let (mut link, full) = match self.state.cursor(resource)? {
            None => (self.start_url(resource), true),
            Some(c) if c.complete => {
                self.finish_full_round(resource, &c).await?;
                (c.link, false)
            }
            Some(c) => (c.link, c.full),
        };
        loop {
            if self.stop.is_set() {
                return Ok(());
            }
            let page = self.graph.delta_page(&link).await?;
            let (next, complete) = match page.link {
                NextLink::Next(next) => (next, false),
                NextLink::Delta(delta) => (delta, true),
            };
            let cursor = Cursor { link: next.clone(), full, complete };
            self.merge(resource, &page.entries, &cursor, report)?;
            self.store.flush().await?;
            if complete {
                return self.finish_full_round(resource, &cursor).await;
            }
            link = next;
        }
    }

    pub(super) fn start_url(&self, resource: Resource) -> String {
        match resource {
            Resource::Groups => self.graph.groups_delta_start(),
            Resource::Users => self.graph.users_delta_start(),
        }
    }

    pub(super) fn merge(&self, resource: Resource, entries: &[serde_json::Value], cursor: &Cursor, report: &mut CycleReport) -> Result<(), SyncError> {
        let mut bad = Vec::new();
        match resource {
            Resource::Groups => {
                let parsed: Vec<_> = entries.iter().filter_map(|e| delta::parse_group(e).map_err(|err| bad.push(err.0)).ok()).collect();
                self.state.merge_group_page(&parsed, cursor)?;
                report.read_groups += parsed.len();
            }
            Resource::Users => {
                let parsed: Vec<_> = entries.iter().filter_map(|e| delta::parse_user(e).map_err(|err| bad.push(err.0)).ok()).collect();
                self.state.merge_user_page(&parsed, cursor)?;
                report.read_users += parsed.len();
            }
        }
        for reason in &bad {
            tracing::warn!(tenant = %self.config.name, "skipped a Graph entry: {reason}");
        }
        report.status.bad_entries.extend(bad);
        self.progress.reading(report.read_groups, report.read_users);
        Ok(())
    }

    /// After a full round, objects it did not list are gone. A group counts as hard-deleted only when
    /// Graph's deleted items do not hold it either.
    pub(super) async fn finish_full_round(&self, resource: Resource, cursor: &Cursor) -> Result<(), SyncError> {
        if !(cursor.full && cursor.complete) {
            return Ok(());
        }
        match resource {
            Resource::Users => {
                self.state.finish_full_user_round()?;
            }
            Resource::Groups => {
                for id in self.state.groups_missing_from_full_round()? {
                    let removal = if self.graph.in_deleted_items(&id).await? { Removal::Changed } else { Removal::Deleted };
                    self.state.mark_removed(&id, removal)?;
                }
                self.state.clear_group_round_marks()?;
            }
        }
        let done = Cursor { full: false, ..cursor.clone() };
        match resource {
            Resource::Groups => self.state.merge_group_page(&[], &done)?,
            Resource::Users => self.state.merge_user_page(&[], &done)?,
        };
        self.store.flush().await?;
        Ok(())
    }
}
