#!/usr/bin/env python3
"""Remote reads: bpz over HTTP against safetensors read the way the Hub reads it, same server, same run.

    .venv/bin/python bench/remote.py                          # 256 MiB, 7 rounds, 0 and 20 ms
    .venv/bin/python bench/remote.py --scale 0.05 --repeat 3  # smoke

nginx (the one of tests/remote, started here on 127.0.0.1 and stopped at the end) serves a
temporary folder holding one bpz archive and one safetensors file of the same 64 float32
tensors (``--scale`` x 4 MiB each). For each latency (0 ms: straight to nginx; 20 ms: through
the delaying proxy of tests/remote run in a process of its own, a delay line of 20 ms each way
that also charges a new connection's handshake; ``--bandwidth`` caps its rate) and each round,
in an order that rotates from round to round:

* bpz-one: ``bpz.open(url)`` + the middle tensor, a fresh open every round with a new client
  (options that differ each time), so a new connection (cold, as in a new process);
* st-one: safetensors as the Hub reads it, on one fresh keep-alive connection: a ranged GET
  of the 8-byte header length, one of the JSON header, one of the tensor's bytes (3 requests);
* bpz-one-warm: the same open + tensor with the same options every round: bpz reuses its
  client, so the connection of the previous round (a process opening several archives);
* st-one-warm: st-one on one connection kept open across rounds (a client with a session);
* st-one-2req: the same with a speculative first read of 100 KB (header length and header in
  one request when the header fits, as huggingface_hub does), for reference;
* get-st: one GET of the whole safetensors file into memory (downloading the file);
* bpz-load: what ``bpz.load_pytree(url)`` does (open + ``load()``; the archive kept to read
  its request count; ``load_pytree(url)`` itself is checked against the source once);
* get-bpz: one plain GET of the bpz file's bytes into memory (the baseline of bpz-load).

Every figure is the median of the rounds (min-max beside it), after one untimed round that
also checks every result against the source arrays. Requests are counted by the client
(``Archive._request_stats()`` for bpz, the requests sent for the others) and by nginx's
access log. Targets (issue 15): bpz-one <= 0.5 x st-one at 20 ms; bpz-load >= 0.8 x get-bpz.

    .venv/bin/python bench/remote.py --bandwidth 100 --open-tail-bytes 1048576  # a first read of 1 MiB

"""

from __future__ import annotations

import argparse
import datetime as _dt
import http.client
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "remote"))

import remote_servers  # noqa: E402  (nginx and the delaying proxy of the tests)

import bpz  # noqa: E402

MIB = 1 << 20
N_TENSORS = 64
COLS = 1024
HUB_SPECULATIVE_HEADER = 100_000  # bytes huggingface_hub asks for first when reading a header
ONE_TARGET = 0.5
LOAD_TARGET = 0.8
# Below this share of the direct GET's throughput, the 20 ms figures measure the proxy too.
PROXY_CAP_WARNING = 0.7


class _TempDirs:
    """The tmp_path_factory the nginx fixture expects, outside pytest."""

    def __init__(self, base: str) -> None:
        self.base = base

    def mktemp(self, name: str):
        from pathlib import Path

        return Path(tempfile.mkdtemp(prefix=name, dir=self.base))


def make_tensors(scale: float, seed: int = 0) -> dict[str, np.ndarray]:
    rows = max(1, round(1024 * scale))
    rng = np.random.default_rng(seed)
    return {f"layers.{i:02d}.w": rng.standard_normal((rows, COLS), dtype=np.float32) * np.float32(0.02)
            for i in range(N_TENSORS)}


# -- plain HTTP clients ----------------------------------------------------------------------------


