// The engine's GEMM micro-kernels and their blocking (see gemm_kernel.h). Loop order: rows in
// blocks of kMc, kMcPacked with B packed beforehand (A packed once per block into [k][MR]
// micro-panels, a transposed A too); columns in groups; k in chunks, inside the group, so the
// group's C block stays in L2 between chunks; each chunk's B packed into [k][NR] panels (by the
// first row block's micro-kernel calls as they compute, for a row-major B; or read in place when
// the rows are few) that every row block then uses. The micro-kernels keep an MR x NR
// tile of C in registers (14 x 32: 28 of 32 zmm, at AVX-512; 6 x 16: 12 of 16 ymm, at AVX2) and run
// one FMA chain per element over the chunk. The epilogue runs per row block of a finished group.
#include "sparsemoe/ops/gemm_kernel.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "sparsemoe/core/gemm.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/ops/simd.h"

namespace sparsemoe {

namespace {

// Blocking. Many rows: k chunks of kKc512 at AVX-512 (a B micro-panel of 512 x 32 floats, 64 KiB,
// streamed from L2: on a Xeon (Emerald Rapids) 2-5% faster than 256 on the forward shapes and
// never slower, in call-by-call alternation, docs/performance.md) and kKc256 at AVX2 (512 was no
// faster there), and B packed kNcPanels panels at a time. The chunk length never changes a bit:
// C is stored and reloaded in fp32 between chunks, one FMA chain per element. Few rows (at most
// kFewRows: decode, a few tokens per expert): B is streamed from memory and used once, so it is
// read in place, not packed, in chunks of a few whole rows (kFewKc(m) rows, up to kFewCols wide):
// each chunk is one contiguous stretch of memory, and the micro-kernels' prefetch of the next chunk
// keeps the stream going. Panel by panel down all k instead, the reads are 128 bytes a weight row
// apart and run at a quarter of the machine's read bandwidth. The shorter the chunk, the more often
// C is loaded and stored, but the longer, the further ahead its prefetch reaches: 8 rows for the
// wide kernels' one or two rows, 32 from 3 rows up to kFewRows. (8 up to 8 rows was measured on
// Zen 4 before the one-chunk-ahead prefetch; on a Xeon (Emerald Rapids) after it, 32 rows read W
// at 4 rows 12.3 -> 15.1 GB/s and at 8 rows 8.8 -> 12.9 (AVX2: 10.6 -> 13.7, 6.1 -> 7.4), and the
// 128-token MoE inference ran 9-11% faster, while one token's (1-2 rows) was 9% slower with 32:
// call-by-call alternation, docs/performance.md.)
constexpr int64_t kKc512 = 512, kKc256 = 256;
constexpr int64_t kNcPanels = 8;
constexpr int64_t kFewRows = 32;
// Rows up to which a transposed B (W^T) is read in place (rows_by_transposed), not packed.
constexpr int64_t kFewRowsT = 16;
constexpr int64_t kFewCols = 4096;
constexpr int64_t kFewKc(int64_t m) { return m <= 2 ? 8 : 32; }
constexpr int64_t kMc = 512;  // rows per A block: 512 x kc floats per k chunk
// With B packed beforehand, fewer: nothing is packed per block then, and a small A block (and
// its C block) stays in L2 for all of a column group's panels. One thread, packed weights, on a
// Xeon (Emerald Rapids), call-by-call alternation: 512 x 768 x 3072 117 -> 152 GFLOP/s, 512 x
// 2048 x 512 135 -> 151, and never slower; the AVX2 path 73 -> 78-81. Per call-packed B stays
// at kMc: there a smaller block packs B more often (97 -> 73 GFLOP/s at 84 rows).
constexpr int64_t kMcPacked = 112;
// A packed row block holds all of k, so that every column group reuses it. Its size per thread is
// bounded (4 MiB): with a long k (the MLM head's dX = dLogits . Table sums over the vocabulary)
// the block has fewer rows instead, and B is packed once per block more.
constexpr int64_t kPackedAFloats = int64_t{1} << 20;

// Rows ahead that the micro-kernels prefetch in a packed panel (a contiguous run). B read in place
// (few rows) is prefetched one chunk ahead instead (kc rows: the same columns of the next chunk,
// the next stretch of the stream that the kernel reads): 64 rows there was 8 chunks, half a
// megabyte, ahead, and one token's MoE forward ran 11-17% slower at one and two threads on a Xeon
// (Emerald Rapids), call-by-call alternation; 2 x kc was in between.
constexpr int64_t kPrefetchRows = 64;
// The longest k chunk whose calls prefetch the next call's C tile (native_gemm).
constexpr int64_t kShortK = 64;
// The longest k of a transposed A (weight gradients: X^T over a few tokens) that outer_rows takes
// instead of the tiles. A 512 x 2048 weight gradient into a C in memory, one thread, Xeon (Emerald
// Rapids), call-by-call alternation: AVX-512 k 1: 785 -> 273 us, 8: 1021 -> 486, 16: 1077 -> 692,
// 32: 1322 -> 1142, 48: 1612 -> 1723 (slower); AVX2 k 1: 1048 -> 319, 8: 1281 -> 873, 16: 1330 ->
// 1226, 24: 1374 -> 1776 (slower). Its 4 (AVX2: 3) rows of C hold too few accumulators for a long
// k. With AVX2's 3-row bands (below), k 24 was a tie and 32 slower than the tiles again.
constexpr int64_t kOuterK512 = 32, kOuterK256 = 16;

// Rows of B ahead that a packing micro-kernel call (micro_copy: B in place, rows a weight row
// apart, all in a few L1 sets) prefetches. 0, 2, 4, 8 and 16 measured alike (Zen 5, AVX-512).
constexpr int64_t kCopyAheadRows = 8;

// Rows of a transposed A (X^T) that its packing prefetches ahead (pack_a).
constexpr int64_t kTransposedAhead = 8;

constexpr int kMr512 = 14, kNr512 = 32;
constexpr int kMr256 = 6, kNr256 = 16;

// The B region the next pack (or the next chunk read in place) reads, prefetched into L2 while the
// micro-kernels compute, so that it is found in cache instead of waited for: `segments` runs of
// `lines` cache lines, `stride` floats apart. The micro-kernels issue it, one line every `every` k
// steps, so that the prefetches are spread over the computation. Issued in a burst before each
// call instead (60 lines at 4096 tokens), they stalled on the core's few outstanding misses: 29%
// of the driver's own time in perf at the MoE layer's forward+backward, Xeon (Emerald Rapids).
// Spread, in call-by-call alternation on that Xeon, one thread: GEMMs of 4-14 rows with B read in
// place +11 to +19% (8 x 2048 x 512: 57 -> 65 GFLOP/s), 64 x 2048 x 512 +7%, 256 and 512 rows
// +1 to +3%; the MoE training forward at 128 tokens -5% (AVX2 level -9%), at 4096 tokens -2%.
// At most kc lines per call are issued (every >= 1): topping up the rest after each call, as at
// 4-8 rows with 32-row chunks, measured slower than leaving them.
struct Ahead {
  const float* base = nullptr;
  int64_t segments = 0, lines = 0, stride = 0, seg = 0, line = 0;
  int64_t every = 1;  // k steps per line issued

