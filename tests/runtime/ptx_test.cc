// The fused kernels of the MLP and GPT training programs as PTX for sm_80, assembled by the
// CUDA toolkit's ptxas where it is installed (skipped, saying so, where it is not).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "frontend/models.h"
#include "frontend/optim.h"
#include "ops/fused.h"
#include "runtime/fusion.h"
#include "runtime/ptx.h"

namespace tessel::runtime {
namespace {

std::string find_ptxas() {
  std::vector<std::string> candidates;
  if (const char* h = std::getenv("CUDA_HOME")) candidates.push_back(std::string(h) + "/bin/ptxas");
  candidates.push_back("/usr/local/cuda/bin/ptxas");
  if (const char* path = std::getenv("PATH")) {
    std::string p = path;
    for (size_t b = 0, e; b <= p.size(); b = e + 1) {
      e = p.find(':', b);
      if (e == std::string::npos) e = p.size();
      candidates.push_back(p.substr(b, e - b) + "/ptxas");
    }
  }
  for (auto& c : candidates)
    if (std::filesystem::exists(c)) return c;
  return {};
}

// Every distinct fused kernel of the model's training graph, as PTX.
std::vector<std::pair<std::string, std::string>> kernels(const std::string& spec, int64_t batch) {
  auto b = models::from_spec(spec, batch);
  OptimizerConfig oc;
  oc.kind = "adamw";
  add_training(b.model->graph(), "loss", oc);
  const FusedGraph f = fuse(b.model->graph());
  std::set<std::string> seen;
  std::vector<std::pair<std::string, std::string>> out;
  for (const Node& n : f.graph.nodes()) {
    if (n.op != "fused") continue;
    const ops::FusedKernelDesc d = ops::FusedKernelDesc::from_attrs(n.attrs);
    const std::string ptx = emit_ptx(d, "fused_" + std::to_string(out.size()));
    if (seen.insert(d.to_attrs().str()).second) out.emplace_back(n.name, ptx);
  }
  return out;
}

TEST(Ptx, FusedKernelsOfTheMlpAndGptAssembleForSm80) {
  std::vector<std::pair<std::string, std::string>> all;
  for (auto [spec, batch] : {std::pair<const char*, int64_t>{"mlp:784-1024-1024-10", 256},
                             {"gpt:layers=4,d_model=256,heads=4,seq=128,vocab=256", 16}}) {
    auto k = kernels(spec, batch);
    EXPECT_GE(k.size(), 5u) << spec;
    all.insert(all.end(), k.begin(), k.end());
  }
  for (auto& [node, ptx] : all) {
    EXPECT_THAT(ptx, ::testing::HasSubstr(".target sm_80")) << node;
    EXPECT_THAT(ptx, ::testing::HasSubstr(".visible .entry")) << node;
  }
  const std::string ptxas = find_ptxas();
  if (ptxas.empty())
    GTEST_SKIP() << all.size() << " kernels emitted as PTX, not assembled: no ptxas (the CUDA toolkit is not "
                 << "installed; looked in $CUDA_HOME/bin, /usr/local/cuda/bin and $PATH)";
  const auto dir = std::filesystem::temp_directory_path() / ("tessel_ptx_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  for (size_t i = 0; i < all.size(); ++i) {
    const auto ptx = dir / ("k" + std::to_string(i) + ".ptx");
    std::ofstream(ptx) << all[i].second;
    const std::string cmd = ptxas + " -arch=sm_80 " + ptx.string() + " -o " + (dir / "k.cubin").string() + " 2>&1";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << "ptxas refused the kernel of " << all[i].first << ":\n" << all[i].second;
  }
  std::filesystem::remove_all(dir);
  std::printf("%zu kernels assembled by %s for sm_80\n", all.size(), ptxas.c_str());
}

TEST(Ptx, OneKernelPerRowOrPerElement) {
  ops::FusedKernelDesc d;
  d.rows = 4;
  d.cols = 5;
  d.inputs = {ops::FusedInput::full, ops::FusedInput::per_col};
  d.code = {ops::FusedInstr{ScalarOp::arg}, ops::FusedInstr{ScalarOp::arg, ops::FusedReduce::none, -1, -1, -1, 1},
            ops::FusedInstr{ScalarOp::add, ops::FusedReduce::none, 0, 1}};
  d.outputs = {{2, false}};
  EXPECT_FALSE(ptx_thread_per_row(d));
  const std::string elementwise = emit_ptx(d, "bias_add");
  EXPECT_THAT(elementwise, ::testing::HasSubstr(".visible .entry bias_add("));
  d.code.push_back(ops::FusedInstr{ScalarOp::arg, ops::FusedReduce::sum, 2});
  d.outputs.push_back({3, true});
  EXPECT_TRUE(ptx_thread_per_row(d));
  EXPECT_THAT(emit_ptx(d, "bias_add_sum"), ::testing::HasSubstr(".visible .entry bias_add_sum("));
}

}  // namespace
}  // namespace tessel::runtime
