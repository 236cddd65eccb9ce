"""The task catalogue on its own: validation, the tasks' answers, progress, scraping a local server."""

from __future__ import annotations

import math

import pytest

import task_def
from task_def import maths, progress
from task_def.scrape import scrape
from task_def.sleep import sleep


@pytest.fixture
def reports(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float, str]]:
    seen: list[tuple[float, float, str]] = []
    monkeypatch.setattr(progress, "_sink", lambda d, t, m: seen.append((d, t, m)))
    return seen


def test_catalogue_names_every_task_with_description_and_bounded_params() -> None:
    assert {"sleep", "scrape", "primes", "pi", "fibonacci", "factorise"} <= set(task_def.CATALOGUE)
    for task in task_def.CATALOGUE.values():
        assert task.description and task.timeout > 0
        assert task_def.by_path(task.path) is task
        for p in task.params:
            if p.type in (int, float):
                assert p.max is not None, f"{task.name}.{p.name} has no upper bound"


@pytest.mark.parametrize(
    "task, given, message",
    [
        ("sleep", {"seconds": "0"}, "seconds: '0' is out of bounds, expected 0 < seconds <= 3,600"),
        ("sleep", {"seconds": "3601"}, "out of bounds"),
        ("sleep", {"seconds": "abc"}, "seconds: expected a number, got 'abc'"),
        ("sleep", {"seconds": True}, "expected a number"),
        ("sleep", {"seconds": "nan"}, "expected a number"),
        ("sleep", {"secs": "1"}, "unknown parameter 'secs' (it takes: seconds)"),
        ("scrape", {}, "missing required parameter 'url'"),
        ("scrape", {"url": "ftp://example.com/"}, "must be an http:// or https:// URL"),
        ("scrape", {"url": "file:///etc/passwd"}, "must be an http:// or https:// URL"),
        ("primes", {"n": "1.5"}, "n: expected an integer, got '1.5'"),
        ("primes", {"n": str(10**11)}, "out of bounds"),
        ("primes", {"n": 10**400}, "out of bounds"),  # an integer past any float: was an OverflowError
        ("sleep", {"seconds": float("inf")}, "seconds: expected a number, got inf"),
        ("factorise", {"n": "0"}, "out of bounds"),
    ],
)
def test_bad_parameters_are_refused_with_a_message_naming_the_parameter(task: str, given: dict, message: str) -> None:
    with pytest.raises(task_def.InvalidParams) as raised:
        task_def.get_task(task).validate(given)
    assert message in str(raised.value)


def test_parameters_from_text_and_json_agree_and_defaults_fill_in() -> None:
    sleep_task = task_def.get_task("sleep")
    assert sleep_task.validate({"seconds": "2"}) == sleep_task.validate({"seconds": 2}) == {"seconds": 2.0}
    assert task_def.get_task("primes").validate({"n": "1_000"}) == {"n": 1000}
    assert task_def.get_task("pi").validate({}) == {"samples": 1_000_000, "seed": 0}


def test_unknown_task_names_the_catalogue() -> None:
    with pytest.raises(task_def.UnknownTask, match="unknown task 'nope'; the catalogue has: sleep, scrape"):
        task_def.get_task("nope")


@pytest.mark.parametrize(
    "n, expected", [(0, 0), (2, 0), (3, 1), (10, 4), (100, 25), (10**6, 78498), (2**21 + 7, 155611)]
)
def test_count_primes_matches_known_counts(n: int, expected: int) -> None:
    assert maths.count_primes(n)["primes"] == expected


def test_fibonacci_gives_digit_count_and_prefix() -> None:
    assert maths.fibonacci(10) == {"n": 10, "digits": 2, "prefix": "55"}
    assert maths.fibonacci(0)["prefix"] == "0"
    big = maths.fibonacci(100_000)
    assert big["digits"] == 20899 and big["prefix"] == "25974069347221724166"


@pytest.mark.parametrize("n", [1, 2, 97, 360, 600851475143, 2**61 - 1, 999999000001 * 1000000000039])
def test_factorise_returns_primes_whose_product_is_n(n: int) -> None:
    factors = maths.factorise(n)["factors"]
    assert math.prod(factors) == n
    assert all(maths._is_probable_prime(f) for f in factors)


def test_monte_carlo_pi_is_close_and_reproducible() -> None:
    first, second = maths.monte_carlo_pi(200_000, seed=3), maths.monte_carlo_pi(200_000, seed=3)
    assert first == second and abs(first["pi"] - math.pi) < 0.02


def test_tasks_report_progress_up_to_completion(reports: list) -> None:
    maths.count_primes(5_000_000)
    assert reports[-1][0] == reports[-1][1] == 5_000_000
    reports.clear()
    sleep(1.2)
    assert reports[0][0] == 0 and reports[-1][0] == pytest.approx(1.2, abs=0.05) and len(reports) >= 3


def test_scrape_reports_status_title_links_words_and_size(http_server: str) -> None:
    result = scrape(http_server + "/")
    assert result["status"] == 200 and result["title"] == "Test & page"
    assert result["links"] == 2 and result["words"] == 9  # script and style text is not counted
    assert result["bytes"] > 100 and not result["truncated"] and result["elapsed"] >= 0


def test_scrape_follows_redirects_and_reports_the_final_url(http_server: str) -> None:
    result = scrape(http_server + "/redirect")
    assert result["final_url"] == http_server + "/" and result["status"] == 200


def test_scrape_bounds_the_body_size(http_server: str) -> None:
    result = scrape(http_server + "/big", max_bytes=1000)
    assert result["bytes"] == 1000 and result["truncated"]


def test_scrape_reports_error_statuses_and_non_html(http_server: str) -> None:
    assert scrape(http_server + "/missing")["status"] == 404
    plain = scrape(http_server + "/plain")
    assert plain["title"] is None and plain["words"] == 0


def test_scrape_times_out(http_server: str) -> None:
    import httpx

    with pytest.raises(httpx.TimeoutException):
        scrape(http_server + "/slow", timeout=0.5)