  void start(MatRef b, int64_t p0, int64_t kc, int64_t j0, int64_t nv) {
    const bool rows = b.col_stride == 1;
    if (!rows && b.row_stride != 1) return;  // neither layout: no prefetch
    base = b.data + p0 * b.row_stride + j0 * b.col_stride;
    segments = rows ? kc : nv;
    lines = ((rows ? nv : kc) + 15) / 16;
    stride = rows ? b.row_stride : b.col_stride;
  }
  void start_run(const float* p, int64_t floats) {  // one contiguous run
    base = p;
    segments = 1;
    lines = (floats + 15) / 16;
    stride = 0;
  }
  int64_t total() const { return segments * lines; }
  void issue(int64_t count) {
    for (; count > 0 && seg < segments; --count) {
      _mm_prefetch(reinterpret_cast<const char*>(base + seg * stride + line * 16), _MM_HINT_T1);
      if (++line == lines) line = 0, ++seg;
    }
  }
};

// A micro-kernel: C[M, NR] (+)= A[M, kc] . Bp[kc, NR], M <= MR rows. A's M values for one k are
// contiguous (a[i], i < M) and the next k's are acs floats on (MR in a packed panel); B's rows are
// bs floats apart, and each k step prefetches the row pf floats on. cn (null: none) is the C tile
// of the driver's next call, rows ldc apart, prefetched at the start, and ah (null: none) the
// region to fetch into L2 meanwhile (both for micro-kernels only: the wide kernels take neither).
using MicroFn = void (*)(int64_t kc, const float* a, int64_t acs, const float* bp, int64_t bs,
                         int64_t pf, float* c, int64_t ldc, bool load, const float* cn, Ahead* ah);

template <int M, bool Copy>
[[gnu::always_inline]] __attribute__((target("avx512f"))) inline void micro512_body(
    int64_t kc, const float* a, int64_t acs, const float* bp, int64_t bs, int64_t pf, float* c,
    int64_t ldc, bool load, const float* cn, Ahead* ah, float* bw) {
  __m512 lo[M], hi[M];
  int64_t countdown = ah ? ah->every : 0;
  if (cn) {
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(cn + i * ldc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(cn + i * ldc + 16), _MM_HINT_T0);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
    lo[i] = load ? _mm512_loadu_ps(c + i * ldc) : _mm512_setzero_ps();
    hi[i] = load ? _mm512_loadu_ps(c + i * ldc + 16) : _mm512_setzero_ps();
  }
  for (int64_t p = 0; p < kc; ++p, a += acs, bp += bs) {
    _mm_prefetch(reinterpret_cast<const char*>(bp + pf), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(bp + pf + 16), _MM_HINT_T0);
    const __m512 b0 = _mm512_loadu_ps(bp), b1 = _mm512_loadu_ps(bp + 16);
    if constexpr (Copy) {
      _mm512_store_ps(bw + p * 32, b0);
      _mm512_store_ps(bw + p * 32 + 16, b1);
    }
    // c += a[i] * b. From 9 rows on, a[i] is broadcast into a register once for its two FMAs: 16
    // loads per 28 FMAs instead of 30 (the broadcast folded into each FMA, {1to16}, loads a[i]
    // twice). On an AMD EPYC Zen 5 (two 512-bit FMA units) the 14-row kernel alone, from L1,
    // went from 185-188 to 205-210 GFLOP/s (peak 211), and in call-by-call alternation, one
    // thread, the MoE layer at 4096 tokens ran inference -18%, the training forward -15%,
    // forward+backward -10% (two threads -13/-9/-7%), 512 tokens' inference -20%. Below 9 rows
    // (B read in place, a few tokens per expert) the register form measured 1-3% slower there, so
    // those keep the folded one, which also measured faster on Zen 4 (one noisy run, 12 rows); on
    // a Xeon (Emerald Rapids) the two measured alike (docs/performance.md). Same FMAs: same bits.
    if constexpr (M >= 9) {
#pragma GCC unroll 16
      for (int i = 0; i < M; ++i) {
        const __m512 av = _mm512_set1_ps(a[i]);
        lo[i] = _mm512_fmadd_ps(av, b0, lo[i]);
        hi[i] = _mm512_fmadd_ps(av, b1, hi[i]);
      }
    } else {
#pragma GCC unroll 16
      for (int i = 0; i < M; ++i) {
        asm("vfmadd231ps %[a]%{1to16%}, %[b], %[c]" : [c] "+v"(lo[i]) : [b] "v"(b0), [a] "m"(a[i]));
        asm("vfmadd231ps %[a]%{1to16%}, %[b], %[c]" : [c] "+v"(hi[i]) : [b] "v"(b1), [a] "m"(a[i]));
      }
    }
    if (ah && --countdown == 0) {
      countdown = ah->every;
      ah->issue(1);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
    _mm512_storeu_ps(c + i * ldc, lo[i]);
    _mm512_storeu_ps(c + i * ldc + 16, hi[i]);
  }
}
template <int M>
__attribute__((target("avx512f"))) void micro_avx512(int64_t kc, const float* a, int64_t acs,
                                                     const float* bp, int64_t bs, int64_t pf,
                                                     float* c, int64_t ldc, bool load,
                                                     const float* cn, Ahead* ah) {
  micro512_body<M, false>(kc, a, acs, bp, bs, pf, c, ldc, load, cn, ah, nullptr);
}
// The full-height kernel that also packs the B panel it reads (in place, bs apart) into bw
// ([kc][32], aligned): the first row block's call packs each panel as it computes with it.
__attribute__((target("avx512f"))) void micro_copy_avx512(int64_t kc, const float* a, int64_t acs,
                                                          const float* bp, int64_t bs, int64_t pf,
                                                          float* c, int64_t ldc, bool load,
                                                          const float* cn, Ahead* ah, float* bw) {
  micro512_body<kMr512, true>(kc, a, acs, bp, bs, pf, c, ldc, load, cn, ah, bw);
}

template <int M, bool Copy>
[[gnu::always_inline]] __attribute__((target("avx2,fma"))) inline void micro256_body(
    int64_t kc, const float* a, int64_t acs, const float* bp, int64_t bs, int64_t pf, float* c,
    int64_t ldc, bool load, const float* cn, Ahead* ah, float* bw) {
  __m256 lo[M], hi[M];
  int64_t countdown = ah ? ah->every : 0;
  if (cn) {
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(cn + i * ldc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(cn + i * ldc + 15), _MM_HINT_T0);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) {
    lo[i] = load ? _mm256_loadu_ps(c + i * ldc) : _mm256_setzero_ps();
    hi[i] = load ? _mm256_loadu_ps(c + i * ldc + 8) : _mm256_setzero_ps();
  }
  for (int64_t p = 0; p < kc; ++p, a += acs, bp += bs) {
    _mm_prefetch(reinterpret_cast<const char*>(bp + pf), _MM_HINT_T0);
    const __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);
    if constexpr (Copy) {
      _mm256_store_ps(bw + p * 16, b0);
      _mm256_store_ps(bw + p * 16 + 8, b1);
    }
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      const __m256 av = _mm256_broadcast_ss(a + i);
      lo[i] = _mm256_fmadd_ps(av, b0, lo[i]);
      hi[i] = _mm256_fmadd_ps(av, b1, hi[i]);
    }
    if (ah && --countdown == 0) {
      countdown = ah->every;
      ah->issue(1);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) {
    _mm256_storeu_ps(c + i * ldc, lo[i]);
    _mm256_storeu_ps(c + i * ldc + 8, hi[i]);
  }
}
template <int M>
__attribute__((target("avx2,fma"))) void micro_avx2(int64_t kc, const float* a, int64_t acs,
                                                    const float* bp, int64_t bs, int64_t pf,
                                                    float* c, int64_t ldc, bool load,
                                                    const float* cn, Ahead* ah) {
  micro256_body<M, false>(kc, a, acs, bp, bs, pf, c, ldc, load, cn, ah, nullptr);
}
__attribute__((target("avx2,fma"))) void micro_copy_avx2(int64_t kc, const float* a, int64_t acs,
                                                         const float* bp, int64_t bs, int64_t pf,
                                                         float* c, int64_t ldc, bool load,
                                                         const float* cn, Ahead* ah, float* bw) {
  micro256_body<kMr256, true>(kc, a, acs, bp, bs, pf, c, ldc, load, cn, ah, bw);
}

// Few-row kernels over four adjacent panels read in place: C[M, 4*NR]. One row over one panel
// has only two FMA chains in flight, so FMA latency, not memory, would set the pace of a
// single token's GEMV; four panels give eight. Same chains, same order: same bits.
template <int M>
__attribute__((target("avx512f"))) void wide_avx512(int64_t kc, const float* a, int64_t acs,
                                                    const float* bp, int64_t bs, int64_t pf,
                                                    float* c, int64_t ldc, bool load,
                                                    const float* /*cn*/, Ahead* /*ah*/) {
  __m512 acc[M][8];
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < 8; ++v)
      acc[i][v] = load ? _mm512_loadu_ps(c + i * ldc + 16 * v) : _mm512_setzero_ps();
  for (int64_t p = 0; p < kc; ++p, a += acs, bp += bs) {
#pragma GCC unroll 8
    for (int v = 0; v < 8; ++v)
      _mm_prefetch(reinterpret_cast<const char*>(bp + pf + 16 * v), _MM_HINT_T0);
#pragma GCC unroll 8
    for (int v = 0; v < 8; ++v) {
      const __m512 b = _mm512_loadu_ps(bp + 16 * v);
      for (int i = 0; i < M; ++i) acc[i][v] = _mm512_fmadd_ps(_mm512_set1_ps(a[i]), b, acc[i][v]);
    }
  }
  for (int i = 0; i < M; ++i)
    for (int v = 0; v < 8; ++v) _mm512_storeu_ps(c + i * ldc + 16 * v, acc[i][v]);
}

template <int M>
__attribute__((target("avx2,fma"))) void wide_avx2(int64_t kc, const float* a, int64_t acs,
                                                   const float* bp, int64_t bs, int64_t pf,
                                                   float* c, int64_t ldc, bool load,
                                                   const float* /*cn*/, Ahead* /*ah*/) {
  __m256 acc[M][8];
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < 8; ++v)
      acc[i][v] = load ? _mm256_loadu_ps(c + i * ldc + 8 * v) : _mm256_setzero_ps();
  for (int64_t p = 0; p < kc; ++p, a += acs, bp += bs) {
#pragma GCC unroll 8
    for (int v = 0; v < 8; v += 2)
      _mm_prefetch(reinterpret_cast<const char*>(bp + pf + 8 * v), _MM_HINT_T0);
#pragma GCC unroll 8
    for (int v = 0; v < 8; ++v) {
      const __m256 b = _mm256_loadu_ps(bp + 8 * v);
      for (int i = 0; i < M; ++i)
        acc[i][v] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + i), b, acc[i][v]);
    }
  }
  for (int i = 0; i < M; ++i)
    for (int v = 0; v < 8; ++v) _mm256_storeu_ps(c + i * ldc + 8 * v, acc[i][v]);
}

