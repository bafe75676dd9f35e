-- Runs: one row per top-level run, pointing at its latest attempt.
CREATE TABLE runs (
    id BIGSERIAL PRIMARY KEY,
    dag TEXT NOT NULL,
    run_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    status TEXT NOT NULL DEFAULT '',
    UNIQUE (dag, run_id)
);
CREATE INDEX runs_by_dag ON runs (dag, id);
CREATE INDEX runs_by_status ON runs (status, id);

-- Attempts of top-level and child runs. `record` is the latest snapshot; the step
-- changes after it are the events with a larger id than `snapshot_event`.
CREATE TABLE attempts (
    id BIGSERIAL PRIMARY KEY,
    attempt_id TEXT NOT NULL UNIQUE,
    dag TEXT NOT NULL,
    run_id TEXT NOT NULL,
    root_dag TEXT NOT NULL,
    root_run_id TEXT NOT NULL,
    parent_attempt TEXT,
    dir TEXT NOT NULL,
    log_dir TEXT NOT NULL,
    record TEXT,
    snapshot_event BIGINT NOT NULL DEFAULT 0,
    definition TEXT
);
CREATE INDEX attempts_by_run ON attempts (dag, run_id, id);
CREATE INDEX attempts_by_parent ON attempts (parent_attempt, run_id, id);
CREATE INDEX attempts_by_root ON attempts (root_dag, root_run_id);

-- Every change of every attempt, in order: the run's event log.
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    attempt BIGINT NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX events_by_attempt ON events (attempt, id);

-- Queued runs. A claimed item keeps its row (with the claimant's nonce) so a claim whose
-- reply was lost can be confirmed when it is tried again.
CREATE TABLE queue_items (
    seq BIGSERIAL PRIMARY KEY,
    queue TEXT NOT NULL,
    run_id TEXT NOT NULL,
    priority BIGINT NOT NULL,
    item TEXT NOT NULL,
    claim TEXT,
    claimed_at BIGINT,
    -- Which enqueue call wrote the row: a retried call must not revive its own taken item.
    enqueue_nonce VARCHAR(255),
    UNIQUE (queue, run_id)
);
CREATE INDEX queue_items_order ON queue_items (queue, claim, priority DESC, seq);

-- Schedule ticks: one row per (DAG, scheduled time), so a tick fires once.
CREATE TABLE ticks (
    dag TEXT NOT NULL,
    at TEXT NOT NULL,
    skipped BIGINT NOT NULL DEFAULT 0,
    token BIGINT NOT NULL,
    PRIMARY KEY (dag, at)
);

-- Leases (the scheduler's lead). `token` is the fencing token: it grows with each holder.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    pid BIGINT NOT NULL DEFAULT 0,
    host VARCHAR(255) NOT NULL DEFAULT '',
    token BIGINT NOT NULL,
    since TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
INSERT INTO leases (name, holder, token, since, expires_ms) VALUES ('scheduler', '', 0, '', 0);

-- Small named values: suspended DAGs, the leader's heartbeat, step state.
CREATE TABLE kv (
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, name)
);

-- Workers known to a coordinator, with their last heartbeat.
CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    info TEXT NOT NULL,
    heartbeat_ms BIGINT NOT NULL
);

-- Where each step's logs are: host and path of the file, and its size when last seen.
CREATE TABLE log_index (
    attempt TEXT NOT NULL,
    step TEXT NOT NULL,
    stream TEXT NOT NULL,
    host TEXT NOT NULL,
    path TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    PRIMARY KEY (attempt, step, stream)
);
