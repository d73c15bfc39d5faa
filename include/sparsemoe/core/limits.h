// Size arithmetic that cannot overflow and allocations that cannot exceed the machine. Every size
// that comes from outside (a config, a checkpoint header, a route request) is multiplied with
// checked_mul and its bytes checked with check_memory before anything is allocated, so a hostile
// or mistaken size is an error naming it and the bytes it needs, never a wrapped product, a
// segfault or a bare std::bad_alloc.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace sparsemoe {

// More memory than the machine has (the message gives the bytes needed and the bytes there are).
class ResourceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// a * b, or InvalidArgument "what: a x b overflows 64-bit sizes" (a, b >= 0).
int64_t checked_mul(int64_t a, int64_t b, const std::string& what);
// The product of dims, checked the same way.
int64_t checked_product(std::initializer_list<int64_t> dims, const std::string& what);

// The machine's physical memory and what the kernel says is available now (MemAvailable), in
// bytes; the limits of the cgroup (a container) apply when they are lower.
uint64_t physical_memory_bytes();
uint64_t available_memory_bytes();

// Throws ResourceError "what: 1.2 GiB needed, more than this machine's memory (M)" when bytes
// exceeds the physical memory. Cheap (no file read): Tensor calls it on every allocation.
void check_memory(double bytes, const std::string& what);
// The same against the memory available now (reads /proc/meminfo): for a whole run's estimate.
void check_available_memory(double bytes, const std::string& what);

// "1.5 GiB", "12 MiB", "512 bytes".
std::string format_bytes(double bytes);

// The most threads set_num_threads accepts (OpenMP itself crashes far above it).
inline constexpr int kMaxThreads = 1024;

}  // namespace sparsemoe
