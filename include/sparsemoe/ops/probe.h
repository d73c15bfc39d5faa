// Probes of the machine's own limits, for the benchmarks' rooflines: the floating-point peak of
// the vector level in use (independent fused multiply-adds, enough chains to cover the FMA
// latency on every x86-64 core), and the read bandwidth from memory. Both run on `threads`
// threads at once and take about a quarter of a second.
#pragma once

namespace sparsemoe {

// GFLOP/s of float FMAs at simd_target() (AVX-512, AVX2 + FMA; baseline: SSE multiply + add).
double fma_peak_gflops(int threads);
// GB/s of reading a buffer much larger than the caches (the best of three passes).
double read_bandwidth_gbps(int threads);

}  // namespace sparsemoe
