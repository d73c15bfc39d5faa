// Grouping of tokens and expert capacity, following tf-models' latest MoeLayer (spec §2.1):
// tokens_per_group T = int(L * examples_per_group), G = B*L/T, C = round_half_even(cf*T/E),
// plus the options the paper and flaxformer add (a minimum capacity, dropless routing).
#pragma once

#include <cstdint>

namespace sparsemoe {

// Python's round(): ties go to the even neighbour (round(2.5) == 2, round(0.5) == 0).
int64_t round_half_even(double x);

struct Grouping {
  int64_t num_groups;        // G
  int64_t tokens_per_group;  // T
};

// Throws InvalidArgument (naming examples_per_group / batch) when the grouping is impossible:
// examples_per_group <= 0 or > B, T < 1, or B*L not divisible by T.
Grouping compute_grouping(int64_t batch, int64_t length, double examples_per_group);

// C = max(round_half_even(cf*T/E), min_capacity). C may be 0 (everything is dropped).
int64_t expert_capacity(double capacity_factor, int64_t tokens_per_group, int64_t num_experts,
                        int64_t min_capacity = 0);

}  // namespace sparsemoe
