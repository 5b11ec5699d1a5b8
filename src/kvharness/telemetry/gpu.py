"""GPU sampler over NVML (nvidia-ml-py, module ``pynvml``), degrading to ``None`` with a reason.

No driver / no library / no device -> :attr:`GpuSampler.reason` is set once and :meth:`sample` returns
``None`` every tick (the collector writes ``gpu: null`` and the reason once). On unified-memory parts
(GB10) NVML answers ``NVMLError_NotSupported`` for memory queries: that field becomes ``None`` and the
reason is recorded in ``unsupported`` rather than failing the device.
"""

from __future__ import annotations

from typing import Any


class GpuSampler:
    def __init__(self, nvml: Any = None):
        """``nvml`` lets tests inject a fake module with the pynvml API; default imports pynvml."""
        self.reason: str | None = None
        self.handles: list[Any] = []
        self.unsupported: dict[str, str] = {}  # field -> reason, once per field
        self.nvml = nvml
        try:
            if self.nvml is None:
                import pynvml

                self.nvml = pynvml
            self.nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError ...
            self.reason = f"NVML unavailable: {type(exc).__name__}: {exc}"
            self.nvml = None
            return
        try:
            n = self.nvml.nvmlDeviceGetCount()
            self.handles = [self.nvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
        except Exception as exc:
            self.reason = f"NVML device enumeration failed: {type(exc).__name__}: {exc}"
            self.handles = []
            return
        if not self.handles:
            self.reason = "NVML reports no GPU"

    @property
    def available(self) -> bool:
        return self.reason is None

    def _get(self, field: str, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:
            if field not in self.unsupported:
                self.unsupported[field] = f"{type(exc).__name__}: {exc}"
            return None

    def sample(self) -> list[dict] | None:
        if not self.available:
            return None
        nv = self.nvml
        out = []
        for i, h in enumerate(self.handles):
            util = self._get("util", nv.nvmlDeviceGetUtilizationRates, h)
            mem = self._get("mem", nv.nvmlDeviceGetMemoryInfo, h)
            power = self._get("power", nv.nvmlDeviceGetPowerUsage, h)
            clock = self._get("sm_clock", nv.nvmlDeviceGetClockInfo, h, getattr(nv, "NVML_CLOCK_SM", 1))
            out.append({
                "index": i,
                "util_pct": getattr(util, "gpu", None) if util is not None else None,
                "mem_util_pct": getattr(util, "memory", None) if util is not None else None,
                "mem_used_bytes": getattr(mem, "used", None) if mem is not None else None,
                "mem_total_bytes": getattr(mem, "total", None) if mem is not None else None,
                "power_w": power / 1000.0 if power is not None else None,
                "sm_clock_mhz": clock,
            })
        return out

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass
