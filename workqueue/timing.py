"""When a delayed job should run: ``--in 90s|10m|2h|1h30m``, ``--at 2026-12-01T03:00[+TZ]``, the
interactive "When?" and the API's ``when=``/``delay=``, all read here into one aware UTC time.

A time without a zone is the local time of the machine that enqueues (the producer's), as a person
typing it at that machine means it. Nothing here touches Redis.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from workqueue.errors import BadInput

#: The furthest ahead a job may be delayed: further is almost surely a typo.
MAX_DELAY = timedelta(days=366)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str, field: str = "in") -> timedelta:
    """``90s``, ``10m``, ``2h``, ``1d``, compounds such as ``1h30m``, or a bare number of seconds;
    raises BadInput (naming ``field``) for anything else or for a duration that is not in the future."""
    raw = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", raw):
        seconds = float(raw)
    elif re.fullmatch(r"(?:\d+(?:\.\d+)?[smhd])+", raw):
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(raw))
    else:
        raise BadInput(f"{field}: {text!r} is not a duration; expected e.g. 90s, 10m, 2h or 1h30m", field)
    return check_delay(timedelta(seconds=seconds), field, text)


def check_delay(delay: timedelta, field: str = "in", text: str | None = None) -> timedelta:
    """``delay`` if it is more than zero and at most MAX_DELAY; BadInput otherwise."""
    shown = text if text is not None else f"{delay.total_seconds():g} s"
    if delay <= timedelta(0):
        raise BadInput(f"{field}: {shown} is not in the future; give a delay above zero (e.g. 10m), or none", field)
    if delay > MAX_DELAY:
        raise BadInput(f"{field}: {shown} is more than {MAX_DELAY.days} days ahead", field)
    return delay


def parse_time(text: str, field: str = "at", *, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (``2026-12-01T03:00``, ``2026-12-01 03:00:00+01:00``, ``...Z``) as an aware
    UTC datetime; one without a zone is local time here. BadInput if unparseable or not in the future."""
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise BadInput(
            f"{field}: {text!r} is not a time; expected ISO 8601, e.g. 2026-12-01T03:00 or 2026-12-01T03:00+01:00",
            field,
        ) from None
    return check_time(moment, field, text, now=now)


def check_time(
    moment: datetime, field: str = "at", text: str | None = None, *, now: datetime | None = None
) -> datetime:
    """``moment`` in UTC (naive: local time here) if it is in the future and within MAX_DELAY."""
    aware = moment.astimezone(UTC)  # a naive datetime is taken as local time
    current = now or datetime.now(UTC)
    shown = text if text is not None else aware.isoformat(timespec="seconds")
    if aware <= current:
        raise BadInput(f"{field}: {shown} is in the past (now is {current.isoformat(timespec='seconds')})", field)
    if aware - current > MAX_DELAY:
        raise BadInput(f"{field}: {shown} is more than {MAX_DELAY.days} days ahead", field)
    return aware


def parse_when(text: str) -> datetime | None:
    """The interactive "When?": ``now`` (None), a delay (``10m``) or a time (``2026-12-01T03:00``)."""
    raw = text.strip()
    if raw.lower() in ("", "now"):
        return None
    if re.fullmatch(r"[0-9.]+[smhd0-9.]*", raw.lower()):
        return datetime.now(UTC) + parse_duration(raw, "when")
    if re.match(r"[0-9]{4}-", raw):
        return parse_time(raw, "when")
    raise BadInput(f"when: {text!r} is neither now, a delay (90s, 10m, 1h30m) nor a time (2026-12-01T03:00)", "when")


def resolve(
    when: datetime | str | None = None,
    delay: timedelta | float | str | None = None,
    *,
    at_field: str = "at",
    in_field: str = "in",
) -> datetime | None:
    """The aware UTC time a job should run at, from a time or a delay (not both), or None for now.
    Strings are parsed as ``--at``/``--in`` are; numbers are seconds; BadInput names the field."""
    if when is not None and delay is not None:
        raise BadInput(f"give either {at_field} (a time) or {in_field} (a delay), not both", at_field)
    if when is not None:
        if isinstance(when, str):
            return parse_time(when, at_field)
        if not isinstance(when, datetime):
            raise BadInput(f"{at_field}: expected a datetime, not {type(when).__name__}", at_field)
        return check_time(when, at_field)
    if delay is None:
        return None
    if isinstance(delay, str):
        span = parse_duration(delay, in_field)
    elif isinstance(delay, timedelta):
        span = check_delay(delay, in_field)
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        if delay != delay:  # NaN
            raise BadInput(f"{in_field}: not a number", in_field)
        if delay <= 0:
            raise BadInput(f"{in_field}: {delay:g} s is not in the future; give a delay above zero, or none", in_field)
        seconds = min(max(float(delay), 1e-6), MAX_DELAY.total_seconds() * 2)  # a microsecond at least
        span = check_delay(timedelta(seconds=seconds), in_field, f"{delay:g} s")
    else:
        raise BadInput(f"{in_field}: expected seconds or a timedelta, not {type(delay).__name__}", in_field)
    return datetime.now(UTC) + span


def describe(moment: datetime) -> str:
    """A time for people: local, to the second, with how far ahead it is."""
    ahead = max(0, round((moment - datetime.now(UTC)).total_seconds()))
    local = moment.astimezone().isoformat(sep=" ", timespec="seconds")
    return f"{local} (in {format_span(ahead)})"


def format_span(seconds: int) -> str:
    """``3725`` as ``1h2m5s``."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    if seconds or not parts:
        parts.append(f"{seconds}s")
    return "".join(parts)
