// The partitioner's per-rank programs against hand-written ones (as TensorFlow's
// graph_partition_test builds the expected per-device graphs with the same builder and
// compares whole graphs). The model is a 2-layer MLP (8 -> 16, ReLU, 16 -> 4, cross-entropy)
// trained by SGD on a batch of 8. Each expected program is the single-device training graph
// written on this rank's local shapes, plus the collectives, slices and send/recv that the
// placements call for; helpers below write the pieces (a Linear's forward and backward, the
// loss, the SGD update) once, so each case reads as local shapes plus where collectives go.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <set>
#include <tuple>

#include "frontend/models.h"
#include "frontend/optim.h"
#include "ops/emit.h"
#include "ops/registry.h"
#include "planner/partition.h"
#include "tests/planner/splits.h"

namespace tessel::planner {
namespace {

// ---- structural comparison --------------------------------------------------------------

// Canonical ids for nodes, shared by every graph given to one Canon: two nodes get the same
// id when they run the same op with the same attributes and output types on inputs with the
// same ids, i.e. compute the same thing from the same sources. Node names, origins and
// insertion order are left out, except that sources (input, parameter, state) keep their
// names: the runtime feeds inputs and checkpoints variables by name, so a source's name is
// its identity. Of the attributes only "tag" (send/recv) is left out: it merely pairs a send
// with its recv, which check_messages() checks across programs.
class Canon {
 public:
  std::vector<int> ids(const Graph& g) {
    std::vector<int> id(static_cast<size_t>(g.size()), -1);
    for (const Node& n : g.nodes()) {
      std::string attrs;
      for (auto& [k, v] : n.attrs.items())
        if (k != "tag") attrs += (attrs.empty() ? "" : ", ") + k + "=" + attr_value_str(v);
      std::string types;
      for (auto& t : n.outputs) types += (types.empty() ? "" : ", ") + t.str();
      std::string head = n.op;
      if (n.def->kind != OpKind::compute && n.def->kind != OpKind::constant) head += " '" + n.name + "'";
      head += " {" + attrs + "} -> " + types;
      std::string key = head, from;
      for (auto& v : n.inputs) {
        const int in = id[static_cast<size_t>(v.node)];
        key += " #" + std::to_string(in) + "." + std::to_string(v.index);
        from += (from.empty() ? "" : ", ") + std::string("#") + std::to_string(in) + " " + short_[in];
      }
      auto [it, fresh] = index_.emplace(key, static_cast<int>(short_.size()));
      if (fresh) {
        short_.push_back(n.op + " " + types);
        text_.push_back(head + (from.empty() ? "" : "  <- (" + from + ")"));
        inputs_.emplace_back();
        for (auto& v : n.inputs) inputs_.back().push_back(id[static_cast<size_t>(v.node)]);
      }
      id[static_cast<size_t>(n.id)] = it->second;
    }
    return id;
  }
  const std::string& text(int id) const { return text_[id]; }
  const std::string& brief(int id) const { return short_[id]; }  // "matmul f32[4,16]"
  const std::vector<int>& inputs(int id) const { return inputs_[id]; }

