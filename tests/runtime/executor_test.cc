// The CPU executor: buffers are allocated before the first step and never in the step
// loop; views alias; updates are simultaneous; the thread pool propagates errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <cstdlib>
#include <cstring>
#include <new>

#include "frontend/models.h"
#include "frontend/optim.h"
#include "graph/error.h"
#include "runtime/executor.h"
#include "runtime/local_run.h"
#include "planner/partition.h"
#include "runtime/memory_plan.h"

#include "runtime/thread_pool.h"

// Counts heap allocations in this test binary. Not under AddressSanitizer, which
// replaces operator new itself (and then sees our free() of its allocations).
static std::atomic<int64_t> g_allocs{0};
#if !defined(__SANITIZE_ADDRESS__)
#define TESSEL_COUNT_ALLOCS 1
[[gnu::noinline]] void* operator new(size_t n) {
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, size_t) noexcept { std::free(p); }
#endif

namespace tessel {
namespace {

TEST(Executor, NoHeapAllocationInTheStepLoop) {
#if !defined(TESSEL_COUNT_ALLOCS)
  GTEST_SKIP() << "allocation counting is off under AddressSanitizer";
#endif
  for (const char* spec : {"mlp:20-16-5", "gpt:layers=1,d_model=16,heads=2,seq=8,vocab=256"}) {
    auto b = models::from_spec(spec, 4);
    OptimizerConfig c;
    c.kind = "adamw";
    c.clip_norm = 1.0;
    add_training(b.model->graph(), "loss", c);
    runtime::ThreadPool pool(2);
    runtime::ExecutorOptions o;
    o.parallel = &pool;
    runtime::Executor ex(planner::one_device(b.model->graph(), {"loss"}, "train"), o);
    ex.initialize();
    // Valid labels / tokens (zero-filled inputs are fine for the rest).
    for (auto& name : b.inputs) {
      TensorRef t = ex.input(name);
      std::memset(t.data, 0, static_cast<size_t>(t.bytes()));
    }
    ex.step();  // warm-up
    const int64_t bytes = ex.memory().total();
    const int64_t before = g_allocs.load();
    for (int i = 0; i < 5; ++i) ex.step();
    EXPECT_EQ(g_allocs.load() - before, 0) << spec;
    EXPECT_EQ(ex.memory().total(), bytes);
    EXPECT_TRUE(std::isfinite(ex.output("loss").as<float>()[0]));
  }
}

TEST(LocalRun, NoHeapAllocationInTheStepLoopOfAnyRank) {
#if !defined(TESSEL_COUNT_ALLOCS)
  GTEST_SKIP() << "allocation counting is off under AddressSanitizer";
#endif
  // Buckets, ZeRO, pipeline sends and receives, tensor-parallel collectives, recomputation.
  auto cfg = [](int64_t dp, int64_t tp, int64_t pp, int64_t mb, int zero, planner::Recompute r) {
    planner::PlanConfig c;
    c.dp = dp, c.tp = tp, c.pp = pp, c.microbatches = mb, c.zero = zero, c.recompute = r;
    return c;
  };
  for (auto [spec, c] : std::vector<std::pair<std::string, planner::PlanConfig>>{
           {"mlp:20-16-16-5", cfg(2, 1, 2, 2, 1, planner::Recompute::none)},
           {"gpt:layers=2,d_model=16,heads=2,seq=8,vocab=32", cfg(1, 2, 2, 2, 0, planner::Recompute::full)}}) {
    auto b = models::from_spec(spec, 8);
    OptimizerConfig oc;
    oc.kind = "adamw";
    add_training(b.model->graph(), "loss", oc);
    runtime::LocalRun run(planner::partition(b.model->graph(), c), c);
    run.initialize();
    std::map<std::string, std::vector<std::byte>> data;
    for (auto& name : b.inputs) {
      const TensorType& t = b.model->graph().node(*b.model->graph().find(name)).outputs[0];
      data[name].assign(static_cast<size_t>(t.bytes()), std::byte{0});
    }
    auto one_step = [&] {
      for (auto& name : b.inputs)
        run.feed(name, b.model->graph().node(*b.model->graph().find(name)).outputs[0], data[name]);
      run.step();
    };
    // Warm-up: mailboxes and group lookups fill once. A mailbox keeps as many buffers as
    // messages were ever in flight on it, which depends on how the ranks interleave: a few
    // steps reach the schedule's worst case.
    for (int i = 0; i < 4; ++i) one_step();
    const int64_t before = g_allocs.load();
    for (int i = 0; i < 5; ++i) one_step();
    EXPECT_EQ(g_allocs.load() - before, 0) << spec << " " << c.str();
    EXPECT_TRUE(std::isfinite(run.scalar_output("loss")));
  }
}

TEST(Executor, ReshapeAliasesItsInput) {
  Model m;
  Tensor x = m.input("x", {2, 3});
  Tensor y = reshape(x, {3, 2});
  m.output("y", y);
  runtime::Executor ex(planner::one_device(m.graph(), {"y"}, ""));
  ex.initialize();
  EXPECT_EQ(ex.input("x").data, ex.output("y").data);
}

TEST(Executor, UpdatesAreSimultaneous) {
  // a' = b, b' = a: a swap, which sequential copies would get wrong.
  Model m;
  ops::Emitter e = m.emit(SourceLoc::current());
  Value a = e.state("a", {1}, DType::f32, 1);
  Value b = e.state("b", {1}, DType::f32, 2);
  Value a_copy = e.add(a, 0.0), b_copy = e.add(b, 0.0);
  m.graph().add_update(a.node, b_copy, "swap");
  m.graph().add_update(b.node, a_copy, "swap");
  runtime::Executor ex(planner::one_device(m.graph(), {}, "swap"));
  ex.initialize();
  ex.step();
  EXPECT_EQ(ex.value(a).as<float>()[0], 2);
  EXPECT_EQ(ex.value(b).as<float>()[0], 1);
}

// Every input filled: floats uniform in [-1, 1], integers 0 (valid labels and tokens).
void fill_inputs(runtime::Executor& ex, const std::vector<std::string>& names, uint32_t seed) {
  std::mt19937 rng(seed);
  for (auto& name : names) {
    TensorRef t = ex.input(name);
    if (t.dtype != DType::f32) {
      std::memset(t.data, 0, static_cast<size_t>(t.bytes()));
      continue;
    }
    for (int64_t i = 0; i < t.numel; ++i) t.as<float>()[i] = std::uniform_real_distribution<float>(-1, 1)(rng);
  }
}

// With the JIT, the AdamW update of every parameter and both its moments is written over
// the variables by the fused update kernel (no buffer of its own, no copy after the step),
// and training follows the reference kernels step by step.
TEST(Executor, UpdatesAreWrittenOverTheirVariables) {
  auto b = models::from_spec("mlp:20-16-5", 4);
  OptimizerConfig c;
  c.kind = "adamw";
  c.weight_decay = 0.1;
  add_training(b.model->graph(), "loss", c);
  const Graph& g = b.model->graph();
  runtime::ExecutorOptions ref_options;
  ref_options.jit = false;
  runtime::Executor jit(planner::one_device(g)), ref(planner::one_device(g), ref_options);
  for (runtime::Executor* ex : {&jit, &ref}) ex->initialize();
  int64_t tensors = 0;  // the parameters and their moments (the step counters are scalars)
  for (auto& u : g.updates()) {
    if (g.type(u.value).numel() == 1) continue;
    ++tensors;
    EXPECT_EQ(jit.value(u.value).data, jit.value(Value{u.variable, 0}).data) << g.node(u.variable).name;
  }
  EXPECT_EQ(tensors, 12);
  EXPECT_EQ(jit.jit_report().updates_in_place, tensors);
  EXPECT_EQ(ref.jit_report().updates_in_place, 0);
  for (int step = 0; step < 3; ++step) {
    fill_inputs(jit, b.inputs, step);
    fill_inputs(ref, b.inputs, step);
    jit.step();
    ref.step();
    EXPECT_NEAR(jit.output("loss").as<float>()[0], ref.output("loss").as<float>()[0], 1e-5) << "step " << step;
    for (auto& u : g.updates()) {
      const TensorRef x = jit.value(Value{u.variable, 0}), y = ref.value(Value{u.variable, 0});
      for (int64_t i = 0; i < x.numel; ++i)
        ASSERT_NEAR(x.as<float>()[i], y.as<float>()[i], 1e-5 * std::max(1.f, std::fabs(y.as<float>()[i])))
            << g.node(u.variable).name << "[" << i << "] after step " << step;
    }
  }
}

// An update is written over its variable only where that changes nothing a program sees:
// not when something reads the variable after the update kernel (it must see the old
// value), nor when a program runs the kernel without applying the update.
TEST(Executor, AnUpdateIsNotWrittenOverAVariableStillToBeRead) {
  for (bool read_after : {false, true}) {
    Model m;
    ops::Emitter e = m.emit(SourceLoc::current());
    Value w = e.state("w", {4, 4}, DType::f32, 1);
    Value x = e.input("x", DType::f32, {4, 4});
    Value y;
    if (!read_after) y = e.matmul(x, w);
    Value w_new = e.sub(w, e.mul(x, 0.5));
    if (read_after) y = e.matmul(x, w);  // after the update kernel
    m.graph().add_update(w.node, w_new, "train");
    m.graph().set_output("y", y);
    runtime::Executor ex(planner::one_device(m.graph(), {"y"}, "train"));
    ex.initialize();
    EXPECT_EQ(ex.jit_report().updates_in_place, read_after ? 0 : 1) << "read after: " << read_after;
    for (int64_t i = 0; i < 16; ++i) ex.input("x").as<float>()[i] = 1;
    // w = 1, 0.5, 0 before steps 0, 1, 2; y reads w before this step's update.
    for (int step = 0; step < 2; ++step) {
      ex.step();
      EXPECT_EQ(ex.output("y").as<float>()[5], 4 * (1 - 0.5f * static_cast<float>(step)))
          << "read after: " << read_after << ", step " << step;
      EXPECT_EQ(ex.value(w).as<float>()[5], 1 - 0.5f * static_cast<float>(step + 1));
    }
  }
  // A program that computes the new value without applying the update.
  Model m;
  ops::Emitter e = m.emit(SourceLoc::current());
  Value w = e.state("w", {8}, DType::f32, 1);
  Value x = e.input("x", DType::f32, {8});
  Value w_new = e.sub(w, e.mul(x, 0.5));
  m.graph().add_update(w.node, w_new, "train");
  m.graph().set_output("w_new", w_new);
  runtime::Executor peek(planner::one_device(m.graph(), {"w_new"}, "")), train(planner::one_device(m.graph(), {}, "train"));
  peek.initialize();
  train.initialize();
  EXPECT_EQ(peek.jit_report().updates_in_place, 0);
  EXPECT_EQ(train.jit_report().updates_in_place, 1);
  for (runtime::Executor* ex : {&peek, &train})
    for (int64_t i = 0; i < 8; ++i) ex->input("x").as<float>()[i] = 1;
  peek.step();
  EXPECT_EQ(peek.value(w).as<float>()[3], 1.f) << "peeking at the new value changed the variable";
  EXPECT_EQ(peek.output("w_new").as<float>()[3], 0.5f);
  train.step();
  EXPECT_EQ(train.value(w).as<float>()[3], 0.5f);
}

TEST(Executor, UnknownOutputsAndPhasesAreNamed) {
  auto b = models::from_spec("mlp:4-2", 2);
  try {
    planner::one_device(b.model->graph(), {"logitz"}, "");
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("'logitz'"));
    EXPECT_THAT(e.what(), ::testing::HasSubstr("logits"));
  }
  EXPECT_THROW(planner::one_device(b.model->graph(), {"loss"}, "train"), Error);  // no optimizer added
  runtime::Executor ex(planner::one_device(b.model->graph(), {"loss"}, ""));
  EXPECT_THROW(ex.step(), Error);  // before initialize()
}

TEST(Executor, KernelErrorsPropagateFromWorkerThreads) {
  Model m;
  Tensor table = m.parameter("table", {10, 4}, ops::Init::ones);
  Tensor idx = m.input("idx", {100000}, DType::i32);
  m.output("out", gather(table, idx));
  runtime::ThreadPool pool(2);
  runtime::ExecutorOptions o;
  o.parallel = &pool;
  runtime::Executor ex(planner::one_device(m.graph(), {"out"}, ""), o);
  ex.initialize();
  int32_t* ids = ex.input("idx").as<int32_t>();
  for (int i = 0; i < 100000; ++i) ids[i] = i % 10;
  ids[99999] = 12;
  try {
    ex.step();
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("index 12"));
    EXPECT_THAT(e.what(), ::testing::HasSubstr("gather"));
  }
}

