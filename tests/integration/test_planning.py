"""Planning against real MariaDB and Redis: names are only names, many
schedules plan in batches, and the planner never polls or blocks."""

from __future__ import annotations

import time

from twisted.trial import unittest

from btu_twisted import cron
from btu_twisted.planning import refresh as refresh_module
from btu_twisted.records import row_fingerprint
from btu_twisted.sources import mariadb as sql_module
from btu_twisted.store.schedule_store import SCHEDULE_SET
from tests.integration.daemon import make_service, wait_for
from tests.integration.support import config_values, fresh_services

DB = 14

CRONS = [f"{m} {h} * * *" for m in (0, 15, 30, 45, 7) for h in (1, 5, 9, 13, 17)] + [
    f"*/{n} * * * *" for n in (2, 3, 4, 5, 6, 10, 12, 15, 20, 30)
] + [f"0 {h} * * {d}" for h in (3, 11) for d in ("1-5", "0,6", "MON", "sun", "7")] + [
    f"{s} * * * * * *" for s in (5, 25, 45, 55, 59)
]


class PlanningTests(unittest.TestCase):
    def setUp(self) -> None:
        self.db, self.redis = fresh_services(self, DB)
        self.db.set_zone("Europe/London")
        self.db.add_task("BTU-1", "tests.jobfuncs.record")

    async def start(self):
        service, fatal = make_service(config_values(self.db.name, redis_db=DB))
        await service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(fatal, [])
        return service

    def planned(self) -> dict[str, int]:
        out = {}
        for member in self.redis.zrange(SCHEDULE_SET, 0, -1):
            name, _, when = member.decode().rpartition("|")
            out[name] = int(when)
        return out

    async def test_ten_thousand_schedules_are_all_planned(self) -> None:
        """10,000 enabled schedules sharing 50 cron strings all get exactly
        one member at the time the cron module gives, in few SQL batches."""
        self.assertEqual(len(set(CRONS)), 50)
        rows = [(f"TS-{i:06d}", "BTU-1", CRONS[i % 50], True, "default", None)
                for i in range(10_000)]
        self.db.add_schedules(rows)
        started = time.time()
        service = await self.start()
        await wait_for(lambda: self.redis.zcard(SCHEDULE_SET) == 10_000, timeout=60)
        planned = self.planned()
        self.assertEqual(len(planned), 10_000)
        for i in range(0, 10_000, 97):
            name = f"TS-{i:06d}"
            expected = cron.next_run(CRONS[i % 50], "Europe/London", planned[name] - 1)
            self.assertEqual(planned[name], expected, name)
            self.assertGreater(planned[name], started - 1)
        self.assertLessEqual(service.planner.batches, 40)

    async def test_names_are_only_names(self) -> None:
        """Injection-looking, '|'-containing and 140-emoji names plan as
        themselves, and a request for a name that matches nothing (or would
        match by SQL injection or case folding) adds nothing."""
        emoji = "\U0001F600" * 140
        names = ["TS-1|123", emoji, "TS-000001"]
        self.db.add_schedules([(n, "BTU-1", "0 13 * * *", True, "default", None) for n in names])
        service = await self.start()
        await wait_for(lambda: len(self.planned()) == 3)
        self.assertEqual(set(self.planned()), set(names))
        before = self.planned()
        for bogus in ["x' OR '1'='1", "ts-000001", "TS-000001 ", "TS-1", "%", "*"]:
            self.assertTrue(service.request_planning(bogus))
        await wait_for(lambda: len(service.fifo) == 0)
        await service.planner.plan(["x' OR '1'='1"])
        self.assertEqual(self.planned(), before)

    async def test_enabled_later_and_deleted(self) -> None:
        """A schedule enabled after start is planned on request; a deleted one
        loses its member on request and at the next full refresh."""
        self.db.add_schedules([
            ("TS-A", "BTU-1", "0 13 * * *", True, "default", None),
            ("TS-B", "BTU-1", "0 14 * * *", False, "default", None),
        ])
        service = await self.start()
        await wait_for(lambda: set(self.planned()) == {"TS-A"})
        self.db.execute("UPDATE `tabBTU Task Schedule` SET enabled = 1 WHERE name = 'TS-B'")
        service.request_planning("TS-B")
        await wait_for(lambda: set(self.planned()) == {"TS-A", "TS-B"})
        self.db.execute("DELETE FROM `tabBTU Task Schedule` WHERE name = 'TS-A'")
        service.request_planning("TS-A")
        await wait_for(lambda: set(self.planned()) == {"TS-B"})
        self.db.execute("UPDATE `tabBTU Task Schedule` SET enabled = 0 WHERE name = 'TS-B'")
        await service.refresh.refresh()
        await wait_for(lambda: self.planned() == {})

    async def test_refresh_plans_only_what_changed_on_the_real_database(self) -> None:
        """The refresh's fingerprints (read 2 rows a chunk here) agree with
        the planner's rows: after start a refresh queues nothing; a cron
        string edited without touching ``modified``, a task cancelled, a
        member lost and a new zone are each caught, and only they."""
        self.db.add_task("BTU-2", "tests.jobfuncs.record")
        self.db.add_schedules([
            (f"TS-{i}", "BTU-2" if i == 4 else "BTU-1", "0 13 * * *", True, "default", None)
            for i in range(7)
        ] + [("TS-|x", "BTU-1", "0 14 * * *", True, "default", None),
             ("TS-NOCRON", "BTU-1", None, True, "default", None),
             ("TS-NOTASK", "NO-SUCH-TASK", "0 13 * * *", True, "default", None)])
        self.patch(sql_module, "STATES_CHUNK", 2)
        self.patch(refresh_module, "STATES_CHUNK", 2)
        service = await self.start()
        await wait_for(lambda: len(self.planned()) == 8 and not len(service.fifo))
        rows = await service.db.read_schedules([f"TS-{i}" for i in range(7)] + ["TS-|x"])
        states = await service.db.schedule_states("", 100)
        prints = {name: fp for name, _, fp in states}
        for name, row in rows.items():
            self.assertEqual(prints[name], row_fingerprint(row), name)

        async def queued_by_refresh() -> int:
            await service.refresh.refresh()
            return int(service.refresh.last["queued"])

        # TS-NOCRON and TS-NOTASK have no member, so they are always queued.
        self.assertEqual(await queued_by_refresh(), 2)
        self.db.execute("UPDATE `tabBTU Task Schedule` SET cron_string = '0 15 * * *'"
                        " WHERE name = 'TS-1'")
        self.db.execute("UPDATE `tabBTU Task` SET docstatus = 2 WHERE name = 'BTU-2'")
        self.redis.zrem(SCHEDULE_SET, "TS-|x|" + str(self.planned()["TS-|x"]))
        self.assertEqual(await queued_by_refresh(), 2 + 3)
        ts1 = cron.next_run("0 15 * * *", "Europe/London", time.time())
        await wait_for(lambda: self.planned().get("TS-1") == ts1 and "TS-|x" in self.planned()
                       and "TS-4" not in self.planned())
        self.assertEqual(await queued_by_refresh(), 2 + 1)  # TS-4: its task may not run
        await wait_for(lambda: not len(service.fifo))
        self.db.set_zone("Asia/Tokyo")
        self.assertEqual(await queued_by_refresh(), 10)
        tokyo = cron.next_run("0 13 * * *", "Asia/Tokyo", time.time())
        await wait_for(lambda: self.planned().get("TS-0") == tokyo)
