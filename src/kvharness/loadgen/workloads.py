"""Workloads: what each scheduled request asks for.

Prompts follow the token contract (``kvharness.tokens``): one whitespace-separated word = one token,
and a chat prompt counts ``<role>`` once per message, so a request for N context tokens is exactly N
tokens on the simulated stacks. Words are common English words (one token each in the usual BPE
vocabularies), so real stacks land close to N too; records keep the server's ``prompt_tokens``.

Prefix caching: with ``nonce: "prefix"`` the FIRST word of every prompt is unique per request, so no
two prompts share even their first KV block; ``nonce: "per_user"`` makes the nonce the closed-loop
user's, so each user resends its own prompt and users never share a prefix (the working set is
users x prompt); ``shared_prefix_ratio`` r puts round(r*N) words of a per-group prefix before the
nonce, so exactly that share is reusable.

Hot set + scan (``scan_share`` s, ``scan_tokens`` M): a share s of the requests, drawn at random, are
one-off *scan* prompts of M tokens (default: the request's own length) whose first words are a nonce no
other request uses, interleaved with the workload's normal, reusable requests (the *hot set*: a user's
own prompt with ``nonce: per_user``, or the prefix groups). A recency policy (LRU) is flushed by the scan;
a frequency policy (LFU) keeps the hot set. Records carry ``bucket`` ``hot`` or ``scan``.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
from collections import deque
from typing import Any

VOCAB = (
    "the of and to in is was for on are with as at be by this have from or one had not but what all "
    "were when we there can an your which their said if do will each about how up out them then she "
    "many some so these would other into has more her two like him see time could no make than first "
    "been its who now people my made over did down only way find use may water long little very after "
    "words called just where most know get through back much go good new write our me man too any day "
    "same right look think also around another came come work three word must because does part even "
    "place well such here take why things help put years different away again off went old number"
).split()


def id_words(value: int, k: int) -> list[str]:
    """``value`` as ``k`` vocabulary words, least significant first (a unique, tokenizer-friendly id:
    each word is one token for the simulator and for the usual BPE vocabularies)."""
    out = []
    for _ in range(k):
        value, digit = divmod(value, len(VOCAB))
        out.append(VOCAB[digit])
    return out


NONCE_WORDS = 6  # 4 words of request number (140**4 ~ 384 M per run) + 2 words of run tag
SCAN_KEY_BASE = 140**4 // 2  # scan nonces count from here: never a user's or an early request's nonce


class Corpus:
    """A deterministic word sequence with O(1) 'first n words' slicing."""

    def __init__(self, seed: int, n_words: int = 8192):
        rng = random.Random(seed)
        words = [rng.choice(VOCAB) for _ in range(n_words)]
        self.text = " ".join(words)
        self.ends = list(itertools.accumulate(len(w) + 1 for w in words))  # end offset (+1) of word i
        self.n = n_words

    def grow(self, n_words: int) -> None:
        if n_words > self.n:
            more = Corpus(self.n + 1, n_words - self.n)
            base = self.ends[-1]
            self.text = self.text + " " + more.text
            self.ends.extend(base + e for e in more.ends)
            self.n = n_words

    def words(self, n: int) -> str:
        """The first ``n`` words as one string ('' for n <= 0)."""
        if n <= 0:
            return ""
        if n > self.n:
            self.grow(n)
        return self.text[: self.ends[n - 1] - 1]


class Request:
    """A request to send: its endpoint path, JSON body and record labels."""

    __slots__ = ("path", "body", "labels", "keep_text", "messages")

    def __init__(self, path: str, body: bytes, labels: dict, keep_text: bool = False, messages=None):
        self.path = path
        self.body = body
        self.labels = labels
        self.keep_text = keep_text
        self.messages = messages


class AdapterPicker:
    """LoRA churn: which adapter the next request uses."""

    def __init__(self, lora: dict, seed: int):
        self.adapters = lora["adapters"]
        self.policy = lora["policy"]
        self.send_as = lora["send_as"]
        self.rng = random.Random(seed * 31 + 5)
        self.i = 0
        n_hot = max(1, round(lora["hot_ratio"] * len(self.adapters)))
        self.hot = self.adapters[:n_hot]
        self.cold = self.adapters[n_hot:] or self.adapters
        self.hot_prob = lora["hot_prob"]

    def pick(self) -> str:
        if self.policy == "round_robin":
            name = self.adapters[self.i % len(self.adapters)]
            self.i += 1
            return name
        if self.policy == "random":
            return self.rng.choice(self.adapters)
        pool = self.hot if self.rng.random() < self.hot_prob else self.cold
        return self.rng.choice(pool)


class Workload:
    """Turns tickets into requests. Subclasses implement ``prompt_for``."""

    def __init__(self, spec: dict):
        self.spec = spec
        w = spec["workload"]
        self.w = w
        self.chat = spec["endpoint"] == "chat"
        self.path = "/v1/chat/completions" if self.chat else "/v1/completions"
        self.model = spec["model"]
        self.stream = spec["stream"]
        self.rng = random.Random(spec["seed"])
        self.corpus = Corpus(spec["seed"] + 1)
        self.run_tag = random.Random().getrandbits(32)  # differs per run: defeats caches across runs
        self._tag_words = None
        self.nonce = w.get("nonce", "prefix") in ("prefix", "per_user")
        self.per_user = w.get("nonce") == "per_user"
        if self.per_user:
            self.ticket_free = False  # the prompt depends on the ticket's user
        self.lora = AdapterPicker(spec["lora"], spec["seed"]) if spec.get("lora") else None
        self.extra = dict(spec.get("extra_body") or {})
        self.ignore_eos = spec["ignore_eos"]
        self.seq = 0
        ratio = w.get("shared_prefix_ratio", 0.0) or 0.0
        self.prefix_ratio = ratio
        self.prefix_groups = w.get("prefix_groups", 1)
        self._prefix_corpora: dict[int, Corpus] = {}
        self.scan_share = float(w.get("scan_share") or 0.0)
        self.scan_tokens = w.get("scan_tokens")
        self.scan_rng = random.Random(spec["seed"] * 7919 + 17)  # its own stream: other draws do not move
        self.tokenizer = None
        if spec.get("tokenizer"):
            from kvharness.loadgen.tokenizer import load_tokenizer
            self.tokenizer = load_tokenizer(spec["tokenizer"])

    # ---- prompt text ----

    def nonce_words(self, seq: int, max_words: int = NONCE_WORDS) -> tuple[str, int]:
        """The request's nonce: up to NONCE_WORDS words, the first varying fastest; (text, words)."""
        tag = self._tag_words
        if tag is None:
            tag = self._tag_words = id_words(self.run_tag, 2)
        words = (id_words(seq, 4) + tag)[:max(0, max_words)]
        return " ".join(words), len(words)

    def text_of(self, n_words: int, seq: int) -> tuple[str, int | None]:
        """``n_words`` words: [group prefix] [nonce] body; returns (text, prefix group or None)."""
        group = None
        parts = []
        left = n_words
        if self.prefix_ratio > 0 and n_words > 1:
            group = seq % self.prefix_groups
            k = min(left, round(self.prefix_ratio * n_words))
            if k > 0:
                c = self._prefix_corpora.get(group)
                if c is None:
                    c = self._prefix_corpora[group] = Corpus(10_000 + group)
                gw = id_words(group, 2)[:k]
                parts.append(" ".join(gw) + (" " + c.words(k - len(gw)) if k > len(gw) else ""))
                left -= k
        if self.nonce and left > 0:
            text, used = self.nonce_words(seq, left)
            parts.append(text)
            left -= used
        if left > 0:
            parts.append(self.corpus.words(left))
        return " ".join(parts), group

    # ---- request body ----

    def body(self, prompt_or_messages: Any, output_tokens: int, adapter: str | None = None) -> tuple[dict, str | None]:
        body: dict = {"model": self.model}
        if self.lora is not None:
            adapter = adapter or self.lora.pick()
            if self.lora.send_as == "model":
                body["model"] = adapter
            else:
                body["adapter_id"] = adapter
        if self.chat:
            body["messages"] = prompt_or_messages
        else:
            body["prompt"] = prompt_or_messages
        body["max_tokens"] = output_tokens
        if self.ignore_eos:
            body["ignore_eos"] = True
        body["stream"] = self.stream
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        if self.extra:
            body.update(self.extra)
        return body, adapter

    def simple_request(self, n_tokens: int, output_tokens: int, labels: dict, key: int | None = None) -> Request:
        """A one-message request of ``n_tokens``; ``key`` (a user) replaces the request number as the
        nonce and group key, so equal keys give equal prompts."""
        seq = self.seq if key is None else key
        self.seq += 1
        want = max(1, n_tokens - 1) if self.chat else n_tokens  # chat: "<user>" counts as one token
        if self.tokenizer is not None:  # as many words as make `want` tokens for the model's tokenizer
            groups = {}

            def words(n: int) -> str:
                t, groups[n] = self.text_of(n, seq)
                return t

            text, n, labels["client_prompt_tokens"] = self.tokenizer.fit(want, words)
            group = groups[n]
        else:
            text, group = self.text_of(want, seq)
        payload: Any = [{"role": "user", "content": text}] if self.chat else text
        body, adapter = self.body(payload, output_tokens)
        labels["context_tokens"] = n_tokens
        labels["adapter_id"] = adapter
        labels["model"] = body["model"]
        if group is not None:
            labels["prefix_group"] = group
        return Request(self.path, json.dumps(body).encode(), labels)

    def scan_or_none(self, n_tokens: int) -> Request | None:
        """With probability ``scan_share``: a one-off scan request (unique nonce first, no group prefix)."""
        if self.scan_share <= 0 or self.scan_rng.random() >= self.scan_share:
            return None
        n = int(self.scan_tokens or n_tokens)
        seq = SCAN_KEY_BASE + self.seq
        self.seq += 1
        want = max(1, n - 1) if self.chat else n
        nonce, used = self.nonce_words(seq, want)
        text = nonce + (" " + self.corpus.words(want - used) if want > used else "")
        payload: Any = [{"role": "user", "content": text}] if self.chat else text
        body, adapter = self.body(payload, self.w["output_tokens"])
        labels = {"bucket": "scan", "context_tokens": n, "adapter_id": adapter, "model": body["model"]}
        return Request(self.path, json.dumps(body).encode(), labels)

    #: True when a request does not depend on its ticket, so requests can be built ahead of time
    ticket_free = False

    def build(self, ticket) -> Request:  # pragma: no cover - abstract
        raise NotImplementedError

    def next_request(self, ticket) -> Request:
        """The request for ``ticket``: a prebuilt one when available (keeps JSON encoding off the
        send path), else built now."""
        pre = getattr(self, "_prebuilt", None)
        if pre:
            return pre.popleft()
        return self.build(ticket)

    def prebuild(self, n: int) -> int:
        """Build up to ``n`` requests ahead (ticket-free workloads only); returns how many are ready."""
        if not self.ticket_free:
            return 0
        pre = getattr(self, "_prebuilt", None)
        if pre is None:
            pre = self._prebuilt = deque()
        while len(pre) < n:
            pre.append(self.build(None))
        return len(pre)

    def completed(self, ticket, request: Request, ok: bool, text: str) -> None:
        """Called when a request finished (sessions append the reply to their history)."""


