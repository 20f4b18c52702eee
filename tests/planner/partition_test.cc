// The partitioner. Per-rank programs are run here in lockstep, with collectives done in
// memory, and must compute what the single-device graph computes: same loss, same updated
// parameters (gathered from their shards). Also: programs verify, are deterministic, split
// what the plan says, and inserted collectives carry the origin of the node they serve.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "frontend/models.h"
#include "frontend/optim.h"
#include "graph/error.h"
#include "graph/serialize.h"
#include "planner/partition.h"
#include "planner/plan_file.h"
#include "ops/registry.h"
#include <filesystem>
#include <fstream>
#include "runtime/executor.h"

namespace tessel::planner {
namespace {

using Bytes = std::vector<std::byte>;

// Row-major block copy: `dst` (shape ds) at offsets `off` <- or -> `src` (shape ss).
void copy_block(const float* src, const Shape& ss, float* dst, const Shape& ds, const std::vector<int64_t>& off,
                bool into_big) {
  const Shape& small = into_big ? ss : ds;
  const Shape& big = into_big ? ds : ss;
  const int64_t n = numel(small);
  for (int64_t i = 0; i < n; ++i) {
    int64_t rest = i, b = 0, stride = 1;
    for (int d = static_cast<int>(small.size()) - 1; d >= 0; --d) {
      b += (rest % small[d] + off[d]) * stride;
      rest /= small[d];
      stride *= big[d];
    }
    if (into_big) dst[b] = src[i];
    else dst[i] = src[b];
  }
}

// All ranks' programs, run node by node together.
class Lockstep {
 public:
  Lockstep(std::vector<RankProgram>& p, uint64_t seed) : p_(p), seed_(seed) {
    buf_.resize(p.size());
    for (size_t r = 0; r < p.size(); ++r) {
      const Graph& g = p[r].graph;
      buf_[r].resize(g.size());
      for (auto& n : g.nodes()) {
        buf_[r][n.id].resize(static_cast<size_t>(n.outputs[0].bytes()) + 1);
        if (n.def->kind == OpKind::variable || n.def->kind == OpKind::constant) {
          if (auto* d = g.data(n.id)) std::memcpy(buf_[r][n.id].data(), d->data(), d->size());
          else run_kernel(r, n);
        }
      }
    }
  }

  TensorRef ref(size_t r, Value v) {
    const TensorType& t = p_[r].graph.type(v);
    return TensorRef{buf_[r][v.node].data(), t.dtype, t.shape, t.numel()};
  }

  // Feeds a whole input; each rank takes its shard.
  void feed(const std::string& name, const TensorType& global, const Bytes& data, const Mesh& m) {
    for (size_t r = 0; r < p_.size(); ++r) {
      auto id = *p_[r].graph.find(name);
      Sharding s;
      for (auto& [n, pl] : p_[r].input_placements)
        if (n == name) s = pl;
      const Shape local = p_[r].graph.node(id).outputs[0].shape;
      auto off = shard_offsets(global.shape, s, m, p_[r].coords);
      if (global.dtype == DType::f32) {
        copy_block(reinterpret_cast<const float*>(data.data()), global.shape, reinterpret_cast<float*>(buf_[r][id].data()), local, off, false);
      } else {  // i32 labels: same layout, 4 bytes
        copy_block(reinterpret_cast<const float*>(data.data()), global.shape, reinterpret_cast<float*>(buf_[r][id].data()), local, off, false);
      }
    }
  }

  void run(const std::string& phase) {
    const Graph& g0 = p_[0].graph;
    std::vector<Value> targets;
    for (auto& u : g0.updates())
      if (u.phase == phase) targets.push_back(u.value);
    for (auto& o : g0.outputs()) targets.push_back(o.value);
    for (int32_t id : needed_nodes(g0, targets)) {
      const Node& n0 = g0.node(id);
      if (n0.def->kind != OpKind::compute) continue;
      if (is_collective(n0.op)) {
        collective(id);
        continue;
      }
      for (size_t r = 0; r < p_.size(); ++r) run_kernel(r, p_[r].graph.node(id));
    }
    for (size_t r = 0; r < p_.size(); ++r)
      for (auto& u : p_[r].graph.updates())
        if (u.phase == phase) {
          Bytes tmp = buf_[r][u.value.node];
          buf_[r][u.variable] = tmp;
        }
  }

