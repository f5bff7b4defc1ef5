"""The README's first job runs as written: its code block is the file it names, and its commands,
run in a directory holding nothing but that file, make the input and run the job to the end."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLE = ROOT / "examples" / "wordcount.py"
SMALL = 300
"""Lines of input the test makes instead of the README's (the command is otherwise run as written)."""


def first_job() -> tuple[str, str]:
    """The code block and the shell block of the README's section "A first job"."""
    section = README.read_text().split("## A first job", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    shell = re.search(r"```sh\n(.*?)```", section, re.S)
    assert code and shell, "the first job has a python block and a sh block"
    return code[1], shell[1]


def test_the_first_code_block_of_the_readme_is_the_example_file_it_names() -> None:
    code, _ = first_job()
    first_python_block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)

    assert first_python_block and first_python_block[1] == code, "the first job is the README's first code"
    assert code.startswith("# examples/wordcount.py")
    assert code == EXAMPLE.read_text()


def test_the_readme_commands_make_the_input_and_run_the_first_job_from_a_clean_directory(tmp_path: Path) -> None:
    _, shell = first_job()
    commands = shell.strip()
    assert "* 100000" in commands, "the input command is the one documented"
    (tmp_path / "examples").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "examples" / "wordcount.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the installed `flowstate`

    result = subprocess.run(["bash", "-euo", "pipefail", "-c", commands.replace("* 100000", f"* {SMALL}")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "job 'wordcount' finished" in result.stderr
    words = (tmp_path / "data" / "hamlet.txt").read_text().split()
    assert len(words) == 10 * SMALL
    counts = Counter(words)
    records: Counter[tuple[str, int]] = Counter()
    for path in (tmp_path / "out").iterdir():
        if not path.name.startswith("."):
            records.update(tuple(json.loads(line)) for line in path.read_text().splitlines())
    assert records == Counter((w, n) for w, c in counts.items() for n in range(1, c + 1))
