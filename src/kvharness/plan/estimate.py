"""`kvharness plan`: what a run would measure and how long it should take, before it runs.

Per hypothesis: the cells (already measured / to run), the expected wall time of those to run, and the
total. A cell's time is its load time plus the per-cell overhead (job start, launch, health, teardown,
write: measured from the finished cells under ``--results`` when there are any, else DEFAULT_OVERHEAD_S).
Its load time comes from the first rule of ESTIMATORS that knows the cell:

* ``evidence``  ``load.min_ok_requests`` (run until that many requests succeeded, at most
  ``load.max_duration_s`` / ``duration_s``): the requests over the expected rate, capped by the bound;
* ``requests``  a request count (``max_requests``, or a sessioned chat's sessions x turns): the same;
* ``duration``  ``duration_s`` + ``warmup_s`` + ``cooldown_s`` (a closed or open loop that runs its time).

The expected rate is measured (finished cells of the same hypothesis and stack, nearest concurrency)
when there is one, else the simulator's own step-time model for a simulated stack, else unknown (the
duration bound is used and the line says so). A load at U_work uses H0's ``uwork.csv`` when it exists,
else an assumed U_work, said on the line: the first level of H0's sweep where the simulator model's
throughput reaches 75 % of its peak (8 for the default config, the U_work docs/simulator.md measured on a
quiet machine; a busy machine measures less, and its U_work cells then take longer than planned).

``kvharness plan`` saves its estimate to ``<results>/plan.json``; after the run ``kvharness plan
--compare`` sets each cell's estimate beside what its job took (Snakemake's ``benchmark:`` file, else
the cell's ``wall_s``). To add a rule, write ``def rule(spec, ctx) -> Estimate | None`` and put it in
ESTIMATORS before the ones it should override.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kvharness.cellfiles import CELL_JSON, SUMMARY_JSON
from kvharness.errors import ConfigError
from kvharness.plan import uwork

DEFAULT_OVERHEAD_S = 0.8     # per cell without a finished one to measure: job wall - load phase, median of
                             # 54 simulated cells on the 2-core development box (0.7 s, 2026-12-05)
ANALYSIS_S = 4.0             # per hypothesis: its analysis job (a checkpoint; figures included)
WORKFLOW_START_S = 6.0       # Snakemake parsing the workflow and building the DAG, once per run
UWORK_RULES = uwork.RULES
UWORK_MODEL_SHARE = 0.75     # U_work assumed before H0 ran: where the model's throughput reaches this share of its peak


@dataclass
class Estimate:
    load_s: float
    basis: str               # short: which rule and what it assumed


@dataclass
class Context:
    results: Path
    cfg: dict
    overhead_s: float = DEFAULT_OVERHEAD_S
    overhead_basis: str = "default"
    rates: dict = field(default_factory=dict)    # (hyp, stack name) -> [(concurrency, req/s)]
    uwork: dict = field(default_factory=dict)     # stack name -> U_work used
    uwork_assumed: dict = field(default_factory=dict)  # stack name -> U_work assumed before H0 ran
    use_measured: bool = True


# ---- config as Snakemake sees it -------------------------------------------------------------------

def merge(base: dict, over: dict) -> dict:
    """Snakemake's --configfile merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(configfiles: list[str], only: list[str] | None = None) -> dict:
    from kvharness.plan.config import CONFIG_DIR, check_config_file, validate_config

    raw: dict = {}
    for path in [str(CONFIG_DIR / "config.yaml"), *configfiles]:
        if not Path(path).is_file():
            raise ConfigError(f"config error: config file {path} not found")
        raw = merge(raw, check_config_file(path) or {})
    if only:
        raw["only"] = list(only)
    return validate_config(raw)


# ---- measured figures from finished cells -------------------------------------------------------------

def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def lock_wait_s(cell_dir: Path) -> float:
    """Seconds the cell's job waited for the machine lock (another workflow's cell was measuring)."""
    lock = ((_json(cell_dir / CELL_JSON) or {}).get("measurement") or {}).get("lock") or {}
    return float(lock.get("waited_s") or 0.0)


