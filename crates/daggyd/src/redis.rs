//! Daggy's `RedisLogger`: every run's record (its ids, tags, spec, state changes, and each
//! task's states and attempts) kept in Redis, so that a restarted daemon, or another one
//! sharing the server, still lists past runs with their final states. Several daemons may
//! share one Redis as long as each has its own key prefix: everything this logger writes or
//! reads lies under `<prefix>:`, and a prefix holds no `:` (the config allows letters,
//! digits, `-`, `_` and `.`), so no prefix's keys start with another's `<prefix>:`.
//!
//! # Key layout
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `<prefix>:next_run_id` | string | a counter: INCR, minus 1, is the next Daggy run id (the first is 0) |
//! | `<prefix>:runs` | sorted set | every run id, scored by itself |
//! | `<prefix>:run:<id>` | hash | `dag`, `run_id` (the Trellis run), `tags` (JSON object), `spec` (JSON), `start_time`, `state` (Daggy's name, e.g. `Running`), `last_update_time` |
//! | `<prefix>:run:<id>:state_changes` | list | the run's [`StateChange`]s as JSON, oldest first |
//! | `<prefix>:run:<id>:tasks` | set | the name of every task with a record |
//! | `<prefix>:run:<id>:task_states` | hash | task name → its current state |
//! | `<prefix>:run:<id>:task:<task>:state_changes` | list | the task's [`StateChange`]s as JSON |
//! | `<prefix>:run:<id>:task:<task>:attempts` | list | the task's [`TaskAttempt`](crate::record::TaskAttempt)s as JSON |
//!
//! Times are RFC 3339. Task names go into keys as they are, `.` and `:` included (an
//! expanded task such as `a.DATE:2022-01-01` is `<prefix>:run:7:task:a.DATE:2022-01-01:attempts`):
//! Redis keys are plain bytes, keys are never parsed back (task names are read from the
//! `tasks` set), and two different tasks never share a key, because the key ends with the
//! fixed `:state_changes` or `:attempts`. Each event is written in one MULTI/EXEC.

use std::collections::HashMap;
use std::time::Duration;

use indexmap::IndexMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Pipeline, Value};
use serde::de::DeserializeOwned;

use crate::record::{Event, Remembered, RememberedTask, State, StateChange};

/// How long [`RedisLogger::connect`] may take, retries included.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one command (or one pipeline) may wait for Redis's answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Runs read per pipeline by [`RedisLogger::runs`].
const BATCH: usize = 256;

/// Why the logger could not connect, write or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad Redis key prefix `{0}`: it must be non-empty and hold no `:`")]
    Prefix(String),
    #[error("cannot connect to Redis at {addr}: {source}")]
    Connect {
        addr: String,
        source: redis::RedisError,
    },
    #[error("cannot connect to Redis at {addr}: no connection within {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { addr: String },
    #[error("Redis at {addr}: {source}")]
    Command {
        addr: String,
        source: redis::RedisError,
    },
    /// What Redis holds is not what this logger writes.
    #[error("Redis at {addr}: bad record under `{key}`: {reason}")]
    Data {
        addr: String,
        key: String,
        reason: String,
    },
    #[error("cannot encode the record of run {run}: {reason}")]
    Encode { run: u64, reason: String },
}

