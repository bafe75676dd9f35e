#!/usr/bin/env python3
"""Slurm steps against Slurm's own CLI (Python 3.11, standard library only).

    python3 bench/slurm.py --bin target/release/trellis [--jobs 50] [--seconds 1]

Starts its own single-node Slurm (munged, slurmctld, slurmd as root, every file in a temp
dir, no slurmdbd, `batch_sched_delay=0`; as crates/testdb/src/slurm.rs does), then runs the
same N one-second batch scripts three ways, one after another:

- trellis: `trellis start` of a DAG of N independent `type: slurm` steps;
- `sbatch --wait` loop: the shell submits each job and waits for it, one at a time (the
  issue's floor; it cannot run jobs side by side);
- `sbatch --wait &` loop: the shell submits all N at once and waits for them (what Slurm
  itself allows at once on this node: the floor for a concurrent run).

Prints wall times and Trellis's overhead per job against the concurrent floor. Needs root
and the packages scripts/test installs.
"""

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(base: Path) -> dict[str, str]:
    for sub in ["state", "spool", "log", "run"]:
        (base / sub).mkdir(parents=True)
    (base / "munge.key").write_bytes(os.urandom(1024))
    os.chmod(base / "munge.key", 0o600)
    subprocess.run(["munged", "--force", f"--socket={base}/run/munge.sock", f"--key-file={base}/munge.key",
                    f"--pid-file={base}/run/munged.pid", f"--log-file={base}/log/munged.log",
                    f"--seed-file={base}/run/munged.seed"], check=True)
    node = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 2
    (base / "slurm.conf").write_text(f"""ClusterName=bench
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={base}/run/munge.sock
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/run/slurmctld.pid
SlurmdPidFile={base}/run/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
MpiDefault=none
MailProg=/bin/true
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    env = dict(os.environ, SLURM_CONF=str(base / "slurm.conf"))
    subprocess.run(["slurmctld", "-c", "-f", str(base / "slurm.conf")], check=True, env=env)
    subprocess.run(["slurmd", "-f", str(base / "slurm.conf")], check=True, env=env)
    for _ in range(300):
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=env)
        if out.stdout.strip() == "idle":
            return env
        time.sleep(0.1)
    raise SystemExit("slurm node not idle")


def stop(base: Path, env: dict[str, str]) -> None:
    subprocess.run(["scancel", "--user=root"], env=env, capture_output=True)
    for pid_file in ["slurmd.pid", "slurmctld.pid", "munged.pid"]:
        try:
            os.kill(int((base / "run" / pid_file).read_text().strip()), 15)
        except (OSError, ValueError):
            pass
    time.sleep(1)


def timed(cmd: list[str], env: dict[str, str], shell: bool = False) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd if not shell else cmd[0], env=env, check=True, shell=shell,
                   stdout=subprocess.DEVNULL, executable="/bin/bash" if shell else None)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/trellis")
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="trellis-bench-slurm-"))
    env = start(base)
    try:
        script = base / "job.sh"
        script.write_text(f"#!/bin/sh\nsleep {args.seconds}\n")
        lines = ["name: jobs", "type: graph", "steps:"]
        for i in range(args.jobs):
            lines += [f"  - name: j{i}", "    type: slurm", f"    command: sleep {args.seconds}"]
        dag = base / "jobs.yaml"
        dag.write_text("\n".join(lines) + "\n")
        tenv = dict(env, TRELLIS_HOME=str(base / "home"))
        out = f"--output={base}/out-%j"
        results = {
            "trellis (one DAG, N slurm steps)": timed([args.bin, "start", "-q", str(dag)], tenv),
            "`sbatch --wait` loop, one at a time": timed(
                [f"for i in $(seq {args.jobs}); do sbatch --wait -Q {out} {script} || exit 1; done"], env, shell=True),
            "`sbatch --wait &` loop, all at once": timed(
                [f"for i in $(seq {args.jobs}); do sbatch --wait -Q {out} {script} & done; wait"], env, shell=True),
        }
    finally:
        stop(base, env)
        shutil.rmtree(base, ignore_errors=True)
    concurrent = results["`sbatch --wait &` loop, all at once"]
    trellis = results["trellis (one DAG, N slurm steps)"]
    print(f"\n{args.jobs} jobs of `sleep {args.seconds:g}` on {os.cpu_count()} CPUs.\n")
    print("| | wall time |")
    print("|---|---:|")
    for name, secs in results.items():
        print(f"| {name} | {secs:.2f} s |")
    per_job = (trellis - concurrent) / args.jobs * 1e3
    print(f"\nTrellis overhead against Slurm's own concurrent run: {per_job:.0f} ms per job "
          f"(target ≤ 100 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
