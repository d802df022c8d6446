"""The receiver: Debian's nginx answering 200 on 127.0.0.1 (installed when missing), else an asyncio responder.

Both write one access-log line per request, `$msec $status $content_length $request_uri $http_webhook_id
$connection_requests`, which is what the observer counts: arrivals, their times (wall clock, the same clock
as PostgreSQL's clock_timestamp()), duplicates and losses. Paths under /flaky/ answer 500 to a random 10 %
of requests (nginx: split_clients on $request_id); every other path answers 200. nginx closes the connection
after a 500 (it does for 500 and 501), so the retry workload also pays for reconnecting.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.network import free_port

LOG_FORMAT = "$msec $status $content_length $request_uri $http_webhook_id $connection_requests"

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format bench '{log_format}';
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    # Bodies up to 64 KiB stay in memory (a 16 KiB webhook is never written to a temp file).
    client_body_buffer_size 64k;
    client_max_body_size 1m;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    default_type text/plain;
    split_clients "${{request_id}}" $bench_bucket {{
        10% fail;
        * ok;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        access_log {root}/access.log bench;
        location /flaky/ {{
            if ($bench_bucket = fail) {{ return 500; }}
            return 200;
        }}
        location / {{ return 200; }}
    }}
}}
"""


@dataclass(frozen=True, slots=True)
class Hit:
    """One access-log line."""

    at: float  # unix seconds, millisecond resolution
    status: int
    length: int
    uri: str
    webhook_id: str
    connection_requests: int


def parse_line(line: str) -> Hit | None:
    parts = line.split()
    if len(parts) != 6:
        return None
    try:
        return Hit(float(parts[0]), int(parts[1]), int(parts[2]), parts[3], parts[4], int(parts[5]))
    except ValueError:
        return None


class AccessLog:
    """Reads the access log incrementally from a given offset (each workload starts at the current end)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def mark(self) -> None:
        """Skip everything written so far."""
        self._offset = self.path.stat().st_size if self.path.exists() else 0
        self._partial = b""

    def read_new(self) -> list[Hit]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        hits = []
        for raw in lines:
            hit = parse_line(raw.decode("ascii", "replace"))
            if hit is not None:
                hits.append(hit)
        return hits


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def ensure_nginx(log: list[str]) -> str | None:
    """nginx's path; when missing and we are root with apt-get, install Debian's nginx-light (else nginx)."""
    found = find_nginx()
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    started = time.monotonic()
    subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
    for package in ("nginx-light", "nginx"):
        done = subprocess.run(["apt-get", "install", "-y", "-q", package], env=env, capture_output=True, check=False)
        if done.returncode == 0 and find_nginx():
            log.append(f"installed {package} with apt-get in {time.monotonic() - started:.0f} s")
            return find_nginx()
    log.append("could not install nginx with apt-get")
    return None


class Receiver:
    """nginx (or the fallback responder) as a child process in `root`, on a free loopback port; the responder
    alone when its answers are to wait `delay_ms` (+/- `jitter`, a fraction of it)."""

    def __init__(
        self, root: Path, kind: str = "auto", *, delay_ms: float = 0.0, jitter: float = 0.0, loop: str = "asyncio"
    ) -> None:
        self.root = root
        self.kind = "python" if delay_ms > 0 else kind
        self.delay_ms = delay_ms
        self.jitter = jitter
        self.loop = loop
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.notes: list[str] = []
        self.log = AccessLog(root / "access.log")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        nginx = ensure_nginx(self.notes) if self.kind in ("auto", "nginx") else None
        if nginx is None and self.kind == "nginx":
            raise RuntimeError("nginx was asked for and could not be found or installed: " + "; ".join(self.notes))
        if nginx is not None:
            self.kind = "nginx"
            conf = self.root / "nginx.conf"
            conf.write_text(NGINX_CONF.format(root=self.root, port=self.port, log_format=LOG_FORMAT))
            version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
            self.notes.append(version)
            self.process = subprocess.Popen(
                [nginx, "-p", str(self.root), "-e", str(self.root / "error.log"), "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=(self.root / "nginx.out").open("wb"),
            )
        else:
            if self.kind != "python":
                self.notes.append("nginx unavailable: asyncio responder (costs more CPU per request than nginx)")
            self.kind = "python"
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.responder", "--port", str(self.port), "--log", str(self.log.path),
                 "--delay-ms", str(self.delay_ms), "--jitter", str(self.jitter), "--loop", self.loop],
                cwd=Path(__file__).resolve().parent.parent,
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (self.root / "error.log").read_text() if (self.root / "error.log").exists() else ""
                raise RuntimeError(f"the receiver exited at start ({self.process.returncode}): {err}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("the receiver did not listen within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # nginx: SIGQUIT is a graceful stop; the responder stops on SIGTERM.
            self.process.send_signal(signal.SIGQUIT if self.kind == "nginx" else signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
