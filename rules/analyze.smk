# One analysis job per hypothesis in the config, generated from the registry (kvharness.analysis.registry).
# Analyses read only cell folders, upstream results and their own code, so editing them never re-measures.
# Each is a checkpoint: a result it provides (H0's `uwork`) is read by later cells as a param.


for _hyp in PRESENT:

    checkpoint:
        name:
            f"analyze_{_hyp}"
        input:
            cells=cell_dirs(_hyp),
            code=analysis_code(_hyp),
            **upstream_inputs(_hyp),
        output:
            **analysis_outputs(_hyp),
        params:
            hyp=_hyp,
            needs=list(registry.get(_hyp).needs),
            modules=CFG["hypothesis_modules"],
            config=CFG["hypotheses"][_hyp],
        conda:
            "../envs/kvharness.yaml"
        log:
            f"results/{_hyp}/logs/analyze.log",
        script:
            "../workflow/scripts/analyze.py"
