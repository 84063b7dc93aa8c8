"""RESULTS.md and the throughput plot, from the raw results of bench/run.py."""

from __future__ import annotations

import os
import statistics
from typing import Any

import tools

GiB = 2**30
MiB = 2**20

COLUMNS = [  # metric, header
    ("save", "save"),
    ("save_fsync", "save+fsync"),
    ("load_warm", "load warm"),
    ("load_cold", "load cold"),
    ("one_warm", "one tensor warm"),
    ("one_cold", "one tensor cold"),
    ("one_view_warm", "one tensor view warm"),
    ("one_view_cold", "one tensor view cold"),
    ("rows_warm", "row range warm"),
    ("rows_cold", "row range cold"),
]
# Which physical limit each column is compared with (all from the 'limit:file' tool).
LIMIT_OF = {"save": "save", "save_fsync": "save_fsync", "load_warm": "load_warm", "load_cold": "load_cold",
            "one_warm": "one_warm", "one_cold": "one_cold", "one_view_warm": "one_warm",
            "one_view_cold": "one_cold", "rows_warm": "rows_warm", "rows_cold": "rows_cold"}


class Stats:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.raw = doc["raw"]

    def samples(self, wl: str, tool: str, metric: str) -> list[float]:
        return self.raw.get(wl, {}).get(tool, {}).get(metric, [])

    def med(self, wl: str, tool: str, metric: str) -> float | None:
        s = self.samples(wl, tool, metric)
        return statistics.median(s) if s else None

    def payload(self, wl: str) -> int:
        return self.doc["manifests"][wl]["total_bytes"]


def fmt_t(t: float | None) -> str:
    if t is None:
        return "—"
    if t < 1e-3:
        return f"{t * 1e6:.0f} µs"
    if t < 1:
        return f"{t * 1e3:.3g} ms" if t < 0.1 else f"{t * 1e3:.0f} ms"
    return f"{t:.2f} s" if t < 100 else f"{t:.0f} s"


def fmt_b(n: float | None) -> str:
    if n is None:
        return "—"
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n:.0f} B"


def fmt_x(x: float | None) -> str:
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:,.0f}×"
    if x >= 10:
        return f"{x:.1f}×"
    return f"{x:.2f}×"


def cell_t(st: Stats, wl: str, tool: str, metric: str, repeat: int) -> str:
    s = st.samples(wl, tool, metric)
    if not s:
        return "—"
    m = statistics.median(s)
    txt = fmt_t(m)
    if len(s) > 1:
        txt += f" <sub>{fmt_t(min(s))}–{fmt_t(max(s))}</sub>"
    if len(s) < repeat:
        txt += f" <sub>n={len(s)}</sub>"
    return txt


def _is_views(tool: str) -> bool:
    t = tools.REGISTRY.get(tool)
    return bool(t and t.views)


def best_alternative(st: Stats, wl: str, tool: str, metric: str) -> tuple[str, float] | None:
    """Fastest other real tool in the same column: for bpz tools only non-bpz ones count."""
    me = tools.REGISTRY.get(tool)
    cands = []
    for other, metrics in st.raw.get(wl, {}).items():
        ot = tools.REGISTRY.get(other)
        if other == tool or ot is None or ot.group not in ("alt", "bpz"):
            continue
        if me is not None and me.group == "bpz" and ot.group == "bpz":
            continue
        if metric.startswith("load") and _is_views(other) != _is_views(tool):
            continue
        m = st.med(wl, other, metric)
        if m is not None and m > 0:
            cands.append((m, other))
    if not cands:
        return None
    m, other = min(cands)
    return other, m


def ratio_vs_best(st: Stats, wl: str, tool: str, metric: str) -> float | None:
    mine = st.med(wl, tool, metric)
    b = best_alternative(st, wl, tool, metric)
    if mine is None or b is None or mine <= 0:
        return None
    return b[1] / mine