def _job_seconds(cell_dir: Path) -> float | None:
    """What the cell's job took (Snakemake's benchmark file), else the cell's own wall time; without
    the wait for the machine lock, which no plan of this workflow can know."""
    bench = cell_dir.parents[1] / "benchmarks" / f"{cell_dir.name}.tsv"
    try:
        return float(bench.read_text().splitlines()[1].split("\t")[0]) - lock_wait_s(cell_dir)
    except (OSError, IndexError, ValueError):
        summary = _json(cell_dir / SUMMARY_JSON) or {}
        return summary.get("wall_s")


def finished_cells(results: Path):
    """(hyp, cell folder, summary) of every finished cell under ``results``."""
    for cells in sorted(results.glob("*/cells")):
        for d in sorted(cells.iterdir()):
            if d.is_dir() and "." not in d.name:
                summary = _json(d / SUMMARY_JSON)
                if summary and summary.get("status") in ("ok", "degraded"):
                    yield cells.parent.name, d, summary


def build_context(cfg: dict, results: Path, use_measured: bool = True) -> Context:
    ctx = Context(results=results, cfg=cfg, use_measured=use_measured)
    overheads = []
    if use_measured:
        for hyp, d, summary in finished_cells(results):
            load_s = (summary.get("phases_s") or {}).get("load")
            job = _job_seconds(d)
            if load_s is None or job is None:
                continue
            overheads.append(job - load_s)
            n = (summary.get("requests") or {}).get("n_requests")
            spec = _json(d / CELL_JSON) or {}
            conc = (spec.get("load") or {}).get("concurrency")
            if n and load_s > 0 and isinstance(conc, (int, float)):
                ctx.rates.setdefault((hyp, (spec.get("stack") or {}).get("name")), []).append((conc, n / load_s))
        if overheads:
            ctx.overhead_s = statistics.median(overheads)
            ctx.overhead_basis = f"median of {len(overheads)} finished cells"
    uwork_csv = results / "H0" / "uwork.csv"
    if uwork_csv.is_file():
        try:  # the one reader; a bad file is the workflow's to refuse, the estimate falls back to the model
            ctx.uwork = uwork.read(uwork_csv)
        except ConfigError:
            ctx.uwork = {}
    ctx.uwork_assumed = assumed_uwork(cfg)
    return ctx


