#include "runtime/fusion.h"

#include <algorithm>
#include <map>
#include <optional>

#include "graph/error.h"
#include "ops/fused.h"

namespace tessel::runtime {

namespace {

using ops::FusedInput;
using ops::FusedInstr;
using ops::FusedKernelDesc;
using ops::FusedReduce;

// The shape of a per-row value of domain shape s split after p leading dims (keepdims).
Shape row_shape(const Shape& s, int p) {
  Shape r = s;
  for (size_t d = static_cast<size_t>(p); d < r.size(); ++d) r[d] = 1;
  return r;
}

// How a value of shape v, broadcast against the domain shape s, is read when the domain is
// split after p leading dims.
std::optional<FusedInput> classify(const Shape& v, const Shape& s, int p) {
  const size_t r = s.size();
  if (v.size() > r) return std::nullopt;
  Shape pad(r - v.size(), 1);
  pad.insert(pad.end(), v.begin(), v.end());
  auto ones = [&](size_t b, size_t e) {
    for (size_t d = b; d < e; ++d)
      if (pad[d] != 1) return false;
    return true;
  };
  auto same = [&](size_t b, size_t e) {
    for (size_t d = b; d < e; ++d)
      if (pad[d] != s[d]) return false;
    return true;
  };
  const size_t q = static_cast<size_t>(p);
  if (ones(0, r)) return FusedInput::scalar;
  if (same(0, r)) return FusedInput::full;
  if (ones(0, q) && same(q, r)) return FusedInput::per_col;
  if (same(0, q) && ones(q, r)) return FusedInput::per_row;
  return std::nullopt;
}

enum class Level : uint8_t { full, row };

struct Group {
  std::vector<int32_t> nodes;  // ascending
  Shape shape;                 // the domain
  uint32_t allowed = 0;        // bit p: the domain may split after p leading dims
  int64_t key = 0;
};

class Fuser {
 public:
  Fuser(const Graph& g, const FusionOptions& o) : g_(g), o_(o) {}

  FusedGraph run() {
    const size_t n = static_cast<size_t>(g_.size());
    group_.assign(n, -1);
    level_.assign(n, Level::full);
    users_.assign(n, {});
    kept_.assign(n, false);
    for (const Node& node : g_.nodes())
      for (const Value& v : node.inputs) users_[static_cast<size_t>(v.node)].push_back(node.id);
    for (const NamedValue& o : g_.outputs()) kept_[static_cast<size_t>(o.value.node)] = true;
    for (const Update& u : g_.updates()) kept_[static_cast<size_t>(u.value.node)] = true;
    live_.assign(n, 0);
    for (int32_t id : needed_nodes(g_)) live_[static_cast<size_t>(id)] = 1;
    for (const Node& node : g_.nodes())
      if (live_[static_cast<size_t>(node.id)]) place(node);
    return build();
  }

 private:
  int64_t key(int32_t id) const { return o_.key.empty() ? 0 : o_.key.at(static_cast<size_t>(id)); }
  bool internal(Value v, int gi) const { return group_[static_cast<size_t>(v.node)] == gi; }

  // A constant the kernel can take as an immediate (one value everywhere, no stored data).
  std::optional<double> immediate(Value v) const {
    const Node& n = g_.node(v.node);
    if (n.op != "constant" || g_.data(n.id) || n.outputs[0].dtype != DType::f32) return std::nullopt;
    return n.attrs.get_f64("value");
  }

  static bool is_op(const Node& n, std::initializer_list<const char*> ops) {
    for (const char* o : ops)
      if (n.op == o) return true;
    return false;
  }

  bool fusible(const Node& n) const {
    if (n.def->kind != OpKind::compute || n.outputs.size() != 1) return false;
    if (n.outputs[0].dtype != DType::f32 || n.outputs[0].numel() == 0) return false;
    if (is_op(n, {"sum", "max", "broadcast_to", "stop_gradient"})) return true;
    return n.def->elementwise() && n.op != "cast";
  }

