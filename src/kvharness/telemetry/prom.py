"""Prometheus scrapes -> per-tick KV-tier records (SPEC ``dynkv.jsonl``).

Three layers, each testable on fixture text:

1. :func:`parse_text` — prometheus_client's text parser into a flat :class:`Snapshot` (counters keyed by
   their base name without ``_total``, so KVBM's Rust counters and Python ``*_total`` counters look alike;
   gauges; histogram buckets per label set).
2. :class:`DeltaState` — counter deltas between consecutive snapshots of one source, per label set, where a
   drop means the exporter restarted (delta = the new value, never negative), and histogram bucket deltas.
3. :func:`map_tick` — the mapping tables (KVBM ``kvbm_*``, TRT-LLM ``trtllm_*``, vLLM ``vllm:*``, SGLang
   ``sglang:*``, LMCache ``lmcache:*``, Dynamo ``dynamo_frontend_*``, simulator ``kvsim_*``) turn the deltas
   into tier0/1/2 {hits, misses, bytes_in, bytes_out, fetch p50/p95/p99 ms}, evictions, prefetches.

Tier convention (the SPEC's): tier0 = device/UMA (KVBM G1), tier1 = host DRAM (G2), tier2 = disk (G3).
``bytes_in`` of a tier = bytes written into it, ``bytes_out`` = bytes read out of it. A hit on tier N>0 is a
block onboarded from tier N back to tier0. Blocks become bytes through ``--kv-block-bytes``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from kvharness.stats import percentile

Labels = tuple  # sorted (name, value) pairs

TIER_FIELDS = ("hits", "misses", "hit_tokens", "miss_tokens", "bytes_in", "bytes_out",
               "fetch_p50_ms", "fetch_p95_ms", "fetch_p99_ms", "evictions")
QUANTILES = (50, 95, 99)
_QS = tuple(q / 100.0 for q in QUANTILES)


@dataclass
class Snapshot:
    counters: dict[tuple[str, Labels], float] = field(default_factory=dict)
    gauges: dict[tuple[str, Labels], float] = field(default_factory=dict)
    # histogram base name -> label set (without le) -> {le: cumulative count}
    buckets: dict[str, dict[Labels, dict[float, float]]] = field(default_factory=dict)
    # JSON iteration stats (TRT-LLM /metrics): list of dicts drained on read
    iterations: list[dict] | None = None

    def counter_names(self) -> set[str]:
        return {k[0] for k in self.counters}

    def gauge_sum(self, name: str) -> float | None:
        vals = [v for (n, _l), v in self.gauges.items() if n == name]
        return sum(vals) if vals else None


def _labels(d: dict) -> Labels:
    return tuple(sorted(d.items())) if d else ()


def _strip_total(name: str) -> str:
    return name[:-6] if name.endswith("_total") else name


_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created", "_gcount", "_gsum")


class SeriesCache:
    """Memo of prometheus_client's parse of each series (name + label set) and of its classification.

    Between two scrapes of one exporter the series are almost always the same and only the values move,
    so a series' labels are parsed by prometheus_client's text parser the first time it is seen; later
    scrapes only split off and convert the value. Keeps the collector well under 1 % of a core at 200 ms.
    """

    MAX = 200_000

    def __init__(self, mapped_only: bool = False, extra_hists: frozenset = frozenset()) -> None:
        """``mapped_only``: classify series that no mapping table reads as 'skip', so the per-tick delta
        and mapping work covers only what ends up in dynkv.jsonl (the raw scrape keeps everything).
        ``extra_hists``: histogram families a stack config maps as fetch latency (``fetch_histograms``)."""
        self.mapped_only = mapped_only
        self.extra_hists = frozenset(extra_hists)
        self.series: dict[str, tuple[str, dict]] = {}
        self.kinds: dict[str, tuple] = {}  # series text -> classification (see _classify)
        self.types: dict[str, str] = {}    # family -> TYPE, as last seen

    def parse_series(self, key_text: str) -> tuple[str, dict] | None:
        hit = self.series.get(key_text)
        if hit is None:
            if len(self.series) > self.MAX:
                self.series.clear()
                self.kinds.clear()
                self.types.clear()
            sample = None
            for fam in text_string_to_metric_families(key_text + " 0\n"):
                for smp in fam.samples:
                    sample = smp
            if sample is None:
                return None
            hit = self.series[key_text] = (sample.name, dict(sample.labels))
        return hit


def _classify(name: str, labels: dict, ftype: str, family: str) -> tuple:
    """('counter', key) | ('gauge', key) | ('bucket', base, rest_labels, le) | ('skip',)."""
    if name.endswith("_created"):
        return ("skip",)  # prometheus_client's creation-time samples, not data
    if ftype in ("histogram", "gaugehistogram") or (ftype == "unknown" and name.endswith("_bucket") and "le" in labels):
        if name.endswith("_bucket"):
            le = labels.get("le")
            if le is None:
                return ("skip",)
            rest = _labels({k: v for k, v in labels.items() if k != "le"})
            return ("bucket", name[:-7], rest, float(le))
        if name.endswith(("_sum", "_count", "_gsum", "_gcount")):
            return ("counter", (name, _labels(labels)))
        return ("skip",)
    if ftype == "summary":
        if name.endswith(("_sum", "_count")):
            return ("counter", (name, _labels(labels)))
        return ("skip",)
    if ftype == "counter" or (ftype == "unknown" and name.endswith("_total")):
        return ("counter", (_strip_total(name), _labels(labels)))
    return ("gauge", (name, _labels(labels)))


def parse_text(text: str, cache: SeriesCache | None = None) -> Snapshot:
    """Parse Prometheus exposition text (series parsed by prometheus_client's text parser, memoised in
    ``cache``). Counter samples are keyed by their name without ``_total`` (KVBM's Rust counters have none,
    Python exporters add it); ``_sum``/``_count`` of histograms and summaries are counters too; an untyped
    sample ending in ``_total`` is taken for a counter; ``_created`` samples are dropped."""
    cache = cache or SeriesCache()
    snap = Snapshot()
    types: dict[str, str] = {}
    kinds = cache.kinds
    for line in text.split("\n"):
        if not line or line[0] == "#":
            if line.startswith("# TYPE "):
                parts = line.split()
                if len(parts) >= 4:
                    if cache.types.get(parts[2], parts[3]) != parts[3]:
                        kinds.clear()  # a family changed type (exporter upgraded/restarted): reclassify
                    types[parts[2]] = cache.types[parts[2]] = parts[3]
            continue
        line = line.strip()
        if not line:
            continue
        cut = line.rfind("}")
        if cut >= 0:
            key_text, rest = line[:cut + 1], line[cut + 1:]
        else:
            key_text, _, rest = line.partition(" ")
        kind = kinds.get(key_text)
        if kind is None:
            parsed = cache.parse_series(key_text)
            if parsed is None:
                continue
            name, labels = parsed
            family = name
            if name not in types:
                for suf in _SUFFIXES:
                    if name.endswith(suf) and name[:-len(suf)] in types:
                        family = name[:-len(suf)]
                        break
            kind = _classify(name, labels, types.get(family, "unknown"), family)
            if cache.mapped_only and not _is_mapped(kind) \
                    and not (kind[0] == "bucket" and kind[1] in cache.extra_hists):
                kind = ("skip",)
            kinds[key_text] = kind
        k0 = kind[0]
        if k0 == "skip":
            continue
        vals = rest.split()
        if not vals:
            continue
        try:
            value = float(vals[0])
        except ValueError:
            continue
        if value != value:  # NaN
            continue
        if k0 == "counter":
            snap.counters[kind[1]] = value
        elif k0 == "gauge":
            snap.gauges[kind[1]] = value
        elif k0 == "bucket":
            snap.buckets.setdefault(kind[1], {}).setdefault(kind[2], {})[kind[3]] = value
    return snap


def parse_body(body: str, cache: SeriesCache | None = None) -> Snapshot:
    """Prometheus text, or TRT-LLM's JSON iteration list (``/metrics`` of trtllm-serve)."""
    stripped = body.lstrip()
    if stripped.startswith("["):
        snap = Snapshot()
        data = json.loads(stripped)
        snap.iterations = [d for d in data if isinstance(d, dict)]
        return snap
    return parse_text(body, cache)


