"""An InA adapter trained under torch FSDP (full shard, 2 gloo CPU processes): save, reload, resume.

    torchrun --nproc_per_node 2 fsdp_worker.py OUT_DIR

accelerate enables FSDP only on GPU-like devices, so `ina finetune` cannot run it on a CPU; this worker
drives torch's own FSDP2 (``fully_shard``) and its state-dict API (``torch.distributed.checkpoint
.state_dict``) the way a sharded run saves and resumes, and writes what it found to ``OUT_DIR/result.json``.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

STEPS, MORE = 2, 2
OPTIONS: dict[str, Any] = {"full_state_dict": True, "cpu_offload": True}


def peft_model() -> Any:
    from ina.foundation.harness import peft_model as wrap
    from ina.testing import tiny_model

    torch.manual_seed(0)
    config = _config()
    return wrap(tiny_model("llama"), config)


def _config() -> Any:
    from ina.core.config import InAConfig

    return InAConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], inhibition=0.3, task_type="CAUSAL_LM"
    )


def sharded() -> tuple[Any, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = peft_model()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.base_model.model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    return model, optimizer


def batch(step: int) -> torch.Tensor:
    """Each process's own batch of a step (data parallel), the same on every run."""
    return torch.randint(
        3, 500, (2, 12), generator=torch.Generator().manual_seed(100 * step + dist.get_rank())
    )


def train(model: Any, optimizer: Any, steps: range) -> None:
    model.train()
    for step in steps:
        ids = batch(step)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def adapter_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state.items() if "lora_" in k}


def main(out: Path) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    import ina
    from ina.foundation.harness import verify_adapter_files
    from ina.testing import tiny_model

    options = StateDictOptions(**OPTIONS)
    rank0 = dist.get_rank() == 0
    model, optimizer = sharded()
    local = {k: v.to_local().numel() for k, v in model.state_dict().items() if "lora_A" in k}
    train(model, optimizer, range(STEPS))
    # gathered on rank 0; copied, as saving does (some entries, like Adam's step, alias the live state)
    weights, optim = copy.deepcopy(get_state_dict(model, optimizer, options=options))
    result: dict[str, Any] = {"local_numel": local}
    if rank0:
        torch.save({"weights": weights, "optimizer": optim}, out / "checkpoint.pt")
        adapter_dir = out / "adapter"
        model.save_pretrained(adapter_dir, state_dict=weights)  # the Trainer's FULL_STATE_DICT save
        saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
        plain = peft_model()
        expected = get_peft_model_state_dict(plain)  # what a single-process run saves
        result["tensors"] = verify_adapter_files(adapter_dir, plain)
        result["shapes_match"] = {k: tuple(v.shape) for k, v in saved.items()} == {
            k: tuple(v.shape) for k, v in expected.items()
        }
        result["empty"] = [k for k, v in saved.items() if v.numel() == 0]
        gathered = adapter_of(weights)
        result["equals_gathered"] = all(
            torch.equal(saved[k], gathered[k.replace(".weight", ".default.weight")])
            for k in saved
            if "lora_" in k
        )
        result["trained"] = all(saved[k].abs().sum() > 0 for k in saved if "lora_B" in k)
        # the gathered weights in an unsharded model, against the saved folder loaded on a fresh base
        plain.load_state_dict(weights, strict=False)
        reloaded = ina.load_adapter(tiny_model("llama"), adapter_dir)
        ids = torch.randint(3, 500, (2, 10), generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            want, got = plain.eval()(input_ids=ids).logits, reloaded.eval()(input_ids=ids).logits
        result["reload_bit_exact"] = torch.equal(want, got)
    # uninterrupted: two more steps
    train(model, optimizer, range(STEPS, STEPS + MORE))
    straight, _ = get_state_dict(model, optimizer, options=options)
    # resumed: a fresh sharded model and optimizer loaded from the checkpoint, the same two steps
    fresh, fresh_optimizer = sharded()
    dist.barrier()  # the checkpoint is written
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    set_state_dict(
        fresh,
        fresh_optimizer,
        model_state_dict=checkpoint["weights"],
        optim_state_dict=checkpoint["optimizer"],
        options=StateDictOptions(full_state_dict=True),
    )
    _, restored = copy.deepcopy(get_state_dict(fresh, fresh_optimizer, options=options))
    train(fresh, fresh_optimizer, range(STEPS, STEPS + MORE))
    resumed, _ = get_state_dict(fresh, fresh_optimizer, options=options)
    if rank0:
        steps = {float(s["step"]) for s in restored["state"].values()}
        result["restored_steps"] = sorted(steps)
        result["optimizer_restored"] = all(
            torch.equal(restored["state"][k][name], optim["state"][k][name])
            for k in optim["state"]
            for name in ("exp_avg", "exp_avg_sq")
        )
        want, got = adapter_of(straight), adapter_of(resumed)
        result["resumed_equals_straight"] = want.keys() == got.keys() and all(
            torch.equal(want[k], got[k]) for k in want
        )
        result["moved_after_resume"] = any(not torch.equal(want[k], adapter_of(weights)[k]) for k in want)
        (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        main(Path(sys.argv[1]))
    finally:
        dist.destroy_process_group()