  // The reduced axes of a reduce node if they are the trailing ones: the first of them.
  std::optional<int> trailing_axes(const Node& n) const {
    const int r = g_.type(n.inputs[0]).rank();
    std::vector<int64_t> axes = n.attrs.get_i64s("axes");
    if (axes.empty())
      for (int d = 0; d < r; ++d) axes.push_back(d);
    for (auto& a : axes) a = a < 0 ? a + r : a;
    std::sort(axes.begin(), axes.end());
    if (axes.empty() || axes.back() != r - 1) return std::nullopt;
    for (size_t k = 0; k < axes.size(); ++k)
      if (axes[k] != r - static_cast<int64_t>(axes.size() - k)) return std::nullopt;
    return static_cast<int>(axes.front());
  }

  // Whether n can be computed in group gi's domain s with the splits in `allowed_io`; on
  // success those narrowed to what n allows, and n's level.
  bool fits(const Node& n, int gi, const Shape& s, uint32_t& allowed_io, Level& level_out) const {
    const int r = static_cast<int>(s.size());
    uint32_t allowed = allowed_io;
    auto restrict = [&](auto pred) {
      uint32_t m = 0;
      for (int p = 0; p <= r; ++p)
        if ((allowed >> p & 1u) && pred(p)) m |= 1u << p;
      allowed = m;
      return m != 0;
    };
    if (is_op(n, {"sum", "max"})) {
      const Value x = n.inputs[0];
      if (g_.type(x).shape != s || g_.type(x).dtype != DType::f32) return false;
      if (internal(x, gi) && level_[static_cast<size_t>(x.node)] != Level::full) return false;
      const auto a = trailing_axes(n);
      if (!a || !restrict([&](int p) { return p == *a; })) return false;
      allowed_io = allowed;
      level_out = Level::row;
      return true;
    }
    const Shape& out = n.outputs[0].shape;
    Level lvl = Level::full;
    if (out != s) {
      if (out.size() != s.size() || !restrict([&](int p) { return row_shape(s, p) == out; })) return false;
      lvl = Level::row;
    }
    for (const Value& v : n.inputs) {
      if (immediate(v)) continue;
      const TensorType& t = g_.type(v);
      if (t.dtype != DType::f32 && !internal(v, gi)) return false;  // bool conditions only from inside
      if (internal(v, gi)) {
        const Level l = level_[static_cast<size_t>(v.node)];
        if (l == Level::full) {
          if (lvl == Level::row || t.shape != s) return false;
        } else if (!restrict([&](int p) { return row_shape(s, p) == t.shape; })) {
          return false;
        }
        continue;
      }
      const bool ok = restrict([&](int p) {
        const auto k = classify(t.shape, s, p);
        return k && (lvl == Level::full || *k == FusedInput::per_row || *k == FusedInput::scalar);
      });
      if (!ok) return false;
    }
    allowed_io = allowed;
    level_out = lvl;
    return true;
  }

  // Every reader of the group's values outside it comes after `at`: the fused node, placed
  // where its last member was, then precedes all of them.
  bool readers_after(const Group& grp, int gi, int32_t at) const {
    for (int32_t m : grp.nodes)
      for (int32_t u : users_[static_cast<size_t>(m)])
        if (u != at && group_[static_cast<size_t>(u)] != gi && u < at) return false;
    return true;
  }

  // A comparison whose bool result only n reads (relu's backward: where(x > 0, dy, 0)): it
  // joins n's kernel, where the bool is a 1.0 / 0.0 that is never stored.
  int32_t absorbable_condition(const Node& n) const {
    for (const Value& v : n.inputs) {
      if (g_.type(v).dtype == DType::f32 || immediate(v)) continue;
      const Node& c = g_.node(v.node);
      if (g_.type(v).dtype != DType::boolean || c.def->kind != OpKind::compute || !c.def->elementwise() ||
          c.outputs.size() != 1 || c.outputs[0].shape != n.outputs[0].shape || kept_[static_cast<size_t>(c.id)] ||
          group_[static_cast<size_t>(c.id)] >= 0 || key(c.id) != key(n.id))
        return -2;
      for (const Value& x : c.inputs)
        if (g_.type(x).dtype != DType::f32) return -2;
      for (int32_t u : users_[static_cast<size_t>(c.id)])
        if (u != n.id) return -2;
      return c.id;
    }
    return -1;
  }

