//! Where each managed group was last seen in AD: a hint for reads, never a licence to write. And which AD
//! groups were taken over for the cloud groups converted from them, for `status`.

use super::*;
use crate::status::TakenOver;

/// Where a managed group was last seen in AD: a hint for reads, never a licence to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub guid: String,
    pub sid: Option<String>,
    pub dn: String,
}

impl TenantState {
    /// Where a managed group was last seen in AD.
    pub fn anchor(&self, id: &str) -> Result<Option<Anchor>, StateError> {
        self.get(&key("a", &[id]))
    }

    /// Every recorded anchor.
    pub fn anchors(&self) -> Result<BTreeMap<String, Anchor>, StateError> {
        let mut anchors = BTreeMap::new();
        for item in self.tree.scan_prefix(b"a\0") {
            let (k, v) = item?;
            anchors.insert(key_tail(&k, 2), self.decode(&k, &v)?);
        }
        Ok(anchors)
    }

    /// Up to `limit` managed groups' ids in id order after `after`, going round to the first ones at the end.
    pub fn managed_ids_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, StateError> {
        let start = after.map_or_else(|| b"a\0".to_vec(), |id| key("a", &[id]));
        let mut ids = Vec::new();
        // Keys are ordered, so the managed groups end where the first key of another kind begins.
        let later = self.tree.range(start..).keys().take_while(|k| k.as_ref().map_or(true, |k| k.starts_with(b"a\0")));
        for k in later.chain(self.tree.scan_prefix(b"a\0").keys()) {
            let id = key_tail(&k?, 2);
            if ids.len() >= limit || ids.first() == Some(&id) {
                break;
            }
            if after != Some(id.as_str()) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Records where a managed group lives.
    pub fn set_anchor(&self, id: &str, anchor: &Anchor) -> Result<(), StateError> {
        self.tree.insert(key("a", &[id]), encode(anchor))?;
        Ok(())
    }
}

impl TenantState {
    /// Records that the AD group a cloud group was converted from was taken over.
    pub fn record_takeover(&self, record: &TakenOver) -> Result<(), StateError> {
        self.tree.insert(key("t", &[&record.group_id]), encode(record))?;
        Ok(())
    }

    /// Every group taken over, in id order.
    pub fn takeovers(&self) -> Result<Vec<TakenOver>, StateError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(b"t\0") {
            let (k, v) = item?;
            out.push(self.decode(&k, &v)?);
        }
        Ok(out)
    }
}
