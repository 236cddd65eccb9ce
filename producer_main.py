"""Enqueue long-running tasks: `python producer_main.py --help`."""

from workqueue.cli.common import run
from workqueue.cli.producer import main

if __name__ == "__main__":
    run(main)
