#!/usr/bin/env python3
"""Trellis on PostgreSQL: queue drain throughput and run-list latency over 100 000 runs
(Python 3.11, standard library only; needs the PostgreSQL server binaries and `psql`).

Builds nothing; build first:

    cargo build --release && python3 bench/database.py

It starts a throwaway PostgreSQL cluster (initdb + pg_ctl on a free port; as the `postgres`
user when run as root), or uses `--url` if given, then:

1. **Drain.** Enqueues N single-step runs (default 1000; the step is `true`, the DAG has
   `max_active_runs: -1`, the config `max_concurrent_runs: 32`) while no scheduler runs,
   starts `trellis scheduler` on the database and measures from the moment it leads until
   every run is recorded `succeeded`. Throughput = N / that time.
2. **Pages.** Adds runs with SQL until the database holds R runs (default 100 000; each a
   copy of a real stored run, spread over 10 DAGs), starts `trellis server` on it and times
   `GET /api/v2/dag-runs` for the first page, a page in the middle and a DAG's page.

Prints a markdown table and PASS/MISS lines for the targets (drain >= 200 runs/s; page
p99 < 50 ms). Exits 0 once it has run, 2 if it cannot run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BIN = REPO / "target" / "release" / "trellis"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_postgres(base: Path) -> tuple[str, callable]:
    """A throwaway cluster in `base`; returns its URL and a stop function."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: float(p.parent.name))
    if not bins:
        raise SystemExit("no PostgreSQL server binaries (apt-get install postgresql)")
    bin_dir, port = bins[-1], free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        base.chmod(0o755)
        shutil.chown(base, "postgres")
    data = base / "data"
    subprocess.run(as_user + [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                              "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"], check=True, capture_output=True)
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off -c full_page_writes=off"
    subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"),
                              "-w", "-o", opts, "start"], check=True, capture_output=True)
    subprocess.run(["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                    "-c", "CREATE DATABASE trellis"], check=True)

    def stop() -> None:
        subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)

    return f"postgres://postgres@127.0.0.1:{port}/trellis", stop


def psql(url: str, sql: str) -> str:
    out = subprocess.run(["psql", "-X", "-q", "-t", "-A", url, "-c", sql], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def trellis_env(home: Path, dags: Path, url: str, config: Path) -> dict[str, str]:
    env = dict(os.environ, TRELLIS_HOME=str(home), TRELLIS_DAGS_DIR=str(dags),
               TRELLIS_DATABASE_URL=url, TRELLIS_CONFIG=str(config))
    return env


def drain(binary: Path, work: Path, url: str, n: int) -> dict:
    home, dags = work / "home", work / "dags"
    dags.mkdir(parents=True)
    dag = dags / "drain.yaml"
    dag.write_text("max_active_runs: -1\nsteps:\n  - name: one\n    command: \"true\"\n")
    config = work / "config.yaml"
    config.write_text("run_queue:\n  max_concurrent_runs: 32\n")
    env = trellis_env(home, dags, url, config)

    def enqueue(i: int) -> None:
        subprocess.run([str(binary), "enqueue", "-r", f"d{i:05}", str(dag)], env=env, check=True,
                       capture_output=True)

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(enqueue, range(n)))
    enqueue_s = time.monotonic() - t0
    log = work / "scheduler.log"
    with log.open("wb") as out:
        sched = subprocess.Popen([str(binary), "scheduler"], env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while b"leading" not in log.read_bytes():
            if sched.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the scheduler did not lead:\n" + log.read_text())
            time.sleep(0.005)
        start = time.monotonic()
        deadline = start + 600
        done = 0
        while done < n and time.monotonic() < deadline:
            done = int(psql(url, "SELECT count(*) FROM runs WHERE dag = 'drain' AND status = 'succeeded'"))
            time.sleep(0.1)  # each look spawns psql: keep its CPU out of the measurement
        elapsed = time.monotonic() - start
    finally:
        sched.terminate()
        sched.wait(10)
    if done < n:
        raise SystemExit(f"only {done} of {n} runs succeeded:\n" + log.read_text()[-3000:])
    return {"runs": n, "enqueue_s": enqueue_s, "drain_s": elapsed, "rate": n / elapsed}


FILL_SQL = """
WITH src AS (
  SELECT a.record, a.definition FROM runs r JOIN attempts a ON a.id = r.attempt
  WHERE r.dag = 'drain' ORDER BY r.id LIMIT 1
), ins AS (
  INSERT INTO attempts (attempt_id, dag, run_id, root_dag, root_run_id, dir, log_dir, record, definition)
  SELECT 'fill-' || g, 'dag' || (g % 10), 'f' || g, 'dag' || (g % 10), 'f' || g, '', '',
         replace(src.record, '"drain"', '"dag' || (g % 10) || '"'), src.definition
  FROM src, generate_series({start}, {end}) AS g
  RETURNING id, dag, run_id
)
INSERT INTO runs (dag, run_id, attempt, status) SELECT dag, run_id, id, 'succeeded' FROM ins ORDER BY id
"""


def fill(url: str, total: int) -> float:
    have = int(psql(url, "SELECT count(*) FROM runs"))
    t0 = time.monotonic()
    start = 1
    while have < total:
        end = start + min(20_000, total - have) - 1
        psql(url, FILL_SQL.format(start=start, end=end))
        have += end - start + 1
        start = end + 1
    psql(url, "ANALYZE")
    return time.monotonic() - t0


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def time_route(port: int, path: str, n: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    samples = []
    for i in range(n + 10):
        t0 = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        dt = (time.perf_counter() - t0) * 1000
        if resp.status != 200:
            raise SystemExit(f"{path}: HTTP {resp.status}: {body[:300]!r}")
        if i >= 10:  # warm-up
            samples.append(dt)
    runs = len(json.loads(body)["runs"])
    return {"path": path, "p50": percentile(samples, 50), "p99": percentile(samples, 99), "runs": runs}


def pages(binary: Path, work: Path, url: str, requests: int) -> list[dict]:
    home, dags = work / "home2", work / "dags"
    config = work / "config.yaml"
    env = trellis_env(home, dags, url, config)
    log = work / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen([str(binary), "server", "--port", "0"], env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while b"listening on" not in log.read_bytes():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start:\n" + log.read_text())
            time.sleep(0.01)
        line = next(l for l in log.read_text().splitlines() if "listening on" in l)
        port = int(line.split("listening on ")[1].split()[0].rstrip("/").rsplit(":", 1)[1])
        total = int(psql(url, "SELECT count(*) FROM runs"))
        middle = total // 2 // 50
        return [time_route(port, p, requests) for p in (
            "/api/v2/dag-runs?per_page=50",
            f"/api/v2/dag-runs?per_page=50&page={middle}",
            "/api/v2/dag-runs?name=dag3&per_page=50&page=100",
        )]
    finally:
        server.terminate()
        server.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, default=DEFAULT_BIN)
    ap.add_argument("--url", help="use this database instead of a throwaway cluster (it must be empty)")
    ap.add_argument("--runs", type=int, default=1000, help="runs to drain (default: %(default)s)")
    ap.add_argument("--stored", type=int, default=100_000, help="runs stored for the page timings (default: %(default)s)")
    ap.add_argument("--requests", type=int, default=300, help="timed requests per route (default: %(default)s)")
    args = ap.parse_args()
    if not args.bin.exists():
        print(f"no binary at {args.bin}: cargo build --release first", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="trellis-db-bench-"))
    work.chmod(0o755)  # the postgres user must reach its data dir inside
    stop = None
    try:
        url = args.url
        if not url:
            (work / "pg").mkdir()
            url, stop = start_postgres(work / "pg")
        d = drain(args.bin, work, url, args.runs)
        fill_s = fill(url, args.stored)
        results = pages(args.bin, work, url, args.requests)
    finally:
        if stop:
            stop()
        shutil.rmtree(work, ignore_errors=True)
    cpu = os.cpu_count()
    print(f"\nPostgreSQL, {cpu} CPUs, release build\n")
    print("| measure | result | target |\n|---|---:|---:|")
    print(f"| drain of {d['runs']} single-step runs (1 scheduler, 32 at a time) | **{d['rate']:.0f} runs/s** ({d['drain_s']:.2f} s) | >= 200 runs/s |")
    for r in results:
        print(f"| `GET {r['path']}` over {args.stored:,} runs: p50 / p99 | {r['p50']:.1f} / **{r['p99']:.1f} ms** ({r['runs']} runs) | p99 < 50 ms |")
    print(f"\n(enqueueing {d['runs']} runs through `trellis enqueue` took {d['enqueue_s']:.1f} s; filling to {args.stored:,} runs with SQL took {fill_s:.1f} s)")
    print("PASS" if d["rate"] >= 200 else "MISS", "drain >= 200 runs/s")
    worst = max(r["p99"] for r in results)
    print("PASS" if worst < 50 else "MISS", f"page p99 < 50 ms (worst {worst:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
