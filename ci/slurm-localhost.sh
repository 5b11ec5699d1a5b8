#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (Debian slurm-wlm: munged + slurmctld + slurmd on
# localhost), for the two-cell smoke sweep through snakemake-executor-plugin-slurm (tests/workflow/
# test_slurm_localhost.py, docs/slurm.md). Needs root (slurmd runs jobs as their users).
#   ci/slurm-localhost.sh install   apt-get install slurm-wlm munge; pip install the executor plugin
#   ci/slurm-localhost.sh start     write $KVH_SLURM_DIR/slurm.conf and start the three daemons
#   ci/slurm-localhost.sh stop      stop what start started (by the pids it recorded), munged included
#   ci/slurm-localhost.sh remove    stop, delete the config start wrote, apt-get remove what install added
# The node is declared as big as profiles/slurm's measurement cell asks (16 CPUs, 100 GB, one GPU as a
# counted GRES) and slurmd is told to trust that (SlurmdParameters=config_overrides), so docs/slurm.md's
# command runs here exactly as written, with the shipped profile and no resource overrides.
# The config goes to /etc/slurm/slurm.conf, the path every SLURM command reads: the executor plugin
# drops all SLURM_* variables (SLURM_CONF included) inside a job, so a private path would not reach srun.
# An existing /etc/slurm/slurm.conf that this script did not write is left alone (start refuses).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${KVH_SLURM_DIR:-/tmp/kvh-slurm}
cmd=${1:-}

case "$cmd" in
install)
  apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[slurm]'
  ;;
start)
  mkdir -p "$DIR"/{state,spool,log,run}
  node=$(hostname -s)
  cpus=$(( $(nproc) > 16 ? $(nproc) : 16 ))          # >= what profiles/slurm's measure_cell asks
  mem=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) * 8 / 10 ))
  mem=$(( mem > 110000 ? mem : 110000 ))
  conf=/etc/slurm/slurm.conf
  if [ -f "$conf" ] && ! grep -q '^# written by kvharness ci/slurm-localhost.sh' "$conf"; then
    echo "slurm-localhost: $conf exists and was not written by this script; not touching it" >&2
    exit 1
  fi
  mkdir -p /etc/slurm
  cat > "$conf" <<CONF
# written by kvharness ci/slurm-localhost.sh (single-node cluster for the smoke sweep)
ClusterName=kvh-localhost
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
SlurmctldPort=${KVH_SLURMCTLD_PORT:-16817}
SlurmdPort=${KVH_SLURMD_PORT:-16818}
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$node CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  # one GPU that is /dev/null: enough for --gres=gpu:1 to be scheduled (slurmd counts a gpu by its File)
  printf '# written by kvharness ci/slurm-localhost.sh\nNodeName=%s Name=gpu File=/dev/null Count=1\n' "$node" > /etc/slurm/gres.conf
  mkdir -p /run/munge
  chown munge:munge /run/munge 2>/dev/null || true
  if ! munge -n >/dev/null 2>&1; then   # no working munged (a stopped one may linger as a zombie): start it
    # started here: its pid is recorded, and stop stops it
    su -s /bin/sh munge -c "/usr/sbin/munged" 2>/dev/null || /usr/sbin/munged --force
    for _ in $(seq 1 20); do pgrep -x -n munged > "$DIR/run/munged.pid" && break; sleep 0.1; done
  fi
  # a fresh controller starts from an empty state: a node drained by an earlier config stays drained otherwise
  [ -f "$DIR/run/slurmctld.pid" ] && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null \
    || { rm -rf "$DIR/state"/*; /usr/sbin/slurmctld -f "$conf"; }
  [ -f "$DIR/run/slurmd.pid" ] && kill -0 "$(cat "$DIR/run/slurmd.pid")" 2>/dev/null || /usr/sbin/slurmd -f "$conf"
  for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "slurm-localhost: up ($conf)"
      exit 0
    fi
    sleep 0.5
  done
  echo "slurm-localhost: node did not become idle; see $DIR/log" >&2
  sinfo >&2 || true
  exit 1
  ;;
stop)
  for pidfile in "$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid" "$DIR/run/munged.pid"; do
    [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
  ;;
remove)
  # undo install: with SLURM's client installed and no controller reachable, the executor plugin's
  # `scontrol show config` probe costs ~9 s at every Snakemake start on this machine (docs/slurm.md)
  "$0" stop
  conf=/etc/slurm/slurm.conf
  if [ -f "$conf" ] && grep -q '^# written by kvharness ci/slurm-localhost.sh' "$conf"; then
    rm -f "$conf" /etc/slurm/gres.conf
  fi
  apt-get remove -y -q slurm-wlm slurm-client slurmctld slurmd slurm-wlm-basic-plugins munge >/dev/null
  ;;
*)
  echo "usage: $0 install|start|stop|remove" >&2
  exit 2
  ;;
esac
