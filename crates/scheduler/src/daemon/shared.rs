//! The leader's use of what it shares with other processes through the store: its lease,
//! ticks, suspended DAGs and stop requests from other machines.

use super::*;

impl<C: Clock + 'static> Leader<C> {
    /// Renews the lead (each pass, at least every second); a store that cannot confirm it
    /// means another scheduler may lead now.
    pub(super) fn still_leading(&mut self) -> bool {
        let Some(lead) = &self.lead else {
            return true;
        };
        // Every pass could be many per second; the lease lasts seconds.
        if self
            .renewed
            .is_some_and(|t| t.elapsed() < Duration::from_millis(1000))
        {
            return true;
        }
        self.renewed = Some(std::time::Instant::now());
        match self.store.renew_lead(lead) {
            Ok(true) => true,
            Ok(false) => false,
            Err(e) => {
                tracing::error!("scheduler {}: cannot renew the lead: {e}", self.opts.id);
                false
            }
        }
    }

    /// `trellis stop` of a run this leader executes (a stop request in the store: from any
    /// machine, and on one machine too, where signalling would stop the whole scheduler).
    /// Looked at twice a second.
    pub(super) fn stop_requested(&mut self) {
        if self
            .stops_checked
            .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
        {
            return;
        }
        self.stops_checked = Some(std::time::Instant::now());
        for (key, at) in self.store.values(scope::STOP).unwrap_or_default() {
            let Some((dag, run_id)) = key.split_once('~') else {
                continue;
            };
            let stale = at
                .parse::<Timestamp>()
                .is_ok_and(|t| Timestamp::now().duration_since(t).as_secs() > 60);
            let found = self
                .active
                .get(run_id)
                .filter(|a| trellis_store::safe_name(&a.slot.dag) == dag);
            if let Some(active) = found {
                tracing::info!("scheduler: stopping run {run_id} of {dag}, as asked");
                match &active.task {
                    Some(_) => self.opts.handoff.cancel(&active.slot.dag, run_id),
                    None => active.cancel.cancel(),
                }
            }
            if found.is_some() || stale {
                let _ = self.store.put(scope::STOP, &key, None);
            }
        }
    }
}

impl<C: Clock + 'static> Leader<C> {
    /// Claims a tick for this leader; `false` if it fired before (or the lead is gone).
    pub(super) fn claim(&self, key: &str, at: Timestamp) -> bool {
        self.store
            .claim_tick(self.token, key, &stamp(at))
            .unwrap_or_else(|e| {
                tracing::warn!("scheduler: cannot record tick {key} at {at}: {e}");
                false
            })
    }

    pub(super) fn mark_skipped(&self, dag: &str, at: Timestamp) {
        if let Err(e) = self.store.mark_tick_skipped(dag, &stamp(at)) {
            tracing::warn!("scheduler: cannot mark tick {dag} at {at} skipped: {e}");
        }
    }

    pub(super) fn suspended(&self, dag: &str) -> bool {
        matches!(self.store.get(scope::SUSPEND, dag), Ok(Some(_)))
    }

    pub(super) fn last_recorded_tick(&self, dag: &str) -> Option<Timestamp> {
        let last = self.store.last_tick(dag).ok().flatten()?;
        scheduled_time_of(&format!("sched-{last}"))
    }
}
