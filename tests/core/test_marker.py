"""The `ina_inhibition` marker: LoRA-only parsers refuse an InA adapter; PEFT and InA load it exactly.

vLLM and llama.cpp read only ``r``/``lora_alpha``/``target_modules`` of a config (never ``peft_type``)
but check every tensor name. A scalar ``<module>.ina_inhibition`` beside each gated module makes both
refuse an adapter they would otherwise run as plain LoRA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from tiny_modules import build, randomize_adapters

import ina
from ina import InAConfig
from ina.core.layer import MARKER
from ina.core.loading import AdapterFileError, check_adapter_folder

WEIGHTS = "adapter_model.safetensors"
TARGETS = {"mlp": ["lin0", "lin1"], "emb_conv1d": ["emb", "conv1d"], "fused_qkv": ["qkv"]}


def vllm_accepts(name: str) -> bool:
    """vLLM's rule (``parse_fine_tuned_lora_name`` in vllm/lora/utils.py, 0.6-0.11), restated.

    The last name parts must be ``lora_A.weight``/``lora_B.weight`` or ``lora_embedding_A``/``_B``;
    anything else raises ``ValueError(f"{name} is unsupported LoRA weight")``, checked for every tensor
    before loading (an HTTP 400 from ``load_lora_adapter``, a refusal to start with ``--lora-modules``).
    Names containing ``base_layer`` are skipped before that check (hence never used for the marker).
    """
    parts = name.split(".")
    return (parts[-1] == "weight" and parts[-2] in ("lora_A", "lora_B")) or parts[-1] in (
        "lora_embedding_A",
        "lora_embedding_B",
    )


def llama_cpp_accepts(name: str) -> bool:
    """llama.cpp's rule (``get_tensors`` in convert_lora_to_gguf.py), restated.

    A tensor is A or B if its name contains ``.lora_A.weight``/``.lora_embedding_A`` (B alike); else
    ``.base_layer.weight`` is skipped, names with ``_layernorm``/``.norm`` are copied as norms, and any
    other name stops the conversion: ``Unexpected name '...': Not a lora_A or lora_B tensor``, exit 1.
    """
    lora = any(
        s in name for s in (".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B")
    )
    return lora or any(s in name for s in (".base_layer.weight", "_layernorm", ".norm"))


def save(tmp_path: Path, model_name: str, inhibition: float, **kwargs) -> tuple[Path, torch.Tensor]:
    """Save a non-zero adapter on ``model_name``; returns its folder and its output on the model's inputs."""
    config = InAConfig(r=4, lora_alpha=8, target_modules=TARGETS[model_name], inhibition=inhibition, **kwargs)
    model = get_peft_model(build(model_name), config)
    randomize_adapters(model)
    folder = tmp_path / f"{model_name}-{inhibition}"
    model.save_pretrained(folder)
    with torch.no_grad():
        expected = model(type(model.get_base_model()).inputs())
    return folder, expected


def output(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(type(model.get_base_model()).inputs())


def set_config(folder: Path, **changes) -> None:
    config_file = folder / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **changes}))


def strip_markers(folder: Path) -> None:
    tensors = load_file(str(folder / WEIGHTS))
    save_file({k: v for k, v in tensors.items() if not k.endswith(MARKER)}, str(folder / WEIGHTS))


@pytest.mark.parametrize("model_name", sorted(TARGETS))
def test_one_marker_per_gated_module_and_none_for_lora(tmp_path: Path, model_name: str) -> None:
    folder, _ = save(tmp_path, model_name, 0.3)
    tensors = load_file(str(folder / WEIGHTS))
    modules = {
        k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors if "lora_" in k
    }
    markers = {k[: -len(MARKER) - 1]: v for k, v in tensors.items() if k.endswith("." + MARKER)}
    assert markers.keys() == modules and len(modules) == len(TARGETS[model_name])
    for value in markers.values():
        assert value.shape == () and value.dtype == torch.float32 and value.item() == pytest.approx(0.3)
    for name in markers:
        assert not any(word in name for word in ("base_layer", "norm", "lora_magnitude_vector"))
    plain, _ = save(tmp_path, model_name, 0.0)
    assert not any(k.endswith(MARKER) for k in load_file(str(plain / WEIGHTS)))


@pytest.mark.parametrize("model_name", sorted(TARGETS))
def test_lora_only_parsers_refuse_the_marked_folder_and_accept_lora(tmp_path: Path, model_name: str) -> None:
    folder, _ = save(tmp_path, model_name, 0.3)
    names = list(load_file(str(folder / WEIGHTS)))
    refused = [n for n in names if not vllm_accepts(n)]
    assert refused and all(n.endswith("." + MARKER) for n in refused)
    assert [n for n in names if not llama_cpp_accepts(n)] == refused
    plain, _ = save(tmp_path, model_name, 0.0)  # ρ = 0 is exactly LoRA: both may run it
    assert all(vllm_accepts(n) and llama_cpp_accepts(n) for n in load_file(str(plain / WEIGHTS)))


@pytest.mark.parametrize("model_name", sorted(TARGETS))
def test_peft_and_ina_load_the_marked_folder_exactly(tmp_path: Path, model_name: str) -> None:
    folder, expected = save(tmp_path, model_name, 0.3)
    with ina.core.registry.without_peft_deprecations():
        by_peft = PeftModel.from_pretrained(build(model_name), str(folder))
    torch.testing.assert_close(output(by_peft), expected, rtol=0, atol=0)
    torch.testing.assert_close(output(ina.load_adapter(build(model_name), folder)), expected, rtol=0, atol=0)
    assert not any(MARKER in name for name in by_peft.state_dict())


