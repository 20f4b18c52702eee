// The executor's schedule of work: gradient buckets start while the backward pass
// still runs, memory is checked against the device before the first step, and a rank that
// fails stops the others with its own error.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include "frontend/distributed.h"
#include "frontend/models.h"
#include "frontend/optim.h"
#include "graph/error.h"
#include "planner/partition.h"
#include "runtime/gloo_comm.h"
#include "runtime/local_run.h"

namespace tessel::runtime {
namespace {

using ::testing::HasSubstr;

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> v;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) v.push_back(l);
  return v;
}

planner::PlanConfig dp_pp(int64_t dp, int64_t pp, int64_t mb = 1) {
  planner::PlanConfig c;
  c.dp = dp;
  c.pp = pp;
  c.microbatches = mb;
  return c;
}

planner::PlanConfig config(int64_t dp, int64_t tp, int64_t pp, int64_t mb, int zero) {
  planner::PlanConfig c;
  c.dp = dp, c.tp = tp, c.pp = pp, c.microbatches = mb, c.zero = zero;
  return c;
}

Graph mlp(int64_t batch) {
  models::Built b = models::from_spec("mlp:8-32-32-32-4", batch, true);
  OptimizerConfig oc;
  oc.kind = "sgd";
  add_training(b.model->graph(), "loss", oc);
  return b.model->graph();
}

// Feeds the same random inputs (uniform in [-1, 1]; integer inputs 0) of `g` to both runs.
void feed_both(const Graph& g, const std::vector<std::string>& inputs, std::mt19937& rng, LocalRun& a, LocalRun& b) {
  for (auto& name : inputs) {
    const TensorType& t = g.node(*g.find(name)).outputs[0];
    std::vector<std::byte> data(static_cast<size_t>(t.bytes()), std::byte{0});
    if (t.dtype == DType::f32)
      for (size_t i = 0; i < data.size() / 4; ++i)
        reinterpret_cast<float*>(data.data())[i] = std::uniform_real_distribution<float>(-1, 1)(rng);
    a.feed(name, t, data);
    b.feed(name, t, data);
  }
}

TEST(Executor, GradientBucketsStartWhileTheBackwardStillRuns) {
  const Graph g = mlp(8);
  ExecutorOptions small;
  small.bucket_bytes = 4096;  // a 32x32 f32 weight gradient each
  LocalRun run(planner::partition(g, dp_pp(2, 1, 2)), dp_pp(2, 1, 2), small);
  const auto ops = lines(run.rank(0).describe());
  int first_launch = -1, last_backward = -1, launches = 0;
  for (int i = 0; i < static_cast<int>(ops.size()); ++i) {
    if (ops[i].rfind("launch all_reduce", 0) == 0 && ops[i].find("optimizer/") != std::string::npos) {  // gradients
      ++launches;
      if (first_launch < 0) first_launch = i;
    }
    if (ops[i].rfind("kernel ", 0) == 0 && ops[i].find("/grad/") != std::string::npos) last_backward = i;
  }
  ASSERT_GE(first_launch, 0) << run.rank(0).describe();
  // The last layer's gradients go out before the first layer's are computed, and only in the
  // last microbatch (the others accumulate).
  EXPECT_LT(first_launch, last_backward) << run.rank(0).describe();
  EXPECT_THAT(ops[static_cast<size_t>(first_launch)], HasSubstr("fc4/weight"));
  EXPECT_GE(launches, 3);
  int accumulate_before_launch = 0;
  for (int i = 0; i < first_launch; ++i) accumulate_before_launch += ops[static_cast<size_t>(i)].rfind("accumulate", 0) == 0;
  EXPECT_GT(accumulate_before_launch, 0);

  // With the default 25 MB, every gradient goes in one bucket.
  LocalRun big(planner::partition(g, dp_pp(2, 1)), dp_pp(2, 1));
  int big_launches = 0;
  for (auto& l : lines(big.rank(0).describe()))
    big_launches += l.rfind("launch all_reduce", 0) == 0 && l.find("optimizer/") != std::string::npos;
  EXPECT_EQ(big_launches, 1) << big.rank(0).describe();
}

