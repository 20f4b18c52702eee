// Plans come from the graph's structure, not from names or builders: the tensor-parallel
// search finds Megatron's split of a GPT by itself, a graph whose every node is renamed at
// random gets the same plan, repeated blocks are found and planned once, and a graph with no
// scopes at all still has layers.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "frontend/models.h"
#include "frontend/optim.h"
#include "planner/analysis.h"
#include "planner/layers.h"
#include "planner/pipeline.h"
#include "planner/search.h"
#include "tests/planner/splits.h"

namespace tessel::planner {
namespace {

Graph training(const std::string& spec, int64_t batch) {
  models::Built m = models::from_spec(spec, batch, true);
  OptimizerConfig oc;
  oc.kind = "adamw";
  add_training(m.model->graph(), "loss", oc);
  return std::move(m.model->graph());
}

// The same graph with every node renamed (and, optionally, every scope dropped): node ids,
// ops, attributes, edges, passes and stored data unchanged.
Graph renamed(const Graph& g, uint32_t seed, bool keep_scopes) {
  std::mt19937 rng(seed);
  Graph out(g.registry());
  for (const Node& n : g.nodes()) {
    std::string name = "n";
    for (int i = 0; i < 12; ++i) name += static_cast<char>('a' + rng() % 26);
    Origin o = n.origin;
    if (!keep_scopes) o.scope.clear();
    const int32_t id = out.add_node_typed(n.op, n.inputs, n.attrs, name, o, n.outputs);
    EXPECT_EQ(id, n.id);
    if (n.pass != Pass::forward || n.serves >= 0) out.annotate_node(id, n.pass, n.serves);
    if (const auto* d = g.data(n.id)) out.set_data(id, *d);
  }
  for (const auto& o : g.outputs()) out.set_output(o.name, o.value);
  for (const auto& u : g.updates()) out.add_update(u.variable, u.value, u.phase);
  out.verify();
  return out;
}

const char* kGpt = "gpt:layers=4,d_model=1024,heads=16,seq=1024,vocab=32768";

TEST(TensorParallelSearch, FindsMegatronsSplitOfAGptByItself) {
  const Graph g = training(kGpt, 32);
  const LayerStructure ls = find_layers(g, "train");
  const ClusterSpec cl = parse_cluster("a100-80g:nodes=1");
  const CostOptions co;
  const std::vector<int8_t> megatron = megatron_splits(g);
  for (int64_t tp : {2, 4, 8})
    for (bool sp : {false, true}) {
      PlanConfig c;
      c.tp = tp;
      c.sequence_parallel = sp;
      c.dp = 8 / tp;  // the rest of the node's GPUs as replicas, a few microbatches each
      c.microbatches = 2;
      const std::vector<int8_t> chosen = choose_tensor_parallel(g, ls, c, cl, co);
      // Every block's weights and biases as Megatron splits them (the norms' parameters stay
      // whole; the embeddings are the cost model's to choose: vocabulary-parallel, or split
      // along features, or whole).
      for (int32_t id : g.parameters()) {
        const Node& p = g.node(id);
        if (p.name.rfind("block", 0) != 0 || p.name.find("/ln") != std::string::npos) continue;
        const int want = static_cast<size_t>(id) < megatron.size() ? megatron[static_cast<size_t>(id)] : -1;
        const int got = static_cast<size_t>(id) < chosen.size() ? chosen[static_cast<size_t>(id)] : -1;
        EXPECT_EQ(got, want) << p.name << " at tp=" << tp << (sp ? " with sp" : "");
      }
      // And a predicted step no slower than Megatron's split gives.
      auto step = [&](const std::vector<int8_t>& dims) {
        PlanConfig k = c;
        k.tp_dims = dims;
        return estimate_plan(profile_model(g, ls, k, cl, co), k, cl, co).step_time_s;
      };
      const double mine = step(chosen), theirs = step(megatron);
      EXPECT_LE(mine, theirs * (1 + 1e-9)) << "tp=" << tp << (sp ? " with sp" : "");
      std::printf("tp=%lld%s: step %.6g s with the split found, %.6g s with Megatron's\n", static_cast<long long>(tp),
                  sp ? " sp" : "", mine, theirs);
    }
}

// Microbatches are a split in time: they must not change where a weight's gradient is
// computed. With sequence parallelism the output layer's weight gradient (vocabulary rows)
// was once computed whole on every tensor-parallel rank as soon as a step had two
// microbatches: the sum deferred over microbatches stopped its slice from moving up.
TEST(StructuralPlanning, WeightGradientsAreSplitAsTheirWeightsWithAnyMicrobatchCount) {
  const ClusterSpec cl = parse_cluster("a100-80g:nodes=1");
  for (const char* spec : {"gpt:layers=2,d_model=256,heads=8,seq=384,vocab=4000",
                           "llama:layers=2,d_model=256,heads=8,kv_heads=4,ffn=704,seq=384,vocab=4000"})
  {
    const Graph g = training(spec, 4);
    const LayerStructure ls = find_layers(g, "train");
    for (int64_t tp : {2, 4})
      for (bool sp : {false, true}) {
        PlanConfig one;
        one.tp = tp;
        one.sequence_parallel = sp;
        const std::vector<int8_t> dims = choose_tensor_parallel(g, ls, one, cl, CostOptions{});
        for (int64_t mb : {1, 2, 4}) {
          PlanConfig c = one;
          c.microbatches = mb;
          c.tp_dims = dims;
          const Mesh mesh = planning_mesh(c);
          const GraphPlacement gp = place_graph(g, c, mesh, ls.distinct, ls.repeats, ls.read_by_repeat);
          const std::string where = std::string(spec) + " tp=" + std::to_string(tp) + " mb=" + std::to_string(mb) +
                                    (sp ? " sp" : "");
          int checked = 0;
          for (int32_t p : g.parameters()) {
            const Placement split = parameter_placement(g, g.node(p), c, mesh, false).stored[mesh.axis("tp")];
            if (!split.is_shard()) continue;
            // The products whose output has the weight's shape: its gradient's terms.
            for (int32_t id : ls.distinct) {
              const Node& n = g.node(id);
              if (n.pass != Pass::backward || n.op != "matmul" || n.outputs[0].shape != g.node(p).outputs[0].shape) continue;
              ++checked;
              EXPECT_FALSE(gp.at(n.out(0))[mesh.axis("tp")].kind == Placement::Kind::replicate)
                  << where << ": " << n.name << " " << n.outputs[0].str() << " (gradient of " << g.node(p).name
                  << ") computed whole on every tensor-parallel rank: " << sharding_str(gp.at(n.out(0)));
            }
          }
          EXPECT_GT(checked, 0) << where;
        }
      }
  }
}

TEST(StructuralPlanning, RandomNamesGiveTheSamePlan) {
  const Graph g = training(kGpt, 32);
  const ClusterSpec cl = parse_cluster("a100-80g:nodes=2");
  const SearchResult a = search_plan(g, "train", cl, Pins{}, SearchOptions{});
  for (uint32_t seed : {1u, 2u}) {
    const Graph r = renamed(g, seed, true);
    EXPECT_NE(r.node(10).name, g.node(10).name);
    const SearchResult b = search_plan(r, "train", cl, Pins{}, SearchOptions{});
    EXPECT_EQ(b.best.config, a.best.config) << b.best.config.str() << " vs " << a.best.config.str();
    EXPECT_EQ(b.best.step_time_s, a.best.step_time_s);
    EXPECT_EQ(b.best.peak_memory_bytes, a.best.peak_memory_bytes);
  }
}

TEST(StructuralPlanning, RepeatedBlocksAreOneClassPlannedOnce) {
  const Graph g = training("gpt:layers=6,d_model=64,heads=4,seq=32,vocab=128", 8);
  const LayerStructure ls = find_layers(g, "train");
  std::vector<std::string> names;
  for (const Layer& l : ls.layers) names.push_back(l.name);
  EXPECT_THAT(names, ::testing::ElementsAre("wte", "block0", "block1", "block2", "block3", "block4", "block5", "ln_f",
                                            "cross_entropy"));
  // The blocks share a forward class; all but the last (whose backward starts from the
  // output layer's) share a class.
  for (int b = 1; b <= 6; ++b) EXPECT_EQ(ls.layers[b].forward_class, 1) << ls.layers[b].name;
  for (int b = 1; b <= 5; ++b) EXPECT_EQ(ls.layers[b].klass, 1) << ls.layers[b].name;
  EXPECT_NE(ls.layers[0].klass, 1);
  // The profile folds the five into one entry standing for them.
  const ModelProfile mp = profile_model(g, ls, PlanConfig{}, parse_cluster("local:1"), CostOptions{});
  ASSERT_EQ(mp.layers.size(), 5u);
  EXPECT_EQ(mp.layers[1].repeat, 5);
  EXPECT_THAT(mp.layers[1].members, ::testing::ElementsAre("block0", "block1", "block2", "block3", "block4"));
}

TEST(StructuralPlanning, AGraphWithoutScopesIsCutIntoLayersWhereItNarrows) {
  const Graph g = renamed(training("mlp:32-64-64-10", 8), 3, false);
  const LayerStructure ls = find_layers(g, "train");
  // Each projection with what follows it, up to the next: three layers.
  ASSERT_EQ(ls.layers.size(), 3u);
  for (const Layer& l : ls.layers) {
    int weights = 0;
    for (int32_t id : l.forward) weights += g.node(id).op == "parameter" && g.node(id).outputs[0].rank() == 2;
    EXPECT_EQ(weights, 1) << l.name;
    EXPECT_FALSE(l.backward.empty()) << l.name;
    EXPECT_FALSE(l.optimizer.empty()) << l.name;
  }
  // A GPT without scopes: its blocks still repeat (as half-blocks between residual adds).
  const Graph gpt = renamed(training("gpt:layers=4,d_model=64,heads=4,seq=32,vocab=128", 8), 4, false);
  const LayerStructure gls = find_layers(gpt, "train");
  int repeats = 0;
  for (size_t l = 0; l < gls.layers.size(); ++l) repeats += gls.layers[l].forward_class != static_cast<int>(l);
  // Attention halves 2-4 repeat the first, MLP halves 2-3 the first (the last one ends in
  // the final norm instead of the next block's).
  EXPECT_EQ(repeats, 5) << gls.layers.size() << " layers";
  // Both plan on several devices.
  const ClusterSpec cl = parse_cluster("local:4");
  Pins pins;
  pins.pp = 2;
  EXPECT_EQ(search_plan(gpt, "train", cl, pins, SearchOptions{}).best.config.pp, 2);
  EXPECT_EQ(search_plan(g, "train", cl, Pins{}, SearchOptions{}).best.config.devices(), 4);
}

}  // namespace
}  // namespace tessel::planner
