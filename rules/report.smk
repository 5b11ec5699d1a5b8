# The browsable one-page report of every analysed hypothesis in the config.


rule html_report:
    input:
        all_outputs(),
    output:
        "results/report.html",
    log:
        "results/logs/report.log",
    conda:
        "../envs/kvharness.yaml"
    script:
        "../workflow/scripts/html_report.py"