template <template <int> class K, int... I>
constexpr auto micro_table(std::integer_sequence<int, I...>) {
  return std::array<MicroFn, sizeof...(I)>{K<I + 1>::fn...};
}
template <int M>
struct Avx512 {
  static constexpr MicroFn fn = micro_avx512<M>;
};
template <int M>
struct Avx2 {
  static constexpr MicroFn fn = micro_avx2<M>;
};
constexpr auto kMicro512 = micro_table<Avx512>(std::make_integer_sequence<int, kMr512>{});
constexpr auto kMicro256 = micro_table<Avx2>(std::make_integer_sequence<int, kMr256>{});
// Rows the wide kernels take: 2 x 8 zmm or 1 x 8 ymm accumulators.
constexpr int kWide512 = 2, kWide256 = 1;
template <int M>
struct Wide512 {
  static constexpr MicroFn fn = wide_avx512<M>;
};
template <int M>
struct Wide256 {
  static constexpr MicroFn fn = wide_avx2<M>;
};
constexpr auto kWideFns512 = micro_table<Wide512>(std::make_integer_sequence<int, kWide512>{});
constexpr auto kWideFns256 = micro_table<Wide256>(std::make_integer_sequence<int, kWide256>{});

// The level's micro-kernels: micro[rows - 1] computes `rows` rows.
using DriverFn = void (*)(int64_t m, int64_t n, int64_t k, MatRef a, MatRef b, float* c,
                          int64_t ldc, bool accumulate, const GemmEpilogue* epilogue,
                          const float* packed);
using OuterFn = void (*)(int64_t m, int64_t n, int64_t k, const float* at, int64_t lda,
                         const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate,
                         bool stream);
struct Level {
  int64_t mr, nr;
  DriverFn run;
  OuterFn outer;
  int64_t outer_k;  // the longest k that `outer` takes
};

// A per-thread scratch buffer, 64-byte aligned, grown on demand and never shrunk.
struct Scratch {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float[], Free> data;
  int64_t size = 0;
  float* get(int64_t n) {
    if (n > size) {
      const auto bytes = static_cast<size_t>((n * 4 + 63) / 64 * 64);
      data.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
      if (!data) throw std::bad_alloc();
      size = n;
    }
    return data.get();
  }
};

// In registers: rows r[0..7] of an 8 x 8 block become its columns (r[c] = column c), in 24
// shuffles (AVX2 code, also used by the AVX-512 driver).
[[gnu::always_inline]] __attribute__((target("avx2,fma"))) inline void transpose_rows(__m256 r[8]) {
  __m256 t[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
    t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
  }
  for (int i = 0; i < 8; ++i) r[i] = t[i];
}

// d[c * ld + r] = s[r * ls + c] for an 8 x 8 block: the transposing copy of the packing.
__attribute__((target("avx2,fma"))) void transpose8x8(const float* s, int64_t ls, float* d,
                                                      int64_t ld) {
  __m256 r[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(s + i * ls);
  transpose_rows(r);
  for (int i = 0; i < 8; ++i) _mm256_storeu_ps(d + i * ld, r[i]);
}

// d[c * ld + r] = s[r * ls + c] for a 4 x 4 block (SSE, every level).
inline void transpose4x4(const float* s, int64_t ls, float* d, int64_t ld) {
  __m128 r0 = _mm_loadu_ps(s), r1 = _mm_loadu_ps(s + ls), r2 = _mm_loadu_ps(s + 2 * ls),
         r3 = _mm_loadu_ps(s + 3 * ls);
  _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
  _mm_storeu_ps(d, r0);
  _mm_storeu_ps(d + ld, r1);
  _mm_storeu_ps(d + 2 * ld, r2);
  _mm_storeu_ps(d + 3 * ld, r3);
}

// A's rows [i0, i0 + mc) x columns [p0, p0 + kc) into micro-panels: panel q holds
// rows [q*mr, q*mr + mr), laid out [kc][mr] (rows past mc are left unset: no kernel reads them).
// Read in place instead, mr rows a power-of-two stride apart share one L1 set and evict each other.
// mr is a constant so that a full panel's copy per k compiles to a few vector moves: a copy of
// run-time length per k took most of the packing time of the weight-gradient GEMMs at H 64 (perf,
// Xeon, docs/performance.md).
template <int64_t mr>
[[gnu::always_inline]] inline void pack_a(MatRef a, int64_t i0, int64_t mc, int64_t p0, int64_t kc,
                                          float* out) {
  const int64_t ld = a.row_stride, p8 = kc / 8 * 8, p4 = kc / 4 * 4;
  if (ld == 1 && a.col_stride != 1) {  // transposed: each k's rows are contiguous already
    for (int64_t q = 0; q * mr < mc; ++q) {
      const int64_t rows = std::min(mr, mc - q * mr);
      const float* src = a.data + (p0 * a.col_stride) + i0 + q * mr;
      float* panel = out + q * mr * kc;
      if (rows == mr) {
        // Each k is a row of X (2-8 KiB apart): too far apart for the hardware's stride
        // prefetchers, so every row's line was a demand miss. Fetched kTransposedAhead rows
        // ahead: 16 experts' 2048 x 512 weight gradients over 236 tokens +3% at AVX-512, over 100
        // +0.4%, AVX2 no change; the MoE layer's forward+backward at 4096 tokens -1% (one thread,
        // Xeon Emerald Rapids, in-process alternation).
        for (int64_t p = 0; p < kc; ++p) {
          if (p + kTransposedAhead < kc) {
            const float* ahead = src + (p + kTransposedAhead) * a.col_stride;
            _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(ahead + mr - 1), _MM_HINT_T0);
          }
          std::memcpy(panel + p * mr, src + p * a.col_stride, mr * sizeof(float));
        }
      } else {
        for (int64_t p = 0; p < kc; ++p)
          for (int64_t r = 0; r < rows; ++r) panel[p * mr + r] = src[p * a.col_stride + r];
      }
    }
    return;
  }
  if (a.col_stride != 1) {  // neither row-major nor transposed: element by element
    for (int64_t q = 0; q * mr < mc; ++q)
      for (int64_t r = 0; r < std::min(mr, mc - q * mr); ++r)
        for (int64_t p = 0; p < kc; ++p)
          out[q * mr * kc + p * mr + r] = a.data[(i0 + q * mr + r) * ld + (p0 + p) * a.col_stride];
    return;
  }
  for (int64_t q = 0; q * mr < mc; ++q) {
    const int64_t rows = std::min(mr, mc - q * mr);
    float* panel = out + q * mr * kc;
    const float* src = a.data + (i0 + q * mr) * ld + p0;
    auto scalar = [&](int64_t r0, int64_t r1, int64_t from) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t p = from; p < kc; ++p) panel[p * mr + r] = src[r * ld + p];
    };
    auto rows8 = [&](int64_t i) {  // rows [i, i + 8) through registers, 8 x 8 blocks
      for (int64_t p = 0; p < p8; p += 8)
        transpose8x8(src + i * ld + p, ld, panel + p * mr + i, mr);
      scalar(i, i + 8, p8);
    };
    int64_t i = 0;
    for (; i + 8 <= rows; i += 8) rows8(i);
    // 1-7 rows left after at least 8: the last 8 rows again, overlapping rows already packed
    // (they are written twice with the same values) instead of 4 x 4 blocks and scalar rows.
    if (i > 0 && i < rows) {
      rows8(rows - 8);
      continue;
    }
    for (; i + 4 <= rows; i += 4) {
      for (int64_t p = 0; p < p4; p += 4)
        transpose4x4(src + i * ld + p, ld, panel + p * mr + i, mr);
      scalar(i, i + 4, p4);
    }
    scalar(i, rows, 0);
  }
}