// The loss is all-reduced over the data-parallel group in the forward pass, but nothing
// the gradients need waits for it: the compute stream goes on into the backward, and the
// loss is finished after the last backward kernel, for every microbatch.
TEST(Executor, TheLossWaitsForItsAllReduceOnlyAfterTheBackward) {
  const Graph g = mlp(8);
  for (int64_t mb : {1, 2}) {
    LocalRun run(planner::partition(g, dp_pp(2, 1, mb)), dp_pp(2, 1, mb));
    const auto ops = lines(run.rank(1).describe());
    int last_backward = -1, loss_waits = 0, loss_outputs = 0;
    for (int i = 0; i < static_cast<int>(ops.size()); ++i)
      if (ops[i].rfind("kernel ", 0) == 0 && ops[i].find("/grad/") != std::string::npos) last_backward = i;
    for (int i = 0; i < static_cast<int>(ops.size()); ++i) {
      if (ops[i].rfind("wait all_reduce of 1 tensor [cross_entropy", 0) == 0) {
        ++loss_waits;
        EXPECT_GT(i, last_backward) << run.rank(1).describe();
      }
      if (ops[i] == "output loss") {
        ++loss_outputs;
        EXPECT_GT(i, last_backward) << run.rank(1).describe();
      }
    }
    EXPECT_EQ(loss_waits, mb) << run.rank(1).describe();
    EXPECT_EQ(loss_outputs, mb) << run.rank(1).describe();
  }
}

// The backward serves what others wait for first: on a data-parallel rank a layer's
// weight gradient (which its bucket reduces) is computed before the gradient of the
// layer's input; on a pipeline stage the gradient the previous stage waits for is sent
// before this stage's weight gradients are computed.
TEST(Executor, TheBackwardComputesWhatOthersWaitForFirst) {
  const Graph g = mlp(8);
  auto position = [](const std::vector<std::string>& ops, const std::string& line) {
    const auto it = std::find(ops.begin(), ops.end(), line);
    return it == ops.end() ? -1 : static_cast<int>(it - ops.begin());
  };
  LocalRun dp(planner::partition(g, dp_pp(2, 1)), dp_pp(2, 1));
  const auto d = lines(dp.rank(0).describe());
  for (const std::string layer : {"fc2", "fc3", "fc4"}) {
    const int weight = position(d, "kernel " + layer + "/matmul/grad/matmul_0"), input = position(d, "kernel " + layer + "/matmul/grad/matmul");
    ASSERT_GE(weight, 0) << dp.rank(0).describe();
    EXPECT_LT(weight, input) << layer << "\n" << dp.rank(0).describe();
  }
  LocalRun pp(planner::partition(g, dp_pp(1, 2)), dp_pp(1, 2));
  const auto q = lines(pp.rank(1).describe());
  int send = -1, last_weight = -1;
  for (int i = 0; i < static_cast<int>(q.size()); ++i) {
    if (q[i].rfind("send ", 0) == 0 && send < 0) send = i;
    if (q[i].rfind("kernel ", 0) == 0 && q[i].find("/grad/matmul_0") != std::string::npos) last_weight = i;
  }
  ASSERT_GE(send, 0) << pp.rank(1).describe();
  EXPECT_LT(send, last_weight) << pp.rank(1).describe();
  const int first_weight = [&] {
    for (int i = 0; i < static_cast<int>(q.size()); ++i)
      if (q[i].rfind("kernel ", 0) == 0 && q[i].find("/grad/matmul_0") != std::string::npos) return i;
    return -1;
  }();
  EXPECT_LT(send, first_weight) << pp.rank(1).describe();
}

// Rank 0 of a world of 2 whose collectives are recorded, not performed.
class RecordingComm final : public Communicator {
 public:
  struct AllReduce {
    std::vector<const void*> in, out;
    int64_t numel = 0;
  };
  std::vector<AllReduce> all_reduces;
  int64_t rank() const override { return 0; }
  int64_t size() const override { return 2; }
  std::string_view engine() const override { return "recording"; }
  void all_reduce(std::span<const TensorRef> in, std::span<const TensorRef> out, ReduceOp, std::span<const int64_t>) override {
    AllReduce a;
    for (size_t i = 0; i < in.size(); ++i) {
      a.in.push_back(in[i].data);
      a.out.push_back(out[i].data);
      a.numel += in[i].numel;
      if (out[i].data != in[i].data) std::memcpy(out[i].data, in[i].data, static_cast<size_t>(in[i].bytes()));
    }
    all_reduces.push_back(a);
  }
  void reduce_scatter(const TensorRef&, const TensorRef&, int, ReduceOp, std::span<const int64_t>) override {}
  void all_gather(const TensorRef&, const TensorRef&, int, std::span<const int64_t>) override {}
  void all_to_all(const TensorRef&, const TensorRef&, int, int, std::span<const int64_t>) override {}
  void broadcast(const TensorRef&, const TensorRef&, int64_t, std::span<const int64_t>) override {}
  void barrier(std::span<const int64_t>) override {}
  void send(const TensorRef&, int64_t, int64_t) override {}
  void recv(const TensorRef&, int64_t, int64_t) override {}
  void abort(const std::string&) override {}
};

