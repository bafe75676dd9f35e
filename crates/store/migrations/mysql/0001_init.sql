-- The PostgreSQL schema in MariaDB/MySQL types: keys are VARCHAR, documents LONGTEXT.
-- Every statement may be repeated (MariaDB and MySQL cannot roll back DDL, so a migration
-- cut off half way is finished by the next start); indexes are declared in their tables,
-- as MySQL has no CREATE INDEX IF NOT EXISTS.
-- Runs: one row per top-level run, pointing at its latest attempt.
CREATE TABLE IF NOT EXISTS runs (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    dag VARCHAR(255) NOT NULL,
    run_id VARCHAR(255) NOT NULL,
    attempt BIGINT NOT NULL,
    status VARCHAR(255) NOT NULL DEFAULT '',
    UNIQUE (dag, run_id),
    INDEX runs_by_dag (dag, id),
    INDEX runs_by_status (status, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Attempts of top-level and child runs. `record` is the latest snapshot; the step
-- changes after it are the events with a larger id than `snapshot_event`.
CREATE TABLE IF NOT EXISTS attempts (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    attempt_id VARCHAR(64) NOT NULL UNIQUE,
    dag VARCHAR(255) NOT NULL,
    run_id VARCHAR(255) NOT NULL,
    root_dag VARCHAR(255) NOT NULL,
    root_run_id VARCHAR(255) NOT NULL,
    parent_attempt VARCHAR(255),
    dir LONGTEXT NOT NULL,
    log_dir LONGTEXT NOT NULL,
    record LONGTEXT,
    snapshot_event BIGINT NOT NULL DEFAULT 0,
    definition LONGTEXT,
    INDEX attempts_by_run (dag, run_id, id),
    INDEX attempts_by_parent (parent_attempt, run_id, id),
    INDEX attempts_by_root (root_dag, root_run_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Every change of every attempt, in order: the run's event log.
CREATE TABLE IF NOT EXISTS events (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    attempt BIGINT NOT NULL,
    entry LONGTEXT NOT NULL,
    INDEX events_by_attempt (attempt, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Queued runs. A claimed item keeps its row (with the claimant's nonce) so a claim whose
-- reply was lost can be confirmed when it is tried again.
CREATE TABLE IF NOT EXISTS queue_items (
    seq BIGINT AUTO_INCREMENT PRIMARY KEY,
    queue VARCHAR(255) NOT NULL,
    run_id VARCHAR(255) NOT NULL,
    priority BIGINT NOT NULL,
    item LONGTEXT NOT NULL,
    claim VARCHAR(255),
    claimed_at BIGINT,
    -- Which enqueue call wrote the row: a retried call must not revive its own taken item.
    enqueue_nonce VARCHAR(255),
    UNIQUE (queue, run_id),
    INDEX queue_items_order (queue, claim, priority DESC, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Schedule ticks: one row per (DAG, scheduled time), so a tick fires once.
CREATE TABLE IF NOT EXISTS ticks (
    dag VARCHAR(255) NOT NULL,
    at VARCHAR(255) NOT NULL,
    skipped BIGINT NOT NULL DEFAULT 0,
    token BIGINT NOT NULL,
    PRIMARY KEY (dag, at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Leases (the scheduler's lead). `token` is the fencing token: it grows with each holder.
CREATE TABLE IF NOT EXISTS leases (
    name VARCHAR(255) PRIMARY KEY,
    holder VARCHAR(255) NOT NULL,
    pid BIGINT NOT NULL DEFAULT 0,
    host VARCHAR(255) NOT NULL DEFAULT '',
    token BIGINT NOT NULL,
    since TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
INSERT IGNORE INTO leases (name, holder, token, since, expires_ms) VALUES ('scheduler', '', 0, '', 0);

-- Small named values: suspended DAGs, the leader's heartbeat, step state.
CREATE TABLE IF NOT EXISTS kv (
    scope VARCHAR(255) NOT NULL,
    name VARCHAR(255) NOT NULL,
    value LONGTEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Workers known to a coordinator, with their last heartbeat.
CREATE TABLE IF NOT EXISTS workers (
    id VARCHAR(255) PRIMARY KEY,
    info LONGTEXT NOT NULL,
    heartbeat_ms BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Where each step's logs are: host and path of the file, and its size when last seen.
CREATE TABLE IF NOT EXISTS log_index (
    attempt VARCHAR(64) NOT NULL,
    step VARCHAR(255) NOT NULL,
    stream VARCHAR(255) NOT NULL,
    host TEXT NOT NULL,
    path LONGTEXT NOT NULL,
    bytes BIGINT NOT NULL,
    PRIMARY KEY (attempt, step, stream)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
