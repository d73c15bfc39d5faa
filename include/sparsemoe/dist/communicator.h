// The seam between the engine and the processes it runs on: rank and size, an exchange of counts,
// a variable all-to-all of rows (blocking and non-blocking), a sum over ranks, broadcast and
// barrier. Two backends fill it: one process (always built; every collective is a copy or
// nothing) and MPI (built with -DSPARSEMOE_WITH_MPI=ON, chosen when the program was started by
// mpirun). An NCCL backend would fill the same interface.
//
// Determinism: nothing here lets timing decide an order. Rows arrive in rank order. The sum over
// ranks is a fixed pairwise tree (tree_sum below), never the library's reduction, whose order
// may depend on the process count and the message sizes, so that a sum over units spread over P
// ranks gives the same bits as the same sum in one process.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace sparsemoe {

// A failed exchange between processes (the MPI library's own message included).
class CommError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An error every rank of the job raised together (agree()): no rank is left waiting for another,
// so it is reported once (by rank 0) and every process exits normally with the error's status.
class AgreedError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A started non-blocking exchange; wait() completes it (and is idempotent). Destroying an
// unfinished request waits for it: buffers are never freed under a transfer.
class CommRequest {
 public:
  virtual ~CommRequest() = default;
  virtual void wait() = 0;
  // Lets the transfer progress (MPI moves data only inside its calls) and says whether it is done.
  virtual bool test() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "single" or "mpi"

  virtual void barrier() = 0;
  // data [bytes] on `root` is copied to every rank.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  // recv [size * bytes]: rank s's `bytes` bytes land at recv + s * bytes.
  virtual void allgather(const void* send, int64_t bytes, void* recv) = 0;
  // Count exchange: send[d] (one per rank) goes to rank d; recv[s] is what rank s sent here.
  virtual void exchange_counts(const int64_t* send, int64_t* recv) = 0;
  // Variable all-to-all of rows of `row_bytes` bytes: send_rows[d] rows, consecutive in `send`
  // in rank order, go to rank d; recv_rows[s] rows from rank s land consecutively in `recv` in
  // rank order. Buffers must stay alive and untouched until wait().
  std::unique_ptr<CommRequest> start_alltoallv(const void* send, const int64_t* send_rows,
                                               void* recv, const int64_t* recv_rows,
                                               int64_t row_bytes) {
    return start_alltoallv_at(send, send_rows, nullptr, recv, recv_rows, nullptr, row_bytes);
  }
  // The same with each rank's rows at a row offset of its own: send_at[d] in `send` (the block
  // for rank d), recv_at[s] in `recv` (the block from rank s); null: consecutive in rank order.
  // The count and offset arrays are read before the call returns; the rows, until wait().
  virtual std::unique_ptr<CommRequest> start_alltoallv_at(
      const void* send, const int64_t* send_rows, const int64_t* send_at, void* recv,
      const int64_t* recv_rows, const int64_t* recv_at, int64_t row_bytes) = 0;
  void alltoallv(const void* send, const int64_t* send_rows, void* recv, const int64_t* recv_rows,
                 int64_t row_bytes) {
    start_alltoallv(send, send_rows, recv, recv_rows, row_bytes)->wait();
  }
  // Sends `bytes` to `partner` and receives as many from it (partner may be this rank).
  virtual void sendrecv(const void* send, void* recv, int64_t bytes, int partner) = 0;

  // data [n] becomes the sum over ranks of every rank's data, the same bits on every rank: rank
  // blocks combined as a pairwise tree in rank order (tree_sum's top levels), lower block first.
  // The size must be a power of two.
  void allreduce_sum(float* data, int64_t n);
  void allreduce_sum(double* data, int64_t n);
  // The maximum over ranks (exact in any order).
  int64_t allreduce_max(int64_t v);
  int64_t allreduce_sum_exact(int64_t v);  // integers: exact in any order

  // Bytes this process sent through the communicator (counters for `bench`).
  int64_t bytes_sent() const { return bytes_sent_; }

 protected:
  int64_t bytes_sent_ = 0;
};

// Collective: when any rank's `problem` is not empty, every rank throws AgreedError with the
// message of the lowest such rank, prefixed "rank r: ". Lets all ranks refuse bad input together
// before they start work that needs each other.
void agree(Communicator& comm, const std::string& problem);

// `bytes` on `root` replaces `bytes` on every rank, whatever its length there.
void broadcast_bytes(Communicator& comm, std::string& bytes, int root);

// The pairwise tree every cross-unit sum follows: units [0, n) split at n / 2 (rounded down),
// each half summed the same way, left + right. When P ranks (a power of two) hold n / P
// consecutive units each and n is a multiple of P, the top log2(P) levels split exactly at rank
// boundaries, so a rank's local tree_sum followed by allreduce_sum equals tree_sum over all units
// in one process, bit for bit. parts[u] points at unit u's `len` values; out[len] gets the sum
// (out may alias parts[0]).
void tree_sum(const std::vector<const float*>& parts, int64_t len, float* out);
void tree_sum(const std::vector<const double*>& parts, int64_t len, double* out);
// The same tree over parts [n, len] (one after the other), summed into parts[0, len) in place:
// no copies, the other parts overwritten.
void tree_sum_in_place(float* parts, int64_t n, int64_t len);

// The process's communicator: MPI when the library was built with it and the program runs under
// mpirun (or another MPI launcher), else the single-process one. Initialises MPI on first use;
// MPI is finalised at exit.
Communicator& world();
// True when world() would be (or is) the MPI backend.
bool launched_under_mpi();
// The single-process communicator, for tests and for code that must not communicate.
Communicator& single_process();
// Whether this build has the MPI backend.
bool built_with_mpi();

// Ends every process of the job with `code` after printing `message` naming this rank: a rank
// that fails must not leave the others waiting in a collective. Under one process, exits.
[[noreturn]] void abort_job(const std::string& message, int code);

}  // namespace sparsemoe
