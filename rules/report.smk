# The browsable one-page report of every analysed hypothesis in the config.


rule html_report:
    input:
        all_outputs(),
    output:
        "results/report.html",
    conda:
        "../envs/kvharness.yaml"
    log:
        "results/logs/report.log",
    script:
        "../workflow/scripts/html_report.py"