# ------------------------------------------------------------------------------------------ deltas

def counter_delta(prev: float | None, cur: float) -> float:
    """Delta of a monotonic counter. A drop means the exporter restarted from zero: delta = new value."""
    if prev is None:
        return cur
    return cur - prev if cur >= prev else cur


def histogram_quantiles(qs: tuple[float, ...], buckets: dict[float, float]) -> list[float | None]:
    """Prometheus ``histogram_quantile`` for several q (0..1) on cumulative bucket counts {upper bound: count}.

    Linear interpolation inside the bucket (lower bound 0 for the first bucket); a rank in the +Inf
    bucket returns the highest finite bound. None when the histogram is empty or has no +Inf bucket.
    """
    return [v for v, _b in histogram_quantiles_with_bucket(qs, buckets)]


def histogram_quantiles_with_bucket(qs: tuple[float, ...], buckets: dict[float, float]
                                    ) -> list[tuple[float | None, tuple[float, float] | None]]:
    """:func:`histogram_quantiles`, each value with the (lower, upper) bounds of the bucket its rank fell in
    (upper = inf for the +Inf bucket): all the histogram knows is that the quantile lies in that bucket."""
    if not buckets:
        return [(None, None)] * len(qs)
    les = sorted(buckets)
    if not math.isinf(les[-1]):
        return [(None, None)] * len(qs)  # malformed: no +Inf bucket
    # enforce monotonic cumulative counts (bucket deltas can be jittery across label sets)
    counts, running = [], 0.0
    for le in les:
        running = max(running, buckets[le])
        counts.append(running)
    total = counts[-1]
    if total <= 0:
        return [(None, None)] * len(qs)
    out: list[tuple[float | None, tuple[float, float] | None]] = []
    for q in qs:
        rank = q * total
        val = les[-2] if len(les) > 1 else None
        bucket = None
        for i, le in enumerate(les):
            if counts[i] >= rank:
                lo_bound = les[i - 1] if i > 0 else 0.0
                bucket = (lo_bound, le)
                if math.isinf(le):
                    val = les[i - 1] if i > 0 else None
                else:
                    lo_count = counts[i - 1] if i > 0 else 0.0
                    in_bucket = counts[i] - lo_count
                    val = le if in_bucket <= 0 else lo_bound + (le - lo_bound) * (rank - lo_count) / in_bucket
                break
        out.append((val, bucket))
    return out


