"""A wheel built from the repository, installed into a fresh venv outside it: `moecomp admin migrate` finds the
migrations shipped in the package, and `moecomp compress` writes a checkpoint with its model card. The venv borrows
the dependencies of the project's own environment (a path line, not its .pth files, so the editable moecomp stays
out); moecomp itself is only the wheel's."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_a_wheel_installed_outside_the_repo_migrates_and_compresses(tmp_path: Path) -> None:
    wheels, env_dir, work, source = tmp_path / "wheels", tmp_path / "venv", tmp_path / "work", tmp_path / "source"
    work.mkdir()
    # Built from a clean copy: setuptools would reuse the repository's build/ of an earlier build.
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "moecomp", source / "moecomp", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = (sys.executable, "-m", "pip")
    _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, source, cwd=work)
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=work).strip())
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("moecomp-*.whl"))
    _run(*pip, "--python", python, "install", "-q", "--no-deps", wheel, cwd=work)
    package = Path(_run(python, "-c", "import moecomp; print(moecomp.__file__)", cwd=work).strip())
    assert package.is_relative_to(site), package  # the wheel's copy, not the repository

    moecomp = env_dir / "bin" / "moecomp"
    env = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "MOECOMP_DATA_DIR": str(work / "data")}
    _run(moecomp, "admin", "migrate", cwd=work, env=env)
    with sqlite3.connect(work / "data" / "moecomp.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        head = db.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    assert {"jobs", "artifacts", "workers", "alembic_version"} <= tables
    shipped = sorted(p.name for p in (package.parent / "persistence" / "migrations" / "versions").glob("*.py"))
    assert head.split("_")[0] == shipped[-1].split("_")[0]  # the newest migration shipped in the wheel

    recipe = work / "recipe.json"
    recipe.write_text(json.dumps({"stages": []}))
    model = package.parent / "assets" / "models" / "tiny-mixtral"
    _run(moecomp, "compress", "--model", model, "--recipe", recipe, "--out", work / "out", cwd=work, env=env)
    card = (work / "out" / "README.md").read_text()
    assert "# Compressed tiny-mixtral" in card and "none (re-exported unchanged)" in card
    assert (work / "out" / "moecomp.json").is_file()
