"""GPU sampler: NVML absent -> None with a reason; unified memory (GB10) -> memory fields None with a reason."""

from __future__ import annotations

from types import SimpleNamespace

from kvharness.telemetry.gpu import GpuSampler


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # pynvml's naming
    def __str__(self):
        return "Not Supported"


class NVMLError_LibraryNotFound(NVMLError):
    def __str__(self):
        return "NVML Shared Library Not Found"


class FakeNvml:
    """pynvml's API surface used by the sampler; memory queries unsupported like a GB10."""

    NVML_CLOCK_SM = 1

    def __init__(self, count=1, init_error=None, memory_supported=False):
        self.count, self.init_error, self.memory_supported = count, init_error, memory_supported
        self.shutdown = False

    def nvmlInit(self):
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"h{i}"

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetMemoryInfo(self, h):
        if not self.memory_supported:
            raise NVMLError_NotSupported()
        return SimpleNamespace(used=2 << 30, total=8 << 30, free=6 << 30)

    def nvmlDeviceGetPowerUsage(self, h):
        return 41500  # mW

    def nvmlDeviceGetClockInfo(self, h, which):
        return 2418


def test_real_pynvml_without_driver_degrades_to_reason():
    g = GpuSampler()
    if g.available:  # a machine with a GPU: the sample must be well-formed instead
        s = g.sample()
        assert s and "util_pct" in s[0]
        return
    assert g.sample() is None
    assert g.reason and "NVML" in g.reason
    g.close()


def test_library_missing_is_a_reason_not_a_crash():
    g = GpuSampler(FakeNvml(init_error=NVMLError_LibraryNotFound()))
    assert not g.available and g.sample() is None
    assert "NVMLError_LibraryNotFound" in g.reason and "Library Not Found" in g.reason


def test_no_device():
    g = GpuSampler(FakeNvml(count=0))
    assert g.sample() is None and g.reason == "NVML reports no GPU"


def test_unified_memory_not_supported_gives_null_memory_with_reason():
    nv = FakeNvml(memory_supported=False)
    g = GpuSampler(nv)
    s = g.sample()
    assert s == [{"index": 0, "util_pct": 87, "mem_util_pct": 40, "mem_used_bytes": None,
                  "mem_total_bytes": None, "power_w": 41.5, "sm_clock_mhz": 2418}]
    assert g.unsupported == {"mem": "NVMLError_NotSupported: Not Supported"}
    g.sample()
    assert len(g.unsupported) == 1  # the reason is recorded once
    g.close()
    assert nv.shutdown


def test_discrete_gpu_memory():
    s = GpuSampler(FakeNvml(count=2, memory_supported=True)).sample()
    assert [d["index"] for d in s] == [0, 1] and s[1]["mem_total_bytes"] == 8 << 30
