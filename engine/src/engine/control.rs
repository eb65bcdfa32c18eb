//! Control-plane writes: tenants and destinations (stored, then the routing
//! table and the owning shard updated), auto-disable, subscription events.
use super::*;

impl Engine {
    /// Disables a destination after its failure streak reached the limit.
    /// `None` when it is gone or was already disabled.
    pub async fn auto_disable(&self, tenant_id: &str, id: &str) -> Option<Arc<Destination>> {
        let current = self.destination(tenant_id, id)?;
        if !current.is_enabled() {
            return None;
        }
        let mut next = (*current).clone();
        next.disabled_at = Some(now_ms());
        match self.update_destination(next).await {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!(error = %e, destination_id = id, "cannot auto-disable a destination");
                None
            }
        }
    }

    /// `tenant.subscription.updated` when a destination change altered the
    /// tenant's topics or destination count.
    fn subscription_changed(&self, before: Option<TenantView>, tenant_id: &str) {
        let Some(o) = &self.opevents else { return };
        let (Some(before), Some(after)) = (before, self.tenant(tenant_id)) else {
            return;
        };
        if before.topics == after.topics && before.destinations_count == after.destinations_count {
            return;
        }
        o.best_effort(
            crate::opevents::TOPIC_SUBSCRIPTION_UPDATED,
            Some(tenant_id),
            serde_json::json!({
                "tenant_id": tenant_id,
                "topics": after.topics,
                "previous_topics": before.topics,
                "destinations_count": after.destinations_count,
                "previous_destinations_count": before.destinations_count,
            }),
        );
    }

    /// Creates or replaces a tenant's metadata; `true` when it was created.
    pub async fn upsert_tenant(
        &self,
        id: &str,
        metadata: Option<crate::model::StringMap>,
    ) -> Result<(TenantView, bool), EngineError> {
        let _w = self.writes.lock(id).await;
        let now = now_ms();
        let existing = self.state.read().tenants.get(id).map(|e| e.tenant.clone());
        let created = existing.is_none();
        let tenant = Tenant {
            id: id.to_string(),
            metadata,
            created_at: existing.map(|t| t.created_at).unwrap_or(now),
            updated_at: now,
        };
        self.entities.put_tenant(tenant.clone()).await?;
        let mut st = self.state.write();
        let entry = st.put_tenant(tenant);
        Ok((entry.view(), created))
    }

    pub async fn delete_tenant(&self, id: &str) -> Result<bool, EngineError> {
        let _w = self.writes.lock(id).await;
        if !self.tenant_exists(id) {
            return Ok(false);
        }
        self.entities.delete_tenant(id.to_string()).await?;
        let removed = {
            let mut st = self.state.write();
            let entry = st.remove_tenant(id);
            let dests = entry.map(|e| e.dests).unwrap_or_default();
            for d in &dests {
                st.owners.remove(&d.id);
            }
            dests
        };
        for d in removed {
            self.send(&d.id, ShardMsg::Remove(d.id.clone())).await?;
        }
        Ok(true)
    }

    /// Stores a new destination (already validated and preprocessed).
    pub async fn create_destination(&self, d: Destination) -> Result<Arc<Destination>, EngineError> {
        let _w = self.writes.lock(&d.tenant_id).await;
        let before = self.tenant(&d.tenant_id);
        {
            let st = self.state.read();
            let entry = st
                .tenants
                .get(&d.tenant_id)
                .ok_or(EngineError::NotFound("tenant not found"))?;
            if st.owners.contains_key(&d.id) {
                return Err(EngineError::BadRequest("destination already exists".into()));
            }
            if entry.dests.len() >= self.config.max_destinations_per_tenant {
                return Err(EngineError::BadRequest(
                    "maximum number of destinations per tenant reached".into(),
                ));
            }
        }
        // Held until the routing table has it: another tenant's create of
        // the same id (under its own lock) fails instead of replacing it.
        let _id = self
            .writes
            .reserve(&d.id, || self.state.read().owners.contains_key(&d.id))
            .ok_or_else(|| EngineError::BadRequest("destination already exists".into()))?;
        self.entities.put_destination(d.clone()).await?;
        let mut d = d;
        d.shrink();
        let d = Arc::new(d);
        {
            let mut st = self.state.write();
            st.owners.insert(d.id.clone(), d.tenant_id.clone());
            if let Some(e) = st.tenants.get_mut(&d.tenant_id) {
                e.dests.push(d.clone());
            }
        }
        self.send(&d.id, ShardMsg::Upsert(d.clone())).await?;
        self.subscription_changed(before, &d.tenant_id);
        Ok(d)
    }

    /// Replaces a stored destination (same id and tenant).
    pub async fn update_destination(&self, mut d: Destination) -> Result<Arc<Destination>, EngineError> {
        d.shrink();
        let _w = self.writes.lock(&d.tenant_id).await;
        if self.destination(&d.tenant_id, &d.id).is_none() {
            return Err(EngineError::NotFound("destination not found"));
        }
        let before = self.tenant(&d.tenant_id);
        self.entities.put_destination(d.clone()).await?;
        let d = Arc::new(d);
        {
            let mut st = self.state.write();
            if let Some(e) = st.tenants.get_mut(&d.tenant_id) {
                if let Some(slot) = e.dests.iter_mut().find(|x| x.id == d.id) {
                    *slot = d.clone();
                }
            }
        }
        self.send(&d.id, ShardMsg::Upsert(d.clone())).await?;
        self.subscription_changed(before, &d.tenant_id);
        Ok(d)
    }

    pub async fn delete_destination(&self, tenant_id: &str, id: &str) -> Result<bool, EngineError> {
        let _w = self.writes.lock(tenant_id).await;
        if self.destination(tenant_id, id).is_none() {
            return Ok(false);
        }
        let before = self.tenant(tenant_id);
        self.entities
            .delete_destination(tenant_id.to_string(), id.to_string())
            .await?;
        {
            let mut st = self.state.write();
            st.owners.remove(id);
            if let Some(e) = st.tenants.get_mut(tenant_id) {
                e.dests.retain(|d| d.id != id);
            }
        }
        self.send(id, ShardMsg::Remove(id.to_string())).await?;
        self.subscription_changed(before, tenant_id);
        Ok(true)
    }
}
