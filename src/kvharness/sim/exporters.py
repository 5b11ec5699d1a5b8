"""The metric families the simulator exports, under the real stacks' names.

- mode A: ``trtllm_*`` (TensorRT-LLM's Prometheus collector names, labels ``model_name``, ``engine_type``).
- mode B: ``dynamo_frontend_*`` on the main port; ``kvbm_*`` (Rust IntCounter/Gauge: no ``_total``) on the
  separate KVBM metrics port.
- both: ``kvsim_*`` ground truth only a simulator can know (queue depth, modelled step time, emission lag,
  per-tier fetch latency, tier occupancy, real tier-2 I/O, speedup, block-bytes scale).
"""

from __future__ import annotations

import math

from kvharness.sim.metrics import TOKEN_BUCKETS, Registry

LAG_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.0075, 0.01,
               0.025, 0.05, 0.1, 0.5, 1.0)
FETCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _two_significant(value: float) -> float:
    magnitude = math.floor(math.log10(value))
    return round(value, 1 - magnitude)


def log_buckets(lo: float, hi: float, count: int) -> tuple[float, ...]:
    """Bucket bounds the way the Dynamo frontend makes them: 0, then ``count - 1`` log-spaced values
    from above ``lo`` up to ``hi``, each rounded to two significant figures, duplicates dropped."""
    step = (math.log(hi) - math.log(lo)) / (count - 1)
    bounds = {0.0} | {_two_significant(math.exp(math.log(lo) + step * i)) for i in range(1, count)}
    return tuple(sorted(bounds))


def dynamo_latency_buckets(lo: float, hi: float, count: int, fine_count: int) -> tuple[float, ...]:
    """Every bound of the real frontend's default histogram (``log_buckets(lo, hi, count)``) plus a finer
    grid of ``fine_count`` over the same range, so that a dashboard query on a real ``le`` works unchanged
    and a percentile interpolated from the buckets lands within a few per cent."""
    return tuple(sorted(set(log_buckets(lo, hi, count)) | set(log_buckets(lo, hi, fine_count))))


# the Dynamo frontend's defaults (lib/llm/src/http/service/metrics.rs: DYN_METRICS_TTFT_* 0.001..480 s in
# 18, DYN_METRICS_ITL_* 0.001..2 s in 13, DYN_METRICS_REQUEST_DURATION_* 1..512 s in 10), refined
TTFT_BUCKETS = dynamo_latency_buckets(0.001, 480.0, 18, 100)
ITL_BUCKETS = dynamo_latency_buckets(0.001, 2.0, 13, 60)
REQUEST_DURATION_BUCKETS = tuple(sorted(set(log_buckets(1.0, 512.0, 10)) | set(log_buckets(0.001, 512.0, 100))))


class _SetOnObserve:
    """A gauge fed through the histogram interface the engine calls (``observe``): keeps the latest value."""

    def __init__(self, gauge):
        self.gauge = gauge

    def observe(self, v):
        self.gauge.set(v)


