#include "frontend/trainer.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <set>
#include <functional>
#include <memory>
#include <numeric>
#include <optional>
#include <sstream>
#include <tuple>

#include "frontend/distributed.h"
#include "frontend/api.h"
#include "frontend/engine.h"
#include "frontend/models.h"
#include "frontend/progress.h"
#include "frontend/timeline.h"
#include "graph/error.h"
#include "graph/text.h"
#include "graph/serialize.h"
#include "ops/registry.h"
#include "planner/cost.h"
#include "runtime/data.h"
#include "planner/cluster.h"
#include "planner/plan_file.h"
#include "runtime/block_copy.h"
#include "runtime/checkpoint.h"
#include "runtime/safetensors.h"
#include "runtime/executor.h"
#include "runtime/local_run.h"
#include "runtime/thread_pool.h"

namespace tessel {

using detail::Engine;
using detail::Feeder;
using detail::InputFn;
using detail::Window;
using detail::read_scalar;

namespace {

using Clock = std::chrono::steady_clock;



bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::string input_for_role(const Graph& g, const std::string& role, const std::map<std::string, std::string>& overrides) {
  std::vector<std::string> marked;
  for (auto& [name, r] : overrides) {
    if (r != role) continue;
    auto id = g.find(name);
    if (!id || g.node(*id).def->kind != OpKind::input)
      throw Error("--input " + name + "=" + role + ": the model has no input '" + name + "'");
    marked.push_back(name);
  }
  if (marked.empty())
    for (int32_t id : g.nodes_of_kind(OpKind::input)) {
      const Node& n = g.node(id);
      if (overrides.count(n.name)) continue;  // given another role
      if (n.attrs.has("role") && n.attrs.get_str("role") == role) marked.push_back(n.name);
    }
  if (marked.size() > 1) {
    std::string all;
    for (auto& m : marked) all += (all.empty() ? "" : ", ") + m;
    throw Error("the model has several inputs for role '" + role + "' (" + all + "): choose one with --input NAME=" + role);
  }
  if (!marked.empty()) return marked[0];
  // Graphs made without roles: the conventional name.
  const std::string name = role == "data" ? "x" : role;
  auto id = g.find(name);
  if (id && g.node(*id).def->kind == OpKind::input && !overrides.count(name)) return name;
  std::string inputs;
  for (int32_t i : g.nodes_of_kind(OpKind::input)) inputs += (inputs.empty() ? "" : ", ") + g.node(i).name;
  throw Error("the model has no input for role '" + role + "' (its inputs: " + inputs + "); mark one with --input NAME=" +
              role);
}

namespace {

// The shapes a dataset feeds; checked against the model before anything runs.
void expect_input(const Graph& g, const std::string& name, DType dt, const Shape& shape, const std::string& why) {
  auto id = g.find(name);
  if (!id || g.node(*id).def->kind != OpKind::input)
    throw Error("the model has no input '" + name + "', which " + why + " feeds");
  const TensorType& t = g.node(*id).outputs[0];
  if (t.dtype != dt || t.shape != shape)
    throw Error(g.node(*id).where() + ": " + why + " feeds " + TensorType{dt, shape}.str() +
                " but the input is " + t.str());
}

// The inputs a dataset feeds, by role.
struct Bound {
  std::string data = "x", labels = "labels", tokens = "tokens", targets = "targets";
};

// Global batch b of an epoch's shuffle; each input gets the rows its window asks for.
struct ImageFeeder final : Feeder {
  const runtime::ImageDataset& data;
  runtime::BatchSampler sampler;
  int64_t per_epoch;
  int64_t epoch = -1;
  Bound names;
  ImageFeeder(const runtime::ImageDataset& d, int64_t batch, uint64_t seed, Bound b)
      : data(d), sampler(d.count, batch, seed), per_epoch(sampler.batches_per_epoch()), names(std::move(b)) {}
  void feed(const InputFn& input, int64_t step) override {
    if (step / per_epoch != epoch) {
      epoch = step / per_epoch;
      sampler.set_epoch(epoch);
    }
    const std::span<const int64_t> idx = sampler.batch(step % per_epoch);
    const Window x = input(names.data), y = input(names.labels);
    runtime::gather_images(data, idx.subspan(static_cast<size_t>(x.first_row), static_cast<size_t>(x.rows())),
                           x.data.as<float>());
    runtime::gather_labels(data, idx.subspan(static_cast<size_t>(y.first_row), static_cast<size_t>(y.rows())),
                           y.data.as<int32_t>());
  }
};

// Windows of the corpus, each chosen by its sample's index in the global batch.
struct TextFeeder final : Feeder {
  const runtime::TextDataset& data;
  int64_t seq;
  uint64_t seed;
  Bound names;
  TextFeeder(const runtime::TextDataset& d, int64_t s, uint64_t sd, Bound n)
      : data(d), seq(s), seed(sd), names(std::move(n)) {}
  void feed(const InputFn& input, int64_t step) override {
    const Window x = input(names.tokens), y = input(names.targets);
    if (x.first_row == y.first_row && x.rows() == y.rows()) {
      data.fill_rows(false, seed, step, x.first_row, x.rows(), seq, x.data.as<int32_t>(), y.data.as<int32_t>());
      return;
    }
    data.fill_rows(false, seed, step, x.first_row, x.rows(), seq, x.data.as<int32_t>(), nullptr);
    data.fill_rows(false, seed, step, y.first_row, y.rows(), seq, nullptr, y.data.as<int32_t>());
  }
};

// --init: the parameters from a safetensors file, named by the rule of TrainOptions::init.
void load_init(Engine& engine, const Graph& g, const std::string& path, const std::string& map_path, std::ostream& log,
               bool quiet) {
  struct Source {
    std::string name;
    bool transpose = false;
  };
  std::map<std::string, Source> map;
  if (!map_path.empty()) {
    std::ifstream in(map_path);
    if (!in) throw Error(map_path + ": cannot open the --init-map file");
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      if (auto h = line.find('#'); h != std::string::npos) line.erase(h);
      std::istringstream ls(line);
      std::string to, eq, from, flag, extra;
      if (!(ls >> to)) continue;
      if (!(ls >> eq >> from) || eq != "=" || ((ls >> flag) && flag != "transpose") || (ls >> extra))
        throw Error(map_path + ":" + std::to_string(n) + ": expected `TESSEL_NAME = FILE_NAME [transpose]`, got: " + line);
      if (!g.find(to) || g.node(*g.find(to)).op != "parameter")
        throw Error(map_path + ":" + std::to_string(n) + ": the model has no parameter '" + to + "'");
      map[to] = Source{from, flag == "transpose"};
    }
  }
  const runtime::safetensors::Reader file(path);
  const auto blocks = engine.variable_blocks();
  std::set<std::string> used;
  std::vector<std::string> missing;
  for (int32_t id : g.parameters()) {
    const Node& p = g.node(id);
    const TensorType& want = p.outputs[0];
    Source src{p.name, false};
    if (auto it = map.find(p.name); it != map.end()) {
      src = it->second;
    } else if (!file.find(p.name)) {
      std::string dotted = p.name;
      std::replace(dotted.begin(), dotted.end(), '/', '.');
      src.name = dotted;
    }
    const runtime::safetensors::TensorInfo* t = file.find(src.name);
    if (!t) {
      missing.push_back(p.name);
      continue;
    }
    used.insert(src.name);
    Shape expect = want.shape;
    if (src.transpose) {
      if (expect.size() != 2) throw Error(map_path + ": '" + p.name + "' is " + want.str() + ": only a 2-D tensor can be transposed");
      std::swap(expect[0], expect[1]);
    }
    if (t->dtype != want.dtype || t->shape != expect)
      throw Error(path + ": '" + src.name + "' is " + std::string(runtime::safetensors::dtype_code(t->dtype)) +
                  shape_str(t->shape) + ", but the model's '" + p.name + "' needs " +
                  std::string(runtime::safetensors::dtype_code(want.dtype)) + shape_str(expect) +
                  (t->shape.size() == 2 && t->shape[0] == want.shape[1] && t->shape[1] == want.shape[0]
                       ? " (PyTorch's [out, in]? map it with `" + p.name + " = " + src.name + " transpose` in --init-map)"
                       : ""));
    std::vector<std::byte> whole(static_cast<size_t>(want.bytes()));
    file.read(*t, whole.data());
    if (src.transpose) {
      std::vector<std::byte> flipped(whole.size());
      const size_t es = dtype_size(want.dtype);
      const int64_t rows = want.shape[0], cols = want.shape[1];  // tessel's [rows, cols] from the file's [cols, rows]
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c)
          std::memcpy(&flipped[static_cast<size_t>(r * cols + c) * es], &whole[static_cast<size_t>(c * rows + r) * es], es);
      whole.swap(flipped);
    }
    for (const auto& rank : blocks)
      for (const runtime::Shard& b : rank)
        if (b.name == p.name)
          runtime::copy_block(whole.data(), want.shape, b.offsets, static_cast<std::byte*>(const_cast<void*>(b.data)), b.shape,
                              std::vector<int64_t>(b.shape.size(), 0), b.shape, dtype_size(want.dtype));
  }
  if (!missing.empty()) {
    std::string names;
    for (size_t i = 0; i < std::min<size_t>(5, missing.size()); ++i) names += (i ? ", " : "") + missing[i];
    std::string have;
    for (size_t i = 0; i < std::min<size_t>(5, file.tensors().size()); ++i) have += (i ? ", " : "") + file.tensors()[i].name;
    throw Error(path + ": no tensor for " + std::to_string(missing.size()) + " of the model's parameters (" + names +
                (missing.size() > 5 ? ", ..." : "") + "); the file has " + have +
                (file.tensors().size() > 5 ? ", ..." : "") + ": name them in --init-map");
  }
  if (!quiet) {
    log << "tessel: parameters from " << path;
    if (used.size() < file.tensors().size()) log << " (" << file.tensors().size() - used.size() << " of its tensors unused)";
    log << "\n";
  }
}

}  // namespace

