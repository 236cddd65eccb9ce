"""A program that produces work itself: a batch with per-task and per-batch callbacks.

python examples/produce.py            (with a consumer running: python consumer_main.py --workers 2)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import workqueue


def on_task(end):
    print(f"{end.task:<10} {end.outcome:<8} {end.duration:6.2f}s  {end.detail}")


def on_done(summary):
    print(f"batch {summary.batch_id}: {summary.finished} finished, {summary.failed} failed")


if __name__ == "__main__":
    batch = workqueue.enqueue_many(
        [
            ("primes", {"n": 2_000_000}),
            ("pi", {"samples": 500_000, "seed": 1}),
            ("fibonacci", {"n": 10_000}),
            ("factorise", {"n": 600851475143}),
            ("sleep", {"seconds": 1}),
        ],
        queue="queue_one",
    )
    print(f"enqueued batch {batch.id} ({len(batch.job_ids)} jobs); waiting for them")
    summary = batch.wait(on_task=on_task, on_done=on_done, timeout=120)
    sys.exit(1 if summary.failed else 0)
