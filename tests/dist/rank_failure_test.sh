#!/usr/bin/env bash
# A failing rank must end the whole mpirun job with a non-zero status, not leave the other ranks
# waiting in a collective. Three cases: a gtest that throws on one rank (the dist tests' main), and
# the moex binary where only the root rank fails (it alone creates training.out_dir, here a path
# under a regular file) while the other rank goes on to the gradient all-reduce. And ranks started
# with different flags, which are refused before any of them trains.
# usage: rank_failure_test.sh MPIRUN RANK_THROWS_PROBE WRITE_TRAIN_FIXTURE MOEX WORK_DIR
set -uo pipefail
mpirun=$1 rank_throws=$2 write_fixture=$3 moex=$4 work=$5
mpi=("$mpirun" --allow-run-as-root --oversubscribe -np 2 -x OMP_NUM_THREADS=1)
failures=0

# Runs one job under a generous outer limit that only guards against a hang (status 124).
expect_job_fails() {
  local what=$1
  shift
  timeout 300 "$@" >"$work/out.txt" 2>&1
  local status=$?
  if [ "$status" -eq 0 ]; then
    echo "FAIL: $what: the job exited 0"
    failures=$((failures + 1))
  elif [ "$status" -eq 124 ]; then
    echo "FAIL: $what: the job hung (killed by timeout)"
    failures=$((failures + 1))
  else
    echo "ok: $what: the job ended with status $status"
  fi
  if ! grep -q "$EXPECTED_MESSAGE" "$work/out.txt"; then
    echo "FAIL: $what: the output does not show the failure ('$EXPECTED_MESSAGE'):"
    failures=$((failures + 1))
    cat "$work/out.txt"
  fi
}

rm -rf "$work" && mkdir -p "$work"
EXPECTED_MESSAGE="deliberate failure on one rank"
expect_job_fails "gtest throwing on one rank" "${mpi[@]}" "$rank_throws"

touch "$work/not_a_directory"
config=$("$write_fixture" "$work/corpus" "$work/not_a_directory/run") || exit 1
EXPECTED_MESSAGE="moex train: error (rank 0 of 2):"
expect_job_fails "moex train failing on the root rank only" "${mpi[@]}" "$moex" train --config "$config"

# Ranks started with different flags (here --stop-after on one of them) would wait in different
# collectives forever: the job ends at start-up naming the difference.
config=$("$write_fixture" "$work/corpus2" "$work/run2") || exit 1
mpmd=("$mpirun" --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1)
EXPECTED_MESSAGE="stop_after is 5 on rank 1 and 0 on rank 0; every rank must run the same config and flags"
expect_job_fails "moex train with other flags on one rank" "${mpmd[@]}" -np 1 "$moex" train --config "$config" : -np 1 "$moex" train --config "$config" --stop-after 5

rm -rf "$work"
[ "$failures" -eq 0 ]
