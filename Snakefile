# kvharness: when does storage start to decide LLM inference latency?
# This file only wires: config + validation, rule modules, target rules.
from snakemake.utils import min_version

min_version("8.20")


configfile: f"{workflow.basedir}/configs/config.yaml"


include: "rules/common.smk"


wildcard_constraints:
    hyp="H[0-9][A-Za-z0-9]*",
    cell="[A-Za-z0-9][A-Za-z0-9_-]*",


include: "rules/measure.smk"
include: "rules/analyze.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
        "results/report.html",
