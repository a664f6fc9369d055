"""A wheel built from the repository works installed without the source tree.

The wheel is built from a copy of the sources (``pip wheel --no-deps
--no-build-isolation``; nothing is written into the repository) and installed
with ``--no-deps --no-index`` into a fresh venv.  The venv reaches the heavy
dependencies of the development venv through a ``.pth`` line naming its
site-packages: a path added that way is not itself processed as a site dir, so
the development venv's editable-install finder (which would import the source
tree) stays off.  Then ``puyu train``, ``puyu eval`` and ``puyu web --help`` run
from a folder outside the repository: recipes, task files and web assets must
come from the wheel.  No network is used.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATASETS, ROOT

pytestmark = pytest.mark.builtin


def run(args: list, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run a command; fail the test with its output when it fails."""
    result = subprocess.run([str(a) for a in args], check=False, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, (f"{' '.join(map(str, args))} exited {result.returncode}\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """``{"bin": venv bin folder, "env": environment for the commands, "cwd": a folder outside the repository}``."""
    if not _can_build():
        pytest.skip("cannot build a wheel here: setuptools is not importable in the test interpreter "
                    "(pip wheel --no-build-isolation needs it)")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT / "puyu", source / "puyu", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", tmp / "dist"],
        cwd=tmp)
    (wheel,) = (tmp / "dist").glob("puyu-*.whl")

    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], cwd=tmp)
    venv_site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    (venv_site / "dev_venv_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PUYU_HOME=str(tmp / "home"), PUYU_DATA_DIR=str(DATASETS), HF_HUB_OFFLINE="1",
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    cwd = tmp / "work"
    cwd.mkdir()
    found = run([python, "-c", "import puyu, puyu.train.config as c; print(puyu.__file__); print(c.RECIPES_DIR)"], cwd=cwd, env=env)
    module, recipes = found.stdout.split()
    assert Path(module).is_relative_to(venv_site) and Path(recipes).is_relative_to(venv_site), found.stdout
    return {"bin": venv / "bin", "env": env, "cwd": cwd, "home": tmp / "home"}


def _can_build() -> bool:
    try:
        import setuptools  # noqa: F401
    except ImportError:
        return False
    return True


def test_installed_wheel_trains_a_shipped_recipe(installed):
    # The shipped recipe and data as they are, but 8 samples of <= 128 tokens: one step of the full recipe takes minutes on a small CPU.
    run([installed["bin"] / "puyu", "train", "lora_sft", "train.max_steps=1", "data.limit=8", "data.max_length=128"],
        cwd=installed["cwd"], env=installed["env"])
    (folder,) = (installed["home"] / "runs" / "train").glob("lora_sft-*")
    assert json.loads((folder / "summary.json").read_text())["steps"] == 1
    assert (folder / "adapter" / "adapter_config.json").is_file()


def test_installed_wheel_evaluates_a_shipped_task(installed):
    run([installed["bin"] / "puyu", "eval", "--tasks", "arc_easy", "--limit", "2"], cwd=installed["cwd"], env=installed["env"])
    (result,) = (installed["home"] / "runs" / "eval").glob("*/results/*/arc_easy.json")
    assert json.loads(result.read_text())["n"] == 2


def test_installed_wheel_has_the_web_ui(installed):
    assert "usage: puyu web" in run([installed["bin"] / "puyu", "web", "--help"], cwd=installed["cwd"], env=installed["env"]).stdout
    static = run([installed["bin"] / "python", "-c", "from puyu.web.app import STATIC; print(STATIC)"],
                 cwd=installed["cwd"], env=installed["env"])
    folder = Path(static.stdout.strip())
    assert (folder / "index.html").is_file() and (folder / "vendor" / "marked.umd.js").is_file()
