"""Provenance of a result: versions, git sha, host, UTC time, with secrets redacted."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Mapping

SECRET_NAME = re.compile(r"(TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
REDACTED = "***redacted***"
ENV_PREFIXES = ("DYN_", "KVHARNESS_", "CUDA_", "NCCL_", "TRTLLM_", "VLLM_", "HF_", "SGLANG_", "LMCACHE_")


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """Copy of ``env`` with every secret-looking variable's value replaced."""
    return {k: (REDACTED if is_secret_name(k) else v) for k, v in env.items()}


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking variables (long enough to be worth scrubbing from text)."""
    env = os.environ if env is None else env
    return [v for k, v in env.items() if is_secret_name(k) and v and len(v) >= 6]


def scrub(text: str, env: Mapping[str, str] | None = None) -> str:
    """Remove secret values from free text (a server log, an error message)."""
    for value in secret_values(env):
        text = text.replace(value, REDACTED)
    return text


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def git_sha(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if out.returncode == 0 and sha else None
    except (OSError, subprocess.SubprocessError):
        return None


#: the code that measures a cell; its fingerprint goes into every cell's provenance
MEASUREMENT_CODE = ("sim", "loadgen", "telemetry", "stacks", "measure/cell.py", "units.py", "stats.py", "tokens.py")


def measurement_fingerprint(package_root: Path | None = None) -> str:
    """sha256 (first 16 hex digits) over the measuring code: simulator, load generator, telemetry,
    launcher and cell runner. Two cells with the same fingerprint were measured by the same code."""
    import hashlib

    root = package_root or Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for entry in MEASUREMENT_CODE:
        path = root / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            if f.is_file():
                digest.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def versions() -> dict[str, str | None]:
    import importlib.metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("kvharness", "snakemake", "aiohttp", "httpx", "psutil", "nvidia-ml-py", "pandas"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def provenance(repo: Path, extra: Mapping | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES) or is_secret_name(k)}
    record = {
        "tool": "kvharness",
        "versions": versions(),
        "git_sha": git_sha(repo),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
        "utc": utc_now(),
        "env": redact_env(env),
    }
    record.update(extra or {})
    return record
