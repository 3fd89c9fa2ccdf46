"""Build the daemon without pyOpenSSL when its config makes no TLS connection.

pyOpenSSL and service_identity (with the parts of cryptography they pull in)
are about 12 MiB of the daemon's resident memory and a tenth of its start-up
time, and a config whose builder makes no HTTPS call never uses them.  Twisted
treats them as optional: its reactor and twisted.web import them inside
``try`` blocks and run without TLS when they are missing.  txredisapi does
not: it imports ``twisted.internet.ssl`` and ``twisted.protocols.tls`` at
module level, only to name ``ClientContextFactory`` in its signatures and to
wrap a connection in ``TLSMemoryBIOFactory`` when asked for TLS, which the
daemon never asks for.

:func:`without_tls` therefore hides pyOpenSSL while the reactor and the
daemon are built, gives txredisapi stand-ins for those two names (they refuse
to be used), and unhides it afterwards, so that a later explicit import still
works.  Nothing else in the process sees the stand-ins.

PyMySQL is the same story one level down: it imports cryptography's OpenSSL
bindings (about 7 MiB resident) at module level, only to encrypt a password
with the server's RSA key for a ``sha256_password`` or ``caching_sha2_password``
login over plain TCP.  MariaDB, the database Frappe and BTU run on, never asks
for either (its logins are ``mysql_native_password`` and ``ed25519``), so
PyMySQL is imported here with ``cryptography.hazmat`` hidden; a MySQL 8 server
that asks for such a login gets PyMySQL's own clear error ("cryptography is
required").  Together this put the idle daemon at 10,000 schedules from
1.10x rq cron's memory to below it (docs/benchmarks.rst).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

__all__ = ["uses_tls", "without_tls"]

#: What txredisapi takes from Twisted's TLS modules when it is imported.
_TXREDISAPI_NEEDS = {
    "twisted.internet.ssl": "ClientContextFactory",
    "twisted.protocols.tls": "TLSMemoryBIOFactory",
}


#: Kept out while the daemon is built without TLS: pyOpenSSL, and the OpenSSL
#: bindings of cryptography that PyMySQL would load for RSA password logins.
_HIDDEN = ("OpenSSL", "cryptography.hazmat")


def uses_tls(config: Any) -> bool:
    """True when the config may open a TLS connection.

    Today only the ``frappe`` builder can (it calls the site over HTTP or
    HTTPS); metrics are served over plain HTTP.  A Redis URL ``rediss://`` and
    any setting named ``*tls*`` count too, so that a TLS feature added later
    loads TLS instead of meeting the stand-ins.
    """
    if config.job_builder == "frappe":
        return True
    if str(getattr(config, "rq_url", None) or "").startswith("rediss:"):
        return True
    return any(getattr(config, name) for name in dir(config)
               if "tls" in name and not name.startswith("_"))


class _NoTLS:
    """txredisapi's TLS classes in a process built without TLS."""

    def __init__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise RuntimeError("TLS is not loaded: the daemon's config makes no TLS connection")


def _stand_ins() -> dict[str, types.ModuleType]:
    modules = {}
    for name, attribute in _TXREDISAPI_NEEDS.items():
        module = types.ModuleType(name, "btu_twisted.daemon.tls: loaded without pyOpenSSL")
        setattr(module, attribute, _NoTLS)
        modules[name] = module
    return modules


@contextmanager
def without_tls(config: Any) -> Iterator[bool]:
    """Inside, import and build the daemon; yields True when pyOpenSSL is kept out.

    Nothing is hidden when the config may use TLS, or when pyOpenSSL or the
    reactor is loaded already (a test run): the process has paid for TLS, and
    hiding it then would only leave modules that disagree about it.
    """
    if uses_tls(config) or "OpenSSL" in sys.modules or "twisted.internet.reactor" in sys.modules:
        yield False
        return
    hidden = [name for name in _HIDDEN if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # ImportError for all of it
    try:
        # The reactor first, with no stand-in about: Twisted then builds the
        # reactor it builds when pyOpenSSL is not installed.
        from twisted.internet import reactor  # noqa: F401

        stand_ins = _stand_ins()
        sys.modules.update(stand_ins)
        try:
            import pymysql.connections  # noqa: F401  (decides once: no RSA logins)
            import txredisapi  # noqa: F401  (binds the stand-ins)
        finally:
            for name, module in stand_ins.items():
                if sys.modules.get(name) is module:
                    del sys.modules[name]
        yield True
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
