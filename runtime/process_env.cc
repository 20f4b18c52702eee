#include "runtime/process_env.h"

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "graph/error.h"
#include "runtime/gloo_comm.h"
#include "runtime/mpi_comm.h"
#include "runtime/tcp_store.h"

namespace tessel::runtime {

namespace {

int64_t int_var(const EnvFn& env, const char* name, int64_t lo) {
  const std::optional<std::string> v = env(name);
  char* end = nullptr;
  const long long x = v ? std::strtoll(v->c_str(), &end, 10) : 0;
  if (!v || v->empty() || *end != 0 || x < lo)
    throw Error(std::string("the launcher's variable ") + name + " is '" + (v ? *v : "") + "', expected an integer >= " +
                std::to_string(lo));
  return x;
}

}  // namespace

std::string ProcessRole::str() const {
  return "rank " + std::to_string(rank) + " of " + std::to_string(size) + " (" + launcher + ")";
}

std::optional<ProcessRole> process_role(const EnvFn& given) {
  const EnvFn env = given ? given : EnvFn([](const char* n) -> std::optional<std::string> {
    const char* v = std::getenv(n);
    return v ? std::optional<std::string>(v) : std::nullopt;
  });
  auto has = [&](const char* n) { return env(n).has_value(); };
  ProcessRole r;
  // Which launcher, from the most specific variables to the most generic.
  const char *rank = nullptr, *size = nullptr, *local_rank = nullptr, *local_size = nullptr;
  std::string job;
  if (has("TESSEL_RANK")) {
    r.launcher = "tessel launch";
    rank = "TESSEL_RANK", size = "TESSEL_WORLD_SIZE", local_rank = "TESSEL_LOCAL_RANK", local_size = "TESSEL_LOCAL_WORLD_SIZE";
  } else if (has("RANK") && has("WORLD_SIZE")) {
    r.launcher = "torchrun-style variables";
    rank = "RANK", size = "WORLD_SIZE", local_rank = "LOCAL_RANK", local_size = "LOCAL_WORLD_SIZE";
  } else if (has("OMPI_COMM_WORLD_RANK")) {
    r.launcher = "mpirun";
    rank = "OMPI_COMM_WORLD_RANK", size = "OMPI_COMM_WORLD_SIZE", local_rank = "OMPI_COMM_WORLD_LOCAL_RANK",
    local_size = "OMPI_COMM_WORLD_LOCAL_SIZE";
    job = env("PMIX_NAMESPACE").value_or(env("OMPI_MCA_orte_ess_jobid").value_or(""));
  } else if (has("SLURM_PROCID") && has("SLURM_NTASKS") && has("SLURM_STEP_ID")) {
    // SLURM_PROCID alone is also set inside an sbatch script's shell: a step (srun) has a step id.
    r.launcher = "srun";
    rank = "SLURM_PROCID", size = "SLURM_NTASKS", local_rank = "SLURM_LOCALID";
    job = env("SLURM_JOB_ID").value_or("") + "." + env("SLURM_STEP_ID").value_or("");
  } else {
    return std::nullopt;
  }
  r.rank = int_var(env, rank, 0);
  r.size = int_var(env, size, 1);
  if (r.rank >= r.size)
    throw Error(std::string(rank) + "=" + std::to_string(r.rank) + " is outside the world of " + size + "=" +
                std::to_string(r.size));
  r.local_rank = has(local_rank) ? int_var(env, local_rank, 0) : r.rank;
  if (local_size && has(local_size)) r.local_size = int_var(env, local_size, 1);
  else if (r.launcher == "srun") r.local_size = env("SLURM_NNODES") == std::optional<std::string>("1") ? r.size : 1;
  else r.local_size = r.size;  // unknown: as if every rank shared this host (fewer threads, never too many)
  r.token = env("TESSEL_JOB_TOKEN").value_or("");
  r.host = env("TESSEL_HOST").value_or("");

  if (auto s = env("TESSEL_STORE")) {
    if (s->rfind("tcp:", 0) != 0 && s->rfind("file:", 0) != 0)
      throw Error("TESSEL_STORE is '" + *s + "': expected tcp:HOST:PORT or file:DIR");
    r.store = *s;
    // A launcher that names the store serves it; a user who sets TESSEL_STORE=tcp:... by
    // hand without one gets rank 0 to serve it.
    r.serve_store = r.store.rfind("tcp:", 0) == 0 && r.rank == 0 && !has("TESSEL_STORE_SERVED");
  } else if (has("MASTER_ADDR") || has("MASTER_PORT")) {
    if (!has("MASTER_ADDR") || !has("MASTER_PORT"))
      throw Error("MASTER_ADDR and MASTER_PORT go together (rank 0's address and a free port on it)");
    r.store = "tcp:" + *env("MASTER_ADDR") + ":" + *env("MASTER_PORT");
    r.serve_store = r.rank == 0;
  } else if (r.launcher == "mpirun" || r.launcher == "srun") {
    if (r.local_size != r.size)
      throw Error(r.str() + ": the ranks span several hosts; set MASTER_ADDR and MASTER_PORT (rank 0's host and a "
                            "free port on it) for them to meet");
    if (job.empty() || job == ".") throw Error(r.str() + ": no job id in the environment to name the ranks' meeting place");
    r.store = "file:" + (std::filesystem::temp_directory_path() / ("tessel-job-" + job)).string();
    r.remove_store = r.rank == 0;
  } else {
    throw Error(r.str() + ": no meeting place for the ranks; set MASTER_ADDR and MASTER_PORT (rank 0 serves a store "
                          "there), or TESSEL_STORE=tcp:HOST:PORT|file:DIR");
  }
  if (r.store.rfind("tcp:", 0) == 0) parse_host_port(r.store.substr(4), "the store " + r.store);
  return r;
}

int threads_per_rank(const ProcessRole& role, const EnvFn& given) {
  const EnvFn env = given ? given : EnvFn([](const char* n) -> std::optional<std::string> {
    const char* v = std::getenv(n);
    return v ? std::optional<std::string>(v) : std::nullopt;
  });
  for (const char* name : {"TESSEL_THREADS_PER_RANK", "OMP_NUM_THREADS"})
    if (env(name)) return static_cast<int>(int_var(env, name, 1));
  const int64_t cores = std::max(1u, std::thread::hardware_concurrency());
  return static_cast<int>(std::max<int64_t>(1, cores / std::max<int64_t>(1, role.local_size)));
}

std::unique_ptr<Communicator> connect_ranks(const ProcessRole& role, const CommOptions& options) {
  if (options.engine == "mpi") {
    if (role.launcher != "mpirun" && role.launcher != "srun")
      throw Error(role.str() + ": the mpi engine runs under mpirun (or srun --mpi=pmix)");
    auto c = mpi_communicator(options);
    if (c->rank() != role.rank || c->size() != role.size)
      throw Error(role.str() + ", but MPI says rank " + std::to_string(c->rank()) + " of " + std::to_string(c->size()));
    return c;
  }
  if (options.engine != "gloo" && !options.engine.empty())
    throw Error(role.str() + ": ranks in separate processes talk over gloo or mpi, not " + options.engine);
  GlooOptions go;
  go.timeout_s = options.timeout_s;
  std::shared_ptr<GlooRendezvous> rdv;
  if (role.store.rfind("tcp:", 0) == 0) {
    const auto [host, port] = parse_host_port(role.store.substr(4), "the store " + role.store);
    std::shared_ptr<TcpStoreServer> server;
    if (role.serve_store) server = std::make_shared<TcpStoreServer>(host, port, role.token);
    auto client = std::make_shared<TcpStoreClient>(host, port, role.token, options.timeout_s);
    go.hostname = role.host.empty() ? client->local_address() : role.host;
    rdv = gloo_tcp_rendezvous(std::move(client), server);
  } else {
    const std::string dir = role.store.substr(5);
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw Error("the store directory " + dir + ": " + ec.message());
    std::shared_ptr<void> cleanup;
    if (role.remove_store)
      cleanup = std::shared_ptr<void>(nullptr, [dir](void*) {
        std::error_code e;
        std::filesystem::remove_all(dir, e);
      });
    rdv = gloo_file_rendezvous(dir, cleanup);
    go.hostname = role.host.empty() ? "127.0.0.1" : role.host;
  }
  // A process may connect several worlds one after another (a test suite, a verify after a
  // training run): the n-th of every process meet under their own keys.
  static std::atomic<int64_t> worlds{0};
  return gloo_communicator(role.rank, role.size, gloo_world_rendezvous(std::move(rdv), worlds++), go);
}

}  // namespace tessel::runtime
