#!/usr/bin/env python3
"""Run-path benchmark for `trellis start` (Python 3.11, standard library only).

Builds nothing: it runs an existing release binary (default `target/release/trellis`
relative to the repository root). Build it first:

    cargo build --release && python3 bench/run.py

For each generated workflow it runs `trellis start -q FILE` with a fresh TRELLIS_HOME
several times and measures wall time and the peak RSS of the trellis process (ru_maxrss
of the trellis process itself; see WRAPPER below for why it is not read by a plain
os.wait4 on a child of this script). Interleaved with those runs it
measures the floor: a bash loop that spawns `/usr/bin/true` once per step, sequentially.

Workloads:
  single             1 step
  chain-100          100 `true` steps, default chain type
  chain-100-abspath  the same with `command: /usr/bin/true`
  chain-100-relpath  the same with `command: ./true` (a copy in the working directory)
  parallel-1000      1000 independent `true` steps and a join step depending on all of them
  chain-10000        10 000 `true` steps, default chain type

It prints a markdown table and PASS/MISS lines for the targets. It always exits 0 once it
has run (it is a benchmark, not a test); it exits 2 only when it cannot run at all.

Guarding against regressions:

    python3 bench/run.py --check            # compare with bench/baseline.json
    python3 bench/run.py --write-baseline   # record a new baseline (on purpose only)

`--check` runs chain-100, parallel-1000 and chain-10000 and compares each one's ratio to
the floor measured in the same run (not absolute times, which differ between machines)
and its peak RSS with the committed baseline; it exits 1 when any is more than 15% above
it. Update the baseline only with a change that means to move it, and say so in the
commit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE = REPO / "bench" / "baseline.json"
CHECKED = ["chain-100", "parallel-1000", "chain-10000"]
TOLERANCE = 0.15
DEFAULT_BIN = REPO / "target" / "release" / "trellis"
TRUE = "/usr/bin/true"


# --- workflow generation ------------------------------------------------------------------


def chain_yaml(name: str, n: int, command: str = '"true"') -> str:
    lines = [f"name: {name}", "steps:"]
    for i in range(1, n + 1):
        lines.append(f"  - name: s{i}")
        lines.append(f"    command: {command}")
    return "\n".join(lines) + "\n"


def parallel_yaml(name: str, n: int) -> str:
    lines = [f"name: {name}", "type: graph", "steps:"]
    for i in range(1, n + 1):
        lines.append(f"  - name: p{i}")
        lines.append('    command: "true"')
    lines.append("  - name: join")
    lines.append('    command: "true"')
    lines.append("    depends:")
    for i in range(1, n + 1):
        lines.append(f"      - p{i}")
    return "\n".join(lines) + "\n"


@dataclass
class Workload:
    name: str
    steps: int  # processes trellis starts (and the floor spawns)
    yaml: str
    large: bool
    # Samples.
    wall: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.wall) and not self.failures


def workloads(selected: set[str] | None) -> list[Workload]:
    all_ = [
        Workload("single", 1, chain_yaml("single", 1), large=False),
        Workload("chain-100", 100, chain_yaml("chain-100", 100), large=False),
        # The same program named by path: absolute, and relative to the working directory
        # (a copy of `true` placed there by `measure`).
        Workload("chain-100-abspath", 100, chain_yaml("chain-100-abspath", 100, TRUE), large=False),
        Workload("chain-100-relpath", 100, chain_yaml("chain-100-relpath", 100, "./true"), large=False),
        Workload("parallel-1000", 1001, parallel_yaml("parallel-1000", 1000), large=True),
        Workload("chain-10000", 10000, chain_yaml("chain-10000", 10000), large=True),
    ]
    return [w for w in all_ if selected is None or w.name in selected]


# --- measuring ----------------------------------------------------------------------------


# Why a wrapper: `ru_maxrss` from wait4 is the maximum of the process's own peak, its
# reaped children's peaks, and -- because exec records the replaced address space's
# high-water mark -- the RSS of whatever process forked it. Spawned straight from this
# Python process (10-16 MiB resident), even /usr/bin/true reports ~13 MiB. So a small bash
# forks the measured program: the program starts with bash's few-MiB image, bash reaps it
# (folding its rusage into bash's RUSAGE_CHILDREN, which survives exec), and bash then
# execs a reporter that prints RUSAGE_CHILDREN.ru_maxrss -- the wait4 rusage of the
# program. The program's own children (sh, true) are far smaller than trellis and only
# inherit trellis's RSS at spawn time, so the figure is trellis's own peak. Wall time is
# taken by bash around fork+exec+run+reap, the same way for trellis and for the floor.
WRAPPER = r"""
s=$EPOCHREALTIME
"$@" >/dev/null 2>"$BENCH_ERR"
rc=$?
e=$EPOCHREALTIME
exec "$BENCH_PY" -S -c 'import resource, sys; print(*sys.argv[1:], resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)' "$s" "$e" "$rc"
"""


def run_measured(argv: list[str], env: dict[str, str], cwd: str, timeout: float):
    """Runs argv to the end; returns (wall seconds, exit code, ru_maxrss KiB, stderr text)."""
    with tempfile.NamedTemporaryFile() as err:
        wrapper_env = dict(env, BENCH_ERR=err.name, BENCH_PY=sys.executable)
        proc = subprocess.Popen(
            ["bash", "-c", WRAPPER, "bench-wrapper", *argv],
            env=wrapper_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return float("nan"), -9, 0, f"timed out after {timeout:.0f}s"
        text = Path(err.name).read_text(errors="replace")
        try:
            s, e, rc, rss = out.decode().split()
            wall = float(e.replace(",", ".")) - float(s.replace(",", "."))
            return wall, int(rc), int(rss), text
        except ValueError:
            return float("nan"), -1, 0, f"wrapper printed {out!r}; {text}"


def calibrate() -> tuple[int, int]:
    """ru_maxrss (KiB) of /usr/bin/true via the wrapper and via a direct os.wait4."""
    _, _, wrapped, _ = run_measured([TRUE], dict(os.environ), "/", 30)
    pid = os.posix_spawn(TRUE, [TRUE], dict(os.environ))
    _, _, usage = os.wait4(pid, 0)
    return wrapped, usage.ru_maxrss


def measure(w: Workload, binary: Path, runs: int, work: Path, home_root: Path, timeout: float) -> None:
    wf = work / f"{w.name}.yaml"
    wf.write_text(w.yaml)
    if not (work / "true").exists():
        shutil.copy2(TRUE, work / "true")  # for `command: ./true`
    floor_argv = ["bash", "-c", f"for i in $(seq {w.steps}); do {TRUE}; done"]
    for r in range(runs):
        # Homes are deleted only at the very end: on an ext4 without a journal, inodes
        # freed in the last ~30 s make new-file creation slower, which would bill one
        # run's cleanup to the next run.
        home = Path(tempfile.mkdtemp(prefix=f"home-{w.name}-", dir=home_root))
        env = dict(os.environ, TRELLIS_HOME=str(home))
        wall, code, rss, err = run_measured(
            [str(binary), "start", "-q", str(wf)], env, str(work), timeout
        )
        if code != 0:
            w.failures.append(f"run {r + 1}: exit {code}: {err.strip()[-500:]}")
        else:
            w.wall.append(wall)
            w.rss_kib.append(rss)
        fwall, fcode, _, ferr = run_measured(floor_argv, dict(os.environ), str(work), timeout)
        if fcode == 0:
            w.floor.append(fwall)
        else:
            print(f"warning: floor loop for {w.name} exited {fcode}: {ferr}", file=sys.stderr)
        print(
            f"  {w.name} run {r + 1}/{runs}: trellis {wall * 1e3:.1f} ms"
            f" (exit {code}, rss {rss / 1024:.1f} MiB), floor {fwall * 1e3:.1f} ms",
            file=sys.stderr,
            flush=True,
        )


# --- reporting ----------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def table(ws: list[Workload]) -> str:
    head = (
        "| workload | steps | trellis median | trellis min | floor (bash loop) median"
        " | ratio | per-step overhead | per-step time | peak RSS |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [head]
    for w in ws:
        if not w.ok:
            rows.append(f"| {w.name} | {w.steps} | FAILED | | | | | | |")
            continue
        t, f = med(w.wall), med(w.floor)
        rows.append(
            f"| {w.name} | {w.steps} | {ms(t)} | {ms(min(w.wall))} | {ms(f)}"
            f" | {t / f:.2f}× | {(t - f) / w.steps * 1e3:.3f} ms"
            f" | {t / w.steps * 1e3:.3f} ms | {max(w.rss_kib) / 1024:.1f} MiB |"
        )
    return "\n".join(rows)


def verdicts(ws: list[Workload]) -> list[str]:
    by = {w.name: w for w in ws}
    out = []

    def line(ok: bool | None, text: str) -> None:
        tag = "SKIP" if ok is None else ("PASS" if ok else "MISS")
        out.append(f"{tag}: {text}")

    w = by.get("chain-100")
    if w and w.ok:
        t, f = med(w.wall), med(w.floor)
        line(t <= 1.3 * f, f"chain-100 ≤ 1.3× floor: {ms(t)} vs 1.3 × {ms(f)} = {ms(1.3 * f)} ({t / f:.2f}×)")
    else:
        line(None, "chain-100 ≤ 1.3× floor: not measured")

    w = by.get("parallel-1000")
    if w and w.ok:
        t = med(w.wall)
        # The floor loop spawned 1001 processes (1000 + join); scale to 1000 for the target.
        f = med(w.floor) * 1000 / w.steps
        line(t <= 0.8 * f, f"parallel-1000 ≤ 0.8× sequential floor of 1000: {ms(t)} vs 0.8 × {ms(f)} = {ms(0.8 * f)} ({t / f:.2f}×)")
    else:
        line(None, "parallel-1000 ≤ 0.8× sequential floor: not measured")

    w = by.get("single")
    if w and w.ok:
        t = med(w.wall)
        line(t <= 0.030, f"single step whole process ≤ 30 ms: {ms(t)} (min {ms(min(w.wall))})")
    else:
        line(None, "single step ≤ 30 ms: not measured")

    measured = [w for w in ws if w.ok]
    if measured:
        top = max(measured, key=lambda w: max(w.rss_kib))
        peak = max(top.rss_kib) / 1024
        line(peak <= 20.0, f"peak RSS ≤ 20 MiB (max over workloads): {peak:.1f} MiB ({top.name})")
    else:
        line(None, "peak RSS ≤ 20 MiB: not measured")

    small, large = by.get("chain-100"), by.get("chain-10000")
    if small and large and small.ok and large.ok:
        ps, pl = med(small.wall) / small.steps, med(large.wall) / large.steps
        line(pl <= 1.3 * ps, f"per-step time chain-10000 ≤ 1.3× chain-100: {pl * 1e3:.3f} ms vs 1.3 × {ps * 1e3:.3f} ms = {1.3 * ps * 1e3:.3f} ms ({pl / ps:.2f}×)")
    else:
        line(None, "per-step time chain-10000 ≤ 1.3× chain-100: not measured")
    return out


def figures(ws: list[Workload]) -> dict[str, dict[str, float]]:
    """What the baseline keeps per workload: the median ratio to the floor and peak RSS."""
    return {
        w.name: {"ratio": round(med(w.wall) / med(w.floor), 3), "rss_mib": round(max(w.rss_kib) / 1024, 1)}
        for w in ws
        if w.ok
    }


def check(ws: list[Workload], baseline: dict) -> list[str]:
    """One line per figure compared; those past the tolerance start with REGRESSED."""
    out = []
    now = figures(ws)
    for name, base in sorted(baseline.get("workloads", {}).items()):
        got = now.get(name)
        if got is None:
            out.append(f"REGRESSED: {name} did not run")
            continue
        for key, unit in (("ratio", "× floor"), ("rss_mib", " MiB")):
            limit = base[key] * (1 + TOLERANCE)
            tag = "ok" if got[key] <= limit else "REGRESSED"
            out.append(f"{tag}: {name} {key} {got[key]}{unit} (baseline {base[key]}{unit}, limit {limit:.2f})")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, default=DEFAULT_BIN, help="trellis binary (default: %(default)s)")
    ap.add_argument("--runs", type=int, help="runs per workload (default: 5 small, 3 large)")
    ap.add_argument("--only", action="append", metavar="WORKLOAD", help="run only this workload (repeatable): single, chain-100, chain-100-abspath, chain-100-relpath, parallel-1000, chain-10000")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds before a run is killed (default: %(default)s)")
    ap.add_argument("--home-dir", type=Path, help="where the fresh TRELLIS_HOMEs go (default: the temporary work dir); e.g. /dev/shm to take the disk out")
    ap.add_argument("--json", type=Path, help="also write the raw samples here")
    ap.add_argument("--check", action="store_true", help=f"compare with {BASELINE.name}; exit 1 past +{TOLERANCE:.0%}")
    ap.add_argument("--write-baseline", action="store_true", help=f"write the figures measured to {BASELINE.name}")
    args = ap.parse_args()
    if (args.check or args.write_baseline) and not args.only:
        args.only = CHECKED

    binary = args.bin.resolve()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        print(
            f"error: {binary} is missing or not executable.\n"
            "bench/run.py builds nothing; build the release binary first:\n"
            "    cargo build --release && python3 bench/run.py",
            file=sys.stderr,
        )
        return 2
    if not os.access(TRUE, os.X_OK):
        print(f"error: {TRUE} is needed for the floor loop", file=sys.stderr)
        return 2

    ws = workloads(set(args.only) if args.only else None)
    if not ws:
        print("error: --only named no known workload", file=sys.stderr)
        return 2

    print(f"binary: {binary}", file=sys.stderr)
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}", file=sys.stderr)
    wrapped, direct = calibrate()
    print(
        f"rss check: /usr/bin/true peaks at {wrapped} KiB through the wrapper,"
        f" {direct} KiB by a direct os.wait4 (this Python's RSS leaks into the latter)",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="trellis-bench-") as tmp:
        work = Path(tmp)
        if args.home_dir:
            args.home_dir.mkdir(parents=True, exist_ok=True)
            home_root = Path(tempfile.mkdtemp(prefix="trellis-bench-homes-", dir=args.home_dir))
        else:
            home_root = work / "homes"
            home_root.mkdir()
        try:
            for w in ws:
                runs = args.runs or (3 if w.large else 5)
                measure(w, binary, runs, work, home_root, args.timeout)
        finally:
            shutil.rmtree(home_root, ignore_errors=True)

    print()
    runs = f"{args.runs} runs each" if args.runs else "5 runs (small) / 3 runs (large)"
    print(f"{os.cpu_count()} CPUs; {runs}; fresh TRELLIS_HOME per run; times are medians unless marked min.")
    print()
    print(table(ws))
    print()
    for v in verdicts(ws):
        print(v)
    for w in ws:
        for f in w.failures:
            print(f"FAILED {w.name}: {f}")
    if args.write_baseline:
        BASELINE.write_text(json.dumps({"tolerance": TOLERANCE, "workloads": figures(ws)}, indent=2) + "\n")
        print(f"wrote {BASELINE}")
    if args.check:
        try:
            baseline = json.loads(BASELINE.read_text())
        except (OSError, ValueError) as e:
            print(f"error: cannot read {BASELINE}: {e}", file=sys.stderr)
            return 2
        lines = check(ws, baseline)
        print()
        print("\n".join(lines))
        if any(line.startswith("REGRESSED") for line in lines):
            print(f"\nFAIL: slower or larger than {BASELINE.name} by more than {TOLERANCE:.0%}")
            return 1
        print(f"\nOK: within {TOLERANCE:.0%} of {BASELINE.name}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    w.name: {"steps": w.steps, "wall_s": w.wall, "floor_s": w.floor, "rss_kib": w.rss_kib, "failures": w.failures}
                    for w in ws
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
