#!/usr/bin/env python3
"""Enqueue→start latency of `trellis scheduler` (Python 3.11, standard library only, Linux).

Builds nothing: it runs an existing release binary (default `target/release/trellis`
relative to the repository root). Build it first:

    cargo build --release && python3 bench/queue_latency.py

It starts one scheduler on a fresh TRELLIS_HOME with a one-step DAG (`true`,
max_active_runs: -1, no limits), then enqueues N runs (default 100) one at a time with
`trellis enqueue FILE`, each after the previous one has started (polled with
`trellis status --json NAME -r ID` until `running` or a final status).

Per run it measures:

  queue latency   record.started_at − QueueItem.queued_at: from the moment the item is
                  stamped (just before it is written into the queue) to the moment the
                  engine records the run as started. This is the scheduler's share.
  command latency record.started_at − the time just before `trellis enqueue` was spawned:
                  what a user sees, including starting the enqueue process and its fsyncs.

The queue item is removed as soon as the run starts, so its `queued_at` is read the moment
the item is written: an inotify watch (through ctypes) on the queue directory wakes a
reader thread when the item's temporary file is written (IN_MODIFY; it is fsynced and then
renamed into place, which is when the scheduler can see it) and again when it is renamed
(IN_MOVED_TO). If the scheduler takes the item before it could be read, the sample falls
back to the rename event's arrival time, which is later than queued_at (so it understates
that sample's latency by the item's write time, about a millisecond); the number of such
samples is printed.

With `--workers N` the run goes through the cluster instead: a `trellis coordinator` and N
`trellis worker`s (labels pool=bench) start on the same TRELLIS_HOME, and the DAG carries
`worker_selector: {pool: bench}`, so the time measured is scheduler → task file →
coordinator → long-polling worker → engine start.

It prints a markdown table (p50/p90/p99/max in ms) and a PASS/MISS line for the target
(p99 queue latency < 100 ms). It always exits 0 once it has run (it is a benchmark, not a
test); it exits 2 only when it cannot run at all.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BIN = REPO / "target" / "release" / "trellis"
TARGET_P99_MS = 100.0

DAG = """name: lat
max_active_runs: -1
steps:
  - name: s
    command: "true"
