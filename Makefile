# The everyday verbs. `make run` shows workqueue working; `make test` proves it.
# `make demo` plays the four classic producer/consumer scenarios, each on its own demo-* queues.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
WORKERS ?= 4

.PHONY: install run stop test bench clean demo

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

## run: embedded Redis, the dashboard on :9181, the gateway on :8000 and a consumer pool in the background, then a demo batch
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

## stop: the consumer (gracefully), the dashboard, then the embedded Redis
stop:
	@if [ -x $(PY) ]; then \
	  $(PY) -m workqueue stop-service consumer; \
	  $(PY) -m workqueue stop-service gateway; \
	  $(PY) -m workqueue stop-service dashboard; \
	  $(PY) -m workqueue redis stop; \
	fi

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

test: $(STAMP) $(SYSTEM_REDIS) $(CHROMIUM)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/run.py
	$(PY) bench/gateway.py

clean: stop
	rm -rf $(VENV) .run .pytest_cache
