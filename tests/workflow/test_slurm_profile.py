"""profiles/slurm (and the site template profiles/slurm-site) through the installed
snakemake-executor-plugin-slurm's own checks, with nothing overridden: what `snakemake --workflow-profile
profiles/slurm` hands the plugin for a measurement cell and for an analysis job."""

import ast
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
plugin = pytest.importorskip("snakemake_executor_plugin_slurm")
from snakemake_executor_plugin_slurm.submit_string import get_submit_command  # noqa: E402
from snakemake_executor_plugin_slurm.utils import set_gres_string  # noqa: E402
from snakemake_executor_plugin_slurm.validation import validate_slurm_extra  # noqa: E402

SITE_KEYS = {"slurm_partition", "slurm_account"}


class _Resources(dict):
    """What a job's ``resources`` looks like to the plugin: attribute and ``get`` access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _Job:
    threads = 1  # the rules' own threads (every rule of the workflow uses the default)

    def __init__(self, resources):
        self.resources = _Resources(resources)


def _value(v):
    # Snakemake reads a profile's resource values as Python expressions: "'--exclusive'" is the string
    return ast.literal_eval(v) if isinstance(v, str) and v[:1] in "'\"" else v


def _jobs(profile: Path) -> dict[str, _Job]:
    cfg = yaml.safe_load((profile / "config.yaml").read_text())
    default = {k: _value(v) for k, v in cfg["default-resources"].items()}
    jobs = {"analysis": _Job(default)}
    for rule, res in cfg["set-resources"].items():
        jobs[rule] = _Job({**default, **{k: _value(v) for k, v in res.items()}})
    return jobs


def _submit(job) -> str:
    validate_slurm_extra(job)      # 2.x refuses --gres/--gpus/--partition/--account/--mem/... here
    params = {"run_uuid": "u", "slurm_logfile": "log", "comment_str": "c", "account": "", "partition": "",
              "workdir": "/w"}
    return get_submit_command(job, params) + set_gres_string(job)


def test_plugin_version_is_the_bounded_one():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"snakemake-executor-plugin-slurm>=2.8,<2.9"' in pyproject
    assert version("snakemake-executor-plugin-slurm").startswith("2.8.")


@pytest.mark.parametrize("profile", ["slurm", "slurm-site"])
def test_shipped_profile_passes_the_plugins_validation(profile):
    jobs = _jobs(ROOT / "profiles" / profile)
    cell = _submit(jobs["measure_cell"])
    assert "--gres=gpu:1" in cell and "--exclusive" in cell
    assert "-t 240" in cell and "--mem 100000" in cell and "--cpus-per-task=16" in cell
    analysis = _submit(jobs["analysis"])
    assert "-t 30" in analysis and "--gres" not in analysis and "--exclusive" not in analysis


def test_gres_in_slurm_extra_is_what_the_plugin_refuses():
    # the profile as it was: every cell refused at submission
    from snakemake_interface_common.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match="generic-resources"):
        validate_slurm_extra(_Job({"slurm_extra": "--exclusive --gres=gpu:1"}))


def test_site_profile_differs_from_the_shipped_one_only_in_site_settings():
    shipped = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    site = yaml.safe_load((ROOT / "profiles/slurm-site/config.yaml").read_text())
    strip = lambda d: {k: v for k, v in d.items() if k not in SITE_KEYS}
    for block in ("default-resources",):
        assert strip(site[block]) == shipped[block] and set(site[block]) - set(shipped[block]) == SITE_KEYS
    assert {r: strip(v) for r, v in site["set-resources"].items()} == shipped["set-resources"]
    rest = lambda d: {k: v for k, v in d.items() if k not in ("default-resources", "set-resources")}
    assert rest(site) == rest(shipped)
