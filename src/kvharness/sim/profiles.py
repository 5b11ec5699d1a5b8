"""Hardware and model profiles (configs/models.yaml) and the roofline step-time model built from them.

All times here are *modelled real time* (speedup 1). The engine divides by ``--speedup``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

_REPO_MODELS = Path(__file__).resolve().parents[3] / "configs" / "models.yaml"


def default_models_path() -> Path:
    env = os.environ.get("KVHARNESS_MODELS_YAML")
    return Path(env) if env else _REPO_MODELS


def load_models_yaml(path: str | os.PathLike | None = None) -> dict:
    p = Path(path) if path else default_models_path()
    if not p.is_file():
        raise FileNotFoundError(f"model profiles not found at {p} (pass --models-config or set KVHARNESS_MODELS_YAML)")
    with open(p) as f:  # libyaml's safe loader when this PyYAML has it: 10x faster, part of every start-up
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # a safe loader


@dataclass(frozen=True)
class TimingModel:
    """Roofline per engine step; see configs/models.yaml for the formula."""

    hardware: str
    model: str
    precision: str
    bandwidth: float                 # bytes/s
    efficiency: float
    weight_bytes: float
    kv_bytes_per_token: int
    per_sequence_s: float
    prefill_s_per_token: float
    attention_s_per_token2: float
    step_overhead_s: float
    request_overhead_s: float
    bw_g1_g2: float
    bw_g2_g3: float

    @property
    def _eff_bw(self) -> float:
        return self.bandwidth * self.efficiency

    def step_s(self, decode_seqs: int, context_tokens: int, prefill_tokens: int = 0,
               prefill_attn_pairs: float = 0.0) -> float:
        """One iteration: ``decode_seqs`` sequences generate a token, ``context_tokens`` is the KV read by
        every sequence in the step, ``prefill_tokens`` new tokens are computed, ``prefill_attn_pairs`` =
        sum over prefill chunks of chunk_tokens * mean attended context."""
        memory = (self.weight_bytes + context_tokens * self.kv_bytes_per_token) / self._eff_bw \
            + decode_seqs * self.per_sequence_s
        compute = prefill_tokens * self.prefill_s_per_token + prefill_attn_pairs * self.attention_s_per_token2
        return self.step_overhead_s + (memory if memory > compute else compute)

    # Convenience figures for calibration and docs (no batching interplay).
    def prefill_only_s(self, tokens: int) -> float:
        return self.step_s(0, tokens, tokens, tokens * tokens / 2.0)

    def decode_step_s(self, batch: int, context_per_seq: int) -> float:
        return self.step_s(batch, batch * context_per_seq)

    def ttft_s(self, prompt_tokens: int) -> float:
        return self.request_overhead_s + self.prefill_only_s(prompt_tokens)


def build_timing_model(hardware: str, model: str, precision: str, models_yaml: dict | None = None) -> TimingModel:
    cfg = models_yaml if models_yaml is not None else load_models_yaml()
    hw_all, mod_all = cfg.get("hardware", {}), cfg.get("models", {})
    if hardware not in hw_all:
        raise ValueError(f"unknown hardware profile {hardware!r}; known: {', '.join(sorted(hw_all))}")
    if model not in mod_all:
        raise ValueError(f"unknown model profile {model!r}; known: {', '.join(sorted(mod_all))}")
    hw, mod = hw_all[hardware], mod_all[model]
    precs = mod.get("precisions", {})
    if precision not in precs:
        raise ValueError(f"model {model!r} has no precision {precision!r}; known: {', '.join(sorted(precs))}")
    pr = precs[precision]
    kv_bytes = 2 * int(mod["layers"]) * int(mod["kv_heads"]) * int(mod["head_dim"]) * int(pr.get("kv_dtype_bytes", 1))
    tb = hw.get("tier_bandwidth_bytes_per_s", {})
    return TimingModel(
        hardware=hardware, model=model, precision=precision,
        bandwidth=float(hw["memory_bandwidth_bytes_per_s"]),
        efficiency=float(pr.get("decode_efficiency", hw.get("decode_efficiency", 0.7))),
        weight_bytes=float(pr["weight_bytes"]),
        kv_bytes_per_token=kv_bytes,
        per_sequence_s=float(pr.get("per_sequence_s", 0.0)),
        prefill_s_per_token=float(pr["prefill_s_per_token"]),
        attention_s_per_token2=float(pr.get("attention_s_per_token2", 0.0)),
        step_overhead_s=float(hw.get("step_overhead_s", 0.001)),
        request_overhead_s=float(hw.get("request_overhead_s", 0.0)),
        bw_g1_g2=float(tb.get("g1_g2", 14e9)),
        bw_g2_g3=float(tb.get("g2_g3", 7e9)),
    )


def kv_bytes_per_token(model: str, precision: str, hardware: str = "gb10") -> int | None:
    """KV bytes per token of a model profile (configs/models.yaml, owned by the simulator), None if unknown."""
    try:
        return int(build_timing_model(hardware, model, precision).kv_bytes_per_token)
    except (KeyError, ValueError, TypeError, OSError):
        return None
