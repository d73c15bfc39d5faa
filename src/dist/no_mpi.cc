// A build without MPI: the single-process communicator is the only one (see mpi_backend.h).
#include <cstdlib>

#include "mpi_backend.h"
#include "sparsemoe/core/errors.h"

namespace sparsemoe::detail {

bool mpi_available() { return false; }

Communicator* mpi_world() {
  throw InvalidArgument(
      "this sparsemoe was built without MPI: reconfigure with -DSPARSEMOE_WITH_MPI=ON");
}

void mpi_abort(const std::string&, int code) { std::exit(code); }

}  // namespace sparsemoe::detail
