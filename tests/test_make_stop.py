"""`make stop` for a user who installed workqueue's requirements into their own environment (no .venv)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, cli_env, free_port, wait_for
from workqueue import embedded
from workqueue.settings import Settings

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[dict, Settings]]:
    """A service started as `make run` starts them (pid file in a temporary run folder) and the
    embedded Redis in a temporary home; whatever is left running at the end is stopped."""
    settings = Settings(home=tmp_path / "home", port=free_port())
    env = cli_env(REDIS_URL=None, WORKQUEUE_HOME=str(settings.home), WORKQUEUE_REDIS_PORT=str(settings.port),
                  WORKQUEUE_RUN_DIR=str(tmp_path / "run"))  # fmt: skip
    workqueue = [sys.executable, "-m", "workqueue"]
    started = subprocess.run([*workqueue, "redis", "start"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert started.returncode == 0, started.stderr
    sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
    started = subprocess.run([*workqueue, "start-service", "consumer", "--", *sleeper], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert started.returncode == 0, started.stderr
    yield env, settings
    subprocess.run([*workqueue, "stop-service", "consumer", "--timeout", "5"], cwd=ROOT, env=env, timeout=60)
    embedded.stop(settings)


def service_pid(env: dict) -> int | None:
    try:
        pid = int((Path(env["WORKQUEUE_RUN_DIR"]) / "consumer.pid").read_text())
        return pid if Path(f"/proc/{pid}").exists() and not _zombie(pid) else None
    except (OSError, ValueError):
        return None


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")


def make_stop(env: dict, **variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "stop", *(f"{k}={v}" for k, v in variables.items())],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.slow
def test_make_stop_without_a_venv_uses_the_python_that_has_the_requirements(running, tmp_path: Path) -> None:
    env, settings = running
    assert service_pid(env) is not None and embedded.running_pid(settings) is not None
    done = make_stop(env, VENV=str(tmp_path / "no-venv"), PYTHON=sys.executable)
    assert done.returncode == 0, done.stderr
    assert "consumer: stopped" in done.stdout and "stopped the embedded Redis" in done.stdout
    wait_for(lambda: service_pid(env) is None, 15, "the consumer service to be gone")
    assert embedded.running_pid(settings) is None


def test_make_stop_with_no_usable_python_says_what_still_runs_and_fails(running, tmp_path: Path) -> None:
    env, settings = running
    done = make_stop(env, VENV=str(tmp_path / "no-venv"), PYTHON=str(tmp_path / "no-python"))
    assert done.returncode != 0
    message = [line for line in done.stderr.splitlines() if line.startswith("make stop:")]
    assert len(message) == 1, done.stderr
    assert "stopped nothing, no python with workqueue's requirements" in message[0]
    assert f"consumer (pid {service_pid(env)})" in message[0]
    assert f"the embedded Redis (pid {embedded.running_pid(settings)})" in message[0]
    assert "make stop PYTHON=" in message[0]
    assert service_pid(env) is not None and embedded.running_pid(settings) is not None