  // Adds n (and the condition it absorbs) to group gi if both fit.
  bool join(const Node& n, int32_t cond, int gi, Group& grp) {
    uint32_t allowed = grp.allowed;
    Level cl = Level::full, lvl = Level::full;
    if (cond >= 0) {
      if (!fits(g_.node(cond), gi, grp.shape, allowed, cl) || cl != Level::full) return false;
      group_[static_cast<size_t>(cond)] = gi;  // so that n sees its condition as internal
    }
    if (!fits(n, gi, grp.shape, allowed, lvl)) {
      if (cond >= 0) group_[static_cast<size_t>(cond)] = -1;
      return false;
    }
    grp.allowed = allowed;
    if (cond >= 0) {
      grp.nodes.push_back(cond);
      level_[static_cast<size_t>(cond)] = cl;
    }
    grp.nodes.push_back(n.id);
    std::sort(grp.nodes.begin(), grp.nodes.end());
    group_[static_cast<size_t>(n.id)] = gi;
    level_[static_cast<size_t>(n.id)] = lvl;
    return true;
  }

  void place(const Node& n) {
    if (!fusible(n)) return;
    const int32_t cond = absorbable_condition(n);
    if (cond == -2) return;
    for (const Value& v : n.inputs) {
      const int gi = group_[static_cast<size_t>(v.node)];
      if (gi < 0 || v.node == cond) continue;
      Group& grp = groups_[static_cast<size_t>(gi)];
      if (grp.key != key(n.id) || !readers_after(grp, gi, n.id)) continue;
      if (!join(n, cond, gi, grp)) continue;
      merge_siblings(n, gi);
      return;
    }
    Group grp;
    grp.shape = is_op(n, {"sum", "max"}) ? g_.type(n.inputs[0]).shape : n.outputs[0].shape;
    if (grp.shape.size() > 30) return;
    grp.allowed = (2u << grp.shape.size()) - 1;
    grp.key = key(n.id);
    const int gi = static_cast<int>(groups_.size());
    if (!join(n, cond, gi, grp)) return;
    groups_.push_back(std::move(grp));
  }

  // n joined group gi; other groups that n reads (the moments of an AdamW update, say) join
  // it too when they share its domain and key and nothing outside them reads them before n.
  // The two groups then cannot reference each other (that reader would come before n), so
  // every value stays where it was computed.
  void merge_siblings(const Node& n, int gi) {
    for (const Value& v : n.inputs) {
      const int hi = group_[static_cast<size_t>(v.node)];
      if (hi < 0 || hi == gi) continue;
      Group& g = groups_[static_cast<size_t>(gi)];
      Group& h = groups_[static_cast<size_t>(hi)];
      if (h.key != g.key || h.shape != g.shape || (h.allowed & g.allowed) == 0 || !readers_after(h, hi, n.id)) continue;
      g.allowed &= h.allowed;
      for (int32_t m : h.nodes) group_[static_cast<size_t>(m)] = gi;
      g.nodes.insert(g.nodes.end(), h.nodes.begin(), h.nodes.end());
      std::sort(g.nodes.begin(), g.nodes.end());
      h.nodes.clear();
    }
  }

