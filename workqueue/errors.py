"""One root exception; the CLI turns each into one line and an exit code (see ``cli.common``)."""

from __future__ import annotations


class WorkqueueError(Exception):
    """Root of every error workqueue raises on purpose. Exit code 1 unless a subclass says."""

    exit_code = 1


class BadInput(WorkqueueError):
    """Raised when what the user asked for is invalid (task, parameter, queue name, count, size)."""

    exit_code = 2


class RedisUnavailable(WorkqueueError):
    """Raised when the Redis a command resolved does not answer or refuses the credentials."""


class EmbeddedRedisError(WorkqueueError):
    """Raised when the bundled redis-server cannot be started or stopped."""


class JobRefused(WorkqueueError):
    """Raised on a worker for a job whose function is not in the task catalogue."""


class UnreadableJob(WorkqueueError):
    """Raised for a job whose data is not JSON: not written by workqueue, and never unpickled."""
