"""The file names of a cell's folder (``results/<H>/cells/<cell>/``), stated once: the cell runner
(kvharness.measure.cell) writes them; the analyses (through kvharness.cellfolder.CellFolder), the export, the
planner's estimates and the telemetry read-back read them."""

CELL_JSON = "cell.json"                          # the resolved cell spec as it ran (+ working set, measurement)
SUMMARY_JSON = "summary.json"                    # status, quality, stop reason: the cell's own verdict
PROVENANCE_JSON = "provenance.json"              # code fingerprint, host, versions
METRICS_JSONL = "metrics.jsonl"                  # one record per request (the load generator's)
LOADGEN_SUMMARY_JSON = "loadgen_summary.json"
LOAD_JSON = "load.json"                          # the load spec handed to the load generator
DYNKV_JSONL = "dynkv.jsonl"                      # KV-tier counter ticks (the collector's)
SYSMON_JSONL = "sysmon.jsonl"                    # host / NVMe / GPU ticks (the collector's)
SCRAPES_JSONL_GZ = "scrapes.jsonl.gz"            # every raw scrape of the stack's metrics endpoints
COLLECTOR_SUMMARY_JSON = "collector_summary.json"
LOADGEN_LOG = "loadgen.log"
COLLECTOR_LOG = "collector.log"

