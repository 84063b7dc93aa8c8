"""Real servers for the remote-archive tests, started and stopped by the tests on 127.0.0.1.

* nginx (Debian package nginx-light) serving a temporary folder, its access log written as
  ``$request $status "$http_range" $bytes_sent`` so that tests cross-check the client's
  request counts with the server's;
* versitygw, an S3 server (posix backend: objects are plain files under a temporary root),
  with fixed test credentials;
* a delaying TCP proxy (latency per request and per response) and a small misbehaving HTTP
  server for the failures nginx cannot produce (resets, short bodies, ignored ranges, stalls).

A missing server fails the tests (never skips them): ``make test`` installs both
(tests/remote/install-servers.sh).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

READY_TIMEOUT = 20.0
S3_ACCESS_KEY = "bpztestaccess"
S3_SECRET_KEY = "bpz-test-secret-0123456789"
S3_BUCKET = "bpz-bucket"
S3_REGION = "us-east-1"

HERE = Path(__file__).resolve().parent


def tools_dir() -> Path:
    """Where install-servers.sh builds versitygw (outside the work tree)."""
    if os.environ.get("BPZ_TOOLS_DIR"):
        return Path(os.environ["BPZ_TOOLS_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "bpz-tools" / "bin"


def _require(binary: str | None, what: str) -> str:
    if binary is None or not os.access(binary, os.X_OK):
        pytest.fail(
            f"{what} is not installed: `make test` installs it (or run tests/remote/install-servers.sh)",
            pytrace=False,
        )
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            detail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            pytest.fail(f"{what} exited with status {proc.returncode} on start:\n{detail}", pytrace=False)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{what} not ready on 127.0.0.1:{port} after {READY_TIMEOUT} s", pytrace=False)


def stop(proc: subprocess.Popen) -> None:
    """Ends the server and every process it started (its own process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@dataclass
class Nginx:
    root: Path
    port: int
    access_log: Path

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def log_lines(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def requests_since(self, mark: int, name: str | None = None) -> list[str]:
        """Access-log lines after line `mark` (for `name` only if given)."""
        lines = self.log_lines()[mark:]
        return [line for line in lines if name is None or f"/{name} " in line]


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    with running_nginx(tmp_path_factory.mktemp("nginx")) as server:
        yield server


@contextlib.contextmanager
def running_nginx(base: Path) -> Iterator[Nginx]:
    """nginx serving `base`/www on a free port of 127.0.0.1 until the block ends."""
    binary = _require(shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None), "nginx")
    root = base / "www"
    root.mkdir()
    port = free_port()
    conf = base / "nginx.conf"
    access_log = base / "access.log"
    temp = {name: base / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for d in temp.values():
        d.mkdir()
    # As root, workers would run as "nobody" and could not read the private temp folder.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"""{user}daemon off;
worker_processes 1;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format bpz '$request $status "$http_range" $bytes_sent';
    access_log {access_log} bpz;
    client_body_temp_path {temp['client_body']};
    proxy_temp_path {temp['proxy']};
    fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']};
    scgi_temp_path {temp['scgi']};
    default_type application/octet-stream;
    keepalive_requests 10000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""
    )
    log = base / "stderr.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [binary, "-p", str(base), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        wait_for_port(port, proc, "nginx", log)
        yield Nginx(root=root, port=port, access_log=access_log)
    finally:
        stop(proc)


@dataclass
class S3Server:
    root: Path
    port: int
    access_log: Path
    bucket: str = S3_BUCKET

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def options(self, **extra: str) -> dict[str, str]:
        opts = {
            "endpoint": self.endpoint,
            "region": S3_REGION,
            "access_key_id": S3_ACCESS_KEY,
            "secret_access_key": S3_SECRET_KEY,
        }
        opts.update(extra)
        return opts

    def put(self, key: str, data: bytes) -> None:
        """Stores an object as the posix backend does: a file replaced atomically, with the
        ETag versitygw keeps in an extended attribute (the MD5 of the bytes)."""
        path = self.root / self.bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.setxattr(tmp, "user.etag", hashlib.md5(data).hexdigest().encode())
        os.replace(tmp, path)

    def log_lines(self) -> list[str]:
        return self.access_log.read_text(errors="replace").splitlines() if self.access_log.exists() else []


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@contextlib.contextmanager
def running_s3(base: Path) -> Iterator[S3Server]:
    """versitygw serving a bucket kept under ``base`` until the block ends (also for bench/)."""
    binary = _require(str(tools_dir() / "versitygw") if (tools_dir() / "versitygw").exists() else shutil.which("versitygw"), "versitygw (the S3 server of the tests)")
    root = base / "root"
    (root / S3_BUCKET).mkdir(parents=True)
    port = free_port()
    access_log = base / "access.log"
    log = base / "stderr.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VGW_", "ROOT_"))}
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [binary, "--access", S3_ACCESS_KEY, "--secret", S3_SECRET_KEY, "--region", S3_REGION,
             "--port", f"127.0.0.1:{port}", "--quiet", "--access-log", str(access_log), "posix", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            start_new_session=True,
        )
    try:
        wait_for_port(port, proc, "versitygw", log)
        yield S3Server(root=root, port=port, access_log=access_log)
    finally:
        stop(proc)


