// lingvo StateLayer as a decoding cache (see state_layer.h).
#include "sparsemoe/lingvo/state_layer.h"

#include <cstring>
#include <string>

#include "sparsemoe/core/errors.h"

namespace sparsemoe {

namespace {

Shape concat(Shape head, const Shape& tail) {
  head.insert(head.end(), tail.begin(), tail.end());
  return head;
}

}  // namespace

DecodingState DecodingState::batch_major(int64_t batch, int64_t max_steps, const Shape& feature) {
  check_arg(batch >= 1 && max_steps >= 1,
            "DecodingState: expected batch >= 1 and max_steps >= 1, got " + std::to_string(batch) +
                ", " + std::to_string(max_steps));
  DecodingState s;
  s.batch_ = batch, s.max_steps_ = max_steps, s.feature_ = feature;
  s.row_ = shape_numel(feature);
  s.state_ = Tensor(concat({batch, max_steps}, feature));
  return s;
}

DecodingState DecodingState::flat_beam(int64_t batch, int64_t beam, int64_t max_steps,
                                       const Shape& feature) {
  check_arg(batch >= 1 && beam >= 1 && max_steps >= 1,
            "DecodingState: expected batch, beam and max_steps >= 1");
  DecodingState s;
  s.batch_ = batch, s.beam_ = beam, s.max_steps_ = max_steps, s.feature_ = feature;
  s.row_ = shape_numel(feature);
  s.state_ = Tensor(concat({max_steps, batch, beam}, feature));
  s.view_ = Tensor(concat({batch, max_steps * beam}, feature));
  return s;
}

void DecodingState::reset() {
  state_.zero();
  if (is_flat_beam()) view_.zero();
}

const Tensor& DecodingState::update(int64_t t, const Tensor& x) {
  const int64_t D = row_;
  if (!is_flat_beam()) {
    check_shape("x", x.shape(), concat({batch_, 1}, feature_), "[B, 1, ...] (one step)");
    check_arg(t >= 0 && t < max_steps_,
              "t: expected 0 <= t < max_steps=" + std::to_string(max_steps_) + ", got " +
                  std::to_string(t));
    for (int64_t b = 0; b < batch_; ++b)
      std::memcpy(state_.data() + (b * max_steps_ + t) * D, x.data() + b * D, D * sizeof(float));
    return state_;
  }
  // Flat beam: x [B, N*beam, ...] holds N consecutive steps.
  check_arg(x.rank() == 2 + static_cast<int>(feature_.size()) && x.dim(0) == batch_ &&
                x.dim(1) % beam_ == 0 && x.dim(1) > 0 &&
                Shape(x.shape().begin() + 2, x.shape().end()) == feature_,
            "x: expected shape [B=" + std::to_string(batch_) +
                ", N*beam (beam=" + std::to_string(beam_) + "), " + shape_str(feature_) +
                "...], got " + shape_str(x.shape()));
  const int64_t steps = x.dim(1) / beam_;
  check_arg(t >= 0 && t + steps <= max_steps_,
            "t: steps " + std::to_string(t) + ".." + std::to_string(t + steps - 1) +
                " exceed max_steps=" + std::to_string(max_steps_));
  for (int64_t i = 0; i < steps; ++i)
    for (int64_t b = 0; b < batch_; ++b)
      std::memcpy(state_.data() + (((t + i) * batch_ + b) * beam_) * D,
                  x.data() + (b * x.dim(1) + i * beam_) * D, beam_ * D * sizeof(float));
  // [T, B, beam, ...] -> [B, T*beam, ...]
  for (int64_t s = 0; s < max_steps_; ++s)
    for (int64_t b = 0; b < batch_; ++b)
      std::memcpy(view_.data() + (b * max_steps_ + s) * beam_ * D,
                  state_.data() + ((s * batch_ + b) * beam_) * D, beam_ * D * sizeof(float));
  return view_;
}

const Tensor& state_layer_forward(const Tensor& x, DecodingState* state, int64_t t) {
  if (t < 0 || state == nullptr) return x;  // training: identity
  return state->update(t, x);
}

DecodingState& DecodingCache::add(const std::string& name, DecodingState state) {
  states_.insert_or_assign(name, std::move(state));
  return states_.at(name);
}

DecodingState& DecodingCache::at(const std::string& name) {
  auto it = states_.find(name);
  if (it == states_.end()) {
    std::string known;
    for (const auto& [k, v] : states_) known += (known.empty() ? "" : ", ") + k;
    throw InvalidArgument("DecodingCache: no state named '" + name +
                          "' (known: " + (known.empty() ? "none" : known) + ")");
  }
  return it->second;
}

void DecodingCache::reset() {
  for (auto& [k, s] : states_) s.reset();
}

}  // namespace sparsemoe