def bucket_limited(value: float | None, bucket: tuple[float, float] | None) -> bool:
    """Whether a histogram quantile says less than its digits suggest: the bucket it fell in is wider than
    the value itself (e.g. Dynamo's request_duration_seconds, buckets 0, 2, 4 ... s, for a 0.27 s request:
    interpolation prints 1.0 s), or it fell in the +Inf bucket. Such a value is not a measurement."""
    if value is None or bucket is None:
        return False
    lo, hi = bucket
    return math.isinf(hi) or (hi - lo) > abs(value)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """One quantile (q in 0..1); see :func:`histogram_quantiles`."""
    return histogram_quantiles((q,), buckets)[0]


def _tier_label(labels: Labels) -> str | None:
    for k, v in labels:
        if k == "tier":
            return v
    return None


# Labels whose values name a tier or a direction; a series is also kept under ``name{label=value}``.
# tier: vLLM tiering ("0:primary", "1:fs"), simulator ("0".."2"); cache_source: SGLang (device/host/storage);
# cache_tier: TRT-LLM's prompt_cache_hit_tokens (the memory backing a cache level); transfer_type: vLLM's
# older kv_offload_* (GPU_to_CPU / CPU_to_GPU).
SPLIT_LABELS = ("tier", "cache_source", "cache_tier", "transfer_type")


def _split_keys(name: str, labels: Labels) -> list[str]:
    return [f"{name}{{{k}={v}}}" for k, v in labels if k in SPLIT_LABELS]


def _is_ratio_gauge(name: str) -> bool:
    """A fraction or a latency (mean over engines), not a count (summed over engines): vLLM's
    kv_cache_usage_perc is per engine, so two data-parallel engines at 0.44 are 0.44, not 0.88."""
    if name.startswith(("lmcache:", "kvsim_")):
        return False
    return name.endswith(("_perc", "_rate", "_utilization", "_usage", "_seconds", "_ratio"))


class DeltaState:
    """Per-source memory of the previous snapshot; turns each new snapshot into deltas."""

    def __init__(self) -> None:
        self.prev: Snapshot | None = None
        self.prev_iter_counters: dict[str, float] = {}
        self.resets = 0

    def update(self, snap: Snapshot) -> dict | None:
        """Deltas since the previous snapshot, or None for the first one (the baseline)."""
        prev, self.prev = self.prev, snap
        if snap.iterations is not None:
            return self._iter_update(snap, baseline=prev is None)
        if prev is None:
            return None
        counters: dict[str, float] = {}
        for key, value in snap.counters.items():
            p = prev.counters.get(key)
            if p is not None and value < p:
                self.resets += 1
            # A label set that first appears after the baseline started from zero: delta = value.
            d = counter_delta(p, value)
            counters[key[0]] = counters.get(key[0], 0.0) + d
            for k in _split_keys(key[0], key[1]):
                counters[k] = counters.get(k, 0.0) + d
        hists: dict[str, dict[float, float]] = {}
        for base, series in snap.buckets.items():
            pseries = prev.buckets.get(base, {})
            agg: dict[float, float] = {}
            for lk, b in series.items():
                pb = pseries.get(lk, {})
                # a reset shows in the +Inf bucket; then take the new buckets whole
                inf_now, inf_prev = b.get(math.inf, 0.0), pb.get(math.inf)
                reset = inf_prev is not None and inf_now < inf_prev
                if reset:
                    self.resets += 1
                pers = [hists.setdefault(k, {}) for k in _split_keys(base, lk)]
                for le, c in b.items():
                    d = max(c if reset or le not in pb else c - pb[le], 0.0)
                    agg[le] = agg.get(le, 0.0) + d
                    for per in pers:
                        per[le] = per.get(le, 0.0) + d
            hists[base] = agg
        gauges: dict[str, float] = {}
        series: dict[str, list[float]] = {}
        for (name, lk), v in snap.gauges.items():
            series.setdefault(name, []).append(v)
            for k in _split_keys(name, lk):
                gauges[k] = v
        for name, vals in series.items():
            if _is_ratio_gauge(name):
                gauges[name] = sum(vals) / len(vals)
                gauges[f"{name}:max"] = max(vals)
            else:
                gauges[name] = sum(vals)
        return {"counters": counters, "hists": hists, "gauges": gauges, "samples": {}}

    def _iter_update(self, snap: Snapshot, baseline: bool) -> dict:
        """TRT-LLM iteration stats: the list is drained on read, so every scrape holds only new iterations.
        kvCacheStats block counters are cumulative in the engine: delta between the last iteration seen
        and the newest one (reset-aware); iterLatencyMS is kept as raw samples."""
        its = snap.iterations or []
        counters: dict[str, float] = {}
        gauges: dict[str, float] = {}
        samples: dict[str, list[float]] = {"trtllm_iter_latency_ms": []}
        for it in its:
            lat = it.get("iterLatencyMS")
            if isinstance(lat, (int, float)):
                samples["trtllm_iter_latency_ms"].append(float(lat))
        if its:
            last = its[-1]
            kv = last.get("kvCacheStats") or {}
            for k in ("allocTotalBlocks", "allocNewBlocks", "reusedBlocks", "missedBlocks"):
                if isinstance(kv.get(k), (int, float)):
                    name = f"trtllm_iter_{k}"
                    cur = float(kv[k])
                    p = self.prev_iter_counters.get(name)
                    if p is not None:
                        if cur < p:
                            self.resets += 1
                        counters[name] = counter_delta(p, cur)
                    elif not baseline:
                        counters[name] = 0.0
                    self.prev_iter_counters[name] = cur
            for k in ("maxNumBlocks", "freeNumBlocks", "usedNumBlocks", "tokensPerBlock", "cacheHitRate"):
                if isinstance(kv.get(k), (int, float)):
                    gauges[f"trtllm_iter_{k}"] = float(kv[k])
            for k in ("numActiveRequests", "gpuMemUsage"):
                if isinstance(last.get(k), (int, float)):
                    gauges[f"trtllm_iter_{k}"] = float(last[k])
        gauges["trtllm_iter_count"] = float(len(its))
        return {"counters": counters, "hists": {}, "gauges": gauges, "samples": samples}


