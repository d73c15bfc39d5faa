// The MoE layer's random streams and initialisation keys. Every draw is uniform01(key, index) with
// a key derived from the layer's seed by these tags (core/rng.h), so any implementation that
// follows them draws the same numbers: the plain-loop reference (reference/moe_reference.h) does.
//   jitter      key = derive_key(seed, kJitterTag, step); x[n, h] *= 1 - eps + 2 eps u(key, n*H +
//   h) top2        key2 = derive_key(jitter key, kTop2Stream); Gumbel noise u(derive_key(key2,
//               kGumbelStream), n*E + e); the random policy's u(derive_key(key2, kRandomStream), n)
//   dropout     expert seed s = derive_key(seed, kExpertsTag); inner u(derive_key(s,
//               kInnerDropoutTag, step), slot*F + f), output u(derive_key(s, kOutputDropoutTag,
//               step), slot*H + h), slot = (g*E + e)*C + c, the dense [G, E, C] index
//   init        router kernel: derive_key(derive_key(seed, kRouterTag), kGateInitTag)
#pragma once

#include <cstdint>

namespace sparsemoe::moe_streams {

constexpr uint64_t kRouterTag = 0x524f5554, kGateInitTag = 0x524f55544552ull;
constexpr uint64_t kExpertsTag = 0x45585054, kBackboneTag = 0x4241434b;
constexpr uint64_t kJitterTag = 0x4a495454, kTop2Stream = 0x544f5032;
constexpr uint64_t kGumbelStream = 0x47554d42, kRandomStream = 0x52414e44;
constexpr uint64_t kInnerDropoutTag = 0x46464531, kOutputDropoutTag = 0x46464532;

}  // namespace sparsemoe::moe_streams
