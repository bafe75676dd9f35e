#!/usr/bin/env python3
"""Chaos suite: Trellis under repeated faults, counted (Python 3.11, standard library only).

Builds nothing; it runs an existing binary (default `target/release/trellis`):

    cargo build --release && python3 chaos/run.py                  # 50 trials of each
    python3 chaos/run.py --trials 2 --quick --bin target/debug/trellis   # what CI runs

Every trial starts fresh processes on loopback in a new TRELLIS_HOME (and, for the
PostgreSQL rows, a fresh database on a throwaway server), injects one fault with
`kill -9`, `pg_ctl stop -m immediate` or a full tmpfs, lets the system recover, and counts:

- lost: runs that should have succeeded and did not (or vanished);
- duplicated: a run id recorded twice, or a step that ran twice at once;
- re-run: a step that completed, then ran again because its runner died before recording
  the end (the at-least-once window between a process's exit and its record; shown, not
  counted as a failure);
- stuck: runs not final by the trial's deadline;
- corrupted: records `trellis history`/`status` cannot read;
- limit: the most runs of the queue seen running at once, against its limit.

Steps report themselves: each appends `S|E <run> <step> <pid> <ns>` to an events file
(one short `write` with O_APPEND, atomic), from which overlaps and concurrency are read.

Prints a markdown table (one row per scenario and backend) and exits 1 if any count is
not zero, 2 if it cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from database import free_port, start_postgres  # noqa: E402

DEFAULT_BIN = REPO / "target" / "release" / "trellis"

# A step that reports its start and end, sleeping SECS in between.
# A stopped step (SIGTERM) reports its end too; a killed one (SIGKILL) cannot, and ends at
# the fault.
STEP = (
    "end() {{ echo \"E $DAG_RUN_ID {name} $$ $(date +%s%N)\" >> \"$EV\"; }}; "
    "trap \"end; exit 143\" TERM; "
    "echo \"S $DAG_RUN_ID {name} $$ $(date +%s%N)\" >> \"$EV\"; sleep {secs} & wait; end"
)


def step_yaml(name: str, secs: float) -> str:
    return f"  - name: {name}\n    command: '{STEP.format(name=name, secs=secs)}'\n"


@dataclass
class Counts:
    trials: int = 0
    faults: int = 0
    lost: int = 0
    duplicated: int = 0
    stuck: int = 0
    corrupted: int = 0
    rerun: int = 0
    limit_seen: int = 0
    limit: int | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, other: "Counts") -> None:
        self.trials += other.trials
        self.faults += other.faults
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.stuck += other.stuck
        self.corrupted += other.corrupted
        self.rerun += other.rerun
        self.limit_seen = max(self.limit_seen, other.limit_seen)
        self.limit = other.limit if other.limit is not None else self.limit
        self.notes.extend(other.notes)
        self.seconds += other.seconds

    def bad(self) -> bool:
        over = self.limit is not None and self.limit_seen > self.limit
        return bool(self.lost or self.duplicated or self.stuck or self.corrupted or over)


class Proc:
    """A long-running trellis process logging to a file; its group is killed at the end."""

    def __init__(self, world: "World", args: list[str], ready: str | None, env: dict | None = None):
        self.log = world.dir / f"{args[0]}-{world.next_id()}.log"
        self.proc = subprocess.Popen(
            [str(world.binary), *args],
            env=dict(world.env, **(env or {})),
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        world.procs.append(self)
        if ready:
            self.wait_for(ready, 30)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, secs: float) -> None:
        deadline = time.monotonic() + secs
        while text not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.log.name}: never said {text!r}:\n{self.text()[-2000:]}")
            time.sleep(0.02)

    def kill9(self) -> None:
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


class World:
    """One trial's home, dags dir, events file, database and processes."""

    def __init__(self, binary: Path, base: Path, url: str | None, config: str = ""):
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="trial-", dir=base))
        self.home, self.dags = self.dir / "home", self.dir / "dags"
        self.dags.mkdir(parents=True)
        self.events = self.dir / "events"
        self.events.touch()
        (self.dir / "config.yaml").write_text(config)
        self.env = dict(
            os.environ,
            TRELLIS_HOME=str(self.home),
            TRELLIS_DAGS_DIR=str(self.dags),
            TRELLIS_CONFIG=str(self.dir / "config.yaml"),
            EV=str(self.events),
        )
        self.env.pop("RUST_LOG", None)
        if url:
            self.env["TRELLIS_DATABASE_URL"] = url
        self.procs: list[Proc] = []
        self._n = 0

    def next_id(self) -> int:
        self._n += 1
        return self._n

    def dag(self, name: str, head: str, steps: str) -> Path:
        path = self.dags / f"{name}.yaml"
        path.write_text(head + "steps:\n" + steps)
        return path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([str(self.binary), *args], env=self.env, capture_output=True, text=True, timeout=120)
        if check and out.returncode != 0:
            raise RuntimeError(f"trellis {' '.join(args)}: exit {out.returncode}: {out.stderr[-1500:]}")
        return out

    def enqueue(self, dag: Path, ids: list[str]) -> None:
        for run_id in ids:
            self.run("enqueue", "-r", run_id, str(dag))

    def history(self, dag: str) -> list[dict] | None:
        """The DAG's runs as `trellis history --json` shows them; None if unreadable."""
        out = self.run("history", dag, "--json", "--limit", "100000", check=False)
        try:
            return json.loads(out.stdout) if out.returncode == 0 else None
        except ValueError:
            return None

    def close(self) -> None:
        for p in self.procs:
            p.stop()


