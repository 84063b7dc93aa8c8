"""pytest plugin: braintools' own checkpoint tests, run with bpz behind them.

    PYTHONPATH=python:tests/braintools_suite python -m pytest -p bpz_behind_braintools \\
        "$(python -c 'import braintools.file as f, os; print(os.path.dirname(f.__file__))')/_msg_checkpoint_test.py"

(``make test-brainpy29`` does this with BrainPy 2.9.0 / braintools 0.4.0.) The test module is the
one the installed braintools wheel ships. ``bpz.brainpy.install()`` runs before it is imported
(it binds ``msgpack_save`` / ``msgpack_load`` / ``AsyncManager`` at import), so every save and
load in it goes through bpz: ``brainpy.checkpoints``, ``braintools.file`` and
``braintools.file._msg_checkpoint`` all hold bpz's functions. Collection fails if they don't.

Each remaining deliberate difference is listed in :data:`DIFFERENCES` and marked
``xfail(strict=True, raises=...)``: it must fail, and in the expected way (a listed test that passes is an error, so the list stays
true), and a listed test that no longer exists is an error too. README ("For BrainPy users")
lists the same differences.
"""

from __future__ import annotations

import pytest

#: test id (after the file name) -> (the failure it must end in, why bpz deliberately differs there).
DIFFERENCES = {
    "TestQuantityAndState::test_quantity_no_target_returns_raw_state_dict": (
        AssertionError,
        "without a target, bpz returns the Quantity itself (with its unit), not braintools' raw "
        "{'mantissa', 'scale', 'base', 'dim', 'factor'} dict: a load gives back what was saved"),
    "TestQuantityAndState::test_prng_key_round_trip_resumes_random_stream": (
        TypeError,  # the test indexes the key array with '__prng_key_impl__'
        "without a target, bpz returns the typed PRNG key array itself, not braintools' raw "
        "{'__prng_key_impl__', 'key_data'} dict (the load into the target, which this test also "
        "checks, restores the stream as braintools does)"),
    "TestParallelReadPath::test_parallel_memoryerror_fallback": (
        AssertionError,
        "tests braintools' own reader internals (PARALLEL_READ_BUF_SIZE, a bytearray MemoryError "
        "fallback warning); bpz's reader is native, maps or preads the file and checks memory first"),
}


def pytest_configure(config: pytest.Config) -> None:
    import brainpy  # noqa: F401 - so that brainpy.checkpoints is patched too
    import bpz.brainpy

    # bp_format='bpz' chosen explicitly: the tests' .msg/.msgpack files are bpz archives, no notice.
    bpz.brainpy.install(bp_format="bpz")


def _check_bpz_is_behind(items: list[pytest.Item]) -> None:
    import sys

    import brainpy.checkpoints
    import braintools.file
    from braintools.file import _msg_checkpoint

    import bpz.brainpy
    import bpz.write

    expected = {
        (braintools.file, "msgpack_save"): bpz.brainpy.dropin._bt_msgpack_save,
        (braintools.file, "msgpack_load"): bpz.brainpy.dropin._bt_msgpack_load,
        (braintools.file, "AsyncManager"): bpz.write.AsyncManager,
        (_msg_checkpoint, "msgpack_save"): bpz.brainpy.dropin._bt_msgpack_save,
        (_msg_checkpoint, "msgpack_load"): bpz.brainpy.dropin._bt_msgpack_load,
        (brainpy.checkpoints, "save_pytree"): bpz.brainpy.dropin._bp_save_pytree,
        (brainpy.checkpoints, "load_pytree"): bpz.brainpy.dropin._bp_load_pytree,
    }
    for module in {sys.modules[item.module.__name__] for item in items if getattr(item, "module", None)}:
        for name in ("msgpack_save", "msgpack_load", "AsyncManager"):
            if name in vars(module):
                expected[(module, name)] = expected[(braintools.file, name)]
    wrong = [f"{m.__name__}.{n}" for (m, n), f in expected.items() if getattr(m, n, None) is not f]
    if wrong:
        raise pytest.UsageError(f"bpz is not behind braintools' tests: {wrong} are not bpz's")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _check_bpz_is_behind(items)
    seen = set()
    for item in items:
        key = item.nodeid.split("::", 1)[-1]
        if key in DIFFERENCES:
            raises, reason = DIFFERENCES[key]
            item.add_marker(pytest.mark.xfail(strict=True, raises=raises, reason=reason))
            seen.add(key)
    gone = sorted(set(DIFFERENCES) - seen)
    if gone:
        raise pytest.UsageError(f"listed differences with no such test in braintools' suite: {gone}")


def pytest_report_header(config: pytest.Config) -> str:
    import braintools

    import bpz

    return f"braintools {braintools.__version__} checkpoint tests with bpz {bpz.__version__} behind them"
