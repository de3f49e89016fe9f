#!/usr/bin/env bash
# A real single-node SLURM cluster (slurmctld + slurmd + slurmdbd with a private MariaDB, munge) on
# this machine, from Debian packages, without systemd. Facts behind each setting: ../shared/notes/slurm.md.
#
#   scripts/slurm/cluster.sh up      # install if needed, start, wait until the node is idle
#   scripts/slurm/cluster.sh down    # stop only what `up` started (by PID), keep the files
#   scripts/slurm/cluster.sh status
#
# Everything lives in $AISTUDIO_SLURM_DIR (default /tmp/aistudio-slurm). Clients need
# SLURM_CONF=$AISTUDIO_SLURM_DIR/slurm.conf: `source $AISTUDIO_SLURM_DIR/env.sh`.
set -euo pipefail

DIR="${AISTUDIO_SLURM_DIR:-/tmp/aistudio-slurm}"
DB_PORT=3307
NODE="$(hostname -s)"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

log() { echo "[slurm] $*" >&2; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null \
      && command -v munged >/dev/null; then
    return
  fi
  log "installing munge, slurm and mariadb packages"
  # package scripts must not start services (no systemd; MariaDB would take port 3306)
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    munge slurmctld slurmd slurm-client slurmdbd mariadb-server >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
}

wait_for() {  # wait_for <seconds> <what> <command...>
  local seconds=$1 what=$2; shift 2
  for _ in $(seq 1 $((seconds * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "timed out waiting for $what"; return 1
}

alive() { [ -f "$DIR/pids/$1" ] && kill -0 "$(cat "$DIR/pids/$1")" 2>/dev/null; }

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  [ -f /etc/munge/munge.key ] || $SUDO mungekey --create
  $SUDO mkdir -p /run/munge && $SUDO chown munge:munge /run/munge /etc/munge/munge.key
  $SUDO runuser -u munge -- /usr/sbin/munged
  wait_for 10 munge sh -c 'munge -n | unmunge'
}

start_mariadb() {
  alive mariadb && return
  mkdir -p "$DIR/mysql-run"
  chown mysql:mysql "$DIR/mysql-run"
  if [ ! -d "$DIR/mysql/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$DIR/mysql" --auth-root-authentication-method=socket \
      >"$DIR/logs/mariadb-install.log" 2>&1
  fi
  mariadbd --user=mysql --datadir="$DIR/mysql" --socket="$DIR/mysql-run/mysqld.sock" \
    --pid-file="$DIR/mysql-run/mysqld.pid" --port=$DB_PORT --bind-address=127.0.0.1 \
    --log-error="$DIR/logs/mariadb.log" --skip-name-resolve >>"$DIR/logs/mariadb.out" 2>&1 </dev/null &
  echo $! >"$DIR/pids/mariadb"
  wait_for 60 mariadb mariadb --socket="$DIR/mysql-run/mysqld.sock" -e 'select 1'
  mariadb --socket="$DIR/mysql-run/mysqld.sock" <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'aistudio-slurm';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'aistudio-slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL
}

write_configs() {
  local hardware
  hardware="$(slurmd -C | head -n 1)"  # NodeName=<host> CPUs=... RealMemory=...
  cat >"$DIR/slurm.conf" <<CONF
ClusterName=aistudio
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/logs/slurmctld.log
SlurmdLogFile=$DIR/logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
EnforcePartLimits=ALL
JobRequeue=1
KillWait=10
MailProg=/bin/true
ReturnToService=2
${hardware} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
CONF
  cat >"$DIR/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$DIR/logs/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=aistudio-slurm
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$DIR/slurmdbd.conf"
  echo "export SLURM_CONF=$DIR/slurm.conf" >"$DIR/env.sh"
}

start_daemon() {  # start_daemon <name> <command...>; the daemons stay in the foreground (-D), we keep the PID
  local name=$1; shift
  alive "$name" && return
  "$@" >>"$DIR/logs/$name.out" 2>&1 </dev/null &
  echo $! >"$DIR/pids/$name"
}

up() {
  install_packages
  mkdir -p "$DIR"/{state,spool,run,logs,pids}
  start_munge
  start_mariadb
  write_configs
  export SLURM_CONF="$DIR/slurm.conf"
  start_daemon slurmdbd slurmdbd -D  # reads slurmdbd.conf beside $SLURM_CONF (it has no -f)
  wait_for 60 slurmdbd bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
  start_daemon slurmctld slurmctld -D -f "$DIR/slurm.conf"
  wait_for 60 slurmctld scontrol ping
  start_daemon slurmd slurmd -D -f "$DIR/slurm.conf"
  wait_for 60 "node $NODE idle" sh -c "sinfo -h -N -o '%T' | grep -qE '^(idle|mixed|allocated)'"
  wait_for 60 "accounting" sacct -n -X
  log "up: $(sinfo -h -N -o '%N %T %c CPUs %m MB') — source $DIR/env.sh (SLURM_CONF=$DIR/slurm.conf)"
}

down() {
  for name in slurmd slurmctld slurmdbd mariadb; do
    if alive "$name"; then
      local pid; pid="$(cat "$DIR/pids/$name")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done  # wait on the PID itself
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/pids/$name"
  done
  log "down"
}

status() {
  for name in mariadb slurmdbd slurmctld slurmd; do
    if alive "$name"; then echo "$name: running (pid $(cat "$DIR/pids/$name"))"; else echo "$name: stopped"; fi
  done
  [ -f "$DIR/slurm.conf" ] && SLURM_CONF="$DIR/slurm.conf" sinfo 2>/dev/null || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
