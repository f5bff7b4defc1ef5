"""Fixtures of the end-to-end engine tests: a fresh output and checkpoint directory per test, and
the word-count input with its batch reference."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from .jobs import INPUT_LINES, batch_reference, lines


@dataclass(frozen=True)
class Dirs:
    output: Path
    """Where the FileSink commits its files."""
    checkpoints: Path


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    return Dirs(tmp_path / "output", tmp_path / "checkpoints")


@pytest.fixture(scope="session")
def expected() -> Counter[tuple[str, int]]:
    """The batch reference of the generated input."""
    return batch_reference(lines(INPUT_LINES))
