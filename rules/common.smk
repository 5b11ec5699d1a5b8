# Helpers shared by the .smk files (config validation, cell expansion, the hypothesis registry).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from kvharness.analysis import registry  # noqa: E402
from kvharness.plan import uwork as uwork_result  # noqa: E402
from kvharness.plan.config import (
    ConfigError,
    cell_index,
    check_config_files,
    load_stack,
    name_the_file,
    needs_uwork,
    validate_config,
)  # noqa: E402

try:
    check_config_files(
        workflow.configfiles
    )  # strict re-read: duplicate keys, emptied sections
    try:
        CFG = validate_config(config)
        CELLS = cell_index(CFG)
        HYPS = registry.load(CFG["hypothesis_modules"])
        for _hyp in CFG["hypotheses"]:
            try:
                registry.get(_hyp)
            except registry.RegistryError as _exc:
                raise ConfigError(f"hypotheses.{_hyp}: {_exc}") from None
    except ConfigError as _exc:  # name the file (and line) that set the field
        _default = (
            Path(workflow.basedir) / "configs" / "config.yaml"
        )  # given --configfile values override it
        _files = sorted(
            workflow.configfiles, key=lambda p: Path(p).resolve() != _default.resolve()
        )
        raise name_the_file(_exc, _files) from None
except (ConfigError, registry.RegistryError) as _exc:
    sys.stderr.write(f"{_exc}\n")
    sys.exit(1)

PRESENT = list(CFG["hypotheses"])
try:  # planned cells and their estimates, for the progress line each cell job prints (kvharness.plan.estimate)
    from kvharness.plan.estimate import write_progress_plan

    write_progress_plan(CFG, CELLS)
except (
    OSError,
    ValueError,
) as _exc:  # a progress line is never worth a failed workflow
    sys.stderr.write(f"kvharness: no progress plan ({_exc})\n")

_KEPT_STALE = (
    set()
)  # cell folders already checked for a stale U_work in this invocation


def _uwork_max():
    """The highest concurrency the `uwork` provider measures: a larger U_work is not one it found."""
    try:
        hyp, _ = registry.provider("uwork", PRESENT)
    except registry.RegistryError:
        return None
    levels = [c["load"]["concurrency"] for (h, _), c in CELLS.items() if h == hyp]
    levels = [c for c in levels if isinstance(c, int)]
    return max(levels) if levels else None


UWORK_MAX = _uwork_max()
RUNNER = str(Path(workflow.basedir) / "src/kvharness/analysis/run.py")


def cells_of(hyp):
    """Cell ids of one hypothesis, in config order."""
    return [cell for (h, cell) in CELLS if h == hyp]


def cell_dirs(hyp):
    return [f"results/{hyp}/cells/{cell}" for cell in cells_of(hyp)]


def cell_spec(wildcards):
    """The resolved cell spec (plain builtins, so Snakemake fingerprints every value)."""
    return CELLS[(wildcards.hyp, wildcards.cell)]


def cell_priority(wildcards):
    """Repetitions in order: among the cells ready to run, every rep-0 cell goes before any rep-1 cell, so
    the reps of one point are separated by the other points' cells (within a rep, Snakemake picks).
    """
    return 100 - min(int(cell_spec(wildcards).get("rep") or 0), 100)


def uses_uwork(wildcards):
    spec = cell_spec(wildcards)
    return spec["load"].get("concurrency") in ("uwork", "uwork_min", "uwork_max")


def uwork_checkpoint():
    """The checkpoint job whose table provides `uwork` (H0's analysis): cells wait for it."""
    hyp, _ = registry.provider("uwork", PRESENT)
    return getattr(checkpoints, f"analyze_{hyp}").get()


def cell_inputs(wildcards):
    """A cell measured at U_work needs the `uwork` result; its mtime never re-measures (ancient)."""
    if not uses_uwork(wildcards):
        return {}
    uwork_checkpoint()
    return {"uwork": ancient(registry.result_path("uwork", PRESENT))}