 private:
  std::map<std::string, int> index_;
  std::vector<std::string> short_, text_;
  std::vector<std::vector<int>> inputs_;
};

struct Summary {
  std::map<int, int> nodes;                                  // id -> count
  std::multiset<std::pair<std::string, int>> outputs;        // (name, id); "send:<tag>" -> "send:"
  std::multiset<std::tuple<int, int, std::string>> updates;  // (variable, value, phase)
};

Summary summarise(Canon& c, const Graph& g) {
  const std::vector<int> id = c.ids(g);
  Summary s;
  for (const Node& n : g.nodes()) s.nodes[id[static_cast<size_t>(n.id)]]++;
  for (auto& o : g.outputs())
    s.outputs.insert({o.name.rfind("send:", 0) == 0 ? "send:" : o.name, id[static_cast<size_t>(o.value.node)]});
  for (auto& u : g.updates())
    s.updates.insert({id[static_cast<size_t>(u.variable)], id[static_cast<size_t>(u.value.node)], u.phase});
  return s;
}

// Empty when the graphs match; otherwise what differs. Each side's extra nodes are listed
// in two groups: the first differences (all their inputs exist on both sides), in full, and
// then, briefly, the nodes that differ only because something upstream of them does.
std::string diff(const Graph& want, const Graph& got) {
  Canon c;
  const Summary w = summarise(c, want), a = summarise(c, got);
  std::string out;
  auto only = [&](const Summary& x, const Summary& y, const char* title) {
    std::string first, downstream;
    for (auto& [id, count] : x.nodes) {
      auto it = y.nodes.find(id);
      const int extra = count - (it == y.nodes.end() ? 0 : it->second);
      if (extra <= 0) continue;
      bool frontier = true;
      for (int in : c.inputs(id)) frontier = frontier && y.nodes.count(in);
      const std::string times = extra > 1 ? std::to_string(extra) + "x " : "";
      if (frontier) first += "    " + times + "#" + std::to_string(id) + " " + c.text(id) + "\n";
      else downstream += " " + times + "#" + std::to_string(id) + " " + c.brief(id) + ";";
    }
    if (first.empty() && downstream.empty()) return;
    out += std::string(title) + ":\n  first differences:\n" + first;
    if (!downstream.empty()) out += "  downstream of them:" + downstream + "\n";
  };
  only(w, a, "nodes only in the expected program");
  only(a, w, "nodes only in the partitioner's program");
  auto outputs = [&](const Summary& x) {
    std::string s;
    for (auto& [name, id] : x.outputs) s += " " + name + "=#" + std::to_string(id);
    return s;
  };
  if (w.outputs != a.outputs) out += "outputs differ: expected" + outputs(w) + "; got" + outputs(a) + "\n";
  auto updates = [&](const Summary& x) {
    std::string s;
    for (auto& [v, val, ph] : x.updates) s += " #" + std::to_string(v) + "<-#" + std::to_string(val) + "(" + ph + ")";
    return s;
  };
  if (w.updates != a.updates) out += "updates differ: expected" + updates(w) + "; got" + updates(a) + "\n";
  return out;
}

// Every message sent is received once, by the peer, with the type it was sent with.
void check_messages(const std::vector<RankProgram>& progs) {
  std::map<std::tuple<int64_t, int64_t, int64_t>, TensorType> sent, received;  // (from, to, tag)
  for (auto& p : progs)
    for (const Node& n : p.graph.nodes()) {
      if (n.op == "send") {
        EXPECT_TRUE(sent.emplace(std::make_tuple(p.rank, n.attrs.get_i64("peer"), n.attrs.get_i64("tag")),
                                 p.graph.type(n.inputs[0])).second) << n.name;
      } else if (n.op == "recv") {
        EXPECT_TRUE(received.emplace(std::make_tuple(n.attrs.get_i64("peer"), p.rank, n.attrs.get_i64("tag")),
                                     n.outputs[0]).second) << n.name;
      }
    }
  EXPECT_EQ(sent, received);
}

// ---- the training graph and the expected programs' builder ------------------------------

constexpr int64_t kBatch = 8;

// mlp:8-16-4 with SGD at lr 0.01. Momentum 0 leaves the step counter as the only optimizer
// state; the ZeRO cases use momentum 0.9 so that there is a state per parameter to shard.
models::Built training_graph(double momentum) {
  models::Built b = models::from_spec("mlp:8-16-4", kBatch, true);
  OptimizerConfig oc;
  oc.kind = "sgd";
  oc.lr = 0.01;
  oc.momentum = momentum;
  add_training(b.model->graph(), "loss", oc);
  b.model->graph().verify();
  return b;
}

// The ranks a collective spans, and the mesh axis it runs over.
struct Group {
  std::vector<int64_t> ranks;
  std::string axis;
};

// An expected program, built node by node. Sources copy the training graph's attributes
// (initializer, seed: the model's choices, not the partitioner's) on local shapes.
class Program {
 public:
  explicit Program(const Graph& training) : t_(training), g_(ops::registry()), e_(g_, Origin{}) {}
  Graph& graph() { return g_; }
  const ops::Emitter& e() const { return e_; }