// In registers: rows r[0..15] of a 16 x 16 block become its columns (r[c] = column c), in 64
// shuffles. (GCC 12 warns that the shuffle intrinsics' own undefined pass-through operand may be
// used uninitialized; it is not, so that warning is off here.)
#if defined(__GNUC__) && !defined(__clang__)  // clang has no such warning (nor the false alarm)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
[[gnu::always_inline]] __attribute__((target("avx512f"))) inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // Then r[4g + m] holds rows 4g..4g+3 at column 4L + m in its 128-bit lane L.
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 v0 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0x44);
    const __m512 v1 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0xEE);
    const __m512 v2 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0x44);
    const __m512 v3 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0xEE);
    t[m] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    t[4 + m] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
    t[8 + m] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    t[12 + m] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// The AVX-512 packing of a transposed B (W^T: B(p, j) = src[j * ld + p]) into [kc][32] panels,
// columns [0, n16) and k [0, p16), both multiples of 16: 16 x 16 blocks, each read as 16 lines of
// W and written as 16 whole, aligned lines of a panel.
__attribute__((target("avx512f"))) void pack_bt16(const float* src, int64_t ld, int64_t kc,
                                                  int64_t n16, int64_t p16, float* out) {
  for (int64_t j = 0; j < n16; j += 16) {
    float* dst = out + (j / 32) * kc * 32 + j % 32;
    for (int64_t p = 0; p < p16; p += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + (j + i) * ld + p);
      transpose16(r);
      for (int i = 0; i < 16; ++i) _mm512_store_ps(dst + (p + i) * 32, r[i]);
    }
  }
}

// B(p0 + p, j0 + j) for p < kc, j < nv into consecutive [kc][nr] panels (panel t holds columns
// [t*nr, t*nr + nr)), zero past nv. A row-major B is copied eight rows at a time, panel by panel:
// each panel's part is then 8 rows of nr floats written contiguously. Row by row across all panels
// instead, each row's stores went to as many panels kc * nr floats apart, all in one L1 set, and
// the copy ran at a few bytes a cycle even from cache: in call-by-call alternation on a Xeon
// (Emerald Rapids), one thread, 16 experts' 236 x 2048 x 512 with B packed per call 127.8 -> 132.0
// GFLOP/s, 236 x 512 x 2048 129.8 -> 133.9; the MoE training forward at 4096 tokens -2% at one
// thread, -3% at two; the AVX2 level within noise. The chunk is in L2 already (the previous
// chunk's calls fetched it: Ahead), or streams in row by row; a prefetch 64 rows ahead here, as
// before, cost more than it gained (+0.7% instead of +3%).
[[gnu::always_inline]] inline void pack_b(MatRef b, int64_t p0, int64_t kc, int64_t j0, int64_t nv,
                                          int64_t nr, float* out) {
  const float* src = b.data + p0 * b.row_stride + j0 * b.col_stride;
  const int64_t panels = (nv + nr - 1) / nr, pad = panels * nr - nv;
  if (b.col_stride == 1) {
    constexpr int64_t kRows = 8;
    for (int64_t p = 0; p < kc; p += kRows) {
      const int64_t g = std::min(kRows, kc - p);
      for (int64_t t = 0; t < panels; ++t) {
        float* dst = out + (t * kc + p) * nr;
        const int64_t w = std::min(nr, nv - t * nr);
        for (int64_t r = 0; r < g; ++r) {
          const float* row = src + (p + r) * b.row_stride + t * nr;
          if (w == nr) {
            std::memcpy(dst + r * nr, row, nr * sizeof(float));
          } else {
            for (int64_t j = 0; j < w; ++j) dst[r * nr + j] = row[j];
            for (int64_t j = w; j < nr; ++j) dst[r * nr + j] = 0.f;
          }
        }
      }
    }
    return;
  }
  if (pad > 0)
    for (int64_t p = 0; p < kc; ++p)
      std::fill(out + ((panels - 1) * kc + p) * nr + nr - pad,
                out + ((panels - 1) * kc + p + 1) * nr, 0.f);
  // A transposed B (W^T): 8 x 8 blocks through registers, the rest element by element.
  const int64_t j8 = b.row_stride == 1 ? nv / 8 * 8 : 0, p8 = kc / 8 * 8;
  int64_t jfrom = 0;
  // At AVX-512, 16 x 16 blocks first (pack_bt16): whole lines written once. The 8 x 8 blocks
  // write half a panel line each, the line's other half only after the whole chunk's k, by the
  // next block of W's rows, once the line has left L1. rdtsc around the packing, 16 experts' 236 x
  // 2048 x 512 and 236 x 512 x 2048 with B = W^T, Xeon (Emerald Rapids), one thread: a 512 x 256
  // chunk 99-116 -> 80-98 kcyc, 76-82 -> 47-55 repacked from cache; the MoE layer's forward and
  // backward at 4096 tokens -0.6 to -1.3% at one and two threads (in-process alternation).
  if (nr == 32 && b.row_stride == 1) {
    const int64_t n16 = nv / 16 * 16, p16 = kc / 16 * 16;
    pack_bt16(src, b.col_stride, kc, n16, p16, out);
    for (int64_t j = 0; j < n16; ++j) {
      float* dst = out + (j / nr) * kc * nr + j % nr;
      for (int64_t p = p16; p < kc; ++p) dst[p * nr] = src[j * b.col_stride + p];
    }
    jfrom = n16;
  }
  for (int64_t j = jfrom; j < j8; j += 8) {
    float* dst = out + (j / nr) * kc * nr + j % nr;
    for (int64_t p = 0; p < p8; p += 8)
      transpose8x8(src + j * b.col_stride + p, b.col_stride, dst + p * nr, nr);
    for (int64_t jj = j; jj < j + 8; ++jj)
      for (int64_t p = p8; p < kc; ++p) dst[p * nr + jj - j] = src[jj * b.col_stride + p];
  }
  for (int64_t j = std::max(j8, jfrom); j < nv; ++j) {
    float* dst = out + (j / nr) * kc * nr + j % nr;
    for (int64_t p = 0; p < kc; ++p) dst[p * nr] = src[j * b.col_stride + p * b.row_stride];
  }
}

// GCC 12 reports the kernel tables' lookups below as out of bounds, naming the AVX-512 table's
// type against the AVX2 table's object (the two instantiations get mixed up once inlined); the
// indices are in range (rows <= mr, mc <= wide.size()), so that one warning is off here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Warray-bounds"
template <int64_t mr, int64_t nr, int64_t kc_many, const auto& micro, const auto& wide,
          auto micro_copy>
