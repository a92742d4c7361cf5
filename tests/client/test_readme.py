"""The README's Python client example, run as a user would paste it: a program of its own,
finding the server in TAGRUN_URL and the token in TAGRUN_TOKEN."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.processes import SUPERADMIN, TagrunProcess

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("\n## Python client\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python example in the README's Python client section"
    return match.group(1)


def test_the_readme_example_runs(server: TagrunProcess, tmp_path: Path) -> None:
    program = tmp_path / "example.py"
    program.write_text(readme_example())
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGRUN_")}
    env.update(TAGRUN_URL=server.url, TAGRUN_TOKEN=SUPERADMIN)
    done = subprocess.run([sys.executable, str(program)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    first, *rest = done.stdout.splitlines()
    assert re.fullmatch(r"submitted job \d+", first), first
    assert rest == ["log: step 1", "log: step 2", "log: step 3", 'log: {"steps": 3}',
                    "succeeded {'steps': 3}"]
