//! One run followed for a live page, through the store's watcher: the record is re-read
//! only when the watcher says it may have changed (on the file backend, two `stat` calls
//! tell; other backends read the run on every look).

use trellis_core::status::{RunRecord, Status};
use trellis_store::{RunWatch, live_status, mark_dead};

/// A run's latest record, kept up to date by its watcher.
pub(crate) struct Tracked {
    watch: Box<dyn RunWatch>,
    pub record: Option<RunRecord>,
}

impl Tracked {
    pub fn new(watch: Box<dyn RunWatch>) -> Tracked {
        Tracked {
            watch,
            record: None,
        }
    }

    /// Re-reads the record when it may have changed; true when it did.
    pub fn refresh(&mut self) -> bool {
        self.stale() && self.load()
    }

    /// Looks without reading (cheap): whether the record may have changed.
    pub fn stale(&mut self) -> bool {
        self.watch.stale()
    }

    /// Reads the record that [`Tracked::stale`] found changed; true when it differs.
    pub fn load(&mut self) -> bool {
        let Ok(Some(record)) = self.watch.read() else {
            return false;
        };
        let changed = self.record.as_ref() != Some(&record);
        self.record = Some(record);
        changed
    }

    /// The run's status now: a run recorded as running whose process is gone is failed.
    pub fn status(&self) -> Option<Status> {
        self.record.as_ref().map(live_status)
    }

    /// The status, after reading the record once more if the process seems dead: it may
    /// have written its final status just before exiting. The bool says the record changed.
    pub fn settled_status(&mut self) -> (Option<Status>, bool) {
        let status = self.status();
        if status != self.record.as_ref().map(|r| r.status) {
            let changed = self.refresh();
            return (self.status(), changed);
        }
        (status, false)
    }

    /// The record with a dead process shown failed.
    pub fn view(&self) -> Option<RunRecord> {
        let mut view = self.record.clone()?;
        mark_dead(&mut view);
        Some(view)
    }
}
