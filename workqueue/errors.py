"""One root exception; the CLI turns each into one line and an exit code (see ``cli.common``)."""

from __future__ import annotations


class WorkqueueError(Exception):
    """Root of every error workqueue raises on purpose. Exit code 1 unless a subclass says."""

    exit_code = 1


class PermanentError(Exception):
    """An error that retrying cannot fix (an address the network policy refuses, say): a task
    raising one fails at once, whatever retries it has left. Tasks raise it as
    ``task_def.PermanentError``."""


class BadInput(WorkqueueError):
    """Raised when what the user asked for is invalid (task, parameter, queue name, count, size);
    ``field`` names what is at fault where one thing is (``queue``, ``params.seconds``), for APIs."""

    exit_code = 2

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RedisUnavailable(WorkqueueError):
    """Raised when the Redis a command resolved does not answer or refuses the credentials."""


class EmbeddedRedisError(WorkqueueError):
    """Raised when the bundled redis-server cannot be started or stopped."""


class JobRefused(WorkqueueError):
    """Raised on a worker for a job whose function is not in the task catalogue."""


class UnreadableJob(WorkqueueError):
    """Raised for a job whose data is not JSON: not written by workqueue, and never unpickled."""


class RedisMisconfigured(WorkqueueError):
    """Raised when the Redis a command resolved is set up to lose data silently (an evicting policy)."""


class RedisLostData(RedisUnavailable):
    """Raised when Redis no longer holds the data a process saw there: it restarted empty or was flushed."""


class PoolFailed(WorkqueueError):
    """Raised when the consumer's pool met an error it cannot survive (after stopping its workers)."""


class NotDurable(WorkqueueError):
    """Enqueued on the master, but no replica acknowledged it in time (``--durable``, ``WAIT 1``)."""
