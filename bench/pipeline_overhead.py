"""Sluice's per-pipeline overhead against plain Celery, same canvas shape, same Redis.

    python bench/pipeline_overhead.py [--pipelines 200] [--wide-pipelines 40] [--rounds 3]

Two shapes, each a chain whose tail is a chord:

- narrow, 1 -> 3 -> 1 no-op jobs;
- wide, 1 -> 50 -> 1 (the per-type fan-out at scale: fifty siblings finishing together
  contend for their pipeline's row, which every transition locks).

Plain Celery runs the canvas of a no-op task; Sluice plans each pipeline in PostgreSQL
(jobs, edges, events), sends the same canvas, and every task claims, finishes and
publishes through the database. Each side is fired all at once and timed until the last
pipeline completes, on the same 2-process worker; the four runs (plain or Sluice, either
shapes) alternate within every round and the medians are compared. Last line: one JSON
object with the figures (``ratio`` the narrow shape's, ``wide_ratio`` the wide one's).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._scratch import scratch_database_url, setup_django, start_worker

NARROW, WIDE = 3, 50


def run_plain(k: int, width: int) -> float:
    from celery import chain, chord

    from bench.plain_tasks import plain_noop

    def canvas():  # type: ignore[no-untyped-def]
        sig = plain_noop.si().set(queue="default")
        return chain(sig, chord([sig.clone() for _ in range(width)], sig.clone()))

    t0 = time.perf_counter()
    results = [canvas().apply_async() for _ in range(k)]
    for r in results:
        r.get(timeout=300)
    return k / (time.perf_counter() - t0)


def run_sluice(k: int, width: int) -> float:
    from pipelines import services
    from pipelines.models import DONE_STATUSES, Pipeline

    t0 = time.perf_counter()
    ids = [services.pipeline_start_noop(width=width).pk for _ in range(k)]
    deadline = time.monotonic() + 600
    while Pipeline.objects.filter(pk__in=ids).exclude(status__in=DONE_STATUSES).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("sluice pipelines did not finish in 600 s")
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    failed = Pipeline.objects.filter(pk__in=ids).exclude(status="success").count()
    if failed:
        raise RuntimeError(f"{failed} pipelines did not succeed")
    return k / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipelines", type=int, default=200, help="pipelines per round and side")
    parser.add_argument("--wide-pipelines", type=int, default=None,
                        help="1 -> 50 -> 1 pipelines per round and side (default: a fifth of --pipelines)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    args = parser.parse_args()
    wide_k = args.wide_pipelines if args.wide_pipelines is not None else max(2, args.pipelines // 5)
    load_before = os.getloadavg()
    # Overridable so two people can bench on one PostgreSQL server at once.
    url = scratch_database_url(os.environ.get("SLUICE_BENCH_ENGINE_DB", "sluice_bench_engine"))
    setup_django(url)
    import redis
    from django.conf import settings

    from pipelines import registry

    redis.Redis.from_url(settings.REDIS_URL).delete(*registry.queues())
    worker = start_worker(url, extra=["--include", "bench.plain_tasks"])
    try:
        run_plain(10, NARROW)  # warm up both paths (imports, connections)
        run_sluice(5, NARROW)
        # Interleaved rounds: this VM's speed drifts by tens of percent over a minute,
        # so one run of each side can't be compared; the medians of alternating rounds can.
        celery_runs, sluice_runs, wide_celery_runs, wide_sluice_runs = [], [], [], []
        for _ in range(args.rounds):
            celery_runs.append(run_plain(args.pipelines, NARROW))
            sluice_runs.append(run_sluice(args.pipelines, NARROW))
            if wide_k:
                wide_celery_runs.append(run_plain(wide_k, WIDE))
                wide_sluice_runs.append(run_sluice(wide_k, WIDE))
        celery_per_s = statistics.median(celery_runs)
        sluice_per_s = statistics.median(sluice_runs)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    figures = {
        "pipelines": args.pipelines,
        "shape": "1->3->1 no-op",
        "worker_concurrency": 2,
        "rounds": args.rounds,
        "celery_runs": [round(x, 1) for x in celery_runs],
        "sluice_runs": [round(x, 1) for x in sluice_runs],
        "celery_per_s": round(celery_per_s, 1),
        "sluice_per_s": round(sluice_per_s, 1),
        "ratio": round(sluice_per_s / celery_per_s, 3),
    }
    if wide_k:
        wide_celery, wide_sluice = statistics.median(wide_celery_runs), statistics.median(wide_sluice_runs)
        figures.update({
            "wide_pipelines": wide_k,
            "wide_shape": f"1->{WIDE}->1 no-op",
            "wide_celery_runs": [round(x, 2) for x in wide_celery_runs],
            "wide_sluice_runs": [round(x, 2) for x in wide_sluice_runs],
            "wide_celery_per_s": round(wide_celery, 2),
            "wide_sluice_per_s": round(wide_sluice, 2),
            "wide_ratio": round(wide_sluice / wide_celery, 3),
        })
    # The machine is shared: the load around the run says how much to trust it.
    figures["loadavg_1m"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    print(f"1->{NARROW}->1: plain Celery {celery_per_s:.1f} pipelines/s, Sluice {sluice_per_s:.1f} pipelines/s, "
          f"ratio {figures['ratio']:.2f}")
    if wide_k:
        print(f"1->{WIDE}->1: plain Celery {figures['wide_celery_per_s']} pipelines/s, "
              f"Sluice {figures['wide_sluice_per_s']} pipelines/s, ratio {figures['wide_ratio']:.2f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