# ----------------------------------------------------------------------------------------- mapping

# Counter rules: (alternative names, first present wins), target "section.field", unit.
# unit "blocks" -> also adds bytes via the block size to the byte targets listed in BLOCK_BYTES.
COUNTER_RULES: list[tuple[tuple[str, ...], str]] = [
    # --- Dynamo KVBM (Rust counters, no _total). Direction names: offload d2h = G1->G2, h2d = G2->G3,
    # d2d = G1->G3; onboard h2d = G2->G1, d2d = G3->G1.
    (("kvbm_offload_blocks_d2h",), "offload_blocks.t0_t1"),
    (("kvbm_offload_blocks_h2d",), "offload_blocks.t1_t2"),
    (("kvbm_offload_blocks_d2d",), "offload_blocks.t0_t2"),
    (("kvbm_onboard_blocks_h2d",), "onboard_blocks.t1_t0"),
    (("kvbm_onboard_blocks_d2d",), "onboard_blocks.t2_t0"),
    (("kvbm_matched_tokens",), "server.matched_tokens"),
    # --- TRT-LLM Prometheus (/prometheus/metrics)
    (("trtllm_kv_cache_reused_blocks",), "tier0.hits"),
    (("trtllm_kv_cache_missed_blocks",), "tier0.misses"),
    # onboard = host -> GPU, offload = GPU -> host (collector.py): bytes leave one tier and enter the other
    (("trtllm_kv_cache_onboard_bytes",), "tier0.bytes_in+tier1.bytes_out"),
    (("trtllm_kv_cache_offload_bytes",), "tier0.bytes_out+tier1.bytes_in"),
    (("trtllm_kv_cache_disk_prefetch_blocks",), "server.disk_prefetch_blocks"),
    # trtllm_prompt_cache_hit_tokens{cache_level,cache_tier}: split per tier in LABEL_RULES
    (("trtllm_prompt_tokens",), "server.prompt_tokens"),
    (("trtllm_generation_tokens",), "server.generation_tokens"),
    (("trtllm_request_success",), "server.requests"),
    # --- TRT-LLM JSON iteration stats (/metrics, drained on read)
    (("trtllm_iter_reusedBlocks",), "tier0.hits"),
    (("trtllm_iter_missedBlocks",), "tier0.misses"),
    # --- vLLM (tokens); deprecated gpu_prefix_cache_* only when the new names are absent
    (("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"), "tier0.hit_tokens"),
    (("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries"), "_vllm.queries"),
    (("vllm:external_prefix_cache_hits",), "tier1.hit_tokens"),
    (("vllm:external_prefix_cache_queries",), "_vllm.ext_queries"),
    (("vllm:num_preemptions",), "server.preemptions"),
    (("vllm:prompt_tokens",), "server.prompt_tokens"),
    (("vllm:generation_tokens",), "server.generation_tokens"),
    (("vllm:request_success",), "server.requests"),
    # vLLM native offload (OffloadingConnector): load = CPU -> GPU, store = GPU -> CPU, in bytes; the older
    # vllm:kv_offload_total_bytes{transfer_type} is split in LABEL_RULES
    (("vllm:kv_offload_load_bytes",), "tier0.bytes_in+tier1.bytes_out"),
    (("vllm:kv_offload_store_bytes",), "tier0.bytes_out+tier1.bytes_in"),
    (("vllm:kv_offload_load_time",), "server.offload_load_time_s"),
    (("vllm:kv_offload_store_time",), "server.offload_store_time_s"),
    # --- SGLang (tokens; cached_tokens{cache_source} is split per tier in LABEL_RULES)
    (("sglang:load_back_bytes",), "tier0.bytes_in+tier1.bytes_out"),
    (("sglang:hicache_backup_bytes",), "tier0.bytes_out+tier1.bytes_in"),
    (("sglang:load_back_tokens",), "server.load_back_tokens"),
    (("sglang:evicted_tokens",), "server.evicted_tokens"),
    (("sglang:hicache_backup_tokens",), "server.backup_tokens"),
    (("sglang:backuped_tokens",), "server.storage_backup_tokens"),
    (("sglang:prefetched_tokens",), "server.storage_prefetched_tokens"),
    (("sglang:prompt_tokens",), "server.prompt_tokens"),
    (("sglang:generation_tokens",), "server.generation_tokens"),
    (("sglang:num_requests",), "server.requests"),
    # --- LMCache (tokens; its local store is host memory = tier1 by default)
    (("lmcache:num_hit_tokens",), "tier1.hit_tokens"),
    (("lmcache:num_requested_tokens",), "_lmcache.requested"),
    (("lmcache:num_stored_tokens",), "server.lmcache_stored_tokens"),
    (("lmcache_mp_lookup_hit_tokens",), "tier1.hit_tokens"),
    (("lmcache_mp_lookup_requested_tokens",), "_lmcache.requested"),
    # --- Dynamo frontend
    (("dynamo_frontend_requests",), "server.requests"),
    (("dynamo_frontend_output_tokens",), "server.generation_tokens"),
    (("dynamo_frontend_cached_tokens_sum",), "server.cached_tokens"),
]

