// The partitioner. Per-rank programs are run here in lockstep, with collectives done in
// memory, and must compute what the single-device graph computes: same loss, same updated
// parameters (gathered from their shards). Also: programs verify, are deterministic, split
// what the plan says, and inserted collectives carry the origin of the node they serve.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <random>

#include "frontend/models.h"
#include "frontend/optim.h"
#include "graph/error.h"
#include "graph/serialize.h"
#include "planner/partition.h"
#include "tests/planner/splits.h"
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

// The in-memory collectives: every member's input in, every member's output out.
std::vector<std::vector<float>> collective_math(const Node& n, const std::vector<const float*>& ins, const Shape& in_shape) {
  const Shape out_shape = n.outputs[0].shape;
  const int64_t k = static_cast<int64_t>(ins.size());
  const int64_t in_n = numel(in_shape);
  std::vector<std::vector<float>> outs(k, std::vector<float>(static_cast<size_t>(numel(out_shape))));
  if (n.op == "all_reduce" || n.op == "reduce_scatter") {
    const bool mx = n.attrs.get_str_or("reduce", "sum") == "max";
    std::vector<float> total(static_cast<size_t>(in_n));
    for (int64_t i = 0; i < in_n; ++i) {
      float acc = mx ? -INFINITY : 0.f;
      for (auto* x : ins) acc = mx ? std::max(acc, x[i]) : acc + x[i];
      total[i] = acc;
    }
    for (int64_t j = 0; j < k; ++j) {
      if (n.op == "all_reduce") {
        outs[j] = total;
      } else {
        std::vector<int64_t> off(in_shape.size(), 0);
        const int d = static_cast<int>(n.attrs.get_i64("dim"));
        off[d] = j * out_shape[d];
        copy_block(total.data(), in_shape, outs[j].data(), out_shape, off, false);
      }
    }
  } else if (n.op == "all_gather") {
    const int d = static_cast<int>(n.attrs.get_i64("dim"));
    for (int64_t j = 0; j < k; ++j) {
      std::vector<int64_t> off(in_shape.size(), 0);
      off[d] = j * in_shape[d];
      copy_block(ins[j], in_shape, outs[0].data(), out_shape, off, true);
    }
    for (int64_t j = 1; j < k; ++j) outs[j] = outs[0];
  } else {  // all_to_all: chunk j of every member's split dim goes to member j
    const int sd = static_cast<int>(n.attrs.get_i64("split_dim"));
    const int cd = static_cast<int>(n.attrs.get_i64("concat_dim"));
    Shape piece = in_shape;
    piece[sd] /= k;
    for (int64_t j = 0; j < k; ++j)
      for (int64_t q = 0; q < k; ++q) {
        std::vector<float> chunk(static_cast<size_t>(numel(piece)));
        std::vector<int64_t> off(in_shape.size(), 0);
        off[sd] = j * piece[sd];
        copy_block(ins[q], in_shape, chunk.data(), piece, off, false);
        std::vector<int64_t> to(in_shape.size(), 0);
        to[cd] = q * piece[cd];
        copy_block(chunk.data(), piece, outs[j].data(), out_shape, to, true);
      }
  }
  return outs;
}