TEST(MemoryPlan, LiveBuffersNeverOverlapAndDeadOnesAreReused) {
  std::mt19937_64 rng(3);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<runtime::BufferLifetime> bufs;
    int64_t total = 0;
    for (int i = 0; i < 60; ++i) {
      int64_t first = static_cast<int64_t>(rng() % 100);
      int64_t len = static_cast<int64_t>(rng() % 20);
      int64_t bytes = static_cast<int64_t>(rng() % 5000);
      bufs.push_back({bytes, first, first + len});
      total += (bytes + 63) / 64 * 64 + (bytes == 0 ? 64 : 0);
    }
    auto plan = runtime::plan_memory(bufs, 64);
    EXPECT_LE(plan.arena_bytes, total);
    for (size_t a = 0; a < bufs.size(); ++a) {
      EXPECT_EQ(plan.offsets[a] % 64, 0);
      for (size_t b = a + 1; b < bufs.size(); ++b) {
        bool live_together = bufs[a].first <= bufs[b].last && bufs[b].first <= bufs[a].last;
        int64_t ea = plan.offsets[a] + std::max<int64_t>(bufs[a].bytes, 1);
        int64_t eb = plan.offsets[b] + std::max<int64_t>(bufs[b].bytes, 1);
        bool overlap = plan.offsets[a] < eb && plan.offsets[b] < ea;
        ASSERT_FALSE(live_together && overlap) << "trial " << trial << " buffers " << a << ", " << b;
      }
    }
  }
  // A chain a -> b -> c -> d of equal buffers needs two slots, not four.
  std::vector<runtime::BufferLifetime> chain = {{1024, 0, 1}, {1024, 1, 2}, {1024, 2, 3}, {1024, 3, 4}};
  EXPECT_EQ(runtime::plan_memory(chain, 64).arena_bytes, 2048);
}