# Histogram rules: (alternative base names), target prefix, scale to ms.
HIST_RULES: list[tuple[tuple[str, ...], str, float]] = [
    (("trtllm_time_to_first_token_seconds", "vllm:time_to_first_token_seconds",
      "sglang:time_to_first_token_seconds", "dynamo_frontend_time_to_first_token_seconds"), "server.ttft", 1000.0),
    (("trtllm_time_per_output_token_seconds", "vllm:inter_token_latency_seconds",
      "vllm:time_per_output_token_seconds", "sglang:inter_token_latency_seconds",
      "dynamo_frontend_inter_token_latency_seconds"), "server.itl", 1000.0),
    (("trtllm_e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds",
      "sglang:e2e_request_latency_seconds", "dynamo_frontend_request_duration_seconds"), "server.e2e", 1000.0),
    (("trtllm_request_queue_time_seconds", "vllm:request_queue_time_seconds"), "server.queue", 1000.0),
    # trtllm_iteration_latency_seconds is a Gauge upstream (GAUGE_RULES), not a histogram
    # tier-1 fetch: SGLang HiCache host -> GPU load-back, LMCache retrieve
    (("sglang:load_back_duration_seconds", "lmcache:time_to_retrieve"), "tier1.fetch", 1000.0),
]

# Label-split rules: (family, label, {label value: target}); the unlabeled total is used (as ``default``)
# only when the exporter gives no split. A value not listed is kept in ``raw`` only.
TRTLLM_CACHE_TIERS = {"gpu": "tier0", "device": "tier0", "host": "tier1", "cpu": "tier1", "disk": "tier2"}
LABEL_RULES: list[tuple[str, str, dict[str, str], str | None]] = [
    # SGLang: device hits are tier 0, host (HiCache L2) tier 1, storage (L3, "storage_<backend>") tier 2;
    # "total" double-counts
    ("sglang:cached_tokens", "cache_source",
     {"device": "tier0.hit_tokens", "host": "tier1.hit_tokens", "storage": "tier2.hit_tokens"}, "tier0.hit_tokens"),
    ("trtllm_prompt_cache_hit_tokens", "cache_tier",
     {k: f"{v}.hit_tokens" for k, v in TRTLLM_CACHE_TIERS.items()}, "tier0.hit_tokens"),
    ("vllm:kv_offload_total_bytes", "transfer_type",
     {"CPU_to_GPU": "tier0.bytes_in+tier1.bytes_out", "GPU_to_CPU": "tier0.bytes_out+tier1.bytes_in"}, None),
]
# vLLM exports the deprecated kv_offload_total_bytes{transfer_type} next to kv_offload_load_bytes /
# kv_offload_store_bytes, counting the same transfers: summing both doubled every tier byte counter.
SUPERSEDED_BY = {"vllm:kv_offload_total_bytes": ("vllm:kv_offload_load_bytes", "vllm:kv_offload_store_bytes")}
# vLLM tiering (vllm/v1/kv_offload/tiering): tier "0:primary" is the CPU tier (our tier 1), "N:<type>" with
# N >= 1 a secondary tier such as "1:fs" (our tier 2). Blocks ("chunks" in newer builds) and bytes.
VLLM_TIERING = {
    "hits": ("vllm:kv_offload_tiering_chunk_hits", "vllm:kv_offload_tiering_block_hits"),
    "queries": ("vllm:kv_offload_tiering_chunk_queries", "vllm:kv_offload_tiering_block_queries"),
    "read_bytes": ("vllm:kv_offload_tiering_read_bytes",),    # secondary -> CPU (promotion)
    "write_bytes": ("vllm:kv_offload_tiering_write_bytes",),  # CPU -> secondary (cascade)
}

GAUGE_RULES: list[tuple[tuple[str, ...], str]] = [
    (("kvbm_host_cache_hit_rate",), "kvbm_host_cache_hit_rate"),
    (("kvbm_disk_cache_hit_rate",), "kvbm_disk_cache_hit_rate"),
    (("trtllm_kv_cache_hit_rate", "trtllm_iter_cacheHitRate"), "kv_cache_hit_rate"),
    (("trtllm_kv_cache_utilization", "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"),
     "kv_cache_usage"),   # mean over engines (one gauge per data-parallel engine), see _is_ratio_gauge
    (("trtllm_kv_cache_utilization:max", "vllm:kv_cache_usage_perc:max", "vllm:gpu_cache_usage_perc:max",
      "sglang:token_usage:max"), "kv_cache_usage_max"),
    (("trtllm_kv_cache_host_utilization",), "tier1_usage"),
    (("trtllm_iteration_latency_seconds",), "iteration_latency_s"),   # a Gauge: the latest iteration
    (("trtllm_num_requests_running", "vllm:num_requests_running", "sglang:num_running_reqs",
      "trtllm_iter_numActiveRequests"), "requests_running"),
    (("trtllm_num_requests_waiting", "vllm:num_requests_waiting", "sglang:num_queue_reqs"), "requests_waiting"),
    # requests without a first response yet (prefill included): not the engine's waiting queue
    (("dynamo_frontend_queued_requests",), "frontend_queued_requests"),
    (("dynamo_frontend_active_requests", "dynamo_frontend_inflight_requests"), "frontend_active_requests"),
    (("trtllm_kv_cache_used_blocks", "trtllm_iter_usedNumBlocks"), "tier0_used_blocks"),
    (("trtllm_kv_cache_max_blocks", "trtllm_iter_maxNumBlocks", "dynamo_frontend_model_total_kv_blocks"),
     "tier0_total_blocks"),
    (("trtllm_kv_cache_tokens_per_block", "trtllm_iter_tokensPerBlock", "dynamo_frontend_model_kv_cache_block_size"),
     "tokens_per_block"),
    (("sglang:cache_hit_rate",), "kv_cache_hit_rate"),
    (("sglang:hicache_host_used_tokens",), "tier1_used_tokens"),
    (("sglang:hicache_host_total_tokens",), "tier1_total_tokens"),
    (("lmcache:local_cache_usage",), "tier1_used_bytes"),
    (("lmcache:local_storage_usage",), "tier2_used_bytes"),
]

