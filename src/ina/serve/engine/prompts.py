"""From a request to token ids: which model a request names, and its prompt in the right template."""

from __future__ import annotations

import threading
from typing import Any

from ina.foundation.adapters import BASE_ADAPTER
from ina.foundation.prompts import PromptTemplate
from ina.serve.engine.types import PromptError, UnknownModelError


class PromptEncoder:
    """Model ids and prompt encoding for one tokenizer, its adapters and their prompt templates.

    Args:
        tokenizer: the model's tokenizer (its chat template is used for chat requests when it has one).
        lock: held around every use of the tokenizer (fast tokenizers may refuse concurrent use).
        base_model_id: the model id that means the base model.
        adapters: the adapter names, each a model id.
        templates: adapter name -> the prompt template it was trained with (``ina_prompt.json``).
        context_length: the model's context, in tokens.
    """

    def __init__(
        self,
        tokenizer: Any,
        lock: threading.Lock,
        base_model_id: str,
        adapters: list[str],
        templates: dict[str, PromptTemplate],
        context_length: int,
    ) -> None:
        self.tokenizer, self.lock = tokenizer, lock
        self.base_model_id, self.adapters, self.templates = base_model_id, adapters, templates
        self.context_length = context_length
        self.default_template = PromptTemplate.load("alpaca")  # for adapters trained without ina_prompt.json

    @property
    def model_ids(self) -> list[str]:
        """The base model id followed by every adapter name."""
        return [self.base_model_id, *self.adapters]

    def resolve(self, model_id: str) -> str:
        """The adapter name for request field ``model`` ("__base__" for the base model id)."""
        if model_id == self.base_model_id or model_id == BASE_ADAPTER:
            return BASE_ADAPTER
        if model_id in self.adapters:
            return model_id
        raise UnknownModelError(model_id, self.model_ids)

    def encode_text(self, text: str, param: str = "prompt") -> list[int]:
        """Token ids of a raw completion prompt."""
        with self.lock:
            ids = list(self.tokenizer(text)["input_ids"])
        if not ids:
            if self.tokenizer.bos_token_id is None:
                raise PromptError(f"`{param}` must not be empty; got {text!r}", param)
            ids = [self.tokenizer.bos_token_id]
        return ids

    def encode_chat(self, model_id: str, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat, rendered with the tokenizer's chat template.

        An adapter trained on instruction prompts (its ``ina_prompt.json`` names e.g. "alpaca") gets
        the last user message as the instruction, in that template, as it saw in training.
        """
        template = self.templates.get(self.resolve(model_id))
        if template is not None and not template.chat:
            users = [m["content"] for m in messages if m["role"] == "user"]
            if not users:
                raise PromptError(
                    f"`messages` must contain a user message for {model_id!r} (an instruction-tuned adapter)",
                    "messages",
                )
            return self.encode_text(template.prompt(users[-1]), "messages")
        if getattr(self.tokenizer, "chat_template", None):
            with self.lock:
                text = self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
                return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return self.encode_text(text, "messages")

    def encode_instruction(self, model_id: str, instruction: str, input: str = "") -> list[int]:
        """Token ids of an instruction prompt (the seed's ``/completion``).

        The template is the one the adapter was trained with (its ``ina_prompt.json``), else Alpaca's;
        a ``chat`` template sends instruction and input as one user turn through the chat template.
        """
        template = self.templates.get(self.resolve(model_id)) or self.default_template
        if template.chat:
            user = instruction if not input.strip() else f"{instruction}\n\n{input}"
            return self.encode_chat(model_id, [{"role": "user", "content": user}])
        return self.encode_text(template.prompt(instruction, input), "instruction")

    def check_length(self, prompt_ids: list[int], max_tokens: int, param: str) -> None:
        """Refuse a prompt that, with ``max_tokens`` new tokens, does not fit the model's context."""
        if len(prompt_ids) + max_tokens > self.context_length:
            raise PromptError(
                f"the prompt ({len(prompt_ids)} tokens) plus `max_tokens` ({max_tokens}) must fit the model's "
                f"context of {self.context_length} tokens; shorten `{param}` or lower `max_tokens`",
                param,
                "context_length_exceeded",
            )

    def decode(self, token_ids: list[int]) -> str:
        """Text of ``token_ids`` without special tokens."""
        with self.lock:
            return self.tokenizer.decode(token_ids, skip_special_tokens=True)
