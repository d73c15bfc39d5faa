// The one threading primitive: parallel_for over independent work items (OpenMP). Results never
// depend on the thread count because callers partition work by shape alone and every item writes
// its own outputs; reductions happen inside one item in a fixed order.
#pragma once

#include <cstdint>
#include <functional>

namespace sparsemoe {

// Sets the number of threads used by parallel_for (and by nothing else: GEMMs run
// single-threaded inside work items). n = 0 restores the OpenMP default; n < 0 or n > kMaxThreads
// (core/limits.h) throws InvalidArgument naming "threads".
void set_num_threads(int n);
int num_threads();

// Calls fn(i) for i in [0, n). Items may run in any order and concurrently.
void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

// Splits [0, n) into chunks of `grain` (by shape only) and calls fn(begin, end) on each.
void parallel_for_range(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace sparsemoe
