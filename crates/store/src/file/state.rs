//! The lead, ticks and named values on the file backend, under `data/`:
//! - the lead is an exclusive lock on `scheduler/leader.lock` (held by the kernel for as
//!   long as the process lives, so a `kill -9` frees it at once) and `scheduler/lease.json`,
//!   whose fencing token grows with every new leader;
//! - a tick is a file `scheduler/ticks/<dag>/<stamp>` created with `O_EXCL`;
//! - a named value is a file `<scope>/<name>`; suspended DAGs keep Dagu-era
//!   `suspend/<dag>.suspended` flags. Swaps of a scope's values hold an exclusive lock
//!   on `state/.locks/<scope>.lock` while they compare and replace (by rename).

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::path::PathBuf;

use super::{FileStore, io, write_atomic};
use crate::state::{Lead, LeaseInfo, State, scope};
use crate::{Error, Result, safe_name};

impl FileStore {
    fn scheduler_dir(&self) -> PathBuf {
        self.data.join("scheduler")
    }

    fn tick_path(&self, dag: &str, at: &str) -> PathBuf {
        self.scheduler_dir()
            .join("ticks")
            .join(safe_name(dag))
            .join(safe_name(at))
    }

    /// The latest scheduled tick of any DAG and when it was claimed (its file's
    /// modification time); tick files are named by their scheduled time.
    pub(crate) fn latest_tick_claim(&self) -> Result<Option<crate::TickClaim>> {
        let ticks = self.scheduler_dir().join("ticks");
        let mut latest: Option<(String, PathBuf)> = None;
        for dag in super::sorted_children(&ticks)? {
            let Ok(names) = fs::read_dir(&dag) else {
                continue;
            };
            let names = names.filter_map(|e| e.ok()?.file_name().into_string().ok());
            if let Some(name) = names.max()
                && latest.as_ref().is_none_or(|(l, _)| name > *l)
            {
                latest = Some((name.clone(), dag.join(name)));
            }
        }
        let Some((name, path)) = latest else {
            return Ok(None);
        };
        let scheduled = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", &name)
            .ok()
            .and_then(|t| t.to_zoned(jiff::tz::TimeZone::UTC).ok());
        let modified = fs::metadata(&path).and_then(|m| m.modified());
        let claimed = modified
            .ok()
            .and_then(|t| jiff::Timestamp::try_from(t).ok());
        Ok(scheduled.zip(claimed).map(|(s, claimed)| crate::TickClaim {
            scheduled: s.timestamp(),
            claimed,
        }))
    }

    fn value_path(&self, scope: &str, name: &str) -> PathBuf {
        match scope {
            scope::SUSPEND => self
                .data
                .join("suspend")
                .join(format!("{}.suspended", safe_name(name))),
            scope::SCHEDULER => self
                .scheduler_dir()
                .join(format!("{}.json", safe_name(name))),
            _ => self
                .data
                .join("state")
                .join(safe_name(scope))
                .join(encode_name(name)),
        }
    }
}

/// A value's name as one file name that [`decode_name`] turns back into it: letters,
/// digits, `-` and `_` as they are, every other byte as `%XX` (so `.`, `/` and `~` too,
/// and no name can be `..`). `values` must give back the names it was given.
fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() { "%".into() } else { out }
}

fn decode_name(file: &str) -> Option<String> {
    if file == "%" {
        return Some(String::new());
    }
    let mut bytes = Vec::with_capacity(file.len());
    let mut rest = file.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

impl FileStore {
    /// The lock and lease file of lease `name`; the scheduler's and the coordinator's keep
    /// the places earlier versions used.
    fn lease_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        match name {
            crate::state::SCHEDULER => (
                self.scheduler_dir().join("leader.lock"),
                self.scheduler_dir().join("lease.json"),
            ),
            crate::state::COORDINATOR => (
                self.data.join("distributed").join("coordinator.lock"),
                self.data.join("distributed").join("coordinator-lease.json"),
            ),
            other => {
                let dir = self.data.join("leases");
                let name = safe_name(other);
                (
                    dir.join(format!("{name}.lock")),
                    dir.join(format!("{name}.json")),
                )
            }
        }
    }
}