  Value source(const std::string& name, const Shape& local) {
    const Node& n = t_.node(*t_.find(name));
    Attrs a = n.attrs;
    a.set("shape", local);
    return g_.add(n.op, {}, a, name);
  }
  // A parameter's slice starting at `offsets` of the whole (empty: the whole).
  Value parameter(const std::string& name, const Shape& local, std::vector<int64_t> offsets = {}) {
    const Node& n = t_.node(*t_.find(name));
    Attrs a = n.attrs;
    a.set("shape", local);
    if (!offsets.empty()) {
      a.set("global_shape", n.outputs[0].shape);
      a.set("offsets", offsets);
    }
    return g_.add("parameter", {}, a, name);
  }

  Value all_reduce(Value v, const Group& grp) {
    return g_.add("all_reduce", {v}, {{"ranks", grp.ranks}, {"group", grp.axis}, {"reduce", std::string("sum")}});
  }
  Value reduce_scatter(Value v, int64_t dim, const Group& grp) {
    return g_.add("reduce_scatter", {v},
                  {{"ranks", grp.ranks}, {"group", grp.axis}, {"reduce", std::string("sum")}, {"dim", dim}});
  }
  Value all_gather(Value v, int64_t dim, const Group& grp) {
    return g_.add("all_gather", {v}, {{"ranks", grp.ranks}, {"group", grp.axis}, {"dim", dim}});
  }
  // Part `part` of `parts` equal parts of dim `dim`.
  Value slice(Value v, int64_t dim, int64_t part, int64_t parts) {
    const int64_t len = e_.shape(v)[dim] / parts;
    return e_.slice(v, {dim}, {part * len}, {(part + 1) * len});
  }
  // The tag is the partitioner's to choose (check_messages pairs them up).
  void send(Value v, int64_t peer) {
    g_.set_output("send:" + std::to_string(sends_++), g_.add("send", {v}, {{"peer", peer}, {"tag", int64_t{0}}}));
  }
  Value recv(int64_t peer, const Shape& shape) {
    return g_.add("recv", {},
                  {{"peer", peer}, {"tag", int64_t{0}}, {"dtype", std::string("f32")}, {"shape", shape}});
  }
  void update(Value variable, Value value) { g_.add_update(variable.node, value, "train"); }

  // The step counter and learning rate (replicated: a scalar each rank computes itself).
  Value learning_rate() {
    const ops::Emitter& e = e_;
    Value step = source("optimizer/step", {});
    update(step, e.add(step, e.constant(1, DType::i64)));
    const Node& lr = t_.node(*t_.find("optimizer/lr"));
    Value v = e.op("lr_schedule", {step}, lr.attrs);
    g_.set_output("lr", v);
    return v;
  }

