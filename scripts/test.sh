#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite: the release build; an install of it used by an
# outside project (tests/consumer); the Python package as pip installed it; the suite again with the OpenBLAS GEMM backend; the suite under
# AddressSanitizer + UndefinedBehaviorSanitizer; every fuzzer (fuzz/, libFuzzer) on its regression
# inputs and then for a minute each; then a clang-format check of every source file.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage prints its wall time, so that a slow CI run shows where the minutes went.
stage_start=$SECONDS
stage() {  # name of the stage just finished
  echo "== stage '$1': $((SECONDS - stage_start)) s (total $SECONDS s)"
  stage_start=$SECONDS
}

scripts/setup.sh
stage setup+build
(cd build && ctest --output-on-failure -j "$(nproc)")
stage release-tests

# Packaging: install to a scratch prefix and build + run a consumer through find_package.
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install build --prefix "$prefix/install" >/dev/null
cmake -S tests/consumer -B "$prefix/consumer" -G Ninja -DCMAKE_PREFIX_PATH="$prefix/install" >/dev/null
cmake --build "$prefix/consumer" >/dev/null
libdir=$(dirname "$(find "$prefix/install" -name 'libsparsemoe.so' | head -1)")
LD_LIBRARY_PATH="$libdir" "$prefix/consumer/consumer"
# ... and through pkg-config.
pc_flags=$(PKG_CONFIG_PATH="$libdir/pkgconfig" pkg-config --cflags --libs sparsemoe)
g++ -std=c++20 tests/consumer/main.cc $pc_flags -o "$prefix/consumer_pc"
LD_LIBRARY_PATH="$libdir" "$prefix/consumer_pc"
stage packaging

# The Python package as pip installed it (.venv, by setup.sh): its tests from outside the
# checkout, so that nothing of the build tree is on the path.
(cd "$prefix" && OMP_NUM_THREADS=2 SPARSEMOE_CLI="$OLDPWD/build/sparsemoe" \
  "$OLDPWD/.venv/bin/python" -m pytest -q -p no:cacheprovider "$OLDPWD/python/tests")
stage python

# The other GEMM backend, selectable at configure time, passes the same suite (less the Python
# package: its bindings call the same library, and it was the slowest part of this build).
cmake -S . -B build-openblas -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPARSEMOE_BLAS=openblas \
  -DSPARSEMOE_BUILD_BENCHMARKS=OFF -DSPARSEMOE_PYTHON=OFF >/dev/null
cmake --build build-openblas -j "$(nproc)"
stage openblas-build
(cd build-openblas && ctest --output-on-failure -j "$(nproc)")
stage openblas-tests

scripts/setup.sh --sanitize
stage asan-build
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# cli_mpi_wordnet repeats the release stage's three WordNet trainings (tokenizer and test split
# included) for minutes under ASan; the same code runs sanitized in the MPI tests and cli_mpi.
# python_example_train_sparse_mixer is one more WordNet training (2.5 min under ASan); the same
# bindings run sanitized in python_pytest's training tests.
(cd build-asan &&
  ctest --output-on-failure -j "$(nproc)" -E '^(cli_mpi_wordnet|python_example_train_sparse_mixer)$')
stage asan-tests

# The readers of outside input under libFuzzer (docs/reliability.md has the longer runs).
scripts/fuzz.sh "${SPARSEMOE_FUZZ_SECONDS:-60}"
stage fuzz

if command -v clang-format >/dev/null; then
  files=$(git ls-files '*.h' '*.cc')
  if ! clang-format --dry-run --Werror $files; then
    echo "clang-format: the files above are not formatted (run clang-format -i)" >&2
    exit 1
  fi
fi
stage clang-format
echo "all test stages passed"