/// The Redis logger of one daemon: its connection (reconnected when lost) and its prefix.
#[derive(Clone)]
pub struct RedisLogger {
    prefix: String,
    /// `host:port`, for messages.
    addr: String,
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLogger")
            .field("prefix", &self.prefix)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RedisLogger {
    /// Connects to Redis at `host:port`, within [`CONNECT_TIMEOUT`]; later commands
    /// reconnect by themselves when the connection is lost.
    pub async fn connect(host: &str, port: u16, prefix: &str) -> Result<RedisLogger, Error> {
        if prefix.is_empty() || prefix.contains(':') {
            return Err(Error::Prefix(prefix.to_string()));
        }
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let client = redis::Client::open((host, port)).map_err(|source| Error::Connect {
            addr: addr.clone(),
            source,
        })?;
        // Few, short retries: a refused connection is reported as such within the timeout.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(1));
        let connecting = ConnectionManager::new_with_config(client, config);
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => return Err(Error::ConnectTimeout { addr }),
            Ok(Err(source)) => return Err(Error::Connect { addr, source }),
            Ok(Ok(conn)) => conn,
        };
        tracing::info!(%addr, prefix, "Redis logger connected");
        Ok(RedisLogger {
            prefix: prefix.to_string(),
            addr,
            conn,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A new Daggy run id: 0 first, then 1, 2, ... for this prefix, across restarts.
    pub async fn next_id(&self) -> Result<u64, Error> {
        let key = format!("{}:next_run_id", self.prefix);
        let value: Value = self.query(redis::cmd("INCR").arg(&key)).await?;
        let count: i64 = self.decode(&key, value)?;
        u64::try_from(count - 1).map_err(|_| self.bad(&key, format!("counter at {count}")))
    }

    /// Records one event, atomically.
    pub async fn write(&self, event: &Event) -> Result<(), Error> {
        let run = event.run();
        let mut pipe = redis::pipe();
        pipe.atomic();
        match event {
            Event::Created {
                dag,
                run_id,
                tags,
                spec,
                ..
            } => self.created(&mut pipe, run, dag, run_id, tags, spec)?,
            Event::Run { change, .. } => {
                pipe.cmd("HSET")
                    .arg(self.run_key(run))
                    .arg(("state", change.state.as_str()))
                    .arg(("last_update_time", &change.datetime))
                    .ignore();
                let key = self.run_part(run, "state_changes");
                pipe.rpush(key, encode(run, change)?).ignore();
            }
            Event::Task { task, change, .. } => self.task(&mut pipe, run, task, change)?,
            Event::Attempt { task, attempt, .. } => {
                pipe.sadd(self.run_part(run, "tasks"), task).ignore();
                let key = self.task_key(run, task, "attempts");
                pipe.rpush(key, encode(run, attempt)?).ignore();
            }
        }
        let mut conn = self.conn.clone();
        pipe.exec_async(&mut conn)
            .await
            .map_err(|source| self.command(source))?;
        tracing::debug!(prefix = %self.prefix, run, "recorded in Redis");
        Ok(())
    }

    fn created(
        &self,
        pipe: &mut Pipeline,
        run: u64,
        dag: &str,
        run_id: &str,
        tags: &IndexMap<String, String>,
        spec: &serde_json::Value,
    ) -> Result<(), Error> {
        let now = jiff::Timestamp::now().to_string();
        pipe.cmd("HSET")
            .arg(self.run_key(run))
            .arg(("dag", dag))
            .arg(("run_id", run_id))
            .arg(("tags", encode(run, tags)?))
            .arg(("spec", encode(run, spec)?))
            .arg(("start_time", &now))
            .arg(("last_update_time", &now))
            .ignore();
        pipe.zadd(format!("{}:runs", self.prefix), run, run)
            .ignore();
        Ok(())
    }

    fn task(
        &self,
        pipe: &mut Pipeline,
        run: u64,
        task: &str,
        change: &StateChange,
    ) -> Result<(), Error> {
        pipe.hset(self.run_key(run), "last_update_time", &change.datetime)
            .ignore();
        pipe.sadd(self.run_part(run, "tasks"), task).ignore();
        pipe.hset(
            self.run_part(run, "task_states"),
            task,
            change.state.as_str(),
        )
        .ignore();
        let key = self.task_key(run, task, "state_changes");
        pipe.rpush(key, encode(run, change)?).ignore();
        Ok(())
    }

    /// Every run of this prefix, by id: its ids, tags, state and state changes, without its
    /// tasks and with a null spec (see [`RedisLogger::run`] for everything).
    pub async fn runs(&self) -> Result<Vec<Remembered>, Error> {
        let key = format!("{}:runs", self.prefix);
        let value = self
            .query(redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1))
            .await?;
        let members: Vec<String> = self.decode(&key, value)?;
        let ids = members
            .iter()
            .map(|m| {
                m.parse::<u64>()
                    .map_err(|_| self.bad(&key, format!("member `{m}`")))
            })
            .collect::<Result<Vec<u64>, Error>>()?;
        let mut runs = Vec::with_capacity(ids.len());
        for batch in ids.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for &id in batch {
                pipe.hgetall(self.run_key(id));
                pipe.lrange(self.run_part(id, "state_changes"), 0, -1);
            }
            let values = self.pipeline(&pipe, batch.len() * 2).await?;
            let mut values = values.into_iter();
            for &id in batch {
                let (Some(hash), Some(changes)) = (values.next(), values.next()) else {
                    return Err(self.bad(&key, "short pipeline answer".into()));
                };
                match self.head(id, hash, changes, false)? {
                    Some(run) => runs.push(run),
                    None => {
                        let reason =
                            format!("run {id} is listed but `{}` is missing", self.run_key(id));
                        return Err(self.bad(&key, reason));
                    }
                }
            }
        }
        Ok(runs)
    }

    /// Everything about run `id`: its spec and its tasks (by name) with their state
    /// changes and attempts; None when this prefix has no such run.
    pub async fn run(&self, id: u64) -> Result<Option<Remembered>, Error> {
        let mut pipe = redis::pipe();
        pipe.hgetall(self.run_key(id))
            .lrange(self.run_part(id, "state_changes"), 0, -1)
            .smembers(self.run_part(id, "tasks"))
            .hgetall(self.run_part(id, "task_states"));
        let values = self.pipeline(&pipe, 4).await?;
        let Ok([hash, changes, tasks, states]) = <[Value; 4]>::try_from(values) else {
            return Err(self.bad(&self.run_key(id), "short pipeline answer".into()));
        };
        let Some(mut run) = self.head(id, hash, changes, true)? else {
            return Ok(None);
        };
        let mut names: Vec<String> = self.decode(&self.run_part(id, "tasks"), tasks)?;
        names.sort();
        let states_key = self.run_part(id, "task_states");
        let states: HashMap<String, String> = self.decode(&states_key, states)?;
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.lrange(self.task_key(id, name, "state_changes"), 0, -1);
            pipe.lrange(self.task_key(id, name, "attempts"), 0, -1);
        }
        let values = self.pipeline(&pipe, names.len() * 2).await?;
        let mut values = values.into_iter();
        for name in names {
            let (Some(changes), Some(attempts)) = (values.next(), values.next()) else {
                return Err(self.bad(&states_key, "short pipeline answer".into()));
            };
            let state = match states.get(&name) {
                Some(text) => Some(self.state(&states_key, text)?),
                None => None,
            };
            let task = RememberedTask {
                state,
                state_changes: self
                    .json_list(&self.task_key(id, &name, "state_changes"), changes)?,
                attempts: self.json_list(&self.task_key(id, &name, "attempts"), attempts)?,
            };
            run.tasks.insert(name, task);
        }
        Ok(Some(run))
    }

