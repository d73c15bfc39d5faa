// The single-process communicator, the algorithms built on the backends' primitives (the ordered
// sum over ranks), the pairwise tree, and the choice of backend (see communicator.h).
#include "sparsemoe/dist/communicator.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "mpi_backend.h"
#include "sparsemoe/core/errors.h"

namespace sparsemoe {

namespace {

// One process: every collective is a copy (or nothing), and a rank can only talk to itself.
class SingleProcess : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "single"; }
  void barrier() override {}
  void broadcast(void*, int64_t, int root) override { check_root(root); }
  void allgather(const void* send, int64_t bytes, void* recv) override {
    if (bytes > 0 && send != recv) std::memmove(recv, send, static_cast<size_t>(bytes));
  }
  void exchange_counts(const int64_t* send, int64_t* recv) override { recv[0] = send[0]; }
  std::unique_ptr<CommRequest> start_alltoallv_at(const void* send, const int64_t* send_rows,
                                                  const int64_t* send_at, void* recv,
                                                  const int64_t* recv_rows, const int64_t* recv_at,
                                                  int64_t row_bytes) override {
    check_arg(send_rows[0] == recv_rows[0],
              "alltoallv: one process sends " + std::to_string(send_rows[0]) +
                  " rows to itself but expects " + std::to_string(recv_rows[0]));
    const int64_t bytes = send_rows[0] * row_bytes;
    const char* from = static_cast<const char*>(send) + (send_at ? send_at[0] * row_bytes : 0);
    char* to = static_cast<char*>(recv) + (recv_at ? recv_at[0] * row_bytes : 0);
    if (bytes > 0 && from != to) std::memmove(to, from, static_cast<size_t>(bytes));
    return std::make_unique<detail::Completed>();
  }
  void sendrecv(const void* send, void* recv, int64_t bytes, int partner) override {
    check_root(partner);
    if (bytes > 0 && send != recv) std::memmove(recv, send, static_cast<size_t>(bytes));
  }

 private:
  static void check_root(int r) {
    check_arg(r == 0, "communicator: rank " + std::to_string(r) + " does not exist (1 process)");
  }
};

// Units [lo, hi) of parts (n parts of len values, one after the other) summed into part lo:
// left half into its first part, right half into its first, then left + right, the same
// operation order as the ranks' allreduce_sum for the top levels.
template <class T>
void tree_sum_range(T* parts, int64_t lo, int64_t hi, int64_t len) {
  if (hi - lo < 2) return;
  const int64_t mid = lo + (hi - lo) / 2;
  tree_sum_range(parts, lo, mid, len);
  tree_sum_range(parts, mid, hi, len);
  T* left = parts + lo * len;
  const T* right = parts + mid * len;
  for (int64_t i = 0; i < len; ++i) left[i] = left[i] + right[i];
}

template <class T>
void tree_sum_impl(const std::vector<const T*>& parts, int64_t len, T* out) {
  const int64_t n = static_cast<int64_t>(parts.size());
  check_arg(n >= 1, "tree_sum: expected at least one part");
  if (n == 1) {
    if (out != parts[0]) std::copy_n(parts[0], len, out);
    return;
  }
  std::vector<T> scratch(static_cast<size_t>(n * len));  // one copy, summed in place
  for (int64_t u = 0; u < n; ++u) std::copy_n(parts[u], len, scratch.data() + u * len);
  tree_sum_range(scratch.data(), 0, n, len);
  std::copy_n(scratch.data(), len, out);
}

template <class T>
void allreduce_sum_impl(Communicator& c, T* data, int64_t n) {
  const int P = c.size(), r = c.rank();
  if (P == 1 || n == 0) return;
  check_arg((P & (P - 1)) == 0,
            "allreduce_sum: the number of processes must be a power of two "
            "(the sum follows a fixed pairwise tree), got " +
                std::to_string(P));
  // Recursive doubling: at distance d, ranks r and r ^ d hold the sums of adjacent blocks of d
  // ranks; both form lower + upper, so both get the same bits, which are tree_sum's.
  std::vector<T> other(static_cast<size_t>(n));
  for (int d = 1; d < P; d <<= 1) {
    const int partner = r ^ d;
    c.sendrecv(data, other.data(), n * static_cast<int64_t>(sizeof(T)), partner);
    if (r < partner)
      for (int64_t i = 0; i < n; ++i) data[i] = data[i] + other[i];
    else
      for (int64_t i = 0; i < n; ++i) data[i] = other[i] + data[i];
  }
}

}  // namespace

void tree_sum(const std::vector<const float*>& parts, int64_t len, float* out) {
  tree_sum_impl(parts, len, out);
}
void tree_sum(const std::vector<const double*>& parts, int64_t len, double* out) {
  tree_sum_impl(parts, len, out);
}
void tree_sum_in_place(float* parts, int64_t n, int64_t len) {
  check_arg(n >= 1, "tree_sum_in_place: expected at least one part");
  tree_sum_range(parts, 0, n, len);
}

void agree(Communicator& comm, const std::string& problem) {
  const int P = comm.size();
  std::vector<int64_t> failed(static_cast<size_t>(P));
  const int64_t mine = problem.empty() ? 0 : 1;
  comm.allgather(&mine, sizeof mine, failed.data());
  const auto first = std::find(failed.begin(), failed.end(), 1);
  if (first == failed.end()) return;
  const int who = static_cast<int>(first - failed.begin());
  std::string message = problem;
  broadcast_bytes(comm, message, who);
  throw AgreedError("rank " + std::to_string(who) + ": " + message);
}

void broadcast_bytes(Communicator& comm, std::string& bytes, int root) {
  int64_t n = static_cast<int64_t>(bytes.size());
  comm.broadcast(&n, sizeof n, root);
  bytes.resize(static_cast<size_t>(n));
  if (n > 0) comm.broadcast(bytes.data(), n, root);
}

void Communicator::allreduce_sum(float* data, int64_t n) { allreduce_sum_impl(*this, data, n); }
void Communicator::allreduce_sum(double* data, int64_t n) { allreduce_sum_impl(*this, data, n); }

int64_t Communicator::allreduce_max(int64_t v) {
  std::vector<int64_t> all(static_cast<size_t>(size()));
  allgather(&v, sizeof v, all.data());
  return *std::max_element(all.begin(), all.end());
}

int64_t Communicator::allreduce_sum_exact(int64_t v) {
  std::vector<int64_t> all(static_cast<size_t>(size()));
  allgather(&v, sizeof v, all.data());
  int64_t s = 0;
  for (int64_t x : all) s += x;
  return s;
}

Communicator& single_process() {
  static SingleProcess single;
  return single;
}

bool built_with_mpi() { return detail::mpi_available(); }

bool launched_under_mpi() {
  // Open MPI's launcher sets OMPI_COMM_WORLD_SIZE; PMIx and MPICH-style launchers set these.
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

Communicator& world() {
  static Communicator* w = [] {
    if (built_with_mpi() && launched_under_mpi()) return detail::mpi_world();
    return &single_process();
  }();
  return *w;
}

void abort_job(const std::string& message, int code) {
  if (built_with_mpi() && launched_under_mpi()) detail::mpi_abort(message, code);
  std::fprintf(stderr, "%s\n", message.c_str());
  std::fflush(stderr);
  std::exit(code);
}

}  // namespace sparsemoe
