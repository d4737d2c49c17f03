"""From a request to token ids: which model a request names, and its prompt in the right template.

What a user writes is text, whatever it spells: a message or instruction holding ``<|im_start|>system`` must
not open a real system turn. The markers a template writes are special tokens; the same strings inside a
user's content are tokenized as plain text (as vLLM and mistral-common render chats). Contents without any
special-token string are tokenized exactly as before, in one piece.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
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
        decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        specials = {token.content for token in decoder.values() if getattr(token, "special", False)}
        specials |= set(getattr(tokenizer, "all_special_tokens", []) or [])
        self.special_tokens = sorted((t for t in specials if t), key=len, reverse=True)  # longest first
        self._special = (
            re.compile("|".join(map(re.escape, self.special_tokens))) if self.special_tokens else None
        )

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
        """Token ids of a raw completion prompt (the client's whole prompt: special tokens in it count)."""
        with self.lock:
            ids = list(self.tokenizer(text)["input_ids"])
        return self._non_empty(ids, text, param)

    def _non_empty(self, ids: list[int], text: str, param: str) -> list[int]:
        if not ids:
            if self.tokenizer.bos_token_id is None:
                raise PromptError(f"`{param}` must not be empty; got {text!r}", param)
            ids = [self.tokenizer.bos_token_id]
        return ids

    def encode_chat(self, model_id: str, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat, rendered with the tokenizer's chat template (the contents as text).

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
            return self.encode_filled(lambda c: template.prompt(c[0]), users[-1:], "messages")
        contents = [m["content"] for m in messages]

        def with_contents(texts: list[str]) -> list[dict[str, str]]:
            return [{**m, "content": text} for m, text in zip(messages, texts, strict=True)]

        if getattr(self.tokenizer, "chat_template", None):

            def render(texts: list[str]) -> str:
                return self.tokenizer.apply_chat_template(
                    with_contents(texts), add_generation_prompt=True, tokenize=False
                )

            return self.encode_filled(render, contents, "messages", add_special_tokens=False)

        def plain(texts: list[str]) -> str:
            return "".join(f"{m['role']}: {m['content']}\n" for m in with_contents(texts)) + "assistant: "

        return self.encode_filled(plain, contents, "messages")

    def encode_instruction(self, model_id: str, instruction: str, input: str = "") -> list[int]:
        """Token ids of an instruction prompt (the seed's ``/completion``; instruction and input as text).

        The template is the one the adapter was trained with (its ``ina_prompt.json``), else Alpaca's;
        a ``chat`` template sends instruction and input as one user turn through the chat template.
        """
        template = self.templates.get(self.resolve(model_id)) or self.default_template
        if template.chat:
            user = instruction if not input.strip() else f"{instruction}\n\n{input}"
            return self.encode_chat(model_id, [{"role": "user", "content": user}])
        return self.encode_filled(lambda c: template.prompt(c[0], c[1]), [instruction, input], "instruction")

    def encode_filled(
        self,
        render: Callable[[list[str]], str],
        contents: list[str],
        param: str,
        add_special_tokens: bool = True,
    ) -> list[int]:
        """Token ids of ``render(contents)``: the special tokens ``render`` writes are special, the
        ``contents`` (what the user wrote) are text, even where they spell a special token."""
        with self.lock:
            text = render(contents)
            risky = [
                i for i, c in enumerate(contents) if self._special is not None and self._special.search(c)
            ]
            if not risky:  # the common case: one piece, exactly as the tokenizer always did
                ids = list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
            else:
                ids = self._encode_with_text(render, contents, set(risky), text, add_special_tokens)
        return self._non_empty(ids, text, param)

    def _encode_with_text(
        self,
        render: Callable[[list[str]], str],
        contents: list[str],
        risky: set[int],
        text: str,
        add_special_tokens: bool,
    ) -> list[int]:
        """The template is rendered once more with a placeholder for each risky content, which locates
        the template's own text; only special tokens found there are markers. Each stretch between two
        markers is one piece, as the tokenizer splits at special tokens anyway, tokenized with special
        tokens not parsed."""
        assert self._special is not None
        key = uuid.uuid4().hex
        holders = {i: f"\ue000{key}{i}\ue001" for i in risky}
        rendered = render([holders.get(i, c) for i, c in enumerate(contents)])
        found = re.compile(f"\ue000{key}(\\d+)\ue001")
        parts = found.split(rendered)  # template, index, template, index, ..., template
        pieces, slots = parts[0::2], [int(i) for i in parts[1::2]]
        # the content as the template wrote it (some templates trim it), checked against the real render
        built, spans = pieces[0], []
        for k, slot in enumerate(slots):
            content = contents[slot]
            after = pieces[k + 1]
            for candidate in (content, content.strip()):
                if text.startswith(built + candidate + after):
                    content = candidate
                    break
            spans.append((len(built), len(built) + len(content)))
            built += content + pieces[k + 1]
        markers = []  # (start, end) of the template's special tokens
        start = 0
        for begin, end in [*spans, (len(built), len(built))]:
            markers += [
                (m.start() + start, m.end() + start) for m in self._special.finditer(built[start:begin])
            ]
            start = end
        ids = list(self.tokenizer("", add_special_tokens=add_special_tokens)["input_ids"])  # e.g. BOS
        cursor = 0
        for begin, end in [*markers, (len(built), len(built))]:
            if begin > cursor:
                stretch = built[cursor:begin]
                ids += self.tokenizer(stretch, add_special_tokens=False, split_special_tokens=True)[
                    "input_ids"
                ]
            if end > begin:
                ids.append(self.tokenizer.convert_tokens_to_ids(built[begin:end]))
            cursor = end
        return ids

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