def assumed_uwork(cfg: dict, share: float = UWORK_MODEL_SHARE) -> dict:
    """Stack name -> the U_work a plan assumes before H0 has measured one: the first level of H0's sweep
    where the simulator model's throughput reaches ``share`` of its peak (past it, prompts queue); for a
    stack the model does not cover, the middle of the sweep."""
    from kvharness.plan.config import expand_cells

    if "H0" not in cfg["hypotheses"]:
        return {}
    by_stack: dict[str, list[tuple[int, float | None]]] = {}
    for spec in expand_cells(cfg, "H0"):
        c = spec["load"].get("concurrency")
        if isinstance(c, int):
            by_stack.setdefault(spec["stack"]["name"], []).append((c, model_rate(spec, c)))
    out = {}
    for stack, pts in by_stack.items():
        pts = sorted(set(pts))
        rates = [r for _, r in pts if r]
        if len(rates) == len(pts) and rates:
            out[stack] = next(c for c, r in pts if r >= share * max(rates))
        else:
            out[stack] = pts[len(pts) // 2][0]
    return out


# ---- per cell ---------------------------------------------------------------------------------------

def hypothesis_stacks(cfg: dict, hyp: str) -> list[str]:
    from kvharness.plan.config import load_stack

    return [load_stack(cfg["stacks"][role])["name"] for role in cfg["hypotheses"][hyp]["stacks"]]


def concurrency(spec: dict, ctx: Context) -> tuple[int, str]:
    """(users, note): a U_work rule resolved from uwork.csv or assumed."""
    c = spec["load"].get("concurrency")
    if c not in UWORK_RULES:
        return int(c or 1), ""
    stacks = hypothesis_stacks(ctx.cfg, spec["hyp"])  # uwork_min / uwork_max: over the hypothesis's stacks
    if c == "uwork" and spec["stack"]["name"] in ctx.uwork:
        return ctx.uwork[spec["stack"]["name"]], ""
    pick = min if c != "uwork_max" else max
    values = [ctx.uwork[s] for s in stacks if s in ctx.uwork]
    if values:
        return pick(values), ""
    if c == "uwork":
        stacks = [spec["stack"]["name"]]
    assumed = [ctx.uwork_assumed[s] for s in stacks if s in ctx.uwork_assumed] or [16]
    return pick(assumed), f"U_work assumed {pick(assumed)} (model; H0 measures it)"


def _mean_bucket_tokens(buckets) -> float:
    total = sum(float(b.get("weight", 1.0)) for b in buckets) or 1.0
    return sum(float(b.get("weight", 1.0)) * (b["min_tokens"] + b["max_tokens"]) / 2 for b in buckets) / total


def request_shape(load: dict) -> tuple[int | None, float, float, int]:
    """(requests the load sends or None when its time decides, mean new prompt tokens, mean context
    tokens, output tokens)."""
    from kvharness.loadgen.spec import H8_BUCKETS

    w = load.get("workload") or {}
    out = int(w.get("output_tokens") or 16)
    if w.get("kind") == "sessioned_chat":
        turns = int(w.get("turns") or 1) + int(w.get("resume_turns") or 0)
        n = int(w.get("sessions") or 1) * turns + int((w.get("pressure") or {}).get("count") or 0)
        first = _mean_bucket_tokens(w["first_turn_buckets"]) if w.get("first_turn_buckets") else float(w.get("first_turn_tokens") or 1024)
        step = float(w.get("turn_tokens") or 128) + out
        new = (first + (turns - 1) * step) / turns  # a later turn's history is cached: only its new tokens
        ctx_tokens = first + step * (turns - 1) / 2
        return n, new, ctx_tokens, out
    if w.get("kind") == "mixed_context":
        mean = _mean_bucket_tokens(w.get("buckets") or H8_BUCKETS)
    else:
        mean = float(w.get("context_tokens") or 1024)
    return load.get("max_requests") or load.get("min_ok_requests"), mean, mean, out


@functools.lru_cache(maxsize=16)
def _timing_model(hardware: str, model: str, precision: str):
    from kvharness.sim.profiles import build_timing_model

    try:
        return build_timing_model(hardware, model, precision)
    except (ValueError, OSError):
        return None


def model_rate(spec: dict, users: int) -> float | None:
    """Requests per second the simulator's step-time model gives for this load (simulated stacks only):
    the engine works requests off back to back, ``users`` at a time (capped by max_batch_size)."""
    if spec["stack"].get("kind") != "sim":
        return None
    tm = _timing_model(spec["hardware"], spec["model"], spec["precision"])
    if tm is None:
        return None
    n, new, ctx_tokens, out = request_shape(spec["load"])
    batch = max(1, min(users, int(spec["engine"].get("max_batch_size") or users)))
    per_request = tm.request_overhead_s + tm.prefill_only_s(int(new)) + out * tm.decode_step_s(batch, int(ctx_tokens)) / batch
    speedup = float((spec.get("sim") or {}).get("speedup") or 1.0)
    return speedup / per_request


def rate(spec: dict, ctx: Context, users: int) -> tuple[float | None, str]:
    measured = ctx.rates.get((spec["hyp"], spec["stack"]["name"])) if ctx.use_measured else None
    if measured:
        conc, r = min(measured, key=lambda cr: abs(math.log(max(cr[0], 1) / max(users, 1))))
        return r, f"measured {r:.0f} req/s at c={conc:g}"
    r = model_rate(spec, users)
    return (r, f"sim model {r:.0f} req/s") if r else (None, "rate unknown")


def _pauses(load: dict, n: int, users: int) -> float:
    p = load.get("pattern") or {}
    if p.get("kind") == "bursty":
        size = int(p.get("burst_size") or 0) or users
        return math.ceil(n / max(size, 1)) * float(p.get("pause_s") or 0.0)
    w = load.get("workload") or {}
    if w.get("kind") == "sessioned_chat":
        return float(w.get("idle_s") or 0.0) * (int(w.get("resume_turns") or 0) > 0)
    return 0.0


def _bounded_by_count(spec: dict, ctx: Context, n: int, bound: float | None, rule: str) -> Estimate:
    users, note = concurrency(spec, ctx)
    r, how = rate(spec, ctx, users)
    notes = ", ".join(x for x in (note, how) if x)
    if r is None:
        return Estimate(bound or 0.0, f"{rule}: {n} requests, {notes}: the bound {bound:g} s")
    t = n / r + _pauses(spec["load"], n, users)
    if bound is not None and t > bound:
        return Estimate(bound, f"{rule}: {n} requests, {notes}: capped at {bound:g} s")
    return Estimate(t, f"{rule}: {n} requests, {notes}")


def evidence_rule(spec: dict, ctx: Context) -> Estimate | None:
    load = spec["load"]
    n = load.get("min_ok_requests")
    if not n:
        return None
    bound = load.get("max_duration_s") or load.get("duration_s")
    return _bounded_by_count(spec, ctx, int(n), float(bound) if bound else None, "evidence")


def request_rule(spec: dict, ctx: Context) -> Estimate | None:
    n, _, _, _ = request_shape(spec["load"])
    if not n:
        return None
    bound = spec["load"].get("duration_s")
    return _bounded_by_count(spec, ctx, int(n), float(bound) if bound else None, "requests")


def duration_rule(spec: dict, ctx: Context) -> Estimate | None:
    """The load's time, and for closed-loop users the drain after it: the requests in flight finish,
    each taking users / rate (Little's law) at the expected rate."""
    load = spec["load"]
    if not load.get("duration_s"):
        return None
    t = float(load["duration_s"]) + float(load.get("warmup_s") or 0) + float(load.get("cooldown_s") or 0)
    from kvharness.loadgen.spec import CLOSED_PATTERNS, DEFAULT_PATTERN

    if (load.get("pattern") or DEFAULT_PATTERN).get("kind", DEFAULT_PATTERN["kind"]) in CLOSED_PATTERNS:
        users, _ = concurrency(spec, ctx)
        r, how = rate(spec, ctx, users)
        if r:
            return Estimate(t + users / r, f"duration {t:g} s + drain ({how})")
    return Estimate(t, f"duration {t:g} s")


ESTIMATORS: list[Callable[[dict, Context], Estimate | None]] = [evidence_rule, request_rule, duration_rule]


def estimate_cell(spec: dict, ctx: Context) -> Estimate:
    for rule in ESTIMATORS:
        est = rule(spec, ctx)
        if est is not None:
            return est
    return Estimate(0.0, "no rule knows this load")


# ---- the plan ---------------------------------------------------------------------------------------

def make_plan(cfg: dict, ctx: Context, hyps: list[str] | None = None) -> dict:
    from kvharness.plan.config import expand_cells

    out = {"created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "overhead_s": ctx.overhead_s,
           "overhead_basis": ctx.overhead_basis, "analysis_s": ANALYSIS_S, "workflow_start_s": WORKFLOW_START_S,
           "hypotheses": {}}
    total = WORKFLOW_START_S
    for hyp in hyps or list(cfg["hypotheses"]):
        cells = []
        for spec in expand_cells(cfg, hyp):
            done = (ctx.results / hyp / "cells" / spec["cell"]).is_dir() and ctx.use_measured
            est = estimate_cell(spec, ctx)
            cells.append({"cell": spec["cell"], "done": done, "load_s": round(est.load_s, 2),
                          "estimate_s": round(est.load_s + ctx.overhead_s, 2), "basis": est.basis})
        todo = [c for c in cells if not c["done"]]
        hyp_s = sum(c["estimate_s"] for c in todo) + (ANALYSIS_S if todo or not cells else 0.0)
        total += hyp_s
        out["hypotheses"][hyp] = {"cells": cells, "n_cells": len(cells), "n_todo": len(todo), "estimate_s": round(hyp_s, 1)}
    out["total_s"] = round(total, 1)
    return out


def _mmss(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def render(plan: dict, verbose: bool = False) -> str:
    lines = [f"{'hyp':<6}{'cells':>6}{'to run':>8}{'estimate':>10}  how (per cell: load + {plan['overhead_s']:.1f} s "
             f"overhead, {plan['overhead_basis']})"]
    for hyp, h in plan["hypotheses"].items():
        bases = sorted({c["basis"] for c in h["cells"] if not c["done"]})
        how = bases[0] + (f" (+{len(bases) - 1} more)" if len(bases) > 1 else "") if bases else "nothing to run"
        lines.append(f"{hyp:<6}{h['n_cells']:>6}{h['n_todo']:>8}{_mmss(h['estimate_s']):>10}  {how}")
        if verbose:
            lines += [f"    {c['cell']:<44}{'done' if c['done'] else _mmss(c['estimate_s']):>8}  {c['basis']}" for c in h["cells"]]
    lines.append(f"{'total':<20}{_mmss(plan['total_s']):>10}  (with {plan['workflow_start_s']:g} s workflow start and "
                 f"{plan['analysis_s']:g} s per analysis)")
    return "\n".join(lines) + "\n"


# ---- estimate vs what happened ------------------------------------------------------------------------

def compare(plan: dict, results: Path) -> tuple[str, dict]:
    rows = {}
    for hyp, h in plan["hypotheses"].items():
        est = act = waited = 0.0
        n = 0
        for c in h["cells"]:
            if c["done"]:
                continue
            took = _job_seconds(results / hyp / "cells" / c["cell"])
            if took is None:
                continue
            est, act, n = est + c["estimate_s"], act + took, n + 1
            waited += lock_wait_s(results / hyp / "cells" / c["cell"])
        rows[hyp] = {"cells": n, "estimate_s": est, "actual_s": act, "lock_wait_s": waited}
    lines = [f"{'hyp':<6}{'cells':>6}{'estimate':>10}{'actual':>10}{'error':>8}{'lock wait':>11}   "
             f"(cell jobs, less their lock waits; plan of {plan['created_utc']})"]
    for hyp, r in rows.items():
        err = f"{100 * (r['estimate_s'] - r['actual_s']) / r['actual_s']:+.0f} %" if r["actual_s"] else "-"
        lines.append(f"{hyp:<6}{r['cells']:>6}{_mmss(r['estimate_s']):>10}{_mmss(r['actual_s']):>10}{err:>8}"
                     f"{_mmss(r['lock_wait_s']):>11}")
    e, a = sum(r["estimate_s"] for r in rows.values()), sum(r["actual_s"] for r in rows.values())
    w = sum(r["lock_wait_s"] for r in rows.values())
    lines.append(f"{'total':<12}{_mmss(e):>10}{_mmss(a):>10}{(f'{100 * (e - a) / a:+.0f} %' if a else '-'):>8}{_mmss(w):>11}")
    return "\n".join(lines) + "\n", {"estimate_s": e, "actual_s": a, "lock_wait_s": w, "per_hyp": rows}


# ---- command line -------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("targets", nargs="*", metavar="H", help="hypotheses to plan (default: every one of the config)")
    parser.add_argument("--configfile", nargs="+", default=[], metavar="YAML",
                        help="merged over configs/config.yaml, as Snakemake's --configfile")
    parser.add_argument("--only", nargs="+", metavar="H", help="as the config's only: key")
    parser.add_argument("--results", default="results", type=Path, help="results folder (default: %(default)s)")
    parser.add_argument("--cells", action="store_true", help="one line per cell")
    parser.add_argument("--compare", action="store_true",
                        help="set <results>/plan.json (the last plan) beside what the cells took")
    parser.add_argument("--no-save", action="store_true", help="do not write <results>/plan.json")


def main(args: argparse.Namespace) -> int:
    from kvharness.plan.config import ConfigError

    saved = args.results / "plan.json"
    if args.compare:
        plan = _json(saved)
        if plan is None:
            print(f"kvharness plan: {saved}: no saved plan (run `kvharness plan` before the run)", file=sys.stderr)
            return 2
        text, _ = compare(plan, args.results)
        print(text, end="")
        return 0
    try:
        cfg = load_config(args.configfile, args.only)
        unknown = [h for h in args.targets if h not in cfg["hypotheses"]]
        if unknown:
            raise ConfigError(f"unknown hypothesis {unknown[0]!r} (in the config: {', '.join(cfg['hypotheses'])})")
        hyps = list(args.targets) or None
        if hyps and "H0" in cfg["hypotheses"] and "H0" not in hyps and any(
                c["load"].get("concurrency") in UWORK_RULES for h in hyps for c in _cells(cfg, h)):
            hyps = ["H0", *hyps]  # its U_work comes first, as Snakemake would run it
        plan = make_plan(cfg, build_context(cfg, args.results), hyps)
    except ConfigError as exc:
        print(f"kvharness plan: {exc}", file=sys.stderr)
        return 2
    print(render(plan, args.cells), end="")
    if not args.no_save:
        try:
            args.results.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(plan, indent=1) + "\n")
        except OSError as exc:
            print(f"kvharness plan: cannot save {saved}: {exc.strerror or exc}", file=sys.stderr)
    return 0


def _cells(cfg: dict, hyp: str) -> list[dict]:
    from kvharness.plan.config import expand_cells

    return expand_cells(cfg, hyp)


# ---- progress while Snakemake runs -------------------------------------------------------------------
# The workflow writes each hypothesis's planned cells and their estimates when it parses
# (write_progress_plan, from rules/common.smk); every cell job ends with progress_line() on the console.

PROGRESS_DIR = Path(".snakemake") / "kvharness-plan"


def write_progress_plan(cfg: dict, cells: dict, results: Path = Path("results"), where: Path = PROGRESS_DIR) -> None:
    """``<where>/<hyp>.json``: {"started": unix s, "cells": {cell: estimated s}} per hypothesis of ``cells``
    ((hyp, cell) -> spec, the workflow's index). Model estimates only: parsing stays cheap."""
    ctx = build_context(cfg, results, use_measured=False)
    per_hyp: dict[str, dict] = {}
    for (hyp, cell), spec in cells.items():
        per_hyp.setdefault(hyp, {})[cell] = round(estimate_cell(spec, ctx).load_s + ctx.overhead_s, 2)
    where.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for hyp, est in per_hyp.items():
        tmp = where / f"{hyp}.json.tmp"
        tmp.write_text(json.dumps({"started": now, "cells": est}))
        tmp.replace(where / f"{hyp}.json")


def progress_line(hyp: str, results: Path = Path("results"), where: Path = PROGRESS_DIR) -> str | None:
    """``H8: 12/28 cells done (1 failed), ~2m10s left``: done = finished folders; time left = the
    estimates of the cells still to run, scaled by how this run's finished cells compared with theirs."""
    plan = _json(where / f"{hyp}.json")
    if not plan:
        return None
    cells: dict = plan["cells"]
    base = results / hyp / "cells"
    done = [c for c in cells if (base / c).is_dir()]
    failed = {d.name.split(".failed-")[0] for d in base.glob("*.failed-*")} - set(done) if base.is_dir() else set()
    est_run = act_run = 0.0
    for c in done:
        summary = _json(base / c / SUMMARY_JSON) or {}
        if (base / c).stat().st_mtime >= plan["started"] and summary.get("wall_s"):  # finished in this run
            est_run, act_run = est_run + cells[c], act_run + float(summary["wall_s"])
    pace = act_run / est_run if est_run > 0 else 1.0
    left = sum(v for c, v in cells.items() if c not in done) * pace
    extra = f" ({len(failed)} failed)" if failed else ""
    return f"{hyp}: {len(done)}/{len(cells)} cells done{extra}, ~{_mmss(left)} left"