    /// A run without its tasks, from its hash and its state changes; None when the hash is
    /// empty (no such run). The spec is read only `with_spec`.
    fn head(
        &self,
        id: u64,
        hash: Value,
        changes: Value,
        with_spec: bool,
    ) -> Result<Option<Remembered>, Error> {
        let key = self.run_key(id);
        let fields: HashMap<String, String> = self.decode(&key, hash)?;
        if fields.is_empty() {
            return Ok(None);
        }
        let field = |name: &str| {
            fields
                .get(name)
                .ok_or_else(|| self.bad(&key, format!("no field `{name}`")))
        };
        let state = match fields.get("state") {
            Some(text) => Some(self.state(&key, text)?),
            None => None,
        };
        let spec = if with_spec {
            self.json(&key, field("spec")?)?
        } else {
            serde_json::Value::Null
        };
        Ok(Some(Remembered {
            run: id,
            dag: field("dag")?.clone(),
            run_id: field("run_id")?.clone(),
            tags: self.json(&key, field("tags")?)?,
            spec,
            state,
            state_changes: self.json_list(&self.run_part(id, "state_changes"), changes)?,
            tasks: IndexMap::new(),
        }))
    }

    fn run_key(&self, run: u64) -> String {
        format!("{}:run:{run}", self.prefix)
    }

    fn run_part(&self, run: u64, part: &str) -> String {
        format!("{}:run:{run}:{part}", self.prefix)
    }

    fn task_key(&self, run: u64, task: &str, part: &str) -> String {
        format!("{}:run:{run}:task:{task}:{part}", self.prefix)
    }

    async fn query(&self, cmd: &redis::Cmd) -> Result<Value, Error> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn)
            .await
            .map_err(|source| self.command(source))
    }

    /// The answers of a pipeline of `count` reading commands.
    async fn pipeline(&self, pipe: &Pipeline, count: usize) -> Result<Vec<Value>, Error> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let values: Vec<Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|source| self.command(source))?;
        if values.len() != count {
            let reason = format!("{count} answers expected, {} came", values.len());
            return Err(self.bad(&format!("{}:", self.prefix), reason));
        }
        Ok(values)
    }

    fn decode<T: FromRedisValue>(&self, key: &str, value: Value) -> Result<T, Error> {
        redis::from_redis_value(value).map_err(|e| self.bad(key, e.to_string()))
    }

    fn json<T: DeserializeOwned>(&self, key: &str, text: &str) -> Result<T, Error> {
        serde_json::from_str(text).map_err(|e| self.bad(key, format!("not the JSON expected: {e}")))
    }

    fn json_list<T: DeserializeOwned>(&self, key: &str, value: Value) -> Result<Vec<T>, Error> {
        let items: Vec<String> = self.decode(key, value)?;
        items.iter().map(|item| self.json(key, item)).collect()
    }

    fn state(&self, key: &str, text: &str) -> Result<State, Error> {
        State::parse(text).ok_or_else(|| self.bad(key, format!("unknown state `{text}`")))
    }

    fn bad(&self, key: &str, reason: String) -> Error {
        Error::Data {
            addr: self.addr.clone(),
            key: key.to_string(),
            reason,
        }
    }

    fn command(&self, source: redis::RedisError) -> Error {
        Error::Command {
            addr: self.addr.clone(),
            source,
        }
    }
}

fn encode<T: serde::Serialize + ?Sized>(run: u64, value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::Encode {
        run,
        reason: e.to_string(),
    })
}