class SimMetrics:
    def __init__(self, mode: str, model: str, *, speedup: float, block_bytes: int, block_bytes_scale: float,
                 tokens_per_block: int, t0_blocks: int, t1_blocks: int, t2_blocks: int, max_batch: int,
                 max_num_tokens: int):
        self.mode = mode
        self.model = model
        self.main = Registry()
        self.kvbm = Registry()
        r = self.main
        self.tokens_per_block = tokens_per_block
        # ---- engine-facing names ------------------------------------------------------------------
        if mode == "A":
            lab = {"model_name": model, "engine_type": "trtllm"}
            self.ttft = r.histogram("trtllm_time_to_first_token_seconds", "Time to first token", const_labels=lab)
            self.e2e = r.histogram("trtllm_e2e_request_latency_seconds", "End-to-end request latency", const_labels=lab)
            self.tpot = r.histogram("trtllm_time_per_output_token_seconds", "Time per output token", const_labels=lab)
            self.queue_time = r.histogram("trtllm_request_queue_time_seconds", "Time in the waiting queue", const_labels=lab)
            self.success = r.counter("trtllm_request_success_total", "Finished requests", ("finished_reason",), const_labels=lab)
            self.prompt_tokens = r.counter("trtllm_prompt_tokens_total", "Prompt tokens", const_labels=lab)
            self.gen_tokens = r.counter("trtllm_generation_tokens_total", "Generated tokens", const_labels=lab)
            self.cache_hit_tokens = r.counter("trtllm_prompt_cache_hit_tokens_total", "Prompt tokens served from the KV cache", const_labels=lab)
            self.reused_blocks = r.counter("trtllm_kv_cache_reused_blocks_total", "Reused KV blocks", const_labels=lab)
            self.missed_blocks = r.counter("trtllm_kv_cache_missed_blocks_total", "Missed KV blocks", const_labels=lab)
            self.kv_hit_rate = r.gauge("trtllm_kv_cache_hit_rate", "KV cache block hit rate", const_labels=lab)
            self.kv_util = r.gauge("trtllm_kv_cache_utilization", "Fraction of KV blocks in use", const_labels=lab)
            self.kv_max = r.gauge("trtllm_kv_cache_max_blocks", "KV blocks in the pool", const_labels=lab)
            self.kv_free = r.gauge("trtllm_kv_cache_free_blocks", "Free KV blocks", const_labels=lab)
            self.kv_used = r.gauge("trtllm_kv_cache_used_blocks", "Used KV blocks", const_labels=lab)
            self.kv_tpb = r.gauge("trtllm_kv_cache_tokens_per_block", "Tokens per KV block", const_labels=lab)
            self.n_running = r.gauge("trtllm_num_requests_running", "Running requests", const_labels=lab)
            self.n_waiting = r.gauge("trtllm_num_requests_waiting", "Waiting requests", const_labels=lab)
            # a Gauge upstream (tensorrt_llm/metrics/collector.py): the latest iteration's latency
            self.iteration_latency = _SetOnObserve(r.gauge("trtllm_iteration_latency_seconds", "Iteration latency in seconds",
                                                           const_labels=lab))
            self.kv_max.set(t0_blocks)
            self.kv_tpb.set(tokens_per_block)
            self.itl_hist = None
        else:
            lab = {"model": model}
            self.ttft = r.histogram("dynamo_frontend_time_to_first_token_seconds", "Time to first token",
                                    const_labels=lab, buckets=TTFT_BUCKETS)
            self.itl_hist = r.histogram("dynamo_frontend_inter_token_latency_seconds", "Inter-token latency",
                                        const_labels=lab, buckets=ITL_BUCKETS)
            self.e2e = r.histogram("dynamo_frontend_request_duration_seconds", "Request duration",
                                   const_labels=lab, buckets=REQUEST_DURATION_BUCKETS)
            self.isl = r.histogram("dynamo_frontend_input_sequence_tokens", "Input sequence length", const_labels=lab, buckets=TOKEN_BUCKETS)
            self.osl = r.histogram("dynamo_frontend_output_sequence_tokens", "Output sequence length", const_labels=lab, buckets=TOKEN_BUCKETS)
            self.cached_hist = r.histogram("dynamo_frontend_cached_tokens", "Cached prompt tokens", const_labels=lab, buckets=TOKEN_BUCKETS)
            self.requests = r.counter("dynamo_frontend_requests_total", "Requests", ("endpoint", "request_type", "status"), const_labels=lab)
            self.out_tokens = r.counter("dynamo_frontend_output_tokens_total", "Output tokens", const_labels=lab)
            self.active = r.gauge("dynamo_frontend_active_requests", "Requests in flight", const_labels=lab)
            self.queued = r.gauge("dynamo_frontend_queued_requests", "Requests waiting for the engine", const_labels=lab)
            self.disconnected = r.gauge("dynamo_frontend_disconnected_clients", "Clients that disconnected", const_labels=lab)
            r.gauge("dynamo_frontend_model_total_kv_blocks", "KV blocks in the device pool", const_labels=lab).set(t0_blocks)
            r.gauge("dynamo_frontend_model_max_num_seqs", "Max batch size", const_labels=lab).set(max_batch)
            r.gauge("dynamo_frontend_model_max_num_batched_tokens", "Max tokens per step", const_labels=lab).set(max_num_tokens)
            r.gauge("dynamo_frontend_model_kv_cache_block_size", "Tokens per KV block", const_labels=lab).set(tokens_per_block)
            self.iteration_latency = r.histogram("kvsim_iteration_latency_seconds", "Engine iteration latency (modelled)")
            k = self.kvbm
            self.kvbm_counters = {
                name: k.counter(name, help_text) for name, help_text in (
                    ("kvbm_offload_blocks_d2h", "Blocks offloaded device to host (G1->G2)"),
                    ("kvbm_offload_blocks_h2d", "Blocks offloaded host to disk (G2->G3)"),
                    ("kvbm_offload_blocks_d2d", "Blocks offloaded device to disk (G1->G3)"),
                    ("kvbm_onboard_blocks_h2d", "Blocks onboarded host to device (G2->G1)"),
                    ("kvbm_onboard_blocks_d2d", "Blocks onboarded disk to device (G3->G1)"),
                    ("kvbm_matched_tokens", "Tokens matched in KVBM tiers"),
                )
            }
            self.kvbm_host_hit = k.gauge("kvbm_host_cache_hit_rate", "Host cache hit rate (sliding window)")
            self.kvbm_disk_hit = k.gauge("kvbm_disk_cache_hit_rate", "Disk cache hit rate (sliding window)")
        # ---- ground truth -------------------------------------------------------------------------
        g = r
        g.gauge("kvsim_speedup", "Modelled time is divided by this factor").set(speedup)
        g.gauge("kvsim_block_bytes_scale", "Tier-2 file bytes per block = block bytes x this").set(block_bytes_scale)
        g.gauge("kvsim_kv_block_size_bytes", "Modelled bytes per KV block (unscaled)").set(block_bytes)
        g.gauge("kvsim_tokens_per_block", "Tokens per KV block").set(tokens_per_block)
        self.queue_depth = g.gauge("kvsim_queue_depth", "Requests waiting for admission")
        self.running = g.gauge("kvsim_running_requests", "Requests admitted to the batch")
        self.tier_blocks = g.gauge("kvsim_tier_blocks", "Blocks held per tier", ("tier",))
        self.tier_capacity = g.gauge("kvsim_tier_capacity_blocks", "Block capacity per tier", ("tier",))
        for t, c in (("0", t0_blocks), ("1", t1_blocks), ("2", t2_blocks)):
            self.tier_capacity.labels(t).set(c)
            self.tier_blocks.labels(t).set(0)
        self.fetch_seconds = g.histogram("kvsim_tier_fetch_seconds", "Onboarding latency of a prefix hit (real read + modelled transfer), by deepest tier, wall seconds", ("tier",), buckets=FETCH_BUCKETS)
        self.fetch_real_io_seconds = g.histogram("kvsim_tier2_read_io_seconds", "Real wall time of tier-2 file reads per onboarding", buckets=FETCH_BUCKETS)
        self.t2_write_io_seconds = g.histogram("kvsim_tier2_write_io_seconds", "Real wall time per tier-2 block write", buckets=FETCH_BUCKETS)
        self.t2_read_bytes = g.counter("kvsim_tier2_read_bytes_total", "Real bytes read from tier-2 files")
        self.t2_write_bytes = g.counter("kvsim_tier2_write_bytes_total", "Real bytes written to tier-2 files")
        self.t2_verify_fail = g.counter("kvsim_tier2_verify_failures_total", "Tier-2 reads whose block hash did not match")
        self.t2_io_errors = g.counter("kvsim_tier2_io_errors_total", "Tier-2 block writes / reads that raised (ENOSPC, EIO), by kind", ("kind",))
        self.evictions = g.counter("kvsim_evictions_total", "Blocks evicted per tier", ("tier",))
        self.tier_hits = g.counter("kvsim_tier_hit_blocks_total", "Prompt blocks found per tier at admission (T1/T2: continuing the T0 match)", ("tier",))
        self.tier_misses = g.counter("kvsim_tier_miss_blocks_total", "Prompt blocks looked up in a tier and not found there", ("tier",))
        self.t2_filtered = g.counter("kvsim_disk_offload_filtered_total", "Blocks the disk offload filter kept off tier 2 (never reused)")
        self.preemptions = g.counter("kvsim_preemptions_total", "Sequences preempted (recomputed later)")
        self.step_seconds = g.histogram("kvsim_step_seconds", "Modelled engine step time (real-time seconds, before speedup)")
        self.emission_lag = g.histogram("kvsim_emission_lag_seconds", "Actual minus modelled token emission time", buckets=LAG_BUCKETS)
        self.wake_lag = g.histogram("kvsim_step_wake_lag_seconds", "Engine wake-up minus the modelled end of a step (timer + loop latency)", buckets=LAG_BUCKETS)
        self.step_work = g.histogram("kvsim_step_work_seconds", "Engine CPU work between waking from a step and sleeping for the next (writes, bookkeeping, scheduling)", buckets=LAG_BUCKETS)
        self.timer_late = g.histogram("kvsim_timer_late_seconds", "How late the event loop fired the engine's step timer", buckets=LAG_BUCKETS)
        self.queue_seconds = g.histogram("kvsim_queue_seconds", "Arrival to admission (wall seconds)")
        self.prompt_tokens_sim = g.counter("kvsim_prompt_tokens_total", "Prompt tokens received")
        self.cached_tokens_sim = g.counter("kvsim_cached_tokens_total", "Prompt tokens found in any KV tier")
        self.requests_sim = g.counter("kvsim_requests_total", "Requests by outcome", ("status",))
        self.lora_loads = g.counter("kvsim_lora_loads_total", "Adapter loads from tier 2 (misses)")
        self.lora_hits = g.counter("kvsim_lora_hits_total", "Adapter requests served by a resident slot")
        self.lora_load_seconds = g.histogram("kvsim_lora_load_seconds", "Adapter load time (wall seconds)", buckets=FETCH_BUCKETS)
        self.faults = g.counter("kvsim_faults_injected_total", "Injected faults", ("kind",))

    # -- engine hooks ------------------------------------------------------------------------------
    def itl(self, dt: float) -> None:
        if self.itl_hist is not None:
            self.itl_hist.observe(dt)

    def on_first_token(self, s, now: float) -> None:
        self.ttft.observe(now - s.t_arrival)
        self.queue_seconds.observe(s.t_queue_s)
        if self.mode == "A":
            self.queue_time.observe(s.t_queue_s)

    def on_finish(self, s, now: float) -> None:
        self.e2e.observe(now - s.t_arrival)
        n = s.n_gen
        self.prompt_tokens_sim.inc(s.n_prompt)
        self.cached_tokens_sim.inc(s.cached_tokens)
        if self.mode == "A":
            if n > 1:
                self.tpot.observe((now - s.t_first) / (n - 1))
            self.success.labels("length").inc()
            self.prompt_tokens.inc(s.n_prompt)
            self.gen_tokens.inc(n)
            self.cache_hit_tokens.inc(s.cached_tokens)
        else:
            self.isl.observe(s.n_prompt)
            self.osl.observe(n)
            self.cached_hist.observe(s.cached_tokens)
            self.out_tokens.inc(n)

    def refresh(self, engine, kv, store=None, active: int = 0, disconnected: int = 0) -> None:
        """Update gauges from engine state just before a scrape."""
        st = kv.stats
        self.tier_blocks.labels("0").set(kv.t0_used)
        self.tier_blocks.labels("1").set(len(kv.t1))
        self.tier_blocks.labels("2").set(len(kv.t2))
        self.queue_depth.set(engine.queue_depth)
        self.running.set(len(engine.running))
        self.evictions.labels("0").set(st.t0_evictions)
        self.evictions.labels("1").set(st.t1_evictions)
        self.evictions.labels("2").set(st.t2_evictions)
        self.t2_filtered.labels().set(st.t2_filtered)
        for t, hit, miss in (("0", st.t0_hit_blocks, st.t0_miss_blocks), ("1", st.t1_hit_blocks, st.t1_miss_blocks),
                             ("2", st.t2_hit_blocks, st.t2_miss_blocks)):
            self.tier_hits.labels(t).set(hit)
            self.tier_misses.labels(t).set(miss)
        if store is not None:
            self.t2_read_bytes.labels().set(store.bytes_read)
            self.t2_write_bytes.labels().set(store.bytes_written)
            self.t2_verify_fail.labels().set(store.verify_failures)
            for kind, n in store.io_errors.items():
                self.t2_io_errors.labels(kind).set(n)
        if self.mode == "A":
            used = kv.t0_used
            self.kv_used.set(used)
            self.kv_free.set(kv.t0.capacity - used)
            self.kv_util.set(used / kv.t0.capacity if kv.t0.capacity else 0.0)
            self.reused_blocks.labels().set(st.t0_hit_blocks)
            self.missed_blocks.labels().set(st.t0_miss_blocks)
            tot = st.t0_hit_blocks + st.t0_miss_blocks
            self.kv_hit_rate.set(st.t0_hit_blocks / tot if tot else 0.0)
            self.n_running.set(len(engine.running))
            self.n_waiting.set(engine.queue_depth)
        else:
            self.active.set(active)
            self.queued.set(engine.queue_depth)
            self.disconnected.set(disconnected)
            c = self.kvbm_counters
            c["kvbm_offload_blocks_d2h"].labels().set(st.offload_d2h)
            c["kvbm_offload_blocks_h2d"].labels().set(st.offload_h2d)
            c["kvbm_offload_blocks_d2d"].labels().set(st.offload_d2d)
            c["kvbm_onboard_blocks_h2d"].labels().set(st.onboard_h2d)
            c["kvbm_onboard_blocks_d2d"].labels().set(st.onboard_d2d)
            c["kvbm_matched_tokens"].labels().set(st.matched_tokens)
            self.kvbm_host_hit.set(kv.host_hit_rate)
            self.kvbm_disk_hit.set(kv.disk_hit_rate)