// A bucket of floating-point gradients is reduced where the backward wrote it, as one
// block: the engine gets one tensor, in place, covering every gradient of the bucket (no
// packing copies); each gradient's buffer lies inside that block, and the optimizer reads
// the reduced values from there.
TEST(Executor, AGradientBucketIsReducedInPlaceAsOneBlock) {
  for (int64_t mb : {1, 2}) {
    const Graph g = mlp(8);
    const auto c = dp_pp(2, 1, mb);
    auto programs = planner::partition(g, c);
    RecordingComm comm;
    Executor x(programs[0], comm);
    x.initialize();
    x.step();
    int64_t grads = 0;
    for (const auto& u : programs[0].graph.updates()) grads += programs[0].graph.type(u.value).numel();
    const RecordingComm::AllReduce* bucket = nullptr;
    for (const auto& a : comm.all_reduces)
      if (a.numel >= grads) bucket = &a;
    ASSERT_NE(bucket, nullptr) << x.describe();
    ASSERT_EQ(bucket->in.size(), 1u) << "microbatches " << mb;
    EXPECT_EQ(bucket->in[0], bucket->out[0]);
    EXPECT_LT(bucket->numel, grads + 64 * static_cast<int64_t>(programs[0].graph.updates().size()));  // gaps < 64 B
    const auto* lo = static_cast<const std::byte*>(bucket->in[0]);
    const auto* hi = lo + bucket->numel * 4;
    int checked = 0;
    const Graph& pg = programs[0].graph;
    for (const Node& n : pg.nodes()) {
      if (n.op != "all_reduce" || n.name.rfind("optimizer/", 0) != 0) continue;  // the gradients'
      const auto* p = static_cast<const std::byte*>(x.value(n.out()).data);  // what the optimizer reads
      EXPECT_TRUE(p >= lo && p + pg.type(n.out()).bytes() <= hi) << n.name << " microbatches " << mb;
      ++checked;
    }
    EXPECT_EQ(checked, 8);  // 4 layers, a weight and a bias each
  }
}

// With the JIT, every rank writes each update of a parameter or a moment straight into the
// variable: the fused AdamW kernel over it, or ZeRO's all-gather of the updated shards; and
// training follows the reference kernels on every plan.
TEST(Executor, UpdatesAreWrittenOverTheirVariablesOnEveryPlan) {
  models::Built b = models::from_spec("mlp:8-32-32-4", 4, true);
  OptimizerConfig oc;
  oc.kind = "adamw";
  oc.weight_decay = 0.1;
  add_training(b.model->graph(), "loss", oc);
  const Graph& g = b.model->graph();
  for (const planner::PlanConfig& c : {config(2, 1, 1, 1, 0), config(2, 1, 1, 1, 1), config(2, 1, 1, 2, 3),
                                       config(1, 1, 2, 2, 0), config(1, 2, 1, 1, 0)}) {
    ExecutorOptions no_jit;
    no_jit.jit = false;
    LocalRun jit(planner::partition(g, c), c), ref(planner::partition(g, c), c, no_jit);
    jit.initialize();
    ref.initialize();
    for (int64_t r = 0; r < jit.ranks(); ++r) {
      int64_t tensors = 0;
      const Graph& rg = jit.rank(r).program().graph;
      for (auto& u : rg.updates()) tensors += rg.type(u.value).numel() > 1;
      EXPECT_GT(tensors, 0);
      EXPECT_EQ(jit.jit_reports()[static_cast<size_t>(r)].updates_in_place, tensors) << c.str() << " rank " << r;
      // Without the JIT only ZeRO-1/2's all-gathers of the parameters write straight in.
      const int64_t gathered = c.zero == 1 || c.zero == 2 ? tensors / 3 : 0;
      EXPECT_EQ(ref.jit_reports()[static_cast<size_t>(r)].updates_in_place, gathered) << c.str() << " rank " << r;
    }
    std::mt19937 rng(1);
    for (int step = 0; step < 3; ++step) {
      feed_both(g, b.inputs, rng, jit, ref);
      jit.step();
      ref.step();
      EXPECT_NEAR(jit.scalar_output("loss"), ref.scalar_output("loss"), 1e-5) << c.str() << " step " << step;
    }
    for (int32_t id : g.nodes_of_kind(OpKind::variable)) {
      const Node& n = g.node(id);
      const auto x = jit.gather_variable(n.name, n.outputs[0]), y = ref.gather_variable(n.name, n.outputs[0]);
      const float* xf = reinterpret_cast<const float*>(x.data());
      const float* yf = reinterpret_cast<const float*>(y.data());
      for (int64_t i = 0; i < n.outputs[0].numel(); ++i)
        ASSERT_NEAR(xf[i], yf[i], 1e-5 * std::max(1.f, std::fabs(yf[i]))) << c.str() << ": " << n.name << "[" << i << "]";
    }
  }
}