[[gnu::always_inline]] inline void native_gemm(int64_t m, int64_t n, int64_t k, MatRef a, MatRef b,
                                               float* c, int64_t ldc, bool accumulate,
                                               const GemmEpilogue* epilogue, const float* packed) {
  thread_local Scratch a_scratch, b_scratch, c_scratch;
  // Few rows and a row-major B: full panels are read where they are, a few whole rows at a time.
  // A transposed B (W^T) is packed in the usual chunks even then: short chunks would read each
  // weight row a few floats at a time. B packed beforehand ([panel][k][nr] from this call's first
  // column) is read, not packed, and from two rows on it serves a few rows too: each panel is one
  // contiguous run, where B in place is a column strip of rows n floats apart, whose lines
  // share a few L1 sets (n a multiple of 1024) and each need their own prefetch stream. W read
  // rate over 16 experts of 512 x 2048 and 2048 x 512, one thread, AMD EPYC Zen 3 (AVX2), panels
  // against in place: 2 rows 16-17 against 9-16 GB/s, 8 rows 10-12 against 4.6-8.4, 32 rows 4.7
  // against 1.4-2.5; one row 15-16 against 15-19, so one row stays in place (the wide kernels).
  const bool few = m <= kFewRows;
  if (few && m == 1 && b.col_stride == 1) packed = nullptr;
  const bool in_place = few && b.col_stride == 1 && !packed;
  const int64_t kb = in_place ? kFewKc(m) : kc_many;
  const int64_t nc = in_place ? std::min((n + nr - 1) / nr * nr, kFewCols) : kNcPanels * nr;
  float* tile = c_scratch.get(mr * nr);
  // A is always packed, a transposed one (weight gradients: X^T) too: read in place, its k steps
  // are a row of X apart (2-8 KiB), so a micro-kernel's A falls in a few L1 sets and misses (the
  // weight-gradient GEMMs ran 15-40% faster packed on a Xeon, docs/performance.md).
  const int64_t chunks = (k + kb - 1) / kb;
  float* bp = b_scratch.get(kb * nc);
  const int64_t mc_max = packed ? std::max(mr, kMcPacked / mr * mr) : kMc;
  const int64_t row_block = std::clamp(kPackedAFloats / (chunks * kb) / mr * mr, mr, mc_max);
  for (int64_t i0 = 0; i0 < m; i0 += row_block) {
    const int64_t mc = std::min(row_block, m - i0);
    const int64_t blocks = (mc + mr - 1) / mr;
    // Rows per micro-kernel call (mp; the panels' height): mr, except for a few rows read in
    // place or from panels packed beforehand, which are split evenly: 8 rows at AVX2 as 4 + 4,
    // not 6 + 2, whose 2-row call has four FMA chains and waits on their latency. The MoE
    // layer's 128-token inference at the AVX2 level, one thread: -3 to -5% (Xeon Emerald Rapids,
    // in-process alternation); AVX-512 within noise. Which rows share a call never changes a bit.
    const int64_t mp = in_place || (few && packed) ? (mc + blocks - 1) / blocks : mr;
    // B read in place by the micro-kernels: the next chunk is also fetched into L2 as one
    // sequential stream (Ahead), not only as the kernels' per-panel prefetch, whose lines, one
    // weight row apart, share a few L1 sets with the panel being read. At AVX2 (one line per row
    // of a panel) with several row blocks (7 to kFewRows rows), each block rereads the panel, and
    // the kernels' own prefetch of the next chunk evicts it first, so it is left to the stream
    // (a distance of 0: the line being loaded); at AVX-512 with one row block (3 to 14 rows) it
    // stays. Other cases measured no better (several row blocks at
    // AVX-512, one at AVX2). The MoE training forward, 1 thread, AMD EPYC Zen 5, alternating
    // runs: 128 tokens (8 rows an expert) AVX-512 9.6-10.1 -> 8.2-8.6 ms, AVX2 13.2-13.7 ->
    // 11.9-12.0; 512 tokens (32 rows) AVX2 44.7-50.5 -> 34.8-41.1. Prefetching changes no bit.
    constexpr bool avx2_kernel = mr == kMr256;
    const bool seq_ahead = in_place && mc > static_cast<int64_t>(wide.size()) &&
                           (avx2_kernel ? blocks > 1 : blocks == 1);
    const bool kernel_pf = !(seq_ahead && avx2_kernel);
    // All of the block's A, chunk by chunk (chunk t at t * blocks * mp * kb): packed once, then
    // reused by every column group.
    float* ap = a_scratch.get(chunks * blocks * mp * kb);
    for (int64_t p0 = 0; p0 < k; p0 += kb) {
      const int64_t kc = std::min(kb, k - p0);
      float* out = ap + p0 / kb * blocks * mp * kb;
      if (mp == mr) {
        pack_a<mr>(a, i0, mc, p0, kc, out);
        continue;
      }
      // A few rows (at most kFewRows x kc floats): element by element.
      for (int64_t q = 0; q < blocks; ++q)
        for (int64_t r = 0; r < std::min(mp, mc - q * mp); ++r)
          for (int64_t p = 0; p < kc; ++p)
            out[q * mp * kc + p * mp + r] =
                a.data[(i0 + q * mp + r) * a.row_stride + (p0 + p) * a.col_stride];
    }
    // Column groups outside k chunks: the group's C block stays in L2 from one chunk to the
    // next instead of making a round trip to memory.
    for (int64_t g0 = 0; g0 < n; g0 += nc) {
      const int64_t gv = std::min(nc, n - g0);
      const int64_t here = in_place ? gv / nr * nr : 0;  // a partial last panel is packed
      for (int64_t p0 = 0; p0 < k; p0 += kb) {
        const int64_t kc = std::min(kb, k - p0);
        const bool load = accumulate || p0 > 0;
        // A row-major B of full panels is packed by the first row block's calls as they compute
        // (micro_copy), not by a pass of its own: the pass (pack_b) read the chunk and wrote it
        // before any FMA, a third to half of it waiting on memory. The MoE layer's training
        // forward, one thread, AMD EPYC Zen 5 (AVX-512), in-process alternation: 4096 tokens
        // -2.0 to -2.5% (two threads -2.7%), 1024 tokens -6%, forward+backward -0.6 to -3.3%; the
        // AVX2 level -0.6 to -1.8% (4096 tokens, one thread; a tie at two). The same values reach
        // the same FMAs: no bit changes.
        const bool copy = !packed && !in_place && b.col_stride == 1 && gv % nr == 0 && mc >= mr;
        if (here < gv && !packed && !copy) pack_b(b, p0, kc, g0 + here, gv - here, nr, bp);
        // Packed B comes from memory a chunk at a time: fetch the next chunk in this order (the
        // group's next k chunk, else the next group's first) while this one computes.
        // Panels packed beforehand are fetched panel by panel instead (below). The fetch is spread
        // evenly over the chunk's micro-kernel calls (Ahead).
        Ahead ahead;
        const bool fetch = !packed && (here == 0 || seq_ahead);
        if (fetch && p0 + kb < k)
          ahead.start(b, p0 + kb, std::min(kb, k - p0 - kb), g0, gv);
        else if (fetch && g0 + nc < n)
          ahead.start(b, 0, std::min(kb, k), g0 + nc, std::min(nc, n - g0 - nc));
        const int64_t calls = (gv + nr - 1) / nr * blocks;
        const int64_t per_call = (ahead.total() + calls - 1) / calls;
        Ahead* ah = per_call > 0 ? &ahead : nullptr;
        if (ah) ahead.every = std::max<int64_t>(1, kc / per_call);
        for (int64_t j0 = g0; j0 < g0 + gv; j0 += nr) {
          const int64_t nv = std::min(nr, n - j0);
          const bool direct = j0 - g0 < here;
          if (direct && mc <= static_cast<int64_t>(wide.size()) && j0 + 4 * nr <= g0 + here) {
            const float* ab = ap + p0 / kb * blocks * mp * kb;
            wide[mc - 1](kc, ab, mp, b.data + p0 * b.row_stride + j0, b.row_stride,
                         kc * b.row_stride, c + i0 * ldc + j0, ldc, load, nullptr, nullptr);
            j0 += 3 * nr;  // four panels done
            continue;
          }
          const float* panel = direct   ? b.data + p0 * b.row_stride + j0
                               : packed ? packed + j0 / nr * k * nr + p0 * nr
                                        : bp + (j0 - g0 - here) * kc;
          const int64_t bs = direct ? b.row_stride : nr;
          const int64_t pf = !direct ? kPrefetchRows * bs : kernel_pf ? kc * bs : 0;
          // B packed beforehand, used by several calls (row blocks): the next panel these calls
          // will read (in loop order, on to the next row block's first) is fetched into L2 while
          // this one's calls compute. Without it, the first call of each panel waited on memory:
          // 16 experts' GEMMs on packed weights, one thread, Xeon (Emerald Rapids), call-by-call
          // alternation: 236 x 2048 x 512 135 -> 142 GFLOP/s, 112 rows 133 -> 142, 16 rows 84 ->
          // 89 (AVX2: 236 rows 77 -> 80, 16 rows 59 -> 72); the MoE layer's inference at 4096
          // tokens -6% at one and two threads. With one call per panel it measured slower (8
          // rows at AVX-512 103 -> 88), so those keep the kernels' own prefetch alone.
          Ahead next_panel;
          Ahead* fetch_ah = ah;
          if (packed && blocks > 1) {
            const float* np = nullptr;
            int64_t len = 0;
            if (j0 + nr < g0 + gv)
              np = packed + (j0 + nr) / nr * k * nr + p0 * nr, len = kc;
            else if (p0 + kb < k)
              np = packed + g0 / nr * k * nr + (p0 + kb) * nr, len = std::min(kb, k - p0 - kb);
            else if (g0 + nc < n)
              np = packed + (g0 + nc) / nr * k * nr, len = std::min(kb, k);
            else if (i0 + row_block < m)
              np = packed, len = std::min(kb, k);
            if (np) {
              next_panel.start_run(np, len * nr);
              next_panel.every = std::max<int64_t>(1, kc * blocks / next_panel.total());
              fetch_ah = &next_panel;
            }
          }
          for (int64_t q = 0; q < blocks; ++q) {
            const int64_t r0 = i0 + q * mp, rows = std::min(mp, mc - q * mp);
            const float* ab = ap + p0 / kb * blocks * mp * kb + q * mp * kc;
            float* cb = c + r0 * ldc + j0;
            // With a short k (weight gradients over a few tokens) C from memory is most of the
            // traffic and its latency set the pace: the next call's C tile (this panel's next
            // rows, else the next panel's first) is fetched while this one computes. The weight
            // gradient over 8 tokens per expert 17 -> 24 GFLOP/s, over 16 25 -> 33, over 32
            // +2%, 256 no change (call-by-call alternation, one thread, Xeon Emerald Rapids). A
            // longer k reads an accumulated C from memory only in its first chunk (later chunks
            // find it in L2) and is prefetched there too: 16 experts' 512 x 2048 weight gradients
            // over 100 tokens each 100-102 -> 109 GFLOP/s, over 236 +1-2% (same machine).
            const bool c_from_memory = kc <= kShortK || (accumulate && p0 == 0);
            const float* cn = !c_from_memory      ? nullptr
                              : q + 1 < blocks    ? cb + mp * ldc
                              : j0 + nr < g0 + gv ? c + i0 * ldc + j0 + nr
                                                  : nullptr;
            const MicroFn kernel = micro[rows - 1];
            if (copy && q == 0) {  // B in place, rows b.row_stride apart; its panel written
              micro_copy(kc, ab, mp, b.data + p0 * b.row_stride + j0, b.row_stride,
                         kCopyAheadRows * b.row_stride, cb, ldc, load, cn, fetch_ah,
                         bp + (j0 - g0) * kc);
            } else if (nv == nr) {
              kernel(kc, ab, mp, panel, bs, pf, cb, ldc, load, cn, fetch_ah);
            } else {  // a partial last panel: through a full-width tile
              for (int64_t i = 0; i < rows && load; ++i)
                std::memcpy(tile + i * nr, cb + i * ldc, nv * 4);
              kernel(kc, ab, mp, panel, bs, pf, tile, nr, load, nullptr, fetch_ah);
              for (int64_t i = 0; i < rows; ++i) std::memcpy(cb + i * ldc, tile + i * nr, nv * 4);
            }
          }
        }
      }
      // The group is final: its epilogue runs while the block is still in L2.
      for (int64_t r0 = i0; epilogue && r0 < i0 + mc; r0 += mr)
        (*epilogue)(r0, std::min(mr, i0 + mc - r0), g0, gv);
    }
  }
}

