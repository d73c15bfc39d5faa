// lingvo's StateLayer (spec §13): the incremental-decoding state of one layer, as a reusable
// cache. In training it is the identity. In decoding the state is zero-initialised, step t writes
// the new slice and the whole state is returned:
//   batch-major  state [B, max_steps, ...]; x [B, 1, ...] goes to state[:, t]; returns the state.
//   flat beam    state [max_steps, B, beam, ...]; x [B, N*beam, ...] fills steps t .. t+N-1 (a
//                prefix of N steps at once); returns [B, max_steps*beam, ...].
// DecodingCache holds the states of a layer tree by name (lingvo's InitState / UpdateState).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "sparsemoe/core/tensor.h"

namespace sparsemoe {

class DecodingState {
 public:
  // feature: the trailing shape of one step's slice (e.g. {H} or {heads, dim}).
  static DecodingState batch_major(int64_t batch, int64_t max_steps, const Shape& feature);
  static DecodingState flat_beam(int64_t batch, int64_t beam, int64_t max_steps,
                                 const Shape& feature);

  // Writes the slice of step t (or steps t.., flat beam) and returns the whole state in the
  // layout above. Throws InvalidArgument naming x or t on a mismatch; the state is then unchanged.
  const Tensor& update(int64_t t, const Tensor& x);
  void reset();  // back to zeros

  bool is_flat_beam() const { return beam_ > 0; }
  int64_t max_steps() const { return max_steps_; }
  const Tensor& state() const { return state_; }  // the stored layout

 private:
  DecodingState() = default;
  int64_t batch_ = 0, beam_ = 0, max_steps_ = 0, row_ = 0;  // row_: floats per (b, beam) slice
  Shape feature_;
  Tensor state_;  // [B, T, ...] or [T, B, beam, ...]
  Tensor view_;   // flat beam: [B, T*beam, ...]
};

// StateLayer.FProp: the identity in training (t < 0), else state.update(t, x).
const Tensor& state_layer_forward(const Tensor& x, DecodingState* state, int64_t t);

class DecodingCache {
 public:
  DecodingState& add(const std::string& name, DecodingState state);  // replaces one of that name
  DecodingState& at(const std::string& name);  // throws InvalidArgument listing the known names
  bool contains(const std::string& name) const { return states_.count(name) > 0; }
  void reset();  // zeros every state (a new sequence)
  size_t size() const { return states_.size(); }

 private:
  std::map<std::string, DecodingState> states_;
};

}  // namespace sparsemoe
