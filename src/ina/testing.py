"""Tiny models and a local tokenizer, built offline in well under a second, for tests and demos.

Real architectures (LLaMA, BLOOM, GPT-2, BERT, RoBERTa, DeBERTa-v2) from small configs with random
weights, and a real byte-level BPE tokenizer (with a ChatML chat template) trained on a few sentences.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "I put my red bag in the black bag. What is the colour of my bag?",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction: ### Input: ### Response: positive negative neutral sentiment review movie film",
    "The quick brown fox jumps over the lazy dog. Tell me a joke about a cat and a dog.",
    "这个产品很好，我很喜欢。质量不好，不推荐。判断下面评论的情感：正面 负面",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) , . ! ? ' \" : ;",
]

# architecture -> (transformers config class name, causal-LM kwargs)
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "bloom": dict(hidden_size=32, n_layer=2, n_head=4),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=128),
    "bert": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    "roberta": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    "deberta-v2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
}
ENCODERS: tuple[str, ...] = ("bert", "roberta", "deberta-v2")


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    return tokenizer.to_str()


def tiny_tokenizer(vocab_size: int = 512) -> Any:
    """A real byte-level BPE `PreTrainedTokenizerFast` (any text round-trips) with a ChatML chat template.

    EOS is ``<|im_end|>``, padding ``<pad>``; ``len(tokenizer) <= vocab_size``.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json(vocab_size)),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(architecture: str = "llama", vocab_size: int = 512, **overrides: Any) -> Any:
    """A transformers config of ``architecture`` (one of :data:`ARCHITECTURES`) with tiny dimensions."""
    from transformers import AutoConfig

    if architecture not in ARCHITECTURES:
        raise ValueError(f"`architecture` must be one of {sorted(ARCHITECTURES)}; got {architecture!r}")
    # special-token ids match tiny_tokenizer(): <|im_start|> = 1, <|im_end|> = 2, <pad> = 3
    kwargs = {
        **ARCHITECTURES[architecture],
        "vocab_size": vocab_size,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 3,
        **overrides,
    }
    if architecture in ENCODERS:
        kwargs.setdefault("max_position_embeddings", 128)
        kwargs.setdefault("type_vocab_size", 2 if architecture != "roberta" else 1)
    return AutoConfig.for_model(architecture, **kwargs)


def tiny_model(architecture: str = "llama", head: str = "auto", seed: int = 0, **overrides: Any) -> nn.Module:
    """A randomly initialised tiny model: ``head`` is "causal-lm", "seq-cls", "qa", "base" or "auto"
    (causal LM for decoders, sequence classification for encoders)."""
    import transformers

    config = tiny_config(architecture, **overrides)
    if head == "auto":
        head = "seq-cls" if architecture in ENCODERS else "causal-lm"
    auto = {
        "causal-lm": transformers.AutoModelForCausalLM,
        "seq-cls": transformers.AutoModelForSequenceClassification,
        "qa": transformers.AutoModelForQuestionAnswering,
        "base": transformers.AutoModel,
    }[head]
    torch.manual_seed(seed)
    model = auto.from_config(config)
    return model.eval()


def save_demo_adapter(
    base: str | Path, out: str | Path, inhibition: float, seed: int, targets: list[str]
) -> None:
    """Save an InA adapter for ``base`` whose B matrices are random (non-zero), so it visibly changes answers."""
    from transformers import AutoModelForCausalLM

    from ina.core.config import InAConfig
    from ina.foundation.harness import peft_model

    config = InAConfig(
        r=4, lora_alpha=8, target_modules=targets, inhibition=inhibition, task_type="CAUSAL_LM"
    )
    model = peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    model.save_pretrained(out)


def tiny_files(root: str | Path) -> tuple[str, dict[str, str]]:
    """A tiny random LLaMA with its tokenizer and two demo InA adapters (ρ = 0.3 and 0.9) saved under ``root``."""
    root = Path(root)
    base = root / "tiny-llama"
    tiny_model("llama").save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    adapters = {}
    for seed, inhibition in enumerate((0.3, 0.9), start=1):
        name = f"ina{round(inhibition * 10):02d}"
        save_demo_adapter(base, root / name, inhibition, seed, ["q_proj", "v_proj"])
        adapters[name] = str(root / name)
    return str(base), adapters