#pragma GCC diagnostic pop

__attribute__((target("avx512f"))) void native_avx512(int64_t m, int64_t n, int64_t k, MatRef a,
                                                      MatRef b, float* c, int64_t ldc,
                                                      bool accumulate, const GemmEpilogue* epi,
                                                      const float* packed) {
  native_gemm<kMr512, kNr512, kKc512, kMicro512, kWideFns512, micro_copy_avx512>(
      m, n, k, a, b, c, ldc, accumulate, epi, packed);
}
__attribute__((target("avx2,fma"))) void native_avx2(int64_t m, int64_t n, int64_t k, MatRef a,
                                                     MatRef b, float* c, int64_t ldc,
                                                     bool accumulate, const GemmEpilogue* epi,
                                                     const float* packed) {
  native_gemm<kMr256, kNr256, kKc256, kMicro256, kWideFns256, micro_copy_avx2>(
      m, n, k, a, b, c, ldc, accumulate, epi, packed);
}

// x[0], x[ld], ..., x[7 * ld] as one vector: a column of eight rows of W (k's tail).
[[gnu::always_inline]] __attribute__((target("avx2,fma"))) inline __m256 column8(const float* x,
                                                                                 int64_t ld) {
  return _mm256_set_ps(x[7 * ld], x[6 * ld], x[5 * ld], x[4 * ld], x[3 * ld], x[2 * ld], x[ld],
                       x[0]);
}

// C[j0, j0 + 8 * NB) (+)= a[k] . W^T for NB blocks of eight rows of W from `rows` (ld apart): each
// block's 8 x 8 tiles transposed in registers, each output one FMA chain over k in order.
template <int NB>
[[gnu::always_inline]] __attribute__((target("avx2,fma"))) inline void rows8_times_transposed(
    int64_t k, const float* a, const float* rows, int64_t ld, float* c, bool accumulate) {
  const int64_t k8 = k / 8 * 8;
  __m256 acc[NB];
  for (int b = 0; b < NB; ++b)
    acc[b] = accumulate ? _mm256_loadu_ps(c + 8 * b) : _mm256_setzero_ps();
  for (int64_t p = 0; p < k8; p += 8) {
    __m256 r[NB][8];
    for (int b = 0; b < NB; ++b) {
      for (int i = 0; i < 8; ++i) r[b][i] = _mm256_loadu_ps(rows + (8 * b + i) * ld + p);
      transpose_rows(r[b]);  // r[b][q] = W[block b's rows, p + q]
    }
    for (int q = 0; q < 8; ++q) {
      const __m256 av = _mm256_broadcast_ss(a + p + q);
      for (int b = 0; b < NB; ++b) acc[b] = _mm256_fmadd_ps(av, r[b][q], acc[b]);
    }
  }
  for (int64_t p = k8; p < k; ++p) {
    const __m256 av = _mm256_broadcast_ss(a + p);
    for (int b = 0; b < NB; ++b)
      acc[b] = _mm256_fmadd_ps(av, column8(rows + 8 * b * ld + p, ld), acc[b]);
  }
  for (int b = 0; b < NB; ++b) _mm256_storeu_ps(c + 8 * b, acc[b]);
}

// One row times a transposed B (the backward's dX = dH . W^T for a single token): C[1, n] = a[k] .
// W^T, W [n, k] row-major (b.col_stride apart). Packing W^T first would write and reread every
// weight; here 8 x 8 blocks of W are transposed in registers and used at once, each output's FMA
// chain still running over k in order (same bits). Rows of W are read front to back, 16 at a time
// (two blocks, two chains; the last 8-15 rows 8 and then 1 at a time).
__attribute__((target("avx2,fma"))) void row_times_transposed(int64_t n, int64_t k, const float* a,
                                                              const float* w, int64_t ld, float* c,
                                                              bool accumulate) {
  int64_t j0 = 0;
  // Two blocks at a time: two FMA chains in flight instead of one, whose latency set the pace.
  // One token's MoE forward+backward, k = 2, one thread: 2.19 -> 2.06 ms (AVX2 level 2.14 ->
  // 2.01), in-process alternation on a Xeon (Emerald Rapids); the kernel alone reads W 5-20%
  // faster.
  for (; j0 + 16 <= n; j0 += 16)
    rows8_times_transposed<2>(k, a, w + j0 * ld, ld, c + j0, accumulate);
  for (; j0 + 8 <= n; j0 += 8) rows8_times_transposed<1>(k, a, w + j0 * ld, ld, c + j0, accumulate);
  for (; j0 < n; ++j0) {
    float acc = accumulate ? c[j0] : 0.f;
    for (int64_t p = 0; p < k; ++p) acc = std::fma(a[p], w[j0 * ld + p], acc);
    c[j0] = acc;
  }
}

