"""Benchmark: the built-in online server under load, on this machine's loopback (127.0.0.1) only.

Simulated participants (threads, each with its own HTTP connection like a browser tab) open the study and post
every trial of the demo design as fast as the server answers; each post is validated, appended to trials.csv
and fsync'd before its answer. Baseline in the same run: one participant alone. Printed: trials/s, latency per
trial post (median, 95th percentile), and the check that nothing was lost or duplicated (rows on disk = posts
answered 200, trial indices 0..n-1 in every session).

    .venv/bin/python bench/online_server.py            # 1 participant, then 32 at once
    .venv/bin/python bench/online_server.py --quick    # 1, then 8
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from contracts.session import read_trials  # noqa: E402
from contracts.stimulus_set import load_stimulus_set  # noqa: E402
from experiment.config import load_design  # noqa: E402
from online.config import load_online_config  # noqa: E402
from online.export import export_study  # noqa: E402
from online.server import StudyServer  # noqa: E402
from online.sessions import OnlineStudy  # noqa: E402
from stimset_fixture import make_fixture_set  # noqa: E402
from machine_info import cpu_name, load_average  # noqa: E402  (bench/ is on sys.path: scripts run from it)

HOST = "127.0.0.1"  # loopback only, never another address


def machine() -> str:
    return (f"{cpu_name()}, {os.cpu_count()} CPU cores, load average {load_average():.1f}, "
            f"Python {platform.python_version()}, {platform.system()}")


def participant(port: int, pid: str, seed: int, latencies: list, codes: list) -> None:
    """One simulated participant: start, then each trial with a random pairing made by valid clicks."""
    rng = random.Random(seed)
    conn = http.client.HTTPConnection(HOST, port, timeout=60)

    def post(path: str, body: dict) -> tuple[int, dict]:
        data = json.dumps({"params": {"participant": pid}, "run": run, **body}).encode()
        conn.request("POST", "/api/" + path, body=data, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())

    run = None
    code, start = post("start", {"client": {"user_agent": "bench"}})
    assert code == 200, start
    run = start["run"]
    for t in start["trials"][start["start_index"]:]:
        a = [0, 1, 2]
        rng.shuffle(a)
        clicks = [c for i in range(3) for c in ([0.4 + i, "candidate", a[i]], [0.8 + i, "reference", i])] + [[3.5, "confirm", None]]
        body = {"trial_index": t["trial_index"], "clicks": clicks, "assignment": a, "onset": "2026-12-02T05:00:00.000+00:00",
                "frames": {"frames": 210, "frames_dropped": 0, "frame_interval_mean_ms": 16.7, "frame_interval_sd_ms": 0.3}}
        t0 = time.perf_counter()
        code, res = post("trial", body)
        latencies.append(time.perf_counter() - t0)
        codes.append(code)
    post("finish", {})
    conn.close()


def run(study_dir: Path, n: int, tag: str) -> dict:
    data = Path(tempfile.mkdtemp(prefix=f"fvmatch-bench-{tag}-"))
    study = OnlineStudy(study_dir, data)
    latencies: list[float] = []
    codes: list[int] = []
    with StudyServer(study, host=HOST, port=0, quiet=True) as srv:
        port = srv.httpd.server_address[1]
        threads = [threading.Thread(target=participant, args=(port, f"B{tag}{i:03d}", i, latencies, codes)) for i in range(n)]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
    rows, bad = 0, 0
    for folder in sorted((data / study.experiment).iterdir()):
        df = read_trials(folder)
        rows += len(df)
        bad += list(df.trial_index) != list(range(len(df)))
    ok = sum(c == 200 for c in codes)
    lat = sorted(latencies)
    return {"participants": n, "trial_posts": len(codes), "answered_200": ok, "rows_on_disk": rows,
            "lost": ok - rows, "sessions_out_of_order": bad, "wall_s": wall, "trials_per_s": rows / wall,
            "latency_median_ms": 1000 * lat[len(lat) // 2], "latency_p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--participants", type=int, default=32, help="simulated participants at once (default 32)")
    ap.add_argument("--quick", action="store_true", help="8 participants")
    args = ap.parse_args()
    n = 8 if args.quick else args.participants
    base = Path(tempfile.mkdtemp(prefix="fvmatch-bench-online-"))
    stimset = load_stimulus_set(make_fixture_set(base / "set", base / "collection"))
    study_dir = base / "study"
    export_study(stimset, load_design("demo"), study_dir, load_online_config(None))
    print(f"machine: {machine()}")
    print(f"server: fvmatch-online (ThreadingHTTPServer) on {HOST}, fsync per trial; data in {tempfile.gettempdir()}")
    print("design: demo (22 trials per participant); random pairings; no think time (every post as soon as the last is answered)")
    results = [run(study_dir, 1, "solo"), run(study_dir, n, "load")]
    print(f"{'participants':>12} {'posts':>6} {'rows':>6} {'lost':>5} {'trials/s':>9} {'median ms':>10} {'p95 ms':>8} {'wall s':>7}")
    for r in results:
        print(f"{r['participants']:>12} {r['trial_posts']:>6} {r['rows_on_disk']:>6} {r['lost']:>5} {r['trials_per_s']:>9.1f} "
              f"{r['latency_median_ms']:>10.1f} {r['latency_p95_ms']:>8.1f} {r['wall_s']:>7.2f}")
    solo, load = results
    print(f"throughput with {n} at once / alone: {load['trials_per_s'] / solo['trials_per_s']:.2f}x")
    lost = sum(r["lost"] + r["sessions_out_of_order"] + (r["trial_posts"] - r["answered_200"]) for r in results)
    print("lost or refused trials: " + str(lost))
    if lost:
        sys.exit(1)


if __name__ == "__main__":
    main()