  // The fused node of group gi: its kernel, inputs and the source values it writes.
  void emit(int gi, FusedGraph& fg) {
    const Group& grp = groups_[static_cast<size_t>(gi)];
    int p = 0;
    while (!(grp.allowed >> p & 1u)) ++p;
    const Shape& s = grp.shape;
    FusedKernelDesc d;
    d.rows = 1;
    d.cols = 1;
    for (size_t k = 0; k < s.size(); ++k) (static_cast<int>(k) < p ? d.rows : d.cols) *= s[k];
    std::vector<Value> inputs;
    std::map<std::pair<int32_t, int32_t>, int32_t> loads;  // (input position, kind) -> instr
    std::map<double, int32_t> consts;
    std::map<int32_t, int32_t> value;  // member node -> its instruction
    auto push = [&](FusedInstr i) {
      d.code.push_back(i);
      return static_cast<int32_t>(d.code.size()) - 1;
    };
    auto constant = [&](double v) {
      auto it = consts.find(v);
      if (it != consts.end()) return it->second;
      FusedInstr i;
      i.op = ScalarOp::constant;
      i.imm = v;
      return consts[v] = push(i);
    };
    auto operand = [&](Value v, bool whole) -> int32_t {
      if (internal(v, gi)) return value.at(v.node);
      if (!whole)
        if (auto imm = immediate(v)) return constant(*imm);
      const Value mapped = fg.map(v);
      if (!mapped.valid()) throw Error(g_.node(v.node).where() + ": fusion: an input of a fused kernel is not materialised");
      const FusedInput kind = whole ? FusedInput::full : *classify(g_.type(v).shape, s, p);
      int32_t pos = -1;
      for (size_t k = 0; k < inputs.size(); ++k)
        if (inputs[k] == mapped && d.inputs[k] == kind) pos = static_cast<int32_t>(k);
      if (pos < 0) {
        inputs.push_back(mapped);
        d.inputs.push_back(kind);
        pos = static_cast<int32_t>(inputs.size()) - 1;
      }
      auto key = std::make_pair(pos, static_cast<int32_t>(kind));
      auto it = loads.find(key);
      if (it != loads.end()) return it->second;
      FusedInstr i;
      i.op = ScalarOp::arg;
      i.index = pos;
      return loads[key] = push(i);
    };
    for (int32_t m : grp.nodes) {
      const Node& n = g_.node(m);
      if (is_op(n, {"sum", "max"})) {
        FusedInstr i;
        i.reduce = n.op == "sum" ? FusedReduce::sum : FusedReduce::max;
        i.a = operand(n.inputs[0], true);
        value[m] = push(i);
      } else if (is_op(n, {"broadcast_to", "stop_gradient"})) {
        value[m] = operand(n.inputs[0], false);
      } else {
        const ScalarExpr e = n.def->scalar(n);
        std::vector<int32_t> at;
        for (const ScalarInstr& si : e.code()) {
          if (si.op == ScalarOp::arg) {
            at.push_back(operand(n.inputs.at(static_cast<size_t>(si.index)), false));
          } else if (si.op == ScalarOp::constant) {
            at.push_back(constant(si.imm));
          } else {
            FusedInstr i;
            i.op = si.op;
            auto remap = [&](int32_t o) { return o < 0 ? -1 : at.at(static_cast<size_t>(o)); };
            i.a = remap(si.a);
            i.b = remap(si.b);
            i.c = remap(si.c);
            at.push_back(push(i));
          }
        }
        value[m] = at.back();
      }
    }
    std::vector<int32_t> written;
    Attrs attrs;
    std::vector<int64_t> shapes;
    for (int32_t m : grp.nodes) {
      bool out = kept_[static_cast<size_t>(m)];
      for (int32_t u : users_[static_cast<size_t>(m)]) out = out || group_[static_cast<size_t>(u)] != gi;
      if (!out) continue;
      const Node& n = g_.node(m);
      const bool row = level_[static_cast<size_t>(m)] == Level::row;
      d.outputs.push_back({value.at(m), row});
      written.push_back(m);
      shapes.push_back(static_cast<int64_t>(n.outputs[0].shape.size()));
      shapes.insert(shapes.end(), n.outputs[0].shape.begin(), n.outputs[0].shape.end());
    }
    d.validate();
    attrs = d.to_attrs();
    attrs.set("shapes", std::move(shapes));
    const Node& last = g_.node(grp.nodes.back());
    const int32_t id = fg.graph.add_node("fused", inputs, std::move(attrs), last.name, last.origin);
    fg.source_node.push_back(-1);
    fg.members.push_back(grp.nodes);
    for (size_t k = 0; k < written.size(); ++k)
      fg.values[static_cast<size_t>(written[k])][0] = Value{id, static_cast<int32_t>(k)};
    ++fg.fused_nodes;
    fg.nodes_fused += static_cast<int64_t>(grp.nodes.size());
  }

