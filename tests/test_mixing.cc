// Mixing layers: TFM-MIX1 (linear, all ones), the DFT-matrix path against the FFT path and both
// against a direct complex-double DFT (TFM-MIX2, GR-L3 properties), the FFT length guard (GR-L4),
// and the fixed-length error. Gradients of each mechanism and path: the harness's nn/mixing cases.
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <vector>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/nn/mixing.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::random_tensor;

TEST(Mixing, LinearAllOnesGivesTwelve) {  // TFM-MIX1
  MixingLayer m(MixingMechanism::kLinear, 4, 3);
  m.seq_kernel.fill(1.f);
  m.hidden_kernel.fill(1.f);
  Tensor x({2, 4, 3}, 1.f), y;
  m.forward(x, y);
  for (int64_t i = 0; i < y.numel(); ++i) EXPECT_NEAR(y[i], 12.f, 1e-6);
}

// Linear mixing over a sequence longer than a GEMM row tile (512 + 8 rows) against plain loops in
// double: the forward, dx and both weight gradients (summed over the batch).
TEST(Mixing, LinearAcrossRowTilesMatchesPlainLoops) {
  const int64_t B = 2, L = 520, H = 3;
  MixingLayer m(MixingMechanism::kLinear, L, H, false, 0.05, 8);
  const Tensor x = random_tensor({B, L, H}, 3), dy = random_tensor({B, L, H}, 4);
  Tensor y, dx;
  m.seq_kernel_grad.zero();
  m.hidden_kernel_grad.zero();
  m.forward(x, y);
  m.backward(dy, dx);
  const Tensor &ws = m.seq_kernel, &wh = m.hidden_kernel;
  std::vector<double> t(B * L * H), dt(B * L * H);
  Tensor y_want({B, L, H}), dx_want({B, L, H}), dws({L, L}), dwh({H, H});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < L; ++i)
      for (int64_t c = 0; c < H; ++c) {
        double v = 0;
        for (int64_t j = 0; j < H; ++j) v += double(x[(b * L + i) * H + j]) * wh[j * H + c];
        t[(b * L + i) * H + c] = v;
      }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < L; ++i)
      for (int64_t c = 0; c < H; ++c) {
        double v = 0, d = 0;
        for (int64_t l = 0; l < L; ++l) {
          v += double(ws[i * L + l]) * t[(b * L + l) * H + c];
          d += double(ws[l * L + i]) * dy[(b * L + l) * H + c];
        }
        y_want[(b * L + i) * H + c] = static_cast<float>(v);
        dt[(b * L + i) * H + c] = d;
      }
  for (int64_t r = 0; r < B * L; ++r)
    for (int64_t j = 0; j < H; ++j) {
      double v = 0;
      for (int64_t c = 0; c < H; ++c) v += dt[r * H + c] * wh[j * H + c];
      dx_want[r * H + j] = static_cast<float>(v);
    }
  for (int64_t i = 0; i < L; ++i)
    for (int64_t l = 0; l < L; ++l) {
      double v = 0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c = 0; c < H; ++c)
          v += double(dy[(b * L + i) * H + c]) * t[(b * L + l) * H + c];
      dws[i * L + l] = static_cast<float>(v);
    }
  for (int64_t j = 0; j < H; ++j)
    for (int64_t c = 0; c < H; ++c) {
      double v = 0;
      for (int64_t r = 0; r < B * L; ++r) v += double(x[r * H + j]) * dt[r * H + c];
      dwh[j * H + c] = static_cast<float>(v);
    }
  EXPECT_LT(test::normalized_error(y, y_want), 1e-5);
  EXPECT_LT(test::normalized_error(dx, dx_want), 1e-5);
  EXPECT_LT(test::normalized_error(m.seq_kernel_grad, dws), 1e-5);
  EXPECT_LT(test::normalized_error(m.hidden_kernel_grad, dwh), 1e-5);
  // Rows past the first tile are where a wrong tile offset would show.
  double worst = 0;
  for (int64_t i = 512 * H; i < L * H; ++i)
    worst = std::max(worst, double(std::abs(y[i] - y_want[i])));
  EXPECT_LT(worst, 1e-4);
}

// y = Re(F) (Fourier) or Re(F) - Im(F) (Hartley), F = the unnormalised 2-D DFT, in double.
Tensor direct_dft(const Tensor& x, bool hartley) {
  const int64_t B = x.dim(0), L = x.dim(1), H = x.dim(2);
  Tensor y(x.shape());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < L; ++n)
      for (int64_t k = 0; k < H; ++k) {
        std::complex<double> f = 0;
        for (int64_t i = 0; i < L; ++i)
          for (int64_t j = 0; j < H; ++j)
            f += static_cast<double>(x[(b * L + i) * H + j]) *
                 std::polar(1.0, -2 * M_PI * (double(n * i) / L + double(k * j) / H));
        y[(b * L + n) * H + k] = static_cast<float>(hartley ? f.real() - f.imag() : f.real());
      }
  return y;
}

// The last shape spans two row tiles of the GEMM layer (512 + 8 rows per sequence).
TEST(Mixing, DftMatrixAndFftPathsAgreeWithTheDft) {
  for (auto mech : {MixingMechanism::kFourier, MixingMechanism::kHartley})
    for (Shape s : {Shape{3, 4, 8}, Shape{1, 8, 4}, Shape{2, 6, 5}, Shape{2, 520, 3}}) {
      const Tensor x = random_tensor(s, 3, -2.f, 2.f);
      const Tensor want = direct_dft(x, mech == MixingMechanism::kHartley);
      for (bool fft : {false, true}) {
        MixingLayer m(mech, s[1], s[2], fft);
        Tensor y;
        m.forward(x, y);
        EXPECT_LT(test::normalized_error(y, want), 1e-5)
            << mixing_mechanism_name(mech) << " fft=" << fft << " " << shape_str(s);
      }
    }
}

TEST(Mixing, FftLengthGuard) {  // GR-L4
  try {
    MixingLayer m(MixingMechanism::kFourier, 8194, 2, true);
    FAIL() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("must be a power of 2"), std::string::npos);
  }
  EXPECT_NO_THROW(MixingLayer(MixingMechanism::kFourier, 8192, 2, true));
}

TEST(Mixing, WrongLengthIsAClearError) {
  MixingLayer m(MixingMechanism::kFourier, 8, 4);
  Tensor y;
  try {
    m.forward(Tensor({1, 7, 4}), y);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("L=8"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_mixing_mechanism("wavelet"), ConfigError);
}

}  // namespace
}  // namespace sparsemoe
