"""PEFT's per-method battery, run on InA: a table of (model, config) cases through the checks PEFT runs.

PEFT tests each of its methods on tiny custom models (``tests/test_custom_models.py``): forward in
each dtype, only adapter parameters train, save/load, disable/enable, delete, several active adapters,
mixed batches, requires_grad after loading, merging. Every case here goes through each of them; merging
is refused for ρ > 0 (the gate is not linear) and exact for ρ = 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_modules import build, randomize_adapters
from torch import nn

import ina
from ina import InAConfig, MergeRefusedError
from ina.core.layer import MARKER
from ina.core.registry import without_peft_deprecations

# (id, model, InAConfig keywords); r = 4, lora_alpha = 8 unless given
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("mlp", "mlp", {"target_modules": ["lin0"]}),
    ("mlp-both-gelu", "mlp", {"target_modules": ["lin0", "lin1"], "activation": "gelu"}),
    ("mlp-identity-0.9", "mlp", {"target_modules": ["lin0"], "activation": "identity", "inhibition": 0.9}),
    ("mlp-rho0", "mlp", {"target_modules": ["lin0", "lin1"], "inhibition": 0.0}),
    ("mlp-modules_to_save", "mlp", {"target_modules": ["lin0"], "modules_to_save": ["lin1"]}),
    (
        "mlp-rank_pattern",
        "mlp",
        {"target_modules": ["lin0", "lin1"], "rank_pattern": {"lin1": 2}, "alpha_pattern": {"lin1": 3}},
    ),
    ("mlp-rslora-dropout", "mlp", {"target_modules": ["lin0"], "use_rslora": True, "lora_dropout": 0.1}),
    ("conv1d", "emb_conv1d", {"target_modules": ["conv1d"], "fan_in_fan_out": True}),
    ("embedding", "emb_conv1d", {"target_modules": ["emb"]}),
    ("embedding-rho0", "emb_conv1d", {"target_modules": ["emb"], "inhibition": 0.0}),
    (
        "emb+conv1d-0.5",
        "emb_conv1d",
        {"target_modules": ["emb", "conv1d"], "inhibition": 0.5, "fan_in_fan_out": True},
    ),
    ("fused-qkv", "fused_qkv", {"target_modules": ["qkv"]}),
    (
        "fused-qkv-rho0-gelu",
        "fused_qkv",
        {"target_modules": ["qkv"], "inhibition": 0.0, "activation": "gelu"},
    ),
]
IDS = [case[0] for case in CASES]
FIELDS = ("inhibition", "activation", "negative_slope", "r", "lora_alpha", "target_modules", "rank_pattern")
FIELDS += ("alpha_pattern", "modules_to_save", "use_rslora", "lora_dropout", "fan_in_fan_out")
PARAMS = [case[1:] for case in CASES]


def config(kwargs: dict[str, Any], **changes: Any) -> InAConfig:
    return InAConfig(**{"r": 4, "lora_alpha": 8, "inhibition": 0.3, **kwargs, **changes})


def wrapped(model_name: str, kwargs: dict[str, Any], randomize: bool = True) -> PeftModel:
    model = get_peft_model(build(model_name), config(kwargs))
    if randomize:
        randomize_adapters(model)
    return model.eval()


def inputs(model: nn.Module) -> torch.Tensor:
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return type(base).inputs()


def run(model: nn.Module, **kwargs: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs(model), **kwargs)


def add_other(model: PeftModel, kwargs: dict[str, Any]) -> None:
    """A second adapter on the same modules with another ρ (and seed), so the two differ."""
    model.add_adapter("other", config(kwargs, inhibition=0.6 if kwargs.get("inhibition", 0.3) else 0.0))
    randomize_adapters(model, seed=2)
    model.eval()  # the new adapter's dropout modules start in training mode


def exact(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize("model_name, kwargs", PARAMS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_forward_in_each_dtype_with_and_without_autocast(
    model_name: str, kwargs: dict, dtype: torch.dtype
) -> None:
    model = wrapped(model_name, kwargs)
    reference = run(model)
    x = inputs(model)
    with torch.no_grad():
        cast = model.to(dtype)(x.to(dtype) if x.is_floating_point() else x)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            autocast = model.to(torch.float32)(x)
    tolerance = {torch.float16: 2e-2, torch.bfloat16: 1e-1, torch.float32: 0.0}[dtype]
    assert cast.dtype == dtype
    for output in (cast, autocast):
        assert torch.isfinite(output).all()
        torch.testing.assert_close(output.float(), reference, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("model_name, kwargs", PARAMS, ids=IDS)
def test_only_adapter_parameters_are_updated(model_name: str, kwargs: dict) -> None:
    """PEFT's criterion (lr 0.5, 3 SGD steps, tolerance 1e-4) from a fresh adapter, on a summed squared error.

    The factor that starts random (A; B for PEFT's LoRA embedding) moves only from the second step, so
    the loss must carry enough gradient; under ρ = 0.9 A's gradient is ~0.1× by the equation itself.
    """
    model = wrapped(model_name, {**kwargs, "lora_dropout": 0.0}, randomize=False).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    target = torch.randn(run(model).shape, generator=torch.Generator().manual_seed(5))
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(inputs(model)), target, reduction="sum").backward()
        optimizer.step()
    for name, parameter in model.named_parameters():
        trainable = "lora_" in name or "modules_to_save" in name
        assert parameter.requires_grad == trainable, name
        assert torch.allclose(parameter, before[name], atol=1e-4, rtol=1e-4) != trainable, name


@pytest.mark.parametrize("model_name, kwargs", PARAMS, ids=IDS)
def test_save_and_load_round_trip(tmp_path: Path, model_name: str, kwargs: dict) -> None:
    model = wrapped(model_name, kwargs)
    expected = run(model)
    model.save_pretrained(tmp_path)
    with without_peft_deprecations():
        by_peft = PeftModel.from_pretrained(build(model_name), str(tmp_path))
    exact(run(by_peft), expected)
    exact(run(ina.load_adapter(build(model_name), tmp_path)), expected)
    saved, loaded = model.peft_config["default"], by_peft.peft_config["default"]
    for field in FIELDS:
        assert getattr(loaded, field) == getattr(saved, field), field
    from safetensors.torch import load_file

    markers = [k for k in load_file(str(tmp_path / "adapter_model.safetensors")) if k.endswith(MARKER)]
    assert bool(markers) == (config(kwargs).inhibition > 0)


@pytest.mark.parametrize("model_name, kwargs", PARAMS, ids=IDS)
def test_disable_and_enable(model_name: str, kwargs: dict) -> None:
    model = wrapped(model_name, kwargs)
    base, adapted = run(build(model_name)), run(model)
    assert not torch.allclose(adapted, base)
    with model.disable_adapter():
        exact(run(model), base)
    exact(run(model), adapted)
    model.base_model.disable_adapter_layers()
    exact(run(model), base)
    model.base_model.enable_adapter_layers()
    exact(run(model), adapted)


@pytest.mark.parametrize("model_name, kwargs", PARAMS, ids=IDS)
def test_delete_adapter(model_name: str, kwargs: dict) -> None:
    model = wrapped(model_name, kwargs)
    adapted = run(model)
    add_other(model, kwargs)
    model.set_adapter("other")
    assert not torch.allclose(run(model), adapted)
    model.delete_adapter("other")
    assert model.active_adapters == ["default"] and "other" not in model.peft_config
    assert not any("other" in name for name, _ in model.named_parameters())
    assert not any("other" in getattr(m, "ina_gate", {}) for m in model.modules())
    model.set_adapter("default")
    randomize_adapters(model)  # the same seed: the default adapter's weights again
    exact(run(model), adapted)


@pytest.mark.parametrize("model_name, kwargs", PARAMS, ids=IDS)
def test_several_active_adapters_add_up_on_a_layer(model_name: str, kwargs: dict) -> None:
    """With two adapters active, the first adapted layer (same input every time) adds both branches."""
    model = wrapped(model_name, kwargs)
    add_other(model, kwargs)
    layer = model.base_model.model.get_submodule(kwargs["target_modules"][0])
    seen: list[torch.Tensor] = []
    layer.register_forward_hook(lambda module, args, output: seen.append(output))
    outputs = {}
    for active in (["default"], ["other"]):
        model.base_model.set_adapter(active)
        outputs[active[0]] = run(model)
    if kwargs.get("modules_to_save"):  # PEFT's limit, the same for LoRA
        with pytest.raises(ValueError, match="Only one adapter can be set at a time"):
            model.base_model.set_adapter(["default", "other"])
        return
    model.base_model.set_adapter(["default", "other"])
    both = run(model)
    with model.disable_adapter():
        run(model)
    first, second, together, base = seen
    torch.testing.assert_close(together - base, (first - base) + (second - base), rtol=1e-5, atol=1e-6)
    assert torch.isfinite(both).all()
    assert not torch.allclose(both, outputs["default"]) and not torch.allclose(both, outputs["other"])


@pytest.mark.parametrize("model_name, kwargs", PARAMS, ids=IDS)
def test_mixed_batch_rows_equal_each_adapter_alone(model_name: str, kwargs: dict) -> None:
    model = wrapped(model_name, kwargs)
    add_other(model, kwargs)
    names = ["default", "other", "__base__", "other"]
    mixed = run(model, adapter_names=names)
    alone = {}
    for name in ("default", "other"):
        model.set_adapter(name)
        alone[name] = run(model)
    alone["__base__"] = run(build(model_name))
    for row, name in enumerate(names):
        torch.testing.assert_close(mixed[row], alone[name][row], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("model_name, kwargs", PARAMS, ids=IDS)
def test_requires_grad_after_load(tmp_path: Path, model_name: str, kwargs: dict) -> None:
    wrapped(model_name, kwargs).save_pretrained(tmp_path)

    def trainable(model: nn.Module) -> set[str]:
        return {n for n, p in model.named_parameters() if p.requires_grad}

    adapter_params = {
        n for n, _ in wrapped(model_name, kwargs).named_parameters() if "lora_" in n or "modules_to_save" in n
    }
    with without_peft_deprecations():
        assert trainable(PeftModel.from_pretrained(build(model_name), str(tmp_path))) == set()
        assert trainable(PeftModel.from_pretrained(build(model_name), str(tmp_path), is_trainable=True)) == (
            adapter_params
        )
    assert trainable(ina.load_adapter(build(model_name), tmp_path)) == set()
    assert trainable(ina.load_adapter(build(model_name), tmp_path, is_trainable=True)) == adapter_params
    model = ina.load_adapter(build(model_name), tmp_path, is_trainable=True)
    ina.load_adapter(model, tmp_path, adapter_name="second")  # a second adapter, for inference only
    assert trainable(model) == adapter_params


@pytest.mark.parametrize("model_name, kwargs", PARAMS, ids=IDS)
def test_merge_refused_for_rho_above_zero_and_exact_for_rho_zero(model_name: str, kwargs: dict) -> None:
    model = wrapped(model_name, kwargs)
    adapted = run(model)
    if config(kwargs).inhibition > 0:
        for merge in (
            model.merge_and_unload,
            model.base_model.merge_adapter,
            lambda: model.merge_and_unload(True),
        ):
            with pytest.raises(MergeRefusedError, match="cannot merge InA adapter 'default'"):
                merge()
            exact(run(model), adapted)  # the model was left unchanged
        return
    model.base_model.merge_adapter()
    torch.testing.assert_close(run(model), adapted, rtol=1e-5, atol=1e-6)
    model.base_model.unmerge_adapter()
    torch.testing.assert_close(run(model), adapted, rtol=1e-5, atol=1e-6)
    merged = model.merge_and_unload()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(run(merged), adapted, rtol=1e-5, atol=1e-6)