// A collective the very next op waits for (tensor parallelism's) is run by the compute thread
// itself when the communication thread has nothing queued: no hand-off and no wake-ups. The
// gradient reductions the backward does not wait for still go to the communication thread.
// (A collective the next op waits for that finds the communication thread still busy is handed
// to it as before.) Either way the results are those of running every collective in place, and the
// timeline shows each collective on the communication stream and the compute thread's time in
// it as a wait.
TEST(Executor, ACollectiveTheNextOpWaitsForRunsOnTheComputeThread) {
  models::Built b = models::from_spec("gpt:layers=2,d_model=16,heads=2,seq=8,vocab=32", 4, true);
  OptimizerConfig oc;
  oc.kind = "adamw";
  add_training(b.model->graph(), "loss", oc);
  const Graph& g = b.model->graph();
  for (const planner::PlanConfig& want : {config(1, 2, 1, 1, 0), config(2, 2, 1, 2, 0), config(2, 2, 1, 1, 1)}) {
    // The planner's tensor-parallel split (Megatron's), not the partitioner's default.
    const DevicePlan plan = plan_for_devices(g, want.devices(), pins_for(want, {}));
    const planner::PlanConfig& c = plan.config;
    ASSERT_EQ(c.tp, 2) << c.str();
    ExecutorOptions timed, in_place;
    timed.timeline = true;
    in_place.overlap = false;
    LocalRun run(plan.programs(g), c, timed), ref(plan.programs(g), c, in_place);
    run.initialize();
    ref.initialize();
    std::mt19937 rng(7);
    for (int step = 0; step < 3; ++step) {
      feed_both(g, b.inputs, rng, run, ref);
      run.step();
      ref.step();
      EXPECT_EQ(run.scalar_output("loss"), ref.scalar_output("loss")) << c.str() << " step " << step;
    }
    for (int64_t r = 0; r < run.ranks(); ++r) {
      const auto ops = lines(run.rank(r).describe());
      int64_t blocking = 0, launches = 0;
      for (size_t i = 0; i + 1 < ops.size(); ++i)
        if (ops[i].rfind("launch ", 0) == 0) {
          ++launches;
          blocking += ops[i + 1] == "wait " + ops[i].substr(7);
        }
      ASSERT_GT(blocking, 0) << c.str() << " rank " << r << "\n" << run.rank(r).describe();
      const StepTimeline t = run.rank(r).timeline();
      int64_t on_comm = 0, ran_here = 0;
      for (const StepEvent& e : t.events) {
        on_comm += e.comm;
        EXPECT_LE(e.start_ns, e.end_ns) << e.what;
        // A collective run in place shows as a wait named after it (its launch op).
        ran_here += !e.comm && e.kind == StepEvent::Kind::wait && e.what.rfind("launch ", 0) == 0;
      }
      EXPECT_EQ(on_comm, launches) << c.str() << " rank " << r;
      // Those that found the communication thread still busy (with a reduction launched
      // before) were handed to it as before.
      EXPECT_GT(ran_here, 0) << c.str() << " rank " << r << "\n" << run.rank(r).describe();
      EXPECT_LE(ran_here, blocking) << c.str() << " rank " << r;
      const StepBreakdown bd = run.rank(r).breakdown();
      EXPECT_GT(bd.exposed_comm_s, 0) << c.str() << " rank " << r;
    }
  }
}

