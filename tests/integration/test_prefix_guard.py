"""The key-prefix lease on a real Redis: one site per prefix, shared by one site's daemons.

Short leases (1 s) keep the expiry cases quick.  Each test has a redis-server
of its own (``redis_servers``), so nothing else on the machine shares it.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from btu_twisted.store.prefix_guard import PrefixGuard, PrefixTaken
from btu_twisted.store.gateway import RedisGateway
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