// C[i, j] (+)= sum_p A^T[p, i] W[j, p] for J rows of W at a time and 8 * LB lanes of i: each
// element one FMA chain over p in order. W's rows are read in place, each a sequential stream
// prefetched a few lines ahead.
template <int LB, int J>
__attribute__((target("avx2,fma"))) void rows_by_transposed_block(int64_t k, const float* at,
                                                                  const float* w, int64_t ldw,
                                                                  float* t) {
  constexpr int64_t kLineAhead = 128;  // floats: eight cache lines ahead in each row
  __m256 acc[J][LB];
#pragma GCC unroll 16
  for (int jj = 0; jj < J; ++jj)
#pragma GCC unroll 2
    for (int l = 0; l < LB; ++l) acc[jj][l] = _mm256_loadu_ps(t + (jj * LB + l) * 8);
  for (int64_t p0 = 0; p0 < k; p0 += 16) {
#pragma GCC unroll 16
    for (int jj = 0; jj < J; ++jj)
      _mm_prefetch(reinterpret_cast<const char*>(w + jj * ldw + p0 + kLineAhead), _MM_HINT_T0);
    const int64_t p1 = std::min(k, p0 + 16);
    for (int64_t p = p0; p < p1; ++p) {
      __m256 av[LB];
#pragma GCC unroll 2
      for (int l = 0; l < LB; ++l) av[l] = _mm256_loadu_ps(at + p * 8 * LB + 8 * l);
#pragma GCC unroll 16
      for (int jj = 0; jj < J; ++jj) {
        const __m256 wb = _mm256_broadcast_ss(w + jj * ldw + p);
#pragma GCC unroll 2
        for (int l = 0; l < LB; ++l) acc[jj][l] = _mm256_fmadd_ps(wb, av[l], acc[jj][l]);
      }
    }
  }
#pragma GCC unroll 16
  for (int jj = 0; jj < J; ++jj)
#pragma GCC unroll 2
    for (int l = 0; l < LB; ++l) _mm256_storeu_ps(t + (jj * LB + l) * 8, acc[jj][l]);
}

// C [m, n] (+)= A [m, k] . W^T for a few rows (m <= kFewRowsT) and W [n, k] row-major (a
// transposed B: the backward's dX = dH . W^T). The general path packs W^T, 8 x 8 transposes of
// every weight, which cost more than the few rows' multiplications (a fifth of the MoE layer's
// forward+backward at 8 tokens per expert); here W is read in place and the few rows of A are
// transposed instead. Every element is the same FMA chain over p in order as on every other
// path (fma(a, w, c) = fma(w, a, c)), so the bits do not depend on which path ran.
template <int LB>
__attribute__((target("avx2,fma"))) void rows_by_transposed_lanes(int64_t m, int64_t n, int64_t k,
                                                                  const float* a, int64_t lda,
                                                                  const float* w, int64_t ldw,
                                                                  float* c, int64_t ldc,
                                                                  bool accumulate) {
  constexpr int64_t L = 8 * LB;
  constexpr int J = LB == 1 ? 12 : 6;  // accumulators: J x LB of the 16 ymm registers
  thread_local Scratch at_scratch;
  float* at = at_scratch.get(k * L);  // A^T [k, L], lanes from m on zero
  for (int64_t p = 0; p < k; ++p)
    for (int64_t i = 0; i < L; ++i) at[p * L + i] = i < m ? a[i * lda + p] : 0.f;
  alignas(64) float t[J * L];  // [J, L]: C^T of the block
  for (int64_t j0 = 0; j0 < n; j0 += J) {
    const int64_t jn = std::min<int64_t>(J, n - j0);
    for (int64_t jj = 0; jj < jn; ++jj)
      for (int64_t i = 0; i < L; ++i)
        t[jj * L + i] = accumulate && i < m ? c[i * ldc + j0 + jj] : 0.f;
    if (jn == J) {
      rows_by_transposed_block<LB, J>(k, at, w + j0 * ldw, ldw, t);
    } else {
      for (int64_t jj = 0; jj < jn; ++jj)
        rows_by_transposed_block<LB, 1>(k, at, w + (j0 + jj) * ldw, ldw, t + jj * L);
    }
    for (int64_t jj = 0; jj < jn; ++jj)
      for (int64_t i = 0; i < m; ++i) c[i * ldc + j0 + jj] = t[jj * L + i];
  }
}

void rows_by_transposed(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                        const float* w, int64_t ldw, float* c, int64_t ldc, bool accumulate) {
  if (m <= 8)
    rows_by_transposed_lanes<1>(m, n, k, a, lda, w, ldw, c, ldc, accumulate);
  else
    rows_by_transposed_lanes<2>(m, n, k, a, lda, w, ldw, c, ldc, accumulate);
}

// C [m, n] (+)= A [m, k] . B [k, n] for a short k with A transposed (A(i, p) = at[p * lda + i],
// the X^T of a weight gradient) and B row-major: a weight gradient over the rows of a few tokens.
// R rows of C at a time, front to back across all columns, so that C, most of the traffic here,
// moves in R sequential runs the hardware prefetcher follows. (The general path's tiles walk C down
// 14-row columns a row of C apart, and each tile waited on memory.) Each element is one FMA chain
// over p in order, from C or 0, as on every other path. `stream`: store with non-temporal writes
// (C is not read again soon: a gradient written for the optimizer step).
template <int R, int V>
__attribute__((target("avx512f"))) inline void outer_block_avx512(int64_t k, const float* at,
                                                                  int64_t lda, const float* b,
                                                                  int64_t ldb, float* c,
                                                                  int64_t ldc, bool accumulate,
                                                                  bool stream) {
  __m512 acc[R][V];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v)
      acc[i][v] = accumulate ? _mm512_loadu_ps(c + i * ldc + 16 * v) : _mm512_setzero_ps();
  for (int64_t p = 0; p < k; ++p) {
    __m512 bv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) bv[v] = _mm512_loadu_ps(b + p * ldb + 16 * v);
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const __m512 av = _mm512_set1_ps(at[p * lda + i]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      float* d = c + i * ldc + 16 * v;
      if (stream && reinterpret_cast<uintptr_t>(d) % 64 == 0)
        _mm512_stream_ps(d, acc[i][v]);
      else
        _mm512_storeu_ps(d, acc[i][v]);
    }
}

template <int R, int V>
__attribute__((target("avx2,fma"))) inline void outer_block_avx2(int64_t k, const float* at,
                                                                 int64_t lda, const float* b,
                                                                 int64_t ldb, float* c, int64_t ldc,
                                                                 bool accumulate, bool stream) {
  __m256 acc[R][V];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v)
      acc[i][v] = accumulate ? _mm256_loadu_ps(c + i * ldc + 8 * v) : _mm256_setzero_ps();
  for (int64_t p = 0; p < k; ++p) {
    __m256 bv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) bv[v] = _mm256_loadu_ps(b + p * ldb + 8 * v);
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const __m256 av = _mm256_broadcast_ss(at + p * lda + i);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[i][v] = _mm256_fmadd_ps(av, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      float* d = c + i * ldc + 8 * v;
      if (stream && reinterpret_cast<uintptr_t>(d) % 32 == 0)
        _mm256_stream_ps(d, acc[i][v]);
      else
        _mm256_storeu_ps(d, acc[i][v]);
    }
}