"""

IN_MODIFY = 0x00000002
IN_MOVED_TO = 0x00000080
EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len


def parse_ns(stamp: str) -> int:
    """RFC 3339 with up to 9 fractional digits ("2026-11-22T16:29:08.011258922Z") to ns."""
    stamp = stamp.strip()
    if stamp.endswith("Z"):
        stamp = stamp[:-1] + "+00:00"
    frac_ns = 0
    if "." in stamp:
        head, rest = stamp.split(".", 1)
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        frac_ns = int((digits + "000000000")[:9])
        stamp = head + rest
    whole = datetime.fromisoformat(stamp).astimezone(timezone.utc)
    return int(whole.timestamp()) * 1_000_000_000 + frac_ns


class QueueWatch:
    """Reads every queue item as it is renamed into `directory`: run id → (queued_at ns,
    or None if the file was gone, event arrival ns)."""

    def __init__(self, directory: Path):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = libc.inotify_init1(0)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        wd = libc.inotify_add_watch(self.fd, str(directory).encode(), IN_MODIFY | IN_MOVED_TO)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        self.dir = directory
        self.seen: dict[str, tuple[int | None, int]] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except OSError:
                return
            arrived = time.time_ns()
            off = 0
            while off + EVENT_HEADER.size <= len(buf):
                _, mask, _, length = EVENT_HEADER.unpack_from(buf, off)
                name = buf[off + EVENT_HEADER.size: off + EVENT_HEADER.size + length].rstrip(b"\0").decode()
                off += EVENT_HEADER.size + length
                if not name.startswith("item_") or not name.endswith((".json", ".tmp")):
                    continue
                final = name.endswith(".json")
                queued_at = None
                run_id = name.rsplit(".", 1)[0].split("_", 3)[-1]
                try:
                    item = json.loads((self.dir / name).read_bytes())
                    queued_at = parse_ns(item["queued_at"])
                    run_id = item["run_id"]
                except (OSError, ValueError, KeyError):
                    pass  # not whole yet (.tmp), or already taken (.json)
                with self.cond:
                    known = self.seen.get(run_id)
                    if queued_at is not None and (known is None or known[0] is None):
                        self.seen[run_id] = (queued_at, arrived)
                    elif final and known is None:
                        self.seen[run_id] = (None, arrived)
                    self.cond.notify_all()

    def wait(self, run_id: str, timeout: float) -> tuple[int | None, int] | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while run_id not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.seen[run_id]


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * p // 100)))
    return ordered[int(rank) - 1]


def wait_line(path: Path, text: bytes, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while text not in path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start:\n" + path.read_text())
        time.sleep(0.01)


def start_cluster(binary: Path, env: dict, work: Path, workers: int) -> list[subprocess.Popen]:
    """A coordinator on a free port and `workers` workers that find it in the registry."""
    procs = []
    log = work / "coordinator.log"
    procs.append(subprocess.Popen(
        [str(binary), "coordinator", "--coordinator.port", "0"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
    ))
    wait_line(log, b"listening on", procs[0], "the coordinator")
    for i in range(workers):
        wlog = work / f"worker{i}.log"
        proc = subprocess.Popen(
            [str(binary), "worker", "--worker.id", f"bench-{i}", "--worker.labels", "pool=bench"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(wlog, "wb"),
        )
        procs.append(proc)
        wait_line(wlog, b"registered", proc, f"worker {i}")
    return procs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, default=DEFAULT_BIN, help="trellis binary (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=100, help="runs to enqueue (default: %(default)s)")
    ap.add_argument("--home-dir", type=Path, help="where the fresh TRELLIS_HOME goes (default: the temporary work dir)")
    ap.add_argument("--json", type=Path, help="also write the raw samples here")
    ap.add_argument("--workers", type=int, default=0, help="run through a coordinator and this many workers")
    args = ap.parse_args()

    if not args.bin.exists():
        print(f"no binary at {args.bin}; build it with `cargo build --release`", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="trellis-qlat-"))
    home = Path(tempfile.mkdtemp(prefix="home-", dir=args.home_dir or work))
    dags = work / "dags"
    dags.mkdir()
    dag_file = dags / "lat.yaml"
    dag_file.write_text(DAG + ("worker_selector: {pool: bench}\n" if args.workers else ""))
    queue_dir = home / "data" / "queue" / "lat"
    queue_dir.mkdir(parents=True)
    env = dict(os.environ, TRELLIS_HOME=str(home))
    for var in ("TRELLIS_CONFIG", "TRELLIS_DAGS_DIR"):
        env.pop(var, None)

    load_before = os.getloadavg()
    cluster = start_cluster(args.bin, env, work, args.workers) if args.workers else []
    log = open(work / "scheduler.log", "w+b")
    sched = subprocess.Popen(
        [str(args.bin), "scheduler", "--dags", str(dags), "--id", "bench"],
        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )
    samples: list[dict] = []
    fallbacks = 0
    try:
        deadline = time.monotonic() + 30
        while b"leading" not in (work / "scheduler.log").read_bytes():
            if sched.poll() is not None or time.monotonic() > deadline:
                print("the scheduler did not start:\n" + (work / "scheduler.log").read_text(), file=sys.stderr)
                return 2
            time.sleep(0.01)
        watch = QueueWatch(queue_dir)

        def status(run_id: str) -> dict | None:
            out = subprocess.run(
                [str(args.bin), "status", "--json", "lat", "-r", run_id],
                env=env, capture_output=True,
            )
            return json.loads(out.stdout) if out.returncode == 0 else None

        for i in range(args.runs):
            t0 = time.time_ns()
            out = subprocess.run([str(args.bin), "enqueue", str(dag_file)], env=env, capture_output=True, check=True)
            run_id = out.stdout.decode().strip()
            seen = watch.wait(run_id, 30)
            if seen is None:
                print(f"run {run_id}: no queue item seen", file=sys.stderr)
                return 2
            queued_at, arrived = seen
            if queued_at is None:
                fallbacks += 1
                queued_at = arrived
            deadline = time.monotonic() + 30
            while True:
                run = status(run_id)
                if run and run["status"] not in ("queued", "not_started") and run.get("started_at"):
                    break
                if time.monotonic() > deadline:
                    print(f"run {run_id} never started", file=sys.stderr)
                    return 2
                time.sleep(0.002)
            started = parse_ns(run["started_at"])
            samples.append({
                "run_id": run_id,
                "queue_ms": (started - queued_at) / 1e6,
                "command_ms": (started - t0) / 1e6,
                "exact_queued_at": seen[0] is not None,
            })
    finally:
        for proc in cluster:
            proc.kill()
            proc.wait()
        sched.send_signal(signal.SIGTERM)
        try:
            sched.wait(timeout=20)
        except subprocess.TimeoutExpired:
            sched.kill()
            sched.wait()
        log.close()
    load_after = os.getloadavg()

    through = f", through a coordinator and {args.workers} worker(s)" if args.workers else ""
    print(f"# Queue latency: {len(samples)} runs, one at a time, one scheduler{through}")
    print()
    print(f"binary {args.bin}; {platform.platform()}; {os.cpu_count()} CPUs; "
          f"load {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print()
    print("| latency | p50 | p90 | p99 | max |")
    print("|---|---:|---:|---:|---:|")
    for key, label in (("queue_ms", "queued_at → started_at"), ("command_ms", "`trellis enqueue` spawned → started_at")):
        vals = [s[key] for s in samples]
        print(f"| {label} | {pct(vals, 50):.1f} ms | {pct(vals, 90):.1f} ms | {pct(vals, 99):.1f} ms | {max(vals):.1f} ms |")
    print()
    print(f"queued_at read from the item: {len(samples) - fallbacks}/{len(samples)} "
          f"(else the inotify event time)")
    p99 = pct([s["queue_ms"] for s in samples], 99)
    verdict = "PASS" if p99 < TARGET_P99_MS else "MISS"
    print(f"{verdict}: p99 queue latency < {TARGET_P99_MS:.0f} ms: {p99:.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(samples, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
