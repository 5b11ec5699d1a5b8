# The browsable one-page report of every analysed hypothesis.


rule html_report:
    input:
        "results/H0/summary.csv",
        "results/H0/uwork.csv",
        "results/H8/summary.csv",
        "results/H8/hero.png",
    output:
        "results/report.html",
    conda:
        "../envs/kvharness.yaml"
    log:
        "results/logs/report.log",
    script:
        "../workflow/scripts/html_report.py"
