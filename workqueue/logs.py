"""Logging, configured once at the edge (the CLIs), for the package and RQ alike."""

from __future__ import annotations

import logging


class _OneLine(logging.Formatter):
    """A record and, instead of a traceback, the exception's last line: readable under a status line."""

    def format(self, record: logging.LogRecord) -> str:
        lines = [line for line in record.getMessage().splitlines() if line.strip()]
        text = f"{record.levelname} {record.name}: {lines[0] if lines else ''}"
        if len(lines) > 1:  # RQ puts the traceback in the message itself
            text += f" | {lines[-1].strip()}"
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f" | {type(exc).__name__}: {exc}"
        return text


def setup(verbose: bool = False) -> None:
    """INFO with tracebacks when verbose; otherwise warnings and errors, one line each."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s") if verbose else _OneLine()
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in ("rq", "rq.worker", "rq.job", "rq.worker_pool", "rq.scheduler"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
