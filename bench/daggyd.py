#!/usr/bin/env python3
"""Daggy daemon benchmark: a wide run against xargs, submit latency under concurrent
clients, and the daemon's memory (Python 3.11, standard library only).

Builds nothing: it runs an existing release binary (default `target/release/trellis`
relative to the repository root). Build it first:

    cargo build --release && python3 bench/daggyd.py

It starts `trellis daggyd --config FILE` with a fresh TRELLIS_HOME (under --home-dir, else
the temporary directory) and the config

    {"executor": {"name": "ForkingTaskExecutor", "config": {"threads": T}}, "port": 0,
     "logger": {"name": "OStreamLogger", "config": {"file": "<tmp>/events"}}}

(T = --threads, default 10), waits for `daggyd listening on http://ADDR/` on its stderr,
then:

  1. idle memory: VmRSS / VmHWM / RssAnon / RssFile from /proc/PID/status, 1 s after it
     listens. The binary is dropped from the page cache before the start (--warm: and
     read back whole; see `page_cache`: RssFile depends on how the binary sits there).
  2. fan-out: `POST /v1/dagrun` of a spec of N independent tasks (--tasks, default 1000),
     each `["/bin/true"]` (--command changes it; a JSON list). The time runs from the
     POST until the run's `Completed` line appears in the OStream events file (read
     every millisecond from where it was; no API polling, which would replay the run's
     story on every request and load the daemon). Interleaved with each run, the floor:
     `xargs -P T -n 1` running the same command N times (the task index is appended as
     an argument, which `true` and `sh -c` ignore). --reps runs of each (default 5);
     medians. The daemon's CPU time per run is read from /proc/PID/stat.
  3. submit latency: the same C client threads (--clients, default 20) first make S
     `GET /ready` requests (the clients' own floor: Python threads, a new connection per
     request), then post S small specs (--specs, default 200; 3 tasks in a chain), one
     urllib request each. p50 / p90 / p99 / max of the round trip, then the time until
     all S runs are `Completed`.
  4. memory again after the fan-out runs and after the submit burst (once every run
     ended, then 2 s of quiet).

Targets: fan-out <= 1.2x xargs; submit p99 < 50 ms; idle RSS <= 15 MiB.

--noop configures NoopTaskExecutor instead (tasks succeed without running), to see the
API and store path without the processes. On this machine's ext4 (no journal), creating
files is much slower for ~30 s after many files were deleted anywhere on the filesystem
(`recently_deleted` in the kernel); --home-dir /dev/shm takes the disk out.

It prints markdown tables with PASS/MISS lines and exits 0 once it has run (it is a
benchmark, not a test); 2 when it cannot run at all.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BIN = REPO / "target" / "release" / "trellis"
FANOUT_RATIO_TARGET = 1.2
P99_TARGET_MS = 50.0
IDLE_RSS_TARGET_MIB = 15.0


# --- the daemon ---------------------------------------------------------------------------


class Daemon:
    """`trellis daggyd` on a fresh home; its stderr is drained by a thread."""

    def __init__(self, binary: Path, work: Path, home: Path, threads: int, executor: str = "ForkingTaskExecutor") -> None:
        self.events = work / "events"
        config = work / "daggyd.json"
        config.write_text(
            json.dumps(
                {
                    "executor": {"name": executor, "config": {"threads": threads} if executor == "ForkingTaskExecutor" else {}},
                    "port": 0,
                    "logger": {"name": "OStreamLogger", "config": {"file": str(self.events)}},
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
        env["TRELLIS_HOME"] = str(home)
        self.proc = subprocess.Popen(
            [str(binary), "daggyd", "--config", str(config)],
            env=env,
            cwd=work,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        self.stderr: list[str] = []
        deadline = time.time() + 30
        url = None
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.stderr.append(line)
            m = re.search(r"daggyd listening on (http://[^/\s]+)/", line)
            if m:
                url = m.group(1)
                break
        if url is None:
            self.proc.kill()
            raise SystemExit("daggyd did not start:\n" + "".join(self.stderr[-20:]))
        self.url = url
        threading.Thread(target=self._drain, daemon=True).start()
        self.offset = 0  # how far the events file has been read
        self.pending = b""

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def mem(self) -> tuple[float, float, float, float]:
        """(VmRSS, VmHWM, RssAnon, RssFile) in MiB."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()

        def field(name: str) -> float:
            m = re.search(rf"^{name}:\s+(\d+) kB", text, re.M)
            return int(m.group(1)) / 1024 if m else float("nan")

        return field("VmRSS"), field("VmHWM"), field("RssAnon"), field("RssFile")

    def cpu(self) -> float:
        """User + system CPU seconds of the daemon itself (not its reaped children)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def post(self, spec: bytes) -> int:
        req = urllib.request.Request(
            self.url + "/v1/dagrun", data=spec, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            body = json.loads(resp.read())
        return int(body["runID"])

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=120) as resp:
            return json.loads(resp.read())

    def new_events(self) -> list[dict]:
        """Run-level event lines (no task_id) appended since the last call."""
        try:
            with open(self.events, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self.pending + chunk
        lines = data.split(b"\n")
        self.pending = lines.pop()  # an incomplete last line waits for the rest
        return [json.loads(line) for line in lines if line and b'"task_id"' not in line]

    def wait_ended(self, runs: set[int], timeout: float) -> dict[int, tuple[str, float]]:
        """Watches the events file until every run in `runs` reached a final state;
        run -> (state, perf_counter when seen)."""
        ended: dict[int, tuple[str, float]] = {}
        deadline = time.perf_counter() + timeout
        while len(ended) < len(runs):
            for ev in self.new_events():
                if ev.get("run_id") in runs and ev.get("state") in ("Completed", "Errored", "Killed"):
                    ended[ev["run_id"]] = (ev["state"], time.perf_counter())
            if len(ended) < len(runs):
                if time.perf_counter() > deadline:
                    raise SystemExit(f"runs {sorted(runs - ended.keys())[:10]} did not end in {timeout:.0f} s")
                if self.proc.poll() is not None:
                    raise SystemExit("daggyd died:\n" + "".join(self.stderr[-20:]))
                time.sleep(0.001)
        return ended


# --- workloads ----------------------------------------------------------------------------


def fanout_spec(n: int, command: list[str]) -> bytes:
    tasks = {f"t{i:05d}": {"details": {"command": command}} for i in range(n)}
    return json.dumps({"tags": {"bench": "fanout"}, "tasks": tasks}).encode()


def small_spec(i: int, command: list[str]) -> bytes:
    tasks = {
        "a": {"details": {"command": command}, "children": ["b"]},
        "b": {"details": {"command": command}, "children": ["c"]},
        "c": {"details": {"command": command}},
    }
    return json.dumps({"tags": {"bench": "submit", "i": str(i)}, "tasks": tasks}).encode()


def xargs_once(work: Path, n: int, parallel: int, command: list[str]) -> float:
    ids = work / f"ids-{n}"
    if not ids.exists():
        ids.write_text("".join(f"{i}\n" for i in range(n)))
    t = time.perf_counter()
    subprocess.run(
        ["xargs", "-P", str(parallel), "-n", "1", "-a", str(ids), "--", *command],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[0]


# --- main ---------------------------------------------------------------------------------


def page_cache(binary: Path, warm: bool) -> None:
    """Drops the binary from the page cache (as `echo 3 > drop_caches` would), then
    (warm) reads it back whole.

    A process's RssFile counts the pages of its binary it has mapped, and a page fault
    maps the cached neighbours of the page too (fault-around, whole folios where the cache
    holds large ones), so the daemon's idle VmRSS depends on how its 56 MB binary sits in
    the page cache. Dropping it first takes out what ran before; it does not make the
    figure steady: between starts of the same binary RssFile measured 11.4-15.0 MiB
    (mostly 11.4-11.9) while RssAnon stayed at 1.4 MiB. The table shows both."""
    fd = os.open(binary, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages (a binary just written) are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if warm:
            while os.read(fd, 1 << 20):
                pass
    finally:
        os.close(fd)


def burst(n: int, clients: int, one) -> tuple[list[float], float]:
    """Calls `one(i)` for i < n from `clients` threads; its results and the wall time."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        out = list(pool.map(one, range(n)))
    return out, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, default=DEFAULT_BIN, help="trellis binary (default: %(default)s)")
    ap.add_argument("--tasks", type=int, default=1000, help="tasks of the fan-out spec (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=10, help="ForkingTaskExecutor threads and xargs -P (default: %(default)s)")
    ap.add_argument("--reps", type=int, default=5, help="fan-out runs, and xargs runs; 0 skips the fan-out (default: %(default)s)")
    ap.add_argument("--specs", type=int, default=200, help="small specs posted in the burst; 0 skips it (default: %(default)s)")
    ap.add_argument("--clients", type=int, default=20, help="client threads posting them (default: %(default)s)")
    ap.add_argument("--command", default='["/bin/true"]', help="each task's command, a JSON list (default: %(default)s)")
    ap.add_argument("--home-dir", type=Path, help="where the TRELLIS_HOME goes (default: the temporary work dir); e.g. /dev/shm")
    ap.add_argument(
        "--warm",
        action="store_true",
        help="after dropping the binary from the page cache, read it back whole before the daemon starts (default: let its start page it in; see page_cache)",
    )
    ap.add_argument(
        "--noop",
        action="store_true",
        help="configure NoopTaskExecutor instead (tasks succeed without running): the API and store path alone, for diagnosis",
    )
    ap.add_argument("--json", type=Path, help="also write the raw samples here")
    args = ap.parse_args()

    binary = args.bin.resolve()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        print(f"error: {binary} is missing or not executable; build it first: cargo build --release", file=sys.stderr)
        return 2
    if shutil.which("xargs") is None:
        print("error: xargs is needed for the floor", file=sys.stderr)
        return 2
    command = json.loads(args.command)
    if not (isinstance(command, list) and command and all(isinstance(w, str) for w in command)):
        print("error: --command must be a JSON list of strings", file=sys.stderr)
        return 2

    print(f"binary: {binary}", file=sys.stderr)
    print(f"load before: {loadavg()}", file=sys.stderr)
    samples: dict = {"fanout_s": [], "xargs_s": [], "post_big_ms": [], "daemon_cpu_s": [], "submit_ms": [], "ready_ms": []}
    mem: list[tuple[str, tuple[float, float, float, float]]] = []
    with tempfile.TemporaryDirectory(prefix="trellis-daggyd-bench-") as tmp:
        work = Path(tmp)
        home_root = args.home_dir or work
        home_root.mkdir(parents=True, exist_ok=True)
        home = Path(tempfile.mkdtemp(prefix="daggyd-home-", dir=home_root))
        page_cache(binary, warm=args.warm)
        daemon = Daemon(binary, work, home, args.threads, "NoopTaskExecutor" if args.noop else "ForkingTaskExecutor")
        try:
            time.sleep(1.0)
            mem.append((f"idle, 1 s after start (binary {'read whole into' if args.warm else 'paged in by the start'})", daemon.mem()))
            print(f"idle: {mem[-1][1]}", file=sys.stderr)

            # -- fan-out against xargs, interleaved --
            big = fanout_spec(args.tasks, command)
            run = None
            for r in range(args.reps):
                x = xargs_once(work, args.tasks, args.threads, command)
                samples["xargs_s"].append(x)
                c0 = daemon.cpu()
                t0 = time.perf_counter()
                run = daemon.post(big)
                t1 = time.perf_counter()
                state, t2 = daemon.wait_ended({run}, timeout=600)[run]
                cpu = daemon.cpu() - c0
                if state != "Completed":
                    raise SystemExit(f"fan-out run {run} ended {state}")
                samples["fanout_s"].append(t2 - t0)
                samples["post_big_ms"].append((t1 - t0) * 1000)
                samples["daemon_cpu_s"].append(cpu)
                print(
                    f"  fan-out {r + 1}/{args.reps}: run {run} {(t2 - t0) * 1e3:.0f} ms"
                    f" (POST {(t1 - t0) * 1e3:.0f} ms, daemon CPU {cpu:.2f} s), xargs {x * 1e3:.0f} ms",
                    file=sys.stderr,
                    flush=True,
                )
            if run is not None:
                # One look through the API that the last run is whole.
                shown = daemon.get(f"/v1/dagrun/{run}")
                done = sum(1 for s in shown.get("taskStates", {}).values() if s == "Completed")
                if shown.get("state") != "Completed" or done != args.tasks:
                    print(f"warning: GET /v1/dagrun/{run}: state {shown.get('state')}, {done}/{args.tasks} tasks Completed", file=sys.stderr)
                time.sleep(2.0)
                mem.append((f"after the {args.reps} fan-out runs (2 s quiet)", daemon.mem()))

            # -- the clients' own floor: the same threads asking GET /ready --
            def ready(_: int) -> float:
                t = time.perf_counter()
                with urllib.request.urlopen(daemon.url + "/ready", timeout=60) as resp:
                    resp.read()
                return (time.perf_counter() - t) * 1000

            if args.specs:
                samples["ready_ms"], _ = burst(args.specs, args.clients, ready)

                # -- submit burst --
                specs = [small_spec(i, command) for i in range(args.specs)]

                def submit(i: int) -> tuple[int, float]:
                    t = time.perf_counter()
                    run = daemon.post(specs[i])
                    return run, (time.perf_counter() - t) * 1000

                c0 = daemon.cpu()
                t0 = time.perf_counter()
                results, posted = burst(args.specs, args.clients, submit)
                cpu_posting = daemon.cpu() - c0
                ended = daemon.wait_ended({r for r, _ in results}, timeout=600)
                cpu_burst = daemon.cpu() - c0
                drained = max(t for _, t in ended.values()) - t0
                bad = [r for r, (s, _) in ended.items() if s != "Completed"]
                samples["submit_ms"] = [ms for _, ms in results]
                time.sleep(2.0)
                mem.append(("after the submit burst (2 s quiet)", daemon.mem()))
            cpu_total = daemon.cpu()
        finally:
            daemon.stop()
            shutil.rmtree(home, ignore_errors=True)
    print(f"load after: {loadavg()}", file=sys.stderr)

    # -- report --
    executor = "NoopTaskExecutor (tasks do not run)" if args.noop else f"ForkingTaskExecutor threads {args.threads}"
    print(f"{os.cpu_count()} CPUs; {executor}; task command {json.dumps(command)}; TRELLIS_HOME under {args.home_dir or tempfile.gettempdir()}")
    print()
    verdicts: list[tuple[bool, str]] = []
    if args.reps:
        fan, xa = statistics.median(samples["fanout_s"]), statistics.median(samples["xargs_s"])
        ratio = fan / xa
        print(f"Fan-out: {args.tasks} independent tasks, {args.reps} runs each, interleaved; medians (min).")
        print()
        print("| | wall | per task | ratio |")
        print("|---|---:|---:|---:|")
        print(f"| `xargs -P {args.threads} -n 1` | {xa * 1e3:.0f} ms ({min(samples['xargs_s']) * 1e3:.0f}) | {xa / args.tasks * 1e3:.3f} ms | 1.00× |")
        print(
            f"| daggyd: POST → run `Completed` | {fan * 1e3:.0f} ms ({min(samples['fanout_s']) * 1e3:.0f})"
            f" | {fan / args.tasks * 1e3:.3f} ms | {ratio:.2f}× |"
        )
        print(
            f"| of which the POST (validate, record queued) | {statistics.median(samples['post_big_ms']):.0f} ms"
            f" ({min(samples['post_big_ms']):.0f}) | | |"
        )
        print(f"| daemon CPU per run (user+sys, without its children) | {statistics.median(samples['daemon_cpu_s']):.2f} s | | |")
        print()
        verdicts.append(
            (
                ratio <= FANOUT_RATIO_TARGET,
                f"fan-out ≤ {FANOUT_RATIO_TARGET}× xargs: {fan * 1e3:.0f} ms vs {FANOUT_RATIO_TARGET} × {xa * 1e3:.0f} ms"
                f" = {FANOUT_RATIO_TARGET * xa * 1e3:.0f} ms ({ratio:.2f}×)",
            )
        )
    if args.specs:
        lat, rdy = samples["submit_ms"], samples["ready_ms"]
        print(f"Submit: {args.specs} specs of 3 tasks (a chain) posted by {args.clients} client threads, a connection per request.")
        print()
        print("| | p50 | p90 | p99 | max |")
        print("|---|---:|---:|---:|---:|")
        for name, xs in ((f"`GET /ready`, {args.specs} by the same clients (their own floor)", rdy), ("`POST /v1/dagrun` round trip", lat)):
            print(
                f"| {name} | {percentile(xs, 50):.1f} ms | {percentile(xs, 90):.1f} ms"
                f" | {percentile(xs, 99):.1f} ms | {max(xs):.1f} ms |"
            )
        print()
        print(
            f"All {args.specs} posted in {posted * 1e3:.0f} ms ({args.specs / posted:.0f}/s; daemon CPU {cpu_posting:.2f} s);"
            f" all ended {drained * 1e3:.0f} ms after the first POST (daemon CPU {cpu_burst:.2f} s)"
            + (f"; {len(bad)} not Completed: {sorted(bad)[:10]}" if bad else "; every one Completed")
            + "."
        )
        print()
        p99 = percentile(lat, 99)
        verdicts.append((p99 < P99_TARGET_MS, f"submit p99 < {P99_TARGET_MS:.0f} ms: {p99:.1f} ms"))
    print("| memory | VmRSS | VmHWM | RssAnon | RssFile |")
    print("|---|---:|---:|---:|---:|")
    for name, (rss, hwm, anon, file) in mem:
        print(f"| {name} | {rss:.1f} MiB | {hwm:.1f} MiB | {anon:.1f} MiB | {file:.1f} MiB |")
    print()
    print(f"daemon CPU over the whole benchmark: {cpu_total:.2f} s")
    print()
    idle = mem[0][1][0]
    verdicts.append((idle <= IDLE_RSS_TARGET_MIB, f"idle RSS ≤ {IDLE_RSS_TARGET_MIB:.0f} MiB: {idle:.1f} MiB"))
    for ok, text in verdicts:
        print(f"{'PASS' if ok else 'MISS'}: {text}")
    if args.json:
        samples["memory"] = mem
        args.json.write_text(json.dumps(samples, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
