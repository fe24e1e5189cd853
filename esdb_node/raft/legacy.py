"""Reads the two pickled command shapes of journals written before the plain-data codec.

Before `wire.py`, pysyncobj pickled every command it put in the Raft log:

* a batch:              `(func_id, (batch_bytes,))`        (esdb's one replicated method)
* a membership change:  `["add" | "rem", "host:port", <EsdbNode or TCPNode object>]`

A node must still read such entries from its own journal after an upgrade, and a leader may
send its old entries to a follower. They are read here WITHOUT unpickling: `pickletools.genops`
only parses opcodes, and this module runs a tiny stack machine over a whitelist of plain-data
opcodes. Class references are allowed only for the node classes above (never instantiated:
the node object is a placeholder whose state is ignored) and for `_codecs.encode`, which
protocol 2 used to pickle bytes as latin-1 text (evaluated here as `str.encode("latin-1")`).
Anything else (another global, any other call) raises `LegacyCommandError`.
"""

from __future__ import annotations

import pickletools
from typing import Any

_NODE_CLASSES = frozenset(
    {
        ("esdb_node.raft.node", "EsdbNode"),
        ("pysyncobj.node", "TCPNode"),
        ("pysyncobj.node", "Node"),
    }
)
_CODECS_ENCODE = ("_codecs", "encode")
_MAX_OPS = 1_000_000


class LegacyCommandError(ValueError):
    """Not one of the pickled command shapes esdb ever wrote."""


class _Global:
    __slots__ = ("ref",)

    def __init__(self, ref: tuple[str, str]) -> None:
        self.ref = ref


class _NodeObject:
    """Where a pickled node object was; its state is never used (the address is item 1)."""

    __slots__ = ()


_NODE = _NodeObject()
_VALUE_OPS = frozenset(
    {
        "BININT",
        "BININT1",
        "BININT2",
        "LONG1",
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "SHORT_BINBYTES",
        "BINBYTES",
        "BINBYTES8",
    }
)


def _global(ref: tuple[str, str]) -> _Global:
    if ref not in _NODE_CLASSES and ref != _CODECS_ENCODE:
        raise LegacyCommandError(f"global {ref[0]}.{ref[1]} is not allowed")
    return _Global(ref)


def read_plain(data: bytes) -> Any:
    """The value of a pickle made only of plain data and the allowed references."""
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}

    def pop_mark() -> list[Any]:
        if not marks:
            raise LegacyCommandError("no mark")
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    try:
        for count, (op, arg, _pos) in enumerate(pickletools.genops(data)):
            if count > _MAX_OPS:
                raise LegacyCommandError("too many opcodes")
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                break
            if name in _VALUE_OPS:
                stack.append(arg)
            elif name == "NONE":
                stack.append(None)
            elif name in ("NEWTRUE", "NEWFALSE"):
                stack.append(name == "NEWTRUE")
            elif name == "MARK":
                marks.append(len(stack))
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                if len(stack) < n:
                    raise LegacyCommandError("stack underflow")
                packed = tuple(stack[-n:])
                del stack[-n:]
                stack.append(packed)
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "APPEND":
                value = stack.pop()
                _list(stack[-1]).append(value)
            elif name == "APPENDS":
                appended = pop_mark()  # first: the list is below the mark
                _list(stack[-1]).extend(appended)
            elif name == "LIST":
                stack.append(pop_mark())
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "SETITEM":
                value, key = stack.pop(), stack.pop()
                _dict(stack[-1])[_key(key)] = value
            elif name == "SETITEMS":
                pairs = pop_mark()
                target = _dict(stack[-1])
                for i in range(0, len(pairs) - 1, 2):
                    target[_key(pairs[i])] = pairs[i + 1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("BINPUT", "LONG_BINPUT"):
                memo[_index(arg)] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET"):
                stack.append(memo[_index(arg)])
            elif name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                stack.append(_global((module, attr)))
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                if not isinstance(attr, str) or not isinstance(module, str):
                    raise LegacyCommandError("STACK_GLOBAL needs two strings")
                stack.append(_global((module, attr)))
            elif name == "NEWOBJ":
                args, cls = stack.pop(), stack.pop()
                if not isinstance(cls, _Global) or cls.ref not in _NODE_CLASSES or args != ():
                    raise LegacyCommandError("only node objects may be created")
                stack.append(_NODE)
            elif name == "BUILD":
                stack.pop()  # the node's state: not needed, never applied
                if stack[-1] is not _NODE:
                    raise LegacyCommandError("BUILD of something other than a node")
            elif name == "REDUCE":
                args, fn = stack.pop(), stack.pop()
                if not isinstance(fn, _Global) or fn.ref != _CODECS_ENCODE:
                    raise LegacyCommandError("only _codecs.encode may be called")
                if (
                    not isinstance(args, tuple)
                    or len(args) != 2
                    or not isinstance(args[0], str)
                    or args[1] not in ("latin1", "latin-1")
                ):
                    raise LegacyCommandError("_codecs.encode with unexpected arguments")
                stack.append(args[0].encode("latin-1"))
            else:
                raise LegacyCommandError(f"pickle opcode {name} is not allowed")
    except LegacyCommandError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, UnicodeError) as exc:
        raise LegacyCommandError(f"unreadable legacy command: {type(exc).__name__}") from None
    if len(stack) != 1 or marks:
        raise LegacyCommandError("unbalanced legacy command")
    return stack[0]


def _index(value: Any) -> int:
    if not isinstance(value, int):
        raise LegacyCommandError("memo index must be an integer")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise LegacyCommandError("APPEND to something other than a list")
    return value


def _dict(value: Any) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise LegacyCommandError("SETITEM on something other than a dict")
    return value


def _key(value: Any) -> Any:
    if not isinstance(value, str | int | bytes):
        raise LegacyCommandError("dict keys must be plain values")
    return value


def legacy_batch(body: bytes) -> bytes:
    """The batch of a pickled `(func_id, (batch,))` command body (after the type byte)."""
    value = read_plain(body)
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], int)
        and isinstance(value[1], tuple)
        and len(value[1]) == 1
        and isinstance(value[1][0], bytes)
    ):
        return value[1][0]
    raise LegacyCommandError("not a pickled batch command")


def legacy_membership(body: bytes) -> tuple[str, str]:
    """`(op, address)` of a pickled `[op, address, node]` command body."""
    value = read_plain(body)
    if (
        isinstance(value, list)
        and len(value) in (2, 3)
        and value[0] in ("add", "rem")
        and isinstance(value[1], str)
        and (len(value) == 2 or value[2] is _NODE)
    ):
        return value[0], value[1]
    raise LegacyCommandError("not a pickled membership command")
