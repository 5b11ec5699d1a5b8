# One cell = one job: launch the stack with its tier settings, collect, load, tear down.


rule measure_cell:
    input:
        unpack(cell_inputs),
    output:
        directory("results/{hyp}/cells/{cell}"),
    params:
        spec=cell_spec,
        uwork=cell_uwork,
    conda:
        "../envs/kvharness.yaml"
    log:
        "results/{hyp}/logs/{cell}.log",
    benchmark:
        "results/{hyp}/benchmarks/{cell}.tsv"
    resources:
        stack_slot=1,
    priority: cell_priority
    script:
        "../workflow/scripts/run_cell.py"
