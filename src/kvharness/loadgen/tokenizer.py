"""Optional: hit a prompt length as a real model's tokenizer counts it.

Without a tokenizer the generator relies on the token contract (one common English word = one token),
which is exact on the simulated stacks and close on real ones. With ``tokenizer: PATH`` (a Hugging Face
``tokenizer.json``, the file every model repository ships; needs the ``tokenizers`` package, installed
by ``pip install 'kvharness[tokenizer]'``) each prompt's word count is corrected until the tokenizer
counts the requested number of tokens (special tokens and chat templates not included).
"""

from __future__ import annotations

import functools
import os

from kvharness.errors import SpecError


class TokenizerError(SpecError):
    pass


class PromptTokenizer:
    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise TokenizerError(f"tokenizer: expected a tokenizer.json file (Hugging Face format), no such file: {path}")
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise TokenizerError("tokenizer: needs the 'tokenizers' package: pip install 'kvharness[tokenizer]'") from None
        try:
            self._tok = Tokenizer.from_file(path)
        except Exception as e:  # the library raises its own exception types for a bad file
            raise TokenizerError(f"tokenizer: {path} is not a readable tokenizer.json: {e}") from None
        self.path = path
        self.tokens_per_word = 1.0  # learned from the last fit: the next one starts close
        # a short word that is one token after a space: tops up a prompt that a multi-token word
        # would otherwise leave a few tokens short
        self.filler = next((f" {w}" for w in ("a", "I", "the", "of", "and", "to") if self.count(f" {w}") == 1), None)

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def fit(self, target: int, text_of, max_rounds: int = 24) -> tuple[str, int, int]:
        """Words n such that ``text_of(n)`` counts ``target`` tokens; when a word of several tokens
        straddles the target, the closest count below it topped up with one-token filler words (or, if
        that does not count exactly, left below): returns (text, n_words, tokens). ``text_of(n)`` must be deterministic and grow with n. Proportional
        steps (from the last fit's tokens per word) until the target is bracketed, then bisection."""
        n = max(1, round(target / self.tokens_per_word))
        under = None  # (n, count, text) with count < target, the largest n seen
        over = None  # smallest n with count > target
        for _ in range(max_rounds):
            text = text_of(n)
            c = self.count(text)
            if c:
                self.tokens_per_word = c / n
            if c == target:
                return text, n, c
            if c < target:
                if under is None or n > under[0]:
                    under = (n, c, text)
            elif over is None or n < over:
                over = n
            if under is not None and over is not None:
                if over - under[0] <= 1:
                    break
                n = (under[0] + over) // 2
            else:
                step = round(n * target / c) if c else 2 * n
                n = max(1, step if step != n else (n + 1 if c < target else n - 1))
                if over is not None and n >= over:
                    n = over - 1
                if under is not None and n <= under[0]:
                    n = under[0] + 1
                if n < 1:
                    break
        if under is None:  # even one word counts more than the target
            text = text_of(1)
            return text, 1, self.count(text)
        n, c, text = under
        if self.filler:
            topped = text + self.filler * (target - c)
            c2 = self.count(topped)
            if c2 == target:
                return topped, n, c2
        return text, n, c


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str) -> PromptTokenizer:
    """One tokenizer per file per process: validating a spec and building its workload read it once."""
    return PromptTokenizer(path)