def events(path: Path) -> list[tuple[str, str, str, int, int]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] in ("S", "E"):
            out.append((parts[0], parts[1], parts[2], int(parts[3]), int(parts[4])))
    return out


def intervals(evs, fault_ns: int | None) -> list[tuple[str, str, int, int, bool]]:
    """(run, step, start, end, ended) per execution; one never ended is taken to have died
    at the fault (or runs on, if its process is still alive)."""
    starts = {}
    out = []
    for kind, run, step, pid, ns in evs:
        if kind == "S":
            starts[pid] = (run, step, ns)
        elif pid in starts:
            r, s, t = starts.pop(pid)
            out.append((r, s, t, ns, True))
    far = time.time_ns() + 10**12
    for pid, (r, s, t) in starts.items():
        alive = process_alive(pid)
        end = far if alive or fault_ns is None else max(t, fault_ns)
        out.append((r, s, t, end, False))
    return out


def process_alive(pid: int) -> bool:
    """Running, not a zombie (a killed step re-parented to an init that does not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def twice_at_once(iv) -> int:
    """Executions of one (run, step) that overlapped in time."""
    by = {}
    for r, s, t, e, _ in iv:
        by.setdefault((r, s), []).append((t, e))
    n = 0
    for spans in by.values():
        spans.sort()
        n += sum(1 for a, b in zip(spans, spans[1:]) if b[0] < a[1])
    return n


def most_at_once(iv) -> int:
    points = sorted([(t, 1) for _, _, t, _, _ in iv] + [(e, -1) for _, _, _, e, _ in iv])
    cur = best = 0
    for _, d in points:
        cur += d
        best = max(best, cur)
    return best


def settle(world: World, dag: str, ids: set[str], secs: float) -> tuple[list[dict] | None, bool]:
    """Waits until every run of `ids` is final; (history, all final in time)."""
    deadline = time.monotonic() + secs
    while True:
        runs = world.history(dag)
        if runs is not None:
            final = {r["run_id"] for r in runs if r.get("status") in FINAL}
            if ids <= final:
                return runs, True
        if time.monotonic() > deadline:
            return runs, False
        time.sleep(0.25)


FINAL = {"succeeded", "failed", "aborted", "cancelled", "partially_succeeded", "skipped"}


def judge(world: World, dag: str, ids: list[str], runs: list[dict] | None, in_time: bool,
          must_succeed: bool, fault_ns: int | None) -> Counts:
    c = Counts(trials=1, faults=1)
    if runs is None:
        c.corrupted += 1
        c.notes.append("history unreadable")
        return c
    seen: dict[str, int] = {}
    for r in runs:
        seen[r["run_id"]] = seen.get(r["run_id"], 0) + 1
        if world.run("status", dag, "-r", r["run_id"], "--json", check=False).returncode not in (0, 1):
            c.corrupted += 1
    c.duplicated += sum(n - 1 for n in seen.values() if n > 1)
    status = {r["run_id"]: r.get("status") for r in runs}
    for run_id in ids:
        st = status.get(run_id)
        if st is None or (must_succeed and st in FINAL and st != "succeeded"):
            c.lost += 1
            c.notes.append(f"{run_id}: {st}")
        elif st not in FINAL:
            c.stuck += 1
    if not in_time and not c.stuck:
        c.stuck += sum(1 for i in ids if status.get(i) not in FINAL)
    iv = intervals(events(world.events), fault_ns)
    completed: dict[tuple[str, str], int] = {}
    for r, s, _, _, ended in iv:
        if ended:
            completed[(r, s)] = completed.get((r, s), 0) + 1
    c.rerun += sum(n - 1 for n in completed.values() if n > 1)
    c.duplicated += twice_at_once(iv)
    c.limit_seen = most_at_once(iv)
    return c


# --- scenarios ------------------------------------------------------------------------------


def scheduler_kill(binary, base, url, quick) -> Counts:
    """kill -9 of the leading scheduler mid-drain, two standbys; per-DAG limit 3."""
    n, limit = (40 if quick else 200), 3
    w = World(binary, base, url)
    try:
        dag = w.dag("drain", f"max_active_runs: {limit}\n", step_yaml("one", 0.02))
        ids = [f"c{i:04}" for i in range(n)]
        w.enqueue(dag, ids)
        scheds = [Proc(w, ["scheduler", "--id", f"s{i}"], None) for i in range(3)]
        leader = wait_leader(scheds)
        wait_events(w, "E", n // 3, 60)
        fault = time.time_ns()
        leader.kill9()
        Proc(w, ["scheduler", "--id", "s9"], None)
        runs, in_time = settle(w, "drain", set(ids), 120)
        c = judge(w, "drain", ids, runs, in_time, True, fault)
        c.limit = limit
        return c
    finally:
        w.close()


def wait_leader(procs: list[Proc]) -> Proc:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for p in procs:
            if "leading" in p.text():
                return p
        time.sleep(0.02)
    raise RuntimeError("no scheduler leads:\n" + "\n".join(p.text()[-500:] for p in procs))


def wait_events(w: World, kind: str, count: int, secs: float) -> None:
    deadline = time.monotonic() + secs
    while sum(1 for e in events(w.events) if e[0] == kind) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} {kind} events after {secs} s")
        time.sleep(0.01)


def cluster(w: World, lease: int) -> tuple[Proc, int]:
    port = free_port()
    coord = Proc(w, ["coordinator", "--coordinator.port", str(port), "--coordinator.lease-timeout", str(lease)],
                 "coordinator listening on")
    Proc(w, ["scheduler"], "leading")
    return coord, port


def worker(w: World, wid: str) -> Proc:
    return Proc(w, ["worker", "--worker.id", wid, "--worker.labels", "pool=x", "--worker.max-active-runs", "4"],
                "registered with the coordinator")


def worker_kill(binary, base, url, quick) -> Counts:
    """kill -9 of a worker mid-step; runs resume elsewhere (one retry) within the lease."""
    lease, n = 2, (4 if quick else 8)
    w = World(binary, base, url)
    try:
        cluster(w, lease)
        a = worker(w, "w-a")
        head = "worker_selector: {pool: x}\nretry_policy: {limit: 1, interval_sec: 0}\ntype: chain\n"
        dag = w.dag("work", head, step_yaml("one", 4) + step_yaml("two", 0.2))
        ids = [f"k{i:03}" for i in range(n)]
        w.enqueue(dag, ids)
        wait_events(w, "S", 1, 30)
        worker(w, "w-b")
        fault = time.time_ns()
        a.kill9()
        runs, in_time = settle(w, "work", set(ids), lease + 10 + 4 * n)
        return judge(w, "work", ids, runs, in_time, True, fault)
    finally:
        w.close()


def coordinator_kill(binary, base, url, quick) -> Counts:
    """kill -9 of the coordinator mid-step, restarted: no running step killed or repeated."""
    n = 4
    w = World(binary, base, url)
    try:
        coord, port = cluster(w, 30)
        worker(w, "w-a")
        dag = w.dag("steady", "worker_selector: {pool: x}\n", step_yaml("one", 2))
        ids = [f"q{i:03}" for i in range(n)]
        w.enqueue(dag, ids)
        wait_events(w, "S", n, 30)
        coord.kill9()
        time.sleep(0.5)  # the fault lasts a moment: workers see the coordinator gone
        Proc(w, ["coordinator", "--coordinator.port", str(port)], "coordinator listening on")
        runs, in_time = settle(w, "steady", set(ids), 60)
        c = judge(w, "steady", ids, runs, in_time, True, None)
        starts = sum(1 for e in events(w.events) if e[0] == "S")
        if starts != n:
            c.duplicated += starts - n
            c.notes.append(f"{starts} step starts for {n} steps")
        return c
    finally:
        w.close()


def server_kill(binary, base, url, quick) -> Counts:
    """kill -9 of the server while clients start, stop and retry runs through the API."""
    w = World(binary, base, url)
    try:
        w.dag("api", "", step_yaml("one", 0.3))
        port = free_port()
        Proc(w, ["server", "--port", str(port)], "server listening on")
        started: list[str] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                run_id = api(port, "POST", "/api/v2/dags/api/start", {})
                if run_id:
                    started.append(run_id)
                    if len(started) % 3 == 0:
                        api(port, "POST", f"/api/v2/dag-runs/api/{run_id}/stop", {})
                    if len(started) % 5 == 0 and len(started) > 5:
                        api(port, "POST", f"/api/v2/dag-runs/api/{started[-5]}/retry", {})

        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(random.uniform(0.5, 1.5))
        w.procs[-1].kill9()
        stop.set()
        for t in threads:
            t.join()
        Proc(w, ["server", "--port", str(port)], "server listening on")
        runs, in_time = settle(w, "api", set(started), 60)
        c = judge(w, "api", started, runs, in_time, False, None)
        c.notes.append(f"{len(started)} runs started through the API")
        return c
    finally:
        w.close()


def api(port: int, method: str, path: str, body: dict) -> str | None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"{}").get("run_id") or ""
    except Exception:
        return None


def pg_outage(binary, base, url, quick) -> Counts:
    """PostgreSQL stopped mid-drain (20 s, or 5 s quick), then started again."""
    n, limit = (40 if quick else 200), 4
    w = World(binary, base, url.url)
    try:
        dag = w.dag("drain", f"max_active_runs: {limit}\n", step_yaml("one", 0.02))
        ids = [f"p{i:04}" for i in range(n)]
        w.enqueue(dag, ids)
        Proc(w, ["scheduler"], "leading")
        wait_events(w, "E", n // 3, 60)
        url.stop()
        time.sleep(5 if quick else 20)
        url.start()
        runs, in_time = settle(w, "drain", set(ids), 180)
        c = judge(w, "drain", ids, runs, in_time, True, None)
        c.limit = limit
        return c
    finally:
        w.close()


def full_disk(binary, base, url, quick) -> Counts:
    """The home on an 8 MiB tmpfs, filled up while runs start; then space comes back."""
    mount = Path(tempfile.mkdtemp(prefix="full-", dir=base))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)]).returncode != 0:
        return Counts(notes=["cannot mount a tmpfs (needs root): skipped"])
    w = World(binary, base, None)
    try:
        w.env["TRELLIS_HOME"] = str(mount)
        dag = w.dag("full", "", step_yaml("one", 0) + "  - name: two\n    command: head -c 20000 /dev/zero\n")
        before = [f"b{i:02}" for i in range(3)]
        for run_id in before:
            w.run("start", "-q", "-r", run_id, str(dag))
        subprocess.run(["sh", "-c", f"head -c 100000000 /dev/zero > {mount}/ballast"], capture_output=True)
        during = [f"d{i:02}" for i in range(3 if quick else 10)]
        c = Counts(trials=1, faults=1)
        refused = 0
        for run_id in during:
            out = w.run("start", "-q", "-r", run_id, str(dag), check=False)
            if out.returncode != 0:
                refused += 1
                if "No space left" not in out.stderr and "space" not in out.stderr:
                    c.notes.append(f"unclear error for a full disk: {out.stderr.strip()[-200:]!r}")
                    c.corrupted += 1
        (mount / "ballast").unlink()
        runs = w.history("full")
        if runs is None:
            c.corrupted += 1
            return c
        for r in runs:
            if w.run("status", "full", "-r", r["run_id"], "--json", check=False).returncode not in (0, 1):
                c.corrupted += 1
            if r.get("status") not in FINAL:
                c.stuck += 1
        ok = {r["run_id"] for r in runs if r.get("status") == "succeeded"}
        c.lost += sum(1 for i in before if i not in ok)
        after = w.run("start", "-q", "-r", "after", str(dag), check=False)
        if after.returncode != 0:
            c.lost += 1
            c.notes.append("a run after space came back failed: " + after.stderr[-300:])
        c.notes.append(f"{refused} of {len(during)} runs on a full disk refused with an error")
        return c
    finally:
        w.close()
        subprocess.run(["umount", "-l", str(mount)])


def many_under_limits(binary, base, url, quick) -> Counts:
    """Many queued runs of 4 DAGs sharing a queue: global 6, per-DAG 2, never exceeded."""
    n = 200 if quick else 10000
    w = World(binary, base, url, config="run_queue:\n  max_concurrent_runs: 6\n")
    try:
        dags = [w.dag(f"m{i}", "max_active_runs: 2\n", step_yaml("one", 0.01)) for i in range(4)]
        ids = {d.stem: [f"{d.stem}-{j:05}" for j in range(n // 4)] for d in dags}
        for d in dags:
            w.enqueue(d, ids[d.stem])
        Proc(w, ["scheduler"], "leading")
        c = Counts(trials=1, faults=0, limit=6)
        for d in dags:
            runs, in_time = settle(w, d.stem, set(ids[d.stem]), 60 + n * 0.05)
            part = judge(w, d.stem, ids[d.stem], runs, in_time, True, None)
            part.faults = 0
            per_dag = most_at_once([i for i in intervals(events(w.events), None) if i[0].startswith(d.stem + "-")])
            if per_dag > 2:
                part.notes.append(f"{d.stem}: {per_dag} at once (limit 2)")
                part.duplicated += 0
                part.limit_seen = 99
            c.add(part)
        c.trials = 1
        c.limit_seen = max(c.limit_seen, most_at_once(intervals(events(w.events), None)))
        return c
    finally:
        w.close()


SCENARIOS = {
    "worker-kill": (worker_kill, ("file", "postgres")),
    "scheduler-kill": (scheduler_kill, ("file", "postgres")),
    "coordinator-kill": (coordinator_kill, ("file", "postgres")),
    "server-kill": (server_kill, ("file", "postgres")),
    "postgres-outage": (pg_outage, ("postgres",)),
    "full-disk": (full_disk, ("file",)),
    "many-under-limits": (many_under_limits, ("file", "postgres")),
}


class Database:
    """A throwaway PostgreSQL server; a fresh database per trial."""

    def __init__(self, base: Path):
        self.dir = base / "pg"
        self.dir.mkdir()
        url, self._stop = start_postgres(self.dir)
        self.server = url.rsplit("/", 1)[0]
        self.n = 0

    def fresh(self) -> "DbHandle":
        self.n += 1
        name = f"chaos{self.n}"
        subprocess.run(["psql", "-X", "-q", f"{self.server}/postgres", "-c", f"CREATE DATABASE {name}"], check=True)
        return DbHandle(self, f"{self.server}/{name}")

    def close(self) -> None:
        self._stop()


class DbHandle:
    def __init__(self, db: Database, url: str):
        self.db, self.url = db, url

    def stop(self) -> None:
        self.db._stop()

    def start(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: float(p.parent.name))
        data = self.db.dir / "data"
        port = self.db.server.rsplit(":", 1)[1]
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {self.db.dir} -c fsync=off -c full_page_writes=off"
        subprocess.run(as_user + [str(bins[-1] / "pg_ctl"), "-D", str(data), "-l", str(self.db.dir / "server.log"),
                                  "-w", "-o", opts, "start"], check=True, capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, default=DEFAULT_BIN)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only this scenario (repeatable)")
    ap.add_argument("--backend", choices=["file", "postgres", "both"], default="both")
    ap.add_argument("--quick", action="store_true", help="smaller runs and outages (CI)")
    args = ap.parse_args()
    binary = args.bin.resolve()
    if not os.access(binary, os.X_OK):
        print(f"error: {binary} is missing; build it first (cargo build --release)", file=sys.stderr)
        return 2
    rows: list[tuple[str, str, Counts]] = []
    with tempfile.TemporaryDirectory(prefix="trellis-chaos-") as tmp:
        base = Path(tmp)
        base.chmod(0o755)  # the throwaway PostgreSQL runs as `postgres` when we are root
        db = None
        try:
            for name in args.only or list(SCENARIOS):
                fn, backends = SCENARIOS[name]
                for backend in backends:
                    if args.backend not in ("both", backend):
                        continue
                    if backend == "postgres" and db is None:
                        db = Database(base)
                    total = Counts()
                    for i in range(args.trials):
                        t0 = time.monotonic()
                        url = db.fresh() if backend == "postgres" else None
                        try:
                            arg = url if name == "postgres-outage" else (url.url if url else None)
                            c = fn(binary, base, arg, args.quick)
                        except RuntimeError as e:
                            c = Counts(trials=1, faults=1, stuck=1, notes=[f"trial {i + 1}: {e}"[:600]])
                        c.seconds = time.monotonic() - t0
                        total.add(c)
                        print(f"  {name} [{backend}] trial {i + 1}/{args.trials}: lost {c.lost} dup {c.duplicated}"
                              f" stuck {c.stuck} corrupt {c.corrupted} ({c.seconds:.1f} s)", file=sys.stderr, flush=True)
                    rows.append((name, backend, total))
        finally:
            if db:
                db.close()
    print()
    print("| scenario | backend | trials | faults injected | runs lost | duplicated | stuck | corrupted | steps re-run | most running at once (limit) | seconds per trial |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, backend, c in rows:
        lim = f"{c.limit_seen} ({c.limit})" if c.limit is not None else "—"
        per = c.seconds / c.trials if c.trials else 0
        print(f"| {name} | {backend} | {c.trials} | {c.faults} | {c.lost} | {c.duplicated} | {c.stuck} | {c.corrupted} | {c.rerun} | {lim} | {per:.1f} |")
    bad = [(n, b, c) for n, b, c in rows if c.bad()]
    for n, b, c in rows:
        for note in dict.fromkeys(c.notes):
            print(f"note {n} [{b}]: {note}")
    if bad:
        print(f"\nFAIL: {len(bad)} row(s) with runs lost, duplicated, stuck, corrupted or over a limit")
        return 1
    print("\nOK: 0 lost, 0 duplicated, 0 stuck, 0 corrupted in every row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