_MAPPED: dict[str, frozenset] = {}


def _is_mapped(kind: tuple) -> bool:
    """Whether a classified series feeds any mapping table (or is simulator ground truth)."""
    if not _MAPPED:
        _MAPPED["counter"] = frozenset(n for names, _t in COUNTER_RULES for n in names) \
            | {base for base, _l, _m, _d in LABEL_RULES} | {n for names in VLLM_TIERING.values() for n in names}
        _MAPPED["hist"] = frozenset(n for names, _t, _s in HIST_RULES for n in names) | {"kvsim_tier_fetch_seconds"}
        _MAPPED["gauge"] = frozenset(n.split(":max")[0] if n.endswith(":max") else n
                                     for names, _k in GAUGE_RULES for n in names)
    k0 = kind[0]
    if k0 == "counter":
        name = kind[1][0]
        return name in _MAPPED["counter"] or name.startswith("kvsim_") and not name.endswith(("_sum", "_count"))
    if k0 == "bucket":
        return kind[1] in _MAPPED["hist"]
    if k0 == "gauge":
        name = kind[1][0]
        return name in _MAPPED["gauge"] or name.startswith("kvsim_")
    return False


# Block movements -> tier hits and bytes (× kv_block_bytes)
BLOCK_MOVES = {
    "t0_t1": ("tier0", "tier1"),
    "t1_t2": ("tier1", "tier2"),
    "t0_t2": ("tier0", "tier2"),
    "t1_t0": ("tier1", "tier0"),
    "t2_t0": ("tier2", "tier0"),
}


def _first_present(names: tuple[str, ...], have) -> str | None:
    for n in names:
        if n in have:
            return n
    return None


def empty_record() -> dict:
    rec: dict = {f"tier{i}": {f: None for f in TIER_FIELDS} for i in range(3)}
    rec["evictions"] = None
    rec["prefetches"] = None
    rec["server"] = {}
    rec["gauges"] = {}
    return rec


def _add(d: dict, key: str, v: float | None) -> None:
    if v is None:
        return
    d[key] = v if d.get(key) is None else d[key] + v


def fetch_family(spec: str) -> str:
    """The histogram family of a ``fetch_histograms`` entry (``name`` or ``name{label=value}``)."""
    return spec.split("{", 1)[0]


def map_deltas(deltas_by_source: dict[str, dict | None], kv_block_bytes: int | None,
               fetch_hists: dict[str, str] | None = None) -> dict:
    """One tick's mapped record from each source's deltas (None for a source still at its baseline or
    without a sample this tick). Sums over sources; fields nobody reports stay None. ``fetch_hists``
    (tier -> ``family`` or ``family{label=value}``, seconds) gives a stack's own fetch-latency histograms,
    for exporters whose names no table here knows; they win over the tables for that tier.
    Phases: per source its counters and gauges; then the derived token misses; then histogram quantiles."""
    rec = empty_record()
    raw: dict[str, dict] = {}
    merged_hists: dict[str, dict[float, float]] = {}
    merged_samples: dict[str, list[float]] = {}
    for src, deltas in deltas_by_source.items():
        if deltas is None:
            continue
        counters, hists, gauges = deltas["counters"], deltas["hists"], deltas["gauges"]
        mapped_raw: dict[str, float] = {}
        _map_counter_rules(counters, rec, mapped_raw, kv_block_bytes)
        _map_labelled(counters, rec, mapped_raw)
        _map_vllm_tiering(counters, rec, mapped_raw)
        _map_kvsim(counters, rec, mapped_raw)
        for base, b in hists.items():
            merged_hists[base] = b
        for k, vals in deltas.get("samples", {}).items():
            merged_samples.setdefault(k, []).extend(vals)
        for names, key in GAUGE_RULES:
            n = _first_present(names, gauges)
            if n is not None and key not in rec["gauges"]:
                rec["gauges"][key] = gauges[n]
        for n, v in gauges.items():
            if n.startswith("kvsim_"):
                rec["gauges"][n] = v
        raw[src] = mapped_raw
    _derive_token_misses(rec, raw)
    _map_histograms(rec, merged_hists, fetch_hists)
    it = merged_samples.get("trtllm_iter_latency_ms")
    if it:
        for q in QUANTILES:
            rec["server"][f"iter_p{q}_ms"] = percentile(it, q)
    rec["raw"] = raw
    return _ints(rec)


