#!/usr/bin/env bash
# Installs the Debian packages sparsemoe needs (apt-get only: the libraries, the WordNet corpus,
# Chromium for the report test, Python's headers, pybind11, numpy, PyTorch and pytest for the Python
# package) and builds it. Idempotent: packages already present are not reinstalled and the build is
# incremental.
#   scripts/setup.sh               release build in build/, and the Python package installed into
#                                  .venv (a virtual environment that sees Debian's numpy and torch)
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
          python3-dev pybind11-dev python3-numpy python3-pytest python3-torch  # the Python package
          python3-venv python3-pip python3-setuptools python3-wheel            # ... and its pip install
          clang libclang-rt-14-dev libomp-14-dev)  # clang: the libFuzzer targets (scripts/fuzz.sh)
# --peer is kept for old scripts: PyTorch and numpy are now always installed (the Python tests).

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
  # -g1: line tables only, enough for the sanitizers' stack traces, and 8% less compile time
  # than -g on the heaviest sources (the ASan build was CI's longest stage).
  flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG"
         -DSPARSEMOE_SANITIZE=ON -DSPARSEMOE_BUILD_BENCHMARKS=OFF -DSPARSEMOE_WITH_MPI=ON)
else
  dir=build
  flags=(-DCMAKE_BUILD_TYPE=Release -DSPARSEMOE_WITH_MPI=ON)
fi
cmake -S . -B "$dir" -G Ninja "${flags[@]}" >/dev/null
cmake --build "$dir" -j "$(nproc)"
if [[ $sanitize -eq 0 ]]; then
  # The Python package, built from the same build/ (only the extension is left to build), into a
  # virtual environment with Debian's site packages (numpy, torch): Debian's own Python is
  # "externally managed" and refuses pip installs.
  if [[ ! -x .venv/bin/pip ]]; then /usr/bin/python3 -m venv --system-site-packages .venv; fi
  .venv/bin/pip install -q --no-build-isolation --no-index . >/dev/null
fi
