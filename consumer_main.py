"""Run worker processes on queues: `python consumer_main.py --help`."""

from workqueue.cli.common import run
from workqueue.cli.consumer import main

if __name__ == "__main__":
    run(main)
