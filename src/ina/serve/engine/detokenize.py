"""Token ids in, text out, incrementally: per-token work does not grow with the length of the answer.

:class:`IncrementalDetokenizer` decodes only a short window of recent tokens at each step (the
approach of vLLM and Hugging Face's ``TextStreamer``). ``ids[prefix:read]`` is context that was
already turned into text; ``ids[read:]`` are new tokens. Each step decodes ``ids[prefix:]`` and
returns what lies past the text already returned, holding back a trailing U+FFFD (an incomplete
UTF-8 character whose remaining bytes are still to come). Once the window decodes to complete
characters it slides: the new tokens become the context of the next window. The context matters
for tokenizers that decode the first token of a sequence differently (SentencePiece drops its
leading space).

:class:`TextStream` adds stop strings on top, also incrementally: a stop string that ends in the
new text starts at most ``len(stop) - 1`` characters before it, so only that tail of the earlier
text is searched again, and only that much is held back from the client in case a stop string is
being spelt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"  # what decoding gives for bytes that do not (yet) form a character

# A UTF-8 character is at most 4 bytes, so a well-formed answer never holds back more than 4 tokens.
# Tokens that never form a character (garbage bytes from an untrained model) are let through once the
# window reaches this many new tokens, so that the window stays short whatever the model emits.
MAX_HELD_TOKENS = 8


class IncrementalDetokenizer:
    """Feed token ids one at a time with :meth:`push`; each call returns the new complete text.

    ``decode`` maps a list of token ids to text (e.g. ``tokenizer.decode(ids, skip_special_tokens=True)``).
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self.prefix = 0  # window start: ids[prefix:read] is context already returned as text
        self.read = 0  # first token of the window not yet returned in full
        self.done = 0  # characters of decode(ids[prefix:]) already returned

    def push(self, token_id: int) -> str:
        """Add one token; the text it completes (may be empty, e.g. half of a multi-byte character)."""
        self.ids.append(token_id)
        text = self._decode(self.ids[self.prefix :])
        complete = not text.endswith(REPLACEMENT) or len(self.ids) - self.read >= MAX_HELD_TOKENS
        end = len(text) if complete else len(text.rstrip(REPLACEMENT))
        new = text[self.done : end]
        self.done = max(self.done, end)
        if complete:
            self.prefix, self.read = self.read, len(self.ids)
            self.done = len(self._decode(self.ids[self.prefix : self.read]))
        return new

    def flush(self) -> str:
        """Whatever was held back (an incomplete character comes out as U+FFFD, as a full decode gives)."""
        text = self._decode(self.ids[self.prefix :])
        new = text[self.done :]
        self.done = max(self.done, len(text))
        return new


class TextStream:
    """Incremental detokenisation plus stop strings: what a row may send to its client after each token.

    :meth:`push` and :meth:`close` return ``(text, stopped)``; when ``stopped`` the text ends where the
    first stop string begins and the row is done.
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()) -> None:
        self.detokenizer = IncrementalDetokenizer(decode)
        self.stops = tuple(stop for stop in stops if stop)
        self.keep = max((len(stop) for stop in self.stops), default=1) - 1
        self.tail = ""  # the last `keep` characters searched: where a stop string may have begun
        self.pending = ""  # text not sent yet: it may be the start of a stop string

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one token; the text that is safe to send now, and whether a stop string appeared."""
        return self._take(self.detokenizer.push(token_id), final=False)

    def close(self) -> tuple[str, bool]:
        """The row ends: everything not sent yet (still cut at a stop string if one appears in it)."""
        return self._take(self.detokenizer.flush(), final=True)

    def _take(self, new: str, final: bool) -> tuple[str, bool]:
        if self.stops and new:
            window = self.tail + new
            hits = [i for i in (window.find(stop) for stop in self.stops) if i >= 0]
            if hits:
                # where the stop begins, counted in pending + new (negative: in text already sent)
                end = len(self.pending) + min(hits) - len(self.tail)
                text, self.pending = (self.pending + new)[: max(end, 0)], ""
                return text, True
            self.tail = window[-self.keep :] if self.keep else ""
        text = self.pending + new
        cut = len(text) if final else max(len(text) - self._held(), 0)
        text, self.pending = text[:cut], text[cut:]
        return text, False

    def _held(self) -> int:
        """How many characters at the end of the searched text could begin a stop string."""
        held = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.tail)), held, -1):
                if self.tail.endswith(stop[:k]):
                    held = k
                    break
        return held
