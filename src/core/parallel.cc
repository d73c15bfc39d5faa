// OpenMP implementation of parallel_for. With one thread, one item, or inside a parallel region
// the items run on the calling thread; otherwise a region is opened. GEMMs stay single-threaded
// either way (core/gemm.h forces the library to one thread outside a region), so every item's
// arithmetic is the same whatever the thread count.
#include "sparsemoe/core/parallel.h"

#include <omp.h>

#include <algorithm>
#include <exception>
#include <string>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/limits.h"

namespace sparsemoe {

namespace {
int g_threads = 0;  // 0: OpenMP default
}

void set_num_threads(int n) {
  check_arg(n >= 0 && n <= kMaxThreads, "threads: expected 1 to " + std::to_string(kMaxThreads) +
                                            " (0: the default), got " + std::to_string(n));
  g_threads = n > 0 ? n : 0;
  omp_set_num_threads(g_threads > 0 ? g_threads : omp_get_num_procs());
}

int num_threads() { return g_threads > 0 ? g_threads : omp_get_max_threads(); }

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  const int nt = num_threads();
  // One item gains nothing from a parallel region: the other threads would only wait at its
  // barrier.
  if (nt <= 1 || n == 1 || omp_in_parallel()) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  // Exceptions must not cross the OpenMP region boundary: capture the first and rethrow.
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t i = 0; i < n; ++i) {
    try {
      fn(i);
    } catch (...) {
#pragma omp critical(sparsemoe_parallel_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

void parallel_for_range(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = (n + grain - 1) / grain;
  parallel_for(chunks, [&](int64_t c) { fn(c * grain, std::min(n, (c + 1) * grain)); });
}

}  // namespace sparsemoe
