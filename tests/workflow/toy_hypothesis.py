"""A toy hypothesis declared outside the package (loaded through the config's hypothesis_modules)."""

from kvharness.analysis.registry import Figure, Gate, Hypothesis, Result, Table, register


def analyze(ctx):
    rows = [{"stack": r["stack"], "ctx": r["context_tokens"], "n_ok": r["n_ok"], "ttft_ms_p50": r["ttft_ms_p50"]}
            for r in ctx.rows]

    def plot(path):
        path.write_bytes(b"\x89PNG\r\n\x1a\n toy")

    return Result(tables={"summary": sorted(rows, key=lambda r: (r["stack"], r["ctx"]))}, figures={"toy": plot},
                  facts={"n": sum(r["n_ok"] for r in rows)})


register(Hypothesis(
    id="H42",
    question="Does the toy hypothesis run end to end?",
    analyze=analyze,
    tables=(Table("summary", ["stack", "ctx", "n_ok", "ttft_ms_p50"]),),
    figures=(Figure("toy", "a toy figure"),),
    verdict=lambda result: f"{result.facts['n']} requests succeeded.",
    gates=lambda result: [Gate("some request succeeded", result.facts["n"] > 0, result.facts["n"], "> 0")],
))
