"""``twistd btu``: parse the options, build the (unstarted) service.

Nothing here connects, listens or starts a thread: twistd may fork after
``makeService``.  A config problem ends the process right here with one line
on stderr and exit status 1, before twistd prints any usage text.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.python import usage

from btu_twisted.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, log_level
from btu_twisted.daemon.tls import without_tls

if TYPE_CHECKING:
    from btu_twisted.daemon.service import BtuService
    from btu_twisted.daemon.sites import SitesService


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = ("Run the BTU scheduler: BTU Task Schedules in MariaDB, or the [[schedule]] "
                "tables of a schedules_file, become Python RQ jobs.")
    optParameters = [
        ["config", "c", DEFAULT_CONFIG_PATH, "The btu_scheduler.toml file to read."],
    ]

    def postOptions(self) -> None:
        path = self["config"]
        try:
            self.config, self.warnings = load_config(path)
        except ConfigError as e:
            problems = "; ".join(e.problems) if e.problems else str(e)
            raise SystemExit(f"btu: bad config {path}: {problems}") from None


def makeService(options: Options, reactor: Any = None) -> BtuService | SitesService:
    # The daemon's modules are imported here, not when twistd lists its
    # plugins, so that what they load can depend on the config (btu_twisted.daemon.tls).
    with without_tls(options.config):
        from btu_twisted.daemon.service import BtuService
        from btu_twisted.daemon.sites import SitesService
        from btu_twisted.ops.logsetup import apply_level

        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        try:
            # Built inside too: metrics_port loads twisted.web here.
            # frappe_sites: one service per site under one parent (sites.py).
            service: BtuService | SitesService
            if options.config.is_multi_site:
                path = os.path.abspath(options["config"])  # twistd may chdir later
                service = SitesService(options.config, reactor, warnings=list(options.warnings),
                                       load_config=lambda: load_config(path))
            else:
                path = os.path.abspath(options["config"])
                service = BtuService(options.config, reactor, warnings=list(options.warnings),
                                     load_config=lambda: load_config(path))
        except (ValueError, OSError) as e:
            # e.g. a webserver_ca_file that holds no certificate: still a config problem.
            raise SystemExit(f"btu: bad config {options['config']}: {e}") from None
    # twistd has set up its log observers by the time services start.
    reactor.callWhenRunning(apply_level, log_level(options.config))
    # In every mode: without a handler SIGHUP (systemctl reload) would end the process.
    reactor.callWhenRunning(reload_on_sighup, reactor, service.sighup)
    return service


def reload_on_sighup(reactor: Any, reload: Callable[[], object]) -> None:
    """SIGHUP re-reads the config, the schedules (file and MariaDB) and, serving
    ``frappe_sites``, the bench's sites, as daemons conventionally re-read their files.

    The handler only hands the work to the reactor: nothing else is safe in a
    signal handler.
    """
    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(reload))
