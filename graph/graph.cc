#include "graph/graph.h"

#include <algorithm>

#include "graph/error.h"

namespace tessel {

// ---- registry ---------------------------------------------------------------------------

namespace {
constexpr std::string_view kCollectiveNames[kNumCollectives] = {"all_reduce", "reduce_scatter", "all_gather", "all_to_all",
                                                                 "broadcast",  "send_recv",      "barrier"};
constexpr std::string_view kCollectiveLabels[kNumCollectives] = {"all-reduce", "reduce-scatter", "all-gather", "all-to-all",
                                                                  "broadcast",  "send/recv",      "barrier"};
static_assert(static_cast<int>(Collective::barrier) + 1 == kNumCollectives, "a name per collective");
}  // namespace

std::string_view collective_name(Collective c) { return kCollectiveNames[static_cast<int>(c)]; }
std::string_view collective_label(Collective c) { return kCollectiveLabels[static_cast<int>(c)]; }

void OpRegistry::add(OpDef def) {
  if (def.name.empty()) throw Error("op registered without a name");
  if (ops_.count(def.name)) throw Error("op '" + def.name + "' registered twice");
  if (!def.infer) throw Error("op '" + def.name + "' has no shape inference");
  if (!def.kernel) throw Error("op '" + def.name + "' has no reference kernel");
  std::string name = def.name;  // def is moved from below
  ops_.emplace(std::move(name), std::make_unique<OpDef>(std::move(def)));
}

const OpDef* OpRegistry::find(std::string_view name) const {
  auto it = ops_.find(std::string(name));
  return it == ops_.end() ? nullptr : it->second.get();
}

const OpDef& OpRegistry::get(std::string_view name) const {
  if (const OpDef* d = find(name)) return *d;
  throw Error("unknown op '" + std::string(name) + "'");
}

std::vector<const OpDef*> OpRegistry::all() const {
  std::vector<const OpDef*> v;
  for (auto& [k, d] : ops_) v.push_back(d.get());
  std::sort(v.begin(), v.end(), [](auto* a, auto* b) { return a->name < b->name; });
  return v;
}

// ---- nodes ------------------------------------------------------------------------------

std::string Node::where() const { return origin.str() + ": " + op + " '" + name + "'"; }

namespace {

std::string types_str(std::span<const TensorType> ts) {
  std::string s;
  for (auto& t : ts) s += (s.empty() ? "" : ", ") + t.str();
  return s;
}

void check_attrs(const OpDef& def, const Attrs& attrs) {
  for (auto& spec : def.attrs) {
    const AttrValue* v = attrs.find(spec.name);
    if (!v) {
      if (spec.required) throw Error("missing attribute '" + spec.name + "'");
      continue;
    }
    if (attr_type(*v) != spec.type)
      throw Error("attribute '" + spec.name + "' is " +
                  std::string(attr_type_name(attr_type(*v))) + ", expected " +
                  std::string(attr_type_name(spec.type)));
  }
  for (auto& item : attrs.items()) {
    const std::string& k = item.first;
    bool known = std::any_of(def.attrs.begin(), def.attrs.end(),
                             [&](const AttrSpec& s) { return s.name == k; });
    if (!known) throw Error("unknown attribute '" + k + "'");
  }
}

}  // namespace

std::string Graph::unique_name(std::string_view want, std::string_view op) {
  std::string base = want.empty() ? std::string(op) : std::string(want);
  if (!want.empty() && !by_name_.count(base)) return base;
  int64_t& n = name_counters_[base];
  std::string name;
  do {
    name = base + "_" + std::to_string(n++);
  } while (by_name_.count(name));
  return name;
}

int32_t Graph::add_node(std::string_view op, std::vector<Value> inputs, Attrs attrs,
                        std::string_view name, Origin origin) {
  return append(op, std::move(inputs), std::move(attrs), name, std::move(origin), nullptr);
}

int32_t Graph::add_node_typed(std::string_view op, std::vector<Value> inputs, Attrs attrs,
                              std::string_view name, Origin origin,
                              std::vector<TensorType> declared) {
  return append(op, std::move(inputs), std::move(attrs), name, std::move(origin), &declared);
}

int32_t Graph::append(std::string_view op, std::vector<Value> inputs, Attrs attrs,
                      std::string_view name, Origin origin,
                      const std::vector<TensorType>* declared) {
  Node n;
  n.id = size();
  n.op = std::string(op);
  const OpDef* def = registry_->find(op);
  // Inputs and variables are looked up by name (feeding, checkpoints): never rename them.
  if (def && (def->kind == OpKind::input || def->kind == OpKind::variable) && by_name_.count(std::string(name))) {
    const Node& other = nodes_[by_name_.at(std::string(name))];
    throw Error(origin.str() + ": " + std::string(op) + " '" + std::string(name) +
                "': the name is taken by " + other.where());
  }
  n.name = unique_name(name, op);
  n.attrs = std::move(attrs);
  n.inputs = std::move(inputs);
  n.origin = std::move(origin);
  std::vector<TensorType> in_types;
  try {
    n.def = def;
    if (!n.def) throw Error("unknown op");
    const OpDef& def = *n.def;
    int ni = static_cast<int>(n.inputs.size());
    if (ni < def.min_inputs || (def.max_inputs >= 0 && ni > def.max_inputs)) {
      std::string want = def.max_inputs < 0 ? "at least " + std::to_string(def.min_inputs)
                         : def.min_inputs == def.max_inputs
                             ? std::to_string(def.min_inputs)
                             : std::to_string(def.min_inputs) + " to " + std::to_string(def.max_inputs);
      throw Error("takes " + want + " inputs, got " + std::to_string(ni));
    }
    for (int i = 0; i < ni; ++i) {
      Value v = n.inputs[i];
      if (v.node < 0 || v.node >= n.id)
        throw Error("input " + std::to_string(i) + " refers to node " + std::to_string(v.node) +
                    ", which is not defined before it");
      const Node& src = nodes_[v.node];
      if (v.index < 0 || v.index >= static_cast<int>(src.outputs.size()))
        throw Error("input " + std::to_string(i) + " refers to output " +
                    std::to_string(v.index) + " of '" + src.name + "', which has " +
                    std::to_string(src.outputs.size()));
      in_types.push_back(src.outputs[v.index]);
    }
    check_attrs(def, n.attrs);
    n.outputs = def.infer(n, in_types);
    for (auto& t : n.outputs) checked_numel(t.shape);
    if (declared && *declared != n.outputs)
      throw Error("declared output types (" + types_str(*declared) + ") differ from inferred (" +
                  types_str(n.outputs) + ")");
  } catch (const Error& e) {
    std::string msg = n.where() + ": " + e.what();
    if (!in_types.empty()) msg += " (inputs: " + types_str(in_types) + ")";
    throw Error(msg);
  }
  by_name_.emplace(n.name, n.id);
  nodes_.push_back(std::move(n));
  return nodes_.back().id;
}

const TensorType& Graph::type(Value v) const {
  if (v.node < 0 || v.node >= size()) throw Error("value refers to missing node " + std::to_string(v.node));
  const Node& n = nodes_[v.node];
  if (v.index < 0 || v.index >= static_cast<int>(n.outputs.size()))
    throw Error(n.where() + ": has no output " + std::to_string(v.index));
  return n.outputs[v.index];
}

std::optional<int32_t> Graph::find(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  if (it == by_name_.end()) return std::nullopt;
  return it->second;
}

void Graph::set_output(std::string_view name, Value v) {
  type(v);  // validates
  for (auto& o : outputs_)
    if (o.name == name) {
      o.value = v;
      return;
    }
  outputs_.push_back({std::string(name), v});
}

std::optional<Value> Graph::output(std::string_view name) const {
  for (auto& o : outputs_)
    if (o.name == name) return o.value;
  return std::nullopt;
}

void Graph::annotate(int32_t from, Pass pass, int32_t serves) {
  if (serves < -1 || serves >= size()) throw Error("annotate: node " + std::to_string(serves) + " does not exist");
  for (int32_t i = std::max(from, 0); i < size(); ++i) {
    nodes_[i].pass = pass;
    nodes_[i].serves = serves;
  }
}

void Graph::annotate_node(int32_t node, Pass pass, int32_t serves) {
  if (node < 0 || node >= size()) throw Error("annotate: node " + std::to_string(node) + " does not exist");
  if (serves < -1 || serves >= node) throw Error("annotate: node " + std::to_string(serves) + " is not defined before " + nodes_[node].where());
  nodes_[node].pass = pass;
  nodes_[node].serves = serves;
}

std::string_view pass_name(Pass p) {
  switch (p) {
    case Pass::forward: return "forward";
    case Pass::backward: return "backward";
    case Pass::update: return "update";
  }
  return "?";
}

void Graph::add_update(int32_t variable, Value value, std::string_view phase) {
  if (variable < 0 || variable >= size()) throw Error("update of missing node " + std::to_string(variable));
  const Node& var = nodes_[variable];
  if (var.def->kind != OpKind::variable || var.outputs.size() != 1)
    throw Error(var.where() + ": only variables can be updated, this is a '" + var.op + "'");
  const TensorType& t = type(value);
  if (t != var.outputs[0])
    throw Error(var.where() + ": update value " + node(value.node).name + " is " + t.str() +
                ", variable is " + var.outputs[0].str());
  for (auto& u : updates_)
    if (u.variable == variable && u.phase == phase)
      throw Error(var.where() + ": updated twice in phase '" + std::string(phase) + "'");
  updates_.push_back({variable, value, std::string(phase)});
}

void Graph::retain(const std::vector<std::string>& names, std::string_view phase) {
  std::vector<NamedValue> kept;
  for (const std::string& name : names) {
    auto v = output(name);
    if (!v) {
      std::string known;
      for (auto& o : outputs_) known += (known.empty() ? "" : ", ") + o.name;
      throw Error("the graph has no output '" + name + "' (it has: " + (known.empty() ? "none" : known) + ")");
    }
    kept.push_back({name, *v});
  }
  std::vector<Update> updates;
  for (auto& u : updates_)
    if (!phase.empty() && u.phase == phase) updates.push_back(u);
  if (!phase.empty() && updates.empty()) throw Error("the graph has no updates in phase '" + std::string(phase) + "'");
  outputs_ = std::move(kept);
  updates_ = std::move(updates);
}

void Graph::set_data(int32_t id, std::vector<std::byte> bytes) {
  const Node& n = node(id);
  if ((n.def->kind != OpKind::variable && n.def->kind != OpKind::constant) || n.outputs.size() != 1)
    throw Error(n.where() + ": only variables and constants carry data");
  if (static_cast<int64_t>(bytes.size()) != n.outputs[0].bytes())
    throw Error(n.where() + ": data has " + std::to_string(bytes.size()) + " bytes, " +
                n.outputs[0].str() + " needs " + std::to_string(n.outputs[0].bytes()));
  data_[id] = std::move(bytes);
}

const std::vector<std::byte>* Graph::data(int32_t id) const {
  auto it = data_.find(id);
  return it == data_.end() ? nullptr : &it->second;
}

std::vector<int32_t> Graph::nodes_of_kind(OpKind kind) const {
  std::vector<int32_t> ids;
  for (auto& n : nodes_)
    if (n.def->kind == kind) ids.push_back(n.id);
  return ids;
}

std::vector<int32_t> Graph::parameters() const {
  std::vector<int32_t> ids;
  for (auto& n : nodes_)
    if (n.op == "parameter")
      ids.push_back(n.id);
  return ids;
}

void Graph::verify() const {
  std::unordered_map<std::string, int32_t> names;
  for (int32_t i = 0; i < size(); ++i) {
    const Node& n = nodes_[i];
    auto fail = [&](const std::string& msg) { throw Error("verify: " + n.where() + ": " + msg); };
    if (n.id != i) fail("id out of sequence");
    if (!n.def || n.def != registry_->find(n.op)) fail("op is not resolved in this registry");
    if (!names.emplace(n.name, n.id).second) fail("duplicate name");
    if (n.serves < -1 || n.serves >= n.id) fail("serves node " + std::to_string(n.serves) + ", not one defined before it");
    std::vector<TensorType> in;
    for (auto& v : n.inputs) {
      if (v.node < 0 || v.node >= n.id) fail("input refers to a node not defined before it");
      const Node& src = nodes_[v.node];
      if (v.index < 0 || v.index >= static_cast<int>(src.outputs.size())) fail("input refers to a missing output");
      in.push_back(src.outputs[v.index]);
    }
    try {
      check_attrs(*n.def, n.attrs);
      if (n.def->infer(n, in) != n.outputs) fail("output types differ from inference");
    } catch (const Error& e) {
      fail(e.what());
    }
  }
  for (auto& o : outputs_) type(o.value);
  for (auto& u : updates_) {
    if (u.variable < 0 || u.variable >= size()) throw Error("verify: update of missing node " + std::to_string(u.variable));
    const Node& var = nodes_[u.variable];
    if (var.def->kind != OpKind::variable || var.outputs.size() != 1 || type(u.value) != var.outputs[0])
      throw Error("verify: bad update of '" + var.name + "'");
  }
}

Value storage_root(const Graph& g, Value v) {
  while (g.node(v.node).def->view) v = g.node(v.node).inputs[0];
  return v;
}

std::vector<int32_t> needed_nodes(const Graph& g) {
  std::vector<Value> targets;
  for (auto& u : g.updates()) targets.push_back(u.value), targets.push_back(Value{u.variable, 0});
  for (auto& o : g.outputs()) targets.push_back(o.value);
  return needed_nodes(g, targets);
}

std::vector<int32_t> needed_nodes(const Graph& g, std::span<const Value> targets) {
  std::vector<char> need(g.size(), 0);
  for (auto& v : targets) {
    g.type(v);
    need[v.node] = 1;
  }
  for (int32_t id = g.size() - 1; id >= 0; --id) {
    if (!need[id]) continue;
    for (auto& in : g.node(id).inputs) need[in.node] = 1;
  }
  std::vector<int32_t> order;
  for (int32_t id = 0; id < g.size(); ++id)
    if (need[id]) order.push_back(id);
  return order;
}

}  // namespace tessel