std::string TrainReport::json() const {
  std::ostringstream os;
  os << "{\"model\":" << json_quote(model) << ",\"steps\":" << steps << ",\"samples\":" << samples
     << ",\"final_loss\":" << json_number(final_loss) << ",\"last_loss\":" << json_number(last_loss)
     << ",\"resumed_step\":" << resumed_step << ",\"checkpoints\":" << checkpoints
     << ",\"checkpoint_copy_seconds\":" << json_number(checkpoint_copy_seconds)
     << ",\"test_accuracy\":" << json_number(test_accuracy)
     << ",\"test_loss\":" << json_number(test_loss) << ",\"unigram_entropy\":" << json_number(unigram_entropy)
     << ",\"samples_per_s\":" << json_number(samples_per_s) << ",\"step_ms_median\":" << json_number(step_ms_median)
     << ",\"train_seconds\":" << json_number(train_seconds) << ",\"parameters\":" << parameters
     << ",\"memory_bytes\":" << memory_bytes << ",\"devices\":" << devices << ",\"plan\":" << json_quote(plan)
     << ",\"jit_kernels\":" << jit_kernels << ",\"jit_compiled\":" << jit_compiled
     << ",\"jit_seconds\":" << json_number(jit_seconds) << ",\"startup_seconds\":" << json_number(startup_seconds);
  if (!predicted_vs_measured.empty()) os << "," << predicted_vs_measured;
  if (!trace.empty()) os << ",\"trace\":" << json_quote(trace);
  if (!tuned.empty()) {
    os << ",\"tune_seconds\":" << json_number(tune_seconds) << ",\"tuned\":[";
    for (size_t i = 0; i < tuned.size(); ++i)
      os << (i ? "," : "") << "{\"plan\":" << json_quote(tuned[i].plan) << ",\"predicted_ms\":" << json_number(tuned[i].predicted_ms)
         << ",\"measured_ms\":" << json_number(tuned[i].measured_ms) << "}";
    os << "]";
  }
  os << "}";
  return os.str();
}

