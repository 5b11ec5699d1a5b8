# One cell = one job: launch the stack with its tier settings, collect, load, tear down.


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
    script:
        "../workflow/scripts/run_cell.py"
