"""Prompt templates: alpaca-lora's JSON files (``alpaca``, ``alpaca_zh``) and ``chat`` (the tokenizer's own).

A template file has ``prompt_input``, ``prompt_no_input`` (with ``{instruction}`` and ``{input}``) and
``response_split``, exactly like alpaca-lora's ``templates/*.json``; or ``"chat": true`` to use the
tokenizer's chat template. The same template object builds training examples (:meth:`segments`), and
prompts for generation and serving (:meth:`prompt`); :meth:`to_json` / :meth:`from_json` carry it in
an adapter's ``ina_prompt.json`` so every later user formats prompts the way training did.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ina.foundation.errors import UsageError
from ina.foundation.files import read_text

TEMPLATE_DIR = Path(__file__).parent
PROMPT_FILE = "ina_prompt.json"


@dataclass
class Conversation:
    """One training example: messages in order, and where it was read from."""

    messages: list[dict[str, str]]
    location: str
    format: str  # "alpaca", "sharegpt" or "messages"
    alpaca: dict[str, str] | None = None  # the original fields of an Alpaca record


def available_templates() -> list[str]:
    """Names of the templates shipped with ina."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.json"))


@dataclass(frozen=True)
class PromptTemplate:
    """How an instruction (and optional input) becomes the text a model sees."""

    name: str
    description: str = ""
    prompt_input: str = ""
    prompt_no_input: str = ""
    response_split: str = ""
    chat: bool = False

    @classmethod
    def load(cls, name_or_path: str, flag: str = "--prompt_template_name") -> PromptTemplate:
        """A shipped template by name (see :func:`available_templates`) or a template JSON file by path.

        Raises `UsageError` naming ``flag`` for an unknown name, a missing or malformed file.
        """
        path = Path(name_or_path)
        if path.suffix != ".json" or not path.is_file():
            path = TEMPLATE_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise UsageError(
                f"{flag} must be one of {available_templates()} or an existing template .json file; "
                f"got {name_or_path!r}"
            )
        what = "a template .json file (prompt_input, prompt_no_input, response_split)"
        try:
            data = json.loads(read_text(path, flag, what))
        except json.JSONDecodeError as error:
            raise UsageError(f"{flag} {name_or_path!r}: invalid JSON ({error}); give {what}") from None
        if not isinstance(data, dict):
            raise UsageError(f"{flag} {name_or_path!r} must hold a JSON object; give {what}")
        name = path.stem if path.parent == TEMPLATE_DIR else str(path)
        try:
            return cls.from_json({"name": name, **data})
        except UsageError as error:
            raise UsageError(f"{flag}: {error}") from None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PromptTemplate:
        """Rebuild a template from :meth:`to_json`'s output (or a template file's content plus ``name``)."""
        known = {"name", "description", "prompt_input", "prompt_no_input", "response_split", "chat"}
        template = cls(**{k: v for k, v in data.items() if k in known})
        fields = (template.prompt_input, template.prompt_no_input, template.response_split)
        if not all(isinstance(text, str) for text in fields) or (
            not template.chat
            and ("{instruction}" not in template.prompt_no_input or not template.prompt_input)
        ):
            raise UsageError(
                f"prompt template {template.name!r} needs `prompt_input` and `prompt_no_input` containing "
                '{instruction} (and {input}), or `"chat": true`'
            )
        return template

    def to_json(self) -> dict[str, Any]:
        """Everything needed to rebuild this template anywhere (written into ``ina_prompt.json``)."""
        return asdict(self)

    @classmethod
    def from_adapter(cls, adapter_path: str | os.PathLike[str]) -> PromptTemplate | None:
        """The template an adapter was trained with, from its ``ina_prompt.json`` (None if it has none)."""
        file = Path(adapter_path) / PROMPT_FILE
        if not file.is_file():
            return None
        return cls.from_json(json.loads(file.read_text(encoding="utf-8"))["template"])

    def problem(self, conversation: Conversation, tokenizer: Any) -> str | None:
        """Why ``conversation`` cannot be formatted with this template, or None if it can."""
        if self.chat:
            if not getattr(tokenizer, "chat_template", None):
                return "the `chat` template needs a tokenizer with a chat template; this one has none"
            return None
        roles = [m["role"] for m in conversation.messages]
        if roles != ["user", "assistant"]:
            return (
                f"the {self.name!r} template formats one instruction and one answer; this record has turns "
                f"{roles}: use --prompt_template_name chat for conversations"
            )
        return None

    def prompt(
        self, instruction: str, input: str = "", tokenizer: Any = None, system: str | None = None
    ) -> str:
        """The text a model is given to answer ``instruction`` (with optional ``input``)."""
        if self.chat:
            user = instruction if not input.strip() else f"{instruction}\n\n{input}"
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": user}
            ]
            return self.chat_prompt(messages, tokenizer)
        if input.strip():
            return self.prompt_input.format(instruction=instruction, input=input)
        return self.prompt_no_input.format(instruction=instruction)

    def chat_prompt(self, messages: list[dict[str, str]], tokenizer: Any) -> str:
        """The prompt for the next assistant turn after ``messages`` (chat template)."""
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("the `chat` prompt template needs a tokenizer with a chat template")
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def response(self, generated: str) -> str:
        """The answer part of a decoded generation (text after ``response_split``, if present)."""
        if self.response_split and self.response_split in generated:
            return generated.split(self.response_split, 1)[1].strip()
        return generated.strip()

    def segments(self, conversation: Conversation, tokenizer: Any) -> list[tuple[str, bool]]:
        """The conversation as consecutive text pieces, each marked trainable (an answer) or not (prompt)."""
        if not self.chat:
            if conversation.alpaca is not None:
                fields = conversation.alpaca
                prompt = self.prompt(fields["instruction"], fields["input"])
            else:
                prompt = self.prompt(conversation.messages[0]["content"])
            return [(prompt, False), (conversation.messages[-1]["content"], True)]
        messages = conversation.messages
        pieces: list[tuple[str, bool]] = []
        done = ""
        for end, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = (
                tokenizer.apply_chat_template(messages[:end], tokenize=False, add_generation_prompt=True)
                if end
                else ""
            )
            through = tokenizer.apply_chat_template(messages[: end + 1], tokenize=False)
            if not (before.startswith(done) and through.startswith(before)):
                raise ValueError(
                    "the tokenizer's chat template does not render a conversation as a growing prefix, so "
                    "answer tokens cannot be located; use --prompt_template_name alpaca"
                )
            pieces += [(before[len(done) :], False), (through[len(before) :], True)]
            done = through
        return [(text, trainable) for text, trainable in pieces if text]
