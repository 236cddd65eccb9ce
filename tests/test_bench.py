"""`make bench`'s quick mode runs end to end and prints every figure for workqueue and each peer (bare RQ,
Dramatiq, Huey), with ours / theirs beside it. Only that the rows are there and are numbers: the figures
themselves are never asserted (they are what the machine measured)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

SYSTEM_REDIS = "/usr/bin/redis-server"
MISSING = [name for name in ("dramatiq", "huey") if importlib.util.find_spec(name) is None]

NOT_INSTALLED = f"peer packages not installed ({', '.join(MISSING)}): make bench-install"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=NOT_INSTALLED),
    pytest.mark.skipif(not os.access(SYSTEM_REDIS, os.X_OK), reason="needs Debian's redis-server (apt-get install)"),
]

SIDES = ("workqueue", "RQ", "Dramatiq", "Huey")
ROWS = (
    "drain, first start to last end (jobs/s)",
    "drain, launch to last end (jobs/s)",
    "Redis commands per job (drain)",
    "Redis round trips per job (drain)",
    "Redis CPU per job (drain, us)",
    "consumer CPU per job (drain, us)",
    "enqueue, one API call per job (jobs/s)",
    "enqueue, bulk call (jobs/s)",
    "enqueue->start p50, from the API call (ms)",
    "enqueue->start p99, from the API call (ms)",
    "20 x sleep(0.2), 10 slots (s, ideal 0.40)",
    "start-up, 10 slots, launch to a first job (s)",
    "idle memory per slot, PSS (MB)",
)
#: Rows a side may show as "-": the peers have no bulk enqueue call.
ABSENT = {("enqueue, bulk call (jobs/s)", side) for side in ("Dramatiq", "Huey")}


def test_quick_bench_prints_every_row_for_every_peer() -> None:
    result = subprocess.run([sys.executable, "bench/run.py", "--quick"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("figure"))
    assert header.split()[1:] == [*SIDES, "/RQ", "/Dramatiq", "/Huey"]
    for row in ROWS:
        line = next((line for line in lines if line.startswith(row)), None)
        assert line is not None, f"no row {row!r} in:\n{result.stdout}"
        cells = line[len(row) :].split()
        assert len(cells) == 7, line
        for side, cell in zip(SIDES, cells[:4], strict=True):
            if (row, side) in ABSENT:
                assert cell == "-", line
            else:
                assert float(cell) >= 0, line
        for peer, ratio in zip(SIDES[1:], cells[4:], strict=True):
            assert ratio == "-" if (row, peer) in ABSENT else float(ratio) >= 0, line
    for side in SIDES:
        assert any(line.startswith(f"{side}'s drains") for line in lines), side


#: The scripts `make bench` runs, read from the Makefile's bench target.
BENCH_SCRIPTS = sorted(set(re.findall(r"\$\(PY\) bench/(\w+\.py)", (ROOT / "Makefile").read_text())))


def test_make_bench_runs_the_scripts_of_every_issue() -> None:
    assert {
        "run.py", "gateway.py", "servers.py", "limits.py", "crawl.py", "autoscale.py", "memory.py", "concurrency.py"
    } <= set(BENCH_SCRIPTS)  # fmt: skip


@pytest.mark.parametrize("script", BENCH_SCRIPTS)
def test_every_bench_script_imports_and_answers_help(script: str) -> None:
    """Each script `make bench` runs loads (its imports from its neighbours resolve) and says what it
    takes: one of them importing a name bench/run.py no longer has broke `make bench` silently once."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_the_profiles_print_each_commands_share_and_the_latency_split() -> None:
    """bench/profile.py (the profiles the README quotes, not in `make bench`): a small drain's commands,
    with the scripts and the dequeue among them, and the latency's three spans, each with its quantiles."""
    redis_run = subprocess.run([sys.executable, "bench/profile.py", "redis", "--jobs", "200", "--drains", "1"],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert redis_run.returncode == 0, redis_run.stderr[-3000:]
    lines = redis_run.stdout.splitlines()
    assert re.fullmatch(r"drain 1 of 200 jobs: [\d,]+ jobs/s, Redis CPU [\d.]+ us a job", lines[0]), lines[0]
    commands = {line.split()[0] for line in lines[2:] if line.startswith("  ") and not line.startswith("  (")}
    assert {"evalsha", "hgetall", "lmove"} <= commands, redis_run.stdout
    latency_run = subprocess.run([sys.executable, "bench/profile.py", "latency", "--jobs", "20", "--runs", "1"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert latency_run.returncode == 0, latency_run.stderr[-3000:]
    spans = [line.split("p50")[0].strip() for line in latency_run.stdout.splitlines()[1:]]
    assert spans == ["the API call", "its return to the start", "the call to the start"], latency_run.stdout


def test_the_memory_bench_prints_its_figures_and_the_dashboards_times_at_that_scale() -> None:
    result = subprocess.run([sys.executable, "bench/memory.py", "--jobs", "300"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for row in ("Redis bytes per finished job", "producer peak RSS, --count (MB)", "producer peak RSS, --from-file"):
        assert row in out, out
    assert "the dashboard with 300 finished and 300 queued jobs" in out, out
    timed = [line.split() for line in out.splitlines() if line.startswith("  /")]
    assert [cells[0] for cells in timed][:3] == ["/api/live", "/api/history", "/metrics"], out
    assert len(timed) == 8 and all(float(cells[1]) > 0 and float(cells[2]) >= float(cells[1]) for cells in timed), out
