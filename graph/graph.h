// The dataflow graph: nodes in topological (insertion) order, named outputs, and the
// variable updates a training step performs.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "graph/attr.h"
#include "graph/op_def.h"
#include "graph/origin.h"
#include "graph/types.h"

namespace tessel {

// The part of a training step a node belongs to, recorded by the pass that made it.
enum class Pass : uint8_t {
  forward,   // the model (and anything not marked)
  backward,  // made by autodiff
  update,    // made by the optimizer
};
std::string_view pass_name(Pass p);

struct Node {
  int32_t id = -1;
  std::string op;
  std::string name;  // unique within the graph
  Attrs attrs;
  std::vector<Value> inputs;
  std::vector<TensorType> outputs;
  Origin origin;
  Pass pass = Pass::forward;
  // backward: the forward node whose gradient rule made it (or whose output's gradients it
  // sums); update: the parameter it updates; -1: none (the loss seed, shared optimizer
  // values such as the step counter or the gradient norm).
  int32_t serves = -1;
  const OpDef* def = nullptr;  // resolved from the graph's registry; not owned

  Value out(int i = 0) const { return Value{id, i}; }
  // "model.cc:42: matmul 'fc2'" — the prefix of every error about this node.
  std::string where() const;
};

// After a step of `phase`, `variable` takes the value `value`.
struct Update {
  int32_t variable = -1;
  Value value;
  std::string phase;
};

struct NamedValue {
  std::string name;
  Value value;
};

// Adding nodes is not thread-safe; a finished graph may be read from many threads.
class Graph {
 public:
  explicit Graph(const OpRegistry& registry) : registry_(&registry) {}
  Graph(const Graph&) = default;
  Graph& operator=(const Graph&) = default;
  Graph(Graph&&) = default;
  Graph& operator=(Graph&&) = default;

  // Adds a node after checking its attributes and inferring its output types. Throws
  // tessel::Error naming origin, op, name and input shapes on any failure. An empty name
  // gets a generated one; a taken name gets a numeric suffix.
  int32_t add_node(std::string_view op, std::vector<Value> inputs, Attrs attrs = {},
                   std::string_view name = {}, Origin origin = {});
  // The same for a single-output op.
  Value add(std::string_view op, std::vector<Value> inputs, Attrs attrs = {},
            std::string_view name = {}, Origin origin = {}) {
    return Value{add_node(op, std::move(inputs), std::move(attrs), name, std::move(origin)), 0};
  }
  // Adds a node whose output types are already known (loaders); checks them against the
  // op's inference and reports a mismatch.
  int32_t add_node_typed(std::string_view op, std::vector<Value> inputs, Attrs attrs,
                         std::string_view name, Origin origin,
                         std::vector<TensorType> declared);

  const Node& node(int32_t id) const { return nodes_.at(static_cast<size_t>(id)); }
  const std::deque<Node>& nodes() const { return nodes_; }
  int32_t size() const { return static_cast<int32_t>(nodes_.size()); }
  const TensorType& type(Value v) const;
  const OpRegistry& registry() const { return *registry_; }
  std::optional<int32_t> find(std::string_view name) const;

  // Names a value as an output; naming it again replaces the earlier value.
  void set_output(std::string_view name, Value v);
  std::optional<Value> output(std::string_view name) const;
  const std::vector<NamedValue>& outputs() const { return outputs_; }

  void add_update(int32_t variable, Value value, std::string_view phase);
  // Keeps only the named outputs (in that order) and the updates of `phase` ("": none), so
  // that what runs computes only those. Throws naming an output the graph lacks, or a
  // phase with no updates.
  void retain(const std::vector<std::string>& outputs, std::string_view phase);

  // Marks nodes [from, size()) as made by `pass` for `serves` (see Node).
  void annotate(int32_t from, Pass pass, int32_t serves);
  void annotate_node(int32_t node, Pass pass, int32_t serves);
  const std::vector<Update>& updates() const { return updates_; }

  // Stored tensor data (parameter values, constants), raw little-endian bytes whose size
  // matches the node's output type.
  void set_data(int32_t node, std::vector<std::byte> bytes);
  const std::vector<std::byte>* data(int32_t node) const;
  const std::unordered_map<int32_t, std::vector<std::byte>>& all_data() const { return data_; }
  void clear_data() { data_.clear(); }

  // Ids of nodes of the given kind, in order.
  std::vector<int32_t> nodes_of_kind(OpKind kind) const;
  std::vector<int32_t> parameters() const;  // trainable variables (op 'parameter')

  // Checks every invariant (ordering, types, attributes, updates); throws on the first
  // violation, naming the node. Run after every pass.
  void verify() const;

 private:
  int32_t append(std::string_view op, std::vector<Value> inputs, Attrs attrs,
                 std::string_view name, Origin origin, const std::vector<TensorType>* declared);
  std::string unique_name(std::string_view want, std::string_view op);

  const OpRegistry* registry_;  // not owned; outlives the graph
  std::deque<Node> nodes_;      // deque: references to nodes stay valid while adding
  std::unordered_map<std::string, int32_t> by_name_;
  std::vector<NamedValue> outputs_;
  std::vector<Update> updates_;
  std::unordered_map<int32_t, std::vector<std::byte>> data_;
  std::unordered_map<std::string, int64_t> name_counters_;
};

// The value whose storage v shares: v itself, or what its chain of views reads.
Value storage_root(const Graph& g, Value v);

// Nodes needed to compute `targets` (and nothing else), in topological order.
std::vector<int32_t> needed_nodes(const Graph& g, std::span<const Value> targets);
// What the graph's outputs and updates (their values and variables) need, in order.
std::vector<int32_t> needed_nodes(const Graph& g);

}  // namespace tessel
