"""The dashboard tests render alike whatever shell runs them: NO_COLOR, which Textual reads
when an app is made, is unset (a pilot test sets it itself to check it is honoured)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _colour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
