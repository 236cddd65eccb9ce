"""Schema fuzzing: schemathesis generates requests from the gateway's own OpenAPI document (valid
and invalid ones, a bounded number per operation) against the app over a real Redis, and checks
that none answers 500 and every response matches the document.

Each operation is driven through schemathesis's Hypothesis strategy directly: its pytest plugin
does not run under pytest 9 (it sets ``Function._nodeid``, which pytest 9 no longer has)."""

from __future__ import annotations

import base64
import pickle

import hypothesis
import pytest
import redis
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from workqueue.gateway import create_app, delivery, openapi

#: Examples per operation: enough to reach every documented status, bounded for the suite's time.
EXAMPLES = 100


def operations(schema) -> dict:
    return {op.label: op for op in (result.ok() for result in schema.get_all_operations())}


def _has_callback(case) -> bool:
    """Whether a generated body carries a callback: whether its URL is accepted depends on where its
    host resolves (the network policy, ``workqueue.network``), which no schema can state; such a
    refusal is a documented 422, and every other check still applies."""
    return isinstance(case.body, dict) and "callback" in case.body


def _depends_on_the_clock_or_redis(case) -> bool:
    """Whether a generated body says when its jobs run by a time (``at``: refused once past, which
    no schema can state) or by other work (``after``: refused if it names nothing that exists;
    ``after_any`` goes with it): such a refusal is a documented 422, every other check still applies."""
    return isinstance(case.body, dict) and bool({"at", "after", "after_any"} & set(case.body))


def _cannot_be_stated(case) -> bool:
    """Whether a body's acceptance depends on what no schema can state: a callback (see above), or
    a schedule's timing (whether a cron expression parses, a time zone exists, exactly one of cron
    and every is given): such a refusal is a documented 422."""
    return _has_callback(case) or (case.method == "POST" and case.path == "/schedules")


LABELS = sorted(operations(schemathesis.openapi.from_dict(openapi.document())))
#: Negative cases need something to get wrong: a body or a path parameter.
CASES = [(label, GenerationMode.POSITIVE) for label in LABELS] + [
    (label, GenerationMode.NEGATIVE) for label in LABELS if label.startswith("POST") or "{" in label
]


@pytest.mark.slow
@pytest.mark.parametrize("label, mode", CASES)
def test_no_server_errors_and_every_response_matches_the_schema(
    conn: redis.Redis, label: str, mode: GenerationMode
) -> None:
    """Positive: requests the document allows must be served; negative: ones it forbids refused."""
    operation = operations(schemathesis.openapi.from_wsgi("/openapi.json", create_app(conn)))[label]

    @hypothesis.given(case=operation.as_strategy(mode))
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def fuzz(case) -> None:
        if isinstance(case.body, dict) and case.body.get("durable") is True:
            # A server without replicas answers it 503 after DURABLE_WAIT seconds: tests/test_sentinel.py
            # checks that answer; here it would only slow the fuzzing down.
            case.body["durable"] = False
        refusable = _cannot_be_stated(case) or _depends_on_the_clock_or_redis(case)
        case.call_and_validate(excluded_checks=[positive_data_acceptance] if refusable else [])

    fuzz()


def test_responses_about_existing_jobs_and_batches_match_the_schema(conn: redis.Redis) -> None:
    """The fuzzer cannot guess ids that exist: these cases name real ones (queued, then ended)."""
    ops = operations(schemathesis.openapi.from_wsgi("/openapi.json", create_app(conn)))
    created = ops["POST /batches"].Case(
        body={"tasks": [{"task": "pi", "params": {"samples": 10}}, {"task": "sleep", "params": {"seconds": 1}}]}
    )
    sent = created.call_and_validate().json()
    job_id, batch_id = sent["job_ids"][0], sent["batch_id"]
    for label, params in [
        ("GET /jobs/{job_id}", {"job_id": job_id}),
        ("GET /batches/{batch_id}", {"batch_id": batch_id}),
        ("DELETE /jobs/{job_id}", {"job_id": job_id}),
        ("GET /jobs/{job_id}", {"job_id": job_id}),
        ("DELETE /batches/{batch_id}", {"batch_id": batch_id}),
        ("GET /queues", {}),
    ]:
        response = ops[label].Case(path_parameters=params).call_and_validate()
        assert response.status_code == 200, label


def test_a_job_whose_result_is_not_json_and_a_health_report_with_helpers_match_the_schema(conn: redis.Redis) -> None:
    helpers = delivery.supervised(conn)  # not started: its thread shows as down, the 503 case
    ops = operations(schemathesis.openapi.from_wsgi("/openapi.json", create_app(conn, helpers=helpers)))
    sent = ops["POST /jobs"].Case(body={"task": "pi", "params": {"samples": 10}}).call_and_validate().json()
    job_id = sent["job_ids"][0]
    conn.hset(f"rq:job:{job_id}", "status", "finished")
    conn.xadd(f"rq:results:{job_id}", {"type": 1, "return_value": base64.b64encode(pickle.dumps(3.1)).decode()})
    job = ops["GET /jobs/{job_id}"].Case(path_parameters={"job_id": job_id}).call_and_validate()
    assert job.status_code == 200 and job.json()["unreadable"]
    health = ops["GET /health"].Case().call_and_validate(excluded_checks=[not_a_server_error])  # a documented 503
    assert health.status_code == 503 and health.json()["helpers"][0]["up"] is False
