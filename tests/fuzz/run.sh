#!/usr/bin/env bash
# Runs every fuzz target of bpz for a bounded time; usable in CI.
#
#   tests/fuzz/run.sh [SECONDS]     # each target for SECONDS (default 60)
#
# * Rust reader (cargo-fuzz, needs a nightly toolchain; skipped with a message otherwise):
#   rust/bpz/fuzz targets `read_bytes` (arbitrary bytes) and `read_fixed_checksums`
#   (checksums set right before opening, so mutations reach index validation and decoding).
# * Python entry points (atheris): tests/fuzz/fuzz_python.py.
# Seeds: spec/vectors/**/*.bpz and the small files of tests/attacks/corpus. Corpora grow in
# $BPZ_FUZZ_WORK (default target/fuzz), so later runs start where earlier ones stopped.
# A finding is saved under $BPZ_FUZZ_WORK/artifacts/ and makes the script exit 1: add the
# file to tests/attacks (generate.py), fix the reader, and add a regression test.
# Longer runs: tests/fuzz/run.sh 3600 (or BPZ_FUZZ_JOBS=2 for two workers per target).
set -uo pipefail

SECS=${1:-60}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
WORK=${BPZ_FUZZ_WORK:-$ROOT/target/fuzz}
JOBS=${BPZ_FUZZ_JOBS:-1}
MAX_LEN=65536
status=0
mkdir -p "$WORK/artifacts" "$WORK/seeds-rust"

# Seeds: small conformance vectors and attack files.
find "$ROOT/spec/vectors" "$ROOT/tests/attacks/corpus" -name '*.bpz' -size -64k -exec cp {} "$WORK/seeds-rust/" \;

summary() {  # the last status line of a libFuzzer log: executions and coverage
    grep -E '^#[0-9]+' "$1" | tail -1 | sed -E 's/^#([0-9]+)[[:space:]]+[A-Z]+[[:space:]]+/\1 executions, /'
}

# ------------------------------------------------------------------ Rust reader
if command -v rustup >/dev/null && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    # cargo-fuzz goes into the repository (target/tools, removed by make clean), not ~/.cargo/bin.
    export PATH="$ROOT/target/tools/bin:$PATH"
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "== installing cargo-fuzz into $ROOT/target/tools (a few minutes, once)"
        cargo install --locked --root "$ROOT/target/tools" cargo-fuzz || { echo "cargo-fuzz could not be installed"; exit 1; }
    fi
    for target in read_bytes read_fixed_checksums; do
        corpus="$WORK/corpus-$target"
        mkdir -p "$corpus" "$WORK/artifacts/$target"
        log="$WORK/$target.log"
        echo "== cargo fuzz: $target for ${SECS}s"
        parallel=()
        [ "$JOBS" -gt 1 ] && parallel=(-jobs="$JOBS" -workers="$JOBS")  # logs go to $WORK/fuzz-N.log
        (cd "$WORK" && cargo +nightly fuzz run --fuzz-dir "$ROOT/rust/bpz/fuzz" "$target" "$corpus" \
            "$WORK/seeds-rust" -- -max_total_time="$SECS" -timeout=30 -rss_limit_mb=2560 -max_len=$MAX_LEN \
            "${parallel[@]}" -print_final_stats=1 -artifact_prefix="$WORK/artifacts/$target/") >"$log" 2>&1
        rc=$?
        if [ $rc -ne 0 ]; then
            status=1
            echo "FINDING in $target (exit $rc): see $log and $WORK/artifacts/$target/"
            tail -40 "$log"
        else
            echo "   $target: $(summary "$log")"
        fi
    done
else
    echo "SKIPPED cargo-fuzz: no nightly Rust toolchain (install one with: rustup toolchain install nightly)"
fi

# ------------------------------------------------------------------ Python entry points
if ! "$PY" -c "import atheris" 2>/dev/null; then
    echo "== installing atheris into $("$PY" -c 'import sys; print(sys.prefix)')"
    "$PY" -m pip install -q atheris || { echo "atheris could not be installed"; exit 1; }
fi
pycorpus="$WORK/corpus-python"
mkdir -p "$pycorpus" "$WORK/artifacts/python"
"$PY" "$ROOT/tests/fuzz/fuzz_python.py" --make-seeds "$WORK/seeds-python" >/dev/null 2>&1
log="$WORK/python.log"
echo "== atheris: fuzz_python.py for ${SECS}s"
"$PY" "$ROOT/tests/fuzz/fuzz_python.py" "$pycorpus" "$WORK/seeds-python" -max_total_time="$SECS" -timeout=30 \
    -rss_limit_mb=4096 -max_len=$MAX_LEN -print_final_stats=1 -artifact_prefix="$WORK/artifacts/python/" >"$log" 2>&1
rc=$?
if [ $rc -ne 0 ]; then
    status=1
    echo "FINDING in fuzz_python.py (exit $rc): see $log and $WORK/artifacts/python/"
    grep -v '^INFO: Instrumenting' "$log" | tail -40
else
    echo "   python: $(summary "$log")"
fi
exit $status
