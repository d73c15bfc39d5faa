#!/usr/bin/env bash
# Installs the Debian packages sparsemoe needs (apt-get only: the libraries, the WordNet corpus,
# Chromium for the report test) and builds it. Idempotent: packages already present are not
# reinstalled and the build is incremental.
#   scripts/setup.sh               release build in build/
#   scripts/setup.sh --peer        also installs PyTorch/numpy for the benchmark peer (bench/)
#   scripts/setup.sh --sanitize    AddressSanitizer + UBSan build in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."

peer=0
sanitize=0
for arg in "$@"; do
  case "$arg" in
    --peer) peer=1 ;;
    --sanitize) sanitize=1 ;;
    *) echo "setup.sh: unknown option '$arg' (expected --peer or --sanitize)" >&2; exit 2 ;;
  esac
done

packages=(g++ cmake ninja-build pkg-config libdnnl-dev libopenblas-openmp-dev nlohmann-json3-dev
          libcli11-dev libfmt-dev libkissfft-dev libgtest-dev libgmock-dev libbenchmark-dev python3
          libsentencepiece-dev wordnet-base chromium time
          openmpi-bin libopenmpi-dev  # many processes (dist/): mpirun, the MPI backend
          clang libclang-rt-14-dev libomp-14-dev)  # clang: the libFuzzer targets (scripts/fuzz.sh)
if [[ $peer -eq 1 ]]; then packages+=(python3-torch python3-numpy); fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

if [[ $sanitize -eq 1 ]]; then
  dir=build-asan
  flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPARSEMOE_SANITIZE=ON -DSPARSEMOE_BUILD_BENCHMARKS=OFF
         -DSPARSEMOE_WITH_MPI=ON)
else
  dir=build
  flags=(-DCMAKE_BUILD_TYPE=Release -DSPARSEMOE_WITH_MPI=ON)
fi
cmake -S . -B "$dir" -G Ninja "${flags[@]}" >/dev/null
cmake --build "$dir" -j "$(nproc)"
