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
tag=sm$$
a=${tag}a b=${tag}b
tmp=$(mktemp -d)
cleanup() { ip netns del "$a" 2> /dev/null; ip netns del "$b" 2> /dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
set -e
ip netns add "$a"
ip netns add "$b"
ip link add "${tag}va" type veth peer name "${tag}vb"
ip link set "${tag}va" netns "$a"
ip link set "${tag}vb" netns "$b"
ip -n "$a" addr add 10.77.0.1/24 dev "${tag}va"
ip -n "$b" addr add 10.77.0.2/24 dev "${tag}vb"
for ns in "$a" "$b"; do
  ip -n "$ns" link set lo up
done
ip -n "$a" link set "${tag}va" up
ip -n "$b" link set "${tag}vb" up
set +e

# The launch agent: Open MPI calls it as ssh, "agent [options] HOST COMMAND...".
cat > "$tmp/agent" << AGENT
#!/bin/sh
while [ "\${1#-}" != "\$1" ]; do shift; done
host=\$1; shift
case \$host in 10.77.0.1) ns=$a ;; 10.77.0.2) ns=$b ;; *) echo "agent: unknown host \$host" >&2; exit 1 ;; esac
exec ip netns exec "\$ns" /bin/sh -c "\$*"
AGENT
chmod +x "$tmp/agent"

fail=0
run() {  # np, command...
  local np=$1; shift
  timeout 300 ip netns exec "$a" "$mpirun" --hostfile "$tmp/hosts" -np "$np" \
    --mca plm_rsh_agent "$tmp/agent" --mca btl tcp,self \
    --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
    -x OMP_NUM_THREADS=1 "$@" 2>&1
}
# The ranks really are on two hosts: each sees only its own namespace's address.
printf '10.77.0.1 slots=1\n10.77.0.2 slots=1\n' > "$tmp/hosts"
seen=$(run 2 /bin/sh -c 'ip -o -4 addr show | grep -o "10\.77\.0\.[12]"' | sort | tr '\n' ' ')
[[ "$seen" == "10.77.0.1 10.77.0.2 " ]] || { echo "FAIL: ranks saw addresses '$seen'"; fail=1; }
for slots in 1 2; do
  printf '10.77.0.1 slots=%s\n10.77.0.2 slots=%s\n' $slots $slots > "$tmp/hosts"
  np=$((2 * slots))
  out=$(run $np "$tests")
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
