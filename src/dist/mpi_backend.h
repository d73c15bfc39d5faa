// The MPI backend's entry points, private to the dist tier: defined by mpi_communicator.cc when
// the library is built with MPI, by no_mpi.cc otherwise.
#pragma once

#include <string>

#include "sparsemoe/dist/communicator.h"

namespace sparsemoe::detail {

// A request with nothing left to do (one process, or an exchange of no bytes).
class Completed : public CommRequest {
 public:
  void wait() override {}
  bool test() override { return true; }
};

bool mpi_available();
// The MPI_COMM_WORLD communicator, initialising MPI on first call.
Communicator* mpi_world();
// Prints the message with this rank's number and ends the whole job with `code`.
[[noreturn]] void mpi_abort(const std::string& message, int code);

}  // namespace sparsemoe::detail
