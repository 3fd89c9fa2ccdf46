"""Read what a pickle *says* without running it: the ``btu`` command's only pickle reader.

Everything the CLI shows from Redis (a job's ``data`` and ``meta``) may have
been written by anyone who can write the RQ Redis, which on a bench is every
Frappe process.  Unpickling — with any ``Unpickler``, however its
``find_class`` is restricted — executes the opcode stream; a crafted ``meta``
ran ``os.system`` when an operator looked at a job (issue 12).  So this module
never hands bytes to the pickle machine.  It walks the opcodes with
:func:`pickletools.genops` (a parser: it decodes arguments, it executes nothing)
and keeps its own small stack of plain values.  A class or function the pickle
names is never imported or called: it becomes an :class:`Opaque` placeholder
that shows its dotted name and the arguments it would have been called with,
which is exactly what an operator wants to see in a suspicious job.  The only
constructors ever called are a fixed handful of plain-data types (dates,
decimals, sets) on plain arguments.

Work is bounded: the opcode count, the decompressed size, the nesting depth and
the number of values in the summary (a pickle can share one list many times
over, to blow up into billions of items when walked).
"""

from __future__ import annotations

import datetime
import decimal
import pickletools
import zlib
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_BYTES", "Opaque", "PickleSummaryError", "plain", "read_job_call", "summarize"]

#: Largest (decompressed) pickle read; rq job data is kilobytes.
MAX_BYTES = 16 * 1024 * 1024
#: Opcodes walked before giving up.
MAX_OPS = 1_000_000
#: Values emitted by :func:`plain` before the rest is cut to ``"..."``.
MAX_NODES = 20_000
_MAX_DEPTH = 40
_SHORT = 200

# Plain-data types a job's arguments often hold; called only on plain arguments.
# Nothing here allocates by a number it is given (bytearray(10**12) would).
_SAFE_CALLS: dict[str, Callable[..., Any]] = {
    "datetime.datetime": datetime.datetime,
    "datetime.date": datetime.date,
    "datetime.time": datetime.time,
    "datetime.timedelta": datetime.timedelta,
    "datetime.timezone": datetime.timezone,
    "decimal.Decimal": decimal.Decimal,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.complex": complex,
}
# Python 2 names that protocols 0-2 write for builtins.
# Opcodes whose decoded argument is the value itself (protocol 0 INT 01/00 decodes to a bool).
_SCALARS = frozenset({
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
    "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
})
_RENAMED_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
_PLAIN_SCALARS = (str, bytes, bytearray, int, float, bool, complex, type(None), decimal.Decimal,
                  datetime.date, datetime.time, datetime.timedelta, datetime.tzinfo)


class PickleSummaryError(ValueError):
    """The bytes are not a pickle this reader can summarize (malformed, too big, odd opcode)."""


class Opaque:
    """Whatever a pickle names but this reader will not import: shown, never run."""

    def __init__(self, name: str, call: str | None = None) -> None:
        self.name = name
        self.call = call  # the arguments it would have been called with, as short text

    def __repr__(self) -> str:
        return f"<{self.name}>" if self.call is None else f"<{self.name}({self.call})>"


class _Global:
    """A class or function named by GLOBAL/STACK_GLOBAL, not looked up."""

    def __init__(self, module: str, name: str) -> None:
        module = _RENAMED_MODULES.get(module, module)
        self.name = f"{module}.{name}"

    def __repr__(self) -> str:
        return f"<{self.name}>"


class _Mark:
    pass


_MARK = _Mark()


def _short(value: Any, depth: int = 0) -> str:
    """A bounded one-line rendering, for arguments of a call that is not made."""
    if depth > 3:
        return "..."
    if isinstance(value, tuple):
        text = ", ".join(_short(v, depth + 1) for v in value[:8])
        text += ", ..." if len(value) > 8 else ""
    elif isinstance(value, list):
        text = "[" + ", ".join(_short(v, depth + 1) for v in value[:8]) + "]"
    elif isinstance(value, dict):
        items = list(value.items())[:8]
        text = "{" + ", ".join(f"{_short(k, depth + 1)}: {_short(v, depth + 1)}"
                               for k, v in items) + "}"
    elif isinstance(value, (Opaque, _Global, *_PLAIN_SCALARS)):
        text = repr(value)
    else:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _SHORT else text[:_SHORT] + "..."


