//! Small JSON values kept between runs (Dagu's `state.*` actions). [`Store`] keeps the
//! rules (versions, `expected_version`, `create_only`) over a [`Values`] backend that
//! only gets, compares-and-swaps and lists an entry's JSON text, so every write is a
//! read, a check and a swap that fails if another writer came first (then it reads
//! again): no update is lost, whichever backend holds the entries.
//!
//! - [`Files`]: one file per entry under the state dir,
//!   `v1/<scope>/<hex(namespace)>/<hex(key)>.json`, Dagu's layout. A swap holds an
//!   exclusive `flock` on one of 256 lock files (chosen by the entry) and replaces the
//!   entry by rename, so processes on this machine and on others sharing the dir (NFSv4
//!   carries `flock`) agree; readers see the old entry or the new one, never half of one.
//! - [`Shared`]: the named values of a store that machines share (a database), scope
//!   [`trellis_storage_api::state::scope::DAG_STATE`], name `<scope>/<namespace>/<key>`,
//!   the same JSON as a file holds.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use trellis_storage_api::state::scope::DAG_STATE;

/// The largest value kept, as Dagu (1 MiB of compact JSON).
pub(crate) const MAX_VALUE_BYTES: usize = 1 << 20;

/// How many times a write reads and swaps again when other writers keep coming first.
const MAX_TRIES: u32 = 200;

/// Where an entry lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ref {
    pub scope: String,
    pub namespace: String,
    pub key: String,
}

/// One entry as kept (a file's JSON, a database value's text).
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
    #[error("state conflict on `{key}`: other writers kept changing it ({MAX_TRIES} tries)")]
    Busy { key: String },
    #[error("state dir {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("state store: {0}")]
    Store(#[from] trellis_storage_api::Error),
    #[error("state entry `{key}` is not a state entry: {message}")]
    Bad { key: String, message: String },
}

/// Where entries are kept: each entry's JSON text by [`Ref`].
pub(crate) trait Values: Send + Sync {
    fn get(&self, at: &Ref) -> Result<Option<String>, Error>;
    /// Replaces the entry with `new` (`None` removes it) only if it is `expected` now
    /// (`None`: there is none); whether it did.
    fn swap(&self, at: &Ref, expected: Option<&str>, new: Option<&str>) -> Result<bool, Error>;
    /// The entries of a namespace whose keys start with `prefix`: (key, text), in key
    /// order.
    fn list(
        &self,
        scope: &str,
        namespace: &str,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, Error>;
}

/// A write's precondition.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Expect {
    pub version: Option<i64>,
    pub create_only: bool,
}

/// The `state.*` rules over a [`Values`] backend.
pub(crate) struct Store {
    values: Arc<dyn Values>,
}

impl Store {
    /// Entries in files under `dir` (the state dir).
    pub(crate) fn files(dir: PathBuf) -> Store {
        Store {
            values: Arc::new(Files { dir }),
        }
    }

    /// Entries in a store's named values.
    pub(crate) fn shared(state: Arc<dyn trellis_storage_api::State>) -> Store {
        Store {
            values: Arc::new(Shared { state }),
        }
    }

    fn parse(key: &str, text: &str) -> Result<Entry, Error> {
        serde_json::from_str(text).map_err(|e| Error::Bad {
            key: key.to_string(),
            message: e.to_string(),
        })
    }

    pub(crate) fn get(&self, at: &Ref) -> Result<Option<Entry>, Error> {
        self.values
            .get(at)?
            .map(|text| Self::parse(&at.key, &text))
            .transpose()
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
        for tries in 0..MAX_TRIES {
            let text = self.values.get(at)?;
            let old = text
                .as_deref()
                .map(|t| Self::parse(&at.key, t))
                .transpose()?;
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
                value: value.clone(),
                version: found.unwrap_or(0) + 1,
                hash: hash.clone(),
                created_at: old.map_or_else(|| now.to_string(), |e| e.created_at),
                updated_at: now.to_string(),
                updated_by: by.clone(),
            };
            let new = serde_json::to_string(&entry).map_err(|e| Error::Bad {
                key: at.key.clone(),
                message: e.to_string(),
            })?;
            if self.values.swap(at, text.as_deref(), Some(&new))? {
                return Ok(entry);
            }
            // A database call retried after a lost answer says "no" though its write
            // went through: the entry is then this very text (its time and writer make
            // it ours).
            if self.values.get(at)?.as_deref() == Some(new.as_str()) {
                return Ok(entry);
            }
            pause(tries);
        }
        Err(Error::Busy {
            key: at.key.clone(),
        })
    }

    /// Removes an entry; whether there was one.
    pub(crate) fn delete(&self, at: &Ref) -> Result<bool, Error> {
        for tries in 0..MAX_TRIES {
            let Some(text) = self.values.get(at)? else {
                return Ok(false);
            };
            if self.values.swap(at, Some(&text), None)? {
                return Ok(true);
            }
            pause(tries);
        }
        Err(Error::Busy {
            key: at.key.clone(),
        })
    }

    /// The entries of a namespace whose keys start with `prefix`, in key order.
    pub(crate) fn list(
        &self,
        scope: &str,
        namespace: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Entry)>, Error> {
        self.values
            .list(scope, namespace, prefix)?
            .into_iter()
            .map(|(key, text)| Self::parse(&key, &text).map(|e| (key, e)))
            .collect()
    }
}

