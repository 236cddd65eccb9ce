"""Every default in one place, and the environment variables that change them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

#: The URL every command resolves when given neither ``--redis-url`` nor ``REDIS_URL``.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6379

#: The queue the producer and consumer use unless told otherwise.
DEFAULT_QUEUE = "queue_one"

#: Bounds of the consumer's pool on one machine.
MIN_WORKERS, MAX_WORKERS = 1, 10

#: ``consumer_main.py --workers MIN-MAX`` (``worker.autoscale``): the pool grows when more than
#: SCALE_UP_BACKLOG jobs wait per worker (to one worker per SCALE_UP_BACKLOG waiting jobs, at once),
#: and stops a worker gracefully once it has been idle SCALE_IN_IDLE seconds with nothing waiting.
#: The environment variables below change them.
SCALE_UP_BACKLOG = 2.0
SCALE_IN_IDLE = 30.0
SCALE_UP_BACKLOG_ENV, SCALE_IN_IDLE_ENV = "WORKQUEUE_SCALE_UP_BACKLOG", "WORKQUEUE_SCALE_IN_IDLE"

#: How many jobs one producer run may enqueue.
MAX_COUNT = 100_000

#: Finished jobs and their results are kept this long (seconds); failed ones for a week.
RESULT_TTL = 24 * 3600
FAILURE_TTL = 7 * 24 * 3600

#: Workers heartbeat this often (seconds); a worker silent for HEARTBEAT_TTL is taken for dead and
#: its job handed back by the sweep (``recovery.sweep``), which the consumer runs every SWEEP_INTERVAL.
#: So a worker killed without warning is noticed within HEARTBEAT_TTL + SWEEP_INTERVAL seconds.
HEARTBEAT_INTERVAL = 3
HEARTBEAT_TTL = 10
#: A claim answered later than this (seconds, beyond the wait it asked for) is not run but given
#: back: its worker's heartbeats may have lapsed meanwhile (a cut link), and the sweep handed the
#: job to another worker. Below HEARTBEAT_TTL less a heartbeat's interval, and a second's margin.
LATE_CLAIM = HEARTBEAT_TTL - HEARTBEAT_INTERVAL - 1
SWEEP_INTERVAL = 2.0

#: The dashboard's address, and the HTTP gateway's.
DASHBOARD_HOST, DASHBOARD_PORT = "127.0.0.1", 9181
GATEWAY_HOST, GATEWAY_PORT = "127.0.0.1", 8000
#: The gateway's bearer token (the gateway and ``producer_main.py --via`` both read it).
TOKEN_ENV = "WORKQUEUE_GATEWAY_TOKEN"
#: The shortest gateway token, and dashboard password for a bind beyond loopback (characters).
SECRET_MIN = 16
#: Host names the dashboard and the gateway answer besides their bound address (comma-separated),
#: and whether their cookies are sent over HTTPS only (behind a TLS proxy).
ALLOWED_HOSTS_ENV = "WORKQUEUE_ALLOWED_HOSTS"
SECURE_COOKIES_ENV = "WORKQUEUE_SECURE_COOKIES"


# -- The worker and its horse --------------------------------------------------------------------

#: A job still running this long after its timeout (it ignored the alarm) has its horse killed.
HARD_KILL_GRACE = 3.0
#: Heartbeats RQ asks for closer together than this (seconds) are skipped: they change nothing.
HEARTBEAT_MIN_GAP = 1.0
#: An idle worker's longest wait (seconds) between two looks at all its queues. A job its BLMOVE does
#: not watch (another of its queues, another priority level) rings its idle bell (``bells``) and a
#: resume is published, so the look is only for what announces nothing: a job a plain RQ client
#: pushed onto a list it does not watch, a bell lost with a connection.
IDLE_LOOK_GAP = 2.0
#: The consumer's environment variable that changes it (seconds), and its bounds.
IDLE_LOOK_GAP_ENV, IDLE_LOOK_GAP_RANGE = "WORKQUEUE_IDLE_LOOK_GAP", (0.05, 300.0)
#: Idle bells (``bells``): how long a worker's note as idle outlives the last claim that made it
#: (seconds; idle workers note themselves again at each look, so the sets go once none is idle).
BELL_NOTE_TTL = 600
#: A wake that comes just before the worker's BLMOVE is repeated (``CLIENT UNBLOCK``) this often,
#: for at most this long (seconds; ``worker.idle_bell``).
BELL_UNBLOCK_GAP, BELL_UNBLOCK_PATIENCE = 0.002, 0.25
#: How often (seconds) a busy worker asks whether ``rq suspend`` suspended it (RQ asks before every job).
SUSPENSION_CHECK_GAP = 1.0
#: Longest wait (seconds) between two tries while Redis is away or refusing writes: the worker
#: carries on within this long of Redis taking work again.
OUTAGE_MAX_BACKOFF = 5.0

#: Claiming ahead, for a worker running one job at a time: once its last job took under AHEAD_SHORT
#: seconds, it claims up to ``WORKQUEUE_CLAIM_AHEAD`` more jobs (default CLAIM_AHEAD_DEFAULT, 0: never;
#: as many as AHEAD_BUDGET seconds hold at that job's pace) with its next one, in the same round trip,
#: from a queue still holding more than AHEAD_MIN_DEPTH jobs and using no pause, limit or level. The
#: jobs it holds go back to the front of their queue once its current job has run
#: ``WORKQUEUE_CLAIM_AHEAD_HOLD`` seconds (default AHEAD_HOLD_DEFAULT), and when it stops.
CLAIM_AHEAD_ENV, AHEAD_HOLD_ENV = "WORKQUEUE_CLAIM_AHEAD", "WORKQUEUE_CLAIM_AHEAD_HOLD"
CLAIM_AHEAD_DEFAULT, AHEAD_HOLD_DEFAULT = 16, 0.5
AHEAD_SHORT = 0.05
AHEAD_BUDGET = 0.25
AHEAD_MIN_DEPTH = 10
#: While it holds jobs ahead, a worker records a stop-job command for one of them within this long (seconds).
AHEAD_LOOK = 0.25
#: Ends handed over, for a worker running one job at a time: its horse hands each job's end (the
#: transaction it would write) to the worker and goes on to the next job; the worker writes the ends
#: it holds together, in one request, with its next claim, when it would wait, when it stops, or once
#: the oldest has waited ``WORKQUEUE_END_HOLD`` seconds (default END_HOLD_DEFAULT; 0: each horse
#: writes its own ends) or MAX_HELD_ENDS are held.
END_HOLD_ENV = "WORKQUEUE_END_HOLD"
END_HOLD_DEFAULT = 0.005
MAX_HELD_ENDS = 32

#: Progress is written to Redis at most this often per job (and always at 100 %).
PROGRESS_INTERVAL = 0.5

#: The pool's own looks at Redis (sweep, status) give up after this many seconds without an answer,
#: so that a frozen Redis does not delay replacing a dead worker.
QUICK_TIMEOUT = 2.0
#: Seconds the workers of a pool that failed get to stop before they are killed.
ABANDON_GRACE = 10.0

#: After a stop signal, commands are retried this long at most (seconds), then fail at once.
OUTAGE_STOP_GRACE = 3.0


# -- Producing, batches and statistics -----------------------------------------------------------

#: Largest JSON size of one job's parameters, in bytes.
MAX_PARAMS_BYTES = 1_000_000
#: Bounds of the per-enqueue overrides.
MAX_RETRIES, MAX_TIMEOUT = 20, 7 * 24 * 3600

#: ``--durable`` (``durable=``): seconds an enqueue waits for a replica to acknowledge its transaction
#: (``WAIT 1``) before it reports failure.
DURABLE_WAIT = 2.0

#: The longest detail (result or error, as JSON) a task's end carries in its batch's event stream.
DETAIL_MAX = 2000

#: How long per-minute counters are kept (seconds), and how many durations per task and queue.
STATS_RETENTION = 2 * 3600
STATS_SAMPLES = 1000


# -- The gateway ---------------------------------------------------------------------------------

#: Tasks one request may enqueue, and the largest request body (bytes): the routes enforce them and
#: the OpenAPI document states them.
MAX_TASKS = 1000
GATEWAY_MAX_BODY = 8 * 1024 * 1024
#: Deepest nesting of arrays and objects a request body may have (a valid request needs 4).
MAX_DEPTH = 32
#: Bounds of a callback's signing secret, and the longest callback URL (characters).
CALLBACK_SECRET_MIN, CALLBACK_SECRET_MAX = 16, 256
CALLBACK_URL_MAX = 2000

#: Seconds a registered batch may take to appear (its enqueue failing means it never will).
DELIVERY_GRACE = 60.0
#: Entries sent per batch per round, so one busy batch cannot starve the others.
DELIVERY_ROUND = 100
#: How long one gateway holds a batch's delivery lock (milliseconds), renewed while it sends.
DELIVERY_LOCK_MS = 60_000
#: Tries of a batch whose delivery fails other than by the receiver (a bug, an unusable URL).
DELIVERY_MAX_ERRORS = 5

#: Largest callback body accepted (a task's result is capped at 2,000 characters by the batch stream).
MAX_CALLBACK_BODY = 1024 * 1024

#: Pause before the first restart, and the longest (it doubles at each death in a row).
HELPER_FIRST_PAUSE, HELPER_MAX_PAUSE = 1.0, 60.0
#: A helper that ran this long before dying starts again from FIRST_PAUSE.
HELPER_STEADY = 60.0


# -- The dashboard -------------------------------------------------------------------------------

#: How often the pages poll for fresh data (milliseconds).
POLL_INTERVAL = 2000

#: The most jobs one page of the jobs list shows (rq-dashboard's own input allows 200).
MAX_PER_PAGE = 200

#: Largest request body accepted (the enqueue form is the biggest thing posted).
DASHBOARD_MAX_BODY = 64 * 1024
#: Environment variables that hold the credentials (safer than flags, which ``ps`` shows).
USERNAME_ENV, PASSWORD_ENV = "WORKQUEUE_DASHBOARD_USERNAME", "WORKQUEUE_DASHBOARD_PASSWORD"
#: Signs sessions and CSRF tokens; set it to share them across restarts or several dashboards.
SECRET_ENV = "WORKQUEUE_DASHBOARD_SECRET"


# -- Networks and the embedded Redis -------------------------------------------------------------

#: CIDRs of loopback and private networks that tasks and callbacks may reach (``network``); link-local
#: and cloud-metadata addresses are refused whatever it says.
ALLOW_ENV = "WORKQUEUE_ALLOW_NETWORKS"

#: Seconds the embedded redis-server gets to answer after it is started.
EMBEDDED_START_TIMEOUT = 10.0


# -- Environment variables read elsewhere -------------------------------------------------------

#: The Redis URL of every command when ``--redis-url`` is not given (``connection.resolve``).
REDIS_URL_ENV = "REDIS_URL"
#: Modules of extra tasks (comma-separated), in the producer's and the workers' environment
#: (``task_def.registry``).
EXTRA_TASKS_ENV = "WORKQUEUE_EXTRA_TASKS"
#: Where ``make run``'s background services keep their pid and log files (``cli.services``).
RUN_DIR_ENV = "WORKQUEUE_RUN_DIR"
#: A horse is replaced after this many jobs, and once its peak memory passes this many MB (a leak).
HORSE_MAX_JOBS_ENV, HORSE_MAX_RSS_MB_ENV = "WORKQUEUE_HORSE_MAX_JOBS", "WORKQUEUE_HORSE_MAX_RSS_MB"
HORSE_MAX_JOBS_DEFAULT, HORSE_MAX_RSS_MB_DEFAULT = 1000, 512


@dataclass(frozen=True)
class Settings:
    """Where the embedded Redis lives; read from the environment once per command."""

    #: ``WORKQUEUE_HOME``: the per-user data directory (embedded Redis's append-only log, pid, log).
    home: Path
    #: ``WORKQUEUE_REDIS_PORT``: the loopback port of the default URL and of the embedded server.
    port: int = DEFAULT_PORT

    @classmethod
    def from_env(cls) -> Settings:
        xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        home = Path(os.environ.get("WORKQUEUE_HOME") or Path(xdg) / "workqueue")
        port = int(os.environ.get("WORKQUEUE_REDIS_PORT") or DEFAULT_PORT)
        return cls(home=home, port=port)

    @property
    def default_url(self) -> str:
        """The default URL as shown: the embedded server's password is added by ``connection.resolve``."""
        return f"redis://{DEFAULT_HOST}:{self.port}/0"

    def default_url_with(self, password: str) -> str:
        """The default URL carrying the embedded server's password: never print it (``connection.mask_url``)."""
        return f"redis://:{quote(password, safe='')}@{DEFAULT_HOST}:{self.port}/0"

    @property
    def redis_dir(self) -> Path:
        return self.home / "redis"

    @property
    def password_file(self) -> Path:
        """The embedded server's password (0600, made at first use; nothing for the user to set)."""
        return self.redis_dir / "password"


# -- Per-key limits (workqueue/limits.py) ----------------------------------------------------------

#: A rate of N per P seconds lets at most N jobs of a key start within any P + LIMIT_RATE_MARGIN
#: seconds (on Redis's clock), and a job's first request then waits, if need be, until at most N
#: were sent in the last P seconds (``limits.pace_current_job``): the margin keeps that wait rare.
#: Mirrored in lua/claim.lua.
LIMIT_RATE_MARGIN = 0.1
#: An idle worker whose queues have jobs held by a limit looks at them at least this often (seconds),
#: so a job released by time (a rate window) starts within about this long.
LIMIT_POLL = 0.5
#: A horse paces its jobs' first requests by the rules as it read them at most this long ago (seconds;
#: ``limits.pace_current_job``): one read of the rules per horse per interval, not one per job. The
#: claim applies a changed rule to the next start at once; the pacing of requests follows within this.
LIMIT_RULES_FRESH = 0.5
#: A dead worker's concurrency slot comes back this long (seconds) after the sweep hands its job
#: back, not at once: the site may still be answering the request the dead run had sent.
LIMIT_DEAD_GRACE = 5.0
#: The longest limit key or pattern (characters).
LIMIT_KEY_MAX = 200
