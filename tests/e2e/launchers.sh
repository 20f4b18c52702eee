#!/usr/bin/env bash
# The same `tessel train` command under mpirun (OpenMPI; over Gloo, and over the MPI engine) and under a real single-host Slurm
# (`srun -n 2`, with slurmctld and slurmd started and stopped here) trains to the loss the same
# plan gives on 2 simulated devices of one process. A launcher that is not installed, or a
# Slurm that cannot start here, is skipped with a message (and exit 77 if all are skipped).
# Usage: launchers.sh TESSEL_BINARY
set -u
T=$1
WORK=$(mktemp -d)
SLURM_PIDS=()
cleanup() {
  for p in "${SLURM_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.3
  for p in "${SLURM_PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  # slurmstepd outlives its daemons by about a second.
  for _ in $(seq 50); do pgrep -x slurmstepd >/dev/null || break; sleep 0.1; done
  rm -rf "$WORK"
}
trap cleanup EXIT

JOB="train --model mlp:784-128-10 --dataset fashion-mnist --steps 12 --batch 64 --optimizer sgd --lr 0.05 --momentum 0.9 --seed 3 --format json --quiet --dp 2"
if [ ! -d /usr/share/datasets/fashion-mnist ]; then echo "SKIP: no fashion-mnist"; exit 77; fi
"$T" $JOB --devices 2 >"$WORK/threads.out" 2>"$WORK/threads.err" || { echo "FAIL: the in-process run"; cat "$WORK/threads.err"; exit 1; }
want=$(sed -n 's/.*"final_loss":\([-0-9.e+]*\).*/\1/p' "$WORK/threads.out")
echo "2 simulated devices: final_loss $want"

fail=0 ran=0
check() {  # $1: name, $2: output file, $3: exit status
  local got
  got=$(sed -n 's/.*"final_loss":\([-0-9.e+]*\).*/\1/p' "$2" | head -1)
  echo "$1: final_loss ${got:-none} (exit $3)"
  if [ "$3" -eq 0 ] && [ "$got" = "$want" ] && [ "$(grep -c final_loss "$2")" -eq 1 ]; then
    echo "PASS $1"
  else
    echo "FAIL $1"
    fail=1
  fi
  ran=$((ran + 1))
}

# --- mpirun ---
if command -v mpirun >/dev/null; then
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 mpirun -n 2 --oversubscribe "$T" $JOB \
    >"$WORK/mpi.out" 2>"$WORK/mpi.err"
  check "mpirun -n 2" "$WORK/mpi.out" $?
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 mpirun -n 2 --oversubscribe "$T" $JOB --comm mpi \
    >"$WORK/mpi2.out" 2>"$WORK/mpi2.err"
  check "mpirun -n 2, the MPI engine" "$WORK/mpi2.out" $?
  ls -d /tmp/tessel-job-* 2>/dev/null | grep -q . && { echo "FAIL: mpirun left its store directory"; fail=1; }
else
  echo "SKIP mpirun: OpenMPI is not installed (openmpi-bin)"
fi

# --- Slurm, one host, no munge (auth/none) ---
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && [ "$(id -u)" -eq 0 ]; then
  D=$WORK/slurm
  mkdir -p "$D/state" "$D/spool"
  node=$(hostname -s)
  nodeline=$(slurmd -C 2>/dev/null | head -1)
  cat >"$D/slurm.conf" <<EOF
ClusterName=tessel
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
SlurmctldPort=$((6900 + RANDOM % 500))
SlurmdPort=$((7500 + RANDOM % 500))
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
${nodeline/RealMemory=*/RealMemory=1000} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$D/slurm.conf
  slurmctld -D -f "$SLURM_CONF" >"$D/ctld.out" 2>&1 &
  SLURM_PIDS+=($!)
  slurmd -D -f "$SLURM_CONF" >"$D/d.out" 2>&1 &
  SLURM_PIDS+=($!)
  up=0
  for _ in $(seq 100); do
    [ "$(timeout 3 sinfo -h -o %T 2>/dev/null)" = "idle" ] && { up=1; break; }
    sleep 0.1
  done
  if [ $up -eq 1 ]; then
    timeout 120 srun -K -n 2 "$T" $JOB >"$WORK/srun.out" 2>"$WORK/srun.err"
    rc=$?
    check "srun -n 2" "$WORK/srun.out" $rc
    [ $rc -eq 0 ] || tail -5 "$WORK/srun.err"
  else
    echo "SKIP srun: slurmctld/slurmd did not come up here"
    tail -3 "$D/slurmctld.log" "$D/slurmd.log" 2>/dev/null
  fi
else
  echo "SKIP srun: Slurm (slurm-wlm) is not installed, or not root"
fi

if [ $ran -eq 0 ]; then exit 77; fi
exit $fail