def _read_exact(resp: http.client.HTTPResponse, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = resp.readinto(view[got:])
        if not k:
            raise OSError(f"short body: {got} of {n} bytes")
        got += k
    return buf


def _get(conn: http.client.HTTPConnection, path: str, rng: tuple[int, int] | None = None) -> bytearray:
    """One GET (of bytes [a, b) if rng) read into memory; the connection stays open."""
    headers = {"Range": f"bytes={rng[0]}-{rng[1] - 1}"} if rng else {}
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    want = 206 if rng else 200
    if resp.status != want:
        raise OSError(f"GET {path} {headers}: HTTP {resp.status}, expected {want}")
    length = resp.getheader("Content-Length")
    if length is None:
        raise OSError(f"GET {path}: no Content-Length")
    return _read_exact(resp, int(length))


def get_whole(port: int, path: str) -> tuple[bytearray, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        return _get(conn, path), 1
    finally:
        conn.close()


def safetensors_one(port: int, path: str, name: str, speculative: bool,
                    conn: http.client.HTTPConnection | None = None) -> tuple[np.ndarray, int]:
    """Reads one tensor of a remote safetensors file with ranged GETs on one connection: a
    new one, or `conn` (kept open)."""
    keep = conn is not None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    requests = 0
    try:
        if speculative:
            head = _get(conn, path, (0, HUB_SPECULATIVE_HEADER))
            requests += 1
            n = int.from_bytes(head[:8], "little")
            if 8 + n <= len(head):
                header = bytes(head[8:8 + n])
            else:
                header = bytes(head[8:]) + bytes(_get(conn, path, (len(head), 8 + n)))
                requests += 1
        else:
            n = int.from_bytes(_get(conn, path, (0, 8)), "little")
            header = bytes(_get(conn, path, (8, 8 + n)))
            requests += 2
        info = json.loads(header)[name]
        begin, end = info["data_offsets"]
        data = _get(conn, path, (8 + n + begin, 8 + n + end))
        requests += 1
        if info["dtype"] != "F32":
            raise ValueError(f"{name}: dtype {info['dtype']}, the bench writes F32")
        return np.frombuffer(data, dtype=np.float32).reshape(info["shape"]), requests
    finally:
        if not keep:
            conn.close()


# -- the cases -------------------------------------------------------------------------------------


CASES = ["bpz-one", "st-one", "bpz-one-warm", "st-one-warm", "st-one-2req", "get-st", "bpz-load", "get-bpz"]

_fresh = iter(range(1 << 62))


def bpz_options(fresh: bool) -> dict[str, str]:
    """Storage options of the bpz cases: --open-tail-bytes if given and, for a cold open, a
    connect timeout that differs each time (5 s + n µs): bpz reuses a client only for equal
    options, so the open builds a new client and connection, as a new process would."""
    opts = dict(bench_options)
    if fresh:
        opts["connect_timeout"] = f"{5 + next(_fresh) * 1e-6:.6f}s"
    return opts


bench_options: dict[str, str] = {}
# One kept-alive connection per port for st-one-warm (as a client with a session has).
_warm_conns: dict[int, http.client.HTTPConnection] = {}


def run_case(case: str, port: int, tensors: dict[str, np.ndarray], name: str, verify: bool) -> tuple[float, int]:
    """Runs one case once; returns (seconds, requests counted by the client)."""
    base = f"http://127.0.0.1:{port}"
    if case == "st-one-warm" and port not in _warm_conns:
        _warm_conns[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    t0 = time.perf_counter()
    if case in ("bpz-one", "bpz-one-warm"):
        with bpz.open(f"{base}/model.bpz", storage_options=bpz_options(case == "bpz-one")) as archive:
            value = archive[name]
            requests = archive._request_stats()["requests"]
    elif case in ("st-one", "st-one-2req"):
        value, requests = safetensors_one(port, "/model.safetensors", name, speculative=case == "st-one-2req")
    elif case == "st-one-warm":
        value, requests = safetensors_one(port, "/model.safetensors", name, speculative=False,
                                          conn=_warm_conns[port])
    elif case == "get-st":
        value, requests = get_whole(port, "/model.safetensors")
    elif case == "get-bpz":
        value, requests = get_whole(port, "/model.bpz")
    elif case == "bpz-load":
        # load_pytree closes its archive; open() gives the same load and keeps the counters.
        with bpz.open(f"{base}/model.bpz", storage_options=bpz_options(False)) as archive:
            value = archive.load()
            requests = archive._request_stats()["requests"]
    else:
        raise ValueError(case)
    seconds = time.perf_counter() - t0
    if verify:
        _check(case, value, tensors, name)
    return seconds, requests


def _check(case: str, value, tensors: dict[str, np.ndarray], name: str) -> None:
    if case in ("bpz-one", "bpz-one-warm", "st-one", "st-one-warm", "st-one-2req"):
        ok = value.shape == tensors[name].shape and np.array_equal(value, tensors[name])
    elif case == "bpz-load":
        ok = set(value) == set(tensors) and all(np.array_equal(value[k], tensors[k]) for k in tensors)
    else:  # a whole file: compare with the file nginx serves
        path = "model.safetensors" if case == "get-st" else "model.bpz"
        with open(os.path.join(_check.root, path), "rb") as f:
            ok = f.read() == value
    if not ok:
        raise SystemExit(f"{case}: the bytes read differ from the source")


def _load_via_open_matches_load_pytree(url: str, tensors: dict[str, np.ndarray]) -> None:
    tree = bpz.load_pytree(url)
    if set(tree) != set(tensors) or not all(np.array_equal(tree[k], tensors[k]) for k in tensors):
        raise SystemExit("bpz.load_pytree(url) differs from the source tree")


# -- report ----------------------------------------------------------------------------------------


def _fmt_ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:.1f} ({min(xs) * 1e3:.1f}–{max(xs) * 1e3:.1f})"


def report(args, cmdline, samples, reqs, server_reqs, sizes, meta) -> str:
    lat_names = {lat: f"{lat:g} ms" for lat in args.latencies}
    med = {(c, lat): statistics.median(samples[c, lat]) for c in CASES for lat in args.latencies}
    out = ["# Remote reads: bpz vs safetensors over HTTP (nginx on 127.0.0.1)", "",
           f"Command: `{cmdline}`", "",
           f"{meta['started']}, {meta['machine']}; load average {meta['load_before']:.2f} before, "
           f"{meta['load_after']:.2f} after; bpz {bpz.__version__}, nginx {meta['nginx']}.", "",
           f"Data: {N_TENSORS} float32 tensors of {sizes['tensor'] / MIB:.2f} MiB "
           f"({sizes['total'] / MIB:.0f} MiB); bpz file {sizes['bpz'] / MIB:.1f} MiB (format {meta['format']}), "
           f"safetensors file {sizes['st'] / MIB:.1f} MiB; one tensor = `{meta['name']}` (the middle one). "
           f"{max(args.latencies):g} ms = the delaying proxy of tests/remote in a process of its own (a delay "
           f"line: every byte leaves {max(args.latencies):g} ms after it arrived, each way, so one round trip = "
           f"{2 * max(args.latencies):g} ms and a new connection pays one more for its handshake"
           f"{'; bandwidth ' + format(args.bandwidth, 'g') + ' MB/s each way, shared' if args.bandwidth else ''}). "
           f"bpz storage options: {bench_options or 'defaults'}. "
           f"Median of {args.repeat} rounds (min–max), interleaved, after one "
           f"untimed round checking every result against the source.", "",
           "| case | " + " | ".join(f"{lat_names[lat]}: ms | req (client/server) | MB/s"
                                    for lat in args.latencies) + " |",
           "| --- |" + " --- | --- | --- |" * len(args.latencies)]
    nbytes = {"bpz-one": sizes["tensor"], "st-one": sizes["tensor"], "st-one-2req": sizes["tensor"],
              "bpz-one-warm": sizes["tensor"], "st-one-warm": sizes["tensor"],
              "get-st": sizes["st"], "get-bpz": sizes["bpz"], "bpz-load": sizes["total"]}
    labels = {"bpz-one": "bpz: open + one tensor (cold: new client, new connection)",
              "st-one": "safetensors: 8-byte length + header + tensor range (new connection)",
              "bpz-one-warm": "bpz: open + one tensor, client reused (warm connection)",
              "st-one-warm": "safetensors: the 3 ranges on a kept-alive connection",
              "st-one-2req": "safetensors: 100 KB speculative header + tensor range",
              "get-st": "download the whole safetensors file (one GET)",
              "bpz-load": "bpz: full load (open + load)",
              "get-bpz": "one GET of the bpz file into memory"}
    for c in CASES:
        cells = []
        for lat in args.latencies:
            r = sorted(set(reqs[c, lat]))
            s = sorted(set(server_reqs[c, lat]))
            cells.append(f"{_fmt_ms(samples[c, lat])} | {'/'.join(map(str, r))} / {'/'.join(map(str, s))} | "
                         f"{nbytes[c] / MIB / med[c, lat]:.0f}")
        out.append(f"| {labels[c]} | " + " | ".join(cells) + " |")
    out += ["", "MB/s = MiB of tensor data (one tensor, all tensors) or of the file (GETs) per second.", "",
            "| ratio | " + " | ".join(lat_names[lat] for lat in args.latencies) + " | target |",
            "| --- |" + " --- |" * len(args.latencies) + " --- |"]

    def ratio_row(label, num, den, target, higher_better, judged_at):
        cells, verdicts = [], []
        for lat in args.latencies:
            r = med[num, lat] / med[den, lat]
            if higher_better:  # a throughput ratio: time of the baseline over time of bpz
                r = med[den, lat] / med[num, lat]
            cells.append(f"{r:.2f}")
            if target is not None and lat in judged_at:
                met = r >= target if higher_better else r <= target
                verdicts.append(f"{'met' if met else 'NOT met'} at {lat_names[lat]}")
        tgt = "—" if target is None else f"{'≥' if higher_better else '≤'} {target}: " + ", ".join(verdicts)
        out.append(f"| {label} | " + " | ".join(cells) + f" | {tgt} |")

    top = max(args.latencies)
    ratio_row("bpz one tensor / safetensors one tensor (time, both cold)", "bpz-one", "st-one", ONE_TARGET, False,
              [top])
    ratio_row("bpz one tensor / safetensors one tensor (time, both warm)", "bpz-one-warm", "st-one-warm", ONE_TARGET,
              False, [top])
    ratio_row("bpz one tensor / safetensors 100 KB-header variant (time)", "bpz-one", "st-one-2req", None, False, [])
    ratio_row("bpz one tensor / downloading the safetensors file (time)", "bpz-one", "get-st", None, False, [])
    ratio_row("bpz full load / one GET of the same bytes (throughput)", "bpz-load", "get-bpz", LOAD_TARGET, True,
              args.latencies)
    notes = []
    direct = [lat for lat in args.latencies if lat == 0]
    for lat in args.latencies:
        if lat == 0 or not direct:
            continue
        # Throughput of the GET once its one round trip is taken off, against the direct GET.
        body = max(med["get-bpz", lat] - 2 * lat / 1e3, 1e-6)
        share = med["get-bpz", 0] / body
        if args.bandwidth:
            notes.append(f"- At {lat_names[lat]} the proxy caps the rate at {args.bandwidth:g} MB/s: the GET "
                         f"moves {sizes['bpz'] / 1e6 / body:.0f} MB/s (its round trip taken off).")
        elif share < PROXY_CAP_WARNING:
            notes.append(f"- At {lat_names[lat]} the GET through the proxy moves {sizes['bpz'] / MIB / body:.0f} MiB/s "
                         f"(its round trip taken off) against {sizes['bpz'] / MIB / med['get-bpz', 0]:.0f} MiB/s "
                         f"direct ({share:.0%}): the proxy caps throughput (it shares the machine's cores with "
                         f"nginx and the client), so throughput figures at {lat_names[lat]} measure the proxy "
                         f"as much as the client.")
        else:
            notes.append(f"- At {lat_names[lat]} the GET through the proxy keeps {share:.0%} of the direct GET's "
                         f"throughput (round trip taken off): the proxy is not the bottleneck.")
    if notes:
        out += ["", *notes]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 64 tensors of 4 MiB (256 MiB)")
    ap.add_argument("--repeat", type=int, default=7, help="timed rounds (median reported)")
    ap.add_argument("--latencies", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 20.0],
                    help="one-way delays in ms, comma-separated (0 = straight to nginx)")
    ap.add_argument("--bandwidth", type=float, default=None,
                    help="cap the proxy's rate at this many MB/s each way (shared by all connections; "
                         "default: no cap)")
    ap.add_argument("--open-tail-bytes", type=int, default=None,
                    help="bpz's first read on open (the storage option open_tail_bytes; default: bpz's)")
    ap.add_argument("--out", help="also write the markdown table to this file")
    ap.add_argument("--workdir", default=None, help="where the files and nginx's folder go (a temp dir)")
    args = ap.parse_args(argv)
    if args.scale <= 0 or args.repeat < 1 or any(lat < 0 for lat in args.latencies):
        ap.error("--scale must be > 0, --repeat >= 1, latencies >= 0")
    if args.bandwidth is not None and args.bandwidth <= 0:
        ap.error("--bandwidth must be > 0")
    if args.open_tail_bytes is not None:
        bench_options["open_tail_bytes"] = str(args.open_tail_bytes)
    cmdline = shlex.join([".venv/bin/python", "bench/remote.py"] + (sys.argv[1:] if argv is None else argv))
    started = _dt.datetime.now().isoformat(timespec="seconds")
    load_before = os.getloadavg()[0]
    t_start = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f}s load {os.getloadavg()[0]:5.2f}] {msg}", file=sys.stderr, flush=True)

    from safetensors.numpy import save_file

    with tempfile.TemporaryDirectory(prefix="bpz-remote-bench-", dir=args.workdir) as work:
        server_gen = remote_servers.nginx.__wrapped__(_TempDirs(work))
        try:
            server = next(server_gen)
        except BaseException as e:  # pytest.fail's Failed is a BaseException
            if type(e).__name__ == "Failed":
                raise SystemExit(f"cannot start nginx: {e}") from None
            raise
        proxies: list[remote_servers.DelayProxyProcess] = []
        try:
            tensors = make_tensors(args.scale)
            names = list(tensors)
            name = names[len(names) // 2]
            root = str(server.root)
            _check.root = root
            bpz.save_pytree(os.path.join(root, "model.bpz"), tensors, verbose=False)
            save_file(tensors, os.path.join(root, "model.safetensors"))
            sizes = {"tensor": tensors[name].nbytes, "total": sum(t.nbytes for t in tensors.values()),
                     "bpz": os.path.getsize(os.path.join(root, "model.bpz")),
                     "st": os.path.getsize(os.path.join(root, "model.safetensors"))}
            log(f"files written: bpz {sizes['bpz'] / MIB:.1f} MiB, safetensors {sizes['st'] / MIB:.1f} MiB")
            ports = {}
            for lat in args.latencies:
                if lat == 0:
                    ports[lat] = server.port
                else:
                    bandwidth = args.bandwidth * 1e6 if args.bandwidth else None
                    proxies.append(remote_servers.DelayProxyProcess(server.port, lat / 1e3, bandwidth))
                    ports[lat] = proxies[-1].port
            _load_via_open_matches_load_pytree(f"http://127.0.0.1:{server.port}/model.bpz", tensors)

            samples = {(c, lat): [] for c in CASES for lat in args.latencies}
            reqs = {(c, lat): [] for c in CASES for lat in args.latencies}
            server_reqs = {(c, lat): [] for c in CASES for lat in args.latencies}
            for rnd in range(args.repeat + 1):
                warmup = rnd == 0
                order = CASES[rnd % len(CASES):] + CASES[:rnd % len(CASES)]
                for lat in args.latencies:
                    for c in order:
                        mark = len(server.log_lines())
                        seconds, n = run_case(c, ports[lat], tensors, name, verify=warmup)
                        # nginx logs a request once it has sent it: give the last line a moment.
                        time.sleep(0.02)
                        served = len(server.log_lines()) - mark
                        if not warmup:
                            samples[c, lat].append(seconds)
                            reqs[c, lat].append(n)
                            server_reqs[c, lat].append(served)
                log("checked every result against the source" if warmup else f"round {rnd}/{args.repeat}")
            with bpz.open(os.path.join(root, "model.bpz")) as a:
                fmt = "{}.{}".format(*a.version)
        finally:
            for c in _warm_conns.values():
                c.close()
            for p in proxies:
                p.close()
            server_gen.close()  # stops nginx (its process group)
    try:
        nginx_version = subprocess.run([remote_servers.shutil.which("nginx") or "/usr/sbin/nginx", "-v"],
                                       capture_output=True, text=True, timeout=10).stderr.strip().split("/")[-1]
    except (OSError, subprocess.SubprocessError):
        nginx_version = "?"
    meta = {"started": started, "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python "
            f"{platform.python_version()}", "load_before": load_before, "load_after": os.getloadavg()[0],
            "nginx": nginx_version, "format": fmt, "name": name}
    text = report(args, cmdline, samples, reqs, server_reqs, sizes, meta)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
