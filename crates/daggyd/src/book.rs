//! Daggy's integer run ids and the Trellis runs they are. With the Redis logger the ids
//! come from Redis (as Daggy's logger kept them there), so a daemon restarted on the same
//! Redis carries on counting; otherwise they are kept in the Trellis store's named
//! values (scope `daggyd`), which every backend has. Run `N` of prefix `P` is the Trellis
//! run `P-N`.

use std::sync::Arc;

use trellis_store::Shared;

use crate::record::{Event, Remembered};
use crate::redis::RedisLogger;
use crate::{Error, blocking};

/// The store scope of the ids (`<prefix>.next`, `<prefix>.run.<N>`).
const SCOPE: &str = "daggyd";

#[derive(Clone)]
pub enum Book {
    Store {
        store: Shared,
        prefix: String,
        /// One allocation at a time in this process: concurrent submits would otherwise
        /// lose each other's compare-and-swap and retry, each retry a locked, synced write.
        turn: Arc<tokio::sync::Mutex<()>>,
    },
    Redis(Arc<RedisLogger>),
}

/// Where run `N` lives in Trellis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub run: u64,
    pub dag: String,
    pub run_id: String,
}

impl Book {
    /// Ids kept in the Trellis store, under `prefix`.
    pub fn in_store(store: Shared, prefix: &str) -> Book {
        Book::Store {
            store,
            prefix: prefix.to_string(),
            turn: Arc::default(),
        }
    }

    pub fn prefix(&self) -> &str {
        match self {
            Book::Store { prefix, .. } => prefix,
            Book::Redis(r) => r.prefix(),
        }
    }

    /// The Trellis run id of Daggy run `run`.
    pub fn run_id(&self, run: u64) -> String {
        format!("{}-{run}", self.prefix())
    }

    /// A new run id, never given before (also across restarts and daemons sharing it).
    pub async fn allocate(&self) -> Result<u64, Error> {
        match self {
            Book::Redis(r) => Ok(r.next_id().await?),
            Book::Store {
                store,
                prefix,
                turn,
            } => {
                let _turn = turn.lock().await;
                let (store, name) = (store.clone(), format!("{prefix}.next"));
                blocking(move || next(&store, &name)).await
            }
        }
    }

    /// Remembers where run `run` lives; Redis learns it from the `Created` event.
    pub async fn bind(&self, entry: &Entry) -> Result<(), Error> {
        let Book::Store { store, prefix, .. } = self else {
            return Ok(());
        };
        let (store, name) = (store.clone(), key(prefix, entry.run));
        let value = entry.dag.clone();
        blocking(move || Ok(store.put(SCOPE, &name, Some(&value))?)).await
    }

    pub async fn lookup(&self, run: u64) -> Result<Option<Entry>, Error> {
        match self {
            Book::Redis(r) => Ok(r.run(run).await?.map(|m| entry(&m))),
            Book::Store { store, prefix, .. } => {
                let (store, name) = (store.clone(), key(prefix, run));
                let dag = blocking(move || Ok(store.get(SCOPE, &name)?)).await?;
                Ok(dag.map(|dag| Entry {
                    run,
                    dag,
                    run_id: self.run_id(run),
                }))
            }
        }
    }

    /// Every run, by id.
    pub async fn list(&self) -> Result<Vec<Entry>, Error> {
        match self {
            Book::Redis(r) => Ok(r.runs().await?.iter().map(entry).collect()),
            Book::Store { store, prefix, .. } => {
                let (store, start) = (store.clone(), format!("{prefix}.run."));
                let values = blocking(move || Ok(store.values_with_prefix(SCOPE, &start)?)).await?;
                let mut entries: Vec<Entry> = values
                    .into_iter()
                    .filter_map(|(name, dag)| {
                        let run = name.rsplit('.').next()?.parse().ok()?;
                        Some(Entry {
                            run,
                            dag,
                            run_id: self.run_id(run),
                        })
                    })
                    .collect();
                entries.sort_by_key(|e| e.run);
                Ok(entries)
            }
        }
    }

    /// What the logger remembers of a run, when it keeps state (Redis).
    pub async fn remembered(&self, run: u64) -> Result<Option<Remembered>, Error> {
        match self {
            Book::Redis(r) => Ok(r.run(run).await?),
            Book::Store { .. } => Ok(None),
        }
    }

    /// The Redis logger, when that is where state goes.
    pub fn redis(&self) -> Option<&Arc<RedisLogger>> {
        match self {
            Book::Redis(r) => Some(r),
            Book::Store { .. } => None,
        }
    }

    pub async fn write(&self, event: &Event) -> Result<(), Error> {
        match self {
            Book::Redis(r) => Ok(r.write(event).await?),
            Book::Store { .. } => Ok(()),
        }
    }
}

fn entry(m: &Remembered) -> Entry {
    Entry {
        run: m.run,
        dag: m.dag.clone(),
        run_id: m.run_id.clone(),
    }
}

/// Zero-padded, so the names sort by id.
fn key(prefix: &str, run: u64) -> String {
    format!("{prefix}.run.{run:020}")
}

/// Takes the next id by compare-and-swap, so daemons sharing the store never collide.
fn next(store: &Shared, name: &str) -> Result<u64, Error> {
    loop {
        let now = store.get(SCOPE, name)?;
        let id: u64 = match &now {
            None => 0,
            Some(text) => text
                .trim()
                .parse()
                .map_err(|_| Error::Corrupt(format!("the run counter `{name}` holds `{text}`")))?,
        };
        let after = (id + 1).to_string();
        if store.swap(SCOPE, name, now.as_deref(), Some(&after))? {
            return Ok(id);
        }
    }
}