@pytest.fixture(autouse=True)
def _no_ambient_cloud_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's AWS_* variables must not change what a test sends (nor reach a real
    cloud endpoint): each test gives its options explicitly."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "GOOGLE_", "AZURE_")):
            monkeypatch.delenv(key)


# -- a delaying proxy ------------------------------------------------------------------------------


class _Rate:
    """A link's bandwidth shared by every connection in one direction: each send waits its
    turn (`bandwidth` bytes per second; None = unlimited)."""

    def __init__(self, bandwidth: float | None) -> None:
        self.bandwidth = bandwidth
        self.free_at = 0.0
        self.lock = threading.Lock()

    def reserve(self, n: int, now: float) -> float:
        """When `n` bytes that are due at `now` have finished crossing the link."""
        if not self.bandwidth:
            return now
        with self.lock:
            start = max(now, self.free_at)
            self.free_at = start + n / self.bandwidth
            return self.free_at


class DelayProxy:
    """Forwards 127.0.0.1:port to a target port as a link with a one-way latency of `delay`
    seconds would: every byte leaves `delay` after it arrived (a delay line, so a body keeps
    flowing at full speed; one round trip costs 2 x delay), and a new connection's first
    request waits one round trip more (the TCP handshake). `bandwidth` (bytes per second,
    each direction, shared by all connections) caps the rate as a real link does.
    `connections` counts the connections accepted."""

    # Bytes held in one direction of one connection at most (the delay line's length);
    # enough for 20 ms at over 1 GB/s.
    MAX_QUEUED = 32 << 20
    CHUNK = 256 << 10

    def __init__(self, target_port: int, delay: float, bandwidth: float | None = None) -> None:
        self.target_port = target_port
        self.delay = delay
        self.rates = {"up": _Rate(bandwidth), "down": _Rate(bandwidth)}
        self.connections = 0
        self._ready_at: dict[int, float] = {}
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The handshake: the client's first bytes can reach the server 3 delays after
            # its connect (SYN, SYN-ACK, then the request), not 1.
            self._ready_at[id(client)] = time.monotonic() + 2 * self.delay
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Copies src to dst, each chunk `delay` after it arrived (a writer thread sends)."""
        upward = id(src) in self._ready_at
        ready = self._ready_at.pop(id(src), 0.0)
        rate = self.rates["up" if upward else "down"]
        queue: collections.deque[tuple[float, bytes]] = collections.deque()
        cond = threading.Condition()
        state = {"queued": 0, "eof": False}

        def writer() -> None:
            try:
                while True:
                    with cond:
                        while not queue and not state["eof"]:
                            cond.wait()
                        if not queue:
                            break
                        due, data = queue[0]
                    done = rate.reserve(len(data), due)
                    pause = done - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    dst.sendall(data)
                    with cond:
                        queue.popleft()
                        state["queued"] -= len(data)
                        cond.notify_all()
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        try:
            src.settimeout(None)
            while True:
                data = src.recv(self.CHUNK)
                if not data or not self._arrived(src, dst, upward, len(data)):
                    break
                due = max(time.monotonic(), ready) + self.delay
                with cond:
                    while state["queued"] > self.MAX_QUEUED:
                        cond.wait()
                    queue.append((due, data))
                    state["queued"] += len(data)
                    cond.notify_all()
        except OSError:
            pass
        finally:
            with cond:
                state["eof"] = True
                cond.notify_all()

    def _arrived(self, src: socket.socket, dst: socket.socket, upward: bool, n: int) -> bool:
        """Called for every `n` bytes read from `src`; False drops them and ends the pump."""
        return True

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class CuttableProxy(DelayProxy):
    """A proxy (no delay) whose `cut()` drops every open connection and refuses new ones: the
    server, as the client sees it, is gone. With `cut_after_upload_bytes` it cuts by itself
    once the clients have sent more than that many bytes (the middle of an upload)."""

    def __init__(self, target_port: int, cut_after_upload_bytes: int | None = None) -> None:
        self.limit = cut_after_upload_bytes
        self.uploaded = 0
        self.cut_done = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        super().__init__(target_port, 0.0)

    def _arrived(self, src: socket.socket, dst: socket.socket, upward: bool, n: int) -> bool:
        with self._lock:
            self._sockets += [s for s in (src, dst) if s not in self._sockets]
            if upward:
                self.uploaded += n
            over = upward and self.limit is not None and self.uploaded > self.limit
        if over:
            self.cut()
        return not self.cut_done.is_set()

    def cut(self) -> None:
        self.cut_done.set()
        self.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class DelayProxyProcess:
    """A DelayProxy in a process of its own (what a benchmark wants: its threads then share
    no interpreter lock with the client measured). Same `port` and `close()`."""

    def __init__(self, target_port: int, delay: float, bandwidth: float | None = None) -> None:
        args = [sys.executable, str(Path(__file__).resolve()), "delay-proxy", str(target_port), repr(delay)]
        if bandwidth:
            args.append(repr(bandwidth))
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.strip().isdigit():
            stop(self.proc)
            raise RuntimeError(f"the delaying proxy did not start (it said {line!r})")
        self.port = int(line)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()  # the proxy exits when its stdin closes
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            stop(self.proc)


@pytest.fixture
def delay_proxy() -> Iterator[Callable[[int, float], DelayProxy]]:
    made: list[DelayProxy] = []

    def make(target_port: int, delay: float) -> DelayProxy:
        made.append(DelayProxy(target_port, delay))
        return made[-1]

    yield make
    for p in made:
        p.close()


# -- a misbehaving HTTP server ---------------------------------------------------------------------


@dataclass
class Fault:
    """How the server answers GETs: `mode` is one of
    "ok", "ignore_range" (200 with the whole body), "reset" (half the body, then a reset),
    "short" (a Content-Length the body does not reach, then close), "stall" (headers, then
    nothing), "error_503" (503s), "refuse_suffix" (416 to suffix ranges)."""

    mode: str = "ok"
    # Apply the fault only to this many requests, then answer normally (None: always).
    times: int | None = None
    # Only to requests after the first `skip` ones (the open request, typically).
    skip: int = 0
    etag: str = '"v1"'
    # Seconds every response waits before its headers (so that parallel requests overlap).
    delay: float = 0.0


@dataclass
class FaultServer:
    port: int
    files: dict[str, bytes] = field(default_factory=dict)
    fault: Fault = field(default_factory=Fault)
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, range)
    etags: dict[str, str] = field(default_factory=dict)
    # Requests being answered now, and the most ever at once.
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not m:
        return None
    a, b = m.groups()
    if a == "":
        n = int(b)
        return (max(0, size - n), size)
    start = int(a)
    end = int(b) + 1 if b else size
    return (start, min(end, size))


def _serve_fault_client(server: FaultServer, conn: socket.socket, stopped: threading.Event) -> None:
    conn.settimeout(30)
    buf = b""
    try:
        while not stopped.is_set():
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            name = target.lstrip("/")
            rng = headers.get("range", "")
            server.log.append((method, name, rng))
            index = len(server.log)
            fault = server.fault
            active = index > fault.skip and (fault.times is None or index - fault.skip <= fault.times)
            mode = fault.mode if active else "ok"
            body = server.files.get(name)
            etag = server.etags.get(name, fault.etag)
            if body is None:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                continue
            if mode == "error_503":
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                continue
            if_match = headers.get("if-match")
            if if_match and if_match != etag:
                conn.sendall(b"HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\n\r\n")
                continue
            size = len(body)
            common = f"ETag: {etag}\r\nLast-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\nAccept-Ranges: bytes\r\n"
            if method == "HEAD":
                conn.sendall(f"HTTP/1.1 200 OK\r\n{common}Content-Length: {size}\r\n\r\n".encode())
                continue
            span = _parse_range(rng, size) if rng else None
            if mode == "refuse_suffix" and rng.startswith("bytes=-"):
                conn.sendall(f"HTTP/1.1 416 Range Not Satisfiable\r\n{common}Content-Length: 0\r\n\r\n".encode())
                continue
            if span is None or mode == "ignore_range":
                status, part = "200 OK", body
                extra = ""
            else:
                a, b = span
                status, part = "206 Partial Content", body[a:b]
                extra = f"Content-Range: bytes {a}-{b - 1}/{size}\r\n"
            header = f"HTTP/1.1 {status}\r\n{common}{extra}Content-Length: {len(part)}\r\n\r\n".encode()
            with server.lock:
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                time.sleep(fault.delay)
            finally:
                with server.lock:
                    server.in_flight -= 1
            if mode == "reset":
                conn.sendall(header + part[: len(part) // 2])
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()
                return
            if mode == "short":
                conn.sendall(header + part[: len(part) // 2])
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
                return
            if mode == "stall":
                conn.sendall(header)
                stopped.wait(60)
                return
            conn.sendall(header + part)
    except OSError:
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = FaultServer(port=sock.getsockname()[1])
    stopped = threading.Event()

    def accept() -> None:
        while not stopped.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=_serve_fault_client, args=(server, conn, stopped), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server
    stopped.set()
    sock.close()


if __name__ == "__main__":
    # `remote_servers.py delay-proxy TARGET_PORT DELAY [BANDWIDTH]`: prints the port, serves
    # until stdin closes (see DelayProxyProcess).
    if len(sys.argv) in (4, 5) and sys.argv[1] == "delay-proxy":
        proxy = DelayProxy(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) == 5 else None)
        print(proxy.port, flush=True)
        sys.stdin.read()
        proxy.close()
    else:
        sys.exit("usage: remote_servers.py delay-proxy TARGET_PORT DELAY_SECONDS [BYTES_PER_SECOND]")