  // The whole variable, gathered from every rank's shard.
  std::vector<float> gather_variable(const std::string& name, const Graph& global, const Mesh& m) {
    const TensorType& t = global.node(*global.find(name)).outputs[0];
    std::vector<float> whole(static_cast<size_t>(t.numel()));
    for (size_t r = 0; r < p_.size(); ++r) {
      auto id = *p_[r].graph.find(name);
      Sharding s;
      for (auto& [n, pl] : p_[r].variable_placements)
        if (n == name) s = pl;
      copy_block(reinterpret_cast<const float*>(buf_[r][id].data()), p_[r].graph.node(id).outputs[0].shape, whole.data(),
                 t.shape, shard_offsets(t.shape, s, m, p_[r].coords), true);
    }
    return whole;
  }

 private:
  static bool is_collective(const std::string& op) {
    return op == "all_reduce" || op == "all_gather" || op == "reduce_scatter" || op == "all_to_all";
  }
  void run_kernel(size_t r, const Node& n) {
    std::vector<TensorRef> in, out;
    for (auto& v : n.inputs) in.push_back(ref(r, v));
    out.push_back(ref(r, n.out()));
    SerialParallel serial;
    n.def->kernel(n, in, out, KernelCtx{&serial, seed_});
  }
  void collective(int32_t id) {
    std::vector<char> done(p_.size(), 0);
    for (size_t r = 0; r < p_.size(); ++r) {
      if (done[r]) continue;
      const Node& n = p_[r].graph.node(id);
      const auto& ranks = n.attrs.get_i64s("ranks");
      const Shape in_shape = p_[r].graph.type(n.inputs[0]).shape;
      const Shape out_shape = n.outputs[0].shape;
      const int64_t k = static_cast<int64_t>(ranks.size());
      std::vector<const float*> ins;
      for (int64_t q : ranks) ins.push_back(reinterpret_cast<const float*>(buf_[q][n.inputs[0].node].data()));
      const int64_t in_n = numel(in_shape);
      if (n.op == "all_reduce" || n.op == "reduce_scatter") {
        const bool mx = n.attrs.get_str_or("reduce", "sum") == "max";
        std::vector<float> total(static_cast<size_t>(in_n));
        for (int64_t i = 0; i < in_n; ++i) {
          float acc = mx ? -INFINITY : 0.f;
          for (auto* x : ins) acc = mx ? std::max(acc, x[i]) : acc + x[i];
          total[i] = acc;
        }
        for (int64_t j = 0; j < k; ++j) {
          float* dst = reinterpret_cast<float*>(buf_[ranks[j]][id].data());
          if (n.op == "all_reduce") {
            std::copy(total.begin(), total.end(), dst);
          } else {
            std::vector<int64_t> off(in_shape.size(), 0);
            const int d = static_cast<int>(n.attrs.get_i64("dim"));
            off[d] = j * out_shape[d];
            copy_block(total.data(), in_shape, dst, out_shape, off, false);
          }
        }
      } else if (n.op == "all_gather") {
        const int d = static_cast<int>(n.attrs.get_i64("dim"));
        std::vector<float> whole(static_cast<size_t>(numel(out_shape)));
        for (int64_t j = 0; j < k; ++j) {
          std::vector<int64_t> off(in_shape.size(), 0);
          off[d] = j * in_shape[d];
          copy_block(ins[j], in_shape, whole.data(), out_shape, off, true);
        }
        for (int64_t j = 0; j < k; ++j)
          std::copy(whole.begin(), whole.end(), reinterpret_cast<float*>(buf_[ranks[j]][id].data()));
      } else {  // all_to_all: chunk j of every rank's split dim goes to rank j, stacked on concat dim
        const int sd = static_cast<int>(n.attrs.get_i64("split_dim"));
        const int cd = static_cast<int>(n.attrs.get_i64("concat_dim"));
        Shape piece = in_shape;
        piece[sd] /= k;
        for (int64_t j = 0; j < k; ++j) {
          float* dst = reinterpret_cast<float*>(buf_[ranks[j]][id].data());
          for (int64_t q = 0; q < k; ++q) {
            std::vector<float> chunk(static_cast<size_t>(numel(piece)));
            std::vector<int64_t> off(in_shape.size(), 0);
            off[sd] = j * piece[sd];
            copy_block(ins[q], in_shape, chunk.data(), piece, off, false);
            std::vector<int64_t> to(in_shape.size(), 0);
            to[cd] = q * piece[cd];
            copy_block(chunk.data(), piece, dst, out_shape, to, true);
          }
        }
      }
      for (int64_t q : ranks) done[q] = 1;
    }
  }

