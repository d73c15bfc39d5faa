// Linear / Fourier / Hartley mixing (see mixing.h and spec §11).
#include "sparsemoe/nn/mixing.h"

#include <kissfft/kiss_fftnd.h>

#include <cmath>
#include <cstdlib>
#include <memory>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/init.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/ops/gemm_kernel.h"
#include "sparsemoe/ops/tiled_gemm.h"

namespace sparsemoe {

namespace {

// cos/sin parts of D_n[j, k] = exp(-2 pi i j k / n) = cos - i sin; the angle is reduced with the
// integer product j*k mod n so large n stays exact.
void dft_matrices(int64_t n, Tensor& c, Tensor& s) {
  c = Tensor({n, n});
  s = Tensor({n, n});
  for (int64_t j = 0; j < n; ++j)
    for (int64_t k = 0; k < n; ++k) {
      const double a = 2.0 * M_PI * static_cast<double>((j * k) % n) / static_cast<double>(n);
      c[j * n + k] = static_cast<float>(std::cos(a));
      s[j * n + k] = static_cast<float>(std::sin(a));
    }
}

}  // namespace

MixingLayer::MixingLayer(MixingMechanism mechanism, int64_t seq_length, int64_t hidden,
                         bool use_fft, double kernel_init_stddev, uint64_t seed)
    : mechanism_(mechanism), L_(seq_length), H_(hidden), use_fft_(use_fft) {
  check_arg(L_ >= 1 && H_ >= 1, "MixingLayer: expected seq_length and hidden >= 1, got " +
                                    std::to_string(L_) + ", " + std::to_string(H_));
  if (use_fft && L_ > 4096 && (L_ & (L_ - 1)) != 0)
    throw InvalidArgument("MixingLayer: max_seq_length " + std::to_string(L_) +
                          " must be a power of 2 to take advantage of FFT optimizations");
  if (mechanism == MixingMechanism::kLinear) {
    seq_kernel = Tensor({L_, L_});
    hidden_kernel = Tensor({H_, H_});
    seq_kernel_grad = Tensor({L_, L_});
    hidden_kernel_grad = Tensor({H_, H_});
    fill_truncated_normal(seq_kernel, kernel_init_stddev, derive_key(seed, 0x5345514b));
    fill_truncated_normal(hidden_kernel, kernel_init_stddev, derive_key(seed, 0x4849444b));
  } else if (!use_fft) {
    dft_matrices(L_, cos_l_, sin_l_);
    dft_matrices(H_, cos_h_, sin_h_);
  }
}

std::vector<ParamRef> MixingLayer::params() {
  if (mechanism_ != MixingMechanism::kLinear) return {};
  return {{"seq_kernel", &seq_kernel, &seq_kernel_grad},
          {"hidden_kernel", &hidden_kernel, &hidden_kernel_grad}};
}

void MixingLayer::check_input(const Tensor& x, const char* name) const {
  check_arg(x.rank() == 3 && x.dim(1) == L_ && x.dim(2) == H_,
            std::string(name) + ": expected shape [B, L=" + std::to_string(L_) + ", H=" +
                std::to_string(H_) + "] (the mixing length is fixed), got " + shape_str(x.shape()));
}

// Fourier: y = Re(D_L X D_H) = C_L X C_H - S_L X S_H.
// Hartley: y = Re - Im = C_L (X C_H + X S_H) + S_L (X C_H - X S_H).
// Both are self-adjoint (C and S are symmetric), so backward applies the same map to dy.
void MixingLayer::transform(const float* x, float* y, int64_t B) {
  const int64_t L = L_, H = H_;
  const bool hartley = mechanism_ == MixingMechanism::kHartley;
  if (use_fft_) {
    const int dims[2] = {static_cast<int>(L), static_cast<int>(H)};
    while (static_cast<int64_t>(plans_.size()) < B)
      plans_.emplace_back(kiss_fftnd_alloc(dims, 2, 0, nullptr, nullptr), &std::free);
    fft_in_.resize(2 * B * L * H);
    fft_out_.resize(2 * B * L * H);
    static_assert(sizeof(kiss_fft_cpx) == 2 * sizeof(float));
    parallel_for(B, [&](int64_t b) {
      auto* in = reinterpret_cast<kiss_fft_cpx*>(fft_in_.data()) + b * L * H;
      auto* out = reinterpret_cast<kiss_fft_cpx*>(fft_out_.data()) + b * L * H;
      for (int64_t i = 0; i < L * H; ++i) in[i] = {x[b * L * H + i], 0.f};
      kiss_fftnd(static_cast<kiss_fftnd_cfg>(plans_[b].get()), in, out);
      for (int64_t i = 0; i < L * H; ++i)
        y[b * L * H + i] = hartley ? out[i].r - out[i].i : out[i].r;
    });
    return;
  }
  // On the GEMM kernel, in tiles (ops/tiled_gemm.h): p = X C_H and q = +-X S_H over all B * L rows
  // (q negated for Fourier, so that y_b = C_L p_b + S_L q_b in both cases), then per sequence.
  p_.resize({B, L, H});
  q_.resize({B, L, H});
  float *p = p_.data(), *q = q_.data();
  for_tiles(all_rows(B), H, [&](const RowTile& t, int64_t c0, int64_t c1) {
    const int64_t rows = t.end - t.begin, at = t.begin * H + c0;
    kernel_gemm(rows, c1 - c0, H, MatRef::rows(x + t.begin * H, H),
                MatRef::rows(cos_h_.data() + c0, H), p + at, H, false);
    kernel_gemm(rows, c1 - c0, H, MatRef::rows(x + t.begin * H, H),
                MatRef::rows(sin_h_.data() + c0, H), q + at, H, false);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < c1 - c0; ++c) {
        const float a = p[at + r * H + c], s = q[at + r * H + c];
        if (hartley) p[at + r * H + c] = a + s;
        q[at + r * H + c] = hartley ? a - s : -s;
      }
  });
  for_tiles(sequence_rows(B), H, [&](const RowTile& t, int64_t c0, int64_t c1) {
    const int64_t b = t.group, i0 = t.begin - b * L, rows = t.end - t.begin;
    float* out = y + t.begin * H + c0;
    kernel_gemm(rows, c1 - c0, L, MatRef::rows(cos_l_.data() + i0 * L, L),
                MatRef::rows(p + b * L * H + c0, H), out, H, false);
    kernel_gemm(rows, c1 - c0, L, MatRef::rows(sin_l_.data() + i0 * L, L),
                MatRef::rows(q + b * L * H + c0, H), out, H, true);
  });
}