def _map_counter_rules(counters: dict, rec: dict, mapped_raw: dict, kv_block_bytes: int | None) -> None:
    """COUNTER_RULES: the first present name of each rule adds its delta to the record's target field(s)."""
    for names, target in COUNTER_RULES:
        n = _first_present(names, counters)
        if n is None:
            continue
        v = counters[n]
        mapped_raw[n] = v
        if "+" in target or target.startswith("tier"):
            for t in target.split("+"):
                sec, f = t.split(".", 1)
                _add(rec[sec], f, v)
            continue
        section, fld = target.split(".", 1)
        if section in ("offload_blocks", "onboard_blocks"):
            a, b = BLOCK_MOVES[fld]
            nbytes = v * kv_block_bytes if kv_block_bytes else None
            _add(rec[a], "bytes_out", nbytes)
            _add(rec[b], "bytes_in", nbytes)
            if section == "onboard_blocks":
                _add(rec[a], "hits", v)
            continue
        if section.startswith("_"):
            rec.setdefault(section, {})
        _add(rec[section], fld, v)


def _derive_token_misses(rec: dict, raw: dict) -> None:
    """Token misses that no exporter reports directly: queried minus hit (vLLM, LMCache, SGLang)."""
    vq = rec.pop("_vllm", None)
    if vq:
        if vq.get("queries") is not None and rec["tier0"]["hit_tokens"] is not None:
            rec["tier0"]["miss_tokens"] = max(vq["queries"] - rec["tier0"]["hit_tokens"], 0.0)
        if vq.get("ext_queries") is not None and rec["tier1"]["hit_tokens"] is not None:
            rec["tier1"]["miss_tokens"] = max(vq["ext_queries"] - rec["tier1"]["hit_tokens"], 0.0)
    lm = rec.pop("_lmcache", None)
    if lm and lm.get("requested") is not None and rec["tier1"]["hit_tokens"] is not None:
        rec["tier1"]["miss_tokens"] = max(lm["requested"] - rec["tier1"]["hit_tokens"], 0.0)
    if rec["server"].get("prompt_tokens") is not None and rec["tier0"]["hit_tokens"] is not None \
            and rec["tier0"]["miss_tokens"] is None \
            and any(k.startswith("sglang:cached_tokens") for r in raw.values() for k in r):
        rec["tier0"]["miss_tokens"] = max(rec["server"]["prompt_tokens"] - rec["tier0"]["hit_tokens"], 0.0)


def _map_histograms(rec: dict, merged_hists: dict, fetch_hists: dict[str, str] | None) -> None:
    """Histogram deltas -> quantiles (ms); a quantile only known to lie in a bucket is None plus that bucket."""
    hist_targets = [(n, *target.split(".", 1), scale) for names, target, scale in HIST_RULES
                    if (n := _first_present(names, merged_hists)) is not None]
    hist_targets += [(name, tier, "fetch", 1000.0) for tier, name in (fetch_hists or {}).items() if name in merged_hists]
    hist_targets += [(f"kvsim_tier_fetch_seconds{{tier={i}}}", f"tier{i}", "fetch", 1000.0) for i in range(3)
                     if f"kvsim_tier_fetch_seconds{{tier={i}}}" in merged_hists]
    for n, section, prefix, scale in hist_targets:
        for q, (v, bucket) in zip(QUANTILES, histogram_quantiles_with_bucket(_QS, merged_hists[n])):
            key = f"{prefix}_p{q}_ms"
            if bucket_limited(v, bucket):  # never shown as a measurement: only the bucket it lies in
                rec[section][key] = None
                rec.setdefault("bucket_limited", {})[f"{section}.{key}"] = [bucket[0] * scale, bucket[1] * scale]
            else:
                rec[section][key] = round(v * scale, 4) if v is not None else None

def _int(v):
    return int(v) if type(v) is float and v.is_integer() and abs(v) < 2**53 else v


def _ints(rec: dict) -> dict:
    """Integral floats -> int in the count/byte sections (block and byte counts read as integers in
    JSON and CSV); a flat pass over the known sections, not a recursive walk."""
    for key in ("tier0", "tier1", "tier2", "server", "sim"):
        d = rec.get(key)
        if d:
            for k, v in d.items():
                if type(v) is float:
                    d[k] = _int(v)
    for key in ("evictions", "prefetches"):
        rec[key] = _int(rec[key])
    for d in rec["raw"].values():
        for k, v in d.items():
            if type(v) is float:
                d[k] = _int(v)
    return rec


def _label_target(value: str, targets: dict[str, str]) -> str | None:
    """The target of a label value: the same name (any case), or the name followed by ``_<detail>``
    (SGLang's L3 hits are ``cache_source="storage_<backend class>"``, e.g. ``storage_HiCacheFile``)."""
    v = value.lower()
    return next((t for k, t in targets.items() if v == k.lower() or v.startswith(k.lower() + "_")), None)


