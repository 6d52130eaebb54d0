"""The Makefile's setup recipe, dry-run (``make -n``): the default installs the pinned CPU torch exactly as
before; ``TORCH=cuda`` the same version's CUDA 13.0 build from PyTorch's index; anything else is refused.
Nothing is installed or downloaded here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def dry_run(tmp_path: Path, *variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", "setup", f"VENV={tmp_path / 'venv'}", *variables], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=30)


def pip_lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if "/bin/pip install" in line]


def test_default_setup_installs_the_pinned_cpu_torch_first(tmp_path):
    proc = dry_run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    venv = tmp_path / "venv"
    assert pip_lines(proc.stdout)[:2] == [f"{venv}/bin/pip install -q torch==2.13.0",
                                          f"{venv}/bin/pip install -q -r requirements.txt"]
    assert f"touch {venv}/.installed\n" in proc.stdout


def test_torch_cuda_installs_the_cuda_13_build_from_pytorchs_index(tmp_path):
    proc = dry_run(tmp_path, "TORCH=cuda")
    assert proc.returncode == 0, proc.stderr
    venv = tmp_path / "venv"
    assert pip_lines(proc.stdout)[0] == (f"{venv}/bin/pip install -q torch==2.13.0+cu130 "
                                         "--index-url https://download.pytorch.org/whl/cu130")
    assert f"touch {venv}/.installed-cuda\n" in proc.stdout  # upgrades an existing CPU venv too
    other = dry_run(tmp_path, "TORCH=cuda", "TORCH_CUDA=cu128")
    assert pip_lines(other.stdout)[0] == (f"{venv}/bin/pip install -q torch==2.13.0+cu128 "
                                          "--index-url https://download.pytorch.org/whl/cu128")


def test_an_unknown_torch_variant_is_refused_before_anything_runs(tmp_path):
    proc = subprocess.run(["make", "setup", f"VENV={tmp_path / 'venv'}", "TORCH=rocm", "PYTHON=false"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "TORCH=rocm: use cpu (default) or cuda" in proc.stderr
    assert not (tmp_path / "venv").exists()