def test_old_folders_without_markers_still_load(tmp_path: Path) -> None:
    folder, expected = save(tmp_path, "emb_conv1d", 0.3)
    strip_markers(folder)
    assert check_adapter_folder(folder).inhibition == 0.3
    torch.testing.assert_close(
        output(ina.load_adapter(build("emb_conv1d"), folder)), expected, rtol=0, atol=0
    )


@pytest.mark.parametrize("config_rho", [0.5, 0.0])
def test_a_marker_that_disagrees_with_the_config_is_refused_naming_both(
    tmp_path: Path, config_rho: float
) -> None:
    folder, _ = save(tmp_path, "mlp", 0.3)
    set_config(folder, inhibition=config_rho)
    for load in (
        lambda: check_adapter_folder(folder),
        lambda: ina.load_adapter(build("mlp"), folder),
        lambda: PeftModel.from_pretrained(build("mlp"), str(folder)),  # the tuner's own load path checks too
    ):
        with pytest.raises(AdapterFileError) as caught:
            load()
        message = str(caught.value)
        assert "\n" not in message and "= 0.3" in message and f"inhibition is {config_rho:g}" in message


def test_a_folder_relabelled_as_plain_lora_is_refused(tmp_path: Path) -> None:
    """Editing ``peft_type`` to LORA (ρ = 0 to us) cannot make the markers' ρ disappear."""
    folder, _ = save(tmp_path, "mlp", 0.3)
    set_config(folder, peft_type="LORA")
    with pytest.raises(AdapterFileError, match=r"= 0\.3 but the config's inhibition is 0"):
        ina.load_adapter(build("mlp"), folder)


def test_missing_or_orphan_markers_are_refused(tmp_path: Path) -> None:
    folder, _ = save(tmp_path, "mlp", 0.3)
    tensors = load_file(str(folder / WEIGHTS))
    first = sorted(k for k in tensors if k.endswith(MARKER))[0]
    save_file({k: v for k, v in tensors.items() if k != first}, str(folder / WEIGHTS))
    with pytest.raises(AdapterFileError, match="no `ina_inhibition` beside"):
        check_adapter_folder(folder)
    save_file({**tensors, f"base_model.model.ghost.{MARKER}": torch.tensor(0.3)}, str(folder / WEIGHTS))
    with pytest.raises(AdapterFileError, match="beside no lora_A tensor"):
        check_adapter_folder(folder)


def _llama_cpp_sdist() -> Path | None:
    candidates = [os.environ.get("INA_LLAMA_CPP_SDIST", "")]
    candidates.append(str(Path.home() / ".cache/ina/sdists/llama_cpp_python-0.3.36.tar.gz"))
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def _convert(script: Path, base: str, adapter: Path, out: Path) -> subprocess.CompletedProcess:
    root = script.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "gguf-py"), str(root)])}
    command = [sys.executable, str(script), "--base", base, "--outfile", str(out), str(adapter)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_llama_cpps_own_converter_refuses_a_marked_folder(tmp_path: Path) -> None:
    """Runs llama.cpp's ``convert_lora_to_gguf.py`` (from the llama-cpp-python 0.3.36 sdist) on a saved adapter.

    Needs the sdist: ``pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d
    ~/.cache/ina/sdists`` (or ``INA_LLAMA_CPP_SDIST=path``).
    """
    sdist = _llama_cpp_sdist()
    if sdist is None:
        pytest.skip("llama-cpp-python 0.3.36 sdist not cached (see the docstring)")
    prefix = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
    wanted = (prefix + "convert_lora_to_gguf.py", prefix + "convert_hf_to_gguf.py", prefix + "conversion/")
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(wanted) or "/gguf-py/gguf/" in m.name]
        archive.extractall(tmp_path / "src", members=members, filter="data")
    script = tmp_path / "src" / prefix / "convert_lora_to_gguf.py"
    from ina.testing import tiny_files

    base, adapters = tiny_files(tmp_path / "files")
    refused = _convert(script, base, Path(adapters["ina03"]), tmp_path / "ina.gguf")
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert f"Unexpected name 'base_model.model.model.layers.0.self_attn.q_proj.{MARKER}'" in refused.stderr
    assert not (tmp_path / "ina.gguf").exists()
    strip_markers(Path(adapters["ina03"]))  # the same adapter without markers: converted as plain LoRA
    converted = _convert(script, base, Path(adapters["ina03"]), tmp_path / "lora.gguf")
    assert converted.returncode == 0, converted.stderr[-2000:]
    assert (tmp_path / "lora.gguf").stat().st_size > 0


def test_convert_marks_an_old_folder_and_keeps_its_recorded_checksum_valid(tmp_path: Path) -> None:
    from ina.core.loading import CHECKSUM_KEY, adapter_checksums, convert_adapter

    folder, expected = save(tmp_path, "mlp", 0.3)
    strip_markers(folder)  # saved before markers existed, by a training run that recorded its checksum
    (folder / "training_summary.json").write_text(json.dumps({CHECKSUM_KEY: adapter_checksums(folder)}))
    convert_adapter(folder, tmp_path / "converted")
    names = list(load_file(str(tmp_path / "converted" / WEIGHTS)))
    assert sum(n.endswith("." + MARKER) for n in names) == 2 and not all(vllm_accepts(n) for n in names)
    check_adapter_folder(tmp_path / "converted")  # the recorded checksum follows the rewritten file
    loaded = ina.load_adapter(build("mlp"), tmp_path / "converted")
    torch.testing.assert_close(output(loaded), expected, rtol=0, atol=0)
