# One analysis job per hypothesis in the config, generated from the registry (kvharness.analysis.registry).
# Analyses read only cell folders, upstream results and their own code, so editing them never re-measures.
# Each is a checkpoint: a result it provides (H0's `uwork`) is read by later cells as a param.


for _hyp in PRESENT:

    checkpoint:
        name:
            f"analyze_{_hyp}"
        input:
            **upstream_inputs(_hyp),
            cells=cell_dirs(_hyp),
            code=analysis_code(_hyp),
        output:
            **analysis_outputs(_hyp),
        log:
            f"results/{_hyp}/logs/analyze.log",
        conda:
            "../envs/kvharness.yaml"
        params:
            hyp=_hyp,
            needs=list(registry.get(_hyp).needs),
            modules=CFG["hypothesis_modules"],
            config=CFG["hypotheses"][_hyp],
        script:
            "../workflow/scripts/analyze.py"