TrainReport train(const TrainOptions& opt, std::ostream& log) {
  const Clock::time_point started = Clock::now();
  TrainReport report;
  OptimizerConfig ocfg = opt.optimizer;
  const bool from_file = ends_with(opt.model, ".tsg") || ends_with(opt.model, ".tsg.txt") ||
                         opt.model.find(':') == std::string::npos;
  const bool images = opt.dataset == "fashion-mnist";
  const bool text = opt.dataset.rfind("text:", 0) == 0;
  if (!images && !text)
    throw Error("unknown dataset '" + opt.dataset + "' (fashion-mnist, or text:FILE for byte-level language modelling)");
  if (opt.epochs < 0 || opt.steps < 0) throw Error("--epochs and --steps must be >= 0");
  if (opt.epochs > 0 && opt.steps > 0) throw Error("give --epochs or --steps, not both");

  // Data first: a missing file should fail before any model is built.
  std::optional<runtime::TrainTest> mnist;
  std::optional<runtime::TextDataset> corpus;
  if (images) mnist = runtime::load_fashion_mnist(opt.data_dir.empty() ? runtime::kFashionMnistDir : opt.data_dir);
  if (text) {
    corpus = runtime::TextDataset::load(opt.dataset.substr(5));
    report.unigram_entropy = corpus->unigram_entropy();
  }

  // The model, at microbatch size, and the forward graph kept apart for saving.
  std::optional<models::Built> built;
  std::optional<Graph> loaded;
  int64_t batch = opt.batch;
  // Under a launcher this process is one rank of its world, which is the device count.
  std::optional<runtime::ProcessRole> role = runtime::process_role();
  if (role && role->size == 1) role.reset();
  if (role && opt.devices > 0 && opt.devices != role->size)
    throw Error("--devices " + std::to_string(opt.devices) + ", but this process is " + role->str() +
                ": under a launcher the world is the devices (drop --devices)");
  const int64_t devices = role ? role->size : opt.devices;
  const bool multi = devices > 0;
  // Rank 0 shows progress and the report; every rank trains, and reports errors.
  const bool quiet = opt.quiet || (role && role->rank != 0);
  // On simulated devices the graph takes the whole batch and the plan splits it into
  // microbatches (--accumulate pins their number); on one device the graph takes one
  // microbatch and accumulates gradients itself.
  int64_t k = ocfg.accumulate;
  planner::Pins pins = opt.pins;
  std::optional<DevicePlan> plan;
  if (multi) {
    if (batch <= 0 && !from_file) batch = 64;
    if (k > 1) {
      if (pins.microbatches && *pins.microbatches != k)
        throw Error("--accumulate " + std::to_string(k) + " and --microbatches " + std::to_string(*pins.microbatches) +
                    " disagree (on devices, --accumulate pins the microbatches)");
      pins.microbatches = k;
    }
    k = 1;
    ocfg.accumulate = 1;
  }
  if (from_file) {
    loaded.emplace(load_graph(opt.model, ops::registry()));
    const int64_t graph_batch = planner::graph_batch(*loaded);
    if (batch > 0 && batch != graph_batch * k)
      throw Error(opt.model + ": the graph was built for batch " + std::to_string(graph_batch) +
                  (k > 1 ? " per microbatch" : "") + "; --batch " + std::to_string(batch) + " does not match");
    batch = graph_batch * k;
    report.model = opt.model;
  } else {
    if (batch <= 0) batch = 64;
    if (batch % k != 0)
      throw Error("--batch " + std::to_string(batch) + " is not divisible by --accumulate " + std::to_string(k));
    built.emplace(models::from_spec(opt.model, batch / k, true));
    report.model = built->description;
  }
  Graph& graph = from_file ? *loaded : built->model->graph();
  const int64_t micro = batch / k;
  Bound names;
  if (images) {
    names.data = input_for_role(graph, "data", opt.input_roles);
    names.labels = input_for_role(graph, "labels", opt.input_roles);
  } else {
    names.tokens = input_for_role(graph, "tokens", opt.input_roles);
    names.targets = input_for_role(graph, "targets", opt.input_roles);
  }

  int64_t seq = 0;
  if (images) {
    const auto& tr = mnist->train;
    expect_input(graph, names.data, DType::f32, {micro, tr.features()}, "fashion-mnist");
    expect_input(graph, names.labels, DType::i32, {micro}, "fashion-mnist");
    auto logits = graph.output("logits");
    if (!logits || graph.type(*logits).shape != Shape{micro, tr.num_classes})
      throw Error("the model's 'logits' output must be [" + std::to_string(micro) + "," +
                  std::to_string(tr.num_classes) + "] for fashion-mnist");
  } else {
    const Node& tokens = graph.node(*graph.find(names.tokens));
    if (tokens.outputs[0].rank() != 2)
      throw Error(tokens.where() + ": a text dataset feeds tokens [batch, seq], the input is " + tokens.outputs[0].str());
    seq = tokens.outputs[0].shape[1];
    expect_input(graph, names.tokens, DType::i32, {micro, seq}, "a text dataset");
    expect_input(graph, names.targets, DType::i32, {micro, seq}, "a text dataset");
    auto logits = graph.output("logits");
    if (!logits || graph.type(*logits).shape.back() < 256)
      throw Error("a byte-level text dataset needs a vocabulary of at least 256");
  }
  if (!graph.output("loss")) throw Error("the model has no 'loss' output");

  if (!opt.splits.empty()) pins.splits = split_pins(graph, opt.splits);
  const Graph forward = graph;  // before optimizer nodes: what --save writes
  const bool has_updates = !graph.updates().empty();
  if (multi && !opt.plan_file.empty()) {
    const planner::PlanFile f = planner::load_plan(opt.plan_file, ops::registry());
    if (f.global_batch != batch)
      throw Error(opt.plan_file + " was planned for batch " + std::to_string(f.global_batch) + ", not " +
                  std::to_string(batch) + " (give --batch " + std::to_string(f.global_batch) + ")");
  }
  // The Trainer API does the rest: gradients and optimizer, the plan, the engine.
  TrainerOptions to;
  to.seed = opt.seed;
  to.jit = opt.jit;
  to.threads = opt.threads;
  to.bucket_bytes = opt.bucket_bytes;
  to.comm_timeout_s = opt.comm_timeout_s;
  to.comm = opt.comm;
  to.use_blas = opt.use_blas;
  to.overlap = opt.overlap;
  to.accumulate = multi ? 1 : k;
  to.timeline = true;  // the measured parts of a step, and --trace
  if (opt.tune > 0) {
    // The simulator ranks the plans; the best `tune` of them each run a few steps on this
    // data, and the fastest measured is trained (from the start: the trial steps are discarded).
    if (!multi || role) throw Error("--tune goes with --devices N (plans tried in this process)");
    if (!opt.plan_file.empty()) throw Error("--tune and --plan: give one (--tune chooses the plan)");
    const auto t0 = Clock::now();
    Graph training = graph;
    if (training.updates().empty()) add_training(training, "loss", ocfg);
    // Plans that differ in their layout (degrees, ZeRO stage, microbatches), best predicted first:
    // variants the simulator sees as equal (recomputation where nothing is short of memory)
    // would spend the trial on noise.
    const DevicePlan searched = plan_for_devices(training, devices, pins, static_cast<int>(8 * opt.tune));
    std::vector<planner::PlanEstimate> candidates{searched.search.best};
    auto key = [](const planner::PlanConfig& c) { return std::make_tuple(c.dp, c.tp, c.pp, c.zero, c.microbatches); };
    for (const auto& a : searched.search.alternatives) {
      if (!a.estimate.fits || static_cast<int64_t>(candidates.size()) >= opt.tune) continue;
      bool seen = false;
      for (const auto& c : candidates) seen |= key(c.config) == key(a.estimate.config);
      if (!seen) candidates.push_back(a.estimate);
    }
    // Each named as it will train: a pipeline's layers per stage are pinned with it.
    for (auto& c : candidates)
      if (c.config.pp > 1 && c.config.stage_layers.empty()) c.config.stage_layers = pins_for(c.config, c.stages).stage_layers;
    std::unique_ptr<Feeder> trial_feed;
    if (images) trial_feed = std::make_unique<ImageFeeder>(mnist->train, batch, opt.seed, names);
    else trial_feed = std::make_unique<TextFeeder>(*corpus, seq, opt.seed, names);
    // Three passes over the candidates, every other one in reverse order, so that a machine
    // speeding up or slowing down over the trial favours none of them; in each pass a plan runs
    // 5 timed steps or more, until they add up to kPassS; its figure is the median of its timed
    // steps over all passes. (Two passes of 5 steps could not tell 12 % apart on a noisy host.)
    constexpr int kWarm = 2, kTimed = 5, kMaxTimed = 50, kPasses = 3;
    constexpr double kPassS = 0.2;
    std::vector<std::vector<double>> ms(candidates.size());
    std::vector<char> failed(candidates.size(), 0);
    for (int pass = 0; pass < kPasses; ++pass)
      for (size_t k = 0; k < candidates.size(); ++k) {
        const size_t i = pass % 2 ? candidates.size() - 1 - k : k;
        if (failed[i]) continue;
        TrainerOptions tt = to;
        tt.timeline = false;
        try {
          Trainer trial(Graph(graph), ocfg, tessel::Devices{devices, pins_for(candidates[i].config, candidates[i].stages), "", true}, tt);
          double timed_ms = 0;
          for (int s = 0; s < kWarm + kMaxTimed && (s < kWarm + kTimed || timed_ms < 1e3 * kPassS); ++s) {
            const auto a = Clock::now();
            trial.engine().step(*trial_feed, s);
            const double took = std::chrono::duration<double, std::milli>(Clock::now() - a).count();
            if (s >= kWarm) ms[i].push_back(took), timed_ms += took;
          }
        } catch (const Error& e) {
          // A plan the search offers but that cannot run is a planner bug: say so, try the rest.
          failed[i] = 1;
          if (!quiet)
            log << "tessel: tune " << i + 1 << "/" << candidates.size() << ": " << candidates[i].config.str()
                << " could not run (left out): " << e.what() << "\n";
        }
      }
    constexpr double kMargin = 0.03;
    double best_ms = INFINITY, fastest_ms = INFINITY;
    size_t best = 0, fastest = 0;
    for (size_t i = 0; i < candidates.size(); ++i) {
      if (failed[i]) {
        report.tuned.push_back({candidates[i].config.str(), 1e3 * candidates[i].step_time_s, NAN});
        continue;
      }
      std::vector<double>& v = ms[i];
      std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
      const double median = v[v.size() / 2];
      report.tuned.push_back({candidates[i].config.str(), 1e3 * candidates[i].step_time_s, median});
      // Another plan replaces the simulator's pick only when it measures clearly faster:
      // within kMargin the two are a tie on this host, and the prediction decides.
      if (i == 0 || median < best_ms * (best == 0 ? 1 - kMargin : 1)) best_ms = median, best = i;
      if (median < fastest_ms) fastest_ms = median, fastest = i;
      if (!quiet) {
        char b[200];
        std::snprintf(b, sizeof b, "tessel: tune %zu/%zu: %-44s predicted %8.2f ms, measured %8.2f ms\n", i + 1,
                      candidates.size(), candidates[i].config.str().c_str(), 1e3 * candidates[i].step_time_s, median);
        log << b;
      }
    }
    if (!std::isfinite(best_ms)) throw Error("--tune: none of the " + std::to_string(candidates.size()) + " plans tried could run");
    pins = pins_for(candidates[best].config, candidates[best].stages);
    report.tune_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!quiet)
      log << "tessel: tune: training " << candidates[best].config.str()
          << (best != 0 ? " (the fastest measured of " + std::to_string(candidates.size()) + "; the simulator picked " +
                              candidates[0].config.str() + ")"
              : fastest != 0 ? " (the simulator's pick: " + candidates[fastest].config.str() +
                                   " measured less than 3 % faster, a tie on this host)"
                             : " (the fastest measured of " + std::to_string(candidates.size()) + "; the simulator's pick too)")
          << ", " << format_duration(report.tune_seconds) << "\n";
  }
  Trainer trainer(std::move(graph), ocfg, tessel::Devices{multi ? devices : 1, pins, opt.plan_file, multi}, to);
  const Graph& tg = trainer.graph();
  if (trainer.plan()) plan = *trainer.plan();
  report.parameters = planner::count_parameters(tg).elements;

  std::optional<runtime::ThreadPool> own_pool;
  if (opt.threads > 0) own_pool.emplace(opt.threads);
  runtime::ExecutorOptions eo;
  eo.seed = opt.seed;
  eo.use_blas = opt.use_blas;
  eo.jit = opt.jit;
  eo.parallel = own_pool ? &*own_pool : &runtime::ThreadPool::shared();
  Engine* engine = &trainer.engine();
  if (multi) {
    if (!quiet) log << plan->summary();
    auto* dev = dynamic_cast<detail::Devices*>(engine);
    if (opt.verbose && !quiet && dev) {
      const auto mem = dev->run.memory();
      const auto& stages = plan->search.best.stages;
      for (size_t r = 0; r < mem.size(); ++r) {
        const size_t g = static_cast<size_t>(dev->run.first_rank()) + r;  // the global rank
        const int64_t st = dev->run.programs()[g].stage;
        char b[256];
        std::snprintf(b, sizeof b, "  rank %zu (stage %lld): arena %.2f MiB + variables/inputs %.2f MiB = %.2f MiB; planner predicted %.2f MiB\n",
                      g, static_cast<long long>(st), mem[r].arena_bytes / 1048576.0, mem[r].persistent_bytes / 1048576.0,
                      mem[r].total() / 1048576.0,
                      static_cast<size_t>(st) < stages.size() ? stages[static_cast<size_t>(st)].peak_memory_bytes / 1048576.0 : NAN);
        log << b;
      }
    }
    report.devices = devices;
    report.plan = plan->config.str();
  } else {
    report.devices = 1;
  }
  report.memory_bytes = engine->memory_bytes();
  {
    const Engine::Jit j = engine->jit();
    report.jit_kernels = j.kernels;
    report.jit_compiled = j.compiled;
    report.jit_seconds = j.seconds;
    if (!quiet && opt.jit) {
      char b[200];
      std::snprintf(b, sizeof b,
                    "tessel: JIT: %lld fused kernels, %lld compiled, %lld from the kernel cache, %.2f s; %lld updates "
                    "written in place\n",
                    static_cast<long long>(j.kernels), static_cast<long long>(j.compiled),
                    static_cast<long long>(j.kernels - j.compiled), j.seconds, static_cast<long long>(j.in_place));
      log << b;
    }
  }

  std::unique_ptr<Feeder> feeder;
  int64_t per_epoch = 0;
  if (images) {
    auto f = std::make_unique<ImageFeeder>(mnist->train, batch, opt.seed, names);
    per_epoch = f->per_epoch;
    if (per_epoch == 0) throw Error("--batch " + std::to_string(batch) + " is larger than the training set");
    feeder = std::move(f);
  } else {
    feeder = std::make_unique<TextFeeder>(*corpus, seq, opt.seed, names);
  }
  int64_t total_steps = opt.steps;
  if (total_steps == 0) {
    if (images) total_steps = std::max<int64_t>(opt.epochs, 1) * per_epoch;
    else if (opt.epochs > 0) total_steps = opt.epochs * std::max<int64_t>(1, corpus->train_size() / (batch * seq));
    else throw Error("give --steps (or --epochs) for a text dataset");
  }

  if (!quiet) {
    log << "tessel: " << report.model << ", " << report.parameters << " parameters, batch " << batch;
    const int64_t mbs = multi ? plan->config.microbatches : k;
    if (mbs > 1) log << " (" << mbs << " microbatches of " << batch / mbs << ")";
    log << ", " << total_steps << " steps, " << ocfg.kind << " lr " << ocfg.lr << "\n";
  }
  // Resuming: every variable (parameters, optimizer state, step counters) from the
  // checkpoint, under whatever plan wrote it; the data continue from its step (each step's
  // batch is a function of the seed and the step).
  int64_t start = 0;
  // A job that `tessel launch --max-restarts` started again continues from its newest checkpoint.
  std::string resume = opt.resume;
  if (const char* restart = std::getenv("TESSEL_RESTART"); restart && resume.empty() && !opt.checkpoint_dir.empty()) {
    resume = runtime::latest_checkpoint(opt.checkpoint_dir);
    if (!quiet)
      log << "tessel: restart " << restart << ": "
          << (resume.empty() ? "no checkpoint in " + opt.checkpoint_dir + " yet, starting over" : "resuming from " + resume) << "\n";
  }
  if (!opt.init.empty() && !opt.resume.empty())
    throw Error("--init and --resume: give one (a checkpoint holds the parameters already)");
  if (!opt.init.empty() && resume.empty()) load_init(*engine, tg, opt.init, opt.init_map, log, quiet);
  if (opt.init.empty() && !opt.init_map.empty()) throw Error("--init-map needs --init");
  if (!resume.empty()) {
    const runtime::Checkpoint ck(resume);
    const auto& st = ck.state();
    if (st.seed != opt.seed)
      throw Error(ck.dir() + " was written by a run with --seed " + std::to_string(st.seed) + ", this one has --seed " +
                  std::to_string(opt.seed) + ": resume with the same seed (it orders the data)");
    if (auto it = st.data.find("batch"); it != st.data.end() && it->second != std::to_string(batch))
      throw Error(ck.dir() + " was written by a run with global batch " + it->second + ", this one has " +
                  std::to_string(batch) + ": resume with the same --batch");
    if (st.step > total_steps)
      throw Error(ck.dir() + " is at step " + std::to_string(st.step) + ", past the run's " + std::to_string(total_steps) +
                  " steps (--steps and --epochs count the whole run)");
    engine->load_variables(ck);
    start = st.step;
    report.resumed_step = start;
    if (!quiet) log << "tessel: resumed from " << ck.dir() << " (step " << start << ", plan " << st.plan << ")\n";
  }
  // In one process a checkpoint is written in the background; with ranks in other processes
  // every process saves its ranks' blocks at the step boundary, together (LocalRun).
  std::optional<runtime::AsyncCheckpointer> checkpointer;
  auto* across = role ? dynamic_cast<detail::Devices*>(engine) : nullptr;
  int64_t saved_across = 0;
  double saving_across_s = 0;
  std::string last_across;
  if (!opt.checkpoint_dir.empty() && !across) checkpointer.emplace(opt.checkpoint_dir, opt.keep);
  auto checkpoint = [&](int64_t done) {
    runtime::CheckpointState st;
    st.step = done;
    st.seed = opt.seed;
    st.model = opt.model;
    st.plan = multi ? plan->config.str() : "one device";
    st.world = multi ? devices : 1;
    st.data = {{"dataset", opt.dataset}, {"batch", std::to_string(batch)}};
    for (int32_t id : tg.parameters()) st.parameters.insert(tg.node(id).name);
    if (per_epoch > 0) st.data["epoch"] = std::to_string(done / per_epoch), st.data["batch_in_epoch"] = std::to_string(done % per_epoch);
    if (across) {
      const auto t0 = Clock::now();
      last_across = across->run.save_checkpoint(opt.checkpoint_dir, st, opt.keep);
      saving_across_s += std::chrono::duration<double>(Clock::now() - t0).count();
      ++saved_across;
      return;
    }
    checkpointer->save(st, runtime::distinct_blocks(engine->variable_blocks()));
  };
  Progress progress(log, opt.progress_terminal, total_steps);
  std::vector<double> step_ms;
  std::vector<double> losses;
  step_ms.reserve(total_steps);
  losses.reserve(total_steps);
  const int64_t warmup = start + std::min<int64_t>(3, (total_steps - start) / 10);
  if (!opt.trace.empty() && opt.trace_steps < 1) throw Error("--trace-steps must be >= 1");
  if (!opt.html.empty() && !multi) throw Error("--html goes with --devices N (or a launcher): it reports a plan");
  StepRecorder recorder(warmup, !opt.trace.empty() ? opt.trace_steps : !opt.html.empty() ? 1 : 0);
  Clock::time_point timed_start;
  report.startup_seconds = std::chrono::duration<double>(Clock::now() - started).count();
  for (int64_t step = start; step < total_steps; ++step) {
    if (step == warmup) timed_start = Clock::now();
    auto t0 = Clock::now();
    const double loss = engine->step(*feeder, step);
    auto t1 = Clock::now();
    if (!std::isfinite(loss))
      throw Error("training diverged at step " + std::to_string(step + 1) + ": loss is " + std::to_string(loss) +
                  " (try a smaller --lr, or --clip-norm)");
    losses.push_back(loss);
    if (step >= warmup) {
      step_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      recorder.after_step(*engine, step, std::chrono::duration_cast<std::chrono::nanoseconds>(t0.time_since_epoch()).count(),
                          std::chrono::duration_cast<std::chrono::nanoseconds>(t1.time_since_epoch()).count());
    }
    if (!quiet) {
      double timed = std::chrono::duration<double>(t1 - timed_start).count();
      double rate = step >= warmup && timed > 0 ? (step - warmup + 1) * batch / timed : 0;
      char buf[128];
      std::snprintf(buf, sizeof buf, "loss %.4f  %.0f samples/s", loss, rate);
      progress.update(step + 1, buf);
    }
    if (!opt.checkpoint_dir.empty()) {
      if (checkpointer) checkpointer->check();  // a failed write stops the run here
      if ((opt.checkpoint_every > 0 && (step + 1) % opt.checkpoint_every == 0) || step + 1 == total_steps)
        checkpoint(step + 1);
    }
  }
  if (checkpointer) {
    checkpointer->finish();
    report.checkpoints = checkpointer->saves();
    report.checkpoint_copy_seconds = checkpointer->copy_seconds();
    if (!quiet && !checkpointer->last().empty()) log << "tessel: checkpoint " << checkpointer->last() << "\n";
  } else if (saved_across) {
    report.checkpoints = saved_across;
    report.checkpoint_copy_seconds = saving_across_s;
    if (!quiet) log << "tessel: checkpoint " << last_across << "\n";
  }
  const double timed_s = total_steps > warmup ? std::chrono::duration<double>(Clock::now() - timed_start).count() : 0;
  report.train_seconds = progress.elapsed_s();
  report.steps = total_steps;
  report.samples = (total_steps - start) * batch;
  if (!step_ms.empty()) {
    std::vector<double> s = step_ms;
    std::nth_element(s.begin(), s.begin() + s.size() / 2, s.end());
    report.step_ms_median = s[s.size() / 2];
    report.samples_per_s = timed_s > 0 ? static_cast<double>((total_steps - warmup) * batch) / timed_s : 0;
  }
  std::string measured_text, trace_text;  // shown after the progress line ends
  {
    // Every process takes part (the figures of ranks in other processes are gathered).
    std::vector<int64_t> memory;
    auto* dev = dynamic_cast<detail::Devices*>(engine);
    if (dev)
      for (const auto& m : dev->run.memory()) memory.push_back(m.total());
    else
      memory.push_back(engine->memory_bytes());
    const MeasuredSteps measured = recorder.finish(*engine, memory, report.step_ms_median);
    if (multi && dev && !measured.ranks.empty()) {
      std::vector<int64_t> rank_stage;
      for (const auto& p : dev->run.programs()) rank_stage.push_back(p.stage);
      report.predicted_vs_measured =
          predicted_vs_measured_json(plan->search.best, rank_stage, measured, report.step_ms_median);
      std::ostringstream os;
      print_predicted_vs_measured(os, plan->search.best, rank_stage, measured, report.step_ms_median);
      measured_text = os.str();
      if (!opt.html.empty() && (!role || role->rank == 0)) {
        const planner::ClusterSpec cluster = planner::parse_cluster(plan->cluster);
        const planner::SearchOptions so = planner::default_search_options(tg, cluster);
        const planner::ReportContext ctx{report.model, plan->cluster, batch, &cluster, &so.cost, &tg,
                                         tg.updates().empty() ? "train" : tg.updates().front().phase};
        planner::MeasuredRun run;
        run.step_s = report.step_ms_median / 1e3;
        const MeasuredParts& b = measured.ranks[static_cast<size_t>(measured.busiest)];
        run.compute_s = b.compute_s;
        run.optimizer_s = b.optimizer_s;
        run.exposed_comm_s = b.exposed_comm_s;
        run.bubble_s = b.bubble_s;
        for (int64_t bytes : measured.peak_bytes) run.peak_bytes.push_back(static_cast<double>(bytes));
        run.timeline = measured.first_step;
        std::ofstream f(opt.html);
        if (!(f << planner::report_html(plan->search, ctx, &run)) || !f.flush())
          throw Error("cannot write the report to " + opt.html);
        trace_text += "tessel: wrote " + opt.html + " (the plan, its predictions and this run's measurements)\n";
      }
    }
    if (!opt.trace.empty() && (!role || role->rank == 0)) {
      std::ofstream f(opt.trace);
      if (!(f << measured.trace_json) || !f.flush()) throw Error("cannot write the trace to " + opt.trace);
      report.trace = opt.trace;
      trace_text += "tessel: wrote " + opt.trace + " (" + std::to_string(measured.traced_step_s.size()) + " steps of " +
                   std::to_string(measured.ranks.size()) + (measured.ranks.size() == 1 ? " rank" : " ranks") +
                   "; open it in Perfetto or chrome://tracing)\n";
    }
  }
  if (!losses.empty()) {
    const size_t tail = std::min<size_t>(10, losses.size());
    report.final_loss = std::accumulate(losses.end() - tail, losses.end(), 0.0) / static_cast<double>(tail);
    report.last_loss = losses.back();
  }

  // Evaluation on a graph built without dropout, parameters copied over by name.
  std::optional<models::Built> eval_built;
  const Graph* eval_graph = &tg;
  if (!from_file) {
    int64_t eval_batch = images ? std::min<int64_t>(1000, mnist->test.count) : micro;
    eval_built.emplace(models::from_spec(opt.model, eval_batch, false));
    eval_graph = &eval_built->model->graph();
  }
  if (images) {
    const auto& test = mnist->test;
    runtime::Executor eval(planner::one_device(*eval_graph, {"logits", "loss"}, ""), eo);
    eval.initialize();
    engine->copy_parameters_to(eval);
    const int64_t eb = eval.input(names.data).shape[0];
    const int64_t classes = test.num_classes;
    int64_t correct = 0;
    double loss_sum = 0;
    int64_t loss_batches = 0;
    std::vector<int64_t> idx(eb);
    for (int64_t start = 0; start < test.count; start += eb) {
      const int64_t n = std::min(eb, test.count - start);
      for (int64_t i = 0; i < eb; ++i) idx[i] = start + (i < n ? i : 0);  // pad with sample 0
      runtime::gather_images(test, idx, eval.input(names.data).as<float>());
      runtime::gather_labels(test, idx, eval.input(names.labels).as<int32_t>());
      eval.step();
      TensorRef logits = eval.output("logits");
      for (int64_t i = 0; i < n; ++i) {
        int64_t best = 0;
        if (logits.dtype == DType::f32) {
          const float* row = logits.as<float>() + i * classes;
          best = std::max_element(row, row + classes) - row;
        } else {
          const double* row = logits.as<double>() + i * classes;
          best = std::max_element(row, row + classes) - row;
        }
        correct += best == test.labels[start + i];
      }
      if (n == eb) {
        loss_sum += read_scalar(eval.output("loss"));
        ++loss_batches;
      }
    }
    report.test_accuracy = static_cast<double>(correct) / static_cast<double>(test.count);
    report.test_loss = loss_batches ? loss_sum / loss_batches : NAN;
  } else {
    runtime::Executor eval(planner::one_device(*eval_graph, {"loss"}, ""), eo);
    eval.initialize();
    engine->copy_parameters_to(eval);
    double loss_sum = 0;
    for (int64_t i = 0; i < opt.eval_batches; ++i) {
      corpus->fill_batch(true, opt.seed, i, micro, 0, 1, seq, eval.input(names.tokens).as<int32_t>(),
                         eval.input(names.targets).as<int32_t>());
      eval.step();
      loss_sum += read_scalar(eval.output("loss"));
    }
    report.test_loss = opt.eval_batches > 0 ? loss_sum / opt.eval_batches : NAN;
  }

  if (!quiet) {
    std::ostringstream os;
    os.precision(4);
    os << "done: " << report.steps << " steps in " << format_duration(report.train_seconds) << ", final loss "
       << report.final_loss << ", " << static_cast<int64_t>(report.samples_per_s) << " samples/s, step "
       << report.step_ms_median << " ms (median)";
    if (images) os << ", test accuracy " << 100 * report.test_accuracy << " %";
    if (text) os << ", validation loss " << report.test_loss << " (unigram entropy " << report.unigram_entropy << ")";
    progress.finish(os.str());
    log << measured_text << trace_text;
  }

  if (!opt.save.empty()) {
    // Gathering the variables is collective across processes: every rank takes part, rank 0 writes.
    Graph out = has_updates ? tg : forward;
    engine->export_variables(out);
    if (!role || role->rank == 0) {
      save_graph(out, opt.save, SaveOptions{});
      if (!quiet) log << "saved the trained model to " << opt.save << "\n";
    }
  }
  return report;
}

}  // namespace tessel
