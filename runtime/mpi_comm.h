// The MPI engine (OpenMPI): each rank is a process mpirun started, and the Communicator
// interface runs over MPI communicators (one per group, made collectively by its members
// before the first step). MPI has no timeouts of its own: every call is started
// nonblocking and waited for under the timeout; a call that gives up, or an abort, leaves
// the process to exit without finalizing MPI, which makes mpirun stop the whole job (the
// other ranks are killed by mpirun, not told why: read the failing rank's error).
// Sends copy the tensor and return; the copy goes out in the background.
#pragma once

#include <memory>

#include "runtime/communicator.h"

namespace tessel::runtime {

// This process's rank of MPI_COMM_WORLD (initializing MPI, with threads, on first use).
// Throws when MPI cannot start or offers no thread support.
std::unique_ptr<Communicator> mpi_communicator(const CommOptions& options);

}  // namespace tessel::runtime
