// Linear / Fourier / Hartley mixing (see mixing.h and spec §11).
#include "sparsemoe/nn/mixing.h"

#include <kissfft/kiss_fftnd.h>

#include <cmath>
#include <cstdlib>
#include <memory>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/gemm.h"
#include "sparsemoe/core/init.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/rng.h"

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
  p_.resize({B, L, H});
  q_.resize({B, L, H});
  parallel_for(B, [&](int64_t b) {
    const float* xb = x + b * L * H;
    float* yb = y + b * L * H;
    float* p = p_.data() + b * L * H;
    float* q = q_.data() + b * L * H;
    gemm(false, false, L, H, H, 1.f, xb, H, cos_h_.data(), H, 0.f, p, H);  // X C_H
    gemm(false, false, L, H, H, 1.f, xb, H, sin_h_.data(), H, 0.f, q, H);  // X S_H
    if (hartley)
      for (int64_t i = 0; i < L * H; ++i) {
        const float a = p[i], c = q[i];
        p[i] = a + c;
        q[i] = a - c;
      }
    gemm(false, false, L, H, L, 1.f, cos_l_.data(), L, p, H, 0.f, yb, H);
    gemm(false, false, L, H, L, hartley ? 1.f : -1.f, sin_l_.data(), L, q, H, 1.f, yb, H);
  });
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
  parallel_for(B, [&](int64_t b) {
    gemm(false, false, L, H, H, 1.f, x.data() + b * L * H, H, hidden_kernel.data(), H, 0.f,
         t_.data() + b * L * H, H);
    gemm(false, false, L, H, L, 1.f, seq_kernel.data(), L, t_.data() + b * L * H, H, 0.f,
         y.data() + b * L * H, H);
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
  // dt_b = W_seq^T dy_b; dW_seq += dy_b t_b^T; dx_b = dt_b W_hid^T; dW_hid += x^T dt.
  dt_.resize(dy.shape());
  float* dt = dt_.data();
  parallel_for(B, [&](int64_t b) {
    gemm(true, false, L, H, L, 1.f, seq_kernel.data(), L, dy.data() + b * L * H, H, 0.f,
         dt + b * L * H, H);
    gemm(false, true, L, H, H, 1.f, dt + b * L * H, H, hidden_kernel.data(), H, 0.f,
         dx.data() + b * L * H, H);
  });
  for (int64_t b = 0; b < B; ++b)  // fixed order: deterministic sum over the batch
    gemm(false, true, L, L, H, 1.f, dy.data() + b * L * H, H, t_.data() + b * L * H, H, 1.f,
         seq_kernel_grad.data(), L);
  gemm(true, false, H, H, B * L, 1.f, x_.data(), H, dt, H, 1.f, hidden_kernel_grad.data(), H);
}

}  // namespace sparsemoe
