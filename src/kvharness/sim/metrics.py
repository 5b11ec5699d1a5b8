"""A minimal Prometheus text-format registry for the simulator.

Why not prometheus_client: real KVBM counters are Rust ``IntCounter`` without a ``_total`` suffix, which
prometheus_client always appends; and the engine observes one inter-token latency per sequence per step,
so ``Histogram.observe_n`` (n equal observations at once) keeps the hot path cheap. Single-threaded use
only (the event loop); nothing here locks.
"""

from __future__ import annotations

import bisect
import math

DEFAULT_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0,
                           2.5, 5.0, 7.5, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


def _fmt(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if v == math.inf:
        return "+Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _labelstr(names: tuple, values: tuple) -> str:
    if not names:
        return ""
    parts = []
    for n, v in zip(names, values):
        v = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{n}="{v}"')
    return "{" + ",".join(parts) + "}"


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: tuple = (), const_labels: dict | None = None):
        self.name, self.help = name, help_text
        self.const_names = tuple((const_labels or {}).keys())
        self.const_values = tuple((const_labels or {}).values())
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple, object] = {}

    def labels(self, *values):
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
            child = self._children[values] = self._new_child()
        return child

    def _label_prefix(self, values: tuple) -> str:
        return _labelstr(self.const_names + self.labelnames, self.const_values + values)

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {self.help}")
        out.append(f"# TYPE {self.name} {self.kind}")
        if not self.labelnames and () not in self._children:
            self._children[()] = self._new_child()
        for values, child in self._children.items():
            self._render_child(out, values, child)


class _Value:
    __slots__ = ("value",)

    def __init__(self):
        self.value = 0

    def inc(self, n=1):
        self.value += n

    def set(self, v):
        self.value = v


class Counter(_Metric):
    kind = "counter"

    def _new_child(self):
        return _Value()

    def inc(self, n=1):
        self.labels().inc(n)

    @property
    def value(self):
        return self.labels().value

    def _render_child(self, out, values, child):
        out.append(f"{self.name}{self._label_prefix(values)} {_fmt(child.value)}")


class Gauge(Counter):
    kind = "gauge"

    def set(self, v):
        self.labels().set(v)


class _Hist:
    __slots__ = ("bounds", "counts", "sum", "count", "prefixes")

    def __init__(self, bounds):
        self.prefixes = None  # rendered series names, built on the first scrape
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.count += 1

    def observe_n(self, v: float, n: int) -> None:
        if n <= 0:
            return
        self.counts[bisect.bisect_left(self.bounds, v)] += n
        self.sum += v * n
        self.count += n


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name, help_text, labelnames=(), const_labels=None, buckets=DEFAULT_LATENCY_BUCKETS):
        super().__init__(name, help_text, labelnames, const_labels)
        self.bounds = tuple(sorted(float(b) for b in buckets))

    def _new_child(self):
        return _Hist(self.bounds)

    def observe(self, v):
        self.labels().observe(v)

    def observe_n(self, v, n):
        self.labels().observe_n(v, n)

    def _render_child(self, out, values, h):
        if h.prefixes is None:  # series names never change: build them once per child
            names = self.const_names + self.labelnames + ("le",)
            base = self.const_values + values
            lp = self._label_prefix(values)
            h.prefixes = ([f"{self.name}_bucket{_labelstr(names, base + (_fmt(b),))} " for b in self.bounds]
                          + [f"{self.name}_bucket{_labelstr(names, base + ('+Inf',))} ",
                             f"{self.name}_sum{lp} ", f"{self.name}_count{lp} "])
        pre = h.prefixes
        acc = 0
        i = 0
        for c in h.counts[:-1]:
            acc += c
            out.append(pre[i] + str(acc))
            i += 1
        out.append(pre[i] + str(h.count))
        out.append(pre[i + 1] + _fmt(h.sum))
        out.append(pre[i + 2] + str(h.count))


class Registry:
    def __init__(self):
        self._metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> _Metric:
        self._metrics.append(metric)
        return metric

    def counter(self, *a, **kw) -> Counter:
        return self.add(Counter(*a, **kw))

    def gauge(self, *a, **kw) -> Gauge:
        return self.add(Gauge(*a, **kw))

    def histogram(self, *a, **kw) -> Histogram:
        return self.add(Histogram(*a, **kw))

    def render(self) -> bytes:
        out: list[str] = []
        for m in self._metrics:
            m.render(out)
        out.append("")
        return "\n".join(out).encode()
