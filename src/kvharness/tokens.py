"""The token contract between the load generator and the simulated stacks.

A token is one whitespace-separated word. The simulator counts and hashes prompts this way (its KV
blocks hash chained token ids), and the load generator builds prompts of exactly N words, so a
requested context length is hit exactly on the simulated stacks. Real stacks count with their own
tokenizer; records always keep the server's ``usage.prompt_tokens``.
"""

from __future__ import annotations

import zlib
from typing import Iterable, Mapping


def split_words(text: str) -> list[str]:
    return text.split()


def count_tokens(text: str) -> int:
    return len(text.split())


def token_ids(text: str) -> list[int]:
    """Deterministic token ids (CRC32 of each word): equal prompts give equal ids on every run."""
    return [zlib.crc32(w.encode()) for w in text.split()]


def chat_prompt_text(messages: Iterable[Mapping]) -> str:
    """The text the simulator tokenizes for a chat request: every message's content, in order.

    A role word is prepended per message so that the history of a multi-turn chat forms a stable,
    growing prefix of the next turn's prompt (which is what prefix reuse needs).
    """
    parts: list[str] = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        parts.append(f"<{m.get('role', 'user')}> {content or ''}")
    return " ".join(parts)
