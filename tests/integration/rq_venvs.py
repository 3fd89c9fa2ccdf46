"""Virtualenvs holding the rq versions Frappe pins, and the burst worker run inside them.

The daemon writes each job with the rq it installs (``Job.to_dict()``), but the
site's workers run whatever rq their Frappe release pins (COMPAT.md section 7).
To prove those workers can run our jobs, each pinned rq gets a venv of its own,
created once and reused across test runs:

- ``<cache>/<name>/`` made with ``python -m venv`` and ``pip install`` of the
  pins below (rq and the redis-py and click versions that Frappe release pins);
- ``<cache>/<name>/btu-ready.json`` written last, only after the venv's own rq
  and redis-py reported the pinned versions: a venv without it (a crash, a
  failed download, a Ctrl-C) is removed and made again;
- ``<cache>/<name>.lock`` held (``flock``) while a venv is checked or made, so
  concurrent test runs wait for one another instead of building the same venv.

``<cache>`` is ``$BTU_RQ_VENV_DIR``, else ``<tmp>/btu_rq_venvs-<uid>``.  The
venvs are made from the interpreter running the tests, or from
``$BTU_RQ_WORKER_PYTHON`` (e.g. a Python 3.10 or 3.13, to check that workers
on another Python read the daemon's pickles).  The venv's name carries that
Python's version and a digest of the pins and interpreter path, so a new
Python or a changed pin gets a new venv rather than a stale one.

When pip cannot install the pins (PyPI unreachable) :func:`ensure_venv` raises
:class:`VenvError` with pip's last lines; the tests fail with it, unless
``BTU_SKIP_RQ_MATRIX=1`` is set, in which case they skip without trying.

This module imports only the standard library at module level, because it is
also the worker's entry point inside those venvs::

    <venv>/bin/python -m tests.integration.rq_venvs work [--fork] REDIS_URL QUEUE...

which runs an rq ``SimpleWorker`` in burst mode (the same call in rq 1.x and
2.x), or with ``--fork`` rq's forking ``Worker`` (what ``rq worker`` and
``bench worker`` run: a work horse process per job), and prints one line
``BTU-RQ-REPORT <json>``: the rq, redis-py and Python versions, and each
finished, failed or left-over job as that rq reads it back (status, meta,
result or error).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Set to 1 to skip the pinned-rq cases (no venvs made, no network used).
SKIP_ENV = "BTU_SKIP_RQ_MATRIX"
#: Where the venvs are kept; default ``<tmp>/btu_rq_venvs-<uid>``.
DIR_ENV = "BTU_RQ_VENV_DIR"
#: The interpreter to make the venvs from; default: the one running the tests.
PYTHON_ENV = "BTU_RQ_WORKER_PYTHON"
#: The line prefix of the worker's report on stdout.
REPORT_PREFIX = "BTU-RQ-REPORT "

_READY = "btu-ready.json"
# pip must give up well before the test's own timeout when PyPI is unreachable.
_PIP_TIMEOUT_SECS = 15
_PIP_RETRIES = 2
_INSTALL_DEADLINE_SECS = 300
_LOCK_WAIT_SECS = 420


@dataclass(frozen=True)
class RqPin:
    """One rq version a Frappe release pins, with the packages installed beside it."""

    rq: str
    frappe: str
    requirements: tuple[str, ...]


#: The worker environments of the Frappe releases whose rq differs from ours
#: (COMPAT.md section 7; the pins copied from each release's pyproject.toml).
PINS: dict[str, RqPin] = {
    "1.15.1": RqPin(
        rq="1.15.1",
        frappe="v15",
        requirements=("rq==1.15.1", "redis~=4.5.5", "click~=8.1.7"),
    ),
    "2.6.1": RqPin(
        rq="2.6.1",
        frappe="develop",
        requirements=("rq==2.6.1", "redis~=7.1.0", "click~=8.3.1"),
    ),
}


class VenvError(Exception):
    """A pinned-rq venv could not be made; the message says why and what to do."""


def skip_requested() -> bool:
    """True when ``BTU_SKIP_RQ_MATRIX=1``."""
    return os.environ.get(SKIP_ENV, "").strip() == "1"


def cache_dir() -> Path:
    """``$BTU_RQ_VENV_DIR``, else ``<tmp>/btu_rq_venvs-<uid>``."""
    configured = os.environ.get(DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    return Path(tempfile.gettempdir()) / f"btu_rq_venvs-{os.getuid()}"


def base_python() -> str:
    """The interpreter the venvs are made from: ``$BTU_RQ_WORKER_PYTHON``, else this one."""
    return os.environ.get(PYTHON_ENV, "").strip() or sys.executable


_VERSIONS: dict[str, tuple[str, int, int]] = {}


def _python_version(python: str) -> tuple[str, int, int]:
    """(implementation, major, minor) of ``python``, asked once per process."""
    if python not in _VERSIONS:
        if os.path.realpath(python) == os.path.realpath(sys.executable):
            found = [sys.implementation.name, *sys.version_info[:2]]
        else:
            code = (
                "import json, sys; "
                "print(json.dumps([sys.implementation.name, *sys.version_info[:2]]))"
            )
            found = json.loads(_run([python, "-c", code], f"asking {python} its version", 60))
        _VERSIONS[python] = (str(found[0]), int(found[1]), int(found[2]))
    return _VERSIONS[python]


def _spec(pin: RqPin, base: str) -> dict[str, Any]:
    """What the venv must have been made from for it to be reused."""
    implementation, major, minor = _python_version(base)
    return {
        "requirements": list(pin.requirements),
        "python": [major, minor],
        "implementation": implementation,
        "base_python": os.path.realpath(base),
    }


def venv_path(pin: RqPin, base: str | None = None) -> Path:
    """The directory of ``pin``'s venv (which may not exist yet)."""
    spec = _spec(pin, base or base_python())
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    major, minor = spec["python"]
    return cache_dir() / f"rq-{pin.rq}-{spec['implementation']}{major}.{minor}-{digest}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


