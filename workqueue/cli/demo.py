"""``python -m workqueue demo NAME``: the four classic producer/consumer scenarios (``workqueue.demos``)."""

from __future__ import annotations

import signal
import textwrap

import click

from workqueue.cli.common import EXIT_OK, redis_url_option

#: Each scenario and what it shows, for --help; ``workqueue.demos.SCENARIOS`` plays them (imported
#: when one runs, so that ``python -m workqueue``'s other verbs do not load RQ for nothing).
SCENARIOS = {
    "basic": "one producer enqueues 5 short jobs on demo-basic; one consumer (one worker) runs them.",
    "many": "three producers enqueue 4 jobs each at the same moment on demo-many; two consumers share them.",
    "fast-producer": "a fast producer (10 jobs, --max-queued 3) against one slow consumer on demo-fast-producer: "
    "the producer waits whenever the queue holds 3, and the queue never holds more.",
    "multi-queue": "three producers fill demo-multi-a, -b and -c; one consumer with --order round-robin "
    "serves them in turn (a b c a b c ...), not one after the other.",
}

_NAMES = "\n".join(
    textwrap.fill(text, 78, initial_indent=f"  {name:<15}", subsequent_indent=" " * 17)
    for name, text in SCENARIOS.items()
)
_HELP = "\n\n".join(
    [
        "Run one of the four classic producer/consumer scenarios on the real system: the embedded Redis "
        "(or --redis-url / REDIS_URL), real consumer_main.py processes and the producer's API, each on its own "
        "demo-* queues (emptied first; never queue_one). It prints who enqueued what, when a producer waits, "
        "which worker ran which job from which queue, then the statistics (as producer_main.py --stats). "
        "It stops every consumer it started, gracefully, also on Ctrl-C or failure.",
        "Exit 0 when it went as promised; 1 if a job failed or the scenario's promise was not kept.",
        "\b\nNAME is one of:\n" + _NAMES,
    ]
)


@click.command("demo", help=_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("name", metavar="NAME", type=click.Choice(list(SCENARIOS)))
@redis_url_option
def demo(name: str, redis_url: str | None) -> int:
    from workqueue import demos

    # A SIGTERM ends the demo as a Ctrl-C does: its consumers are stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    click.echo(demos.run(name, click.echo, redis_url))
    return EXIT_OK
