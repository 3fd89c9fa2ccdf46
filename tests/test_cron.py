"""Tests for btu_twisted.cron: field forms, DST rules, and a brute-force oracle.

The oracle at the bottom knows nothing of croniter or of the module under test:
it walks real instants one by one, reads each one's local wall-clock time, and
applies the rules of DESIGN.md ("Cron and time zones") with a tiny matcher of
its own.  ``next_run`` iterated over the same span must give the same instants.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import croniter as croniter_module
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from btu_twisted import cron

NEW_YORK = "America/New_York"
LONDON = "Europe/London"
LORD_HOWE = "Australia/Lord_Howe"
KOLKATA = "Asia/Kolkata"
UTC = "UTC"


def _at(text: str) -> int:
    """Unix seconds of an ISO time written in UTC ('2025-03-09T07:00Z')."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def _iso(instant: int) -> str:
    return datetime.fromtimestamp(instant, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _runs(cron_string: str, zone: str, start: str, count: int) -> list[str]:
    """The next ``count`` runs after ``start`` (UTC ISO), as UTC ISO strings."""
    instant: float = _at(start)
    found = []
    for _ in range(count):
        instant = cron.next_run(cron_string, zone, instant)
        found.append(_iso(int(instant)))
    return found


class FieldFormTests(SynchronousTestCase):
    """The three field forms, day-of-week spellings and the Vixie OR rule."""

    def test_five_fields(self) -> None:
        """Five fields are ``min hour dom mon dow``."""
        self.assertEqual(
            _runs("30 2 * * *", UTC, "2025-06-01T00:00Z", 2),
            ["2025-06-01T02:30:00Z", "2025-06-02T02:30:00Z"],
        )

    def test_six_fields_end_with_a_year(self) -> None:
        """A sixth field is a year (not croniter's trailing seconds; COMPAT 6.16)."""
        self.assertEqual(
            _runs("0 12 1 1 * 2027-2028", UTC, "2025-06-01T00:00Z", 2),
            ["2027-01-01T12:00:00Z", "2028-01-01T12:00:00Z"],
        )
        self.assertEqual(
            _runs("15 10 * * * *", UTC, "2025-06-01T00:00Z", 1), ["2025-06-01T10:15:00Z"]
        )

    def test_seven_fields_put_seconds_first_and_year_last(self) -> None:
        """Seven fields are ``sec min hour dom mon dow year``."""
        self.assertEqual(
            _runs("15 30 2 * * * *", UTC, "2025-06-01T00:00Z", 1), ["2025-06-01T02:30:15Z"]
        )
        self.assertEqual(
            _runs("*/20 0 0 1 1 * 2026", UTC, "2025-06-01T00:00Z", 3),
            ["2026-01-01T00:00:00Z", "2026-01-01T00:00:20Z", "2026-01-01T00:00:40Z"],
        )

    def test_sunday_is_zero_seven_and_sun(self) -> None:
        """0, 7, SUN and sun all mean Sunday, as the BTU app writes them (COMPAT 6.15)."""
        for dow in ("0", "7", "SUN", "sun", "Sun", "7-7", "0,7"):
            self.assertEqual(
                _runs(f"0 9 * * {dow}", UTC, "2025-06-02T00:00Z", 2),
                ["2025-06-08T09:00:00Z", "2025-06-15T09:00:00Z"],
                dow,
            )

    def test_one_to_five_is_monday_to_friday(self) -> None:
        """``1-5`` is Monday to Friday, not Sunday to Thursday as in the Rust daemon."""
        runs = cron.next_runs("0 9 * * 1-5", UTC, _at("2025-06-01T00:00Z"), 7)
        self.assertEqual(
            [run.strftime("%a") for run in runs],
            ["Mon", "Tue", "Wed", "Thu", "Fri", "Mon", "Tue"],
        )
        named = cron.next_runs("0 9 * * MON-fri", UTC, _at("2025-06-01T00:00Z"), 7)
        self.assertEqual(named, runs)

    def test_month_names(self) -> None:
        """Month names are read case-insensitively, in lists and ranges."""
        self.assertEqual(
            _runs("0 0 1 JAN,jul *", UTC, "2025-02-01T00:00Z", 2),
            ["2025-07-01T00:00:00Z", "2026-01-01T00:00:00Z"],
        )
        self.assertEqual(
            _runs("0 0 1 nov-Dec *", UTC, "2025-02-01T00:00Z", 2),
            ["2025-11-01T00:00:00Z", "2025-12-01T00:00:00Z"],
        )

    def test_day_of_month_or_day_of_week(self) -> None:
        """With both day fields restricted either one matching is enough (Vixie)."""

        def days(text: str, start: str, count: int) -> list[str]:
            return [r.strftime("%a %d") for r in cron.next_runs(text, UTC, _at(start), count)]

        self.assertEqual(
            days("0 0 13 * 5", "2025-06-01T00:00Z", 5),
            ["Fri 06", "Fri 13", "Fri 20", "Fri 27", "Fri 04"],
        )
        self.assertEqual(
            days("0 0 1 * 1", "2025-08-30T00:00Z", 3), ["Mon 01", "Mon 08", "Mon 15"]
        )
        self.assertEqual(days("0 0 13 * *", "2025-06-01T00:00Z", 2), ["Fri 13", "Sun 13"])
        self.assertEqual(days("0 0 * * 5", "2025-06-01T00:00Z", 2), ["Fri 06", "Fri 13"])

    def test_a_day_field_starting_with_star_needs_both(self) -> None:
        """cronie's rule: ``*/2`` counts as unrestricted, so both day fields must
        match (odd-day Mondays, not every odd day plus every Monday)."""

        def days(text: str, start: str, count: int) -> list[str]:
            return [r.strftime("%b %a %d") for r in cron.next_runs(text, UTC, _at(start), count)]

        self.assertEqual(
            days("0 0 */2 * 1", "2025-08-30T00:00Z", 4),
            ["Sep Mon 01", "Sep Mon 15", "Sep Mon 29", "Oct Mon 13"],
        )
        self.assertEqual(
            days("0 0 13 * */2", "2025-06-01T00:00Z", 3),
            ["Jul Sun 13", "Sep Sat 13", "Nov Thu 13"],
        )
        # Neither starts with '*' (a '*' later in a list does not count): either.
        self.assertEqual(
            days("0 0 1,15 * 1", "2025-08-30T00:00Z", 7),
            ["Sep Mon 01", "Sep Mon 08", "Sep Mon 15", "Sep Mon 22", "Sep Mon 29",
             "Oct Wed 01", "Oct Mon 06"],
        )
        self.assertEqual(
            days("0 0 13 * 6,*/7", "2025-06-01T00:00Z", 3),
            ["Jun Sat 07", "Jun Sun 08", "Jun Fri 13"],
        )

    def test_equal_range_is_one_value(self) -> None:
        """``5-5`` is minute 5; croniter alone would read it as every minute."""
        self.assertEqual(
            _runs("5-5 * * * *", UTC, "2025-06-01T00:00Z", 2),
            ["2025-06-01T00:05:00Z", "2025-06-01T01:05:00Z"],
        )

    def test_steps(self) -> None:
        """``*/n``, ``a-b/n`` and ``a/n`` (read as ``a-max/n``) step through the field."""
        self.assertEqual(
            _runs("*/20 * * * *", UTC, "2025-06-01T00:00Z", 3),
            ["2025-06-01T00:20:00Z", "2025-06-01T00:40:00Z", "2025-06-01T01:00:00Z"],
        )
        self.assertEqual(
            _runs("10-30/10 1 * * *", UTC, "2025-06-01T00:00Z", 4),
            ["2025-06-01T01:10:00Z", "2025-06-01T01:20:00Z", "2025-06-01T01:30:00Z",
             "2025-06-02T01:10:00Z"],
        )
        self.assertEqual(
            _runs("50/5 1 * * *", UTC, "2025-06-01T00:00Z", 3),
            ["2025-06-01T01:50:00Z", "2025-06-01T01:55:00Z", "2025-06-02T01:50:00Z"],
        )

    def test_whitespace_is_tolerated(self) -> None:
        """Leading, trailing and repeated blanks (tabs too) do not change a schedule."""
        expected = _runs("30 2 * * *", UTC, "2025-06-01T00:00Z", 2)
        for text in ("  30 2 * * *", "30 2 * * *  ", "30   2 *\t* *", "\t30 2 * * *\n"):
            self.assertEqual(_runs(text, UTC, "2025-06-01T00:00Z", 2), expected, repr(text))

    def test_shortcuts(self) -> None:
        """Vixie's @-shortcuts are accepted (except @reboot, which means nothing here)."""
        self.assertEqual(_runs("@hourly", UTC, "2025-06-01T00:30Z", 1), ["2025-06-01T01:00:00Z"])
        self.assertEqual(_runs("@daily", UTC, "2025-06-01T00:30Z", 1), ["2025-06-02T00:00:00Z"])
        self.assertEqual(_runs("@WEEKLY", UTC, "2025-06-02T00:30Z", 1), ["2025-06-08T00:00:00Z"])
        self.assertEqual(_runs("@yearly", UTC, "2025-06-02T00:30Z", 1), ["2026-01-01T00:00:00Z"])
        self.assertRaises(cron.CronError, cron.validate, "@reboot")

    def test_strictly_after(self) -> None:
        """The run returned is strictly later than ``after``, fractions included."""
        midnight = _at("2025-06-01T00:00Z")
        self.assertEqual(cron.next_run("0 0 * * *", UTC, midnight), midnight + 86400)
        self.assertEqual(cron.next_run("0 0 * * *", UTC, midnight - 0.5), midnight)
        self.assertEqual(cron.next_run("* * * * * * *", UTC, midnight + 0.25), midnight + 1)
        self.assertIsInstance(cron.next_run("0 0 * * *", UTC, midnight - 0.5), int)

    def test_zone_object_or_name(self) -> None:
        """The zone may be given by name or as a ZoneInfo; both give the same runs."""
        after = _at("2025-06-01T00:00Z")
        self.assertEqual(
            cron.next_run("0 9 * * *", ZoneInfo(KOLKATA), after),
            cron.next_run("0 9 * * *", KOLKATA, after),
        )

    def test_next_runs_are_aware_in_the_zone(self) -> None:
        """next_runs gives aware datetimes in the zone, fold set on the second pass."""
        runs = cron.next_runs("0 * * * *", NEW_YORK, _at("2025-11-02T03:30Z"), 4)
        self.assertEqual(
            [(r.isoformat(), r.fold) for r in runs],
            [
                ("2025-11-02T00:00:00-04:00", 0),
                ("2025-11-02T01:00:00-04:00", 0),
                ("2025-11-02T01:00:00-05:00", 1),
                ("2025-11-02T02:00:00-05:00", 0),
            ],
        )
        self.assertEqual(
            [int(r.timestamp()) for r in runs],
            [_at(t) for t in ("2025-11-02T04:00Z", "2025-11-02T05:00Z",
                              "2025-11-02T06:00Z", "2025-11-02T07:00Z")],
        )

    def test_next_runs_stops_when_the_years_run_out(self) -> None:
        """A preview of a year-limited schedule ends with its last run."""
        runs = cron.next_runs("0 0 1 1 * 2026-2027", UTC, _at("2025-06-01T00:00Z"), 5)
        self.assertEqual([r.year for r in runs], [2026, 2027])


class ErrorTests(SynchronousTestCase):
    """Strings and zones that cannot be used give CronError with a useful reason."""

    def assertCronError(self, cron_string: object, fragment: str) -> None:
        with self.assertRaises(cron.CronError) as caught:
            cron.validate(cron_string)  # type: ignore[arg-type]
        self.assertIn(fragment, str(caught.exception))

    def test_empty(self) -> None:
        """Empty, blank and missing strings are refused."""
        self.assertCronError("", "empty")
        self.assertCronError("   \t ", "empty")
        self.assertCronError(None, "None")

    def test_field_count(self) -> None:
        """Only 5, 6 or 7 fields are accepted, and the message says so."""
        self.assertCronError("* * * *", "has 4 fields")
        self.assertCronError("* * * * * * * *", "has 8 fields")
        self.assertCronError("garbage", "has 1 fields")

    def test_out_of_range(self) -> None:
        """Each field names itself and the value it could not use."""
        self.assertCronError("* * * * 9", "day-of-week field '9' out of range")
        self.assertCronError("60 * * * *", "minute field '60' out of range")
        self.assertCronError("* 24 * * *", "hour field '24' out of range")
        self.assertCronError("* * 0 * *", "day-of-month field '0' out of range")
        self.assertCronError("* * * 13 *", "month field '13' out of range")
        self.assertCronError("60 * * * * * *", "second field '60' out of range")
        self.assertCronError("* * * * * 1969", "year field '1969' out of range")
        self.assertCronError("* * * * 1-8", "day-of-week field '8' out of range")

    def test_unreadable(self) -> None:
        """Garbage, unknown names and non-Vixie extensions are refused."""
        self.assertCronError("a b c d e", "minute field: cannot read 'a'")
        self.assertCronError("* * * * MONDAY", "cannot read 'monday'")
        self.assertCronError("* * * jan-foo *", "cannot read 'foo'")
        self.assertCronError("0 mon * * *", "hour field: cannot read 'mon'")
        self.assertCronError("* * L * *", "day-of-month field: cannot read 'l'")
        self.assertCronError("* * * * 1#2", "cannot read '1#2'")
        self.assertCronError("* * ? * *", "cannot read '?'")
        self.assertCronError("H * * * *", "cannot read 'h'")
        self.assertCronError("-5 * * * *", "cannot read '-5'")
        self.assertCronError("1,,2 * * * *", "cannot read ''")
        self.assertCronError("*/0 * * * *", "at least 1")
        self.assertCronError("5-1 * * * *", "runs backwards")
        self.assertCronError("* * * * sat-sun", "runs backwards")
        self.assertCronError("@reboot", "unknown cron shortcut")

    def test_never_matches(self) -> None:
        """Strings that can never fire say so, and finding out is quick."""
        started = time.perf_counter()
        self.assertCronError("0 0 30 2 *", "'0 0 30 2 *' never matches")
        self.assertCronError("0 0 31 4,6,9,11 *", "never matches")
        self.assertCronError("0 0 29 2 * 2097-2099", "never matches")
        self.assertCronError("0 0 0 30 2 * *", "never matches")
        self.assertLess(time.perf_counter() - started, 1.0)

    def test_years_in_the_past(self) -> None:
        """A year range entirely in the past parses, but next_run says it never matches."""
        cron.validate("0 0 1 1 * 2020-2021")
        with self.assertRaises(cron.CronError) as caught:
            cron.next_run("0 0 1 1 * 2020-2021", UTC, _at("2025-06-01T00:00Z"))
        self.assertIn("never matches after 2025-06-01", str(caught.exception))
        self.assertRaises(
            cron.CronError, cron.next_runs, "0 0 1 1 * 2020", UTC, _at("2025-06-01T00:00Z"), 3
        )

    def test_valid_strings_validate(self) -> None:
        """validate returns None for usable strings, including Feb 29 and OR-rule ones."""
        for text in ("* * * * *", "0 0 29 2 *", "0 0 30 2 1", "0 0 * * * 2099",
                     "0 0 0 * * * *", "@monthly"):
            self.assertIsNone(cron.validate(text), text)

    def test_unknown_zones(self) -> None:
        """Unknown, empty and malformed zone names are CronError, naming the zone."""
        for name in ("", "  ", "Nowhere/City", "America", "../etc/passwd", None):
            with self.assertRaises(cron.CronError) as caught:
                cron.get_zone(name)  # type: ignore[arg-type]
            self.assertIn("unknown time zone", str(caught.exception))
        self.assertRaises(cron.CronError, cron.next_run, "* * * * *", "Nowhere/City", 0)

    def test_zones_are_cached(self) -> None:
        """get_zone gives the same ZoneInfo each time, and ignores surrounding blanks."""
        self.assertIs(cron.get_zone(NEW_YORK), cron.get_zone(NEW_YORK))
        self.assertEqual(cron.get_zone(" UTC "), ZoneInfo("UTC"))


class DaylightSavingExampleTests(SynchronousTestCase):
    """The DST rules spelled out on known transitions.

    America/New_York 2025: 02:00 EST -> 03:00 EDT on 9 March (07:00Z); 02:00 EDT ->
    01:00 EST on 2 November (06:00Z).  Europe/London 2025: 30 March and 26 October at
    01:00Z.  Australia/Lord_Howe moves by 30 minutes: 02:00 +11 -> 01:30 +10:30 on
    6 April (15:00Z on the 5th), 02:00 +10:30 -> 02:30 +11 on 5 October (15:30Z on
    the 4th).
    """

    def test_skipped_time_fires_at_the_jump(self) -> None:
        """02:30 does not exist on 9 March; it fires once, at 03:00 EDT (07:00Z)."""
        self.assertEqual(
            _runs("30 2 * * *", NEW_YORK, "2025-03-08T00:00Z", 3),
            ["2025-03-08T07:30:00Z", "2025-03-09T07:00:00Z", "2025-03-10T06:30:00Z"],
        )

    def test_several_skipped_times_fire_once(self) -> None:
        """``*/15 2 * * *`` has four times in the gap; it fires once, at the jump."""
        self.assertEqual(
            _runs("*/15 2 * * *", NEW_YORK, "2025-03-08T08:00Z", 3),
            ["2025-03-09T07:00:00Z", "2025-03-10T06:00:00Z", "2025-03-10T06:15:00Z"],
        )

    def test_hourly_across_the_gap(self) -> None:
        """``0 * * * *`` runs at 01:00 EST, then once at 03:00 EDT, not twice."""
        self.assertEqual(
            _runs("0 * * * *", NEW_YORK, "2025-03-09T05:30Z", 3),
            ["2025-03-09T06:00:00Z", "2025-03-09T07:00:00Z", "2025-03-09T08:00:00Z"],
        )

    def test_fixed_hour_fires_on_the_first_pass(self) -> None:
        """``0 1 * * *`` on 2 November runs at 01:00 EDT only, not again at 01:00 EST."""
        self.assertEqual(
            _runs("0 1 * * *", NEW_YORK, "2025-11-02T00:00Z", 2),
            ["2025-11-02T05:00:00Z", "2025-11-03T06:00:00Z"],
        )

    def test_star_hour_follows_real_time(self) -> None:
        """``0 * * * *`` runs at 05:00Z (01:00 EDT), 06:00Z (01:00 EST), 07:00Z."""
        self.assertEqual(
            _runs("0 * * * *", NEW_YORK, "2025-11-02T03:30Z", 4),
            ["2025-11-02T04:00:00Z", "2025-11-02T05:00:00Z",
             "2025-11-02T06:00:00Z", "2025-11-02T07:00:00Z"],
        )

    def test_fixed_versus_star_hour_with_steps(self) -> None:
        """``*/30 1 * * *`` runs twice in the repeated hour; ``*/30 * * * *`` four times."""
        self.assertEqual(
            _runs("*/30 1 * * *", NEW_YORK, "2025-11-02T04:00Z", 3),
            ["2025-11-02T05:00:00Z", "2025-11-02T05:30:00Z", "2025-11-03T06:00:00Z"],
        )
        self.assertEqual(
            _runs("*/30 * * * *", NEW_YORK, "2025-11-02T04:40Z", 6),
            ["2025-11-02T05:00:00Z", "2025-11-02T05:30:00Z", "2025-11-02T06:00:00Z",
             "2025-11-02T06:30:00Z", "2025-11-02T07:00:00Z", "2025-11-02T07:30:00Z"],
        )

    def test_starting_inside_the_repeated_hour(self) -> None:
        """From either pass of the repeated hour the next run is still right."""
        first_pass, second_pass = "2025-11-02T05:30Z", "2025-11-02T06:30Z"
        self.assertEqual(_runs("0 * * * *", NEW_YORK, first_pass, 1), ["2025-11-02T06:00:00Z"])
        self.assertEqual(_runs("45 * * * *", NEW_YORK, first_pass, 2),
                         ["2025-11-02T05:45:00Z", "2025-11-02T06:45:00Z"])
        self.assertEqual(_runs("15 * * * *", NEW_YORK, first_pass, 1), ["2025-11-02T06:15:00Z"])
        self.assertEqual(_runs("15 1 * * *", NEW_YORK, first_pass, 1), ["2025-11-03T06:15:00Z"])
        self.assertEqual(_runs("45 * * * *", NEW_YORK, second_pass, 1), ["2025-11-02T06:45:00Z"])
        self.assertEqual(_runs("45 1 * * *", NEW_YORK, second_pass, 1), ["2025-11-03T06:45:00Z"])
        self.assertEqual(_runs("15 2 * * *", NEW_YORK, second_pass, 1), ["2025-11-02T07:15:00Z"])

    def test_unambiguous_time_on_the_fall_back_day(self) -> None:
        """02:30 exists once on 2 November (EST): 07:30Z."""
        self.assertEqual(_runs("30 2 * * *", NEW_YORK, "2025-11-02T00:00Z", 1),
                         ["2025-11-02T07:30:00Z"])

    def test_london(self) -> None:
        """London: 01:30 is skipped in March and repeated in October."""
        self.assertEqual(
            _runs("30 1 * * *", LONDON, "2025-03-29T00:00Z", 3),
            ["2025-03-29T01:30:00Z", "2025-03-30T01:00:00Z", "2025-03-31T00:30:00Z"],
        )
        self.assertEqual(
            _runs("30 1 * * *", LONDON, "2025-10-25T23:45Z", 2),
            ["2025-10-26T00:30:00Z", "2025-10-27T01:30:00Z"],
        )
        self.assertEqual(
            _runs("30 * * * *", LONDON, "2025-10-25T23:45Z", 3),
            ["2025-10-26T00:30:00Z", "2025-10-26T01:30:00Z", "2025-10-26T02:30:00Z"],
        )

    def test_lord_howe_half_hour_shift(self) -> None:
        """Lord Howe repeats 01:30-02:00 in April and skips 02:00-02:30 in October."""
        self.assertEqual(
            _runs("45 * * * *", LORD_HOWE, "2025-04-05T14:00Z", 3),
            ["2025-04-05T14:45:00Z", "2025-04-05T15:15:00Z", "2025-04-05T16:15:00Z"],
        )
        self.assertEqual(
            _runs("45 1 * * *", LORD_HOWE, "2025-04-05T14:00Z", 2),
            ["2025-04-05T14:45:00Z", "2025-04-06T15:15:00Z"],
        )
        self.assertEqual(
            _runs("15 1 * * *", LORD_HOWE, "2025-04-05T14:00Z", 1), ["2025-04-05T14:15:00Z"]
        )
        for text in ("0 2 * * *", "15 2 * * *", "30 2 * * *", "*/10 2 * * *"):
            self.assertEqual(
                _runs(text, LORD_HOWE, "2025-10-04T12:00Z", 1), ["2025-10-04T15:30:00Z"], text
            )
        self.assertEqual(
            _runs("*/10 2 * * *", LORD_HOWE, "2025-10-04T15:30Z", 1), ["2025-10-04T15:40:00Z"]
        )

    def test_lord_howe_second_pass_after_an_earlier_time(self) -> None:
        """From 01:56 +11 the next run of ``*/4 * * * *`` is 01:32 +10:30, not 02:00.

        The repeated stretch is half an hour long, so the wall time one shift back
        (01:26) lies before it; 01:28 exists once and must not hide 01:32.
        """
        self.assertEqual(
            _runs("*/4 * * * *", LORD_HOWE, "2025-04-05T14:50Z", 4),
            ["2025-04-05T14:52:00Z", "2025-04-05T14:56:00Z", "2025-04-05T15:02:00Z",
             "2025-04-05T15:06:00Z"],
        )

    def test_kolkata_has_no_dst(self) -> None:
        """Asia/Kolkata is +05:30 all year."""
        self.assertEqual(
            _runs("0 9 * * *", KOLKATA, "2025-03-09T00:00Z", 2),
            ["2025-03-09T03:30:00Z", "2025-03-10T03:30:00Z"],
        )
        self.assertEqual(
            _runs("30 23 31 12 *", KOLKATA, "2025-06-01T00:00Z", 1), ["2025-12-31T18:00:00Z"]
        )

    def test_tokyo_is_not_rerun_every_poll(self) -> None:
        """Tokyo ``0 8 * * *`` runs once a day at 23:00Z (COMPAT 6.14)."""
        self.assertEqual(
            _runs("0 8 * * *", "Asia/Tokyo", "2025-06-01T23:30Z", 2),
            ["2025-06-02T23:00:00Z", "2025-06-03T23:00:00Z"],
        )

    def test_seconds_in_the_gap_and_the_repeated_hour(self) -> None:
        """Seven-field schedules obey the same rules, second by second."""
        self.assertEqual(
            _runs("*/20 30 2 * * * *", NEW_YORK, "2025-03-09T06:59:30Z", 2),
            ["2025-03-09T07:00:00Z", "2025-03-10T06:30:00Z"],
        )
        self.assertEqual(
            _runs("* * * * * * *", NEW_YORK, "2025-11-02T05:59:59Z", 2),
            ["2025-11-02T06:00:00Z", "2025-11-02T06:00:01Z"],
        )
        self.assertEqual(
            _runs("10 0 1 * * * *", NEW_YORK, "2025-11-02T05:00:00Z", 2),
            ["2025-11-02T05:00:10Z", "2025-11-03T06:00:10Z"],
        )


class CostTests(SynchronousTestCase):
    """Parsing is cached and seconds-level schedules do not walk."""

    def count_croniter_builds(self) -> list[str]:
        """Empty the parse cache and record every croniter the module builds from now on."""
        built: list[str] = []
        real = cron.croniter

        def counting(expression: str, *args: object, **kwargs: object) -> object:
            built.append(expression)
            return real(expression, *args, **kwargs)

        self.patch(cron, "croniter", counting)
        cron._parse_or_error.cache_clear()
        return built

    def test_parse_once_per_distinct_string(self) -> None:
        """10,000 schedules sharing 50 strings cost 50 parses, blanks notwithstanding."""
        built = self.count_croniter_builds()
        strings = [f"{minute} {hour} * * *" for minute in range(0, 50, 5) for hour in range(5)]
        self.assertEqual(len(set(strings)), 50)
        after = _at("2025-06-01T00:00Z")
        for i in range(10_000):
            text = strings[i % 50]
            if i % 3 == 1:
                text = f"  {text.replace(' ', '   ')}\t"
            cron.next_run(text, NEW_YORK, after + i)
        info = cron._parse_or_error.cache_info()
        self.assertEqual((info.misses, info.hits), (50, 9_950))
        self.assertEqual(len(built), 50)

    def test_impossible_strings_are_proven_impossible_once(self) -> None:
        """A string that never matches (30 February) costs its search once;
        asking again (every refresh) gets the same error from the cache."""
        built = self.count_croniter_builds()
        for _ in range(3):
            with self.assertRaises(cron.CronError) as caught:
                cron.next_run("0 0 30 2 *", NEW_YORK, _at("2025-06-01T00:00Z"))
            self.assertIn("never matches", str(caught.exception))
        self.assertEqual(len(built), 1)

    def test_seconds_schedules_take_one_step(self) -> None:
        """A per-second schedule asks croniter for one or two candidates, even mid-fold."""
        steps: list[int] = []
        real = croniter_module.croniter.get_next

        def counting(self_: object, *args: object, **kwargs: object) -> object:
            steps.append(1)
            return real(self_, *args, **kwargs)

        for text in ("* * * * * * *", "* * 1 * * * *", "*/5 * * * * * *"):
            cron.validate(text)
        self.patch(croniter_module.croniter, "get_next", counting)
        for text in ("* * * * * * *", "* * 1 * * * *", "*/5 * * * * * *"):
            for moment in ("2025-06-01T12:00Z", "2025-11-02T05:30Z", "2025-11-02T06:30Z",
                           "2025-03-09T06:59:59Z"):
                del steps[:]
                cron.next_run(text, NEW_YORK, _at(moment))
                self.assertLessEqual(len(steps), 2, (text, moment))


# --- The oracle --------------------------------------------------------------------

_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


def _oracle_set(text: str, low: int, high: int, names: dict[str, int]) -> set[int] | None:
    """Values a field allows, None for ``*``; no error checking, inputs are valid."""
    if text == "*":
        return None
    allowed: set[int] = set()
    for part in text.lower().split(","):
        span, _, step = part.partition("/")
        if span == "*":
            first, last = low, high
        elif "-" in span:
            a, b = span.split("-")
            first = names[a] if a in names else int(a)
            last = names[b] if b in names else int(b)
        else:
            first = names[span] if span in names else int(span)
            last = high if step else first
        allowed.update(range(first, last + 1, int(step or 1)))
    return allowed


class _Oracle:
    """Decides, for one real instant at a time, whether a cron string fires."""

    def __init__(self, cron_string: str) -> None:
        fields = cron_string.split()
        if len(fields) == 5:
            fields = ["0", *fields, "*"]
        elif len(fields) == 6:
            fields = ["0", *fields]
        sec, minute, hour, dom, month, dow, year = fields
        self.seconds = _oracle_set(sec, 0, 59, {})
        self.minutes = _oracle_set(minute, 0, 59, {})
        self.hours = _oracle_set(hour, 0, 23, {})
        self.doms = _oracle_set(dom, 1, 31, {})
        self.months = _oracle_set(month, 1, 12, {m: i + 1 for i, m in enumerate(_MONTHS)})
        dows = _oracle_set(dow, 0, 7, {d: i for i, d in enumerate(_DAYS)})
        self.dows = None if dows is None else {d % 7 for d in dows}
        self.years = _oracle_set(year, 1970, 2099, {})
        # cronie sets DOM_STAR/DOW_STAR when the field's first character is
        # '*'; with either flag both day fields must match, else either one.
        self.either_day = not dom.startswith("*") and not dow.startswith("*")
        self.both_passes = hour.startswith("*")

    def matches(self, wall: datetime) -> bool:
        """Does this wall-clock time match every field?"""
        def ok(allowed: set[int] | None, value: int) -> bool:
            return allowed is None or value in allowed

        if not (ok(self.minutes, wall.minute) and ok(self.hours, wall.hour)
                and ok(self.seconds, wall.second) and ok(self.months, wall.month)
                and ok(self.years, wall.year)):
            return False
        dom_ok = ok(self.doms, wall.day)
        dow_ok = ok(self.dows, wall.isoweekday() % 7)
        return (dom_ok or dow_ok) if self.either_day else (dom_ok and dow_ok)

    def fires(self, zone: ZoneInfo, instant: int, step: int) -> bool:
        """The rules of DESIGN.md, read off one instant and the one before it."""
        local = datetime.fromtimestamp(instant, zone)
        wall = local.replace(tzinfo=None)
        if self.matches(wall) and (local.fold == 0 or self.both_passes):
            return True
        offset = local.utcoffset()
        previous = datetime.fromtimestamp(instant - 1, zone).utcoffset()
        assert offset is not None and previous is not None
        jump = int((offset - previous).total_seconds())
        return any(self.matches(wall - timedelta(seconds=back))
                   for back in range(step, jump + 1, step))

    def runs(self, zone: ZoneInfo, start: int, stop: int, step: int) -> list[int]:
        """Every firing instant in (start, stop], walking ``step`` seconds at a time."""
        return [u for u in range(start + step, stop + 1, step) if self.fires(zone, u, step)]


def _next_run_runs(cron_string: str, zone: ZoneInfo, start: int, stop: int) -> list[int]:
    """Every run in (start, stop] by iterating next_run."""
    found = []
    instant = start
    while True:
        try:
            instant = cron.next_run(cron_string, zone, instant)
        except cron.CronError as error:
            if "never matches" not in str(error):
                raise
            return found
        if instant > stop:
            return found
        found.append(instant)


class _YearOracle:
    """One year of minutes in one zone, walked once and shared by many strings.

    Reading the local time of every minute afresh for every string would cost
    seconds each; the walk is kept instead, and a minute the string cannot match
    is skipped unless the clock jumped there (a jump brings in skipped minutes).
    """

    def __init__(self, zone: ZoneInfo, year: int) -> None:
        self.zone = zone
        self.start = int(datetime(year, 1, 1, tzinfo=timezone.utc).timestamp())
        self.stop = int(datetime(year + 1, 1, 1, tzinfo=timezone.utc).timestamp())
        self.minutes: list[tuple[int, int, bool]] = []
        previous = datetime.fromtimestamp(self.start, zone).utcoffset()
        for u in range(self.start + 60, self.stop + 1, 60):
            local = datetime.fromtimestamp(u, zone)
            offset = local.utcoffset()
            self.minutes.append((u, local.minute, offset != previous))
            previous = offset

    def runs(self, oracle: _Oracle) -> list[int]:
        """What ``oracle.runs`` would give over this year, faster."""
        allowed = oracle.minutes
        return [
            u for u, minute, jumped in self.minutes
            if (jumped or allowed is None or minute in allowed)
            and oracle.fires(self.zone, u, 60)
        ]


_YEAR_STRINGS = (
    "30 2 * * *",
    "0 * * * *",
    "*/20 1,2 * * *",
    "15 1 * * 0,6",
    "0 0 13 * fri",
    "0 12 29 2 *",
    "45 1 * mar,apr,oct,nov * 2024-2025",
)


_TRANSITIONS = tuple(
    (zone, _at(moment))
    for zone, moment in (
        (NEW_YORK, "2025-03-09T07:00Z"),
        (NEW_YORK, "2025-11-02T06:00Z"),
        (NEW_YORK, "2024-11-03T06:00Z"),
        (LONDON, "2025-03-30T01:00Z"),
        (LONDON, "2025-10-26T01:00Z"),
        (LORD_HOWE, "2025-04-05T15:00Z"),
        (LORD_HOWE, "2025-10-04T15:30Z"),
        (LORD_HOWE, "2024-10-05T15:30Z"),
        (KOLKATA, "2025-03-09T07:00Z"),
        (UTC, "2024-02-28T12:00Z"),
    )
)


class OracleTests(SynchronousTestCase):
    """next_run agrees with a brute-force walk over real instants."""

    def assertAgrees(self, cron_string: str, zone: ZoneInfo, start: int, stop: int,
                     step: int) -> list[int]:
        """Iterating next_run over (start, stop] gives the oracle's runs; returns them."""
        expected = _Oracle(cron_string).runs(zone, start, stop, step)
        actual = _next_run_runs(cron_string, zone, start, stop)
        self.assertEqual([_iso(u) for u in actual], [_iso(u) for u in expected],
                         f"{cron_string!r} in {zone.key}")
        return expected

    def _whole_years(self, zone_name: str, *extra: str) -> None:
        zone = ZoneInfo(zone_name)
        for year in (2025, 2024):
            minutes = _YearOracle(zone, year)
            for text in _YEAR_STRINGS + extra:
                expected = minutes.runs(_Oracle(text))
                actual = _next_run_runs(text, zone, minutes.start, minutes.stop)
                self.assertEqual([_iso(u) for u in actual], [_iso(u) for u in expected],
                                 f"{text!r} in {zone_name} {year}")
                self.assertTrue(expected or text.endswith("29 2 *"), text)

    def test_new_york_whole_years(self) -> None:
        """America/New_York, every minute of 2025 and of leap year 2024."""
        self._whole_years(NEW_YORK)

    def test_london_whole_years(self) -> None:
        """Europe/London, every minute of 2025 and 2024."""
        self._whole_years(LONDON)

    def test_lord_howe_whole_years(self) -> None:
        """Australia/Lord_Howe (30-minute shifts), every minute of 2025 and 2024.

        ``25,50 * * * *`` has a time just before the half-hour that is lived twice
        and one inside it, which a one-hour shift cannot show.
        """
        self._whole_years(LORD_HOWE, "25,50 * * * *")

    def test_kolkata_whole_years(self) -> None:
        """Asia/Kolkata (+05:30, no DST), every minute of 2025 and 2024."""
        self._whole_years(KOLKATA)

    def test_utc_whole_years(self) -> None:
        """UTC, every minute of 2025 and 2024."""
        self._whole_years(UTC)

    def test_seconds_around_transitions(self) -> None:
        """Seven-field strings, second by second, an hour either side of each shift."""
        strings = ("*/20 * * * * * *", "* * 1 * * * *", "0 */10 * * * * *",
                   "30 15 2 * * * *", "* 30 2 * * * *", "5 45 1 * * * *")
        for zone_name, shift in _TRANSITIONS:
            if zone_name in (KOLKATA, UTC):
                continue
            for text in strings:
                self.assertAgrees(text, ZoneInfo(zone_name), shift - 3600, shift + 3600, 1)
        self.assertAgrees("* * * * * * *", ZoneInfo(NEW_YORK), _at("2025-11-02T05:40Z"),
                          _at("2025-11-02T06:20Z"), 1)

    def test_transitions_are_where_the_tests_think(self) -> None:
        """Each listed shift really changes the zone's offset at that instant."""
        for zone_name, shift in _TRANSITIONS:
            zone = ZoneInfo(zone_name)
            changed = (datetime.fromtimestamp(shift, zone).utcoffset()
                       != datetime.fromtimestamp(shift - 1, zone).utcoffset())
            self.assertEqual(changed, zone_name not in (KOLKATA, UTC), zone_name)

    @settings(max_examples=100, deadline=None, database=None)
    @given(data=st.data())
    def test_generated_minute_strings(self, data: st.DataObject) -> None:
        """Generated 5- and 6-field strings, minute by minute, a day either side of a shift."""
        zone_name, shift = data.draw(st.sampled_from(_TRANSITIONS), label="shift")
        year = datetime.fromtimestamp(shift, timezone.utc).year
        fields = data.draw(_fields(with_seconds=False), label="fields")
        if data.draw(st.booleans(), label="with year"):
            fields.append(data.draw(_year_field(year), label="year"))
        self._agree_or_never(" ".join(fields), ZoneInfo(zone_name), shift - 86400,
                             shift + 86400, 60, data)

    @settings(max_examples=40, deadline=None, database=None)
    @given(data=st.data())
    def test_generated_second_strings(self, data: st.DataObject) -> None:
        """Generated 7-field strings, second by second, 40 minutes either side of a shift."""
        zone_name, shift = data.draw(st.sampled_from(_TRANSITIONS), label="shift")
        year = datetime.fromtimestamp(shift, timezone.utc).year
        fields = data.draw(_fields(with_seconds=True), label="fields")
        fields.append(data.draw(_year_field(year), label="year"))
        self._agree_or_never(" ".join(fields), ZoneInfo(zone_name), shift - 2400,
                             shift + 2400, 1, data)

    def _agree_or_never(self, text: str, zone: ZoneInfo, start: int, stop: int,
                        step: int, data: st.DataObject) -> None:
        """Agree with the oracle over the window, also from an arbitrary ``after`` in it.

        Iterating only ever starts from a previous run; the extra draw starts from
        any instant, fractions included, e.g. mid-way through a repeated hour.
        """
        try:
            cron.validate(text)
        except cron.CronError as error:
            self.assertIn("never matches", str(error))
            self.assertEqual(_Oracle(text).runs(zone, start, stop, step), [], text)
            return
        expected = self.assertAgrees(text, zone, start, stop, step)
        after = data.draw(st.integers(start, stop), label="after")
        after += data.draw(st.sampled_from([0.0, 0.25, 0.999]), label="fraction")
        following = [u for u in expected if u > after]
        if following:
            self.assertEqual(_iso(cron.next_run(text, zone, after)), _iso(following[0]))


def _number_field(
    low: int, high: int, near: tuple[int, int], names: dict[int, str] | None = None
) -> st.SearchStrategy[str]:
    """One field's text; numbers lean towards ``near`` so the DST hours get exercised."""
    number = st.one_of(st.integers(*near), st.integers(low, high))
    spellings = names or {}

    def spell(value: int) -> st.SearchStrategy[str]:
        name = spellings.get(value)
        if name is None:
            return st.just(str(value))
        return st.sampled_from([str(value), name, name.upper(), name.title()])

    single = number.flatmap(spell)
    span = st.tuples(number, number).map(sorted).flatmap(
        lambda ab: st.tuples(spell(ab[0]), spell(ab[1])).map("-".join)
    )
    step = st.integers(1, max(2, (high - low) // 2))
    atom = st.one_of(
        single,
        span,
        st.tuples(span, step.map(str)).map("/".join),
        st.tuples(single, step.map(str)).map("/".join),
        step.map(lambda s: f"*/{s}"),
    )
    return st.one_of(st.just("*"), atom, st.lists(atom, min_size=2, max_size=3).map(",".join))


def _fields(with_seconds: bool) -> st.SearchStrategy[list[str]]:
    months = dict(enumerate(_MONTHS, start=1))
    parts = [
        _number_field(0, 59, (0, 59)),
        _number_field(0, 23, (0, 3)),
        st.one_of(st.just("*"), _number_field(1, 31, (1, 10))),
        st.one_of(st.just("*"), _number_field(1, 12, (2, 4), months),
                  _number_field(1, 12, (9, 11), months)),
        st.one_of(st.just("*"), _number_field(0, 7, (0, 7), dict(enumerate(_DAYS)))),
    ]
    if with_seconds:
        parts.insert(0, _number_field(0, 59, (0, 59)))
    return st.tuples(*parts).map(list)


def _year_field(year: int) -> st.SearchStrategy[str]:
    return st.sampled_from(["*", str(year), f"{year - 1}-{year + 1}", "2020", f"{year + 1}",
                            f"{year - 2}-{year}/2", f"{year + 3},{year}"])
