"""``frappe_sites``: one config file serving several sites of a bench.

Each site's Config is derived as bench mode derives it for
``frappe_site_name = site``; this module only fans the file out per site and
checks that the sites can share one daemon.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from btu_twisted.config_checks import ConfigError, _Invalid, _site_names, _WrongType
from btu_twisted.frappe_bench import COMMON_CONFIG, site_names

if TYPE_CHECKING:
    from btu_twisted.config_fields import Config

#: parse_config: a site is checked exactly as a one-site file is (passed in, since
#: config.py imports this module).
ParseOne = Callable[[dict[str, Any], str], "tuple[Config, list[str]]"]


# Per site, never shared: bench mode reads them from each site's files.
_PER_SITE_KEYS = ("mysql_database", "webserver_host_header")
# Templates: "{site}" becomes each site's name.
_SITE_TEMPLATES = ("socket_path", "redis_key_prefix")


def parse_sites(
    data: dict[str, Any], source: str, parse_config: ParseOne
) -> tuple[Config, list[str]]:
    """``frappe_sites``: each site's Config, derived as bench mode derives it for
    ``frappe_site_name = site``; the returned Config holds the shared settings
    and ``site_configs``.

    With ``["*"]`` the candidates are the bench's site directories (those with a
    ``site_config.json``, as Frappe lists its sites); one that cannot be read is
    skipped, with the reason in ``skipped_sites``.  Whether a site's database has
    the BTU tables is only known when the daemon starts (sites.py).
    """
    problems: list[str] = []
    try:
        names = _site_names(data["frappe_sites"])
    except _WrongType as wrong:
        problem = f"frappe_sites: expected {wrong.expected}, got {data['frappe_sites']!r}"
        raise ConfigError([problem], source) from None
    except _Invalid as invalid:
        raise ConfigError([f"frappe_sites: {invalid}"], source) from None
    every = names == ("*",)
    if "frappe_bench_path" not in data:
        problems.append("frappe_sites: needs frappe_bench_path (the bench whose sites it names)")
    if "frappe_site_name" in data:
        problems.append("frappe_site_name: conflicts with frappe_sites; name every site in "
                        "frappe_sites (or use frappe_site_name alone for one site)")
    if "schedules_file" in data:
        problems.append("schedules_file: not with frappe_sites (each site's schedules come "
                        "from its own database)")
    for key in _PER_SITE_KEYS:
        if key in data:
            problems.append(f"{key}: not with frappe_sites: each site's own is read from "
                            "its site_config.json")
    for key in _SITE_TEMPLATES:
        value = data.get(key)
        needed = key == "redis_key_prefix" or every or len(names) > 1
        if isinstance(value, str) and needed and "{site}" not in value:
            example = ("/run/btu_scheduler/{site}.sock" if key == "socket_path"
                       else "btu_scheduler:{site}:")
            problems.append(f"{key}: must contain {{site}} when frappe_sites serves "
                            f"{'several sites' if key == 'socket_path' else 'sites'} "
                            f"(each site needs its own), e.g. \"{example}\"")
    if problems:
        raise ConfigError(problems, source)
    bench = data["frappe_bench_path"]
    if every:
        if not isinstance(bench, str) or not os.path.isfile(os.path.join(bench, COMMON_CONFIG)):
            raise ConfigError([f"frappe_bench_path: {bench} is not a Frappe bench (no "
                               + COMMON_CONFIG + ")"], source)
        candidates = site_names(bench)
        if not candidates:
            raise ConfigError([f"frappe_sites: the bench {bench} has no site "
                               + "(no sites/<site>/site_config.json)"], source)
    else:
        candidates = list(names)
    shared = {key: value for key, value in data.items() if key != "frappe_sites"}
    configs: dict[str, Config] = {}
    skipped: dict[str, str] = {}
    warnings: list[str] | None = None
    for site in candidates:
        site_data = {**shared, "frappe_site_name": site}
        for key in _SITE_TEMPLATES:
            if isinstance(site_data.get(key), str):
                site_data[key] = site_data[key].replace("{site}", site)
        try:
            config, site_warnings = parse_config(site_data, source)
        except ConfigError as error:
            if every:
                skipped[site] = "; ".join(error.problems)
            else:
                problems += [f"frappe_sites: site {site!r}: {p.removeprefix('frappe_site_name: ')}"
                             for p in error.problems]
            continue
        configs[site] = config
        warnings = site_warnings if warnings is None else warnings
    if not configs and not problems:
        problems += [f"frappe_sites: site {site!r}: {why}" for site, why in skipped.items()]
    problems += _shared_redis_problems(configs)
    if problems:
        raise ConfigError(problems, source)
    first = next(iter(configs.values()))
    parent = replace(
        first,
        frappe_sites=names,
        frappe_site_name=None,
        socket_path=str(data.get("socket_path", first.socket_path)),
        redis_key_prefix=str(data.get("redis_key_prefix", "btu_scheduler:{site}:")),
        mysql_database=None,
        mysql_user=None,
        mysql_password=None,
        webserver_host_header=None,
        site_configs=configs,
        skipped_sites=skipped,
    )
    return parent, warnings or []


def _shared_redis_problems(configs: Mapping[str, Config]) -> list[str]:
    """One daemon, one Redis connection: every site must name the same Redis."""
    from btu_twisted.redis_target import target_of

    seen: dict[Any, str] = {}
    for site, config in configs.items():
        seen.setdefault(target_of(config), site)
    if len(seen) < 2:
        return []
    (first, a), (second, b) = list(seen.items())[:2]
    problem = (f"frappe_sites: sites {a!r} and {b!r} use different Redis servers "
               f"({first.describe()} and {second.describe()}); one daemon has one Redis "
               "connection: run one daemon per Redis")
    return [problem]


def site_config(config: Config, site: str | None) -> Config:
    """The Config of ``site`` (``None``: the only one), or ConfigError naming the choices."""
    if not config.is_multi_site:
        if site is None or site == config.frappe_site_name:
            return config
        serves = config.frappe_site_name or "no named site"
        raise ConfigError([f"--site: this config serves {serves}, not {site!r}"])
    sites = ", ".join(config.site_configs)
    if site is None:
        raise ConfigError(["frappe_sites: this config serves several sites; choose one "
                           + f"with --site ({sites})"])
    if site not in config.site_configs:
        why = config.skipped_sites.get(site)
        raise ConfigError([f"--site: {site!r} is not served by this config"
                           + (f" ({why})" if why else "") + f"; its sites: {sites}"])
    return config.site_configs[site]
