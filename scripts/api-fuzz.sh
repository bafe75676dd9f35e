#!/usr/bin/env bash
# Fuzzes the REST API with Schemathesis: starts `target/release/trellis start-all` (the
# server plus a scheduler, so queued runs start and /health/deep is healthy) on a free
# port with a throw-away home and two trivial DAGs, runs Schemathesis against the served
# OpenAPI document with the `not_a_server_error` check (every response must be < 500),
# then stops the server. Extra arguments go to `schemathesis run` (e.g. `-n 50`).
#
#   cargo build --release -p trellis-cli && scripts/api-fuzz.sh
#
# Mutations are real: starts spawn runs of the example DAGs (each an `echo`), creates and
# deletes write DAG files — all inside the temporary dir, removed at the end. The SSE
# routes are left out: a stream never ends, so it cannot be checked request by request.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${TRELLIS_BIN:-$root/target/release/trellis}
if [[ ! -x $bin ]]; then
    echo "no $bin; build it first: cargo build --release -p trellis-cli" >&2
    exit 2
fi
if ! command -v schemathesis >/dev/null; then
    pip install --quiet schemathesis
fi

work=$(mktemp -d)
server=
cleanup() {
    if [[ -n $server ]]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/home" "$work/dags"
cat >"$work/dags/hello.yaml" <<'YAML'
description: Says hello.
params:
  - WHO: world
steps:
  - name: greet
    command: echo "hello ${WHO}"
    output: GREETING
YAML
cat >"$work/dags/choice.yaml" <<'YAML'
params:
  - name: MODE
    enum: [fast, full]
    default: fast
steps:
  - name: show
    command: echo "${MODE}"
  - name: done
    depends: [show]
    command: echo done
YAML

env -u TRELLIS_CONFIG -u TRELLIS_AUTH_TOKEN -u TRELLIS_AUTH_BASIC_USERNAME \
    -u TRELLIS_AUTH_BASIC_PASSWORD \
    TRELLIS_HOME="$work/home" TRELLIS_DAGS_DIR="$work/dags" \
    "$bin" start-all --host 127.0.0.1 --port 0 2>"$work/server.log" &
server=$!

url=
for _ in $(seq 100); do
    url=$(sed -n 's/^server listening on \(http[^ ]*\).*/\1/p' "$work/server.log")
    [[ -n $url ]] && break
    if ! kill -0 "$server" 2>/dev/null; then
        cat "$work/server.log" >&2
        exit 1
    fi
    sleep 0.1
done
if [[ -z $url ]]; then
    echo "the server did not start:" >&2
    cat "$work/server.log" >&2
    exit 1
fi
url=${url%/}
# The scheduler writes its first heartbeat within seconds of taking the lease.
for _ in $(seq 100); do
    curl -fsS "$url/health/deep" >/dev/null 2>&1 && break
    sleep 0.2
done
echo "fuzzing $url (home $work/home)"

status=0
# From the temporary dir, so Schemathesis's own cache (.schemathesis/) is removed with it.
cd "$work"
schemathesis run "$url/api/v2/openapi.json" \
    --checks not_a_server_error \
    --exclude-path-regex '/events$|/log/stream$' \
    --request-timeout 30 \
    "$@" || status=$?

if grep -qi "panicked" "$work/server.log"; then
    echo "the server panicked:" >&2
    grep -i -A3 "panicked" "$work/server.log" >&2
    status=1
fi
exit $status
