// Grouping and capacity rules (see capacity.h and spec §2).
#include "sparsemoe/routing/capacity.h"

#include <cfenv>
#include <cmath>
#include <string>

#include "sparsemoe/core/errors.h"

namespace sparsemoe {

int64_t round_half_even(double x) {
  // nearbyint honours the current rounding mode; to-nearest-even is the default, but be explicit.
  const int saved = std::fegetround();
  std::fesetround(FE_TONEAREST);
  const double r = std::nearbyint(x);
  std::fesetround(saved);
  return static_cast<int64_t>(r);
}

Grouping compute_grouping(int64_t batch, int64_t length, double examples_per_group) {
  check_arg(batch >= 1 && length >= 1, "MoeLayer input: batch and length must be >= 1, got B=" +
                                           std::to_string(batch) + ", L=" + std::to_string(length));
  check_arg(examples_per_group > 0,
            "examples_per_group: expected > 0, got " + std::to_string(examples_per_group));
  check_arg(examples_per_group <= static_cast<double>(batch),
            "examples_per_group: expected <= batch size B=" + std::to_string(batch) + ", got " +
                std::to_string(examples_per_group));
  const auto tokens_per_group =
      static_cast<int64_t>(static_cast<double>(length) * examples_per_group);
  check_arg(tokens_per_group >= 1, "examples_per_group: L*examples_per_group = " +
                                       std::to_string(length * examples_per_group) +
                                       " gives fewer than 1 token per group");
  const int64_t tokens = batch * length;
  check_arg(tokens % tokens_per_group == 0,
            "examples_per_group: tokens_per_group T=" + std::to_string(tokens_per_group) +
                " must divide B*L=" + std::to_string(tokens));
  return {tokens / tokens_per_group, tokens_per_group};
}

int64_t expert_capacity(double capacity_factor, int64_t tokens_per_group, int64_t num_experts,
                        int64_t min_capacity) {
  check_arg(capacity_factor >= 0,
            "capacity_factor: expected >= 0, got " + std::to_string(capacity_factor));
  check_arg(num_experts >= 1, "num_experts: expected >= 1, got " + std::to_string(num_experts));
  const int64_t c = round_half_even(capacity_factor * static_cast<double>(tokens_per_group) /
                                    static_cast<double>(num_experts));
  return c < min_capacity ? min_capacity : c;
}

}  // namespace sparsemoe