  FusedGraph build() {
    FusedGraph fg{Graph(g_.registry()), {}, {}, {}, 0, 0};
    fg.values.resize(static_cast<size_t>(g_.size()));
    for (const Node& n : g_.nodes()) fg.values[static_cast<size_t>(n.id)].assign(n.outputs.size(), Value{});
    for (const Node& n : g_.nodes()) {
      if (!live_[static_cast<size_t>(n.id)]) continue;  // nothing needs it
      const int gi = group_[static_cast<size_t>(n.id)];
      if (gi >= 0) {
        if (groups_[static_cast<size_t>(gi)].nodes.back() == n.id) emit(gi, fg);  // merged groups are empty
        continue;
      }
      std::vector<Value> in;
      for (const Value& v : n.inputs) {
        in.push_back(fg.map(v));
        if (!in.back().valid()) throw Error(n.where() + ": fusion: an input is not materialised");
      }
      const int32_t id = fg.graph.add_node_typed(n.op, std::move(in), n.attrs, n.name, n.origin, n.outputs);
      if (const auto* data = g_.data(n.id)) fg.graph.set_data(id, *data);
      fg.source_node.push_back(n.id);
      fg.members.emplace_back();
      for (size_t k = 0; k < n.outputs.size(); ++k)
        fg.values[static_cast<size_t>(n.id)][k] = Value{id, static_cast<int32_t>(k)};
    }
    for (const NamedValue& o : g_.outputs()) fg.graph.set_output(o.name, fg.map(o.value));
    for (const Update& u : g_.updates())
      fg.graph.add_update(fg.map(Value{u.variable, 0}).node, fg.map(u.value), u.phase);
    fg.graph.verify();
    return fg;
  }

  const Graph& g_;
  const FusionOptions& o_;
  std::vector<Group> groups_;
  std::vector<int> group_;  // per node: its group, or -1
  std::vector<char> live_;  // per node: an output or update needs it
  std::vector<Level> level_;
  std::vector<std::vector<int32_t>> users_;
  std::vector<bool> kept_;
};

}  // namespace

FusedGraph fuse(const Graph& g, const FusionOptions& options) {
  if (!options.key.empty() && options.key.size() != static_cast<size_t>(g.size()))
    throw Error("fusion: " + std::to_string(options.key.size()) + " keys for " + std::to_string(g.size()) + " nodes");
  return Fuser(g, options).run();
}

int update_over_input(const Graph& g, const Node& n, const ops::FusedKernelDesc& d, int output, int32_t variable) {
  if (n.op != "fused" || output < 0 || static_cast<size_t>(output) >= d.outputs.size() || d.outputs[static_cast<size_t>(output)].row)
    return -1;
  if (n.outputs.size() != d.outputs.size() || n.inputs.size() != d.inputs.size()) return -1;
  if (g.type(Value{variable, 0}) != n.outputs[static_cast<size_t>(output)]) return -1;
  int found = -1;
  for (size_t k = 0; k < n.inputs.size(); ++k) {
    if (storage_root(g, n.inputs[k]).node != variable) continue;
    if (found >= 0 || n.inputs[k] != Value{variable, 0} || d.inputs[k] != ops::FusedInput::full) return -1;
    found = static_cast<int>(k);
  }
  for (const ops::FusedOutput& o : d.outputs)
    if (found >= 0 && o.over == found) return -1;  // already written over by another output
  return found;
}

}  // namespace tessel::runtime
