"""``scripts/`` holds commands on top of the package, never a library: read from the files, nothing is imported.

- no file of the repository puts a folder on ``sys.path`` (a script imports the installed package; a test imports
  the package, or runs a command as a subprocess);
- no module of ``bevlabels/``, ``trainer/`` or ``pipelines/`` imports a script (``scripts.x``, or ``x`` for a
  ``scripts/x.py``) or loads one by its path.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("bevlabels", "trainer", "pipelines")

#: a call that changes the import path, written so that this file does not match itself
SYS_PATH_EDIT = re.compile(rb"sys\s*\.\s*path\s*\.\s*(?:insert|append|extend)\s*\(")
#: loading a module from a file path: how a script could be imported without sys.path
LOAD_BY_PATH = re.compile(r"\b(?:spec_from_file_location|run_path|SourceFileLoader)\b")


def _repo_files() -> list[Path]:
    """The repository's files: tracked, and new ones git does not ignore (so ``outputs/``, ``data/``, ``.venv`` are
    not read); without git, every file outside hidden folders and those two."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
        return [REPO / p for p in sorted(set(out.decode().split("\0"))) if p and (REPO / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {"outputs", "data"}
        return [
            p
            for p in sorted(REPO.rglob("*"))
            if p.is_file() and not any(part.startswith(".") or part in skip for part in p.relative_to(REPO).parts)
        ]


def test_no_file_edits_sys_path():
    files = _repo_files()
    assert any(p.relative_to(REPO).parts[0] == "scripts" for p in files)  # the listing found the repository
    bad = [str(p.relative_to(REPO)) for p in files if SYS_PATH_EDIT.search(p.read_bytes())]
    assert not bad, f"these files put a folder on sys.path; import the package (or run a command) instead: {bad}"


def test_the_pattern_finds_edits():
    for call in ("insert(0, str(REPO))", "append('scripts')", "extend([x])", "insert (0, p)"):
        line = f"sys.path.{call}"  # (built here: written out, this file would hold one)
        assert SYS_PATH_EDIT.search(line.encode()), line
    assert not SYS_PATH_EDIT.search(b"env = dict(os.environ, PYTHONPATH=str(REPO))")


def _imported(tree: ast.AST) -> list[str]:
    """Every absolute module name an ``import`` / ``from`` statement of ``tree`` names, at any depth."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.append(node.module)
    return out


def test_the_package_does_not_import_scripts():
    scripts = {"scripts"} | {p.stem for p in (REPO / "scripts").glob("*.py")}
    assert {"bench_train", "smoke"} <= scripts
    bad = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            source = path.read_text()
            names = [n for n in _imported(ast.parse(source, filename=str(path))) if n.split(".")[0] in scripts]
            names += [f"loads a file: {m.group(0)}" for m in LOAD_BY_PATH.finditer(source)]
            if names:
                bad[str(path.relative_to(REPO))] = names
    assert not bad, f"the package must not import scripts/ (move what it needs into the package): {bad}"


def test_the_import_reader_sees_nested_imports():
    tree = ast.parse("def f():\n    import bench_train\n    from scripts.ablate import main\n    from . import x\n")
    assert _imported(tree) == ["bench_train", "scripts.ablate"]
