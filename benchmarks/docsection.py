"""Generated sections of docs/benchmarks.md: the text between a pair of markers is replaced."""

from __future__ import annotations

import sys
from pathlib import Path


def write_section(doc_path: Path, begin: str, end: str, text: str, *, absent: str) -> None:
    """Replace what stands between ``begin`` and ``end`` in ``doc_path`` with ``text``. When the
    markers are missing, ``absent`` (a heading, the method and the markers) is added at the end of
    the file first."""
    doc = doc_path.read_text()
    if begin not in doc or end not in doc:
        doc = doc.rstrip("\n") + "\n\n" + absent
    head, _, rest = doc.partition(begin)
    _, _, tail = rest.partition(end)
    doc_path.write_text(f"{head}{begin}\n{text}{end}{tail}")
    print(f"updated {doc_path}", file=sys.stderr)
