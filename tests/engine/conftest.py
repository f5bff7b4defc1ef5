"""Fixtures of the end-to-end engine tests: a fresh output and checkpoint directory per test, and
the word-count input with its batch reference."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from .jobs import batch_reference, lines

INPUT_LINES = 800
"""Lines of the generated input: 2 400 words, 11 distinct."""
RATE = 1000.0
"""Lines per second and reader. With 2 readers, a run without failures lasts about 0.4 s: long
enough for several checkpoints at a 50 ms interval."""


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
