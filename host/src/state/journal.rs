//! The audit log of directory writes, and the journal of writes sent or about to be sent.

use super::*;

/// One directory write, as recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub tenant: String,
    pub group_id: String,
    /// `create`, `rename`, `modify`, `add-members`, `remove-members` or `delete`.
    pub operation: String,
    pub dn: String,
    pub detail: String,
    /// `ok`, or the error.
    pub outcome: String,
    /// Why the write was made when not for a cloud change: `drift-repair` (an on-premises edit undone) or
    /// `pim-expiry` (a time-bound membership ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// What a drift repair found in the directory, beside what it restored (in `detail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
}

impl TenantState {
    /// Appends a record to the audit log.
    pub fn audit(&self, record: &AuditRecord) -> Result<(), StateError> {
        let seq = self.db.generate_id()?;
        self.audit.insert(seq.to_be_bytes(), encode(record))?;
        Ok(())
    }

    /// Records writes about to be sent. The caller flushes before sending them, so that a crash between a
    /// write and its audit record still leaves the write accounted for. Returns one key per record.
    pub fn journal(&self, records: &[AuditRecord]) -> Result<Vec<u64>, StateError> {
        let mut keys = Vec::with_capacity(records.len());
        let mut batch = sled::Batch::default();
        for record in records {
            let key = self.db.generate_id()?;
            batch.insert(&key.to_be_bytes(), encode(record));
            keys.push(key);
        }
        self.journal.apply_batch(batch)?;
        Ok(keys)
    }

    /// Files a journaled write's outcome in the audit log, in one transaction with removing its intent.
    pub fn settle(&self, key: u64, outcome: Option<&AuditRecord>) -> Result<(), StateError> {
        self.settle_all(&[(key, outcome.cloned())])
    }

    /// Files the outcomes of several journaled writes (`None`: never sent) in one transaction with removing
    /// their intents. One transaction seals one log buffer, so a wave of writes costs the store one write, not
    /// one each.
    pub fn settle_all(&self, outcomes: &[(u64, Option<AuditRecord>)]) -> Result<(), StateError> {
        use sled::Transactional;
        if outcomes.is_empty() {
            return Ok(());
        }
        let encoded: Vec<([u8; 8], Option<Vec<u8>>)> =
            outcomes.iter().map(|(key, record)| (key.to_be_bytes(), record.as_ref().map(encode))).collect();
        (&self.audit, &self.journal)
            .transaction(|(audit, journal)| {
                for (key, record) in &encoded {
                    if let Some(record) = record {
                        audit.insert(key, record.clone())?;
                    }
                    journal.remove(key)?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => StateError::Store(e),
                sled::transaction::TransactionError::Abort(()) => {
                    StateError::Store(sled::Error::Unsupported("transaction aborted".into()))
                }
            })
    }

    /// Files the intents a crash left behind as writes whose outcome is unknown; the cycle that follows
    /// reads the directory, so whatever they did is reconciled. Returns how many there were.
    pub fn file_interrupted(&self) -> Result<usize, StateError> {
        let mut filed = 0;
        for item in self.journal.iter() {
            let (k, v) = item?;
            let mut record: AuditRecord = self.decode(&k, &v)?;
            record.outcome =
                "interrupted: the agent stopped before the outcome was recorded; the next cycle reconciled it".into();
            let key = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            self.settle(key, Some(&record))?;
            filed += 1;
        }
        Ok(filed)
    }

    /// The audit log, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditRecord>, StateError> {
        let mut records = Vec::new();
        for item in self.audit.iter() {
            let (k, v) = item?;
            records.push(self.decode(&k, &v)?);
        }
        Ok(records)
    }
}