 private:
  const Graph& t_;
  Graph g_;
  ops::Emitter e_;
  int sends_ = 0;
};

// ---- the model's pieces, on whatever local shapes their operands have -------------------

Value linear(const ops::Emitter& e, Value x, Value w, Value b) { return e.add(e.matmul(x, w), b); }

// Autodiff's backward of x @ w + b, as the single-device training graph writes it.
Value bias_grad(const ops::Emitter& e, Value dy) { return e.reshape(e.sum(dy, {0}, true), {e.shape(dy)[1]}); }
Value weight_grad(const ops::Emitter& e, Value x, Value dy) { return e.matmul(x, dy, true, false); }
Value input_grad(const ops::Emitter& e, Value dy, Value w) { return e.matmul(dy, w, false, true); }
Value relu_grad(const ops::Emitter& e, Value pre, Value dh) {
  Value zero = e.constant(0, DType::f32);
  return e.where(e.greater(pre, zero), dh, zero);
}

// The loss: Emitter's log_softmax (the model builder's composition), then the mean over the
// global batch of the picked log-probabilities. `resolve` completes the sum over this rank's
// rows (an all-reduce when the rows are split over dp).
struct Loss {
  Value one_hot, exp, sum_exp, scale, loss;
  int64_t rows = 0, classes = 0;
};
Loss cross_entropy(const ops::Emitter& e, Value logits, Value labels, const std::function<Value(Value)>& resolve) {
  Loss l;
  l.rows = e.shape(logits)[0];
  l.classes = e.shape(logits)[1];
  Value lp = e.with_scope("cross_entropy").log_softmax(logits);
  // lp = shifted - log(sum(exp(shifted))): the backward reads the exp and the sum.
  const Graph& g = e.graph();
  l.sum_exp = g.node(g.node(lp.node).inputs[1].node).inputs[0];
  l.exp = g.node(l.sum_exp.node).inputs[0];
  l.one_hot = e.one_hot(labels, l.classes);
  Value total = resolve(e.sum(e.sum(e.mul(lp, l.one_hot), {-1}), {}));
  l.scale = e.constant(1.0 / static_cast<double>(kBatch), DType::f32);
  l.loss = e.neg(e.mul(total, l.scale));
  return l;
}

// d loss / d logits on this rank's rows, as autodiff writes it: the seed's broadcast back to
// the rows, through the pick and the log-softmax.
Value cross_entropy_grad(const ops::Emitter& e, const Loss& l) {
  Value g = e.mul(e.neg(e.constant(1, DType::f32)), l.scale);
  g = e.broadcast_to(e.reshape(g, {1}), {l.rows});
  g = e.broadcast_to(e.reshape(g, {l.rows, 1}), {l.rows, l.classes});
  Value dlp = e.mul(g, l.one_hot);
  Value dsum = e.div(e.sum(e.neg(dlp), {1}, true), l.sum_exp);
  return e.add(dlp, e.mul(e.broadcast_to(dsum, {l.rows, l.classes}), l.exp));
}

// SGD: p - lr * g; with momentum, v' = 0.9 v + g first and p - lr * v'.
Value sgd(const ops::Emitter& e, Value p, Value g, Value lr) { return e.sub(p, e.mul(g, lr)); }
Value momentum(const ops::Emitter& e, Value v, Value g) { return e.add(e.mul(v, 0.9), g); }

struct Params {
  Value w1, b1, w2, b2;
};
const char* const kParams[] = {"fc1/weight", "fc1/bias", "fc2/weight", "fc2/bias"};

// Forward and backward of the whole MLP on this rank's rows of the batch, with the weights
// as its consumers see them (whole). Returns the gradients as this rank's partial sums.
// `w2_backward`: fc2's weight as the backward's input gradient reads it (default: w.w2).
Params batch_split_step(Program& p, Value x, Value labels, const Params& w, const Group& dp, Value w2_backward = {}) {
  const ops::Emitter& e = p.e();
  Value pre = linear(e, x, w.w1, w.b1);
  Value h = e.relu(pre);
  Value logits = linear(e, h, w.w2, w.b2);
  Loss l = cross_entropy(e, logits, labels, [&](Value sum) { return p.all_reduce(sum, dp); });
  p.graph().set_output("logits", logits);  // left split over dp: the runtime gathers it
  p.graph().set_output("loss", l.loss);
  Value dy = cross_entropy_grad(e, l);
  Value dpre = relu_grad(e, pre, input_grad(e, dy, w2_backward.valid() ? w2_backward : w.w2));
  return {weight_grad(e, x, dpre), bias_grad(e, dpre), weight_grad(e, h, dy), bias_grad(e, dy)};
}

std::vector<Value*> each(Params& p) { return {&p.w1, &p.b1, &p.w2, &p.b2}; }

// ---- the cases --------------------------------------------------------------------------

PlanConfig config(int64_t dp, int64_t tp, int64_t pp, int zero) {
  PlanConfig c;
  c.dp = dp;
  c.tp = tp;
  c.pp = pp;
  c.zero = zero;
  return c;
}

void expect_programs(const Graph& training, const PlanConfig& c, const std::function<Graph(int64_t rank)>& expected) {
  const std::vector<RankProgram> progs = partition(training, c);
  ASSERT_EQ(static_cast<int64_t>(progs.size()), c.devices());
  for (const RankProgram& p : progs) {
    SCOPED_TRACE("rank " + std::to_string(p.rank));
    EXPECT_NO_THROW(p.graph.verify());
    Graph want = expected(p.rank);
    want.verify();
    const std::string d = diff(want, p.graph);
    EXPECT_TRUE(d.empty()) << c.str() << ", rank " << p.rank << ":\n" << d;
  }
  check_messages(progs);
}

// dp=2: each rank runs the whole model on 4 of the 8 rows with whole weights; the loss's sum
// over rows and each gradient (a partial sum over rows) are all-reduced; the update runs
// replicated.
TEST(ExpectedProgram, DataParallel) {
  models::Built b = training_graph(0);
  const Graph& t = b.model->graph();
  const Group dp{{0, 1}, "dp"};
  expect_programs(t, config(2, 1, 1, 0), [&](int64_t) {
    Program p(t);
    Params w{p.parameter("fc1/weight", {8, 16}), p.parameter("fc1/bias", {16}), p.parameter("fc2/weight", {16, 4}),
             p.parameter("fc2/bias", {4})};
    Params g = batch_split_step(p, p.source("x", {4, 8}), p.source("labels", {4}), w, dp);
    Value lr = p.learning_rate();
    auto ws = each(w), gs = each(g);
    for (size_t i = 0; i < ws.size(); ++i) p.update(*ws[i], sgd(p.e(), *ws[i], p.all_reduce(*gs[i], dp), lr));
    return std::move(p.graph());
  });
}

// ZeRO-1 and ZeRO-2 (dp=2, SGD with momentum so each parameter has a state to shard): the
// momentum is stored in halves along dim 0 and the update runs on halves. The gradient's
// only consumer is that half-update, so it is reduce-scattered, not all-reduced and then
// cut: in a dataflow program ZeRO-1 already moves ZeRO-2's bytes, and the two programs are
// the same. Each rank updates its half of the (replicated) parameter, sliced out locally,
// and the halves are all-gathered into the new parameter.
Graph zero_1_2_program(const Graph& t, int64_t rank, const Group& dp) {
  Program p(t);
  const ops::Emitter& e = p.e();
  Params w{p.parameter("fc1/weight", {8, 16}), p.parameter("fc1/bias", {16}), p.parameter("fc2/weight", {16, 4}),
           p.parameter("fc2/bias", {4})};
  Params g = batch_split_step(p, p.source("x", {4, 8}), p.source("labels", {4}), w, dp);
  Value lr = p.learning_rate();
  auto ws = each(w), gs = each(g);
  for (size_t i = 0; i < ws.size(); ++i) {
    Shape half = e.shape(*ws[i]);
    half[0] /= 2;
    Value v = p.source("optimizer/" + std::string(kParams[i]) + "/momentum", half);
    Value v_new = momentum(e, v, p.reduce_scatter(*gs[i], 0, dp));
    p.update(v, v_new);
    p.update(*ws[i], p.all_gather(sgd(e, p.slice(*ws[i], 0, rank, 2), v_new, lr), 0, dp));
  }
  return std::move(p.graph());
}

TEST(ExpectedProgram, Zero1) {
  models::Built b = training_graph(0.9);
  const Graph& t = b.model->graph();
  expect_programs(t, config(2, 1, 1, 1), [&](int64_t rank) { return zero_1_2_program(t, rank, {{0, 1}, "dp"}); });
}

TEST(ExpectedProgram, Zero2) {
  models::Built b = training_graph(0.9);
  const Graph& t = b.model->graph();
  expect_programs(t, config(2, 1, 1, 2), [&](int64_t rank) { return zero_1_2_program(t, rank, {{0, 1}, "dp"}); });
}

// ZeRO-3 (dp=2, momentum 0.9): parameters are stored in halves along dim 0 as well; each is
// all-gathered for the forward pass, and fc2's weight, which the backward's input gradient
// also reads, is all-gathered again for it (so no whole copy lives from forward to backward);
// the update writes the stored half directly, so nothing is gathered after it.
TEST(ExpectedProgram, Zero3) {
  models::Built b = training_graph(0.9);
  const Graph& t = b.model->graph();
  const Group dp{{0, 1}, "dp"};
  expect_programs(t, config(2, 1, 1, 3), [&](int64_t rank) {
    Program p(t);
    const ops::Emitter& e = p.e();
    Params stored{p.parameter("fc1/weight", {4, 16}, {4 * rank, 0}), p.parameter("fc1/bias", {8}, {8 * rank}),
                  p.parameter("fc2/weight", {8, 4}, {8 * rank, 0}), p.parameter("fc2/bias", {2}, {2 * rank})};
    Params used{p.all_gather(stored.w1, 0, dp), p.all_gather(stored.b1, 0, dp), p.all_gather(stored.w2, 0, dp),
                p.all_gather(stored.b2, 0, dp)};
    Params g = batch_split_step(p, p.source("x", {4, 8}), p.source("labels", {4}), used, dp, p.all_gather(stored.w2, 0, dp));
    Value lr = p.learning_rate();
    auto ws = each(stored), gs = each(g);
    for (size_t i = 0; i < ws.size(); ++i) {
      Value v = p.source("optimizer/" + std::string(kParams[i]) + "/momentum", e.shape(*ws[i]));
      Value v_new = momentum(e, v, p.reduce_scatter(*gs[i], 0, dp));
      p.update(v, v_new);
      p.update(*ws[i], sgd(e, *ws[i], v_new, lr));
    }
    return std::move(p.graph());
  });
  // The second gather belongs to the backward section (the runtime frees the forward's copy
  // once the forward pass is done with it).
  for (const RankProgram& rp : partition(t, config(2, 1, 1, 3))) {
    std::map<Section, int> gathers;
    for (const Node& n : rp.graph.nodes())
      if (n.op == "all_gather") ++gathers[rp.section[n.id]];
    EXPECT_EQ(gathers[Section::forward], 4) << "rank " << rp.rank;
    EXPECT_EQ(gathers[Section::backward], 1) << "rank " << rp.rank;
  }
}

// tp=2, fc1 and fc2 split as a Megatron column/row pair: fc1's weight [8, 8] of [8, 16]
// and bias [8] of [16] per rank; fc2's weight [8, 4] of [16, 4] (rows), its bias whole.
// fc2's product reads the hidden activation split along its contraction dim, so its partial
// sum is all-reduced before the bias. Loss and logits are then whole on both ranks. Every
// weight's gradient comes out split as the weight is, so all update in place.
TEST(ExpectedProgram, TensorParallel) {
  models::Built b = training_graph(0);
  const Graph& t = b.model->graph();
  const Group tp{{0, 1}, "tp"};
  PlanConfig c = config(1, 2, 1, 0);
  c.tp_dims = megatron_splits(t);
  expect_programs(t, c, [&](int64_t rank) {
    Program p(t);
    const ops::Emitter& e = p.e();
    Value x = p.source("x", {8, 8}), labels = p.source("labels", {8});
    Value w1 = p.parameter("fc1/weight", {8, 8}, {0, 8 * rank}), b1 = p.parameter("fc1/bias", {8}, {8 * rank});
    Value w2 = p.parameter("fc2/weight", {8, 4}, {8 * rank, 0}), b2 = p.parameter("fc2/bias", {4});
    Value pre = linear(e, x, w1, b1);
    Value h = e.relu(pre);
    Value logits = e.add(p.all_reduce(e.matmul(h, w2), tp), b2);
    Loss l = cross_entropy(e, logits, labels, [](Value sum) { return sum; });
    p.graph().set_output("logits", logits);
    p.graph().set_output("loss", l.loss);
    Value dy = cross_entropy_grad(e, l);
    Value dpre = relu_grad(e, pre, input_grad(e, dy, w2));
    Value lr = p.learning_rate();
    p.update(w1, sgd(e, w1, weight_grad(e, x, dpre), lr));
    p.update(b1, sgd(e, b1, bias_grad(e, dpre), lr));
    p.update(w2, sgd(e, w2, weight_grad(e, h, dy), lr));
    p.update(b2, sgd(e, b2, bias_grad(e, dy), lr));
    return std::move(p.graph());
  });
}

// pp=2. The layers by scope are fc1 (with the unscoped ReLU after it), fc2 and cross_entropy;
// equal layer counts put fc1 on stage 0 and fc2 with the loss on stage 1. Stage 0 sends the
// hidden activation forward and receives its gradient back; each stage keeps its own step
// counter and learning rate, and updates its own layer.
TEST(ExpectedProgram, Pipeline) {
  models::Built b = training_graph(0);
  const Graph& t = b.model->graph();
  expect_programs(t, config(1, 1, 2, 0), [&](int64_t rank) {
    Program p(t);
    const ops::Emitter& e = p.e();
    if (rank == 0) {
      Value x = p.source("x", {8, 8});
      Value w1 = p.parameter("fc1/weight", {8, 16}), b1 = p.parameter("fc1/bias", {16});
      Value pre = linear(e, x, w1, b1);
      p.send(e.relu(pre), 1);
      Value dpre = relu_grad(e, pre, p.recv(1, {8, 16}));
      Value lr = p.learning_rate();
      p.update(w1, sgd(e, w1, weight_grad(e, x, dpre), lr));
      p.update(b1, sgd(e, b1, bias_grad(e, dpre), lr));
    } else {
      Value h = p.recv(0, {8, 16});
      Value labels = p.source("labels", {8});
      Value w2 = p.parameter("fc2/weight", {16, 4}), b2 = p.parameter("fc2/bias", {4});
      Value logits = linear(e, h, w2, b2);
      Loss l = cross_entropy(e, logits, labels, [](Value sum) { return sum; });
      p.graph().set_output("logits", logits);
      p.graph().set_output("loss", l.loss);
      Value dy = cross_entropy_grad(e, l);
      p.send(input_grad(e, dy, w2), 0);
      Value lr = p.learning_rate();
      p.update(w2, sgd(e, w2, weight_grad(e, h, dy), lr));
      p.update(b2, sgd(e, b2, bias_grad(e, dy), lr));
    }
    return std::move(p.graph());
  });
}

// The comparison itself: it finds a changed attribute, a missing collective and a collective
// on the wrong group, and ignores names and insertion order.
TEST(ExpectedProgram, ComparisonSeesWhatMatters) {
  models::Built b = training_graph(0);
  const Graph& t = b.model->graph();
  auto build = [&](const std::string& axis, bool reduce, bool reorder) {
    Program p(t);
    const ops::Emitter& e = p.e();
    Value w, x;
    if (reorder) {
      w = p.parameter("fc1/weight", {8, 16});
      x = p.source("x", {4, 8});
    } else {
      x = p.source("x", {4, 8});
      w = p.parameter("fc1/weight", {8, 16});
    }
    Value y = e.matmul(x, w);
    if (reduce) y = p.all_reduce(y, {{0, 1}, axis});
    p.graph().set_output("y", y);
    return std::move(p.graph());
  };
  EXPECT_EQ(diff(build("dp", true, false), build("dp", true, true)), "");
  EXPECT_NE(diff(build("dp", true, false), build("tp", true, false)), "");
  const std::string missing = diff(build("dp", true, false), build("dp", false, false));
  EXPECT_NE(missing.find("first differences:\n    #"), std::string::npos) << missing;
  EXPECT_NE(missing.find("all_reduce"), std::string::npos) << missing;
}

}  // namespace
}  // namespace tessel::planner
