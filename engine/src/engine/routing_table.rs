//! The routing table: tenants → destinations in memory, loaded at start,
//! kept in step with Redis on other nodes' changes, read once per publish.
use super::*;

impl Engine {
    /// Replaces the routing table with these entities and tells the shards
    /// what changed (new or different destinations, removed ones).
    pub(super) async fn install(&self, tenants: Vec<Tenant>, mut loaded: Vec<Destination>) -> Result<(), EngineError> {
        loaded.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let mut next = State::default();
        for t in tenants {
            next.put_tenant(t);
        }
        let (upserts, removes) = {
            let st = self.state.read();
            let mut upserts = Vec::new();
            for mut d in loaded {
                d.shrink();
                // Keep the existing Arc when nothing changed, so shards are left alone.
                let d = match st
                    .owners
                    .get(&d.id)
                    .and_then(|t| st.tenants.get(t))
                    .and_then(|e| e.dests.iter().find(|x| x.id == d.id))
                {
                    Some(old) if **old == d => old.clone(),
                    _ => {
                        let d = Arc::new(d);
                        upserts.push(d.clone());
                        d
                    }
                };
                if let Some(entry) = next.tenants.get_mut(&d.tenant_id) {
                    next.owners.insert(d.id.clone(), d.tenant_id.clone());
                    entry.dests.push(d);
                }
            }
            let removes: Vec<String> = st
                .owners
                .keys()
                .filter(|id| !next.owners.contains_key(*id))
                .cloned()
                .collect();
            (upserts, removes)
        };
        *self.state.write() = next;
        for d in upserts {
            self.send(&d.id.clone(), ShardMsg::Upsert(d)).await?;
        }
        for id in removes {
            self.send(&id, ShardMsg::Remove(id.clone())).await?;
        }
        Ok(())
    }

    /// Applies one change announced on the Redis channel (made by any node,
    /// this one included): the store is read again, so the latest state wins.
    pub(super) async fn apply_change(&self, redis: &RedisEntityStore, change: Change) -> Result<(), EngineError> {
        let tenant = match &change {
            Change::Tenant { id, .. } => id.clone(),
            Change::Destination { tenant_id, .. } => tenant_id.clone(),
        };
        let _w = self.writes.lock(&tenant).await;
        match change {
            Change::Tenant { id, .. } => match redis.get_tenant(&id).await? {
                Some(t) => {
                    self.state.write().put_tenant(t);
                }
                None => {
                    let removed = {
                        let mut st = self.state.write();
                        let dests = st.remove_tenant(&id).map(|e| e.dests).unwrap_or_default();
                        for d in &dests {
                            st.owners.remove(&d.id);
                        }
                        dests
                    };
                    for d in removed {
                        self.send(&d.id, ShardMsg::Remove(d.id.clone())).await?;
                    }
                }
            },
            Change::Destination { id, tenant_id, .. } => match redis.get_destination(&id).await? {
                Some(mut d) => {
                    d.shrink();
                    // The tenant's own change may not have arrived yet.
                    let missing = !self.state.read().tenants.contains_key(&d.tenant_id);
                    let fetched = if missing {
                        redis.get_tenant(&d.tenant_id).await?
                    } else {
                        None
                    };
                    let changed = {
                        let mut st = self.state.write();
                        if let Some(t) = fetched {
                            if !st.tenants.contains_key(&t.id) {
                                st.put_tenant(t);
                            }
                        }
                        let d = Arc::new(d);
                        let mut changed = None;
                        if let Some(e) = st.tenants.get_mut(&d.tenant_id) {
                            match e.dests.iter_mut().find(|x| x.id == d.id) {
                                Some(slot) if **slot == *d => {}
                                Some(slot) => {
                                    *slot = d.clone();
                                    changed = Some(d.clone());
                                }
                                None => {
                                    e.dests.push(d.clone());
                                    e.dests
                                        .sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
                                    changed = Some(d.clone());
                                }
                            }
                        }
                        if changed.is_some() {
                            st.owners.insert(d.id.clone(), d.tenant_id.clone());
                        }
                        changed
                    };
                    if let Some(d) = changed {
                        self.send(&d.id.clone(), ShardMsg::Upsert(d)).await?;
                    }
                }
                None => {
                    let existed = {
                        let mut st = self.state.write();
                        let had = st.owners.remove(&id).is_some();
                        if let Some(e) = st.tenants.get_mut(&tenant_id) {
                            e.dests.retain(|d| d.id != id);
                        }
                        had
                    };
                    if existed {
                        self.send(&id, ShardMsg::Remove(id.clone())).await?;
                    }
                }
            },
        }
        Ok(())
    }

    // ---- tenants ----

    pub fn tenant(&self, id: &str) -> Option<TenantView> {
        self.state.read().tenants.get(id).map(TenantEntry::view)
    }

    pub fn tenant_exists(&self, id: &str) -> bool {
        self.state.read().tenants.contains_key(id)
    }

    /// When the tenant was created (ms), if it exists.
    pub fn tenant_created_at(&self, id: &str) -> Option<i64> {
        self.state.read().tenants.get(id).map(|e| e.tenant.created_at)
    }

    /// How many tenants there are.
    pub fn tenant_count(&self) -> usize {
        self.state.read().tenants.len()
    }

    /// Up to `limit` tenants from `seek`, newest first (`asc`: oldest
    /// first), ties by id: a range read of the ordered index.
    pub fn tenant_page(&self, asc: bool, seek: TenantSeek, limit: usize) -> TenantPage {
        use std::ops::Bound::{Excluded, Unbounded};
        let st = self.state.read();
        let order = &st.tenant_order;
        // Keys after `k` in the listing's order, and before it.
        let after = |k: &(i64, String)| -> Box<dyn Iterator<Item = &(i64, String)> + '_> {
            if asc {
                Box::new(order.range((Excluded(k.clone()), Unbounded)))
            } else {
                Box::new(order.range((Unbounded, Excluded(k.clone()))).rev())
            }
        };
        let before = |k: &(i64, String)| -> Box<dyn Iterator<Item = &(i64, String)> + '_> {
            if asc {
                Box::new(order.range((Unbounded, Excluded(k.clone()))).rev())
            } else {
                Box::new(order.range((Excluded(k.clone()), Unbounded)))
            }
        };
        let keys: Vec<&(i64, String)> = match seek {
            TenantSeek::First if asc => order.iter().take(limit).collect(),
            TenantSeek::First => order.iter().rev().take(limit).collect(),
            TenantSeek::After(at, id) => after(&(at, id)).take(limit).collect(),
            TenantSeek::Before(at, id) => {
                let mut k: Vec<_> = before(&(at, id)).take(limit).collect();
                k.reverse();
                k
            }
        };
        let more_after = keys.last().is_some_and(|k| after(k).next().is_some());
        let more_before = keys.first().is_some_and(|k| before(k).next().is_some());
        let rows = keys
            .iter()
            .filter_map(|(_, id)| st.tenants.get(id).map(TenantEntry::view))
            .collect();
        TenantPage {
            rows,
            more_after,
            more_before,
        }
    }

    // ---- destinations ----

    pub fn destinations(&self, tenant_id: &str) -> Option<Vec<Arc<Destination>>> {
        self.state.read().tenants.get(tenant_id).map(|e| e.dests.clone())
    }

    pub fn destination(&self, tenant_id: &str, id: &str) -> Option<Arc<Destination>> {
        self.state
            .read()
            .tenants
            .get(tenant_id)
            .and_then(|e| e.dests.iter().find(|d| d.id == id).cloned())
    }
}
