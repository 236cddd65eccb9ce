"""The one job body every side of ``bench/run.py`` runs: a no-op (or a sleep) that timestamps its start and end.

workqueue's workers see it as the catalogue task ``bench_stamp`` (bench/peer_catalogue.py),
bare RQ imports :func:`stamp` by its path, Dramatiq and Huey call it from their own wrappers
(``bench/peer_dramatiq.py``, ``bench/peer_huey.py``). Each call appends one line, ``tag start end``
(wall-clock seconds), to a file of its own process in ``$BENCH_STAMPS``: one ``write`` on a file
opened for appending, no Redis, so the body costs every side the same and adds nothing to Redis's counters.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

#: The folder the bench reads the stamps from (one file per process).
STAMPS_ENV = "BENCH_STAMPS"

_files: dict[int, int] = {}


def stamp(tag: int = 0, seconds: float = 0.0) -> None:
    """Record this job's start and end; sleep ``seconds`` in between (0: a no-op)."""
    started = time.time()
    if seconds:
        time.sleep(seconds)
    ended = time.time()
    os.write(_file(), f"{tag} {started:.6f} {ended:.6f}\n".encode())


def _file() -> int:
    """This process's stamp file (opened once per process: a forked child opens its own)."""
    pid = os.getpid()
    if pid not in _files:
        path = Path(os.environ[STAMPS_ENV]) / f"{pid}.stamps"
        _files[pid] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return _files[pid]


def read(folder: Path) -> dict[int, tuple[float, float]]:
    """Every stamp in ``folder``: tag -> (start, end)."""
    stamps: dict[int, tuple[float, float]] = {}
    for path in folder.glob("*.stamps"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:  # a line being written is skipped until it is whole
                stamps[int(parts[0])] = (float(parts[1]), float(parts[2]))
    return stamps


def count(folder: Path) -> int:
    """How many jobs have stamped so far (whole lines)."""
    return sum(path.read_bytes().count(b"\n") for path in folder.glob("*.stamps"))
