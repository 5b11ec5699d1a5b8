#!/usr/bin/env bash
# One-step setup on a fresh Debian/Ubuntu machine with Python >= 3.11:
# system tools (fio, sysstat) via apt when missing, a virtualenv in .venv, kvharness + test deps.
# EXTRAS=test,slurm ./setup.sh also installs the SLURM executor plugin (profiles/slurm, docs/slurm.md);
# EXTRAS=test,dynamo ./setup.sh also installs NVIDIA Dynamo's frontend and mocker (docs/stacks.md).
# Safe to run again: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
need_apt=()
command -v fio >/dev/null 2>&1 || need_apt+=(fio)
command -v iostat >/dev/null 2>&1 || need_apt+=(sysstat)
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need_apt+=("python3-venv")
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing ${need_apt[*]} with apt-get"
    $SUDO apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1 || {
      $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${need_apt[@]}" >/dev/null
    }
  else
    echo "setup: warning: no apt-get; install ${need_apt[*]} yourself (fio is needed for H4 noise only)" >&2
  fi
fi

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "setup: Python >= 3.11 is required ($("$PYTHON" --version 2>&1) found); set PYTHON=python3.11" >&2
  exit 1
}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
EXTRAS=${EXTRAS:-test}
DYNAMO_VERSION=1.6.1  # the release the stack configs and tests/stacks/test_dynamo_names.py are checked against
stamp=.venv/.kvharness-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$EXTRAS" ]; then
  echo "setup: installing kvharness [$EXTRAS] and its dependencies into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
  case ",$EXTRAS," in
    *,dynamo,*)  # --no-deps: ai-dynamo's requirements pull aisimulate (unreachable index); the rest is the extra
      echo "setup: installing ai-dynamo $DYNAMO_VERSION (frontend + mocker) and kvbm (its metric names) with --no-deps"
      .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
        "ai-dynamo==$DYNAMO_VERSION" "ai-dynamo-runtime==$DYNAMO_VERSION" "kvbm==$DYNAMO_VERSION" ;;
  esac
  echo "$EXTRAS" > "$stamp"
fi
# Snakemake reads --configfile before the Snakefile runs; this hook gives a non-UTF-8 file the same one-line
# error as every other bad config (src/kvharness/snakemake_guard.py says how)
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n' 'import sys; exec("try:\n from kvharness.snakemake_guard import install; install()\nexcept Exception:\n pass")' \
  > "$site/kvharness_snakemake_guard.pth"
echo "setup: ready (.venv/bin/snakemake, .venv/bin/kvharness)"
