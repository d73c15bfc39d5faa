// lingvo GatherK (see gather_k.h).
#include "sparsemoe/lingvo/gather_k.h"

#include <cstring>
#include <string>

#include "sparsemoe/core/errors.h"

namespace sparsemoe {

GatherKIndex gather_k_index(const Tensor& selected, int64_t k, Tensor& padding,
                            GatherKPadding mode) {
  check_arg(selected.rank() == 2,
            "selected_pos: expected shape [B, T], got " + shape_str(selected.shape()));
  const int64_t B = selected.dim(0), T = selected.dim(1);
  check_arg(k >= 1 && k <= T,
            "k: expected 1 <= k <= T=" + std::to_string(T) + ", got " + std::to_string(k));
  GatherKIndex idx{B, T, k, std::vector<int64_t>(B * k, -1), mode};
  padding.resize({B, k});
  for (int64_t b = 0; b < B; ++b) {
    // The k largest selected positions, ascending; fewer than k leave padded slots in front.
    int64_t slot = k;
    for (int64_t t = T - 1; t >= 0 && slot > 0; --t) {
      const float s = selected[b * T + t];
      check_arg(s == 0.f || s == 1.f, "selected_pos: expected 0 or 1 at [" + std::to_string(b) +
                                          ", " + std::to_string(t) + "]");
      if (s == 1.f) idx.source[b * k + --slot] = t;
    }
    for (int64_t j = 0; j < k; ++j) padding[b * k + j] = idx.source[b * k + j] < 0 ? 1.f : 0.f;
  }
  return idx;
}

namespace {

int64_t row_size(const GatherKIndex& idx, const Tensor& t, const char* name) {
  check_arg(t.rank() >= 2 && t.dim(0) == idx.B && t.dim(1) == idx.T,
            std::string(name) + ": expected shape [B=" + std::to_string(idx.B) +
                ", T=" + std::to_string(idx.T) + ", ...], got " + shape_str(t.shape()));
  return t.numel() / (idx.B * idx.T);
}

// The position slot (b, j) reads, or -1 for "write 0".
int64_t source_of(const GatherKIndex& idx, int64_t b, int64_t j) {
  const int64_t s = idx.source[b * idx.k + j];
  return s >= 0 ? s : (idx.padding == GatherKPadding::kFirstPosition ? 0 : -1);
}

}  // namespace

void gather_k(const GatherKIndex& idx, const Tensor& values, Tensor& out) {
  const int64_t D = row_size(idx, values, "values");
  Shape shape = values.shape();
  shape[1] = idx.k;
  out.resize(shape);
  for (int64_t b = 0; b < idx.B; ++b)
    for (int64_t j = 0; j < idx.k; ++j) {
      float* o = out.data() + (b * idx.k + j) * D;
      const int64_t s = source_of(idx, b, j);
      if (s < 0)
        std::memset(o, 0, D * sizeof(float));
      else
        std::memcpy(o, values.data() + (b * idx.T + s) * D, D * sizeof(float));
    }
}

void gather_k_backward(const GatherKIndex& idx, const Tensor& dout, Tensor& dvalues) {
  const int64_t D = row_size(idx, dvalues, "dvalues");
  check_arg(dout.numel() == idx.B * idx.k * D,
            "dout: expected shape [B, k, ...] matching the gathered output, got " +
                shape_str(dout.shape()));
  for (int64_t b = 0; b < idx.B; ++b)
    for (int64_t j = 0; j < idx.k; ++j) {
      const int64_t s = source_of(idx, b, j);
      if (s < 0) continue;
      float* d = dvalues.data() + (b * idx.T + s) * D;
      const float* g = dout.data() + (b * idx.k + j) * D;
      for (int64_t i = 0; i < D; ++i) d[i] += g[i];
    }
}

std::vector<Tensor> gather_k(const Tensor& selected, const std::vector<Tensor>& values, int64_t k,
                             Tensor& padding, GatherKPadding mode) {
  const GatherKIndex idx = gather_k_index(selected, k, padding, mode);
  std::vector<Tensor> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) gather_k(idx, values[i], out[i]);
  return out;
}

}  // namespace sparsemoe