def _map_labelled(counters: dict[str, float], rec: dict, mapped_raw: dict[str, float]) -> None:
    """LABEL_RULES: a family split by a tier label; the plain total only when no split value is known.
    A family in SUPERSEDED_BY is skipped when the exporter also gives its replacement (same bytes)."""
    for base, label, targets, default in LABEL_RULES:
        if base not in counters or any(n in counters for n in SUPERSEDED_BY.get(base, ())):
            continue
        prefix = f"{base}{{{label}="
        split = {k[len(prefix):-1]: v for k, v in counters.items() if k.startswith(prefix)}
        known = {val: v for val, v in split.items() if _label_target(val, targets)}
        for val, v in split.items():
            mapped_raw[f"{base}{{{label}={val}}}"] = v
        if known:
            for val, v in known.items():
                target = _label_target(val, targets)
                for t in target.split("+"):
                    sec, f = t.split(".", 1)
                    _add(rec[sec], f, v)
        elif not split and default is not None:
            mapped_raw[base] = counters[base]
            sec, f = default.split(".", 1)
            _add(rec[sec], f, counters[base])


def _vllm_tier(label: str) -> str | None:
    """vLLM tiering label "N:<type>": N = 0 is the CPU tier (tier1), N >= 1 a secondary tier (tier2)."""
    idx = label.split(":", 1)[0]
    if not idx.isdigit():
        return None
    return "tier1" if int(idx) == 0 else "tier2"


def _map_vllm_tiering(counters: dict[str, float], rec: dict, mapped_raw: dict[str, float]) -> None:
    per: dict[str, dict[str, float]] = {}
    for what, names in VLLM_TIERING.items():
        name = _first_present(names, counters)
        if name is None:
            continue
        prefix = f"{name}{{tier="
        for k, v in counters.items():
            if k.startswith(prefix):
                tier = _vllm_tier(k[len(prefix):-1])
                mapped_raw[k] = v
                if tier is not None:
                    per.setdefault(tier, {})[what] = per.get(tier, {}).get(what, 0.0) + v
    for tier, d in per.items():
        if "hits" in d:
            _add(rec[tier], "hits", d["hits"])
            if "queries" in d:
                _add(rec[tier], "misses", max(d["queries"] - d["hits"], 0.0))
        if tier == "tier2":
            if "read_bytes" in d:   # promoted from the secondary tier into the CPU tier
                _add(rec["tier2"], "bytes_out", d["read_bytes"])
                _add(rec["tier1"], "bytes_in", d["read_bytes"])
            if "write_bytes" in d:  # cascaded from the CPU tier into the secondary tier
                _add(rec["tier1"], "bytes_out", d["write_bytes"])
                _add(rec["tier2"], "bytes_in", d["write_bytes"])


def _map_kvsim(counters: dict[str, float], rec: dict, mapped_raw: dict[str, float]) -> None:
    """Simulator ground truth (``kvsim_*``, names from src/kvharness/sim/exporters.py): evictions per tier
    (``kvsim_evictions_total{tier}``; top-level ``evictions`` = tier 0, the device pool), real tier-2 file
    bytes, preemptions, prompt/cached tokens. Kept apart from the real-name fields (``sim`` section,
    ``tierN.evictions``) so a simulated run is read exactly like a real one."""
    sim: dict = {}
    for name, v in counters.items():
        if not name.startswith("kvsim_"):
            continue
        if name.split("{", 1)[0].endswith(("_sum", "_count")):
            continue
        mapped_raw[name] = v
        if name.startswith("kvsim_evictions{tier="):
            tier = name[len("kvsim_evictions{tier="):-1]
            if tier in ("0", "1", "2"):
                rec[f"tier{tier}"]["evictions"] = v
                if tier == "0":
                    _add(rec, "evictions", v)
            continue
        if "{" in name:
            continue
        key = {"kvsim_tier2_read_bytes": "tier2_file_read_bytes", "kvsim_tier2_write_bytes": "tier2_file_write_bytes",
               "kvsim_preemptions": "preemptions", "kvsim_prompt_tokens": "prompt_tokens",
               "kvsim_cached_tokens": "cached_tokens", "kvsim_lora_loads": "lora_loads",
               "kvsim_lora_hits": "lora_hits", "kvsim_tier2_verify_failures": "tier2_verify_failures",
               "kvsim_tier2_io_errors": "tier2_io_errors",  # summed over kind (write/read): validity.py
               "kvsim_prefetches": "prefetches"}.get(name)
        if key == "prefetches":
            _add(rec, "prefetches", v)
        elif key is not None:
            _add(sim, key, v)
        elif name == "kvsim_evictions":
            pass  # the per-tier split above is what is used
    if sim:
        for k, v in sim.items():
            _add(rec.setdefault("sim", {}), k, v)


# ------------------------------------------------------------------ hit counts (the cold-start checks)

HIT_FIELDS = ("hits", "hit_tokens")


def hit_count(rec: dict) -> float:
    """Every tier's hits and hit tokens in a mapped record, plus KVBM's matched tokens."""
    total = 0.0
    for tier in ("tier0", "tier1", "tier2"):
        for f in HIT_FIELDS:
            total += float(rec[tier].get(f) or 0)
    total += float(rec["server"].get("matched_tokens") or 0)
    return total


def hits_between(before: dict, after: dict) -> float | None:
    """Hit counters gained between two scrapes of the same sources (None when no source answered)."""
    deltas = {}
    for name, snap in after.items():
        if snap is None or before.get(name) is None:
            continue
        st = DeltaState()
        st.update(before[name])
        deltas[name] = st.update(snap)
    if not deltas:
        return None
    return hit_count(map_deltas(deltas, None))


def absolute_hits(snaps: dict) -> float | None:
    """Hit counters of a stack since it started: its scrapes against empty ones (a fresh stack: 0)."""
    return hits_between({k: Snapshot() for k in snaps}, snaps)