  std::vector<RankProgram>& p_;
  uint64_t seed_;
  std::vector<std::vector<Bytes>> buf_;
};

struct Case {
  std::string spec;
  int64_t batch;
  PlanConfig config;
  std::string optimizer = "adamw";
};

std::string name_of(const Case& c) { return c.spec + " " + c.config.str(); }

void check_equivalence(const Case& k) {
  SCOPED_TRACE(name_of(k));
  models::Built b = models::from_spec(k.spec, k.batch, true);
  Graph& g = b.model->graph();
  OptimizerConfig oc;
  oc.kind = k.optimizer;
  oc.lr = 0.01;
  oc.momentum = 0.9;
  add_training(g, "loss", oc);
  // Random inputs.
  std::mt19937 rng(5);
  std::map<std::string, std::pair<TensorType, Bytes>> inputs;
  for (int32_t id : g.nodes_of_kind(OpKind::input)) {
    const TensorType& t = g.node(id).outputs[0];
    Bytes d(static_cast<size_t>(t.bytes()));
    const int64_t classes = g.node(id).name == "labels" ? b.logits.shape().back() : 32;
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (t.dtype == DType::f32) reinterpret_cast<float*>(d.data())[i] = std::uniform_real_distribution<float>(-1, 1)(rng);
      else reinterpret_cast<int32_t*>(d.data())[i] = static_cast<int32_t>(rng() % classes);
    }
    inputs[g.node(id).name] = {t, d};
  }
  // One device.
  runtime::ExecutorOptions eo;
  eo.seed = 11;
  runtime::Executor one(g, eo);
  int prog = one.prepare({"train", {"loss"}});
  one.initialize();
  for (auto& [name, td] : inputs) std::memcpy(one.input(name).data, td.second.data(), td.second.size());
  one.run(prog);
  const float loss = one.output("loss").as<float>()[0];
  // Partitioned.
  std::vector<RankProgram> progs = partition(g, k.config);
  ASSERT_EQ(static_cast<int64_t>(progs.size()), k.config.dp * k.config.tp);
  const Mesh m = stage_mesh(k.config);
  Lockstep ls(progs, 11);
  for (auto& [name, td] : inputs) ls.feed(name, td.first, td.second, m);
  ls.run("train");
  for (size_t r = 0; r < progs.size(); ++r) {
    auto v = progs[r].graph.output("loss");
    ASSERT_TRUE(v);
    EXPECT_NEAR(ls.ref(r, *v).as<float>()[0], loss, 1e-5 * std::max(1.f, std::fabs(loss))) << "rank " << r;
  }
  for (int32_t id : g.parameters()) {
    const std::string& name = g.node(id).name;
    std::vector<float> got = ls.gather_variable(name, g, m);
    const float* want = one.value(Value{id, 0}).as<float>();
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i)
      worst = std::max(worst, std::fabs(double(got[i]) - want[i]) / std::max(1e-3, std::fabs(double(want[i]))));
    EXPECT_LT(worst, 1e-4) << name << " " << g.node(id).outputs[0].str();
  }
}

TEST(Partition, EveryStrategyComputesWhatOneDeviceComputes) {
  auto cfg = [](int64_t dp, int64_t tp, int zero = 0) {
    PlanConfig c;
    c.dp = dp;
    c.tp = tp;
    c.zero = zero;
    return c;
  };
  const std::string mlp = "mlp:8-16-16-4", gpt = "gpt:layers=1,d_model=16,heads=4,seq=8,vocab=32";
  for (const Case& k : std::vector<Case>{{mlp, 8, cfg(2, 1)}, {mlp, 8, cfg(1, 2)}, {mlp, 8, cfg(2, 2)},
                                         {mlp, 8, cfg(4, 1, 1)}, {mlp, 8, cfg(2, 1, 2)}, {mlp, 8, cfg(2, 1, 3)},
                                         {mlp, 8, cfg(2, 2, 1), "sgd"},
                                         // SGD for the GPT: Adam turns the exactly-zero gradient of the key
                                         // bias (softmax ignores a per-query constant) into lr * sign(rounding
                                         // noise), which no two summation orders agree on.
                                         {gpt, 4, cfg(2, 1), "sgd"}, {gpt, 4, cfg(1, 2), "sgd"},
                                         {gpt, 4, cfg(2, 2), "sgd"}, {gpt, 4, cfg(1, 4), "sgd"},
                                         {gpt, 4, cfg(2, 2, 2), "sgd"}})
    check_equivalence(k);
}