// Every rank's program run in turn, each as far as it can go: a rank waits at a recv until
// its message is sent and at a collective until its whole group has arrived.
class Ranks {
 public:
  Ranks(std::vector<RankProgram>& p, uint64_t seed) : p_(p), seed_(seed) {
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

  // Feeds a whole input; each rank that has it takes its shard (4-byte elements).
  void feed(const std::string& name, const TensorType& global, const Bytes& data, const Mesh& m) {
    for (size_t r = 0; r < p_.size(); ++r) {
      auto id = p_[r].graph.find(name);
      if (!id) continue;
      Sharding s;
      for (auto& [n, pl] : p_[r].input_placements)
        if (n == name) s = pl;
      copy_block(reinterpret_cast<const float*>(data.data()), global.shape, reinterpret_cast<float*>(buf_[r][*id].data()),
                 p_[r].graph.node(*id).outputs[0].shape, shard_offsets(global.shape, s, m, p_[r].coords), false);
    }
  }

  void run(const std::string& phase) {
    std::vector<std::vector<int32_t>> order(p_.size());
    for (size_t r = 0; r < p_.size(); ++r) {
      const Graph& g = p_[r].graph;
      std::vector<Value> targets;
      for (auto& u : g.updates())
        if (u.phase == phase) targets.push_back(u.value);
      for (auto& o : g.outputs()) targets.push_back(o.value);
      for (int32_t id : needed_nodes(g, targets))
        if (g.node(id).def->kind == OpKind::compute) order[r].push_back(id);
    }
    std::vector<size_t> pc(p_.size(), 0);
    std::map<std::tuple<int64_t, int64_t, int64_t>, Bytes> mail;       // (from, to, tag)
    std::map<std::pair<std::vector<int64_t>, int64_t>, std::map<int64_t, Bytes>> arrived, results;
    std::map<std::pair<size_t, std::vector<int64_t>>, int64_t> seq;    // collectives done per rank and group
    for (bool progress = true; progress;) {
      progress = false;
      for (size_t r = 0; r < p_.size(); ++r) {
        const Graph& g = p_[r].graph;
        while (pc[r] < order[r].size()) {
          const Node& n = g.node(order[r][pc[r]]);
          if (n.op == "send") {
            mail[{int64_t(r), n.attrs.get_i64("peer"), n.attrs.get_i64("tag")}] = buf_[r][n.inputs[0].node];
          } else if (n.op == "recv") {
            auto it = mail.find({n.attrs.get_i64("peer"), int64_t(r), n.attrs.get_i64("tag")});
            if (it == mail.end()) break;
            std::memcpy(buf_[r][n.id].data(), it->second.data(), static_cast<size_t>(n.outputs[0].bytes()));
            mail.erase(it);
          } else if (n.op == "all_reduce" || n.op == "all_gather" || n.op == "reduce_scatter" || n.op == "all_to_all") {
            const auto& ranks = n.attrs.get_i64s("ranks");
            auto key = std::make_pair(ranks, seq[{r, ranks}]);
            auto done = results.find(key);
            if (done == results.end() || !done->second.count(int64_t(r))) {
              auto& a = arrived[key];
              if (!a.count(int64_t(r))) a[int64_t(r)] = buf_[r][n.inputs[0].node];
              if (a.size() < ranks.size()) break;
              std::vector<const float*> ins;
              for (int64_t q : ranks) ins.push_back(reinterpret_cast<const float*>(a[q].data()));
              auto outs = collective_math(n, ins, g.type(n.inputs[0]).shape);
              for (size_t j = 0; j < ranks.size(); ++j) {
                Bytes b(outs[j].size() * sizeof(float));
                std::memcpy(b.data(), outs[j].data(), b.size());
                results[key][ranks[j]] = b;
              }
              done = results.find(key);
            }
            const Bytes& mine = done->second.at(int64_t(r));
            std::memcpy(buf_[r][n.id].data(), mine.data(), mine.size());
            seq[{r, ranks}]++;
          } else {
            run_kernel(r, n);
          }
          ++pc[r];
          progress = true;
        }
      }
    }
    for (size_t r = 0; r < p_.size(); ++r)
      ASSERT_EQ(pc[r], order[r].size()) << "rank " << r << " is stuck at " << p_[r].graph.node(order[r][pc[r]]).where();
    for (size_t r = 0; r < p_.size(); ++r)
      for (auto& u : p_[r].graph.updates())
        if (u.phase == phase) {
          Bytes tmp = buf_[r][u.value.node];
          buf_[r][u.variable] = tmp;
        }
  }

  // The whole variable, gathered from the shards of the ranks that hold it.
  std::vector<float> gather_variable(const std::string& name, const Graph& global, const Mesh& m) {
    const TensorType& t = global.node(*global.find(name)).outputs[0];
    std::vector<float> whole(static_cast<size_t>(t.numel()));
    for (size_t r = 0; r < p_.size(); ++r) {
      auto id = p_[r].graph.find(name);
      if (!id) continue;
      Sharding s;
      for (auto& [n, pl] : p_[r].variable_placements)
        if (n == name) s = pl;
      copy_block(reinterpret_cast<const float*>(buf_[r][*id].data()), p_[r].graph.node(*id).outputs[0].shape, whole.data(),
                 t.shape, shard_offsets(t.shape, s, m, p_[r].coords), true);
    }
    return whole;
  }

 private:
  void run_kernel(size_t r, const Node& n) {
    std::vector<TensorRef> in, out;
    for (auto& v : n.inputs) in.push_back(ref(r, v));
    out.push_back(ref(r, n.out()));
    SerialParallel serial;
    n.def->kernel(n, in, out, KernelCtx{&serial, seed_, {}});
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
  double clip_norm = 0;  // > 0: clip by the global gradient norm (a reduction across every stage)
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
  oc.clip_norm = k.clip_norm;
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
  std::vector<std::string> outs{"loss"};
  if (k.clip_norm > 0) outs.push_back("grad_norm");
  runtime::Executor one(planner::one_device(g, outs, "train"), eo);
  one.initialize();
  for (auto& [name, td] : inputs) std::memcpy(one.input(name).data, td.second.data(), td.second.size());
  one.step();
  const float loss = one.output("loss").as<float>()[0];
  if (k.clip_norm > 0) {
    EXPECT_GT(one.output("grad_norm").as<float>()[0], 2 * k.clip_norm) << "the clip must bite";
  }
  // Partitioned.
  std::vector<RankProgram> progs = partition(g, k.config);
  ASSERT_EQ(static_cast<int64_t>(progs.size()), k.config.devices());
  const Mesh m = stage_mesh(k.config);
  Ranks ls(progs, 11);
  for (auto& [name, td] : inputs) ls.feed(name, td.first, td.second, m);
  ls.run("train");
  int with_loss = 0;
  for (size_t r = 0; r < progs.size(); ++r) {
    auto v = progs[r].graph.output("loss");
    if (!v) continue;  // only the last pipeline stage computes it
    ++with_loss;
    EXPECT_NEAR(ls.ref(r, *v).as<float>()[0], loss, 1e-5 * std::max(1.f, std::fabs(loss))) << "rank " << r;
  }
  EXPECT_EQ(with_loss, k.config.dp * k.config.tp);
  if (k.clip_norm > 0) {
    const float norm = one.output("grad_norm").as<float>()[0];
    int with_norm = 0;
    for (size_t r = 0; r < progs.size(); ++r) {
      const RankProgram& p = progs[r];
      if (auto v = p.graph.output("grad_norm")) {
        ++with_norm;
        EXPECT_NEAR(ls.ref(r, *v).as<float>()[0], norm, 1e-5 * norm) << "rank " << r;
      }
      // Across stages the norm travels as scalar partial sums and the scale comes back as
      // one: no gradient leaves its stage in the optimizer step.
      for (const Node& n : p.graph.nodes())
        if (n.op == "send" && p.section[n.id] == Section::apply) {
          EXPECT_EQ(p.graph.type(n.inputs[0]).numel(), 1) << "rank " << r << " sends " << n.name;
        }
    }
    EXPECT_GE(with_norm, 1);
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
  auto cfg = [](int64_t dp, int64_t tp, int zero = 0, int64_t pp = 1, bool sp = false) {
    PlanConfig c;
    c.dp = dp;
    c.tp = tp;
    c.zero = zero;
    c.pp = pp;
    c.sequence_parallel = sp;
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
                                         {gpt, 4, cfg(2, 2, 2), "sgd"},
                                         // pipeline stages, alone and with dp and tp
                                         {mlp, 8, cfg(1, 1, 0, 2)}, {mlp, 8, cfg(1, 1, 0, 4)}, {mlp, 8, cfg(2, 2, 0, 2)},
                                         {gpt, 4, cfg(1, 1, 0, 2), "sgd"}, {gpt, 4, cfg(2, 2, 0, 3), "sgd"},
                                         // sequence parallelism
                                         {gpt, 4, cfg(1, 2, 0, 1, true), "sgd"}, {gpt, 4, cfg(2, 4, 0, 1, true), "sgd"},
                                         // clipping by the global norm: a clip small enough to bite, whose
                                         // norm sums partial squares from every stage (and tp shard)
                                         {mlp, 8, cfg(1, 1, 0, 1), "adamw", 0.05}, {mlp, 8, cfg(1, 1, 0, 2), "adamw", 0.05},
                                         {mlp, 8, cfg(1, 1, 0, 4), "adamw", 0.05}, {mlp, 8, cfg(2, 2, 1, 2), "adamw", 0.05},
                                         {gpt, 4, cfg(2, 2, 0, 3), "sgd", 0.05}})
    check_equivalence(k);
}

TEST(Partition, ProgramsSplitWhatThePlanSaysAndAreDeterministic) {
  models::Built b = models::from_spec("mlp:8-16-16-4", 8, true);
  add_training(b.model->graph(), "loss", OptimizerConfig{});
  PlanConfig c;
  c.dp = 2;
  c.tp = 2;
  c.tp_dims = megatron_splits(b.model->graph());
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
  c.pp = 5;  // more stages than layers
  EXPECT_THROW(partition(b.model->graph(), c), Error);
}

TEST(Partition, SequenceParallelismSplitsNormAndResidualRegionsAlongTheSequence) {
  models::Built b = models::from_spec("gpt:layers=2,d_model=16,heads=4,seq=8,vocab=32", 4, true);
  OptimizerConfig oc;
  oc.kind = "sgd";
  add_training(b.model->graph(), "loss", oc);
  PlanConfig c;
  c.tp = 2;
  c.tp_dims = megatron_splits(b.model->graph());
  struct Count {
    int activation_all_reduce = 0, reduce_scatter_seq = 0, all_gather_seq = 0;
  };
  auto count = [](const Graph& g) {
    Count k;
    for (auto& n : g.nodes()) {
      if (n.inputs.empty() || g.type(n.inputs[0]).rank() != 3) continue;
      if (n.op == "all_reduce" && n.attrs.get_str_or("reduce", "sum") == "sum") ++k.activation_all_reduce;
      if (n.op == "reduce_scatter" && n.attrs.get_i64("dim") == 1) ++k.reduce_scatter_seq;
      if (n.op == "all_gather" && n.attrs.get_i64("dim") == 1) ++k.all_gather_seq;
    }
    return k;
  };
  const Count plain = count(partition(b.model->graph(), c)[0].graph);
  EXPECT_GT(plain.activation_all_reduce, 0);
  EXPECT_EQ(plain.reduce_scatter_seq, 0);
  c.sequence_parallel = true;
  const std::vector<RankProgram> sp = partition(b.model->graph(), c);
  const Count k = count(sp[0].graph);
  // Megatron: every all-reduce of a [batch, seq, d] activation becomes a reduce-scatter
  // along the sequence (two per block each way, the embedding's output, the final norm's
  // input gradient), and the matmul after a norm all-gathers its input. The softmax
  // denominator, all-reduced over the vocabulary without sequence parallelism, is summed on
  // each device's part of the sequence from the whole exponentials it already holds.
  EXPECT_EQ(k.activation_all_reduce, 0);
  EXPECT_EQ(plain.activation_all_reduce, 2 * 2 * 2 + 1 + 1 + 1);
  EXPECT_EQ(k.reduce_scatter_seq, 2 * 2 * 2 + 1 + 1);
  EXPECT_GE(k.all_gather_seq, k.reduce_scatter_seq);
  // The norms run on half the sequence (forward and backward; their parameters' gradients
  // are sums over the sequence).
  const Graph& g = sp[0].graph;
  int norm_nodes = 0;
  for (auto& n : g.nodes()) {
    if (n.name.rfind("block1/ln2/", 0) != 0 || n.def->kind != OpKind::compute || n.outputs[0].rank() != 3 ||
        n.outputs[0].shape[1] == 1)
      continue;
    ++norm_nodes;
    EXPECT_EQ(n.outputs[0].shape[1], 4) << n.name << " " << n.outputs[0].str();
  }
  EXPECT_GT(norm_nodes, 0);
}

TEST(Partition, SchedulesOrderMicrobatchesAsGPipeAnd1F1B) {
  auto steps = [](const std::vector<ScheduleStep>& v) {
    std::string s;
    for (auto& st : v)
      s += (s.empty() ? "" : " ") +
           (st.section == Section::apply ? std::string("A")
                                         : (st.section == Section::forward ? "F" : "B") + std::to_string(st.microbatch));
    return s;
  };
  PlanConfig c;
  c.pp = 4;
  c.microbatches = 6;
  EXPECT_EQ(steps(stage_schedule(c, 0)), "F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5 A");
  EXPECT_EQ(steps(stage_schedule(c, 2)), "F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 B5 A");
  EXPECT_EQ(steps(stage_schedule(c, 3)), "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 A");
  c.microbatches = 2;  // fewer microbatches than stages: the warm-up is cut short
  EXPECT_EQ(steps(stage_schedule(c, 0)), "F0 F1 B0 B1 A");
  c.schedule = Schedule::gpipe;
  c.pp = 2;
  c.microbatches = 3;
  EXPECT_EQ(steps(stage_schedule(c, 0)), "F0 F1 F2 B0 B1 B2 A");
  c.pp = 1;
  EXPECT_EQ(steps(stage_schedule(c, 0)), "F0 B0 F1 B1 F2 B2 A");
  // 1F1B keeps at most pp - stage microbatches in flight (GPipe: all of them).
  c.pp = 8;
  c.microbatches = 32;
  for (Schedule sched : {Schedule::one_f_one_b, Schedule::gpipe}) {
    c.schedule = sched;
    for (int64_t s = 0; s < c.pp; ++s) {
      int64_t live = 0, peak = 0;
      std::vector<int> fwd(32, 0), bwd(32, 0);
      for (auto& st : stage_schedule(c, s)) {
        if (st.section == Section::forward) ++fwd[st.microbatch], peak = std::max(peak, ++live);
        if (st.section == Section::backward) {
          EXPECT_EQ(fwd[st.microbatch], 1) << "backward before forward";
          ++bwd[st.microbatch], --live;
        }
      }
      for (int j = 0; j < 32; ++j) EXPECT_TRUE(fwd[j] == 1 && bwd[j] == 1);
      EXPECT_EQ(peak, sched == Schedule::gpipe ? 32 : c.pp - s) << "stage " << s;
    }
  }
}

TEST(Partition, ProgramsAreSplitIntoForwardBackwardAndApplySections) {
  for (auto [spec, batch, dp, tp, pp] : std::vector<std::tuple<std::string, int64_t, int64_t, int64_t, int64_t>>{
           {"mlp:8-16-16-4", 8, 1, 1, 2}, {"mlp:8-16-16-4", 8, 2, 2, 1},
           {"gpt:layers=2,d_model=16,heads=4,seq=8,vocab=32", 4, 1, 2, 2}}) {
    SCOPED_TRACE(spec);
    models::Built b = models::from_spec(spec, batch, true);
    OptimizerConfig oc;
    oc.kind = "adamw";
    oc.clip_norm = 0;
    add_training(b.model->graph(), "loss", oc);
    PlanConfig c;
    c.dp = dp;
    c.tp = tp;
    c.pp = pp;
    c.microbatches = 4;
    for (const RankProgram& p : partition(b.model->graph(), c)) {
      const Graph& g = p.graph;
      ASSERT_EQ(static_cast<int32_t>(p.section.size()), g.size());
      EXPECT_EQ(p.schedule, stage_schedule(c, p.stage));
      std::array<int, 3> count{};
      for (auto& n : g.nodes()) {
        const Section s = p.section[n.id];
        ++count[static_cast<int>(s)];
        // Never reads a later section.
        for (auto& in : n.inputs) EXPECT_LE(p.section[in.node], s) << n.name << " reads " << g.node(in.node).name;
        if (n.name.find("/grad/") != std::string::npos && n.def->kind == OpKind::compute) {
          EXPECT_EQ(s, Section::backward) << n.name;
        }
        if (n.name.rfind("optimizer/", 0) == 0 && n.def->kind == OpKind::compute) {
          EXPECT_EQ(s, Section::apply) << n.name;
        }
      }
      for (auto& u : g.updates()) EXPECT_EQ(p.section[u.value.node], Section::apply) << g.node(u.variable).name;
      for (int k = 0; k < 3; ++k) EXPECT_GT(count[k], 0) << "rank " << p.rank << " section " << k;
      if (auto loss = g.output("loss")) {
        EXPECT_EQ(p.section[loss->node], Section::forward);
      }
    }
  }
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
  std::filesystem::remove(path);
  EXPECT_EQ(g.config, f.config);
  EXPECT_EQ(g.estimate.step_time_s, 0.125);
  EXPECT_EQ(g.parameters, f.parameters);
  ASSERT_EQ(g.programs.size(), 4u);
  for (size_t r = 0; r < 4; ++r) {
    EXPECT_EQ(serialize_graph(g.programs[r].graph), serialize_graph(f.programs[r].graph));
    EXPECT_EQ(g.programs[r].input_placements, f.programs[r].input_placements);
    EXPECT_EQ(g.programs[r].coords, f.programs[r].coords);
    EXPECT_EQ(g.programs[r].section, f.programs[r].section);
    EXPECT_EQ(g.programs[r].schedule, f.programs[r].schedule);
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
