"""The NYSE trading calendar, by rule: which days have a daily bar, and when a day's bar is final.

Why by rule: grouped daily bars cost one request per day, so asking for a weekend or a
holiday wastes a request (twelve seconds on the free plan), and the fetch plan and its ETA
need the exact number of sessions before the first request. The regular holidays follow
fixed rules; unscheduled closures (Hurricane Sandy in 2012, national days of mourning) are
not listed here but learned: a weekday the provider answers without results is recorded
as closed by the bar store, so it is asked about once.

A day's bar is final at 20:15 New York time: daily aggregates include the extended session,
which ends at 20:00, and a bar taken earlier would be stored as final with part of the day
missing.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Collection
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")
BAR_FINAL_AT = dt.time(20, 15)
JUNETEENTH_FIRST_YEAR = 2022


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> dt.date:
    """The ``n``-th ``weekday`` (Monday 0) of a month; ``n`` = -1 for the last one."""
    if n > 0:
        first = dt.date(year, month, 1)
        return first + dt.timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    following = dt.date(year + month // 12, month % 12 + 1, 1)
    last = following - dt.timedelta(days=1)
    return last - dt.timedelta(days=(last.weekday() - weekday) % 7)


def _easter(year: int) -> dt.date:
    """Western Easter Sunday (the anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    ell = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * ell) // 451
    month, day = divmod(h + ell - 7 * m + 114, 31)
    return dt.date(year, month, day + 1)


def _observed(day: dt.date) -> dt.date | None:
    """A fixed-date holiday on a Saturday is taken on the Friday, on a Sunday the Monday."""
    if day.weekday() == 5:
        return day - dt.timedelta(days=1)
    if day.weekday() == 6:
        return day + dt.timedelta(days=1)
    return day


@functools.cache
def holidays(year: int) -> frozenset[dt.date]:
    """The NYSE's regular full-day holidays of a year."""
    days = {
        _nth_weekday(year, 1, 0, 3),  # Martin Luther King Jr. Day
        _nth_weekday(year, 2, 0, 3),  # Washington's Birthday
        _easter(year) - dt.timedelta(days=2),  # Good Friday
        _nth_weekday(year, 5, 0, -1),  # Memorial Day
        _nth_weekday(year, 9, 0, 1),  # Labor Day
        _nth_weekday(year, 11, 3, 4),  # Thanksgiving
    }
    # New Year's Day on a Saturday is not moved to the Friday before (the year's last
    # session); on a Sunday it is taken on the Monday.
    new_year = dt.date(year, 1, 1)
    if new_year.weekday() != 5:
        days.add(_observed(new_year) or new_year)
    fixed = [dt.date(year, 7, 4), dt.date(year, 12, 25)]
    if year >= JUNETEENTH_FIRST_YEAR:
        fixed.append(dt.date(year, 6, 19))
    days.update(_observed(day) or day for day in fixed)
    return frozenset(days)


def is_session(day: dt.date, closed: Collection[dt.date] = ()) -> bool:
    """Whether the market trades on ``day`` (by rule, minus ``closed`` learned closures)."""
    return day.weekday() < 5 and day not in holidays(day.year) and day not in closed


def sessions_ending(end: dt.date, count: int, closed: Collection[dt.date] = ()) -> list[dt.date]:
    """The last ``count`` sessions on or before ``end``, oldest first."""
    found: list[dt.date] = []
    day = end
    while len(found) < count:
        if is_session(day, closed):
            found.append(day)
        day -= dt.timedelta(days=1)
    found.reverse()
    return found


def last_final_session(now: dt.datetime) -> dt.date:
    """The latest session whose daily bar is final at ``now`` (an aware datetime)."""
    local = now.astimezone(NEW_YORK)
    day = local.date()
    if is_session(day) and local.time() >= BAR_FINAL_AT:
        return day
    day -= dt.timedelta(days=1)
    while not is_session(day):
        day -= dt.timedelta(days=1)
    return day


def bar_date(timestamp_ms: int) -> dt.date:
    """The trading day of a daily bar: its ``t`` is the start of the day in New York."""
    return dt.datetime.fromtimestamp(timestamp_ms / 1000, NEW_YORK).date()


def day_start_ms(day: dt.date) -> int:
    """``t`` of the daily bar of ``day`` (midnight in New York, in epoch milliseconds)."""
    start = dt.datetime.combine(day, dt.time(), NEW_YORK)
    return int(start.timestamp() * 1000)
