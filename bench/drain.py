#!/usr/bin/env python3
"""Cluster drain throughput and idle worker memory (Python 3.11, standard library only).

Builds nothing; build first:

    cargo build --release && python3 bench/drain.py

On a fresh TRELLIS_HOME it starts a `trellis coordinator` and W workers (default 10, each
`--worker.max-active-runs S`, default 10), enqueues N single-step runs (default 1000; the
DAG is `true` with `worker_selector: {pool: bench}` and `max_active_runs: -1`) while no
scheduler runs, then starts `trellis scheduler` and measures the time from the moment it
leads until every run has finished (each step appends one line to a file; then every run's
status is checked with `trellis history --json`). Throughput = N / that time.

With `--shared-nothing` each worker gets a home of its own and `--worker.coordinators`, and
the coordinator serves mTLS (certificates made with the `openssl` command) with a signing
key: records and logs are relayed over gRPC instead of written to a shared directory.

It also reports each worker's resident memory (VmRSS) after it has been idle for a few
seconds, before any work, and the peak (VmHWM) after the drain.

Prints a markdown table and PASS/MISS lines for the targets (≥ 200 runs/s; idle worker
RSS ≤ 15 MB). Exits 0 once it has run, 2 if it cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BIN = REPO / "target" / "release" / "trellis"


def wait_line(path: Path, text: bytes, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while text not in path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start:\n" + path.read_text())
        time.sleep(0.01)


def mem_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


KEY = "bench-signing-key-0123456789abcdef"


def make_certs(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with openssl."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=bench CA")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", "san.cnf")


def spawn(binary: Path, args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(binary), *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, default=DEFAULT_BIN)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--slots", type=int, default=10)
    ap.add_argument("--keep", action="store_true", help="keep the work dir (printed) for inspection")
    ap.add_argument("--shared-nothing", action="store_true",
                    help="workers with their own homes, relaying over mTLS with a signing key")
    args = ap.parse_args()
    if not args.bin.exists():
        print(f"no binary at {args.bin}; build it with `cargo build --release`", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="trellis-drain-"))
    home, dags = work / "home", work / "dags"
    dags.mkdir()
    done_file = work / "done.log"
    dag = dags / "drain.yaml"
    dag.write_text("max_active_runs: -1\nworker_selector: {pool: bench}\nsteps:\n"
                   f"  - name: s\n    command: echo x >> {done_file}\n")
    env = dict(os.environ, TRELLIS_HOME=str(home))
    for var in ("TRELLIS_CONFIG", "TRELLIS_DAGS_DIR"):
        env.pop(var, None)
    procs: list[subprocess.Popen] = []
    coord_args = ["coordinator", "--coordinator.port", "0"]
    pki = work / "pki"
    if args.shared_nothing:
        pki.mkdir()
        make_certs(pki)
        coord_args += ["--coordinator.tls-cert", str(pki / "server.pem"), "--coordinator.tls-key",
                       str(pki / "server.key"), "--coordinator.tls-ca", str(pki / "ca.pem"),
                       "--coordinator.signing-key", KEY]
        env["TRELLIS_COORDINATOR_SIGNING_KEY"] = KEY
    try:
        coord = spawn(args.bin, coord_args, env, work / "coordinator.log")
        procs.append(coord)
        wait_line(work / "coordinator.log", b"listening on", coord, "the coordinator")
        workers = []
        addr = ""
        if args.shared_nothing:
            line = (work / "coordinator.log").read_text().split("listening on ")[1].split()[0]
            addr = line
        for i in range(args.workers):
            log = work / f"worker{i}.log"
            wargs = ["worker", "--worker.id", f"bench-{i}", "--worker.labels", "pool=bench",
                     "--worker.max-active-runs", str(args.slots)]
            wenv = env
            if args.shared_nothing:
                wargs += ["--worker.coordinators", addr, "--worker.tls-ca", str(pki / "ca.pem"),
                          "--worker.tls-cert", str(pki / "client.pem"), "--worker.tls-key",
                          str(pki / "client.key")]
                wenv = dict(env, TRELLIS_HOME=str(work / f"worker-home-{i}"))
            w = spawn(args.bin, wargs, wenv, log)
            procs.append(w)
            workers.append(w)
            wait_line(log, b"registered", w, f"worker {i}")
        time.sleep(3)
        idle_rss = [mem_kib(w.pid, "VmRSS") for w in workers]
        t_enqueue = time.monotonic()
        for _ in range(args.runs):
            subprocess.run([str(args.bin), "enqueue", str(dag)], env=env, capture_output=True, check=True)
        enqueue_s = time.monotonic() - t_enqueue
        sched = spawn(args.bin, ["scheduler", "--dags", str(dags), "--id", "bench"], env, work / "scheduler.log")
        procs.append(sched)
        wait_line(work / "scheduler.log", b"leading", sched, "the scheduler")
        t0 = time.monotonic()
        deadline = t0 + 600
        while (done_file.read_text().count("\n") if done_file.exists() else 0) < args.runs:
            if time.monotonic() > deadline:
                print("the drain did not finish in 10 minutes", file=sys.stderr)
                return 2
            time.sleep(0.005)
        steps_s = time.monotonic() - t0
        # Every run recorded as finished (the last snapshot follows the step's end closely).
        while True:
            out = subprocess.run([str(args.bin), "history", "--json", "-l", str(args.runs + 10), "drain"],
                                 env=env, capture_output=True)
            runs = json.loads(out.stdout or b"[]")
            finished = [r for r in runs if r["status"] not in ("queued", "running", "not_started")]
            if len(finished) >= args.runs or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        runs_s = time.monotonic() - t0
        ok = sum(1 for r in finished if r["status"] == "succeeded")
        peak_rss = [mem_kib(w.pid, "VmHWM") for w in workers]
        cpu = {"scheduler": cpu_s(sched.pid), "coordinator": cpu_s(coord.pid),
               "workers (sum)": sum(cpu_s(w.pid) for w in workers)}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    rate = args.runs / steps_s
    mode = "shared-nothing, mTLS, signing key" if args.shared_nothing else "shared filesystem"
    print(f"# Drain: {args.runs} queued single-step runs, {args.workers} workers x {args.slots} slots, {mode}")
    print()
    print(f"binary {args.bin}; {platform.platform()}; {os.cpu_count()} CPUs")
    print()
    print("| measure | value |")
    print("|---|---:|")
    print(f"| enqueue {args.runs} runs (one `trellis enqueue` process each) | {enqueue_s:.1f} s |")
    print(f"| scheduler leads → every step done | {steps_s:.2f} s |")
    print(f"| throughput (steps done) | {rate:.0f} runs/s |")
    print(f"| scheduler leads → every run recorded finished | {runs_s:.2f} s ({args.runs / runs_s:.0f} runs/s) |")
    print(f"| runs succeeded | {ok}/{args.runs} |")
    print(f"| idle worker RSS (min / max) | {min(idle_rss) / 1024:.1f} / {max(idle_rss) / 1024:.1f} MiB |")
    print(f"| worker peak RSS after the drain (max) | {max(peak_rss) / 1024:.1f} MiB |")
    for name, secs in cpu.items():
        print(f"| CPU time, {name} (incl. steps) | {secs:.1f} s |")
    print()
    print(f"{'PASS' if rate >= 200 else 'MISS'}: drain ≥ 200 runs/s: {rate:.0f} runs/s")
    print(f"{'PASS' if max(idle_rss) <= 15 * 1024 else 'MISS'}: idle worker RSS ≤ 15 MB: "
          f"{max(idle_rss) / 1024:.1f} MiB")
    if args.keep:
        print(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
