"""The blocking `Client` is generated from `AsyncClient`: same operations, same signatures."""

from __future__ import annotations

import inspect
import subprocess
import sys

from esdb_node.client import AsyncClient, Client
from esdb_node.client.gen import public_methods


def test_blocking_client_has_every_async_method_with_the_same_signature() -> None:
    methods = public_methods()
    assert len(methods) >= 20
    for name, async_fn in methods:
        sync_fn = getattr(Client, name, None)
        assert sync_fn is not None, f"Client has no {name}"
        a, s = inspect.signature(async_fn), inspect.signature(sync_fn)
        assert list(a.parameters) == list(s.parameters), name
        for pa, ps in zip(a.parameters.values(), s.parameters.values(), strict=True):
            assert (pa.kind, pa.default, pa.annotation) == (ps.kind, ps.default, ps.annotation), (
                f"{name}({pa.name})"
            )
        want = str(a.return_annotation).replace("AsyncIterator[", "BlockingIterator[")
        assert str(s.return_annotation) == want, name


def test_no_catch_all_keyword_arguments() -> None:
    for cls in (AsyncClient, Client):
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            if name.startswith("_"):
                continue
            kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
            assert inspect.Parameter.VAR_KEYWORD not in kinds, f"{cls.__name__}.{name}"


def test_generated_client_is_fresh() -> None:
    """Fails when aio.py changed and `python -m esdb_node.client.gen` was not run."""
    result = subprocess.run(
        [sys.executable, "-m", "esdb_node.client.gen", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
