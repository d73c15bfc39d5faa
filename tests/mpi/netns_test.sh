#!/usr/bin/env bash
# Two hosts on one machine: network namespaces joined by a veth link (iproute2), Open MPI over TCP
# between them, a launch agent that enters a host's namespace in ssh's place. Runs the MPI test
# binary (the collectives, the expert-parallel MoE layer and short trainings against one process,
# bit for bit) with 1 and then 2 ranks per host. Needs root (CI runs as root); without it the test reports itself
# skipped (exit 77), never passed. Usage: netns_test.sh MPIRUN MPI_TEST_BINARY
set -u
mpirun=$1
tests=$2
if [[ $(id -u) -ne 0 ]] || ! command -v ip > /dev/null; then
  echo "netns test: needs root and iproute2 (ip); skipped"
  exit 77
fi
source "$(dirname "$0")/../../scripts/netns_hosts.sh"
netns_up || { echo "netns test: could not create the hosts"; exit 1; }
export OMP_NUM_THREADS=1

fail=0
run() {  # slots per host, np, command...
  local slots=$1 np=$2
  shift 2
  NETNS_TIMEOUT=300 netns_mpirun "$mpirun" "$slots" "$np" "$@" 2>&1
}
# The ranks really are on two hosts: each sees only its own namespace's address.
seen=$(run 1 2 /bin/sh -c 'ip -o -4 addr show | grep -o "10\.77\.0\.[12]"' | sort | tr '\n' ' ')
[[ "$seen" == "10.77.0.1 10.77.0.2 " ]] || { echo "FAIL: ranks saw addresses '$seen'"; fail=1; }
for slots in 1 2; do
  np=$((2 * slots))
  out=$(run $slots $np "$tests")
  status=$?
  passed=$(grep -c "PASSED" <<< "$out")
  if [[ $status -ne 0 || $passed -ne $np ]]; then
    echo "FAIL: $np ranks on 2 hosts: exit status $status, $passed of $np ranks passed"
    echo "$out" | tail -30
    fail=1
  else
    echo "netns test: $np ranks on 2 hosts over TCP: every rank passed"
  fi
done
exit $fail