TEST(Executor, APlanThatDoesNotFitFailsBeforeTheFirstStepNamingTheDeviceAndItsLargestBuffers) {
  const Graph g = mlp(64);
  LocalRun run(planner::partition(g, dp_pp(1, 2, 4)), dp_pp(1, 2, 4));
  try {
    run.initialize(20 << 10);
    FAIL() << "20 KiB should not be enough";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("rank 0 (stage 0) needs"));
    EXPECT_THAT(e.what(), HasSubstr("more than the device's 20.0 KiB"));
    EXPECT_THAT(e.what(), HasSubstr("largest buffers:"));
  }
}

TEST(Executor, ARankThatFailsStopsTheOthersWithItsOwnError) {
  const Graph g = mlp(8);
  const planner::PlanConfig c = dp_pp(1, 2, 2);
  CommOptions co;
  co.timeout_s = 30;  // the stop must come from the failure, not a timeout
  LocalRun run(planner::partition(g, c), c, ExecutorOptions{}, co);
  run.initialize();
  const TensorType& x = g.node(*g.find("x")).outputs[0];
  const TensorType& labels = g.node(*g.find("labels")).outputs[0];
  std::vector<std::byte> xs(static_cast<size_t>(x.bytes())), ls(static_cast<size_t>(labels.bytes()));
  reinterpret_cast<int32_t*>(ls.data())[3] = 7;  // 4 classes: the last stage's loss rejects it
  run.feed("x", x, xs);
  run.feed("labels", labels, ls);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    run.step();
    FAIL() << "a label out of range must fail";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("rank 1"));
    EXPECT_THAT(std::string(e.what()), ::testing::Not(HasSubstr("stopped")));
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10);
}


namespace rows_test {

// The bytes of rows [begin, end) of `whole`.
std::span<const std::byte> rows_of(const std::vector<std::byte>& whole, const TensorType& t, LocalRun::Rows r) {
  const size_t row = static_cast<size_t>(t.bytes() / t.shape[0]);
  return std::span<const std::byte>(whole).subspan(static_cast<size_t>(r.begin) * row, static_cast<size_t>(r.count()) * row);
}

}  // namespace rows_test

