// Named-parameter helpers (see layer_common.h).
#include "sparsemoe/nn/layer_common.h"

#include <cmath>

#include "sparsemoe/core/errors.h"

namespace sparsemoe {

std::vector<ParamRef> prefixed(const std::string& prefix, std::vector<ParamRef> params) {
  for (auto& p : params) p.name = prefix + "/" + p.name;
  return params;
}

int64_t count_params(const std::vector<ParamRef>& params) {
  int64_t n = 0;
  for (const auto& p : params) n += p.value->numel();
  return n;
}

Tensor& find_weight(const std::vector<ParamRef>& params, const std::string& name) {
  for (const auto& p : params)
    if (p.name == name) return *p.value;
  std::string known;
  for (const auto& p : params) known += (known.empty() ? "" : ", ") + p.name;
  throw InvalidArgument("weight '" + name + "' does not exist; known weights: " + known);
}

void set_weight(const std::vector<ParamRef>& params, const std::string& name, const Tensor& value) {
  Tensor& w = find_weight(params, name);
  check_shape("weight '" + name + "'", value.shape(), w.shape());
  w = value;
}

void zero_grads(const std::vector<ParamRef>& params) {
  for (const auto& p : params) p.grad->zero();
}

std::vector<int64_t> read_ids(const Tensor& t, int64_t limit, const std::string& name) {
  std::vector<int64_t> out(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = t[i];
    if (!(v >= 0 && v < static_cast<float>(limit) && v == std::floor(v)))
      throw InvalidArgument(name + ": expected integers in [0, " + std::to_string(limit) +
                            "), got " + std::to_string(v) + " at element " + std::to_string(i));
    out[i] = static_cast<int64_t>(v);
  }
  return out;
}

}  // namespace sparsemoe
