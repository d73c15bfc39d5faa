#!/usr/bin/env bash
# Two hosts on one machine, for the multi-host test and for measurements over a real TCP link:
# network namespaces joined by a veth link (iproute2), 10.77.0.1 and 10.77.0.2, and a launch agent
# that enters a host's namespace in ssh's place. Sourced (tests/mpi/netns_test.sh) or run:
#   [NETNS_RATE=2gbit] scripts/netns_hosts.sh SLOTS_PER_HOST [MPIRUN_ARGS...] -- COMMAND...
# runs `mpirun` across the two hosts with SLOTS_PER_HOST ranks on each. Needs root.
# --bind-to none matters: each host's daemon sees the whole machine and would bind its first rank
# to core 0, so both hosts' ranks would share one core and every message would wait for a
# scheduler tick (4 ms here, 250 Hz); unbound, a small message takes about 9 us one way.

netns_up() {  # creates the hosts; sets NETNS_A, NETNS_B, NETNS_TMP and an EXIT trap to remove them
  local tag=sm$$
  NETNS_A=${tag}a NETNS_B=${tag}b
  NETNS_TMP=$(mktemp -d)
  trap netns_down EXIT
  ip netns add "$NETNS_A" && ip netns add "$NETNS_B" &&
    ip link add "${tag}va" type veth peer name "${tag}vb" &&
    ip link set "${tag}va" netns "$NETNS_A" && ip link set "${tag}vb" netns "$NETNS_B" &&
    ip -n "$NETNS_A" addr add 10.77.0.1/24 dev "${tag}va" &&
    ip -n "$NETNS_B" addr add 10.77.0.2/24 dev "${tag}vb" &&
    ip -n "$NETNS_A" link set lo up && ip -n "$NETNS_B" link set lo up &&
    ip -n "$NETNS_A" link set "${tag}va" up && ip -n "$NETNS_B" link set "${tag}vb" up || return 1
  # NETNS_RATE (tc's units, e.g. 2gbit) caps the link in each direction, to emulate a slower network.
  if [[ -n "${NETNS_RATE:-}" ]]; then
    tc -n "$NETNS_A" qdisc add dev "${tag}va" root tbf rate "$NETNS_RATE" burst 512kb latency 100ms &&
      tc -n "$NETNS_B" qdisc add dev "${tag}vb" root tbf rate "$NETNS_RATE" burst 512kb latency 100ms || return 1
  fi
  # Open MPI calls the agent as ssh: "agent [options] HOST COMMAND...".
  cat > "$NETNS_TMP/agent" << AGENT
#!/bin/sh
while [ "\${1#-}" != "\$1" ]; do shift; done
host=\$1; shift
case \$host in 10.77.0.1) ns=$NETNS_A ;; 10.77.0.2) ns=$NETNS_B ;; *) echo "agent: unknown host \$host" >&2; exit 1 ;; esac
exec ip netns exec "\$ns" /bin/sh -c "\$*"
AGENT
  chmod +x "$NETNS_TMP/agent"
}

netns_down() {
  ip netns del "$NETNS_A" 2> /dev/null
  ip netns del "$NETNS_B" 2> /dev/null
  rm -rf "$NETNS_TMP"
}

netns_mpirun() {  # MPIRUN SLOTS_PER_HOST NP ARGS...: mpirun from host a over TCP on the veth link,
  # ended after NETNS_TIMEOUT seconds if set
  local mpirun=$1 slots=$2 np=$3
  shift 3
  printf '10.77.0.1 slots=%s\n10.77.0.2 slots=%s\n' "$slots" "$slots" > "$NETNS_TMP/hosts"
  timeout "${NETNS_TIMEOUT:-0}" ip netns exec "$NETNS_A" "$mpirun" --hostfile "$NETNS_TMP/hosts" -np "$np" --bind-to none \
    --mca plm_rsh_agent "$NETNS_TMP/agent" --mca btl tcp,self \
    --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
    -x OMP_NUM_THREADS "$@"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -u
  if [[ $# -lt 3 || $(id -u) -ne 0 ]]; then
    echo "usage (as root): $0 SLOTS_PER_HOST [MPIRUN_ARGS...] -- COMMAND..." >&2
    exit 2
  fi
  slots=$1
  shift
  args=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do
    args+=("$1")
    shift
  done
  [[ $# -gt 1 ]] || { echo "$0: expected -- COMMAND..." >&2; exit 2; }
  shift
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  netns_up || exit 1
  netns_mpirun mpirun "$slots" $((2 * slots)) "${args[@]}" "$@"
fi
