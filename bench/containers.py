#!/usr/bin/env python3
"""Container steps against the Podman CLI (Python 3.11, standard library only).

    python3 bench/containers.py --bin target/release/trellis [--steps 20] [--runs 3] [--run-container]

Starts its own Podman service (Docker Engine API on a unix socket, runc, cgroupfs, its own
storage in a temp dir, as crates/testdb/src/podman.rs does) and imports one image from the
host's static busybox: no registry. Then, alternating, for each run:

- trellis: `trellis start` of a DAG of N `type: docker` steps running `true` in that image
  (a chain: each step is created, started, followed, inspected and removed through the API);
- floor: a shell loop of `podman run --rm IMAGE true`, N times (the Podman CLI, no service).

With `--run-container` the DAG has a DAG-level `container:` and N command steps exec'd into
it, and the floor is the CLI doing the same: `podman run -d`, N × `podman exec ID true`,
`podman rm -f`.

Prints a table of wall times (median, min) and the ratio, and each step's start-to-end
time from the run's records (p50 and p99 over all steps of all runs). Needs root and the
packages scripts/test installs.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGE = "localhost/trellis-bench:latest"


def podman_env(base: Path) -> dict[str, str]:
    return dict(
        os.environ,
        CONTAINERS_CONF=str(base / "containers.conf"),
        CONTAINERS_STORAGE_CONF=str(base / "storage.conf"),
    )


def setup(base: Path) -> subprocess.Popen:
    (base / "containers.conf").write_text(
        '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\nnetns = "host"\n'
        '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
    )
    (base / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\nrunroot = "{base}/run"\ngraphroot = "{base}/storage"\n'
    )
    env = podman_env(base)
    root = base / "rootfs"
    for sub in ["bin", "tmp", "etc", "proc", "sys", "dev", "root"]:
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True).stdout.split()
    for a in applets:
        if a != "busybox":
            (root / "bin" / a).symlink_to("busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    subprocess.run(["tar", "-C", str(root), "-cf", str(base / "rootfs.tar"), "."], check=True)
    subprocess.run(
        ["podman", "import", "-q", "--change", 'CMD ["/bin/sh"]', "--change", "ENV PATH=/bin",
         str(base / "rootfs.tar"), IMAGE],
        env=env, check=True, capture_output=True,
    )
    sock = base / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            if b" 200 " in s.recv(100):
                return service
        except OSError:
            time.sleep(0.05)
    raise SystemExit("podman service did not start")


def dag(n: int, shared: bool) -> str:
    if shared:
        lines = ["name: boxes", "container:", f"  image: \"{IMAGE}\"", "  pull_policy: never", "steps:"]
        lines += [f"  - name: c{i}\n    command: \"true\"" for i in range(n)]
        return "\n".join(lines) + "\n"
    lines = ["name: boxes", "steps:"]
    for i in range(n):
        lines += [f"  - name: c{i}", "    type: docker", f"    with: {{image: \"{IMAGE}\", pull: never}}",
                  '    command: "true"']
    return "\n".join(lines) + "\n"


def step_times(binary: str, env: dict[str, str]) -> list[float]:
    out = subprocess.run([binary, "status", "boxes", "--json"], env=env, capture_output=True, text=True)
    run = json.loads(out.stdout)

    def ts(s: str) -> float:
        from datetime import datetime
        s = s.rstrip("Z")
        head, _, frac = s.partition(".")
        return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))

    return [ts(s["finished_at"]) - ts(s["started_at"]) for s in run["steps"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/trellis")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--run-container", action="store_true", help="one DAG-level container, steps exec'd in")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="trellis-bench-podman-"))
    service = setup(base)
    env = podman_env(base)
    wf = base / "boxes.yaml"
    wf.write_text(dag(args.steps, args.run_container))
    trellis, floor, per_step = [], [], []
    try:
        for r in range(args.runs):
            home = base / f"home{r}"
            tenv = dict(env, TRELLIS_HOME=str(home), DOCKER_HOST=f"unix://{base}/podman.sock")
            t0 = time.perf_counter()
            code = subprocess.run([args.bin, "start", "-q", str(wf)], env=tenv).returncode
            trellis.append(time.perf_counter() - t0)
            if code != 0:
                print(f"run {r + 1}: trellis exited {code}", file=sys.stderr)
                return 1
            per_step += step_times(args.bin, tenv)
            t0 = time.perf_counter()
            loop = f"for i in $(seq {args.steps}); do podman run --rm {IMAGE} true || exit 1; done"
            if args.run_container:
                loop = (f"id=$(podman run -d {IMAGE} sleep 600) && for i in $(seq {args.steps}); "
                        f"do podman exec $id true || exit 1; done; podman rm -f -t 0 $id >/dev/null")
            subprocess.run(["bash", "-c", loop], env=env, check=True)
            floor.append(time.perf_counter() - t0)
            print(f"  run {r + 1}/{args.runs}: trellis {trellis[-1]:.2f} s, podman loop {floor[-1]:.2f} s",
                  file=sys.stderr)
    finally:
        service.kill()
        subprocess.run(["podman", "system", "reset", "--force"], env=env, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    med = statistics.median
    per_step.sort()
    p99 = per_step[min(len(per_step) - 1, int(len(per_step) * 0.99))]
    what = "`true` steps exec'd into one container" if args.run_container else "`true` containers"
    floor_name = "`podman run -d` + `podman exec` loop" if args.run_container else "`podman run --rm` loop"
    print(f"\n{args.steps} {what} in a chain, {args.runs} runs each, alternating.\n")
    print("| | median | min | ratio to the CLI loop (median) | step start to end p50 | p99 |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| trellis (Docker API) | {med(trellis):.2f} s | {min(trellis):.2f} s | "
          f"{med(trellis) / med(floor):.2f}× | {med(per_step) * 1e3:.0f} ms | {p99 * 1e3:.0f} ms |")
    print(f"| {floor_name} | {med(floor):.2f} s | {min(floor):.2f} s | 1.00× | — | — |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
