//! Small JSON values kept between runs (Dagu's `state.*` actions), as one file per entry
//! under the state dir: `v1/<scope>/<hex(namespace)>/<hex(key)>.json`, Dagu's layout.
//! Every write holds an exclusive `flock` on one of 256 lock files (chosen by the
//! entry) and replaces the entry by rename, so processes on this machine and on others
//! sharing the dir (NFSv4 carries `flock`) never lose an update; readers see the old
//! entry or the new one, never half of one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The largest value kept, as Dagu (1 MiB of compact JSON).
pub(crate) const MAX_VALUE_BYTES: usize = 1 << 20;

/// Where an entry lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ref {
    pub scope: String,
    pub namespace: String,
    pub key: String,
}

/// One entry as kept on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub value: serde_json::Value,
    pub version: i64,
    pub hash: String,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default)]
    pub updated_by: serde_json::Value,
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("state conflict: `{key}` already exists (version {found}) and `create_only` is set")]
    Exists { key: String, found: i64 },
    #[error("state conflict on `{key}`: expected version {expected}, found {}", found.map_or("none (no such key)".to_string(), |v| format!("version {v}")))]
    Version {
        key: String,
        expected: i64,
        found: Option<i64>,
    },
    #[error("state dir {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

pub(crate) struct Store {
    dir: PathBuf,
}

/// Lowercase hex of the bytes (names that are safe whatever the key holds).
fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A write's precondition.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Expect {
    pub version: Option<i64>,
    pub create_only: bool,
}

impl Store {
    pub(crate) fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    fn folder(&self, scope: &str, namespace: &str) -> PathBuf {
        self.dir.join("v1").join(scope).join(hex(namespace))
    }

    fn path(&self, at: &Ref) -> PathBuf {
        self.folder(&at.scope, &at.namespace)
            .join(format!("{}.json", hex(&at.key)))
    }

    /// Holds the write lock of `at` until the file is dropped.
    fn lock(&self, at: &Ref) -> Result<nix::fcntl::Flock<File>, Error> {
        let locks = self.dir.join(".locks");
        std::fs::create_dir_all(&locks).map_err(|e| self.io(e))?;
        let bucket = crate::state::digest(&format!("{}/{}/{}", at.scope, at.namespace, at.key));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(locks.join(format!("{}.lock", &bucket[..2])))
            .map_err(|e| self.io(e))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| self.io(e.into()))
    }

    pub(crate) fn get(&self, at: &Ref) -> Result<Option<Entry>, Error> {
        match std::fs::read(self.path(at)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                self.io(std::io::Error::other(format!(
                    "{}: {e}",
                    self.path(at).display()
                )))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Writes `value` (already normalised) when `expect` holds; the new entry.
    pub(crate) fn put(
        &self,
        at: &Ref,
        value: serde_json::Value,
        hash: String,
        expect: Expect,
        now: &str,
        by: serde_json::Value,
    ) -> Result<Entry, Error> {
        let _lock = self.lock(at)?;
        let old = self.get(at)?;
        let found = old.as_ref().map(|e| e.version);
        if let (true, Some(found)) = (expect.create_only, found) {
            return Err(Error::Exists {
                key: at.key.clone(),
                found,
            });
        }
        if let Some(expected) = expect.version
            && found.unwrap_or(0) != expected
        {
            return Err(Error::Version {
                key: at.key.clone(),
                expected,
                found,
            });
        }
        let entry = Entry {
            value,
            version: found.unwrap_or(0) + 1,
            hash,
            created_at: old.map_or_else(|| now.to_string(), |e| e.created_at),
            updated_at: now.to_string(),
            updated_by: by,
        };
        self.write(at, &entry)?;
        Ok(entry)
    }

    fn write(&self, at: &Ref, entry: &Entry) -> Result<(), Error> {
        let path = self.path(at);
        let folder = path.parent().unwrap_or(&self.dir).to_path_buf();
        std::fs::create_dir_all(&folder).map_err(|e| self.io(e))?;
        let tmp = folder.join(format!(
            ".{}.tmp.{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
            std::process::id()
        ));
        let bytes = serde_json::to_vec(entry).map_err(|e| self.io(e.into()))?;
        let mut file = File::create(&tmp).map_err(|e| self.io(e))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| sync_dir(&folder))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                self.io(e)
            })
    }

    /// Removes an entry; whether there was one.
    pub(crate) fn delete(&self, at: &Ref) -> Result<bool, Error> {
        let _lock = self.lock(at)?;
        let path = self.path(at);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                let folder = path.parent().unwrap_or(&self.dir);
                sync_dir(folder).map_err(|e| self.io(e))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io(e)),
        }
    }

    /// The entries of a namespace whose keys start with `prefix`, in key order.
    pub(crate) fn list(
        &self,
        scope: &str,
        namespace: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Entry)>, Error> {
        let folder = self.folder(scope, namespace);
        let read = match std::fs::read_dir(&folder) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut keys: Vec<String> = read
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                unhex(name.strip_suffix(".json")?)
            })
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        let mut entries = Vec::new();
        for key in keys {
            let at = Ref {
                scope: scope.to_string(),
                namespace: namespace.to_string(),
                key,
            };
            if let Some(entry) = self.get(&at)? {
                entries.push((at.key, entry));
            }
        }
        Ok(entries)
    }
}

fn unhex(text: &str) -> Option<String> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
