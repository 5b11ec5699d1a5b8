"""`kvharness loadgen`: drive an OpenAI-compatible streaming endpoint and record every request.

Exit codes: 0 the run completed (request errors are in the records), 2 bad input (one line on
stderr naming the field), 5 the server failed the first request, no request succeeded or more than
``--max-error-pct`` of them failed (one line on stderr, the server's own words), 3 stopped early by ``max_errors``/``max_consecutive_errors``, 4 stopped because
a record could not be written (disk full: what was written is kept, a cut last line is counted), 130
SIGINT, 143 SIGTERM — in every case after ``metrics.jsonl`` and the summary of what completed were written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys

from kvharness.loadgen.spec import DEFAULT_PATTERN, SpecError, validate_spec
from kvharness.cellfiles import METRICS_JSONL

EPILOG = """\
Examples:
  kvharness loadgen --spec load.json --out metrics.jsonl --summary-out loadgen_summary.json
  kvharness loadgen --spec load.json --percentiles 50,90,99 --format json > summary.json
  kvharness loadgen --base-url http://127.0.0.1:8355 --model llama-3.1-8b --concurrency 16 \\
      --context-tokens 2048 --output-tokens 32 --duration-s 10 --out metrics.jsonl

Without --spec the flags build a closed-loop fixed_context spec; with --spec they override its values.
The spec format (patterns closed|bursty|constant|poisson|gamma|ramp|trace; workloads
fixed_context|mixed_context|sessioned_chat|trace) is documented in docs/loadgen.md.
The run ends with a table on stdout (requests, duration, req/s, output tok/s, goodput; TTFT, TPOT, ITL
and E2E mean / percentiles / max in ms); a progress bar is shown on stderr only when both stdout and
stderr are terminals (--progress on forces it).
Before the load one short request checks that the server answers this model (--first-request skip: no
check); its failure ends the run at once with the server's message.
Exit codes: 0 completed, 2 bad input, 3 stopped by max_errors or max_consecutive_errors, 4 a record or the
summary could not be written (disk full), 5 the first request failed, no request succeeded or more than
--max-error-pct %% failed, 130 SIGINT, 143 SIGTERM.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--spec", metavar="LOAD_JSON", help="load spec (JSON); see docs/loadgen.md")
    parser.add_argument("--out", metavar="METRICS_JSONL", default=METRICS_JSONL,
                        help="per-request records, one JSON line each, flushed per record (default: %(default)s)")
    parser.add_argument("--summary-out", metavar="SUMMARY_JSON", default=None,
                        help="run summary (kvharness.stats.summarize_requests + self-check + the table's figures "
                             "under latency_ms), written as JSON")
    parser.add_argument("--percentiles", default="50,90,95,99", metavar="Q,Q,...",
                        help="percentiles in the final table and in the summary's latency_ms (default: %(default)s)")
    parser.add_argument("--format", choices=("table", "json", "none"), default="table",
                        help="what goes to stdout at the end: the result table, the JSON summary, or nothing "
                             "(default: %(default)s)")
    parser.add_argument("--first-request", choices=("check", "skip"), default="check",
                        help="send one short request before the load and stop with exit 5 and the server's message "
                             "when it fails (default: %(default)s; the cell runner skips it: it checks readiness itself)")
    parser.add_argument("--max-error-pct", type=_error_pct, default=10.0, metavar="PCT|off",
                        help="exit 5 when more than PCT %% of the measured requests failed, or none succeeded; 'off': "
                             "exit 0 whatever the errors (default: %(default)s)")
    parser.add_argument("--start-file", metavar="PATH",
                        help="start the load only once PATH exists (a caller starts the process early, so its "
                             "start-up overlaps the server's; the cell runner creates PATH when telemetry runs)")
    g = parser.add_argument_group("convenience flags (build a spec without a file, or override --spec)")
    g.add_argument("--base-url", help="server root, e.g. http://127.0.0.1:8355")
    g.add_argument("--model", help="model name sent in every request")
    g.add_argument("--endpoint", choices=("completions", "chat"), help="/v1/completions or /v1/chat/completions")
    g.add_argument("--concurrency", type=int, help="closed-loop users (pattern.concurrency)")
    g.add_argument("--context-tokens", type=int, help="prompt length in tokens (fixed_context)")
    g.add_argument("--output-tokens", type=int, help="max_tokens per request")
    g.add_argument("--duration-s", type=float, help="stop scheduling new requests after this many seconds")
    g.add_argument("--max-requests", type=int, help="stop after this many requests")
    g.add_argument("--seed", type=int, help="seed for every random choice")
    g.add_argument("--stack", help="label copied into every record as 'stack'")
    g.add_argument("--progress", choices=("auto", "on", "off"), help="progress bar (auto = only on a TTY)")
    g.add_argument("--workers", type=int, help="spread the load over this many processes (spec key 'workers')")
    g.add_argument("--tokenizer", metavar="TOKENIZER_JSON",
                   help="a model's tokenizer.json: fit each prompt to its token count (spec key 'tokenizer'; "
                        "needs pip install 'kvharness[tokenizer]')")
    from kvharness.loadgen.lora import add_lora_arguments

    add_lora_arguments(parser)


