#!/usr/bin/env python3
"""Web server benchmark: API latency over a store of 10 000 runs, and the server's memory
(Python 3.11, standard library only).

Builds nothing: it runs an existing release binary (default `target/release/trellis`
relative to the repository root). Build it first:

    cargo build --release && python3 bench/server.py

Steps:
  1. Fill a TRELLIS_HOME with N runs (default 10 000) of D one-step DAGs (default 10, so
     1 000 runs each) by running the real `trellis start -q FILE` in parallel processes.
     Real runs, not files written in the store's format, so the store holds exactly what
     production would (status logs, saved definitions, step logs) and the benchmark breaks
     if that format changes. `--home DIR` keeps the home and reuses it next time (only the
     missing runs are made).
  2. Start `trellis server --port 0` on it and read VmRSS / VmHWM from /proc once it
     listens (idle, nothing requested yet).
  3. Time sequential requests on one keep-alive connection, R of each (default 500):
       runs page 1      GET /api/v2/dag-runs?page=1&per_page=50
       runs deep page   GET /api/v2/dag-runs?page=<N/100>&per_page=50   (half-way down)
       runs of a DAG    GET /api/v2/dag-runs?name=bench-0&page=1&per_page=50
       dags             GET /api/v2/dags
     The first request of each kind is reported apart (cold: caches empty) and left out
     of the percentiles.
     and `GET /metrics` (its first request builds the run index; later ones within 5 s
     reuse it), plus 3 scrapes each after the 5 s cache expired (a refresh: one `stat`
     per finished run).
  4. Live updates: starts a run held at a gate file, opens S (default 100) event streams
     of it plus one `/api/v2/events` feed, and reads the server's CPU time over 10 s
     (against 10 s with no stream open).
  5. Read VmRSS / VmHWM again and print markdown tables with PASS/MISS lines for the
     targets: p99 < 50 ms on every route, idle RSS <= 30 MiB.

It exits 0 once it has run (it is a benchmark, not a test); 2 when it cannot run at all.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BIN = REPO / "target" / "release" / "trellis"
P99_TARGET_MS = 50.0
RSS_TARGET_MIB = 30.0


def env_for(home: Path, dags: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    env["TRELLIS_HOME"] = str(home)
    env["TRELLIS_DAGS_DIR"] = str(dags)
    return env


def stored_runs(home: Path, dag: str) -> int:
    root = home / "data" / "dag-runs" / dag / "dag-runs"
    if not root.is_dir():
        return 0
    return sum(1 for p in root.glob("*/*/*/dag-run_*"))


def fill(binary: Path, home: Path, dags: Path, n_runs: int, n_dags: int, procs: int) -> float:
    """Makes the runs that are missing; returns the seconds it took."""
    dags.mkdir(parents=True, exist_ok=True)
    env = env_for(home, dags)
    todo: list[Path] = []
    per_dag = n_runs // n_dags
    for d in range(n_dags):
        name = f"bench-{d}"
        file = dags / f"{name}.yaml"
        file.write_text(f"description: server benchmark DAG {d}\nsteps:\n  - name: one\n    command: \"true\"\n")
        todo += [file] * max(0, per_dag - stored_runs(home, name))
    if not todo:
        return 0.0
    print(f"making {len(todo)} runs with {procs} processes ...", file=sys.stderr)
    started = time.perf_counter()
    failures = 0

    def one(file: Path) -> bool:
        r = subprocess.run([str(binary), "start", "-q", str(file)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return r.returncode == 0

    with ThreadPoolExecutor(max_workers=procs) as pool:
        for done, ok in enumerate(pool.map(one, todo), 1):
            failures += not ok
            if done % 1000 == 0:
                print(f"  {done}/{len(todo)}", file=sys.stderr)
    if failures:
        print(f"warning: {failures} runs failed", file=sys.stderr)
    return time.perf_counter() - started


def proc_mem(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    text = Path(f"/proc/{pid}/status").read_text()

    def field(name: str) -> float:
        m = re.search(rf"^{name}:\s+(\d+) kB", text, re.M)
        return int(m.group(1)) / 1024 if m else float("nan")

    return field("VmRSS"), field("VmHWM")


def start_server(binary: Path, home: Path, dags: Path) -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen(
        [str(binary), "server", "--port", "0"],
        env=env_for(home, dags),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.match(r"server listening on http://([\d.]+):(\d+)", line)
        if m:
            return proc, m.group(1), int(m.group(2))
    proc.kill()
    raise SystemExit("the server did not start")


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def time_route(host: str, port: int, path: str, n: int) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    samples = []
    size = 0
    for _ in range(n + 1):
        t = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        samples.append((time.perf_counter() - t) * 1000)
        if resp.status != 200:
            raise SystemExit(f"GET {path}: {resp.status} {body[:300]!r}")
        size = len(body)
    conn.close()
    check = json.loads(body) if body[:1] in (b"{", b"[") else None
    items = len(check.get("runs", check.get("dags", []))) if isinstance(check, dict) else 0
    cold, warm = samples[0], samples[1:] or samples
    return {
        "path": path,
        "cold": cold,
        "p50": percentile(warm, 50),
        "p90": percentile(warm, 90),
        "p99": percentile(warm, 99),
        "max": max(warm),
        "bytes": size,
        "items": items,
        "samples": warm,
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stream_cost(binary: Path, home: Path, dags: Path, host: str, port: int, pid: int, n: int, secs: float = 10.0) -> dict:
    """Server CPU % over `secs` idle, then with `n` run event streams and a feed open."""
    gate = home / "gate"
    gate.unlink(missing_ok=True)
    hold = dags / "bench-hold.yaml"
    hold.write_text(f"steps:\n  - name: hold\n    command: sh -c 'while [ ! -f {gate} ]; do sleep 0.1; done'\n")
    run_id = f"hold-{int(time.time() * 1000)}"
    c0 = cpu_seconds(pid)
    time.sleep(secs)
    idle = (cpu_seconds(pid) - c0) / secs * 100
    run = subprocess.Popen([str(binary), "start", "-q", "-r", run_id, str(hold)], env=env_for(home, dags))
    conns = []
    try:
        paths = [f"/api/v2/dag-runs/bench-hold/{run_id}/events"] * n + ["/api/v2/events"]
        for path in paths:
            conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.request("GET", path)
            resp = conn.getresponse()
            if resp.status != 200:
                raise SystemExit(f"GET {path}: {resp.status}")
            if "/dag-runs/" in path:
                while resp.readline() not in (b"\n", b"\r\n", b""):
                    pass  # the first event: the run's current state
            conns.append((conn, resp))
        c0 = cpu_seconds(pid)
        time.sleep(secs)
        busy = (cpu_seconds(pid) - c0) / secs * 100
        rss = proc_mem(pid)[0]
    finally:
        gate.write_text("")
        run.wait(timeout=60)
        for conn, _ in conns:
            conn.close()
    return {"idle": idle, "busy": busy, "rss": rss}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, default=DEFAULT_BIN, help="trellis binary (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=10_000, help="runs in the store (default: %(default)s)")
    ap.add_argument("--dags", type=int, default=10, help="DAGs the runs are spread over (default: %(default)s)")
    ap.add_argument("--requests", type=int, default=500, help="timed requests per route (default: %(default)s)")
    ap.add_argument("--procs", type=int, default=(os.cpu_count() or 2) * 2, help="parallel `trellis start`s while filling (default: %(default)s)")
    ap.add_argument("--streams", type=int, default=100, help="open run event streams for the CPU measurement (default: %(default)s)")
    ap.add_argument("--home", type=Path, help="keep the TRELLIS_HOME here and reuse it (default: a temporary dir, deleted)")
    ap.add_argument("--json", type=Path, help="also write the raw samples here")
    args = ap.parse_args()
    if not args.bin.is_file():
        print(f"no binary at {args.bin}: run `cargo build --release` first", file=sys.stderr)
        return 2
    tmp = None
    home = args.home
    if home is None:
        tmp = tempfile.mkdtemp(prefix="trellis-server-bench-")
        home = Path(tmp) / "home"
    home.mkdir(parents=True, exist_ok=True)
    dags = home / "dags"
    try:
        fill_sec = fill(args.bin, home, dags, args.runs, args.dags, args.procs)
        total = sum(stored_runs(home, f"bench-{d}") for d in range(args.dags))
        proc, host, port = start_server(args.bin, home, dags)
        try:
            time.sleep(0.5)  # idle: let start-up allocations settle
            idle_rss, idle_hwm = proc_mem(proc.pid)
            deep_page = max(1, total // 100)
            routes = [
                ("runs page 1", "/api/v2/dag-runs?page=1&per_page=50"),
                (f"runs page {deep_page}", f"/api/v2/dag-runs?page={deep_page}&per_page=50"),
                ("runs of a DAG", "/api/v2/dag-runs?name=bench-0&page=1&per_page=50"),
                ("dags", "/api/v2/dags"),
                ("metrics", "/metrics"),
            ]
            results = [(label, time_route(host, port, path, args.requests)) for label, path in routes]
            refresh = []
            for _ in range(3):
                time.sleep(5.2)
                refresh.append(time_route(host, port, "/metrics", 0)["cold"])
            live = stream_cost(args.bin, home, dags, host, port, proc.pid, args.streams)
            after_rss, after_hwm = proc_mem(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        report(args, total, fill_sec, idle_rss, idle_hwm, after_rss, after_hwm, results)
        print(f"metrics index refresh (cache expired, {total} runs): " + ", ".join(f"{x:.1f} ms" for x in refresh))
        print(f"live updates: server CPU {live['idle']:.2f} % with no stream open, "
              f"{live['busy']:.2f} % with {args.streams} run streams + 1 feed open "
              f"(RSS {live['rss']:.1f} MiB with them open)")
        if args.json:
            args.json.write_text(json.dumps({"runs": total, "idle_rss_mib": idle_rss, "results": dict(results)}, indent=1))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def report(args, total, fill_sec, idle_rss, idle_hwm, after_rss, after_hwm, results) -> None:
    print(f"\nstore: {total} runs over {args.dags} DAGs" + (f" (made in {fill_sec:.0f} s)" if fill_sec else " (reused)"))
    print(f"requests: {args.requests} per route, sequential, one keep-alive connection\n")
    print("| route | items | body | cold | p50 | p90 | p99 | max |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in results:
        print(f"| {label} | {r['items']} | {r['bytes'] / 1024:.1f} KiB | {r['cold']:.1f} ms | {r['p50']:.2f} ms | {r['p90']:.2f} ms | {r['p99']:.2f} ms | {r['max']:.1f} ms |")
    print("\n| memory | VmRSS | VmHWM |")
    print("|---|---:|---:|")
    print(f"| idle after start-up | {idle_rss:.1f} MiB | {idle_hwm:.1f} MiB |")
    print(f"| after the requests | {after_rss:.1f} MiB | {after_hwm:.1f} MiB |")
    print()
    for label, r in results:
        verdict = "PASS" if r["p99"] < P99_TARGET_MS else "MISS"
        print(f"{verdict}: {label} p99 {r['p99']:.2f} ms (target < {P99_TARGET_MS:.0f} ms)")
    verdict = "PASS" if idle_rss <= RSS_TARGET_MIB else "MISS"
    print(f"{verdict}: idle RSS {idle_rss:.1f} MiB (target <= {RSS_TARGET_MIB:.0f} MiB)")


if __name__ == "__main__":
    sys.exit(main())
