// The planner end to end: memory accounting against hand-computed values (ZeRO's
// 2Ψ + 2Ψ + 12Ψ for mixed-precision Adam), pipeline bubbles out of the simulation, the
// search never losing to a hand-pinned plan, determinism, and clear failures.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "frontend/models.h"
#include "frontend/optim.h"
#include "graph/error.h"
#include "planner/report.h"
#include "planner/search.h"
#include "tests/planner/splits.h"

namespace tessel::planner {
namespace {

using ::testing::HasSubstr;

// The training graph of a model spec at a global batch.
std::shared_ptr<Graph> training(const std::string& spec, int64_t batch, const std::string& opt = "adamw") {
  models::Built m = models::from_spec(spec, batch, true);
  OptimizerConfig oc;
  oc.kind = opt;
  add_training(m.model->graph(), "loss", oc);
  return std::make_shared<Graph>(m.model->graph());
}

ModelProfile profile(const Graph& g, const PlanConfig& c, const ClusterSpec& cl, const CostOptions& co) {
  return profile_model(g, find_layers(g, "train"), c, cl, co);
}

SearchResult search(const std::string& spec, int64_t batch, const ClusterSpec& cl, const Pins& pins,
                    const SearchOptions& so = {}) {
  return search_plan(*training(spec, batch), "train", cl, pins, so);
}

double static_bytes(const ModelProfile& mp) {
  double b = 0;
  for (auto& l : mp.layers) b += static_cast<double>(l.repeat) * (l.weight_bytes + l.grad_bytes + l.optimizer_bytes);
  return b;
}

TEST(PlanMemory, ZeroStagesMatchTheZeroPaperAccounting) {
  // Every parameter dim divides by dp = 4, so the formulas hold exactly (no buffer rounding).
  // ZeRO-1 as tessel runs it: the update runs on the optimizer state's shard, so each
  // gradient is reduce-scattered to that shard as ZeRO-2 does (the paper's stage 1 keeps
  // whole gradients, 4 psi + 12 psi / dp); the whole gradient lives only until then.
  const std::string spec = "mlp:64-128-64-32";
  const double psi = 64 * 128 + 128 + 128 * 64 + 64 + 64 * 32 + 32;
  ClusterSpec cl = parse_cluster("a100-80g:nodes=1");
  CostOptions co;
  co.precision = Precision::mixed;
  co.buffer_alignment = 1;
  auto pm = training(spec, 8);
  const double dp = 4;
  double expect[4] = {16 * psi, 2 * psi + 14 * psi / dp, 2 * psi + 14 * psi / dp, 16 * psi / dp};
  for (int z = 0; z < 4; ++z) {
    PlanConfig c;
    c.dp = 4;
    c.zero = z;
    ModelProfile mp = profile(*pm, c, cl, co);
    EXPECT_DOUBLE_EQ(static_bytes(mp), expect[z]) << "ZeRO-" << z;
  }
}

TEST(PlanCost, Zero3GathersParametersAgainForTheBackward) {
  // The backward's input gradients read fc2's and fc3's weights (fc1's input needs none):
  // under ZeRO-3 each is gathered again there, as the partitioner's programs do.
  ClusterSpec cl = parse_cluster("a100-80g:nodes=1");
  auto pm = training("mlp:64-128-64-32", 8);
  for (int z : {1, 3}) {
    PlanConfig c;
    c.dp = 4;
    c.zero = z;
    ModelProfile mp = profile(*pm, c, cl, CostOptions{});
    int forward = 0, backward = 0;
    for (auto& l : mp.layers) {
      for (auto& sg : l.forward) forward += sg.comm && sg.op == Collective::all_gather;
      for (auto& sg : l.backward) backward += sg.comm && sg.op == Collective::all_gather;
    }
    EXPECT_EQ(forward, z == 3 ? 6 : 0) << "ZeRO-" << z;
    EXPECT_EQ(backward, z == 3 ? 2 : 0) << "ZeRO-" << z;
  }
}

TEST(PlanMemory, TensorParallelSplitsTheSplitLayers) {
  // fc1 column, fc2 row (its bias replicated), fc3 (the classifier) replicated; f32 Adam:
  // weights 4 + grads 4 + m, v 8 = 16 bytes per element held.
  ClusterSpec cl = parse_cluster("local:4");
  auto pm = training("mlp:64-128-64-32", 8);
  PlanConfig c;
  c.tp = 4;
  c.tp_dims = megatron_splits(*pm);
  ModelProfile mp = profile(*pm, c, cl, CostOptions{});
  const double held = (64 * 128 + 128) / 4.0 + (128 * 64) / 4.0 + 64 + 64 * 32 + 32;
  EXPECT_DOUBLE_EQ(static_bytes(mp), 16 * held);
}

TEST(PlanMemory, PipelineStagesHoldTheirLayersAndActivationsInFlight) {
  ClusterSpec cl = parse_cluster("local:4");
  auto pm = training("mlp:64-128-64-32", 8);
  PlanConfig c;
  c.pp = 2;
  c.microbatches = 4;
  ModelProfile mp = profile(*pm, c, cl, CostOptions{});
  PlanEstimate e = estimate_plan(mp, c, cl, CostOptions{});
  ASSERT_EQ(e.stages.size(), 2u);
  double total = 0;
  for (auto& st : e.stages) total += st.weight_bytes + st.grad_bytes + st.optimizer_bytes;
  EXPECT_DOUBLE_EQ(total, static_bytes(mp));
  // 1F1B keeps at most pp microbatches' activations on stage 0, GPipe all m.
  PlanConfig g = c;
  g.schedule = Schedule::gpipe;
  PlanEstimate eg = estimate_plan(mp, g, cl, CostOptions{});
  EXPECT_GT(eg.stages[0].activation_bytes, e.stages[0].activation_bytes);
}

// A synthetic model: L identical layers, forward f and backward 2f, no communication.
ModelProfile uniform(int64_t layers, double f) {
  ModelProfile mp;
  LayerProfile l;
  l.name = "block0";
  l.repeat = layers;
  Segment fwd, bwd;
  fwd.seconds = f;
  bwd.seconds = 2 * f;
  l.forward = {fwd};
  l.backward = {bwd};
  l.forward_compute_s = f;
  l.backward_compute_s = 2 * f;
  mp.layers = {l};
  return mp;
}

TEST(PlanMemory, SelectiveRecomputeAndSequenceParallelismCutActivations) {
  // Long sequence, small model: the attention scores ([b, heads, s, s]) dominate what a
  // block keeps, which is what selective recomputation drops.
  ClusterSpec cl = parse_cluster("a100-80g:nodes=1");
  CostOptions co;
  co.precision = Precision::mixed;
  auto pm = training("gpt:layers=2,d_model=64,heads=8,seq=512,vocab=256", 2);
  PlanConfig c;
  c.tp = 2;
  auto est = [&](Recompute r, bool sp) {
    c.recompute = r;
    c.sequence_parallel = sp;
    return estimate_plan(profile(*pm, c, cl, co), c, cl, co, false);
  };
  const PlanEstimate none = est(Recompute::none, false), sel = est(Recompute::selective, false),
                     full = est(Recompute::full, false), sel_sp = est(Recompute::selective, true);
  const double act_none = none.stages[0].activation_bytes, act_sel = sel.stages[0].activation_bytes,
               act_full = full.stages[0].activation_bytes;
  EXPECT_LT(act_full, act_sel);
  EXPECT_LT(act_sel, act_none);
  // Per block, what stays between forward and backward: the s x s scores were most of it
  // (the peak above still holds one block's rebuilt core during its backward).
  const ModelProfile mp = profile(*pm, c, cl, co);
  const LayerProfile& block = mp.layers[1];
  ASSERT_EQ(block.name, "block0");
  EXPECT_LT(block.selective_kept_bytes, 0.15 * block.activation_bytes);
  EXPECT_GT(block.core_rebuilt_bytes, 0.8 * block.activation_bytes);
  EXPECT_GT(block.core_forward_flops, 0);
  // Recomputation costs FLOPs: the attention core's forward, or the whole forward.
  EXPECT_EQ(none.hardware_flops_per_step, none.model_flops_per_step);
  EXPECT_GT(sel.hardware_flops_per_step, none.hardware_flops_per_step);
  EXPECT_LT(sel.hardware_flops_per_step, full.hardware_flops_per_step);
  EXPECT_EQ(sel.model_flops_per_step, full.model_flops_per_step);
  // Sequence parallelism splits what the norm and residual regions keep over tp.
  EXPECT_LT(sel_sp.stages[0].activation_bytes, act_sel);
}

TEST(PlanPipeline, PinnedStageLayersAreHonouredAndChecked) {
  ClusterSpec cl = parse_cluster("local:2");
  Pins pins;
  pins.dp = 1;
  pins.tp = 1;
  pins.pp = 2;
  pins.stage_layers = {1, 5};  // wte | block0, block1, block2, ln_f, cross_entropy
  SearchResult r = search("gpt:layers=3,d_model=32,heads=4,seq=16,vocab=64", 4, cl, pins, SearchOptions{});
  ASSERT_EQ(r.best.stages.size(), 2u);
  EXPECT_EQ(r.best.stages[0].end_layer, 1);
  EXPECT_EQ(r.best.config.stage_layers, (std::vector<int64_t>{1, 5}));
  pins.stage_layers = {2, 2};
  try {
    search("gpt:layers=3,d_model=32,heads=4,seq=16,vocab=64", 4, cl, pins, SearchOptions{});
    FAIL() << "layer counts that do not add up were accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("sum to 4; the model has 6 layers (wte, block0, block1, block2, ln_f, cross_entropy)"));
  }
}

TEST(PlanPipeline, BubbleComesOutOfTheSimulation) {
  ClusterSpec cl = parse_cluster("a100-80g:nodes=2");
  for (Schedule s : {Schedule::gpipe, Schedule::one_f_one_b})
    for (auto [p, m] : std::vector<std::pair<int64_t, int64_t>>{{2, 4}, {4, 8}, {4, 16}, {8, 8}}) {
      PlanConfig c;
      c.pp = p;
      c.microbatches = m;
      c.schedule = s;
      const double f = 1e-3;
      PlanEstimate e = estimate_plan(uniform(8 * p, f), c, cl, CostOptions{});
      const double stage = 8 * 3 * f;  // 8 layers per stage, f + 2f each
      EXPECT_NEAR(e.step_time_s, (m + p - 1) * stage, 1e-3 * stage) << c.str();
      EXPECT_NEAR(e.bubble_s / e.step_time_s, double(p - 1) / double(m + p - 1), 1e-3) << c.str();
    }
}

TEST(PlanCost, GradientAccumulationIsOneMemoryPassPerMicrobatch) {
  // Mixed precision, f32 sums: a microbatch's bf16 gradient (2 bytes) is read and the f32
  // sum read and written (8): 10 bytes per parameter; cast-add first writes and rereads an
  // f32 copy (+8); in-gemm costs nothing. Paid per microbatch only when there are several.
  const std::string spec = "mlp:64-128-64-32";
  const double psi = 64 * 128 + 128 + 128 * 64 + 64 + 64 * 32 + 32;
  const double tensors = 6;
  ClusterSpec cl = parse_cluster("a100-80g:nodes=1");
  const double bw = cl.device.memory_bandwidth, launch = cl.device.launch_overhead_s;
  auto pm = training(spec, 8);
  PlanConfig c;
  c.microbatches = 4;
  auto run = [&](CostOptions::GradAccumulation a, int64_t m, double* pass) {
    CostOptions co;
    co.precision = Precision::mixed;
    co.f32_gradients = true;
    co.grad_accumulation = a;
    PlanConfig cm = c;
    cm.microbatches = m;
    ModelProfile mp = profile(*pm, cm, cl, co);
    *pass = 0;
    for (auto& l : mp.layers) *pass += static_cast<double>(l.repeat) * l.grad_accumulate_s;
    return estimate_plan(mp, cm, cl, co).step_time_s;
  };
  using A = CostOptions::GradAccumulation;
  double add = 0, cast = 0, fused = 0;
  const double t_add = run(A::add, 4, &add), t_cast = run(A::cast_add, 4, &cast), t_fused = run(A::in_gemm, 4, &fused);
  EXPECT_DOUBLE_EQ(fused, 0);
  EXPECT_NEAR(add, psi * 10 / bw + tensors * launch, 1e-15);
  EXPECT_NEAR(cast, psi * 18 / bw + 2 * tensors * launch, 1e-15);
  // One device, nothing to overlap: each of the 4 microbatches pays the pass once.
  EXPECT_NEAR(t_add - t_fused, 4 * add, 1e-12);
  EXPECT_NEAR(t_cast - t_fused, 4 * cast, 1e-12);
  double unused = 0;
  EXPECT_DOUBLE_EQ(run(A::add, 1, &unused), run(A::in_gemm, 1, &unused)) << "one microbatch has nothing to accumulate";
}

TEST(PlanPipeline, BlockingTransfersHoldBothStagesComputeStreams) {
  // Two stages of 8 layers (forward f, backward 2f); the boundary sends d seconds of data.
  ClusterSpec cl = parse_cluster("a100-80g:nodes=2");
  const double f = 1e-3;
  ModelProfile mp = uniform(16, f);
  mp.layers[0].output_bytes = 50e6;
  PlanConfig c;
  c.pp = 2;
  c.microbatches = 1;
  CostOptions overlapped, blocking;
  blocking.blocking_p2p = true;
  const double d = collective_time(cl, Collective::send_recv, 50e6, std::vector<int64_t>{0, 1}).seconds;
  ASSERT_GT(d, 0);
  const double tf = 8 * f, tb = 16 * f;
  // One microbatch: F0, transfer, F1, B1, transfer back, B0, either way.
  EXPECT_NEAR(estimate_plan(mp, c, cl, blocking).step_time_s, 2 * tf + 2 * tb + 2 * d, 1e-9);
  EXPECT_NEAR(estimate_plan(mp, c, cl, overlapped).step_time_s, 2 * tf + 2 * tb + 2 * d, 1e-9);
  // Several: each stage's compute stream also carries its own sends, m each way, and books
  // every transfer it holds as exposed communication.
  c.microbatches = 8;
  PlanEstimate eb = estimate_plan(mp, c, cl, blocking, true), eo = estimate_plan(mp, c, cl, overlapped);
  EXPECT_GT(eb.step_time_s, eo.step_time_s + d);
  for (const StageEstimate& st : eb.stages) EXPECT_NEAR(st.exposed_comm_s, 2 * 8 * d, 1e-9);
  int sends = 0;
  for (const Task& t : eb.simulation->tasks())
    if (t.kind == TaskKind::send) {
      EXPECT_EQ(t.stream, Stream::compute) << t.name;
      ++sends;
    }
  EXPECT_EQ(sends, 2 * 8);
}

TEST(PlanSearch, NeverSlowerThanAnyPinnedPlanAndDeterministic) {
  for (auto [spec, cluster, batch] : std::vector<std::tuple<std::string, std::string, int64_t>>{
           {"mlp:256-512-512-10", "local:4", 64},
           {"gpt:layers=4,d_model=64,heads=4,seq=32,vocab=128", "a100-80g:nodes=2", 32}}) {
    ClusterSpec cl = parse_cluster(cluster);
    SearchOptions so;
    const auto g = training(spec, batch);
    SearchResult best = search_plan(*g, "train", cl, Pins{}, so);
    ASSERT_TRUE(best.best.fits) << spec;
    SearchResult again = search_plan(*g, "train", cl, Pins{}, so);
    EXPECT_EQ(again.best.config, best.best.config);
    EXPECT_EQ(again.best.step_time_s, best.best.step_time_s);
    for (int64_t tp : {1, 2, 4})
      for (int64_t pp : {1, 2, 4}) {
        if (cl.num_devices % (tp * pp) != 0) continue;
        Pins pins;
        pins.tp = tp;
        pins.pp = pp;
        try {
          SearchResult pinned = search_plan(*g, "train", cl, pins, so);
          if (pinned.best.fits) {
            EXPECT_LE(best.best.step_time_s, pinned.best.step_time_s * (1 + 1e-9))
                << spec << ": search " << best.best.config.str() << " vs pinned " << pinned.best.config.str();
          }
        } catch (const Error&) {
          // e.g. more stages than layers: nothing to compare
        }
      }
    EXPECT_GE(best.alternatives.size(), 3u) << spec;
  }
}

TEST(PlanSearch, ImpossiblePinsAndMemorySayWhy) {
  ClusterSpec cl = parse_cluster("local:4");
  Pins pins;
  pins.tp = 3;
  try {
    search("mlp:64-128-10", 16, cl, pins, SearchOptions{});
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("tp=3"));
  }
  // A model far too large for one A100: the plan says which device, by how much, and why.
  ClusterSpec one = parse_cluster("a100-80g:nodes=1");
  Pins single;
  single.dp = 1;
  single.tp = 1;
  single.pp = 1;
  SearchResult r = search("mlp:65536-65536-65536-10", 8, one, single, SearchOptions{});
  EXPECT_FALSE(r.best.fits);
  EXPECT_THAT(r.best.fit_problem, HasSubstr("stage 0"));
  EXPECT_THAT(r.best.fit_problem, HasSubstr("more than"));
  EXPECT_THAT(r.best.fit_problem, HasSubstr("optimizer state"));
}

TEST(PlanReport, JsonHasTheDocumentedKeys) {
  ClusterSpec cl = parse_cluster("local:4");
  const auto g = training("mlp:64-128-64-32", 32);
  SearchResult r = search_plan(*g, "train", cl, Pins{}, SearchOptions{});
  ReportContext ctx{"mlp", "local:4", 32, &cl, nullptr, g.get(), "train"};
  std::string j = report_json(r, ctx);
  for (const char* k : {"step_time_s", "model_flops_per_step", "hardware_flops_per_step", "tflops_per_device", "mfu",
                        "peak_memory_bytes", "mesh", "stages", "search_time_s", "alternatives", "why"})
    EXPECT_THAT(j, HasSubstr(std::string("\"") + k + "\"")) << k;
  EXPECT_THAT(plan_dot(r, ctx), HasSubstr("digraph"));
}

}  // namespace
}  // namespace tessel::planner
