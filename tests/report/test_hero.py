"""The H8 hero figure: nothing clipped, nothing over the tick labels, no "-0 %"."""

import pytest

from kvharness.analysis.hero import build_hero, pct_label


def _rows(workloads):
    table, capacity = [], []
    for wl in workloads:
        for role, stack, base in (("A", "sim-A", 100.0), ("B", "sim-B", 99.8)):
            for c, p99 in ((8, base), (32, 3 * base), (128, 9 * base)):
                capacity.append({"workload": wl, "stack": stack, "role": role, "concurrency": c, "ttft_ms_p99": p99,
                                 "max_slo_concurrency": 32, "slo_ttft_ms": 500.0})
            for rule, c in (("uwork_min", 8), ("uwork_max", 32)):
                p99 = base if c == 8 else 3 * base
                table.append({"workload": wl, "stack": stack, "role": role, "load_rule": rule, "concurrency": c,
                              "ttft_ms_p99": p99, "tiered": role == "B", "memory_budget_bytes": 6 << 30,
                              "vs_A_ttft_ms_p99_pct": None if role == "A" else -0.2})
    return table, capacity


@pytest.mark.parametrize("workloads", [["chat"], ["chat", "noreuse"]])
def test_title_inside_the_figure_and_deltas_clear_of_the_tick_labels(workloads):
    import matplotlib.pyplot as plt

    fig = build_hero(*_rows(workloads))
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        title = fig._suptitle.get_window_extent(renderer)
        assert title.x0 >= 0 and title.x1 <= fig.bbox.x1 and title.y1 <= fig.bbox.y1  # not clipped, one panel or two
        for ax in fig.axes:
            ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
            for text in ax.texts:
                box = text.get_window_extent(renderer)
                assert "-0 %" not in text.get_text() and "±0 %" in text.get_text()  # -0.2 % is no change, not "-0"
                assert ax.bbox.contains(box.x0, box.y0) and ax.bbox.contains(box.x1, box.y1)
                assert not any(box.overlaps(t) for t in ticks)
    finally:
        plt.close(fig)


def test_pct_label_never_prints_minus_zero():
    assert [pct_label(x) for x in (-0.4, 0.0, 0.4, -0.6, 12.2)] == ["±0 %", "±0 %", "±0 %", "-1 %", "+12 %"]