def _error_pct(text: str) -> float | None:
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage 0..100 or 'off', got {text!r}")
    return value


def build_spec(args: argparse.Namespace) -> dict:
    """The raw spec: the --spec file (if any) with the convenience flags applied."""
    if args.spec:
        try:
            with open(args.spec, encoding="utf-8") as fh:
                raw = json.load(fh)
        except FileNotFoundError:
            raise SpecError(f"load spec: {args.spec}: file not found") from None
        except json.JSONDecodeError as exc:
            raise SpecError(f"load spec: {args.spec}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(raw, dict):
            raise SpecError(f"load spec: {args.spec}: expected a JSON object")
    else:
        raw = {
            "base_url": "http://127.0.0.1:8000",
            "pattern": {**DEFAULT_PATTERN, "concurrency": 1},
            "workload": {"kind": "fixed_context", "context_tokens": 1024, "output_tokens": 32},
            "duration_s": 10.0,
        }
    for flag, key in (("base_url", "base_url"), ("model", "model"), ("endpoint", "endpoint"),
                      ("duration_s", "duration_s"), ("max_requests", "max_requests"), ("seed", "seed"),
                      ("progress", "progress"), ("workers", "workers"), ("tokenizer", "tokenizer")):
        value = getattr(args, flag, None)
        if value is not None:
            raw[key] = value
    if args.concurrency is not None:
        pattern = raw.setdefault("pattern", dict(DEFAULT_PATTERN))
        if isinstance(pattern, dict):
            pattern["concurrency"] = args.concurrency
    workload = raw.setdefault("workload", {"kind": "fixed_context"})
    if isinstance(workload, dict):
        if args.context_tokens is not None:
            workload["context_tokens"] = args.context_tokens
        if args.output_tokens is not None:
            workload["output_tokens"] = args.output_tokens
    from kvharness.loadgen.lora import apply_lora_flags

    apply_lora_flags(raw, args)
    if args.stack is not None:
        labels = raw.setdefault("labels", {})
        if isinstance(labels, dict):
            labels["stack"] = args.stack
    return raw


def _write_json_atomic(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:  # a full disk: no cut summary left beside the records
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _event_loop_runner():
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop), "uvloop"
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.Runner(), "asyncio"


def _measured_records(path: str) -> list[dict]:
    """The records of the measure window, read back from the flushed ``metrics.jsonl`` (a last line cut by a
    full disk is skipped, as the analysis counts it; an unreadable file gives an empty table)."""
    from kvharness.records import RecordError, read_jsonl

    try:
        records, _ = read_jsonl(path)
    except (RecordError, OSError):
        return []
    return [r for r in records if r.get("window", "measure") == "measure"]


def _say(*parts) -> None:
    """A line on stderr; a stderr that cannot be written (its log is on a full disk) is not an error."""
    try:
        print(*parts, file=sys.stderr)
    except OSError:
        pass


START_FILE_TIMEOUT_S = 3600.0


def _wait_for_start(path: str | None) -> bool:
    """Block until ``path`` exists (True) or the timeout passes (False); no path: start at once."""
    if not path:
        return True
    import time

    deadline = time.monotonic() + START_FILE_TIMEOUT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            print(f"kvharness loadgen: --start-file {path} did not appear within {START_FILE_TIMEOUT_S:.0f} s", file=sys.stderr)
            return False
        time.sleep(0.005)
    return True


class _Exit(Exception):
    """Leave ``main`` with this exit status (the message, if any, was already said)."""

    def __init__(self, code: int):
        self.code = code


def main(args: argparse.Namespace) -> int:
    """Phases: the spec and its pattern, the first-request check, the load, the summary (written, then
    printed), the exit status."""
    from kvharness.loadgen.table import latency_table, render_table, top_error

    try:
        spec, pattern, percentiles = _prepare(args)
        summary, signal_name, stop_reason = _run_load(spec, pattern, args)
    except _Exit as exc:
        return exc.code
    measured = _measured_records(args.out)
    latency = latency_table(measured, percentiles)
    summary["latency_ms"] = latency
    summary["top_error"] = top_error(measured)
    summary["table_percentiles"] = list(percentiles)
    if args.summary_out:
        try:
            _write_json_atomic(args.summary_out, summary)
        except OSError as exc:
            _say(f"kvharness loadgen: cannot write {args.summary_out}: {exc.strerror or exc}")
            return 4
    if summary.get("client_bound") and summary.get("n_ok"):  # before the table, so that the table is what a terminal ends with
        lag = summary.get("send_lag_ms_p99")
        _say("kvharness loadgen: WARNING: the client was the bottleneck (send-lag p99 "
             f"{'?' if lag is None else f'{lag:.2f}'} ms, CPU {summary.get('client_cpu_pct') or 0:.0f} % of a core); "
             "latencies include client delay")
    try:
        if args.format == "json":
            json.dump(summary, sys.stdout, indent=2, sort_keys=True, default=str)
            sys.stdout.write("\n")
        elif args.format == "table":
            sys.stdout.write(render_table(summary, latency, percentiles))
        sys.stdout.flush()
    except OSError:
        pass
    return _exit_status(spec, summary, signal_name, stop_reason, args)


def _prepare(args: argparse.Namespace) -> tuple[dict, object, list]:
    """The validated spec, its pattern (a trace file is read here) and the table's percentiles; with
    ``--first-request check`` the server must answer one request first."""
    from kvharness.loadgen.table import PercentileError, parse_percentiles

    try:
        percentiles = parse_percentiles(args.percentiles)
    except PercentileError as exc:
        print(f"kvharness loadgen: {exc}", file=sys.stderr)
        raise _Exit(2) from None
    try:
        spec = validate_spec(build_spec(args))
        from kvharness.loadgen.patterns import make_pattern  # trace files are read here

        pattern = make_pattern(spec)
    except SpecError as exc:
        _say(str(exc))
        raise _Exit(2) from None
    except (OSError, ValueError) as exc:
        _say(f"load spec: pattern.path: {exc}")
        raise _Exit(2) from None
    if getattr(args, "first_request", "skip") == "check":
        from kvharness.loadgen.firstcheck import first_request

        problem = first_request(spec)
        if problem is not None:
            _say(f"kvharness loadgen: {problem}")
            raise _Exit(5)
    return spec, pattern, percentiles


def _run_load(spec: dict, pattern, args: argparse.Namespace) -> tuple[dict, str | None, str | None]:
    """Run the load (in this process, or in ``workers`` processes) once the start file exists; the summary,
    the signal that stopped it and the stop reason."""
    from kvharness.loadgen.progress import RichProgress, want_progress
    from kvharness.loadgen.runner import Runner

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    runner_ctx, loop_name = _event_loop_runner()
    start_file = getattr(args, "start_file", None)
    if spec["workers"] > 1:
        from kvharness.loadgen.workers import run_workers

        if not _wait_for_start(start_file):
            raise _Exit(2)
        summary, signal_name, stop_reason = run_workers(spec, args.out, spec["workers"])
    else:
        progress = RichProgress(spec["duration_s"], spec["max_requests"]) if want_progress(spec["progress"]) else None
        out = open(args.out, "w", encoding="utf-8")
        try:
            runner = Runner(spec, out, pattern=pattern, progress=progress)
            if not _wait_for_start(start_file):  # everything imported and built: only the load is left
                raise _Exit(2)
            with runner_ctx as loop_runner:
                summary = loop_runner.run(runner.run())
        finally:
            try:
                out.close()
            except OSError:
                pass  # the write error is already in the summary (write_error): the run stopped on it
        signal_name, stop_reason = runner.signal_name, runner.stop_reason
    summary["event_loop"] = loop_name
    return summary, signal_name, stop_reason


def _exit_status(spec: dict, summary: dict, signal_name: str | None, stop_reason: str | None,
                 args: argparse.Namespace) -> int:
    """130/143 on SIGINT/SIGTERM, 4 when records could not be written, 3 when errors stopped the load, 5 when
    the run fails ``--max-error-pct`` (firstcheck.exit_verdict), else 0."""
    if signal_name == "SIGINT":
        return 130
    if signal_name == "SIGTERM":
        return 143
    if stop_reason == "write_failed":
        _say(f"kvharness loadgen: stopped: writing records failed: {summary.get('write_error')} "
              f"({summary.get('n_unwritten')} records not written)")
        return 4
    if stop_reason in ("max_errors", "max_consecutive_errors"):
        _say(f"kvharness loadgen: stopped after {summary.get('n_errors')} errors ({stop_reason})")
        return 3
    from kvharness.loadgen.firstcheck import exit_verdict

    verdict = exit_verdict(summary, getattr(args, "max_error_pct", None))
    if verdict is not None:
        top = summary.get("top_error") or {}
        said = f"; most common: {top['class']} x{top['count']}: {top['message']}" if top.get("message") else ""
        _say(f"kvharness loadgen: {spec['base_url']}: {verdict}{said}")
        return 5
    return 0
