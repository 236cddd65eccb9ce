# The everyday verbs. `make run` shows workqueue working; `make test` proves it.
# `make demo` plays the four classic producer/consumer scenarios, each on its own demo-* queues.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
WORKERS ?= 4

.PHONY: install run stop test test-quick lint bench bench-install clean demo

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

## run: embedded Redis, the dashboard on :9181 and the gateway on :8000 (both on the default server, granian), a
## consumer pool in the background, then a demo batch
run: $(STAMP)
	$(PY) -m workqueue redis start
	$(PY) -m workqueue start-service dashboard --wait-url http://127.0.0.1:9181/ -- $(PY) dashboard_main.py
	$(PY) -m workqueue start-service gateway --wait-url http://127.0.0.1:8000/openapi.json -- $(PY) gateway_main.py
	$(PY) -m workqueue start-service consumer -- $(PY) consumer_main.py --workers $(WORKERS) --queue queue_one
	$(PY) producer_main.py --from-file examples/demo.jsonl --wait
	@echo
	@echo "Dashboard: http://localhost:9181  (consumer log: .run/consumer.log)"
	@echo "HTTP gateway: http://localhost:8000/openapi.json  (e.g. $(PY) producer_main.py --via http://127.0.0.1:8000 --task sleep --count 8 --threads 4 --wait)"
	@echo "Enqueue more: $(PY) producer_main.py    |    Stop everything: make stop"

## stop: the consumer (gracefully), the gateway, the dashboard, then the embedded Redis, with the first of
## $(PY) and $(PYTHON) that has workqueue's requirements (installed into your own environment: PYTHON=...);
## exit 1 if none has them (saying why and what still runs) or anything did not stop
stop:
	@py=; why=; for candidate in "$(PY)" "$(PYTHON)"; do \
	  if out=$$("$$candidate" -c "import workqueue.cli.admin" 2>&1); then py="$$candidate"; break; fi; \
	  why="$$why$${why:+; }$$candidate: $$(printf '%s\n' "$$out" | tail -n 1)"; \
	done; \
	if [ -z "$$py" ]; then \
	  running=; \
	  for pidfile in "$${WORKQUEUE_RUN_DIR:-.run}"/*.pid \
	      "$${WORKQUEUE_HOME:-$${XDG_DATA_HOME:-$$HOME/.local/share}/workqueue}/redis/redis.pid"; do \
	    name=$$(basename "$$pidfile" .pid); [ "$$name" = redis ] && name="the embedded Redis"; \
	    pid=$$(cat "$$pidfile" 2>/dev/null) && kill -0 "$$pid" 2>/dev/null && \
	      running="$$running$${running:+, }$$name (pid $$pid)"; \
	  done; \
	  echo "make stop: stopped nothing, no python with workqueue's requirements ($$why);" \
	    "still running: $${running:-nothing found}; run: make stop PYTHON=/path/to/your/python" >&2; \
	  exit 1; \
	fi; \
	failed=0; \
	for service in consumer gateway dashboard; do "$$py" -m workqueue stop-service $$service || failed=1; done; \
	"$$py" -m workqueue redis stop || failed=1; \
	exit $$failed

## demo: the four classic scenarios (python -m workqueue demo NAME), one after the other; stops at the first that fails
demo: $(STAMP)
	$(PY) -m workqueue demo basic
	$(PY) -m workqueue demo many
	$(PY) -m workqueue demo fast-producer
	$(PY) -m workqueue demo multi-queue

# Debian packages some tests need, installed when run as root (as CI is); otherwise those tests skip.
define apt-install
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y --no-install-recommends $(1) >/dev/null 2>&1 || \
	  { apt-get update >/dev/null && apt-get install -y --no-install-recommends $(1) >/dev/null; }; \
	else echo "note: no root apt-get here; $(2) will be skipped (install $(1) to run them)"; fi
endef

# The TLS tests need a redis-server built with TLS: Debian's (the bundled one is built without).
SYSTEM_REDIS := /usr/bin/redis-server
$(SYSTEM_REDIS):
	$(call apt-install,redis-server,the TLS tests)

# The browser tests drive Debian's Chromium (no browser can be downloaded here).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	$(call apt-install,chromium,the browser tests)

# The peers (Dramatiq, Huey) and gunicorn go into the project's .venv, beside its requirements: every side of
# bench/run.py then runs on the same interpreter and the same redis-py and hiredis, so the client library is
# not one of the differences measured; a venv of their own would need all of workqueue's requirements again.
# `make test` installs them too, so the bench smoke test and the gunicorn tests run rather than skip.
BENCH_STAMP := $(VENV)/.bench-$(shell cksum < bench/requirements.txt | cut -d' ' -f1)
$(BENCH_STAMP): bench/requirements.txt $(STAMP)
	$(VENV)/bin/pip install --quiet -r bench/requirements.txt
	rm -f $(VENV)/.bench-*
	touch $(BENCH_STAMP)

bench-install: $(BENCH_STAMP)

# The Sentinel failover test (tests/test_sentinel.py) runs Debian's redis-sentinel, or else redis-server --sentinel.
SENTINEL := /usr/bin/redis-sentinel
$(SENTINEL):
	$(call apt-install,redis-sentinel,the Sentinel tests)

# Most tests wait on real processes (workers, Redis, browsers), not on the CPU: three at a time (pytest-xdist)
# on two cores take under half the time of one after the other. TEST_JOBS=1 runs them one by one.
TEST_JOBS ?= 3
test: $(STAMP) $(BENCH_STAMP) $(SYSTEM_REDIS) $(CHROMIUM) $(SENTINEL) lint
	$(PY) -m pytest -n $(TEST_JOBS)

## lint: ruff (lint, then the format check) and mypy over workqueue/ and task_def/, as pyproject.toml configures them
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --python-executable $(PY)

## test-quick: the suite without the tests marked slow (chaos, outages, browser, demos, ...), for the edit-test loop
test-quick: $(STAMP)
	$(PY) -m pytest -n $(TEST_JOBS) -m "not slow"

## bench: workqueue beside bare RQ, Dramatiq and Huey, then the gateway, the WSGI servers, per-key limits, the crawler, concurrency inside a worker and autoscaling; BENCH_QUICK=1: quicker
bench: $(STAMP) $(BENCH_STAMP) $(SYSTEM_REDIS)
	$(PY) bench/run.py $(if $(BENCH_QUICK),--quick)
	$(PY) bench/gateway.py $(if $(BENCH_QUICK),--quick)
	$(PY) bench/servers.py $(if $(BENCH_QUICK),--quick)
	$(PY) bench/memory.py $(if $(BENCH_QUICK),--quick)
	$(PY) bench/limits.py
	$(PY) bench/crawl.py
	$(PY) bench/concurrency.py $(if $(BENCH_QUICK),--quick)
	$(PY) bench/autoscale.py

clean:
	-@$(MAKE) --no-print-directory stop
	rm -rf $(VENV) .run .pytest_cache
