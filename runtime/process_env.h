// Who this process is in a job of one process per rank, from the variables its launcher
// set, and how it reaches the other ranks. One training command runs unchanged under each:
//
//   tessel launch      TESSEL_RANK, TESSEL_WORLD_SIZE, TESSEL_LOCAL_RANK, TESSEL_LOCAL_WORLD_SIZE,
//                      TESSEL_STORE (tcp:HOST:PORT, served by the launcher), TESSEL_JOB_TOKEN
//   torchrun-style     RANK, WORLD_SIZE (LOCAL_RANK, LOCAL_WORLD_SIZE), MASTER_ADDR, MASTER_PORT:
//                      rank 0 serves the TCP store on MASTER_ADDR:MASTER_PORT
//   mpirun (OpenMPI)   OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE
//   srun (Slurm)       SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_ID, SLURM_STEP_ID
//
// Under mpirun and srun the store is MASTER_ADDR:MASTER_PORT when set (rank 0 serves it),
// else, with every rank on one host, a directory under the temporary directory named by the
// job's id. TESSEL_STORE (tcp:HOST:PORT or file:DIR) and TESSEL_JOB_TOKEN override any of
// these; TESSEL_HOST sets the address this rank's endpoint listens on (default: the one by
// which it reaches the TCP store, or 127.0.0.1).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "runtime/communicator.h"

namespace tessel::runtime {

struct ProcessRole {
  int64_t rank = 0, size = 1;
  int64_t local_rank = 0, local_size = 1;  // among the ranks on this host
  std::string launcher;                    // "tessel launch", "torchrun-style variables", "mpirun", "srun"
  std::string store;                       // "tcp:HOST:PORT" or "file:DIR"
  bool serve_store = false;                // this process serves the TCP store
  bool remove_store = false;               // this process removes the file store's directory at the end
  std::string token;                       // presented to the TCP store
  std::string host;                        // where this rank listens ("" : see above)
  std::string str() const;                 // "rank 1 of 4 (tessel launch)"
};

// The role the environment gives this process; nullopt when no launcher started it.
// `env` looks a variable up (getenv by default; tests pass their own). Throws naming the
// variable when one is malformed or they disagree (a rank outside the world).
using EnvFn = std::function<std::optional<std::string>(const char*)>;
std::optional<ProcessRole> process_role(const EnvFn& env = {});

// Connects this process's rank to the others over options.engine: "gloo" (or empty) meets
// them through the role's store (serving it first where the role says so) and returns once
// every rank has connected, or throws after options.timeout_s naming the store and who never
// arrived; "mpi" (under mpirun) uses MPI_COMM_WORLD (runtime/mpi_comm.h).
std::unique_ptr<Communicator> connect_ranks(const ProcessRole& role, const CommOptions& options);

// The cores each rank of this host should use: TESSEL_THREADS_PER_RANK or OMP_NUM_THREADS
// when set, else the host's cores shared among its ranks.
int threads_per_rank(const ProcessRole& role, const EnvFn& env = {});

}  // namespace tessel::runtime
