"""The wheel a user installs: everything under `tagrun.*`, no generic top-level modules.

The wheel is built from a copy of the checkout (so the build never writes into it, and no stale
`build/` directory can leak old files into the wheel), then installed with --no-deps into a
fresh virtual environment that sees nothing of this one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIP_ENV_OFF = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 120
         ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **PIP_ENV_OFF}
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"):
        env.pop(name, None)
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout, check=False)
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
        f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source") / "tagrun"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "tests"))
    out = tmp_path_factory.mktemp("wheelhouse")
    # The dev extras carry setuptools and wheel, so the build needs no download.
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "-w", out, source)
    wheels = list(out.glob("tagrun-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def fresh_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
         "--no-index", "--quiet", wheel)
    yield python


def _in_fresh(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # -I: no PYTHONPATH, no user site, and not the current directory on sys.path.
    return _run(python, "-I", "-c", code, cwd=cwd)


def test_wheel_holds_only_the_tagrun_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "tagrun/server/store/migrations/0001_init.sql" in names
    assert "tagrun/agent/__init__.py" in names
    assert "tagrun/shared/agent_wire.py" in names
    assert "tagrun/server/cli/__init__.py" in names
    assert "tagrun/server/services/jobs.py" in names
    assert "tagrun/client/__init__.py" in names and "tagrun/client/_sync.py" in names
    for generic in ("server", "agent", "shared"):
        assert not any(n.startswith((f"{generic}/", f"{generic}.py")) for n in names), (
            f"the wheel would put a top-level {generic!r} into site-packages")
    dist_info = next(n.split("/", 1)[0] for n in names if ".dist-info/" in n)
    assert {n.split("/", 1)[0] for n in names} == {"tagrun", dist_info}
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "tagrun = tagrun.server.cli:main" in entry_points


def test_installed_wheel_imports_as_tagrun_only(fresh_python: Path, tmp_path: Path) -> None:
    result = _in_fresh(fresh_python, (
        "import importlib, pathlib, sys, sysconfig\n"
        "import tagrun.agent, tagrun.server.tags, tagrun.shared.version\n"
        "site = pathlib.Path(sysconfig.get_paths()['purelib'])\n"
        "assert pathlib.Path(tagrun.agent.__file__).is_relative_to(site), tagrun.agent.__file__\n"
        "sql = site / 'tagrun/server/store/migrations/0001_init.sql'\n"
        "assert 'CREATE TABLE' in sql.read_text().upper()\n"
        "for name in ('server', 'agent', 'shared'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        print('absent', name)\n"
        "    else:\n"
        "        print('PRESENT', name, sys.modules[name].__file__)\n"
        "print('version', tagrun.shared.version.__version__)\n"
    ), cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert [line for line in lines if not line.startswith("version")] == [
        "absent server", "absent agent", "absent shared"]
    from tagrun.shared.version import __version__

    assert f"version {__version__}" in lines


def test_installed_wheel_has_the_tagrun_command(fresh_python: Path) -> None:
    script = fresh_python.parent / "tagrun"
    assert script.exists()
    assert "tagrun.server.cli" in script.read_text()
