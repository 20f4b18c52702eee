// The CPU executor: buffers are allocated before the first step and never in the step
// loop; views alias; updates are simultaneous; the thread pool propagates errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

#include "frontend/models.h"
#include "frontend/optim.h"
#include "graph/error.h"
#include "runtime/executor.h"
#include "runtime/thread_pool.h"

// Counts heap allocations in this test binary.
static std::atomic<int64_t> g_allocs{0};
[[gnu::noinline]] void* operator new(size_t n) {
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace tessel {
namespace {

TEST(Executor, NoHeapAllocationInTheStepLoop) {
  for (const char* spec : {"mlp:20-16-5", "gpt:layers=1,d_model=16,heads=2,seq=8,vocab=256"}) {
    auto b = models::from_spec(spec, 4);
    OptimizerConfig c;
    c.kind = "adamw";
    c.clip_norm = 1.0;
    add_training(b.model->graph(), "loss", c);
    runtime::ThreadPool pool(2);
    runtime::ExecutorOptions o;
    o.parallel = &pool;
    runtime::Executor ex(b.model->graph(), o);
    int p = ex.prepare({"train", {"loss"}});
    ex.initialize();
    // Valid labels / tokens (zero-filled inputs are fine for the rest).
    for (auto& name : b.inputs) {
      TensorRef t = ex.input(name);
      std::memset(t.data, 0, static_cast<size_t>(t.bytes()));
    }
    ex.run(p);  // warm-up
    const int64_t bytes = ex.bytes_allocated();
    const int64_t before = g_allocs.load();
    for (int i = 0; i < 5; ++i) ex.run(p);
    EXPECT_EQ(g_allocs.load() - before, 0) << spec;
    EXPECT_EQ(ex.bytes_allocated(), bytes);
    EXPECT_TRUE(std::isfinite(ex.output("loss").as<float>()[0]));
  }
}

TEST(Executor, ReshapeAliasesItsInput) {
  Model m;
  Tensor x = m.input("x", {2, 3});
  Tensor y = reshape(x, {3, 2});
  m.output("y", y);
  runtime::Executor ex(m.graph());
  ex.prepare({"", {"y"}});
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
  runtime::Executor ex(m.graph());
  int p = ex.prepare({"swap", {}});
  ex.initialize();
  ex.run(p);
  EXPECT_EQ(ex.value(a).as<float>()[0], 2);
  EXPECT_EQ(ex.value(b).as<float>()[0], 1);
}

TEST(Executor, UnknownOutputsAndPhasesAreNamed) {
  auto b = models::from_spec("mlp:4-2", 2);
  runtime::Executor ex(b.model->graph());
  try {
    ex.prepare({"", {"logitz"}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("'logitz'"));
    EXPECT_THAT(e.what(), ::testing::HasSubstr("logits"));
  }
  EXPECT_THROW(ex.prepare({"train", {"loss"}}), Error);  // no optimizer added
  EXPECT_THROW(ex.run(0), Error);
}

TEST(Executor, KernelErrorsPropagateFromWorkerThreads) {
  Model m;
  Tensor table = m.parameter("table", {10, 4}, ops::Init::ones);
  Tensor idx = m.input("idx", {100000}, DType::i32);
  m.output("out", gather(table, idx));
  runtime::ThreadPool pool(2);
  runtime::ExecutorOptions o;
  o.parallel = &pool;
  runtime::Executor ex(m.graph(), o);
  int p = ex.prepare({"", {"out"}});
  ex.initialize();
  int32_t* ids = ex.input("idx").as<int32_t>();
  for (int i = 0; i < 100000; ++i) ids[i] = i % 10;
  ids[99999] = 12;
  try {
    ex.run(p);
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("index 12"));
    EXPECT_THAT(e.what(), ::testing::HasSubstr("gather"));
  }
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
