#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite: the release build, then the same suite under
# AddressSanitizer + UndefinedBehaviorSanitizer, then a clang-format check of every source file.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
(cd build && ctest --output-on-failure -j "$(nproc)")

scripts/setup.sh --sanitize
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd build-asan && ctest --output-on-failure -j "$(nproc)")

if command -v clang-format >/dev/null; then
  files=$(git ls-files '*.h' '*.cc')
  if ! clang-format --dry-run --Werror $files; then
    echo "clang-format: the files above are not formatted (run clang-format -i)" >&2
    exit 1
  fi
fi
echo "all test stages passed"
