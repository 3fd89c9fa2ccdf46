"""The key-prefix lease on a real Redis: one site per prefix, shared by one site's daemons.

Short leases (1 s) keep the expiry cases quick.  Each test has a redis-server
of its own (``redis_servers``), so nothing else on the machine shares it.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from btu_twisted.store.gateway import RedisGateway
from btu_twisted.store.lease_renewal import LeaseRenewal
from btu_twisted.store.prefix_guard import PrefixGuard, PrefixTaken
from tests.integration.daemon import wait_for
from tests.integration.redis_servers import server_directory, start_server

PREFIX = "btu_scheduler:"
LEASE = 1.0


class PrefixGuardTests(TestCase):
    timeout = 30

    async def setUp(self) -> None:
        server = await start_server(self, server_directory(self), "guard")
        self.sync = server.client()
        self.addCleanup(self.sync.close)
        self.gateway = RedisGateway(reactor, "127.0.0.1", server.port, database=0)
        self.gateway.start()
        self.lost: list[str] = []

    async def tearDown(self) -> None:
        await self.gateway.stop()

    def guard(self, site: str, prefix: str = PREFIX) -> PrefixGuard:
        guard = PrefixGuard(reactor, self.gateway, prefix, site, self.lost.append,
                            lease_secs=LEASE)
        self.addCleanup(guard.stop)
        return guard

    async def test_another_site_is_refused_naming_the_owner(self) -> None:
        await self.guard("a.example.com").acquire()
        with self.assertRaises(PrefixTaken) as caught:
            await self.guard("b.example.com").acquire()
        message = str(caught.exception)
        self.assertIn("site 'a.example.com'", message)
        self.assertIn("redis_key_prefix", message)
        self.assertIn('"btu_scheduler:b.example.com:"', message)
        # Another prefix on the same Redis is no conflict.
        await self.guard("b.example.com", "btu_scheduler:b.example.com:").acquire()

    async def test_daemons_of_one_site_share_the_prefix(self) -> None:
        """High availability: a second daemon of the same site starts, and both renew."""
        first, second = self.guard("a.example.com"), self.guard("a.example.com")
        await first.acquire()
        await second.acquire()
        await deferLater(reactor, LEASE * 1.5, lambda: None)
        self.assertEqual(self.sync.get(PREFIX + "owner"), b"a.example.com a.example.com")
        self.assertEqual(self.lost, [])

    async def test_one_database_is_one_site_whatever_its_name(self) -> None:
        """Two daemons on one database are one site even if only one config
        names the site; another database is another site."""
        def guard(site: str, database: str) -> PrefixGuard:
            made = PrefixGuard(reactor, self.gateway, PREFIX, site, self.lost.append,
                               lease_secs=LEASE, owner_id=database)
            self.addCleanup(made.stop)
            return made

        await guard("erp.example.com", "_a1b2").acquire()
        await guard("_a1b2", "_a1b2").acquire()
        with self.assertRaises(PrefixTaken) as caught:
            await guard("erp.example.com", "_c3d4").acquire()
        # Named as the daemon that renewed the lease last called it.
        self.assertRegex(str(caught.exception), r"of site '(erp\.example\.com|_a1b2)'")

    async def test_a_dead_daemon_frees_the_prefix_when_its_lease_lapses(self) -> None:
        dead = PrefixGuard(reactor, self.gateway, PREFIX, "a.example.com", self.lost.append,
                           lease_secs=4.0)
        await dead.acquire()
        dead.stop()  # no release: as if killed
        with self.assertRaises(PrefixTaken):
            await self.guard("b.example.com").acquire()
        ttl = self.sync.pttl(PREFIX + "owner")
        self.assertTrue(0 < ttl <= 4000, ttl)  # it lapses by itself
        await wait_for(lambda: self.sync.get(PREFIX + "owner") is None, timeout=10)
        await self.guard("b.example.com").acquire()

    async def test_a_clean_stop_frees_the_prefix_at_once(self) -> None:
        first = self.guard("a.example.com")
        await first.acquire()
        await first.release()
        self.assertIsNone(self.sync.get(PREFIX + "owner"))
        await self.guard("b.example.com").acquire()

    async def test_release_leaves_another_sites_lease(self) -> None:
        first = self.guard("a.example.com")
        await first.acquire()
        self.sync.set(PREFIX + "owner", "b.example.com b.example.com")  # a's lapsed; b took it
        await first.release()
        self.assertEqual(self.sync.get(PREFIX + "owner"), b"b.example.com b.example.com")

    async def test_a_lease_taken_while_running_is_reported_once(self) -> None:
        """Redis was away longer than the lease and another site took the prefix:
        the next renewal stops and reports it (the daemon then stops)."""
        await self.guard("a.example.com").acquire()
        self.sync.set(PREFIX + "owner", "b.example.com b.example.com")
        await wait_for(lambda: self.lost, timeout=10)
        await deferLater(reactor, LEASE, lambda: None)  # renewals would have come by now
        self.assertEqual(len(self.lost), 1, self.lost)
        self.assertIn("site 'b.example.com'", self.lost[0])

    # -- a bench's sites: one EVAL renews every site's lease (store/lease_renewal.py) --
    def shared(self, site: str, renewal: LeaseRenewal) -> PrefixGuard:
        guard = self.guard(site, f"btu_scheduler:{site}:")
        guard.renewal = renewal
        return guard

    def evals(self) -> int:
        stats = self.sync.info("commandstats")
        return int(stats.get("cmdstat_eval", {}).get("calls", 0))

    async def test_one_eval_renews_every_lease_and_a_taken_one_stops_its_site_only(self) -> None:
        renewal = LeaseRenewal(reactor, self.gateway, LEASE / 3)
        guards = [self.shared(f"s{i}.example.com", renewal) for i in range(20)]
        for guard in guards:
            await guard.acquire()
        before = self.evals()
        await deferLater(reactor, LEASE * 2, lambda: None)
        # Every lease outlived its 1 s life, renewed together: about 6 renewals, not 120.
        self.assertEqual([self.sync.get(g.key) is not None for g in guards], [True] * 20)
        self.assertLessEqual(self.evals() - before, 8)
        self.assertEqual(self.lost, [])

        self.sync.set(guards[3].key, "db9 other.example.com")
        await wait_for(lambda: self.lost, timeout=10)
        await deferLater(reactor, LEASE, lambda: None)
        self.assertEqual(len(self.lost), 1, self.lost)
        self.assertIn("site 'other.example.com'", self.lost[0])
        self.assertIn("serves 's3.example.com'", self.lost[0])
        self.assertEqual(self.sync.get(guards[3].key), b"db9 other.example.com")
        self.assertIsNotNone(self.sync.get(guards[4].key))

        # Released ones are no longer renewed; the last one stops the renewal.
        for guard in guards:
            await guard.release()
        self.assertEqual([self.sync.get(g.key) for g in guards if g is not guards[3]],
                         [None] * 19)
        self.assertFalse(renewal._loop.running)
