"""The SIGHUP phase of ``bench.hosting`` tells a lost, doubled or late-stopped run
from a clean reload (its check alone, on made-up jobs: the phase itself needs a
daemon, MariaDB and Redis, and runs in the bench smoke)."""

from __future__ import annotations

from twisted.trial import unittest

from bench.hosting_reload import _check, every, failed

STAY, NEW, DROP = "a.test", "new.test", "gone.test"
T_FROM, T_HUP, T_RELOADED, T_TO = 1000.2, 1005.5, 1006.0, 1012.4
GONE_AT = {DROP: 1005.6}


def clean() -> list[tuple[str, int, float, bool]]:
    jobs = [(STAY, s, s + 0.003, True) for s in range(1001, 1013)]
    jobs += [(NEW, s, s + 0.002, True) for s in range(1007, 1013)]
    jobs += [(DROP, s, s + 0.002, True) for s in range(1001, 1006)]
    return jobs


def check(jobs: list[tuple[str, int, float, bool]]) -> dict[str, object]:
    result = _check(jobs, [STAY], [NEW], [DROP], 1, T_FROM, T_HUP, T_RELOADED, T_TO, GONE_AT)
    result.update(sites_added=1, sites_dropped=1, new_answered=1, dropped_sockets_gone=1,
                  reloaded_secs=0.5)
    return result


class CheckTests(unittest.TestCase):
    def test_a_clean_reload_passes(self) -> None:
        result = check(clean())
        self.assertFalse(failed(result))
        self.assertEqual((result["due_seconds"], result["staying_runs"]), (12, 12))
        self.assertEqual(result["new_first_run_secs"], 1.5)
        self.assertEqual(result["late_around_ms"]["count"], 4)  # 1005-1008

    def test_a_lost_run_fails(self) -> None:
        result = check([job for job in clean() if job[:2] != (STAY, 1006)])
        self.assertEqual(result["staying_missing"], 1)
        self.assertTrue(failed(result))

    def test_a_doubled_run_fails(self) -> None:
        result = check(clean() + [(STAY, 1006, 1006.4, True)])
        self.assertEqual(result["twice"], 1)
        self.assertTrue(failed(result))

    def test_a_run_of_another_sites_row_fails(self) -> None:
        jobs = clean()
        jobs[3] = (STAY, jobs[3][1], jobs[3][2], False)
        self.assertEqual(check(jobs)["wrong_site"], 1)
        self.assertTrue(failed(check(jobs)))

    def test_a_dropped_site_running_on_fails(self) -> None:
        result = check(clean() + [(DROP, 1007, 1007.0, True)])
        self.assertEqual(result["dropped_runs_after_stop"], 1)
        self.assertTrue(failed(result))

    def test_a_new_site_skipping_a_second_fails(self) -> None:
        result = check([job for job in clean() if job[:2] != (NEW, 1009)])
        self.assertEqual(result["new_missing_after_first"], 1)
        self.assertTrue(failed(result))

    def test_every(self) -> None:
        self.assertEqual((every(1), every(5)), ("* * * * * * *", "*/5 * * * * * *"))
