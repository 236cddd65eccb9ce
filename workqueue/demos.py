"""The four classic producer/consumer scenarios, run on the real system and told as they happen.

Each scenario empties its own demo queues (``demo-...``: never the user's), starts real consumers
(``consumer_main.py`` processes, each in its own session so a Ctrl-C reaches the demo alone),
produces through the producer's API from threads (so several producers really run at once), follows
every batch's stream to say which worker ran which job from which queue, stops the consumers
gracefully, prints the statistics (``producer_main.py --stats``'s table, from the same counters) and
checks that what the scenario promises happened. Whatever happens, every consumer it started is
stopped before it returns. The consumers, producers and followers are ``workqueue.demo_stage``'s;
this module holds the four scenarios and plays one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from rq import Queue

from workqueue import batches, jobstats
from workqueue.connection import connect
from workqueue.demo_stage import READY_TIMEOUT, Say, ScenarioFailed, Stage
from workqueue.jobs import SERIALIZER


@dataclass(frozen=True)
class Scenario:
    name: str
    queues: tuple[str, ...]
    play: Callable[[Stage], str]


def _basic(stage: Stage) -> str:
    (queue,) = SCENARIOS["basic"].queues
    stage.start_consumers(1, [queue])
    stage.produce("producer-1", queue, "sleep", {"seconds": 0.3}, 5)
    stage.join()
    stage.check_batches({"producer-1": (queue, 5)})
    return "1 producer enqueued 5 jobs, 1 consumer ran them"


def _many(stage: Stage) -> str:
    (queue,) = SCENARIOS["many"].queues
    consumers = stage.start_consumers(2, [queue])
    together = threading.Barrier(3)
    for n in (1, 2, 3):
        stage.produce(f"producer-{n}", queue, "sleep", {"seconds": round(0.1 + 0.1 * n, 1)}, 4, start=together)
    stage.join()
    stage.check_batches({f"producer-{n}": (queue, 4) for n in (1, 2, 3)})
    for consumer in consumers:
        ran = sum(1 for r in stage.runs if r.consumer.startswith(consumer.label + "/"))
        stage.say(f"{consumer.label} ran {ran} of the {len(stage.runs)} jobs")
        if not ran:
            stage.problem(f"{consumer.label} ran no job: the two consumers did not share the queue")
    return "3 producers enqueued 12 jobs at once on one queue, 2 consumers shared them"


def _fast_producer(stage: Stage) -> str:
    (queue,) = SCENARIOS["fast-producer"].queues
    bound, count = 3, 10
    stage.start_consumers(1, [queue])
    polls, stuck, last = [0], [0], [-1]
    peak = [0]

    def on_wait(batch_id: str, queued: int) -> None:
        """Called every poll while the queue is full: say it once each time the producer gets stuck."""
        polls[0] += 1
        enqueued = stage.connection.scard(batches.group(stage.connection, batch_id).key)
        if enqueued != last[0]:
            last[0], stuck[0] = enqueued, stuck[0] + 1
            stage.say(
                f"producer-1: {enqueued} of {count} enqueued; {queue} holds {queued} "
                f"(--max-queued {bound}): waiting for the consumer to take one"
            )

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], stage.connection.llen(Queue(queue, connection=stage.connection).key))
            time.sleep(0.01)

    done = threading.Event()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        stage.produce("producer-1", queue, "sleep", {"seconds": 0.4}, count, max_queued=bound, on_wait=on_wait)
        stage.join()
    finally:
        done.set()
        watcher.join()
    stage.check_batches({"producer-1": (queue, count)})
    stage.say(
        f"producer-1 waited {stuck[0]} times for room (about {polls[0] * 0.2:.1f} s in all); "
        f"{queue} held at most {peak[0]} jobs"
    )
    if not stuck[0]:
        stage.problem("the producer never waited: the queue never reached --max-queued")
    if peak[0] > bound:
        stage.problem(f"{queue} held {peak[0]} jobs, over --max-queued {bound}")
    return f"a fast producer ({count} jobs) held to {bound} queued by a slow consumer"


def _multi_queue(stage: Stage) -> str:
    queues = list(SCENARIOS["multi-queue"].queues)
    stage.say("the three producers fill their queues first, so the consumer's turns are plain to see")
    together = threading.Barrier(3)
    for n, queue in enumerate(queues, 1):
        stage.produce(f"producer-{n}", queue, "sleep", {"seconds": 0.2}, 4, start=together)
    deadline = time.monotonic() + READY_TIMEOUT
    while not all(stage.connection.llen(Queue(q, connection=stage.connection).key) == 4 for q in queues):
        if stage.problems or time.monotonic() > deadline:
            if not stage.problems:
                stage.problem("the producers did not fill their queues in time")
            return "the producers did not fill their queues"
        time.sleep(0.05)
    stage.start_consumers(1, queues, order="round-robin")
    stage.join()
    stage.check_batches({f"producer-{n}": (queue, 4) for n, queue in enumerate(queues, 1)})
    order = [r.queue for r in sorted(stage.runs, key=lambda r: r.started_at)]
    stage.say("served in this order: " + " ".join(q.rsplit("-", 1)[-1] for q in order))
    if set(order) != set(queues):
        stage.problem(f"the consumer served {len(set(order))} of the 3 queues")
    elif not interleaved(order):
        stage.problem("the consumer served the queues one after the other, not in turn")
    return "3 producers on 3 queues, 1 round-robin consumer served them in turn"


def interleaved(order: list[str]) -> bool:
    """Whether no queue's jobs ran as one unbroken block: each queue was left and come back to."""
    for name in set(order):
        at = [i for i, queue in enumerate(order) if queue == name]
        if len(at) > 1 and at[-1] - at[0] + 1 == len(at):
            return False
    return True


SCENARIOS: dict[str, Scenario] = {
    "basic": Scenario("basic", ("demo-basic",), _basic),
    "many": Scenario("many", ("demo-many",), _many),
    "fast-producer": Scenario("fast-producer", ("demo-fast-producer",), _fast_producer),
    "multi-queue": Scenario("multi-queue", ("demo-multi-a", "demo-multi-b", "demo-multi-c"), _multi_queue),
}


def run(name: str, say: Say, redis_url: str | None = None) -> str:
    """Play scenario ``name`` on the resolved Redis, saying what happens; its one-line summary.

    Raises ScenarioFailed when a job failed or the scenario's promise was not kept. The consumers
    it started are stopped in every case (Ctrl-C included) before it returns or raises.
    """
    scenario = SCENARIOS[name]
    connection, target = connect(redis_url)
    say(f"demo {name} on {', '.join(scenario.queues)} ({target.display})")
    for queue in scenario.queues:  # what an interrupted earlier run left
        Queue(queue, connection=connection, serializer=SERIALIZER).empty()
    stage = Stage(connection, redis_url, say)
    try:
        outcome = scenario.play(stage)
    finally:
        stage.stop_consumers()
    elapsed = time.monotonic() - stage.started
    say("statistics (what producer_main.py --stats --queue NAME prints; they count the last two hours' runs):")
    for line in jobstats.format_report(jobstats.collect(connection, scenario.queues)):
        say(line)
    if stage.problems:
        raise ScenarioFailed(f"demo {name} did not go as promised: " + "; ".join(stage.problems))
    finished = sum(s.finished for s in stage.summaries.values())
    return f"demo {name}: ok: {outcome}; {finished} finished, 0 failed, in {elapsed:.1f} s"