def _is_plain(value: Any, depth: int = 0) -> bool:
    if depth > 4:
        return False
    if isinstance(value, _PLAIN_SCALARS):
        return True
    if isinstance(value, tuple | list | set | frozenset):
        return len(value) <= 100_000 and all(_is_plain(v, depth + 1) for v in value)
    return False


def _call(func: Any, args: Any) -> Any:
    """What REDUCE/NEWOBJ would have built: a plain value for the safe few, else an Opaque."""
    if isinstance(func, _Global):
        if func.name == "_codecs.encode" and isinstance(args, tuple) and len(args) == 2 \
                and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
            return args[0].encode("latin-1")  # protocol 0-2 bytes; no codec lookup by name
        safe = _SAFE_CALLS.get(func.name)
        if safe is not None and isinstance(args, tuple) and _is_plain(args):
            try:
                return safe(*args)
            except Exception:  # noqa: BLE001, S110 - odd arguments: shown as a placeholder
                pass
        return Opaque(func.name, _short(args) if isinstance(args, tuple) else None)
    name = func.name if isinstance(func, Opaque) else type(func).__name__
    return Opaque(name, _short(args) if isinstance(args, tuple) else None)


def _decompress(data: bytes) -> bytes:
    """rq zlib-compresses ``data``; the Rust daemon stores it raw.  Bounded either way."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_BYTES)
    except zlib.error:
        return data
    if inflater.unconsumed_tail:
        raise PickleSummaryError(f"more than {MAX_BYTES} bytes once decompressed")
    return out


def summarize(data: bytes) -> Any:
    """The value a pickle describes, with every class and function left as a placeholder.

    Raises :class:`PickleSummaryError` for anything malformed or over a bound.
    """
    if len(data) > MAX_BYTES:
        raise PickleSummaryError(f"more than {MAX_BYTES} bytes")
    data = _decompress(data)
    stack: list[Any] = []
    memo: dict[int, Any] = {}

    def pop_mark() -> list[Any]:
        for index in range(len(stack) - 1, -1, -1):
            if stack[index] is _MARK:
                items = stack[index + 1:]
                del stack[index:]
                return items
        raise PickleSummaryError("MARK missing")

    def set_items(target: Any, items: list[Any]) -> None:
        if isinstance(target, dict):
            for i in range(0, len(items) - 1, 2):
                target[items[i]] = items[i + 1]

    try:
        for count, (opcode, argument, _pos) in enumerate(pickletools.genops(data)):
            # Its type is the opcode's (an int for PUT, a str for GLOBAL...); None for
            # opcodes without one, which never read it.
            arg: Any = argument
            if count > MAX_OPS:
                raise PickleSummaryError(f"more than {MAX_OPS} opcodes")
            name = opcode.name
            if name in ("PROTO", "FRAME", "READONLY_BUFFER"):
                continue
            if name == "STOP":
                if len(stack) != 1:
                    raise PickleSummaryError("stack is not one value at STOP")
                return stack[0]
            if name == "MARK":
                stack.append(_MARK)
            elif name == "POP":
                stack.pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1])
            elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
                stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
            elif name in _SCALARS:
                stack.append(bytearray(arg) if name == "BYTEARRAY8" else arg)
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                size = int(name[-1])
                items = stack[-size:]
                del stack[-size:]
                stack.append(tuple(items))
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "LIST":
                stack.append(pop_mark())
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "DICT":
                items = pop_mark()
                result: dict[Any, Any] = {}
                set_items(result, items)
                stack.append(result)
            elif name == "EMPTY_SET":
                stack.append(set())
            elif name == "FROZENSET":
                stack.append(frozenset(pop_mark()))
            elif name == "APPEND":
                value = stack.pop()
                if isinstance(stack[-1], list):
                    stack[-1].append(value)
            elif name == "APPENDS":
                items = pop_mark()
                if isinstance(stack[-1], list):
                    stack[-1].extend(items)
            elif name == "SETITEM":
                value, key = stack.pop(), stack.pop()
                set_items(stack[-1], [key, value])
            elif name == "SETITEMS":
                items = pop_mark()
                set_items(stack[-1], items)
            elif name == "ADDITEMS":
                items = pop_mark()
                if isinstance(stack[-1], set):
                    stack[-1].update(items)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name == "GLOBAL":
                module, _, attr = arg.partition(" ")
                stack.append(_Global(module, attr))
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                stack.append(_Global(str(module), str(attr)))
            elif name == "REDUCE":
                args = stack.pop()
                stack.append(_call(stack.pop(), args))
            elif name == "NEWOBJ":
                args, cls = stack.pop(), stack.pop()
                stack.append(_call(Opaque(getattr(cls, "name", "?")), args))
            elif name == "NEWOBJ_EX":
                kwargs, args, cls = stack.pop(), stack.pop(), stack.pop()
                shown = (*args, kwargs) if isinstance(args, tuple) else None
                stack.append(_call(Opaque(getattr(cls, "name", "?")), shown))
            elif name == "BUILD":
                stack.pop()  # the state goes nowhere: nothing is built
            elif name == "INST":
                module, _, attr = arg.partition(" ")
                stack.append(_call(Opaque(_Global(module, attr).name), tuple(pop_mark())))
            elif name == "OBJ":
                items = pop_mark()
                cls = items[0] if items else None
                stack.append(_call(Opaque(getattr(cls, "name", "?")), tuple(items[1:])))
            elif name in ("EXT1", "EXT2", "EXT4"):
                stack.append(Opaque(f"copyreg extension {arg}"))
            elif name == "PERSID":
                stack.append(Opaque("persistent id", _short((arg,))))
            elif name == "BINPERSID":
                stack.append(Opaque("persistent id", _short((stack.pop(),))))
            elif name == "NEXT_BUFFER":
                stack.append(Opaque("out-of-band buffer"))
            else:
                raise PickleSummaryError(f"opcode {name} is not summarized")
    except PickleSummaryError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, RecursionError) as error:
        raise PickleSummaryError(f"{type(error).__name__}: {error}"[:160]) from None
    raise PickleSummaryError("no STOP opcode")


def plain(value: Any) -> Any:
    """A JSON-able copy of a summary; placeholders and odd values become short strings."""
    budget = [MAX_NODES]

    def walk(item: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0 or depth > _MAX_DEPTH:
            return "..."
        if item is None or isinstance(item, str | bool | int | float):
            return item
        if isinstance(item, dict):
            return {k if isinstance(k, str) else _short(k): walk(v, depth + 1)
                    for k, v in list(item.items())}
        if isinstance(item, list | tuple | set | frozenset):
            return [walk(v, depth + 1) for v in list(item)]
        if isinstance(item, datetime.date | datetime.time):
            return item.isoformat()
        if isinstance(item, bytes | bytearray) and len(item) > 120:
            return f"<{len(item)} bytes>"
        return _short(item)

    return walk(value, 0)


def read_job_call(data: bytes) -> dict[str, Any]:
    """``func_name``, ``args`` and ``kwargs`` of rq's pickled ``data`` tuple, summarized.

    ``data`` may be zlib-compressed (rq's own jobs) or raw (the Rust daemon's).
    Anything unreadable is reported in ``data_error``, never raised.
    """
    try:
        value = summarize(data)
        func_name, _instance, args, kwargs = value
    except (PickleSummaryError, TypeError, ValueError) as error:
        reason = str(error)[:160] or type(error).__name__
        return {"func_name": None, "args": None, "kwargs": None, "data_error": reason}
    return {"func_name": plain(func_name), "args": plain(args), "kwargs": plain(kwargs)}
