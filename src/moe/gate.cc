// The gate stage (see gate.h).
#include "sparsemoe/moe/gate.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/init.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/ops/gemm_kernel.h"
#include "sparsemoe/ops/tiled_gemm.h"

namespace sparsemoe {

namespace {
float jitter(const GateNoise& z, int64_t i) {
  return 1.f - z.eps + 2.f * z.eps * uniform01(z.key, static_cast<uint64_t>(z.offset + i));
}
}  // namespace

GateWeights::GateWeights(int64_t H, int64_t E, bool use_bias, double init_stddev, uint64_t key)
    : kernel({H, E}), bias({use_bias ? E : 0}), kernel_grad({H, E}), bias_grad({use_bias ? E : 0}) {
  fill_truncated_normal(kernel, init_stddev, key);
}

void gate_forward(const GateWeights& w, const float* x, int64_t N, int64_t H,
                  const GateNoise& noise, Tensor& gate_in, Tensor& logits, bool save) {
  const int64_t E = w.kernel.dim(1);
  // Inference reads x in place: the copy was 0.6% of the MoE layer's inference at 4096 tokens
  // (8 MB, perf, AMD EPYC Zen 5, one thread).
  const bool copy = save || noise.jittered;
  if (copy) gate_in.resize({N, H});
  const float* xin = copy ? gate_in.data() : x;
  if (noise.jittered) {
    float* xj = gate_in.data();
    parallel_for_range(N * H, 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) xj[i] = x[i] * jitter(noise, i);
    });
  } else if (copy) {
    std::memcpy(gate_in.data(), x, N * H * sizeof(float));
  }
  // The router's GEMMs run on the engine's kernel (ops/gemm_kernel.h), not the BLAS library: a
  // library picks its kernels by CPU (oneDNN's AVX2 and AVX-512 ones round differently), and one
  // changed bit in a logit can change a routing decision, so a model trained on an AVX2 machine
  // differed from one trained on an AVX-512 machine.
  logits.resize({N, E});
  const int64_t rows[2] = {0, N};
  for_tiles(row_tiles(rows, 1), E, [&](const RowTile& t, int64_t c0, int64_t c1) {
    kernel_gemm(t.end - t.begin, c1 - c0, H, MatRef::rows(xin + t.begin * H, H),
                MatRef::rows(w.kernel.data() + c0, E), logits.data() + t.begin * E + c0, E, false);
  });
  if (w.bias.numel())
    parallel_for_range(N, 1024, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n)
        for (int64_t j = 0; j < E; ++j) logits[n * E + j] += w.bias[j];
    });
}

namespace {

// kernel [H, E] (+)= xin^T [H, n] . dl [n, E], bias [E] (+)= column sums of dl, in fixed H tiles.
void gate_weight_grads(const float* xin, const float* dl, int64_t n, int64_t H, int64_t E,
                       float* kernel, float* bias, bool accumulate) {
  constexpr int64_t kTile = 64;
  parallel_for((H + kTile - 1) / kTile, [&](int64_t i) {
    const int64_t h0 = i * kTile, rows = std::min(kTile, H - h0);
    kernel_gemm(rows, E, n, MatRef::transposed(xin + h0, H), MatRef::rows(dl, E), kernel + h0 * E,
                E, accumulate);
  });
  if (!bias) return;
  if (!accumulate) std::fill(bias, bias + E, 0.f);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < E; ++j) bias[j] += dl[r * E + j];
}

}  // namespace

void gate_backward(GateWeights& w, const Tensor& gate_in, const float* dl, const GateNoise& noise,
                   Tensor& workspace, float* dx) {
  const int64_t N = gate_in.dim(0), H = gate_in.dim(1), E = w.kernel.dim(1);
  const float* xin = gate_in.data();
  const bool has_bias = w.bias.numel() > 0;
  gate_weight_grads(xin, dl, N, H, E, w.kernel_grad.data(), has_bias ? w.bias_grad.data() : nullptr,
                    true);
  workspace.resize({N, H});
  parallel_for_range(N, 256, [&](int64_t b, int64_t e) {
    float* tmp = workspace.data() + b * H;
    kernel_gemm(e - b, H, E, MatRef::rows(dl + b * E, E), MatRef::transposed(w.kernel.data(), E),
                tmp, H, false);
    for (int64_t i = 0; i < (e - b) * H; ++i) {
      const int64_t flat = b * H + i;
      dx[flat] += tmp[i] * (noise.jittered ? jitter(noise, flat) : 1.f);
    }
  });
}

}  // namespace sparsemoe
