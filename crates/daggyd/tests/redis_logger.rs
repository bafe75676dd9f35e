//! The Redis logger against a real redis-server (trellis-testdb), one per test; the tests
//! that need one skip, with a note, where redis-server is not installed.

use std::time::{Duration, Instant};

use indexmap::IndexMap;
use trellis_daggyd::record::{Event, Remembered, State, StateChange, TaskAttempt};
use trellis_daggyd::redis::{Error, RedisLogger};
use trellis_testdb::redis::Redis;

fn server() -> Option<Redis> {
    if !Redis::available() {
        eprintln!("skipped: redis-server is not installed (apt-get install redis-server)");
        return None;
    }
    Some(Redis::start().expect("redis-server starts"))
}

async fn logger(redis: &Redis, prefix: &str) -> RedisLogger {
    RedisLogger::connect("127.0.0.1", redis.port(), prefix)
        .await
        .expect("connects")
}

/// Every key on the server, sorted.
async fn all_keys(redis: &Redis) -> Vec<String> {
    let client = redis::Client::open(redis.url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    keys.sort();
    keys
}

/// The events of one run, and what a logger given them should remember.
struct Script {
    run: u64,
    events: Vec<Event>,
    expected: Remembered,
    second: u32,
}

impl Script {
    fn new(run: u64, dag: &str) -> Script {
        let tags: IndexMap<String, String> = [("owner", "ops"), ("date", "2022-01-01")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let spec =
            serde_json::json!({"tasks": {"a": {"job": {"command": ["true"]}}}, "tags": tags});
        let created = Event::Created {
            run,
            dag: dag.to_string(),
            run_id: format!("{dag}-run-{run}"),
            tags: tags.clone(),
            spec: spec.clone(),
        };
        let expected = Remembered {
            run,
            dag: dag.to_string(),
            run_id: format!("{dag}-run-{run}"),
            tags,
            spec,
            ..Remembered::default()
        };
        Script {
            run,
            events: vec![created],
            expected,
            second: 0,
        }
    }

    fn change(&mut self, state: State) -> StateChange {
        self.second += 1;
        StateChange {
            datetime: format!(
                "2022-01-01T00:{:02}:{:02}Z",
                self.second / 60,
                self.second % 60
            ),
            state,
        }
    }

    fn run_state(&mut self, state: State) {
        let change = self.change(state);
        self.expected.state = Some(state);
        self.expected.state_changes.push(change.clone());
        self.events.push(Event::Run {
            run: self.run,
            change,
        });
    }

    fn task_state(&mut self, task: &str, state: State) {
        let change = self.change(state);
        let remembered = self.expected.tasks.entry(task.to_string()).or_default();
        remembered.state = Some(state);
        remembered.state_changes.push(change.clone());
        self.events.push(Event::Task {
            run: self.run,
            task: task.to_string(),
            change,
        });
    }

    fn attempt(&mut self, task: &str, succeeded: bool) {
        let start = self.change(State::Running).datetime;
        let stop = self.change(State::Running).datetime;
        let attempt = TaskAttempt {
            start_time: start,
            stop_time: stop,
            succeeded,
            output: format!("output of {task}\nline 2 ü\n"),
            error: if succeeded {
                String::new()
            } else {
                "exit code 3".into()
            },
            executor: vec!["ran on localhost".into()],
            exit_code: if succeeded { 0 } else { 3 },
            max_cpu: 12,
            max_rss: 4096,
            ..TaskAttempt::default()
        };
        let remembered = self.expected.tasks.entry(task.to_string()).or_default();
        remembered.attempts.push(attempt.clone());
        self.events.push(Event::Attempt {
            run: self.run,
            task: task.to_string(),
            attempt,
        });
    }

    /// A whole run ending in `end`: task `a`, and task `b.DATE:2022-01-01` failing once.
    fn full(run: u64, dag: &str, end: State) -> Script {
        let mut s = Script::new(run, dag);
        let b = "b.DATE:2022-01-01";
        s.run_state(State::Queued);
        s.task_state("a", State::Queued);
        s.task_state(b, State::Queued);
        s.run_state(State::Running);
        s.task_state("a", State::Running);
        s.attempt("a", true);
        s.task_state("a", State::Completed);
        s.task_state(b, State::Running);
        s.attempt(b, false);
        s.task_state(b, State::Retry);
        s.task_state(b, State::Running);
        s.attempt(b, end == State::Completed);
        s.task_state(
            b,
            if end == State::Completed {
                end
            } else {
                State::Errored
            },
        );
        s.run_state(end);
        s
    }

    async fn write(&self, logger: &RedisLogger) {
        for event in &self.events {
            logger.write(event).await.expect("event recorded");
        }
    }

    /// What [`RedisLogger::runs`] gives: no tasks, no spec.
    fn listed(&self) -> Remembered {
        Remembered {
            spec: serde_json::Value::Null,
            tasks: IndexMap::new(),
            ..self.expected.clone()
        }
    }
}

#[tokio::test]
async fn run_ids_start_at_zero_and_increase_per_prefix() {
    let Some(redis) = server() else { return };
    let first = logger(&redis, "daggy").await;
    for expected in 0..3 {
        assert_eq!(first.next_id().await.expect("id"), expected);
    }
    let other = logger(&redis, "other").await;
    assert_eq!(
        other.next_id().await.expect("id"),
        0,
        "each prefix counts on its own"
    );
    let again = logger(&redis, "daggy").await;
    assert_eq!(
        again.next_id().await.expect("id"),
        3,
        "a restarted daemon goes on counting"
    );
}

#[tokio::test]
async fn a_whole_run_reads_back_equal() {
    let Some(redis) = server() else { return };
    let logger = logger(&redis, "daggy").await;
    let id = logger.next_id().await.expect("id");
    let script = Script::full(id, "nightly", State::Completed);
    script.write(&logger).await;

    let read = logger
        .run(id)
        .await
        .expect("read")
        .expect("the run is there");
    assert_eq!(read, script.expected);
    let names: Vec<&str> = read.tasks.keys().map(String::as_str).collect();
    assert_eq!(names, ["a", "b.DATE:2022-01-01"], "tasks in name order");
    let b = &read.tasks["b.DATE:2022-01-01"];
    assert_eq!(b.attempts.len(), 2);
    assert!(!b.attempts[0].succeeded && b.attempts[1].succeeded);

    assert_eq!(logger.runs().await.expect("list"), [script.listed()]);
    assert_eq!(logger.run(id + 1).await.expect("read"), None);
}

#[tokio::test]
async fn every_key_lies_under_the_prefix() {
    let Some(redis) = server() else { return };
    let logger = logger(&redis, "daggy-1.x").await;
    let id = logger.next_id().await.expect("id");
    Script::full(id, "nightly", State::Errored)
        .write(&logger)
        .await;
    let keys = all_keys(&redis).await;
    assert!(keys.len() >= 8, "{keys:?}");
    for key in &keys {
        assert!(key.starts_with("daggy-1.x:"), "{key} is outside the prefix");
    }
    assert!(
        keys.contains(&format!(
            "daggy-1.x:run:{id}:task:b.DATE:2022-01-01:attempts"
        )),
        "{keys:?}"
    );
}

#[tokio::test]
async fn two_prefixes_share_a_server_without_seeing_each_other() {
    let Some(redis) = server() else { return };
    // `daggy` is a prefix of `daggy-2` as text: keys are apart all the same.
    let one = logger(&redis, "daggy").await;
    let two = logger(&redis, "daggy-2").await;
    let mut scripts = Vec::new();
    for (logger, dag) in [(&one, "one"), (&two, "two"), (&one, "one-b")] {
        let id = logger.next_id().await.expect("id");
        let script = Script::full(id, dag, State::Completed);
        script.write(logger).await;
        scripts.push(script);
    }
    let listed_one = one.runs().await.expect("list");
    assert_eq!(listed_one, [scripts[0].listed(), scripts[2].listed()]);
    assert_eq!(two.runs().await.expect("list"), [scripts[1].listed()]);
    // Run 0 exists under both prefixes: each reads its own.
    assert_eq!(
        two.run(0).await.expect("read").expect("run 0"),
        scripts[1].expected
    );
    assert_eq!(
        one.run(0).await.expect("read").expect("run 0"),
        scripts[0].expected
    );
    assert_eq!(two.run(1).await.expect("read"), None);

    let keys = all_keys(&redis).await;
    let under = |prefix: &str| keys.iter().filter(|k| k.starts_with(prefix)).count();
    assert_eq!(under("daggy:") + under("daggy-2:"), keys.len(), "{keys:?}");
    assert!(
        under("daggy:") > under("daggy-2:") && under("daggy-2:") > 0,
        "{keys:?}"
    );
}

#[tokio::test]
async fn a_restarted_daemon_lists_past_runs_with_their_final_states() {
    let Some(mut redis) = server() else { return };
    let mut scripts = Vec::new();
    {
        let before = logger(&redis, "daggy").await;
        for end in [State::Completed, State::Errored, State::Killed] {
            let id = before.next_id().await.expect("id");
            let script = Script::full(id, "nightly", end);
            script.write(&before).await;
            scripts.push(script);
        }
        // Still running when the daemon went away.
        let id = before.next_id().await.expect("id");
        let mut script = Script::new(id, "hourly");
        script.run_state(State::Running);
        script.write(&before).await;
        scripts.push(script);
    }
    let expected: Vec<Remembered> = scripts.iter().map(Script::listed).collect();
    let after = logger(&redis, "daggy").await;
    let listed = after.runs().await.expect("list");
    assert_eq!(listed, expected);
    let states: Vec<Option<State>> = listed.iter().map(|r| r.state).collect();
    let ends = [
        State::Completed,
        State::Errored,
        State::Killed,
        State::Running,
    ];
    assert_eq!(states, ends.map(Some));
    assert_eq!(
        after.run(1).await.expect("read"),
        Some(scripts[1].expected.clone())
    );
    assert_eq!(after.next_id().await.expect("id"), 4);

    // Redis itself crashes and comes back: the data is there, and the old logger reconnects.
    redis.stop().expect("kill redis-server");
    assert!(after.runs().await.is_err(), "no server, no list");
    redis.start_again().expect("redis-server starts again");
    let deadline = Instant::now() + Duration::from_secs(10);
    let relisted = loop {
        match after.runs().await {
            Ok(runs) => break runs,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet reconnected: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no reconnection in 10 s: {e}"),
        }
    };
    assert_eq!(relisted, expected);
    assert_eq!(after.next_id().await.expect("id"), 5);
}

#[tokio::test]
async fn bad_records_are_errors_not_panics() {
    let Some(redis) = server() else { return };
    let logger = logger(&redis, "daggy").await;
    Script::full(0, "nightly", State::Completed)
        .write(&logger)
        .await;
    let client = redis::Client::open(redis.url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw");
    let set = |key: &str, field: &str, value: &str| {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(key).arg(field).arg(value);
        cmd
    };
    set("daggy:run:0", "state", "Sleeping")
        .exec_async(&mut conn)
        .await
        .expect("HSET");
    let e = logger.run(0).await.expect_err("an unknown state");
    assert!(matches!(e, Error::Data { .. }), "{e:?}");
    assert!(
        e.to_string().contains("daggy:run:0") && e.to_string().contains("Sleeping"),
        "{e}"
    );
    assert!(logger.runs().await.is_err());

    set("daggy:run:0", "state", "Completed")
        .exec_async(&mut conn)
        .await
        .expect("HSET");
    redis::cmd("RPUSH")
        .arg("daggy:run:0:task:a:attempts")
        .arg("{not json")
        .exec_async(&mut conn)
        .await
        .expect("RPUSH");
    let e = logger.run(0).await.expect_err("bad JSON");
    assert!(e.to_string().contains("daggy:run:0:task:a:attempts"), "{e}");
    assert_eq!(
        logger
            .runs()
            .await
            .expect("the list reads no attempts")
            .len(),
        1
    );

    redis::cmd("SET")
        .arg("daggy:next_run_id")
        .arg("many")
        .exec_async(&mut conn)
        .await
        .expect("SET");
    assert!(logger.next_id().await.is_err());
}

#[tokio::test]
async fn connecting_where_nothing_listens_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let started = Instant::now();
    let e = RedisLogger::connect("127.0.0.1", port, "daggy")
        .await
        .expect_err("nothing listens there");
    let message = e.to_string();
    assert!(
        message.contains(&format!("cannot connect to Redis at 127.0.0.1:{port}")),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    eprintln!("the error reads: {message}");

    let e = RedisLogger::connect("127.0.0.1", port, "a:b")
        .await
        .expect_err("bad prefix");
    assert!(matches!(e, Error::Prefix(_)), "{e:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_fails_the_connect_in_bounded_time() {
    // Accepts connections and says nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let started = Instant::now();
    let e = RedisLogger::connect("127.0.0.1", port, "daggy")
        .await
        .expect_err("no answer");
    let elapsed = started.elapsed();
    silent.abort();
    assert!(elapsed < Duration::from_secs(7), "{elapsed:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("cannot connect to Redis at 127.0.0.1:{port}")),
        "{e}"
    );
    eprintln!("after {elapsed:?} the error reads: {e}");
}