// Row tiles over all B * L rows (one group), and over each sequence's L rows (group b).
std::vector<RowTile> MixingLayer::all_rows(int64_t B) const {
  const int64_t offsets[2] = {0, B * L_};
  return row_tiles(offsets, 1);
}
std::vector<RowTile> MixingLayer::sequence_rows(int64_t B) const {
  std::vector<int64_t> offsets(static_cast<size_t>(B + 1));
  for (int64_t b = 0; b <= B; ++b) offsets[static_cast<size_t>(b)] = b * L_;
  return row_tiles(offsets.data(), B);
}

void MixingLayer::forward(const Tensor& x, Tensor& y) {
  check_input(x, "x");
  const int64_t B = x.dim(0), L = L_, H = H_;
  have_forward_ = true;
  y.resize(x.shape());
  if (mechanism_ != MixingMechanism::kLinear) {
    transform(x.data(), y.data(), B);
    return;
  }
  x_.resize(x.shape());  // backward's dW_hid = x^T dt: a copy, not a pointer into the caller's x
  std::copy_n(x.data(), x.numel(), x_.data());
  // y_b = W_seq . (x_b . W_hid); t = x . W_hid is saved for backward.
  t_.resize(x.shape());
  float* t = t_.data();
  for_tiles(all_rows(B), H, [&](const RowTile& r, int64_t c0, int64_t c1) {
    kernel_gemm(r.end - r.begin, c1 - c0, H, MatRef::rows(x.data() + r.begin * H, H),
                MatRef::rows(hidden_kernel.data() + c0, H), t + r.begin * H + c0, H, false);
  });
  for_tiles(sequence_rows(B), H, [&](const RowTile& r, int64_t c0, int64_t c1) {
    const int64_t b = r.group, i0 = r.begin - b * L;
    kernel_gemm(r.end - r.begin, c1 - c0, L, MatRef::rows(seq_kernel.data() + i0 * L, L),
                MatRef::rows(t + b * L * H + c0, H), y.data() + r.begin * H + c0, H, false);
  });
}

void MixingLayer::backward(const Tensor& dy, Tensor& dx) {
  check_arg(have_forward_, "MixingLayer::backward: call forward first");
  check_input(dy, "dy");
  const int64_t B = dy.dim(0), L = L_, H = H_;
  dx.resize(dy.shape());
  if (mechanism_ != MixingMechanism::kLinear) {
    transform(dy.data(), dx.data(), B);
    return;
  }
  // dt_b = W_seq^T dy_b; dW_seq += dy_b t_b^T; dx = dt W_hid^T; dW_hid += x^T dt.
  dt_.resize(dy.shape());
  float* dt = dt_.data();
  for_tiles(sequence_rows(B), H, [&](const RowTile& r, int64_t c0, int64_t c1) {
    const int64_t b = r.group, i0 = r.begin - b * L;
    kernel_gemm(r.end - r.begin, c1 - c0, L, MatRef::transposed(seq_kernel.data() + i0, L),
                MatRef::rows(dy.data() + b * L * H + c0, H), dt + r.begin * H + c0, H, false);
  });
  const int64_t whole[2] = {0, B * L};
  input_grad(whole, 1, dt, H, hidden_kernel.data(), H, dx.data());
  // The sum over the batch in a fixed order: each element of dW_seq is one FMA chain over
  // (b, h), sequence after sequence.
  const std::vector<RowTile> seq_rows = sequence_rows(1);
  for (int64_t b = 0; b < B; ++b)
    for_tiles(seq_rows, L, [&](const RowTile& r, int64_t c0, int64_t c1) {
      kernel_gemm(r.end - r.begin, c1 - c0, H, MatRef::rows(dy.data() + (b * L + r.begin) * H, H),
                  MatRef::transposed(t_.data() + b * L * H + c0 * H, H),
                  seq_kernel_grad.data() + r.begin * L + c0, L, true);
    });
  add_weight_grad(whole, 1, x_.data(), H, dt, H, hidden_kernel_grad.data());
}

}  // namespace sparsemoe