_PROBE = (
    "import json, sys; from importlib.metadata import version; import rq, redis, click; "
    "print(json.dumps({'rq': version('rq'), 'redis': version('redis'), "
    "'python': sys.version.split()[0]}))"
)


def _probe(venv: Path, timeout: float = 60) -> dict[str, str]:
    """The rq, redis-py and Python versions the venv's interpreter imports."""
    out = _run([str(venv_python(venv)), "-c", _PROBE], f"checking {venv}", timeout)
    return json.loads(out.strip().splitlines()[-1])


def _is_ready(venv: Path, spec: dict[str, Any]) -> bool:
    """The venv was completed from ``spec`` and still imports what it installed.

    The import check catches what the marker cannot: a removed base
    interpreter (a dangling bin/python), or files deleted by a /tmp cleaner.
    """
    try:
        marker = json.loads((venv / _READY).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("spec") != spec or not venv_python(venv).exists():
        return False
    try:
        found = _probe(venv, timeout=30)
    except (VenvError, ValueError, IndexError):
        return False
    installed = marker.get("installed", {})
    return found["rq"] == installed.get("rq") and found["redis"] == installed.get("redis")


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run(argv: Sequence[str], what: str, timeout: float) -> str:
    """Run one step of the venv's creation; VenvError with its output if it fails."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV", "PIP_USER"):
        env.pop(name, None)
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = (
            exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else exc.output
        )
        raise VenvError(f"{what} took over {timeout:.0f} s:\n{_tail(output or '')}") from None
    except OSError as exc:
        raise VenvError(f"{what} could not start: {exc}") from None
    if done.returncode != 0:
        raise VenvError(f"{what} exited {done.returncode}:\n{_tail(done.stdout)}")
    return done.stdout


def _create(pin: RqPin, venv: Path, base: str, spec: dict[str, Any]) -> None:
    """Make the venv from scratch; the ready marker is written last."""
    shutil.rmtree(venv, ignore_errors=True)
    if venv.exists():
        raise VenvError(f"cannot remove the incomplete venv {venv}")
    started = time.monotonic()
    _run([base, "-m", "venv", str(venv)], f"python -m venv {venv}", 120)
    python = str(venv_python(venv))
    pip = [
        python, "-m", "pip", "install",
        "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
        "--timeout", str(_PIP_TIMEOUT_SECS), "--retries", str(_PIP_RETRIES),
        *pin.requirements,
    ]  # fmt: skip
    try:
        _run(pip, f"pip install {' '.join(pin.requirements)}", _INSTALL_DEADLINE_SECS)
    except VenvError as exc:
        raise VenvError(
            f"could not install the rq {pin.rq} worker environment (Frappe {pin.frappe}) "
            f"into {venv}; is PyPI reachable? Set {SKIP_ENV}=1 to skip the rq version "
            f"matrix.\n{exc}"
        ) from None
    found = _probe(venv)
    if found["rq"] != pin.rq:
        raise VenvError(f"{venv} has rq {found['rq']}, not {pin.rq}")
    marker = {
        "spec": spec,
        "installed": found,
        "seconds": round(time.monotonic() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = venv / (_READY + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1, sort_keys=True))
    os.replace(tmp, venv / _READY)


def _lock(path: Path, wait: float) -> Any:
    """Hold an exclusive flock on ``path``; the returned file releases it when closed."""
    handle = open(path, "a")  # noqa: SIM115 - closed by the caller
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise VenvError(f"{path} stayed locked for {wait:.0f} s by another run") from None
            time.sleep(0.25)


#: Venvs that could not be made in this process: later callers get the same
#: error at once instead of waiting for pip to fail again.
_FAILED: dict[Path, VenvError] = {}
#: Venvs already found ready in this process.
_CHECKED: set[Path] = set()


def ensure_venv(pin: RqPin, base: str | None = None) -> Path:
    """Return the Python of ``pin``'s venv, making the venv first if needed.

    ``base`` is the interpreter to make it from (default :func:`base_python`).
    Blocking (subprocesses, a file lock): call it from a thread in Twisted code.
    Raises VenvError when it cannot be made (once per process; later calls
    raise the same error without trying again).
    """
    base = base or base_python()
    try:
        spec = _spec(pin, base)
    except VenvError as exc:
        raise VenvError(f"{PYTHON_ENV}={base} is not a usable Python: {exc}") from None
    venv = venv_path(pin, base)
    if venv in _FAILED:
        raise _FAILED[venv]
    if venv in _CHECKED:
        return venv_python(venv)
    try:
        try:
            venv.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VenvError(f"cannot create {venv.parent}: {exc} (set {DIR_ENV})") from None
        with _lock(venv.with_name(venv.name + ".lock"), _LOCK_WAIT_SECS):
            if not _is_ready(venv, spec):
                _create(pin, venv, base, spec)
    except VenvError as exc:
        _FAILED[venv] = exc
        raise
    _CHECKED.add(venv)
    return venv_python(venv)


def venv_info(python: Path) -> dict[str, Any]:
    """What the ready marker of the venv owning ``python`` recorded (empty if none)."""
    try:
        return json.loads((python.parent.parent / _READY).read_text())
    except (OSError, ValueError):
        return {}


# --- the worker, run inside a venv -------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON-friendly copy: enums become their value, the rest goes through repr."""
    return json.loads(json.dumps(value, default=lambda v: getattr(v, "value", repr(v))))


def _describe(job_id: str, connection: Any) -> dict[str, Any]:
    """The job as this rq reads it back from Redis after the worker is done."""
    from rq.job import Job

    out: dict[str, Any] = {"id": job_id}
    try:
        job = Job.fetch(job_id, connection=connection)
        out["status"] = _plain(job.get_status())
        out["origin"] = job.origin
        out["timeout"] = job.timeout
        out["meta"] = _plain(job.meta)
        out["description"] = job.description
        out["func_name"] = job.func_name  # unpickles data: last, so the rest is reported
        latest = getattr(job, "latest_result", None)  # rq >= 1.12
        result = latest() if latest is not None else None
        if result is not None:
            out["result_type"] = _plain(getattr(result, "type", None))
            out["return_value"] = _plain(getattr(result, "return_value", None))
            out["exc_string"] = getattr(result, "exc_string", None)
        else:
            out["exc_string"] = getattr(job, "exc_info", None)
    except Exception as exc:  # noqa: BLE001 - the point is to report what this rq cannot read
        out["read_error"] = f"{type(exc).__name__}: {exc!r} (cause: {exc.__cause__!r})"
    return out


def work(redis_url: str, queues: Sequence[str], fork: bool = False) -> dict[str, Any]:
    """Run one burst worker on ``queues``; return what happened, as this rq sees it.

    ``SimpleWorker`` runs the jobs in this process; ``fork`` uses ``Worker``,
    which runs each job in a forked work horse.
    """
    from importlib.metadata import version

    import redis
    from rq import Queue, SimpleWorker, Worker
    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    connection = redis.Redis.from_url(redis_url)
    try:
        rq_queues = [Queue(name, connection=connection) for name in queues]
        worker_class = Worker if fork else SimpleWorker
        report: dict[str, Any] = {
            "rq": version("rq"),
            "redis": version("redis"),
            "python": sys.version.split()[0],
            "worker": worker_class.__name__,
            "worker_error": None,
            "queues": {},
        }
        try:
            worker_class(rq_queues, connection=connection).work(burst=True)
        except Exception:  # noqa: BLE001 - e.g. a job this rq cannot load stops the worker
            import traceback

            report["worker_error"] = traceback.format_exc()
        for queue in rq_queues:
            finished = FinishedJobRegistry(queue=queue).get_job_ids()
            failed = FailedJobRegistry(queue=queue).get_job_ids()
            left = queue.get_job_ids()
            report["queues"][queue.name] = {
                "finished": finished,
                "failed": failed,
                "left": left,
                "jobs": {
                    job_id: _describe(job_id, connection) for job_id in [*finished, *failed, *left]
                },
            }
    finally:
        connection.close()
    return report


def main(argv: Sequence[str]) -> int:
    """``python -m tests.integration.rq_venvs work [--fork] REDIS_URL QUEUE...``.

    Exit 0 when every job finished, 1 when one failed or was left on a queue.
    """
    args = list(argv[1:])
    fork = bool(args) and args[0] == "--fork"
    if fork:
        args.pop(0)
    if not argv or argv[0] != "work" or len(args) < 2:
        print(
            "usage: python -m tests.integration.rq_venvs work [--fork] REDIS_URL QUEUE...",
            file=sys.stderr,
        )
        return 2
    report = work(args[0], args[1:], fork=fork)
    print(REPORT_PREFIX + json.dumps(report, sort_keys=True), flush=True)
    failed = any(q["failed"] or q["left"] for q in report["queues"].values())
    return 1 if failed or report["worker_error"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
