#include "frontend/api.h"

#include <cstring>
#include <sstream>

#include "frontend/engine.h"
#include "graph/error.h"
#include "planner/cluster.h"
#include "planner/plan_file.h"
#include "ops/registry.h"
#include "runtime/thread_pool.h"

namespace tessel {

SGD::operator OptimizerConfig() const {
  OptimizerConfig c;
  c.kind = "sgd";
  c.lr = lr, c.momentum = momentum, c.weight_decay = weight_decay, c.clip_norm = clip_norm;
  return c;
}

AdamW::operator OptimizerConfig() const {
  OptimizerConfig c;
  c.kind = "adamw";
  c.lr = lr, c.beta1 = beta1, c.beta2 = beta2, c.eps = eps, c.weight_decay = weight_decay, c.clip_norm = clip_norm;
  return c;
}

namespace {
template <class T>
std::vector<std::byte> bytes_of(std::span<const T> v) {
  std::vector<std::byte> b(v.size_bytes());
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}
}  // namespace

Batch& Batch::set(const std::string& input, std::span<const float> values) {
  data_[input] = {DType::f32, bytes_of(values)};
  return *this;
}

Batch& Batch::set(const std::string& input, std::span<const int32_t> values) {
  data_[input] = {DType::i32, bytes_of(values)};
  return *this;
}

const std::vector<std::byte>* Batch::find(const std::string& input, DType dt) const {
  auto it = data_.find(input);
  if (it == data_.end()) return nullptr;
  if (it->second.first != dt)
    throw Error("batch: input '" + input + "' is " + std::string(dtype_name(dt)) + ", the batch gives " +
                std::string(dtype_name(it->second.first)));
  return &it->second.second;
}

namespace {

Graph model_graph(const Model& model, const Tensor& loss) {
  if (!loss.valid() || &loss.model() != &model) throw Error("Trainer: the loss is not a tensor of this model");
  Graph g = model.graph();
  g.set_output("loss", loss.value());
  return g;
}

// Copies a Batch into the engine's inputs, checking each one's size: the whole batch of an
// input (its rows the engine asks for are copied), or exactly those rows.
struct BatchFeeder final : detail::Feeder {
  const Graph& g;
  const Batch& batch;
  int64_t accumulate;  // one device: the graph takes batch / accumulate rows, a microbatch's window
  bool devices;        // the windows are this process's rows (Trainer::rows)
  BatchFeeder(const Graph& graph, const Batch& b, int64_t k, bool d) : g(graph), batch(b), accumulate(k), devices(d) {}
  void feed(const detail::InputFn& input, int64_t) override {
    for (int32_t id : g.nodes_of_kind(OpKind::input)) {
      const Node& n = g.node(id);
      TensorType whole = n.outputs[0];
      if (whole.rank()) whole.shape[0] *= accumulate;
      const std::vector<std::byte>* data = batch.find(n.name, whole.dtype);
      if (!data) throw Error(n.where() + ": the batch has no input '" + n.name + "' " + whole.str());
      const detail::Window w = input(n.name);
      const auto size = static_cast<int64_t>(data->size());
      const int64_t row = whole.rank() && whole.shape[0] ? whole.bytes() / whole.shape[0] : whole.bytes();
      if (devices && size == w.data.bytes() && size != whole.bytes()) {
        if (size) std::memcpy(w.data.data, data->data(), data->size());  // this process's rows only
      } else if (size == whole.bytes()) {
        if (w.data.bytes()) std::memcpy(w.data.data, data->data() + w.first_row * row, static_cast<size_t>(w.data.bytes()));
      } else {
        throw Error(n.where() + ": the batch gives " + std::to_string(size) + " bytes for input '" + n.name + "' " +
                    whole.str() + ", which takes " + std::to_string(whole.bytes()) +
                    (devices && w.data.bytes() != whole.bytes()
                         ? " (or " + std::to_string(w.data.bytes()) + " for the rows [" + std::to_string(w.first_row) +
                               ", " + std::to_string(w.first_row + w.rows()) + ") this process reads)"
                         : std::string()));
      }
    }
  }
};

}  // namespace

Trainer::Trainer(const Model& model, const Tensor& loss, const OptimizerConfig& optimizer, const Devices& devices,
                 const TrainerOptions& options)
    : Trainer(model_graph(model, loss), optimizer, devices, options) {}

Trainer::Trainer(Graph graph, const OptimizerConfig& optimizer, const Devices& devices, const TrainerOptions& options)
    : graph_(std::move(graph)) {
  if (!graph_.output("loss")) throw Error("Trainer: the graph has no 'loss' output");
  role_ = runtime::process_role();
  if (role_ && role_->size == 1) role_.reset();  // a world of one: one device
  if (role_ && devices.count > 1 && devices.count != role_->size)
    throw Error("Trainer: Devices{.count = " + std::to_string(devices.count) + "}, but this process is " + role_->str() +
                ": under a launcher the world is the devices");
  const int64_t count = role_ ? role_->size : devices.count;
  std::string comm = options.comm.empty() ? (role_ ? "gloo" : "inprocess") : options.comm;
  if (comm != "inprocess" && comm != "gloo" && comm != "mpi")
    throw Error("Trainer: unknown engine '" + comm + "' (inprocess, gloo or mpi)");
  if (role_ && comm == "inprocess")
    throw Error("Trainer: this process is " + role_->str() + "; ranks in separate processes talk over gloo or mpi");
  if (!role_ && comm == "mpi") throw Error("Trainer: the mpi engine needs one process per rank, started by mpirun");
  const bool several = count > 1 || !devices.plan_file.empty() || devices.plan_one;
  if (options.accumulate < 1) throw Error("Trainer: accumulate must be >= 1");
  if (several && options.accumulate > 1)
    throw Error("Trainer: on several devices the plan's microbatches accumulate (pin Devices::pins.microbatches)");
  OptimizerConfig oc = optimizer;
  oc.accumulate = 1;  // the executor accumulates microbatches itself
  if (graph_.updates().empty()) add_training(graph_, "loss", oc);
  graph_.verify();
  accumulate_ = options.accumulate;
  batch_ = planner::graph_batch(graph_) * options.accumulate;
  if (several) {
    if (!devices.plan_file.empty()) {
      const planner::PlanFile f = planner::load_plan(devices.plan_file, ops::registry());
      plan_ = device_plan(f, devices.plan_file, count > 1 ? count : 0);
    } else {
      plan_ = plan_for_devices(graph_, count, devices.pins);
    }
    runtime::ExecutorOptions ro;
    ro.seed = options.seed;
    ro.jit = options.jit;
    ro.bucket_bytes = options.bucket_bytes;
    ro.use_blas = options.use_blas;
    ro.overlap = options.overlap;
    ro.timeline = options.timeline;
    runtime::CommOptions co;
    co.timeout_s = options.comm_timeout_s;
    co.engine = comm;
    const planner::ClusterSpec cluster = planner::parse_cluster("local:" + std::to_string(plan_->config.devices()));
    const auto capacity = static_cast<int64_t>(cluster.device.memory_bytes);
    if (role_)
      engine_ = std::make_unique<detail::Devices>(plan_->programs(graph_), plan_->config, graph_, ro, *role_, co,
                                                  options.threads, capacity);
    else
      engine_ = std::make_unique<detail::Devices>(plan_->programs(graph_), plan_->config, graph_, ro, co, options.threads,
                                                  capacity);
  } else {
    if (devices.pins.dp || devices.pins.tp || devices.pins.pp)
      throw Error("Trainer: plan pins (dp, tp, pp) go with Devices{.count = N} for N > 1");
    runtime::ExecutorOptions eo;
    eo.seed = options.seed;
    eo.jit = options.jit;
    eo.use_blas = options.use_blas;
    eo.timeline = options.timeline;
    if (options.threads > 0) pool_ = std::make_unique<runtime::ThreadPool>(options.threads);
    eo.parallel = pool_ ? pool_.get() : &runtime::ThreadPool::shared();
    engine_ = std::make_unique<detail::OneDevice>(graph_, eo, options.accumulate);
  }
}

Trainer::~Trainer() = default;

BatchRows Trainer::rows(const std::string& input) const {
  auto id = graph_.find(input);
  if (!id || graph_.node(*id).def->kind != OpKind::input) throw Error("Trainer: the model has no input '" + input + "'");
  const TensorType& t = graph_.node(*id).outputs[0];
  if (auto* dev = dynamic_cast<const detail::Devices*>(engine_.get())) {
    const runtime::LocalRun::Rows r = dev->rows(input);
    return {r.begin, r.end};
  }
  return {0, t.rank() ? t.shape[0] * accumulate_ : 1};
}

std::string Trainer::report() const {
  if (plan_) return plan_->summary();
  std::ostringstream os;
  os << "one device, batch " << batch_ << "\n";
  return os.str();
}

double Trainer::step(const Batch& batch) {
  BatchFeeder feeder(graph_, batch, plan_ ? 1 : accumulate_, plan_.has_value());
  const double loss = engine_->step(feeder, steps_);
  ++steps_;
  return loss;
}

std::vector<float> Trainer::parameter(const std::string& name) const {
  auto id = graph_.find(name);
  if (!id || graph_.node(*id).def->kind != OpKind::variable) throw Error("Trainer: the model has no parameter '" + name + "'");
  const TensorType& t = graph_.node(*id).outputs[0];
  if (t.dtype != DType::f32) throw Error(graph_.node(*id).where() + ": parameter() reads f32, this is " + t.str());
  const std::vector<std::byte> b = engine_->variable(name, t);
  std::vector<float> v(static_cast<size_t>(t.numel()));
  std::memcpy(v.data(), b.data(), b.size());
  return v;
}

void Trainer::export_variables(Graph& g) const { engine_->export_variables(g); }

}  // namespace tessel
