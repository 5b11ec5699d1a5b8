# One cell = one job: launch the stack with its tier settings, collect, load, tear down.
#
# The job writes the resolved cell (spec + U_work: this job's params) to results/<hyp>/jobs/<cell>.json,
# then runs `python -m kvharness cell --job FILE` with only paths on its command line (no config string
# reaches the shell) and no snakemake import in the measuring process: it starts ~0.3 s sooner than a
# script: job. The params carry the spec and U_work, so a changed value re-measures exactly the cells
# it changes. The cell's one-line outcome goes to the terminal, everything else to the log.


rule measure_cell:
    input:
        unpack(cell_inputs),
    output:
        directory("results/{hyp}/cells/{cell}"),
    log:
        "results/{hyp}/logs/{cell}.log",
    benchmark:
        "results/{hyp}/benchmarks/{cell}.tsv"
    priority: cell_priority
    conda:
        "../envs/kvharness.yaml"
    resources:
        stack_slot=1,
    params:
        spec=cell_spec,
        uwork=cell_uwork,
    run:
        job = write_cell_job(wildcards, params.spec, params.uwork)
        shell(CELL_COMMAND)