// One rank per process (here: one LocalRun per thread, each its own Gloo endpoint, as
// processes are): each loads only the rows of the batch its rank reads (a data-parallel
// replica's block; nothing for a pipeline stage that does not read the input), and trains
// exactly as one process fed the whole batch. Feeding fewer rows than the rank reads is
// refused naming the rank and the rows.
TEST(LocalRun, EachProcessLoadsOnlyTheRowsItsRankReads) {
  const int64_t B = 8;
  models::Built b = models::from_spec("mlp:8-16-16-4", B, true);
  OptimizerConfig oc;
  oc.kind = "adamw";
  add_training(b.model->graph(), "loss", oc);
  const Graph& g = b.model->graph();
  std::mt19937 rng(7);
  std::vector<std::vector<std::vector<std::byte>>> data(3);  // per step, per input
  for (auto& step : data)
    for (auto& name : b.inputs) {
      const TensorType& t = g.node(*g.find(name)).outputs[0];
      std::vector<std::byte> d(static_cast<size_t>(t.bytes()));
      for (size_t i = 0; i < d.size() / 4; ++i) {
        if (t.dtype == DType::f32) reinterpret_cast<float*>(d.data())[i] = std::uniform_real_distribution<float>(-1, 1)(rng);
        else reinterpret_cast<int32_t*>(d.data())[i] = static_cast<int32_t>(rng() % 4);
      }
      step.push_back(std::move(d));
    }
  for (const planner::PlanConfig& c : {config(2, 1, 1, 1, 0), config(4, 1, 1, 2, 1), config(2, 1, 1, 2, 3),
                                       config(1, 2, 1, 1, 0), config(2, 2, 1, 1, 0), config(1, 1, 2, 2, 0),
                                       config(2, 1, 2, 2, 0)}) {
    SCOPED_TRACE(c.str());
    LocalRun one(planner::partition(g, c), c);
    one.initialize();
    std::vector<double> want;
    for (auto& step : data) {
      for (size_t i = 0; i < b.inputs.size(); ++i)
        one.feed(b.inputs[i], g.node(*g.find(b.inputs[i])).outputs[0], step[i]);
      one.step();
      want.push_back(one.scalar_output("loss"));
    }
    const int64_t n = c.devices();
    auto rdv = gloo_memory_rendezvous();
    std::vector<std::string> err(static_cast<size_t>(n));
    std::vector<std::vector<double>> got(static_cast<size_t>(n));
    std::vector<std::map<std::string, LocalRun::Rows>> read(static_cast<size_t>(n));
    std::vector<std::vector<std::byte>> weight(static_cast<size_t>(n));
    std::vector<std::thread> procs;
    for (int64_t r = 0; r < n; ++r)
      procs.emplace_back([&, r] {
        try {
          LocalRun run(planner::partition(g, c), c, r, gloo_communicator(r, n, rdv));
          run.initialize();
          for (auto& step : data) {
            for (size_t i = 0; i < b.inputs.size(); ++i) {
              const TensorType& t = g.node(*g.find(b.inputs[i])).outputs[0];
              const LocalRun::Rows rows = run.rows(b.inputs[i], t);
              read[static_cast<size_t>(r)][b.inputs[i]] = rows;
              run.feed(b.inputs[i], t, rows_test::rows_of(step[i], t, rows), rows.begin);
            }
            run.step();
            got[static_cast<size_t>(r)].push_back(run.scalar_output("loss"));
          }
          weight[static_cast<size_t>(r)] = run.gather_variable("fc1/weight", g.node(*g.find("fc1/weight")).outputs[0]);
        } catch (const std::exception& e) {
          err[static_cast<size_t>(r)] = e.what();
        }
      });
    for (auto& t : procs) t.join();
    for (int64_t r = 0; r < n; ++r) {
      ASSERT_EQ(err[static_cast<size_t>(r)], "") << "rank " << r;
      for (size_t s = 0; s < want.size(); ++s)
        EXPECT_NEAR(got[static_cast<size_t>(r)][s], want[s], 1e-5 * std::max(1.0, std::fabs(want[s]))) << "rank " << r;
      const std::vector<std::byte> w = one.gather_variable("fc1/weight", g.node(*g.find("fc1/weight")).outputs[0]);
      ASSERT_EQ(weight[static_cast<size_t>(r)].size(), w.size());
      const auto* a = reinterpret_cast<const float*>(weight[static_cast<size_t>(r)].data());
      const auto* e = reinterpret_cast<const float*>(w.data());
      for (size_t i = 0; i < w.size() / 4; ++i) ASSERT_NEAR(a[i], e[i], 1e-5 * std::max(1.f, std::fabs(e[i]))) << "rank " << r;
    }
    // Each rank reads its replica's block of every input its stage reads, and nothing else.
    const std::vector<planner::RankProgram> programs = planner::partition(g, c);
    for (auto& name : b.inputs) {
      int64_t readers = 0;
      for (int64_t r = 0; r < n; ++r) {
        const LocalRun::Rows rows = read[static_cast<size_t>(r)][name];
        if (rows.count() == 0) continue;
        ++readers;
        const int64_t d = programs[static_cast<size_t>(r)].coords[0];
        EXPECT_EQ(rows.begin, d * B / c.dp) << name << " rank " << r;
        EXPECT_EQ(rows.end, (d + 1) * B / c.dp) << name << " rank " << r;
      }
      EXPECT_EQ(readers, c.pp > 1 ? n / c.pp : n) << name;  // one stage reads x, another the labels
    }
  }

  // Too few rows for what a rank reads.
  const planner::PlanConfig c = config(2, 1, 1, 1, 0);
  LocalRun run(planner::partition(g, c), c);
  run.initialize();
  const TensorType& x = g.node(*g.find("x")).outputs[0];
  const LocalRun::Rows all = run.rows("x", x);
  EXPECT_EQ(all.begin, 0);
  EXPECT_EQ(all.end, B);
  try {
    run.feed("x", x, rows_test::rows_of(data[0][0], x, {0, B / 2}), 0);
    FAIL() << "fed half the rows to both ranks";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("input 'x': rank 1 reads rows [4, 8) of f32[8,8], but the rows fed are [0, 4)"));
  }
}

}  // namespace
}  // namespace tessel::runtime