TEST(Executor, ArenaIsMuchSmallerThanOneBufferPerValue) {
  auto b = models::from_spec("gpt:layers=2,d_model=64,heads=4,seq=32,vocab=256", 4);
  add_training(b.model->graph(), "loss", OptimizerConfig{});
  const Graph& g = b.model->graph();
  runtime::Executor ex(planner::one_device(g, {"loss"}, "train"));
  ex.initialize();
  int64_t every_value = 0;
  for (auto& n : g.nodes())
    if (n.def->kind == OpKind::compute && !n.def->view) every_value += n.outputs[0].bytes();
  EXPECT_LT(ex.memory().arena_bytes, every_value / 4) << ex.memory().arena_bytes << " of " << every_value;
  EXPECT_THROW(ex.initialize(), Error);  // once
}

TEST(ThreadPool, CoversTheRangeOnceAndNests) {
  runtime::ThreadPool pool(3);
  std::vector<std::atomic<int>> hits(10007);
  pool.for_range(10007, 10, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[i]++;
    pool.for_range(4, 1, [](int64_t, int64_t) {});  // nested: runs inline, no deadlock
  });
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
}

TEST(ThreadPool, RethrowsTheFirstError) {
  runtime::ThreadPool pool(2);
  EXPECT_THROW(pool.for_range(1000, 1, [](int64_t b, int64_t) {
    if (b > 500) throw Error("boom");
  }), Error);
  int64_t total = 0;
  pool.for_range(100, 1000, [&](int64_t b, int64_t e) { total += e - b; });  // still usable
  EXPECT_EQ(total, 100);
}

}  // namespace
}  // namespace tessel
