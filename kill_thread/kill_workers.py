"""Stop workers anywhere: `python kill_thread/kill_workers.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workqueue.cli.common import run
from workqueue.cli.kill import kill_workers

if __name__ == "__main__":
    run(kill_workers)