impl FileStore {
    /// The values of a scope whose names `keep` accepts (only those files are read).
    fn values_where(
        &self,
        scope: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, String)>> {
        let dir = self.data.join("state").join(safe_name(scope));
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // Gone meanwhile, or a write in progress (`.tmp`): skip it.
            if name.ends_with(".tmp") {
                continue;
            }
            let Some(name) = decode_name(&name) else {
                continue; // not written by `put`
            };
            if !keep(&name) {
                continue;
            }
            if let Ok(value) = fs::read_to_string(entry.path()) {
                out.push((name, value));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Holds the swap lock of a scope until the file is dropped.
    fn swap_lock(&self, scope: &str) -> Result<fs::File> {
        let dir = self.data.join("state").join(".locks");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{}.lock", safe_name(scope)));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        file.lock().map_err(io(&path))?;
        Ok(file)
    }
}

impl State for FileStore {
    fn acquire_lease(&self, name: &str, holder: &str) -> Result<Option<Lead>> {
        let (lock_path, info_path) = self.lease_paths(name);
        if let Some(dir) = lock_path.parent() {
            fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let previous = self.lease(name)?;
        let info = LeaseInfo {
            token: previous.as_ref().map_or(0, |i| i.token) + 1,
            holder: holder.to_string(),
            pid: std::process::id(),
            since: jiff::Timestamp::now().to_string(),
            host: crate::hostname().to_string(),
        };
        let json = serde_json::to_vec(&info).map_err(|e| io(&info_path)(e.into()))?;
        write_atomic(&info_path, &json)?;
        Ok(Some(Lead {
            name: name.to_string(),
            info,
            previous,
            guard: Some(Box::new(lock)),
        }))
    }

    fn renew_lease(&self, lead: &Lead) -> Result<bool> {
        // The lock is held for as long as the process lives; nobody can take it over.
        Ok(lead.guard.is_some())
    }

    fn release_lease(&self, lead: Lead) {
        drop(lead);
    }

    fn lease(&self, name: &str) -> Result<Option<LeaseInfo>> {
        let path = self.lease_paths(name).1;
        match fs::read_to_string(&path) {
            Ok(text) => Ok(serde_json::from_str(&text).ok()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn put_worker(&self, id: &str, info: &str) -> Result<()> {
        self.put("worker", id, Some(info))
    }

    fn workers(&self) -> Result<Vec<String>> {
        Ok(self.values("worker")?.into_iter().map(|(_, v)| v).collect())
    }

    fn values(&self, scope: &str) -> Result<Vec<(String, String)>> {
        self.values_where(scope, |_| true)
    }

    fn values_with_prefix(&self, scope: &str, prefix: &str) -> Result<Vec<(String, String)>> {
        self.values_where(scope, |name| name.starts_with(prefix))
    }

    fn claim_tick(&self, lead: u64, dag: &str, at: &str) -> Result<bool> {
        if self.leader()?.is_some_and(|l| l.token != lead) {
            return Err(Error::Fenced(lead));
        }
        let path = self.tick_path(dag, at);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io(dir))?;
        }
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                use std::io::Write;
                file.write_all(lead.to_string().as_bytes())
                    .map_err(io(&path))?;
                Ok(true)
            }
            // Claimed by this same lead: a repeat of this call, which must still fire.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                Ok(fs::read_to_string(&path).is_ok_and(|t| t == lead.to_string()))
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn mark_tick_skipped(&self, dag: &str, at: &str) -> Result<()> {
        let path = self.tick_path(dag, at);
        fs::write(&path, "skipped").map_err(io(&path))
    }

    fn tick_skipped(&self, dag: &str, at: &str) -> Result<bool> {
        Ok(fs::read_to_string(self.tick_path(dag, at)).is_ok_and(|s| s == "skipped"))
    }

    fn last_tick(&self, dag: &str) -> Result<Option<String>> {
        let dir = self.scheduler_dir().join("ticks").join(safe_name(dag));
        let Ok(names) = fs::read_dir(&dir) else {
            return Ok(None);
        };
        Ok(names
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .max())
    }

    fn get(&self, scope: &str, name: &str) -> Result<Option<String>> {
        let path = self.value_path(scope, name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn put(&self, scope: &str, name: &str, value: Option<&str>) -> Result<()> {
        let path = self.value_path(scope, name);
        let Some(value) = value else {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != ErrorKind::NotFound => Err(io(&path)(e)),
                _ => Ok(()),
            };
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io(dir))?;
        }
        write_atomic(&path, value.as_bytes())
    }

    fn swap(
        &self,
        scope: &str,
        name: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<bool> {
        let _lock = self.swap_lock(scope)?;
        if self.get(scope, name)?.as_deref() != expected {
            return Ok(false);
        }
        match (expected, new) {
            (None, None) => Ok(true),
            _ => self.put(scope, name, new).map(|()| true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_tick_and_when_it_was_claimed() {
        let home = tempfile::tempdir().unwrap();
        let store = FileStore::new(home.path());
        assert_eq!(store.latest_tick_claim().unwrap(), None);
        let dir = store.scheduler_dir().join("ticks/etl");
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("20260101T000000Z");
        fs::write(&file, "").unwrap();
        fs::write(dir.join("20251231T000000Z"), "").unwrap();
        let claimed: jiff::Timestamp = "2026-01-01T00:00:02.5Z".parse().unwrap();
        let f = fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(claimed.into()).unwrap();
        let tick = store.latest_tick_claim().unwrap().unwrap();
        assert_eq!(tick.scheduled, "2026-01-01T00:00:00Z".parse().unwrap());
        assert_eq!(tick.claimed, claimed);
    }
}
