// The MPI backend of the communicator (see communicator.h): MPI_COMM_WORLD, initialised on first
// use with MPI_THREAD_FUNNELED (only the main thread calls MPI; OpenMP threads never do) and
// finalised at exit. Rows travel as a contiguous datatype of one row, so counts are rows and a
// transfer is not limited to 2 GiB; counts past INT_MAX rows are refused with a clear error.
#include <mpi.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "mpi_backend.h"
#include "sparsemoe/core/errors.h"

namespace sparsemoe::detail {

namespace {

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw CommError(std::string("MPI ") + what + " failed: " + std::string(text, len));
}

int as_int(int64_t v, const char* what) {
  check_arg(v >= 0 && v <= INT_MAX, std::string(what) + ": expected a count in [0, " +
                                        std::to_string(INT_MAX) + "], got " + std::to_string(v));
  return static_cast<int>(v);
}

// A contiguous datatype of `bytes` bytes, freed with the object.
struct RowType {
  MPI_Datatype type = MPI_DATATYPE_NULL;
  explicit RowType(int64_t bytes) {
    check_mpi(MPI_Type_contiguous(as_int(bytes, "row bytes"), MPI_BYTE, &type), "Type_contiguous");
    check_mpi(MPI_Type_commit(&type), "Type_commit");
  }
  ~RowType() {
    if (type != MPI_DATATYPE_NULL) MPI_Type_free(&type);
  }
  RowType(const RowType&) = delete;
  RowType& operator=(const RowType&) = delete;
};

class MpiRequest : public CommRequest {
 public:
  MpiRequest(int64_t row_bytes, int ranks) : type(row_bytes), counts(4 * ranks) {}
  ~MpiRequest() override {
    if (request != MPI_REQUEST_NULL) MPI_Wait(&request, MPI_STATUS_IGNORE);
  }
  void wait() override {
    if (request != MPI_REQUEST_NULL) check_mpi(MPI_Wait(&request, MPI_STATUS_IGNORE), "Wait");
  }
  bool test() override {
    int done = 1;
    if (request != MPI_REQUEST_NULL)
      check_mpi(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "Test");
    return done != 0;
  }
  RowType type;
  std::vector<int> counts;  // send counts, send displacements, receive counts, receive displs
  MPI_Request request = MPI_REQUEST_NULL;
};

class Mpi : public Communicator {
 public:
  Mpi() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "Init");
      std::atexit([] {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
      });
    }
    // Errors come back as return codes, turned into exceptions naming the call; the program's
    // top level then ends the whole job (abort_job) instead of leaving the other ranks waiting.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  void barrier() override { check_mpi(MPI_Barrier(MPI_COMM_WORLD), "Barrier"); }

  void broadcast(void* data, int64_t bytes, int root) override {
    check_rank(root);
    if (bytes <= 0) return;
    RowType row(bytes);
    check_mpi(MPI_Bcast(data, 1, row.type, root, MPI_COMM_WORLD), "Bcast");
    if (rank_ == root) bytes_sent_ += bytes * (size_ - 1);
  }

  void allgather(const void* send, int64_t bytes, void* recv) override {
    if (bytes <= 0) return;
    RowType row(bytes);
    check_mpi(MPI_Allgather(send == recv ? MPI_IN_PLACE : send, 1, row.type, recv, 1, row.type,
                            MPI_COMM_WORLD),
              "Allgather");
    bytes_sent_ += bytes * (size_ - 1);
  }

  void exchange_counts(const int64_t* send, int64_t* recv) override {
    check_mpi(MPI_Alltoall(send, 1, MPI_INT64_T, recv, 1, MPI_INT64_T, MPI_COMM_WORLD), "Alltoall");
    bytes_sent_ += 8 * (size_ - 1);
  }

  std::unique_ptr<CommRequest> start_alltoallv_at(const void* send, const int64_t* send_rows,
                                                  const int64_t* send_at, void* recv,
                                                  const int64_t* recv_rows, const int64_t* recv_at,
                                                  int64_t row_bytes) override {
    if (row_bytes <= 0) return std::make_unique<Completed>();
    auto req = std::make_unique<MpiRequest>(row_bytes, size_);
    int* sc = req->counts.data();
    int* sd = sc + size_;
    int* rc = sd + size_;
    int* rd = rc + size_;
    int64_t soff = 0, roff = 0;
    for (int p = 0; p < size_; ++p) {
      sc[p] = as_int(send_rows[p], "alltoallv send rows");
      rc[p] = as_int(recv_rows[p], "alltoallv receive rows");
      sd[p] = as_int(send_at ? send_at[p] : soff, "alltoallv send offset");
      rd[p] = as_int(recv_at ? recv_at[p] : roff, "alltoallv receive offset");
      soff += send_rows[p], roff += recv_rows[p];
      if (p != rank_) bytes_sent_ += send_rows[p] * row_bytes;
    }
    check_mpi(MPI_Ialltoallv(send, sc, sd, req->type.type, recv, rc, rd, req->type.type,
                             MPI_COMM_WORLD, &req->request),
              "Ialltoallv");
    return req;
  }

  void sendrecv(const void* send, void* recv, int64_t bytes, int partner) override {
    check_rank(partner);
    if (bytes <= 0) return;
    if (partner == rank_) {
      if (send != recv) std::memmove(recv, send, static_cast<size_t>(bytes));
      return;
    }
    // In pieces of at most 1 GiB: MPI counts are ints.
    constexpr int64_t kPiece = int64_t{1} << 30;
    for (int64_t off = 0; off < bytes; off += kPiece) {
      const int n = static_cast<int>(std::min(kPiece, bytes - off));
      check_mpi(MPI_Sendrecv(static_cast<const char*>(send) + off, n, MPI_BYTE, partner, 7,
                             static_cast<char*>(recv) + off, n, MPI_BYTE, partner, 7,
                             MPI_COMM_WORLD, MPI_STATUS_IGNORE),
                "Sendrecv");
    }
    bytes_sent_ += bytes;
  }

 private:
  void check_rank(int r) const {
    check_arg(r >= 0 && r < size_, "communicator: rank " + std::to_string(r) + " does not exist (" +
                                       std::to_string(size_) + " processes)");
  }
  int rank_ = 0, size_ = 1;
};

}  // namespace

bool mpi_available() { return true; }

Communicator* mpi_world() {
  static Mpi world;
  return &world;
}

void mpi_abort(const std::string& message, int code) {
  int initialized = 0, finalized = 0, rank = -1;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::fprintf(stderr, "sparsemoe: rank %d failed: %s\n", rank, message.c_str());
  std::fflush(stderr);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, code == 0 ? 1 : code);
  std::exit(code);
}

}  // namespace sparsemoe::detail
