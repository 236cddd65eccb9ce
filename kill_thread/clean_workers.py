"""Remove dead workers and hand back their jobs: `python kill_thread/clean_workers.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workqueue.cli.common import run
from workqueue.cli.kill import clean_workers

if __name__ == "__main__":
    run(clean_workers)