def ratio_vs_limit(st: Stats, wl: str, tool: str, metric: str) -> float | None:
    mine = st.med(wl, tool, metric)
    lim = st.med(wl, "limit:file", LIMIT_OF[metric])
    if mine is None or lim is None or mine <= 0:
        return None
    return lim / mine


def size_of(st: Stats, wl: str, tool: str) -> float | None:
    return st.med(wl, tool, "size")


def ordered_tools(doc: dict[str, Any], wl: str) -> list[str]:
    have = doc["raw"].get(wl, {})
    return [t for t in tools.REGISTRY if t in have and have[t]]


# ----------------------------------------------------------------------------- targets


def targets(st: Stats) -> list[dict[str, Any]]:
    wls = [w for w in st.doc["workloads"]]
    T: list[dict[str, Any]] = []

    def add(goal: str, wl: str, value: float | None, ok: bool | None, shown: str, detail: str = "") -> None:
        T.append({"goal": goal, "wl": wl, "value": value, "ok": ok, "shown": shown, "detail": detail})

    def r(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b <= 0 else a / b

    main = [w for w in wls if w in ("W1-dense", "W4-bf16")] or wls[:1]
    for wl in main:
        m = lambda t, k: st.med(wl, t, k)  # noqa: E731
        v = r(m("limit:file", "save"), m("bpz-raw", "save"))
        add("raw save ≥ 0.85× the page-cache write limit (no fsync)", wl, v, v is not None and v >= 0.85, fmt_x(v),
            f"bpz {fmt_t(m('bpz-raw', 'save'))} vs write {fmt_t(m('limit:file', 'save'))}")
        v = r(m("limit:file", "save_fsync"), m("bpz-raw", "save_fsync"))
        add("raw save+fsync ≥ 0.85× the write+fsync limit", wl, v, v is not None and v >= 0.85, fmt_x(v),
            f"bpz {fmt_t(m('bpz-raw', 'save_fsync'))} vs write+fsync {fmt_t(m('limit:file', 'save_fsync'))}")
        v = r(m("safetensors", "save"), m("bpz-raw", "save"))
        add("raw save ≥ 1.0× safetensors (no fsync)", wl, v, v is not None and v >= 1.0, fmt_x(v),
            f"bpz {fmt_t(m('bpz-raw', 'save'))} vs {fmt_t(m('safetensors', 'save'))}")
        v = r(m("safetensors", "save_fsync"), m("bpz-raw", "save_fsync"))
        add("raw save ≥ 1.0× safetensors (with fsync)", wl, v, v is not None and v >= 1.0, fmt_x(v),
            f"bpz {fmt_t(m('bpz-raw', 'save_fsync'))} vs {fmt_t(m('safetensors', 'save_fsync'))}")
        v = r(m("safetensors", "load_warm"), m("bpz-raw/views", "load_warm"))
        add("open whole archive as zero-copy views ≥ 20× faster than safetensors load_file (warm)", wl, v,
            v is not None and v >= 20, fmt_x(v),
            f"bpz open().tree() {fmt_t(m('bpz-raw/views', 'load_warm'))} vs load_file {fmt_t(m('safetensors', 'load_warm'))}")
        v = r(m("safetensors", "load_warm"), m("bpz-raw", "load_warm"))
        add("full load into owned arrays ≥ 1.0× safetensors (warm)", wl, v, v is not None and v >= 1.0, fmt_x(v),
            f"load_pytree {fmt_t(m('bpz-raw', 'load_warm'))} vs load_file {fmt_t(m('safetensors', 'load_warm'))}")
        v = r(m("safetensors", "load_cold"), m("bpz-raw", "load_cold"))
        add("full load into owned arrays ≥ 1.5× safetensors (cold)", wl, v, v is not None and v >= 1.5, fmt_x(v),
            f"load_pytree {fmt_t(m('bpz-raw', 'load_cold'))} vs load_file {fmt_t(m('safetensors', 'load_cold'))}")
    # one tensor zero-copy, every workload
    worst = None
    for wl in wls:
        v = st.med(wl, "bpz-raw", "one_view_warm")
        if v is not None:
            size = st.doc["manifests"][wl]["one"]["nbytes"]
            add("one tensor (zero-copy, open + archive[name]) ≤ 50 µs whatever its size (warm)", wl, v,
                v <= 50e-6, fmt_t(v), f"{fmt_b(size)} tensor; cold: {fmt_t(st.med(wl, 'bpz-raw', 'one_view_cold'))}")
            worst = v if worst is None else max(worst, v)

    def codec_best(wl: str, metric: str) -> tuple[str, float] | None:
        c = [(st.med(wl, t, metric), t) for t in ("codec:zstd-mt", "codec:zstd-chunks") if st.med(wl, t, metric)]
        return (min(c)[1], min(c)[0]) if c else None

    for wl in [w for w in wls if w != "W3-small"]:
        m = lambda t, k: st.med(wl, t, k)  # noqa: E731
        cb = codec_best(wl, "save")
        if cb:
            v = r(cb[1], m("bpz-zstd", "save"))
            add("compressed save ≥ 0.8× the bare codec's throughput (zstd-1 + shuffle, 2 cores; bpz without fsync)",
                wl, v, v is not None and v >= 0.8, fmt_x(v),
                f"bpz zstd {fmt_t(m('bpz-zstd', 'save'))} (with fsync {fmt_t(m('bpz-zstd', 'save_fsync'))}) vs {cb[0]} {fmt_t(cb[1])}")
        cb = codec_best(wl, "load_warm")
        if cb:
            v = r(cb[1], m("bpz-zstd", "load_warm"))
            add("compressed load ≥ 0.8× the bare codec's throughput (warm)", wl, v, v is not None and v >= 0.8,
                fmt_x(v), f"bpz zstd load_pytree {fmt_t(m('bpz-zstd', 'load_warm'))} vs {cb[0]} {fmt_t(cb[1])}")
        sb, sz = m("codec:blosc2", "size"), m("bpz-zstd", "size")
        if sb and sz:
            pl = st.payload(wl)
            add("compression ratio ≥ Blosc2's at the same level", wl, pl / sz, sz <= sb,
                f"{pl / sz:.3f} vs {pl / sb:.3f}", "bpz zstd vs Blosc2 zstd clevel 1 + shuffle")
    if "W2-snn" in wls:
        wl = "W2-snn"
        pl = st.payload(wl)
        m = lambda t, k: st.med(wl, t, k)  # noqa: E731
        s0 = m("bpz-zstd/noflt", "size")
        if s0:
            add("W2 ratio ≥ 3.2 with zstd + shuffle only (no per-tensor filters)", wl, pl / s0, pl / s0 >= 3.2,
                f"{pl / s0:.2f}", "bpz compression=\"zstd\", filter forced to shuffle")
        for t, lab in (("bpz-auto", "default \"auto\""), ("bpz-zstd", "\"zstd\"")):
            s = m(t, "size")
            if s:
                add(f"W2 ratio ≥ 4.0 with per-tensor filters (delta on sorted indices, bit-packed bools) — bpz {lab}",
                    wl, pl / s, pl / s >= 4.0, f"{pl / s:.2f}")
        sn, sa = m("npz-deflate", "size"), m("bpz-auto", "size")
        if sn and sa:
            add("W2 ≥ 2× smaller than np.savez_compressed (bpz default)", wl, sn / sa, sn / sa >= 2, fmt_x(sn / sa),
                f"{fmt_b(sa)} vs {fmt_b(sn)}")
            v = r(m("npz-deflate", "save_fsync"), m("bpz-auto", "save_fsync"))
            add("W2 save ≥ 20× faster than np.savez_compressed (both with fsync)", wl, v, v is not None and v >= 20,
                fmt_x(v), f"{fmt_t(m('bpz-auto', 'save_fsync'))} vs {fmt_t(m('npz-deflate', 'save_fsync'))}")
            v = r(m("npz-deflate", "load_warm"), m("bpz-auto", "load_warm"))
            add("W2 load ≥ 20× faster than np.load of the .npz (warm)", wl, v, v is not None and v >= 20, fmt_x(v),
                f"{fmt_t(m('bpz-auto', 'load_warm'))} vs {fmt_t(m('npz-deflate', 'load_warm'))}")
    for wl in wls:
        m = lambda t, k: st.med(wl, t, k)  # noqa: E731
        if m("msgpack", "save") is None:
            continue
        v = r(m("msgpack", "save"), m("bpz-auto", "save_fsync"))
        add("vs BrainPy .bp: save ≥ 10× faster (bpz with fsync vs .bp without)", wl, v, v is not None and v >= 10,
            fmt_x(v), f"{fmt_t(m('bpz-auto', 'save_fsync'))} vs {fmt_t(m('msgpack', 'save'))}; both with fsync: "
            f"{fmt_x(r(m('msgpack', 'save_fsync'), m('bpz-auto', 'save_fsync')))}; both without: "
            f"{fmt_x(r(m('msgpack', 'save'), m('bpz-auto', 'save')))}; ceiling (.bp save / write+fsync limit): "
            f"{fmt_x(r(m('msgpack', 'save'), m('limit:file', 'save_fsync')))}")
        v = r(m("msgpack", "load_warm"), m("bpz-auto", "load_warm"))
        add("vs BrainPy .bp: load ≥ 10× faster (warm)", wl, v, v is not None and v >= 10, fmt_x(v),
            f"{fmt_t(m('bpz-auto', 'load_warm'))} vs {fmt_t(m('msgpack', 'load_warm'))}; cold "
            f"{fmt_x(r(m('msgpack', 'load_cold'), m('bpz-auto', 'load_cold')))}; ceiling for owned arrays "
            f"(.bp load / pread-into-fresh-arrays limit): {fmt_x(r(m('msgpack', 'load_warm'), m('limit:file', 'load_warm')))}; "
            f"as zero-copy views: {fmt_x(r(m('msgpack', 'load_warm'), m('bpz-raw/views', 'load_warm')))}")
        v = r(m("msgpack", "one_warm"), m("bpz-auto", "one_view_warm"))
        add("vs BrainPy .bp: one tensor ≥ 1000× faster (archive[name], warm)", wl, v, v is not None and v >= 1000,
            fmt_x(v), f"{fmt_t(m('bpz-auto', 'one_view_warm'))} vs {fmt_t(m('msgpack', 'one_warm'))}; "
            f"verified copy read(): {fmt_x(r(m('msgpack', 'one_warm'), m('bpz-auto', 'one_warm')))}")
    for wl in wls:
        v = st.med(wl, "bpz-auto", "rss_save")
        if v is None:
            continue
        pl = st.payload(wl)
        add("saving adds ≤ 10 % of the payload (or 256 MiB) to peak RSS (bpz default)", wl, v,
            v <= max(0.1 * pl, 0) or v <= 256 * MiB, fmt_b(v),
            f"{100 * v / pl:.1f} % of {fmt_b(pl)}" + ("" if v <= 0.1 * pl else " (over 10 %, under 256 MiB)"
                                                       if v <= 256 * MiB else ""))
    if "W3-small" in wls:
        wl = "W3-small"
        m = lambda t, k: st.med(wl, t, k)  # noqa: E731
        for k, lab in (("save", "save (no fsync)"), ("save_fsync", "save+fsync"), ("load_warm", "load warm"),
                       ("load_cold", "load cold")):
            v = r(m("safetensors", k), m("bpz-auto", k))
            add(f"W3: within 2× of safetensors — {lab}", wl, v, v is not None and v >= 0.5, fmt_x(v),
                f"bpz {fmt_t(m('bpz-auto', k))} vs {fmt_t(m('safetensors', k))}")
    return T


# ----------------------------------------------------------------------------- markdown


def _machine_md(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    v = m["versions"]
    L = [
        f"* CPU: {m['cpu']}, {m['cores']} cores (virtualised: systemd-detect-virt says {m['virt']})" if m.get("virt") not in (None, "none", "?")
        else f"* CPU: {m['cpu']}, {m['cores']} cores",
        f"* RAM: {m['ram_bytes'] / GiB:.1f} GiB; kernel {m['kernel']}; transparent hugepages "
        f"`{m.get('thp', '?')}`; virtio-balloon free-page reporting: "
        f"{ {True: 'on', False: 'off', None: 'no balloon / unknown'}[m.get('balloon_free_page_reporting')] }",
        f"* Disk / filesystem of the work directory: `{m['filesystem']}`"
        + (f" (rotational={m['rotational']})" if m.get("rotational") else ""),
        f"* Python {m['python']}; " + ", ".join(f"{k} {x}" for k, x in v.items() if x),
        f"* Not installed / skipped: " + (", ".join(f"{k} ({x})" for k, x in doc["skipped"].items()) or "none"),
        f"* Load average: before {doc['load_before'][0]:.2f}, during (1-min, sampled before each process) "
        f"mean {doc['load_during']['mean'] or 0:.2f} / max {doc['load_during']['max'] or 0:.2f}, "
        f"after {doc['load_after'][0]:.2f}",
    ]
    b = doc.get("bpz_build") or {}
    if b:
        L.append(f"* bpz measured: commit {b.get('commit')}"
                 + (" with uncommitted changes under rust/" if b.get("rust_dirty") else "")
                 + f", extension sha256 {b.get('extension_sha256')} built {b.get('extension_mtime')}"
                 + (" — **the extension was rebuilt during the run**" if doc.get("bpz_build_changed") else ""))
    if m.get("env"):
        L.append("* Environment: " + ", ".join(f"{k}={x}" for k, x in m["env"].items()))
    return L


def table_md(st: Stats, wl: str) -> list[str]:
    doc = st.doc
    rep = doc["repeat"]
    pl = st.payload(wl)
    heads = ["tool"] + [h for _, h in COLUMNS] + ["size", "ratio", "peak RSS save", "peak RSS load (warm)"]
    L = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for t in ordered_tools(doc, wl):
        tool = tools.REGISTRY[t]
        row = [f"**{t}**" if tool.group == "bpz" else t]
        for metric, _ in COLUMNS:
            row.append(cell_t(st, wl, t, metric, rep))
        s = size_of(st, wl, t)
        row.append(fmt_b(s))
        row.append(f"{pl / s:.3f}" if s else "—")
        row.append(fmt_b(st.med(wl, t, "rss_save")))
        row.append(fmt_b(st.med(wl, t, "rss_load_warm")))
        L.append("| " + " | ".join(row) + " |")
    return L


def ratio_md(st: Stats, wl: str) -> list[str]:
    doc = st.doc
    cols = [c for c in COLUMNS if any(st.med(wl, t, c[0]) for t in doc["raw"].get(wl, {}))]
    heads = ["tool"] + [h for _, h in cols] + ["size (smaller = >1)"]
    L = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for t in ordered_tools(doc, wl):
        tool = tools.REGISTRY[t]
        if tool.group not in ("bpz", "alt"):
            continue
        row = [f"**{t}**" if tool.group == "bpz" else t]
        for metric, _ in cols:
            a = ratio_vs_best(st, wl, t, metric)
            b = ratio_vs_limit(st, wl, t, metric)
            if a is None and b is None:
                row.append("—")
                continue
            ba = best_alternative(st, wl, t, metric)
            row.append(f"{fmt_x(a)} <sub>vs {ba[0] if ba else '?'}</sub> · {fmt_x(b)}")
        s = size_of(st, wl, t)
        sizes = [(st.med(wl, o, "size"), o) for o in doc["raw"].get(wl, {})
                 if o != t and tools.REGISTRY.get(o) and tools.REGISTRY[o].group in ("alt", "bpz")
                 and not tools.REGISTRY[o].file_of and not (tool.group == "bpz" and tools.REGISTRY[o].group == "bpz")
                 and st.med(wl, o, "size")]
        if s and sizes:
            bs, bo = min(sizes)
            row.append(f"{fmt_x(bs / s)} <sub>vs {bo}</sub>")
        else:
            row.append("—")
        L.append("| " + " | ".join(row) + " |")
    return L


def write_all(doc: dict[str, Any], out: str, plot: str | None) -> None:
    st = Stats(doc)
    L: list[str] = []
    L.append("# bpz benchmark results")
    L.append("")
    L.append(f"Run {doc['started']} ({doc['duration_s'] / 60:.0f} min, {doc['processes']} measuring processes), "
             f"scale {doc['scale']:g}, {doc['repeat']} rounds"
             + (f" ({doc['slow_repeat']} for tools slower than {doc['slow_threshold']:g} s)"
                if doc["slow_repeat"] != doc["repeat"] else "")
             + (", every loaded byte verified against the source" if doc.get("verify") else "") + ".")
    L.append("")
    L.append("```sh")
    L.append(doc["command"])
    L.append("```")
    L.append("")
    L.append("## Machine")
    L.append("")
    L += _machine_md(doc)
    L.append("")
    L.append("How to read this: bench/README.md. In short — every figure is the median of the rounds "
             "(<sub>min–max</sub> below it; <sub>n=</sub> when fewer rounds ran), each measured in a fresh process "
             "with the tool already imported and the data already in memory. *warm* = the file is in the page cache, "
             "*cold* = its pages were dropped (fsync + `posix_fadvise(DONTNEED)`) just before. bpz's `save_pytree` "
             "fsyncs by default, so bpz's *save* column is `save_pytree(..., sync=False)` (the same writer without "
             "the fsync; `bpz.write.write_archive(sync=False)` on versions without the argument); "
             "for every other tool *save+fsync* is its save followed by an fsync of what it wrote. "
             "Peak RSS is the high-water mark of the measuring process minus its RSS just before the call "
             "(a load's peak includes the loaded arrays). Ratios are throughput ratios (>1 = faster / smaller).")
    L.append("")
    if plot:
        L.append(f"![throughput per tool and workload]({os.path.basename(plot)})")
        L.append("")
    tg = targets(st)
    L.append("## Targets (issue 6)")
    L.append("")
    if tg:
        L.append("| target | workload | measured | | detail |")
        L.append("|---|---|---|---|---|")
        for t in tg:
            mark = "—" if t["ok"] is None else ("met" if t["ok"] else "**missed**")
            L.append(f"| {t['goal']} | {t['wl']} | {t['shown']} | {mark} | {t['detail']} |")
        n_ok = sum(1 for t in tg if t["ok"])
        L.append("")
        L.append(f"{n_ok} of {len(tg)} checks met.")
    L.append("")
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ANALYSIS.md")
    if os.path.exists(notes):
        with open(notes) as f:
            L.append(f.read().rstrip())
        L.append("")
    for wl in doc["workloads"]:
        man = doc["manifests"][wl]
        L.append(f"## {wl}")
        L.append("")
        one = man["one"]
        rows = man["rows"]
        L.append(f"{man['description']}. Payload {fmt_b(man['total_bytes'])} in {man['n_tensors']} tensors. "
                 f"*One tensor* = `{'/'.join(one['path'])}` ({one['dtype']} {one['shape']}, {fmt_b(one['nbytes'])}); "
                 f"*row range* = rows {rows['lo']}:{rows['hi']} of `{'/'.join(rows['tensor']['path'])}` "
                 f"({rows['tensor']['dtype']} {rows['tensor']['shape']}).")
        L.append("")
        L += table_md(st, wl)
        L.append("")
        L.append(f"Ratios for {wl}: *speed vs the best alternative* (for bpz rows: the fastest non-bpz tool in that "
                 "column; loads into owned arrays and zero-copy opens are compared only among themselves) "
                 "· *speed vs the physical limit* (`limit:file`: write to page cache, write+fsync, pread of the "
                 "page-cached / cold file into fresh arrays).")
        L.append("")
        L += ratio_md(st, wl)
        L.append("")
        errs = doc["errors"].get(wl)
        if errs:
            L.append(f"Errors in {wl}:")
            L.append("")
            for k, v in errs.items():
                L.append(f"* `{k}`: {v.splitlines()[0][:300]}")
            L.append("")
    L.append("## Tools")
    L.append("")
    seen = set()
    for wl in doc["workloads"]:
        seen |= set(doc["raw"].get(wl, {}))
    for name, t in tools.REGISTRY.items():
        if name in seen:
            L.append(f"* `{name}` — {t.label}" + (f". {t.note}" if t.note else ""))
    if doc["skipped"]:
        L.append("")
        L.append("Skipped: " + "; ".join(f"`{k}`: {v}" for k, v in doc["skipped"].items()))
    L.append("")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(L))
    if plot:
        make_plot(st, plot)


def make_plot(st: Stats, path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        print(f"NOTE: matplotlib is not installed: no plot written to {path}")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = st.doc
    wls = doc["workloads"]
    metrics = [("save_fsync", "save+fsync", "#1f77b4"), ("save", "save (no fsync)", "#9ecae9"),
               ("load_warm", "load warm", "#2ca02c"), ("load_cold", "load cold", "#d62728")]
    n_tools = max(len(ordered_tools(doc, wl)) for wl in wls)
    ncols = 2 if len(wls) > 1 else 1
    nrows = (len(wls) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(9 * ncols, 0.36 * n_tools * nrows + 1.6), squeeze=False)
    for k, wl in enumerate(wls):
        ax = axes[k // ncols][k % ncols]
        names = ordered_tools(doc, wl)
        pl = st.payload(wl)
        h = 0.84 / len(metrics)
        lo = None
        for j, (mk, lab, col) in enumerate(metrics):
            vals = []
            for n in names:
                t = st.med(wl, n, mk)
                v = pl / t / 1e9 if t else 0.0
                vals.append(v)
                if v > 0:
                    lo = v if lo is None else min(lo, v)
            ys = [i + (j - (len(metrics) - 1) / 2) * h for i in range(len(names))]
            ax.barh(ys, vals, height=h, color=col, label=lab)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([("★ " if tools.REGISTRY[n].group == "bpz" else "") + n for n in names], fontsize=8)
        for tick, n in zip(ax.get_yticklabels(), names):
            g = tools.REGISTRY[n].group
            if g == "bpz":
                tick.set_fontweight("bold")
            elif g in ("limit", "codec"):
                tick.set_color("#666666")
        ax.invert_yaxis()
        ax.set_xscale("log")
        if lo:
            ax.set_xlim(left=lo / 2)
        ax.grid(axis="x", which="major", alpha=0.4)
        ax.grid(axis="x", which="minor", alpha=0.12)
        ax.set_xlabel("GB/s of payload (log scale; higher is better)", fontsize=8)
        ax.set_title(f"{wl} ({fmt_b(pl)}, {doc['manifests'][wl]['n_tensors']} tensors)", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    for k in range(len(wls), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    fig.suptitle(f"bpz benchmarks: throughput per tool (scale {doc['scale']:g}, median of {doc['repeat']} rounds). "
                 "codec rows: save = compress, load = decompress (in memory); /views, /mmap rows: zero-copy open",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path, dpi=80)
    plt.close(fig)
