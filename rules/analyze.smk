# Analyses read only cell folders (and their own code), so editing them never re-measures.


rule analyze_h0:
    input:
        cells=cell_dirs("H0"),
        code=analysis_code("analysis/h0", "analysis/knee", "analysis/cells", "stats"),
    output:
        summary="results/H0/summary.csv",
        uwork="results/H0/uwork.csv",
    conda:
        "../envs/kvharness.yaml"
    log:
        "results/H0/logs/analyze.log",
    script:
        "../workflow/scripts/analyze_h0.py"


rule analyze_h8:
    input:
        cells=cell_dirs("H8"),
        uwork="results/H0/uwork.csv",
        code=analysis_code("analysis/h8", "analysis/cells", "report/hero", "stats"),
    output:
        summary="results/H8/summary.csv",
        hero=report(
            "results/H8/hero.png",
            caption="../docs/captions/hero.rst",
            category="H8 hero",
        ),
    conda:
        "../envs/kvharness.yaml"
    log:
        "results/H8/logs/analyze.log",
    script:
        "../workflow/scripts/analyze_h8.py"


rule analyze_h7:
    input:
        cells=cell_dirs("H7"),
        code=analysis_code("analysis/h7", "analysis/cells", "telemetry/read", "stats"),
    output:
        summary="results/H7/summary.csv",
    conda:
        "../envs/kvharness.yaml"
    log:
        "results/H7/logs/analyze.log",
    script:
        "../workflow/scripts/analyze_h7.py"
