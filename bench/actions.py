#!/usr/bin/env python3
"""In-process step actions against the request itself (Python 3.11, standard library only).

    python3 bench/actions.py --bin target/release/trellis [--steps 100] [--runs 5]

Starts a local HTTP server (a thread answering 200 with a small JSON body, keep-alive),
then runs chains of N steps with `trellis start`, each row's runs interleaved with the
others so that machine noise falls on all alike:

- `noop`: N `action: noop` steps — the engine's own cost per step;
- `http`: N `action: http.request` steps against the local server;
- `jq`: N `action: jq.filter` steps on a small document;
- `state`: N `action: state.set` steps (a write with fsync and rename each).

It also times N requests made back to back by one Python client over one connection
(`request alone`). The http row minus the noop row, per step, is what an HTTP step
costs; minus the request alone, what Trellis adds to the request.
"""

import argparse
import http.server
import os
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per answer and no Nagle: else each answer waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True
    wbufsize = 65536

    def do_GET(self):
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def dag(kind: str, steps: int, url: str) -> str:
    lines = ["name: bench-" + kind, "steps:"]
    for i in range(steps):
        lines.append(f"  - id: s{i}")
        if kind == "noop":
            lines.append("    action: noop")
        elif kind == "http":
            lines += ["    action: http.request", f"    with: {{method: GET, url: '{url}', silent: true}}"]
        elif kind == "jq":
            lines += ["    action: jq.filter", "    with: {filter: .a, data: {a: 1}}"]
        elif kind == "state":
            lines += ["    action: state.set", f"    with: {{key: bench/k{i}, value: {i}}}"]
    return "\n".join(lines) + "\n"


def timed_run(binary: str, file: Path, home: Path) -> float:
    env = dict(os.environ, TRELLIS_HOME=str(home))
    start = time.perf_counter()
    done = subprocess.run([binary, "start", "-q", str(file)], env=env, capture_output=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{file.name} failed: {done.stdout.decode()} {done.stderr.decode()}")
    return took


def request_alone(url: str, n: int) -> float:
    import http.client
    from urllib.parse import urlparse
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    start = time.perf_counter()
    for _ in range(n):
        conn.request("GET", u.path)
        conn.getresponse().read()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/x"
    kinds = ["noop", "http", "jq", "state"]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    alone: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        files = {}
        for k in kinds:
            files[k] = base / f"{k}.yaml"
            files[k].write_text(dag(k, args.steps, url))
        for _ in range(args.runs):
            for k in kinds:
                times[k].append(timed_run(args.bin, files[k], base / "home"))
            alone.append(request_alone(url, args.steps))
    n = args.steps
    noop = statistics.median(times["noop"])
    print(f"chains of {n} steps, median of {args.runs} runs (interleaved)")
    print(f"{'row':<16}{'wall ms':>10}{'ms/step':>10}{'over noop ms/step':>20}")
    for k in kinds:
        med = statistics.median(times[k])
        print(f"{k:<16}{med * 1000:>10.1f}{med / n * 1000:>10.3f}{(med - noop) / n * 1000:>20.3f}")
    req = statistics.median(alone)
    print(f"{'request alone':<16}{req * 1000:>10.1f}{req / n * 1000:>10.3f}")
    http_step = (statistics.median(times["http"]) - noop) / n
    print(f"an HTTP step adds {(http_step - req / n) * 1000:.3f} ms over the request itself")


if __name__ == "__main__":
    main()