// A level's blocks: run computes R rows x V vectors of W floats; kRows is the band height, as
// many rows of 4 vectors as the registers hold: 4 x 4 of AVX-512's 32 zmm, 3 x 4 of AVX2's 16 ymm.
// At 4 x 4 the AVX2 block spilled accumulators to the stack; 3 rows, 512 x 2048 and 2048 x 512
// weight gradients into memory, one thread, Xeon (Emerald Rapids), call-by-call alternation, us:
// k 1 added 319 -> 259 / 413 -> 352, k 8 672 -> 481 / 679 -> 517, k 16 1210 -> 919 / 998 -> 787,
// written alike (log 2026-12-01-third-weight-grad-bands-xeon.txt). 6 rows at AVX-512 was slower.
template <int R, int V>
struct Outer512 {
  static constexpr auto run = outer_block_avx512<R, V>;
  static constexpr int64_t W = 16;
  static constexpr int kRows = 4;
};
template <int R, int V>
struct Outer256 {
  static constexpr auto run = outer_block_avx2<R, V>;
  static constexpr int64_t W = 8;
  static constexpr int kRows = 3;
};

// R rows of C across all n columns: blocks of 4 and 1 vectors, then the last columns scalar.
template <template <int, int> class Block, int R>
void outer_band(int64_t n, int64_t k, const float* at, int64_t lda, const float* b, int64_t ldb,
                float* c, int64_t ldc, bool accumulate, bool stream) {
  constexpr int64_t W = Block<R, 1>::W;
  int64_t j = 0;
  for (; j + 4 * W <= n; j += 4 * W)
    Block<R, 4>::run(k, at, lda, b + j, ldb, c + j, ldc, accumulate, stream);
  for (; j + W <= n; j += W)
    Block<R, 1>::run(k, at, lda, b + j, ldb, c + j, ldc, accumulate, stream);
  for (int i = 0; i < R; ++i)
    for (int64_t jj = j; jj < n; ++jj) {
      float acc = accumulate ? c[i * ldc + jj] : 0.f;
      for (int64_t p = 0; p < k; ++p) acc = std::fma(at[p * lda + i], b[p * ldb + jj], acc);
      c[i * ldc + jj] = acc;
    }
}

template <template <int, int> class Block>
void outer_rows(int64_t m, int64_t n, int64_t k, const float* at, int64_t lda, const float* b,
                int64_t ldb, float* c, int64_t ldc, bool accumulate, bool stream) {
  constexpr int R = Block<1, 1>::kRows;
  static_assert(R >= 1 && R <= 4);
  int64_t i = 0;
  for (; i + R <= m; i += R)
    outer_band<Block, R>(n, k, at + i, lda, b, ldb, c + i * ldc, ldc, accumulate, stream);
  const auto rest = m - i == 3   ? outer_band<Block, 3>
                    : m - i == 2 ? outer_band<Block, 2>
                                 : outer_band<Block, 1>;
  if (i < m) rest(n, k, at + i, lda, b, ldb, c + i * ldc, ldc, accumulate, stream);
  if (stream) _mm_sfence();  // the non-temporal stores are visible before the caller goes on
}

// The baseline level: the BLAS library on row-major or transposed operands.
void library_gemm(int64_t m, int64_t n, int64_t k, MatRef a, MatRef b, float* c, int64_t ldc,
                  bool accumulate, const GemmEpilogue* epilogue) {
  const bool ta = a.col_stride != 1, tb = b.col_stride != 1;
  if ((ta && a.row_stride != 1) || (tb && b.row_stride != 1)) {
    gemm_fma_reference(m, n, k, a, b, c, ldc, accumulate);
  } else {
    gemm(ta, tb, m, n, k, 1.f, a.data, ta ? a.col_stride : a.row_stride, b.data,
         tb ? b.col_stride : b.row_stride, accumulate ? 1.f : 0.f, c, ldc);
  }
  if (!epilogue) return;
  constexpr int64_t kBlock = 16;
  for (int64_t r0 = 0; r0 < m; r0 += kBlock)
    for (int64_t c0 = 0; c0 < n; c0 += 64)
      (*epilogue)(r0, std::min(kBlock, m - r0), c0, std::min<int64_t>(64, n - c0));
}

const Level* current_level() {
  static const Level avx512{kMr512, kNr512, native_avx512, outer_rows<Outer512>, kOuterK512};
  static const Level avx2{kMr256, kNr256, native_avx2, outer_rows<Outer256>, kOuterK256};
  switch (simd_target()) {
    case SimdTarget::kAvx512:
      return &avx512;
    case SimdTarget::kAvx2:
      return &avx2;
    case SimdTarget::kBaseline:
      break;
  }
  return nullptr;
}

}  // namespace

void kernel_gemm(int64_t m, int64_t n, int64_t k, MatRef a, MatRef b, float* c, int64_t ldc,
                 bool accumulate, const GemmEpilogue* epilogue, const float* packed_b) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int64_t i = 0; i < m && !accumulate; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.f);
  } else if (const Level* lv = current_level()) {
    count_gemm_flops(m, n, k);
    const bool transposed_b = b.row_stride == 1 && a.col_stride == 1;
    if (transposed_b && m == 1)
      row_times_transposed(n, k, a.data, b.data, b.col_stride, c, accumulate);
    else if (transposed_b && m <= kFewRowsT && packed_b == nullptr)
      rows_by_transposed(m, n, k, a.data, a.row_stride, b.data, b.col_stride, c, ldc, accumulate);
    else
      return lv->run(m, n, k, a, b, c, ldc, accumulate, epilogue, packed_b);
  } else {
    return library_gemm(m, n, k, a, b, c, ldc, accumulate, epilogue);
  }
  if (epilogue) (*epilogue)(0, m, 0, n);
}

void weight_grad_gemm(int64_t m, int64_t n, int64_t k, const float* at, int64_t lda, const float* b,
                      int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  const Level* lv = current_level();
  if (!lv || k > lv->outer_k || m <= 0 || n <= 0 || k <= 0)
    return kernel_gemm(m, n, k, MatRef::transposed(at, lda), MatRef::rows(b, ldb), c, ldc,
                       accumulate);
  count_gemm_flops(m, n, k);
  lv->outer(m, n, k, at, lda, b, ldb, c, ldc, accumulate, !accumulate);
}

void gemm_fma_reference(int64_t m, int64_t n, int64_t k, MatRef a, MatRef b, float* c, int64_t ldc,
                        bool accumulate) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float acc = accumulate ? c[i * ldc + j] : 0.f;
      for (int64_t p = 0; p < k; ++p)
        acc = std::fma(a.data[i * a.row_stride + p * a.col_stride],
                       b.data[p * b.row_stride + j * b.col_stride], acc);
      c[i * ldc + j] = acc;
    }
}

bool kernel_gemm_native() { return current_level() != nullptr; }

void PackedWeights::pack(int64_t groups, int64_t k, int64_t n, const float* w,
                         int64_t group_stride) {
  clear();
  const Level* lv = current_level();
  if (!lv || groups <= 0 || k <= 0 || n <= 0) return;  // the baseline level packs nothing
  const int64_t nr = lv->nr, panels = (n + nr - 1) / nr;
  data_ = Tensor({groups, panels, k, nr});
  float* out = data_.data();
  parallel_for(groups * panels, [&](int64_t item) {
    const int64_t g = item / panels, t = item % panels, w0 = std::min(nr, n - t * nr);
    const float* src = w + g * group_stride + t * nr;
    float* dst = out + item * k * nr;
    for (int64_t p = 0; p < k; ++p) {
      std::copy_n(src + p * n, w0, dst + p * nr);
      std::fill(dst + p * nr + w0, dst + p * nr + nr, 0.f);
    }
  });
  groups_ = groups, k_ = k, n_ = n, nr_ = nr, level_ = simd_target();
}

void PackedWeights::clear() {
  data_ = Tensor();
  groups_ = k_ = n_ = nr_ = 0;
}

const float* PackedWeights::panels(int64_t g, int64_t c0, int64_t k) const {
  if (empty() || k != k_ || simd_target() != level_ || c0 % nr_ != 0 || g < 0 || g >= groups_ ||
      c0 < 0 || c0 >= n_)
    return nullptr;
  const int64_t panels = (n_ + nr_ - 1) / nr_;
  return data_.data() + ((g * panels) + c0 / nr_) * k_ * nr_;
}

}  // namespace sparsemoe