class FixedContext(Workload):
    ticket_free = True

    def build(self, ticket) -> Request:
        scan = self.scan_or_none(self.w["context_tokens"])
        if scan is not None:
            return scan
        key = ticket.user if self.per_user and ticket is not None else None
        bucket = "hot" if self.scan_share > 0 else None
        return self.simple_request(self.w["context_tokens"], self.w["output_tokens"], {"bucket": bucket}, key)


class MixedContext(Workload):
    ticket_free = True

    def __init__(self, spec: dict):
        super().__init__(spec)
        self.buckets = self.w["buckets"]
        total = sum(b["weight"] for b in self.buckets)
        self.cum = list(itertools.accumulate(b["weight"] / total for b in self.buckets))

    def build(self, ticket) -> Request:
        i = min(bisect.bisect_left(self.cum, self.rng.random()), len(self.buckets) - 1)
        b = self.buckets[i]
        n = self.rng.randint(b["min_tokens"], b["max_tokens"])
        scan = self.scan_or_none(n)
        if scan is not None:
            return scan
        key = ticket.user if self.per_user and ticket is not None else None
        return self.simple_request(n, self.w["output_tokens"], {"bucket": b["name"]}, key)


def trace_lengths(row: dict, workload: dict) -> tuple[int, int]:
    """(prompt, output) tokens of one trace row after the block mapping of ``workload``
    (``block_tokens`` per replayed block, ``trace_block_tokens`` per trace block; null = the same)."""
    b = int(workload["block_tokens"])
    tb = workload.get("trace_block_tokens") or b  # null: the trace's blocks are replayed at their own size
    n_in = int(row["input_length"])
    n = max(1, (n_in // tb) * b + (n_in % tb) * b // tb)
    out = workload.get("output_tokens") or max(1, round(int(row["output_length"]) * b / tb))
    return n, out


class TraceWorkload(Workload):
    """Mooncake rows: prompt = one block of ``block_tokens`` words per hash id (equal ids = equal
    blocks, distinguished by their first words), cut or padded to ``input_length``.

    Block mapping: a trace block is ``trace_block_tokens`` (Mooncake: 512) tokens; replayed as ``block_tokens``
    words per block, every length is scaled by ``block_tokens / trace_block_tokens`` so that a prompt
    keeps exactly its number of full trace blocks (``input_length // trace_block_tokens`` full blocks,
    then the partial block's share, rounded down), hence the trace's block reuse structure exactly;
    ``output_length`` is scaled by the same ratio (at least 1 token)."""

    def __init__(self, spec: dict):
        super().__init__(spec)
        self.block = self.w["block_tokens"]
        self.id_k = min(3, self.block)  # words naming the block's hash id (140**3 ~ 2.7 M ids)
        self.block_body = self.corpus.words(self.block - self.id_k)

    def lengths(self, row: dict) -> tuple[int, int]:
        """(prompt, output) tokens of a row after the block mapping."""
        return trace_lengths(row, self.w)

    def prompt_words(self, row: dict, seq: int) -> str:
        n = int(row["input_length"])  # already mapped by build()
        parts = []
        left = n
        for hid in row.get("hash_ids") or ():
            if left <= 0:
                break
            head = " ".join(id_words(hid, self.id_k))
            if left >= self.block:
                parts.append(f"{head} {self.block_body}" if self.block_body else head)
                left -= self.block
            else:
                head = " ".join(head.split()[:left])
                k = len(head.split())
                parts.append(head + (" " + self.corpus.words(left - k) if left > k else ""))
                left = 0
        if left > 0:  # no hash id covers the tail: unique words
            text, used = self.nonce_words(seq, left)
            parts.append(text + (" " + self.corpus.words(left - used) if left > used else ""))
        return " ".join(parts)

    def build(self, ticket) -> Request:
        row = ticket.item
        seq = self.seq
        self.seq += 1
        n, out = self.lengths(row)
        if self.chat:  # the role word is the first token
            text = self.prompt_words({**row, "input_length": max(1, n - 1)}, seq)
            payload: Any = [{"role": "user", "content": text}]
        else:
            payload = self.prompt_words({**row, "input_length": n}, seq)
        body, adapter = self.body(payload, out)
        labels = {"bucket": None, "context_tokens": n, "adapter_id": adapter, "model": body["model"],
                  "trace_ts_ms": row["timestamp"]}
        return Request(self.path, json.dumps(body).encode(), labels)


class SessionedChat(Workload):
    """Multi-turn chat: every turn resends the session's full history plus new user text.

    The first turn of a session has ``first_turn_tokens`` words (or a length drawn per session from
    ``first_turn_buckets``, the mixed-context buckets; its first word is the session's
    nonce, so sessions do not share a prefix with each other but each session's history is a stable
    prefix of its next turn), later turns add ``turn_tokens`` words. Eviction-pressure requests
    (phase ``pressure``) are unique single-message prompts of ``pressure.context_tokens``. With
    ``cold_resume`` the first resume turn of a session resends a history of the same lengths in new
    words (the cold control: nothing of it is cached anywhere).
    """

    def __init__(self, spec: dict):
        super().__init__(spec)
        self.history: dict[str, list[dict]] = {}
        self.spec_seed = spec["seed"]
        self.history_tokens: dict[str, int] = {}
        self.session_adapter: dict[str, str] = {}

    def build(self, ticket) -> Request:
        if ticket.phase == "pressure":
            pressure = self.w["pressure"]
            req = self.simple_request(pressure["context_tokens"], pressure["output_tokens"], {"bucket": "pressure"})
            return req
        sid = ticket.session_id
        hist = self.history.setdefault(sid, [])
        seq = self.seq
        self.seq += 1
        if hist and ticket.phase == "resume" and self.w.get("cold_resume"):
            hist = self._fresh_history(hist, seq)  # the cold control: same lengths, no shared prefix
        if not hist:
            n = max(1, self.first_turn_tokens(sid) - 1)  # "<user>" is the first token
            nonce, used = self.nonce_words(seq, n) if self.nonce else ("", 0)
            text = " ".join(x for x in (nonce, self.corpus.words(n - used)) if x)
        else:
            text = self.corpus.words(max(1, self.w["turn_tokens"] - 1))
        msg = {"role": "user", "content": text}
        messages = hist + [msg]
        # A session keeps the adapter of its first turn (a chat talks to one fine-tune; KV of one adapter
        # never matches another's, so switching would throw the session's history away).
        adapter = self.session_adapter.get(sid)
        if adapter is None and self.lora is not None:
            adapter = self.session_adapter[sid] = self.lora.pick()
        body, adapter = self.body(messages, self.w["output_tokens"], adapter)
        ctx = self.history_tokens.get(sid, 0) + 1 + len(text.split())
        labels = {"bucket": None, "context_tokens": ctx, "adapter_id": adapter, "model": body["model"]}
        return Request(self.path, json.dumps(body).encode(), labels, keep_text=True, messages=messages)

    def first_turn_tokens(self, sid: str) -> int:
        """``first_turn_tokens``, or a length drawn from ``first_turn_buckets`` (weight, then uniform in
        the bucket) by a generator seeded with the run seed and the session, so it is the same every run."""
        buckets = self.w.get("first_turn_buckets")
        if not buckets:
            return self.w["first_turn_tokens"]
        rng = random.Random(f"{self.spec_seed}:{sid}")
        total = sum(b["weight"] for b in buckets)
        x, acc = rng.random() * total, 0.0
        for b in buckets:
            acc += b["weight"]
            if x < acc:
                break
        return rng.randint(b["min_tokens"], b["max_tokens"])

    def _fresh_history(self, hist: list[dict], seq: int) -> list[dict]:
        """The history with every message replaced by new words of the same count (the first starting
        with a fresh nonce), so nothing of it can be found in any KV tier."""
        out = []
        for i, m in enumerate(hist):
            n = len(m["content"].split())
            if i == 0:
                nonce, used = self.nonce_words(seq, n)
                text = " ".join(x for x in (nonce, self.corpus.words(n - used) if n > used else "") if x)
            else:
                text = self.corpus.words(n) if n else ""
            out.append({"role": m["role"], "content": text})
        return out

    def completed(self, ticket, request: Request, ok: bool, text: str) -> None:
        if ticket.phase == "pressure" or not ok:
            return
        sid = ticket.session_id
        user_msg = request.messages[-1]
        reply = {"role": "assistant", "content": text}
        self.history[sid] = request.messages + [reply]
        self.history_tokens[sid] = (self.history_tokens.get(sid, 0) + 2 + len(user_msg["content"].split())
                                    + len(text.split()))


def make_workload(spec: dict) -> Workload:
    kind = spec["workload"]["kind"]
    return {"fixed_context": FixedContext, "mixed_context": MixedContext, "trace": TraceWorkload,
            "sessioned_chat": SessionedChat}[kind](spec)
