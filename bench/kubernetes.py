#!/usr/bin/env python3
"""Kubernetes steps: how long from a step's start to its Job existing in the API server.

    python3 bench/kubernetes.py --bin target/release/trellis [--steps 50] [--runs 3]

Starts the stand-in cluster the tests use (crates/testdb/kube/cluster.py: kmock's in-memory
API emulator with a Job controller and a kubelet that runs pods as local processes; NOT a
real API server), then runs two DAGs of `type: kubernetes` steps whose command is `true`:

- parallel: N independent steps (all Jobs created at once);
- chain: N steps one after another (one Job at a time).

For each step, the latency is the Job's arrival at the API server (the stand-in stamps
each create it validates) minus the step's `started_at` in `trellis status --json`: what
Trellis spends between deciding to run a step and the cluster knowing of it (reading the
options, the client, the request). Prints p50, p99 and max per DAG, over all runs, and
the wall time of each DAG. The stand-in's own latency is included (Python, one core); the
row `POST alone` is that latency by itself (a client POSTing Jobs one at a time). The
stand-in saturates one core at about ten Jobs in flight: the parallel row then measures
its queueing more than Trellis.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = Path.home() / ".cache/trellis-ci/py-kube"


def stand_in(base: Path) -> tuple[subprocess.Popen, str]:
    base.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(PY))
    if subprocess.run([sys.executable, "-c", "import kmock, kubernetes_validate"], env=env).returncode:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(PY),
                        "kmock==0.8", "kubernetes-validate==1.37.0"], check=True)
    proc = subprocess.Popen([sys.executable, str(ROOT / "crates/testdb/kube/cluster.py"), str(base)],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(base / "cluster.log", "w"))
    for _ in range(600):
        if (base / "url").exists():
            return proc, (base / "url").read_text().strip()
        time.sleep(0.05)
    raise SystemExit("the stand-in did not start: " + (base / "cluster.log").read_text())


def floor(url: str, n: int) -> list[float]:
    """The stand-in's own time to take a Job: N sequential POSTs of a minimal valid Job."""
    import urllib.request
    out = []
    for i in range(n):
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"floor-{i}"},
               "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                   {"name": "step", "image": "busybox:1.36", "command": ["true"]}]}}}}
        req = urllib.request.Request(f"{url}/apis/batch/v1/namespaces/default/jobs",
                                     data=json.dumps(job).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        began = time.monotonic()
        urllib.request.urlopen(req).read()
        out.append(1000 * (time.monotonic() - began))
    return out


def stamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run(binary: str, home: Path, name: str, yaml: str, base: Path) -> tuple[list[float], float]:
    dags = home / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    (dags / f"{name}.yaml").write_text(yaml)
    env = dict(os.environ, TRELLIS_HOME=str(home), TRELLIS_DAGS_DIR=str(dags))
    began = time.monotonic()
    subprocess.run([binary, "start", "-q", str(dags / f"{name}.yaml")], env=env, check=True)
    wall = time.monotonic() - began
    status = json.loads(subprocess.run([binary, "status", "--json", name], env=env, check=True,
                                       capture_output=True, text=True).stdout)
    started = {s["name"]: stamp(s["started_at"]) for s in status["steps"] if s.get("started_at")}
    created = {}
    for line in (base / "validated.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] != "Job":
            continue
        notes = rec["object"]["metadata"].get("annotations") or {}
        if notes.get("trellis.dev/run_id") == status["run_id"]:
            created[notes["trellis.dev/step"]] = rec["at"]
    latencies = [1000 * (created[s] - started[s]) for s in started if s in created]
    if len(latencies) != len(started):
        raise SystemExit(f"{name}: {len(started)} steps, {len(latencies)} Jobs seen")
    return latencies, wall


def dag(kubeconfig: Path, steps: int, chain: bool) -> str:
    lines = ["type: chain" if chain else "type: graph",
             f"kubernetes: {{kubeconfig: {kubeconfig}, image: busybox:1.36}}", "steps:"]
    for i in range(steps):
        lines += [f"  - name: s{i}", "    type: kubernetes", '    command: "true"']
    return "\n".join(lines) + "\n"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target/release/trellis"))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="trellis-kbench-") as tmp:
        base = Path(tmp)
        proc, url = stand_in(base / "cluster")
        try:
            kubeconfig = base / "kubeconfig"
            kubeconfig.write_text(
                f"apiVersion: v1\nkind: Config\nclusters:\n- name: s\n  cluster:\n    server: {url}\n"
                "contexts:\n- name: s\n  context: {cluster: s, user: u}\ncurrent-context: s\n"
                "users:\n- name: u\n  user: {}\n")
            rows = []
            alone = floor(url, 30)
            rows.append(("POST alone", len(alone), statistics.median(alone), pct(alone, 99),
                         max(alone), float("nan")))
            for label, chain in [("parallel", False), ("chain", True)]:
                lat, walls = [], []
                for i in range(args.runs):
                    got, wall = run(args.bin, base / f"home-{label}-{i}", f"k{label}",
                                    dag(kubeconfig, args.steps, chain), base / "cluster")
                    lat += got
                    walls.append(wall)
                rows.append((label, len(lat), statistics.median(lat), pct(lat, 99), max(lat),
                             statistics.median(walls)))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(f"{args.steps} steps per DAG, {args.runs} runs each; step start -> Job created (ms)")
    print(f"{'dag':<10}{'steps':>7}{'p50':>9}{'p99':>9}{'max':>9}{'wall s':>9}")
    for label, n, p50, p99, worst, wall in rows:
        print(f"{label:<10}{n:>7}{p50:>9.1f}{p99:>9.1f}{worst:>9.1f}{wall:>9.2f}")


if __name__ == "__main__":
    main()
