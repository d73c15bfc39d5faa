// Counter-based random numbers: a value is a pure function of (key, counter), so dropout masks
// and jitter noise do not depend on thread count or evaluation order, and backward can
// regenerate a forward mask instead of storing it. Keys are derived by hashing (seed, stream...).
#pragma once

#include <cstdint>

namespace sparsemoe {

// SplitMix64 finaliser: a bijective 64-bit mix with good avalanche.
inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Derives a stream key from a seed and up to three stream identifiers (layer, purpose, step).
inline uint64_t derive_key(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0) {
  return mix64(mix64(mix64(mix64(seed) ^ a) ^ b) ^ c);
}

// Uniform float in [0, 1) with 24 random bits, for element `counter` of stream `key`.
inline float uniform01(uint64_t key, uint64_t counter) {
  const uint64_t h = mix64(key ^ mix64(counter));
  return static_cast<float>(h >> 40) * (1.0f / 16777216.0f);
}

}  // namespace sparsemoe
