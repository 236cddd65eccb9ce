"""Serve the HTTP gateway: `python gateway_main.py --help`."""

from workqueue.cli.common import run
from workqueue.cli.gateway import main

if __name__ == "__main__":
    run(main)