/// A short wait after a lost race, growing a little, so writers on one key spread out.
fn pause(tries: u32) {
    if tries > 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = u64::from(nanos % 3);
        std::thread::sleep(Duration::from_millis(u64::from(tries.min(20)) + jitter));
    }
}

/// Entries as files under the state dir.
pub(crate) struct Files {
    dir: PathBuf,
}

/// Lowercase hex of the bytes (names that are safe whatever the key holds).
fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

impl Files {
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

    fn read(&self, path: &Path) -> Result<Option<String>, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            ))),
        }
    }

    fn write(&self, path: &Path, text: &str) -> Result<(), Error> {
        let folder = path.parent().unwrap_or(&self.dir).to_path_buf();
        std::fs::create_dir_all(&folder).map_err(|e| self.io(e))?;
        let tmp = folder.join(format!(
            ".{}.tmp.{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
            std::process::id()
        ));
        let mut file = File::create(&tmp).map_err(|e| self.io(e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path))
            .and_then(|()| sync_dir(&folder))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                self.io(e)
            })
    }

    fn remove(&self, path: &Path) -> Result<(), Error> {
        match std::fs::remove_file(path) {
            Ok(()) => sync_dir(path.parent().unwrap_or(&self.dir)).map_err(|e| self.io(e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(e)),
        }
    }
}

impl Values for Files {
    fn get(&self, at: &Ref) -> Result<Option<String>, Error> {
        self.read(&self.path(at))
    }

    fn swap(&self, at: &Ref, expected: Option<&str>, new: Option<&str>) -> Result<bool, Error> {
        let _lock = self.lock(at)?;
        let path = self.path(at);
        if self.read(&path)?.as_deref() != expected {
            return Ok(false);
        }
        match new {
            Some(text) => self.write(&path, text)?,
            None => self.remove(&path)?,
        }
        Ok(true)
    }

    fn list(
        &self,
        scope: &str,
        namespace: &str,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, Error> {
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
            if let Some(text) = self.get(&at)? {
                entries.push((at.key, text));
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

/// Entries as named values of a store machines share.
pub(crate) struct Shared {
    state: Arc<dyn trellis_storage_api::State>,
}

impl Shared {
    /// `<scope>/<namespace>/`: neither part holds a `/` (scopes are a fixed list and
    /// namespaces are checked), so every name splits one way only.
    fn folder(scope: &str, namespace: &str) -> Result<String, Error> {
        if let Some(part) = [scope, namespace].into_iter().find(|p| p.contains('/')) {
            return Err(Error::Bad {
                key: part.to_string(),
                message: "a scope or namespace holds no `/`".into(),
            });
        }
        Ok(format!("{scope}/{namespace}/"))
    }

    fn name(at: &Ref) -> Result<String, Error> {
        Ok(Self::folder(&at.scope, &at.namespace)? + &at.key)
    }
}

impl Values for Shared {
    fn get(&self, at: &Ref) -> Result<Option<String>, Error> {
        Ok(self.state.get(DAG_STATE, &Self::name(at)?)?)
    }

    fn swap(&self, at: &Ref, expected: Option<&str>, new: Option<&str>) -> Result<bool, Error> {
        Ok(self
            .state
            .swap(DAG_STATE, &Self::name(at)?, expected, new)?)
    }

    fn list(
        &self,
        scope: &str,
        namespace: &str,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, Error> {
        let folder = Self::folder(scope, namespace)?;
        let mut entries: Vec<(String, String)> = self
            .state
            .values_with_prefix(DAG_STATE, &(folder.clone() + prefix))?
            .into_iter()
            .filter_map(|(name, text)| Some((name.strip_prefix(&folder)?.to_string(), text)))
            .collect();
        entries.sort();
        Ok(entries)
    }
}
