// Token mixing for the Sparse Mixer (spec §11): LINEAR (learned [L, L] sequence kernel and [H, H]
// hidden kernel, no bias), FOURIER (real part of the unnormalised 2-D DFT over sequence and
// hidden) and HARTLEY (Re - Im of the same transform). The transforms run either as products with
// precomputed cos/sin DFT matrices (use_fft = false, the default) or through kissfft's 2-D FFT.
// All act on x [B, L, H] with L fixed at construction, and ignore padding.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/tensor.h"
#include "sparsemoe/nn/layer_common.h"
#include "sparsemoe/ops/tiled_gemm.h"

namespace sparsemoe {

enum class MixingMechanism { kLinear, kFourier, kHartley };
inline constexpr EnumNames<MixingMechanism, 3> kMixingMechanisms{{"linear", "fourier", "hartley"}};
inline std::string mixing_mechanism_name(MixingMechanism m) { return kMixingMechanisms(m); }
inline MixingMechanism parse_mixing_mechanism(const std::string& name) {
  return kMixingMechanisms.parse(name, "mixing_mechanism");
}
inline void to_json(nlohmann::json& j, MixingMechanism m) { j = kMixingMechanisms(m); }
inline void from_json(const nlohmann::json& j, MixingMechanism& m) {
  m = parse_mixing_mechanism(j.get<std::string>());
}

class MixingLayer {
 public:
  MixingLayer(MixingMechanism mechanism, int64_t seq_length, int64_t hidden, bool use_fft = false,
              double kernel_init_stddev = 0.02, uint64_t seed = 0);

  // x [B, L, H] -> y [B, L, H].
  void forward(const Tensor& x, Tensor& y);
  // dy -> dx (overwritten); accumulates the LINEAR kernels' gradients.
  void backward(const Tensor& dy, Tensor& dx);

  std::vector<ParamRef> params();  // LINEAR: seq_kernel [L, L], hidden_kernel [H, H]; else none
  MixingMechanism mechanism() const { return mechanism_; }

  Tensor seq_kernel, hidden_kernel, seq_kernel_grad, hidden_kernel_grad;

 private:
  void transform(const float* x, float* y, int64_t B);  // FOURIER / HARTLEY, self-adjoint
  std::vector<RowTile> all_rows(int64_t B) const;       // tiles of the B * L rows
  std::vector<RowTile> sequence_rows(int64_t B) const;  // tiles of each sequence (group b)
  void check_input(const Tensor& x, const char* name) const;

  MixingMechanism mechanism_;
  int64_t L_, H_;
  bool use_fft_;
  Tensor cos_l_, sin_l_, cos_h_, sin_h_;  // [L, L], [H, H] DFT matrices (cos/sin parts)
  Tensor x_;  // [B, L, H] the last forward's input (a copy; linear mixing only)
  bool have_forward_ = false;
  Tensor t_;  // LINEAR: x . hidden_kernel [B, L, H], saved for backward
  // Workspaces reused across calls: [B, L, H] products, the FFT's complex buffers, and one kissfft
  // plan per batch item (a plan holds scratch memory, so concurrent items need their own).
  Tensor p_, q_, dt_;
  std::vector<float> fft_in_, fft_out_;  // [B, L, H] complex, interleaved (re, im)
  std::vector<std::unique_ptr<void, void (*)(void*)>> plans_;
};

}  // namespace sparsemoe