def cell_uwork(wildcards):
    """The U_work this cell runs at, read when the `uwork` result exists. It is a param, so a changed
    U_work re-measures exactly the cells that used the old value (each kept first as `<cell>.stale-<UTC>/`),
    and an unchanged one re-measures none. A bad uwork.csv stops the run with one line (kvharness.plan.uwork).
    """
    if not uses_uwork(wildcards):
        return None
    uwork_checkpoint()
    path = registry.result_path("uwork", PRESENT)
    spec = cell_spec(wildcards)
    how = spec["load"]["concurrency"]
    # uwork: this stack's own; uwork_min / uwork_max: the lower / higher of the hypothesis's stacks (equal load)
    stacks = (
        [spec["stack"]["name"]]
        if how == "uwork"
        else [
            load_stack(CFG["stacks"][role])["name"]
            for role in CFG["hypotheses"][wildcards.hyp]["stacks"]
        ]
    )
    try:
        found = uwork_result.read(path, max_value=UWORK_MAX)
        value = uwork_result.value(found, path, how, stacks)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(1)
    cell_dir = f"results/{wildcards.hyp}/cells/{wildcards.cell}"
    if not workflow.dryrun and cell_dir not in _KEPT_STALE:
        _KEPT_STALE.add(cell_dir)
        kept = uwork_result.keep_stale(cell_dir, value, path)
        if kept is not None:
            sys.stderr.write(
                f"{cell_dir}: U_work changed to {value}; the earlier measurement is kept in {kept}\n"
            )
    return {
        "value": value,
        "from": path,
        "rule": how,
        "of": {s: found[s] for s in stacks},
    }


def analysis_code(hyp):
    """Library files the analysis of `hyp` can run (import closure): editing them reruns it, never a cell."""
    h = registry.get(hyp)
    return sorted(
        set(registry.code_closure(h.module)) | set(registry.code_closure(RUNNER))
    )


def analysis_outputs(hyp):
    """Declared outputs of `hyp`; its figures, summary table and points table registered for Snakemake's
    report (`snakemake --report report.zip`), one category per hypothesis, once they exist.
    """
    h = registry.get(hyp)
    out = {}
    for name, path in h.outputs().items():
        if not Path(path).exists():
            # `snakemake --report` follows what was run: an output not made yet (a hypothesis of the
            # config that was not run) is not marked, so the report of a subset builds without targets
            out[name] = path
            continue
        fig = next((f for f in h.figures if f.name == name), None)
        table = next((t for t in h.tables if t.name == name), None)
        if fig is not None:
            out[name] = report(
                path,
                caption=caption_file(hyp, name, fig.caption),
                category=hyp,
                subcategory="figures",
            )
        elif table is not None and name == "summary":
            out[name] = report(
                path,
                caption=caption_file(hyp, name, table.description or h.question),
                category=hyp,
                subcategory="tables",
            )
        elif name == registry.POINTS:
            out[name] = report(
                path,
                caption=caption_file(
                    hyp,
                    name,
                    "Per point over repetitions: mean and 95 % t "
                    "interval of TTFT/TPOT/E2E percentiles and goodput, CoV of p99 across reps.",
                ),
                category=hyp,
                subcategory="tables",
            )
        else:
            out[name] = path
    return out


def caption_provenance():
    """What every caption ends with: the model and the stacks measured (plain text: docutils escapes it)."""
    stacks = ", ".join(f"{role} = {name}" for role, name in CFG["stacks"].items())
    return (
        f"Model {CFG['served_model_name']} ({CFG['model']}, {CFG['precision']}, {CFG['hardware']}); "
        f"stacks {stacks}."
    )


def caption_file(hyp, name, text):
    """Snakemake's report wants captions as files: one per output under .snakemake/, rewritten only on change."""
    path = Path(".snakemake/kvharness-captions") / f"{hyp}_{name}.rst"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"{text}\n\n{caption_provenance()}"
    if not path.exists() or path.read_text() != text + "\n":
        path.write_text(text + "\n")
    return str(path.resolve())


def upstream_inputs(hyp):
    return {
        f"up_{name}": registry.result_path(name, PRESENT)
        for name in registry.get(hyp).needs
    }


def all_outputs():
    """Every declared output of every hypothesis in the config (what `rule all` and the report need)."""
    return [path for hyp in PRESENT for path in registry.get(hyp).outputs().values()]
