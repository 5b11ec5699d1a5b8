"""LoRA churn on the command line and in the summary.

The v3.3 harness's users drove adapter churn with ``--lora_adapter_count``, ``--lora_adapter_list``,
``--lora_churn_mode``, ``--lora_hot_ratio`` and ``--lora_hot_prob``; the same flags (dashed, the old
underscored spelling accepted) map onto the spec's ``lora`` block here, so the spec's checks apply to
them. Every record carries its ``adapter_id``; the summary gets one row of counts and TTFT per adapter.
"""

from __future__ import annotations

import argparse
import os
from typing import Iterable, Mapping

from kvharness.loadgen.spec import SpecError
from kvharness.stats import is_ok, percentile

CHURN_MODES = ("random", "round_robin", "hot_cold")


def add_lora_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("LoRA churn (the spec's 'lora' block; docs/loadgen.md)")
    g.add_argument("--lora-adapter-count", "--lora_adapter_count", dest="lora_adapter_count", type=int,
                   metavar="N", help="use N adapters named lora-0 ... lora-(N-1) (lora.count)")
    g.add_argument("--lora-adapter-list", "--lora_adapter_list", dest="lora_adapter_list", metavar="FILE_OR_LIST",
                   help="adapter names: a file with one name per line, or a comma list (lora.adapters)")
    g.add_argument("--lora-churn-mode", "--lora_churn_mode", dest="lora_churn_mode", choices=CHURN_MODES,
                   help="adapter choice per request (lora.policy)")
    g.add_argument("--lora-hot-ratio", "--lora_hot_ratio", dest="lora_hot_ratio", type=float, metavar="F",
                   help="hot_cold: share of the adapters that are hot (lora.hot_ratio)")
    g.add_argument("--lora-hot-prob", "--lora_hot_prob", dest="lora_hot_prob", type=float, metavar="P",
                   help="hot_cold: probability that a request uses a hot adapter (lora.hot_prob)")
    g.add_argument("--lora-send-as", dest="lora_send_as", choices=("model", "adapter_id"),
                   help="send the adapter as the request's model (default) or as adapter_id (lora.send_as)")


def adapter_list(value: str) -> list[str]:
    """Names from a file (one per line, # comments) or a comma list."""
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as fh:
            names = [line.split("#", 1)[0].strip() for line in fh]
        names = [n for n in names if n]
        if not names:
            raise SpecError(f"load spec: --lora-adapter-list: {value}: no adapter names in the file")
        return names
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise SpecError(f"load spec: --lora-adapter-list: expected a file or a comma list of names, got {value!r}")
    return names


def apply_lora_flags(raw: dict, args: argparse.Namespace) -> None:
    """Put the LoRA flags that were given into ``raw['lora']`` (creating it); a list replaces a count."""
    given = {key: getattr(args, flag, None) for flag, key in (
        ("lora_adapter_count", "count"), ("lora_churn_mode", "policy"), ("lora_hot_ratio", "hot_ratio"),
        ("lora_hot_prob", "hot_prob"), ("lora_send_as", "send_as"))}
    given = {k: v for k, v in given.items() if v is not None}
    names = getattr(args, "lora_adapter_list", None)
    if not given and names is None:
        return
    lora = raw.get("lora")
    lora = dict(lora) if isinstance(lora, dict) else {}
    if names is not None:
        lora["adapters"] = adapter_list(names)
        lora.pop("count", None)
    elif "count" in given:
        lora.pop("adapters", None)
    lora.update(given)
    raw["lora"] = lora


def per_adapter(records: Iterable[Mapping]) -> dict[str, dict] | None:
    """{adapter_id: {n, n_ok, n_errors, ttft_ms_p50, ttft_ms_p99}} over records that name an adapter."""
    groups: dict[str, list[Mapping]] = {}
    for r in records:
        a = r.get("adapter_id")
        if a is not None:
            groups.setdefault(str(a), []).append(r)
    if not groups:
        return None
    out = {}
    for name in sorted(groups):
        recs = groups[name]
        ok = [r["lat_ttft_ms"] for r in recs if is_ok(r) and r.get("lat_ttft_ms") is not None]
        out[name] = {"n": len(recs), "n_ok": sum(1 for r in recs if is_ok(r)),
                     "n_errors": sum(1 for r in recs if not is_ok(r)),
                     "ttft_ms_p50": percentile(ok, 50), "ttft_ms_p99": percentile(ok, 99)}
    return out