TEST(Partition, ProgramsSplitWhatThePlanSaysAndAreDeterministic) {
  models::Built b = models::from_spec("mlp:8-16-16-4", 8, true);
  add_training(b.model->graph(), "loss", OptimizerConfig{});
  PlanConfig c;
  c.dp = 2;
  c.tp = 2;
  auto a = partition(b.model->graph(), c), again = partition(b.model->graph(), c);
  ASSERT_EQ(a.size(), 4u);
  for (size_t r = 0; r < a.size(); ++r) {
    const Graph& g = a[r].graph;
    g.verify();
    EXPECT_EQ(serialize_graph(g), serialize_graph(again[r].graph)) << "rank " << r;
    EXPECT_EQ(g.node(*g.find("x")).outputs[0].shape, (Shape{4, 8}));             // batch over dp
    EXPECT_EQ(g.node(*g.find("fc1/weight")).outputs[0].shape, (Shape{8, 8}));    // column split
    EXPECT_EQ(g.node(*g.find("fc2/weight")).outputs[0].shape, (Shape{8, 16}));   // row split
    EXPECT_EQ(g.node(*g.find("fc3/weight")).outputs[0].shape, (Shape{16, 4}));   // replicated
    int all_reduce = 0;
    for (auto& n : g.nodes()) {
      if (n.op != "all_reduce" && n.op != "all_gather" && n.op != "reduce_scatter") continue;
      ++all_reduce;
      // Inserted collectives point at the user's (here the model builder's) line.
      EXPECT_FALSE(n.origin.empty()) << n.name;
      const auto& ranks = n.attrs.get_i64s("ranks");
      EXPECT_EQ(ranks.size(), 2u);
      EXPECT_TRUE(std::find(ranks.begin(), ranks.end(), int64_t(r)) != ranks.end());
    }
    EXPECT_GT(all_reduce, 0);
  }
  c.pp = 2;
  EXPECT_THROW(partition(b.model->graph(), c), Error);
}

TEST(PlanFile, RoundTripsConfigCostsAndPrograms) {
  models::Built b = models::from_spec("mlp:8-16-16-4", 8, true);
  add_training(b.model->graph(), "loss", OptimizerConfig{});
  PlanFile f;
  f.model = "mlp 8-16-16-4";
  f.cluster = "local:4";
  f.global_batch = 8;
  f.config.dp = 2;
  f.config.tp = 2;
  f.config.zero = 1;
  f.estimate.step_time_s = 0.125;
  f.estimate.mfu = 0.5;
  f.parameters = {{"fc1/weight", {Placement::R(), Placement::S(1)}}};
  f.programs = partition(b.model->graph(), f.config);
  const std::string path = (std::filesystem::temp_directory_path() / "tessel_plan_test.tsp").string();
  save_plan(f, path);
  PlanFile g = load_plan(path, ops::registry());
  EXPECT_EQ(g.config, f.config);
  EXPECT_EQ(g.estimate.step_time_s, 0.125);
  EXPECT_EQ(g.parameters, f.parameters);
  ASSERT_EQ(g.programs.size(), 4u);
  for (size_t r = 0; r < 4; ++r) {
    EXPECT_EQ(serialize_graph(g.programs[r].graph), serialize_graph(f.programs[r].graph));
    EXPECT_EQ(g.programs[r].input_placements, f.programs[r].input_placements);
    EXPECT_EQ(g.programs[r].coords, f.programs[r].coords);
  }
  {
    std::ofstream out(path, std::ios::binary);
    out << "not a plan";
  }
  EXPECT_THROW(load_plan(path, ops::registry()), Error);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace tessel::planner
