//! The leader lease on the file store: an exclusive lock on `scheduler/leader.lock` (held by
//! the kernel for as long as the process lives, so a `kill -9` frees it at once) and a lease
//! file whose fencing token grows with every new leader. Ticks and queue decisions are only
//! made while holding it; the deterministic run ids keep them correct even if two processes
//! ever overlapped.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the lease file says about the current leader.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub token: u64,
    pub holder: String,
    pub pid: u32,
    pub since: String,
}

/// Held while this process leads; dropping it gives the lead up.
#[derive(Debug)]
pub struct Lease {
    _lock: File,
    pub info: LeaseInfo,
    /// The leader before this one, whose in-flight runs may need recovering.
    pub previous: Option<LeaseInfo>,
}

/// Where the lock and lease files live.
pub fn dir(data: &Path) -> PathBuf {
    data.join("scheduler")
}

/// Takes the lead if nobody holds it. `Ok(None)` means another process leads.
pub fn try_acquire(data: &Path, holder: &str) -> std::io::Result<Option<Lease>> {
    let dir = dir(data);
    fs::create_dir_all(&dir)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("leader.lock"))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(e)) => return Err(e),
    }
    let previous = read(data);
    let info = LeaseInfo {
        token: previous.as_ref().map_or(0, |i| i.token) + 1,
        holder: holder.to_string(),
        pid: std::process::id(),
        since: jiff::Timestamp::now().to_string(),
    };
    let path = dir.join("lease.json");
    let tmp = dir.join("lease.json.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(serde_json::to_string(&info).unwrap_or_default().as_bytes())?;
    file.sync_data()?;
    fs::rename(&tmp, &path)?;
    Ok(Some(Lease {
        _lock: lock,
        info,
        previous,
    }))
}

/// The last leader recorded (it may have died since).
pub fn read(data: &Path) -> Option<LeaseInfo> {
    let text = fs::read_to_string(dir(data).join("lease.json")).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_leader_at_a_time_and_tokens_grow() {
        let data = tempfile::tempdir().unwrap();
        let first = try_acquire(data.path(), "a").unwrap().expect("a leads");
        assert!(
            try_acquire(data.path(), "b").unwrap().is_none(),
            "b must not lead while a does"
        );
        assert_eq!(first.info.token, 1);
        drop(first);
        let second = try_acquire(data.path(), "b")
            .unwrap()
            .expect("b leads after a");
        assert_eq!(second.info.token, 2);
        assert_eq!(read(data.path()).unwrap().holder, "b");
    }
}
