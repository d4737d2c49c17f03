"""scripts/torch_install.py: which `pip install` scripts/setup runs for torch (CPU build where there is no CUDA).

The decision is checked on the arguments it prints and on what pip itself would choose (``--dry-run
--report``, local files only): nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "torch_install.py"
_spec = importlib.util.spec_from_file_location("torch_install", SCRIPT)
assert _spec and _spec.loader
torch_install = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(torch_install)
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def fake_wheel(folder: Path, version: str, summary: str = "") -> Path:
    """A tiny, valid wheel named torch (metadata only): what pip's resolver sees of a real one."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(
            f"{info}/METADATA",
            f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\nSummary: {summary}\n",
        )
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


def pip_env(tmp_path: Path, find_links: Path | None, path_dirs: list[Path] = ()) -> dict[str, str]:
    """No pip.conf (this machine's points at its own wheel folder), only the find-links given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "TORCH_"))}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    if find_links is not None:
        env["PIP_FIND_LINKS"] = str(find_links)
    env["PATH"] = os.pathsep.join([*map(str, path_dirs), "/usr/bin", "/bin"])
    return env


def run_script(env: dict[str, str]) -> tuple[list[str], str]:
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines(), done.stderr


@pytest.mark.parametrize(
    ("spec", "machine", "expected"),
    [
        ("torch==2.13.0", dict(linux=True, cuda=False, local_cpu_build=None), ["--extra-index-url", CPU_INDEX, "torch==2.13.0+cpu"]),
        ("torch==2.13.0", dict(linux=True, cuda=False, local_cpu_build="file:///w/t.whl"), ["torch==2.13.0+cpu"]),
        ("torch==2.13.0", dict(linux=True, cuda=True, local_cpu_build=None), ["torch==2.13.0"]),
        ("torch==2.13.0", dict(linux=False, cuda=False, local_cpu_build=None), ["torch==2.13.0"]),
        ("torch>=2.9,<2.14", dict(linux=True, cuda=False, local_cpu_build=None), ["--extra-index-url", CPU_INDEX, "torch>=2.9,<2.14"]),
        (" Torch == 2.9.1 ", dict(linux=True, cuda=False, local_cpu_build=None), ["--extra-index-url", CPU_INDEX, "torch==2.9.1+cpu"]),
    ],
)  # fmt: skip
def test_the_cpu_build_where_there_is_no_cuda(spec: str, machine: dict, expected: list[str]) -> None:
    arguments, why = torch_install.choose(spec, index_url=None, **machine)
    assert arguments == expected and why


def test_torch_index_url_overrides_the_decision() -> None:
    machine = dict(linux=True, cuda=False, local_cpu_build=None)
    cu = "https://download.pytorch.org/whl/cu126"
    assert torch_install.choose("torch==2.13.0", index_url=cu, **machine)[0] == [
        "--extra-index-url",
        cu,
        "torch==2.13.0",
    ]
    assert torch_install.choose("torch==2.13.0", index_url="", **machine)[0] == ["torch==2.13.0"]  # fmt: skip


def test_a_machine_without_a_local_wheel_gets_the_cpu_index(tmp_path: Path) -> None:
    """No pip.conf, no find-links (a plain CPU-only Linux machine): the PyTorch CPU index, a +cpu pin."""
    arguments, why = run_script(pip_env(tmp_path, find_links=None))
    assert arguments == ["--extra-index-url", CPU_INDEX, "torch==2.13.0+cpu"]
    assert "setup: torch: pip install --extra-index-url" in why


def test_a_local_cpu_wheel_is_taken_from_disk_without_an_index(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    fake_wheel(wheels, "2.13.0+cpu")
    arguments, why = run_script(pip_env(tmp_path, find_links=wheels))
    assert arguments == ["torch==2.13.0+cpu"]
    assert "a CPU build is on this machine" in why and "wheels/torch-2.13.0" in why


@pytest.mark.parametrize(("spec", "expected"), [("", "torch==2.13.0+cpu"), ("torch>=2.9", "torch>=2.9")])
def test_a_local_cuda_wheel_is_not_taken_for_a_cpu_build(tmp_path: Path, spec: str, expected: str) -> None:
    wheels = tmp_path / "wheels"
    fake_wheel(wheels, "2.13.0")  # PyPI's Linux build: CUDA
    env = pip_env(tmp_path, find_links=wheels) | {"TORCH_SPEC": spec}
    assert run_script(env)[0] == ["--extra-index-url", CPU_INDEX, expected]


def test_with_nvidia_smi_and_torch_spec_pip_gets_the_spec_as_given(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = pip_env(tmp_path, find_links=None, path_dirs=[bin_dir]) | {"TORCH_SPEC": "torch==2.9.1"}
    assert run_script(env)[0] == ["torch==2.9.1"]


def test_pip_prefers_the_index_file_over_a_local_one_of_the_same_version(tmp_path: Path) -> None:
    """Why the CPU index is not added where a local CPU build exists: pip ranks by version, not by source,
    and of two equal files takes the index's, so the local wheel would be downloaded again."""
    wheels, simple = tmp_path / "wheels", tmp_path / "simple" / "torch"
    fake_wheel(wheels, "2.13.0+cpu", summary="local")
    fake_wheel(simple, "2.13.0+cpu", summary="index")
    (simple / "index.html").write_text('<a href="torch-2.13.0+cpu-py3-none-any.whl">torch</a>\n')
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--quiet",
        "--no-deps",
        "--ignore-installed",
    ]
    command += ["--index-url", (tmp_path / "simple").as_uri(), "--report", "-", "torch==2.13.0+cpu"]
    done = subprocess.run(command, capture_output=True, text=True, env=pip_env(tmp_path, wheels), timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["install"][0]["metadata"]["summary"] == "index"
