from workqueue.cli.admin import main
from workqueue.cli.common import run

run(main)
