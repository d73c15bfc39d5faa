// Checked sizes and memory limits (see limits.h).
#include "sparsemoe/core/limits.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <string>

#include "sparsemoe/core/errors.h"

namespace sparsemoe {

int64_t checked_mul(int64_t a, int64_t b, const std::string& what) {
  int64_t out = 0;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &out))
    throw InvalidArgument(what + ": " + std::to_string(a) + " x " + std::to_string(b) +
                          (a < 0 || b < 0 ? " has a negative size" : " overflows 64-bit sizes"));
  return out;
}

int64_t checked_product(std::initializer_list<int64_t> dims, const std::string& what) {
  int64_t n = 1;
  for (int64_t d : dims) n = checked_mul(n, d, what);
  return n;
}

namespace {

// A cgroup v2 / v1 memory limit, or 0 when none is set.
uint64_t cgroup_limit() {
  for (const char* path :
       {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream in(path);
    std::string s;
    if (in >> s && !s.empty() && s != "max") {
      try {
        return std::stoull(s);
      } catch (const std::exception&) {
      }
    }
  }
  return 0;
}

uint64_t physical_uncached() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  uint64_t bytes = pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * page : 0;
  const uint64_t cg = cgroup_limit();
  if (cg > 0 && (bytes == 0 || cg < bytes)) bytes = cg;
  return bytes > 0 ? bytes : std::numeric_limits<uint64_t>::max();
}

}  // namespace

uint64_t physical_memory_bytes() {
  static const uint64_t bytes = physical_uncached();
  return bytes;
}

uint64_t available_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  uint64_t kb = 0;
  while (in >> key >> kb >> unit)
    if (key == "MemAvailable:") return std::min(kb * 1024, physical_memory_bytes());
  return physical_memory_bytes();
}

std::string format_bytes(double b) {
  char buf[64];
  if (b >= 1024.0 * 1024 * 1024 * 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.3g bytes", b);
  else if (b >= 1024.0 * 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.1f GiB", b / (1024.0 * 1024 * 1024));
  else if (b >= 1024.0 * 1024)
    std::snprintf(buf, sizeof buf, "%.1f MiB", b / (1024.0 * 1024));
  else
    std::snprintf(buf, sizeof buf, "%.0f bytes", b);
  return buf;
}

void check_memory(double bytes, const std::string& what) {
  const double have = static_cast<double>(physical_memory_bytes());
  if (!(bytes <= have))
    throw ResourceError(what + ": " + format_bytes(bytes) +
                        " needed, more than this machine's memory (" + format_bytes(have) + ")");
}

void check_available_memory(double bytes, const std::string& what) {
  check_memory(bytes, what);
  const double have = static_cast<double>(available_memory_bytes());
  if (!(bytes <= have))
    throw ResourceError(what + ": about " + format_bytes(bytes) + " needed, more than the " +
                        format_bytes(have) + " of memory available now");
}

}  // namespace sparsemoe
