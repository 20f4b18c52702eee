// The sharding algebra: a logical device mesh with named axes; per tensor and axis a
// placement S(dim), R or P; propagation of placements through ops by their sharding rules;
// resharding between placements as collectives.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "graph/graph.h"
#include "planner/comm_cost.h"

namespace tessel::planner {

// Devices as an n-dimensional grid with named axes, row-major: the last axis varies
// fastest over device ranks (so a trailing "tp" axis of 8 stays inside an 8-GPU node).
struct Mesh {
  std::vector<std::string> names;
  std::vector<int64_t> sizes;

  Mesh() = default;
  Mesh(std::vector<std::string> n, std::vector<int64_t> s);  // throws on bad sizes / duplicate names
  int64_t size() const;
  int rank_of_axes() const { return static_cast<int>(sizes.size()); }
  int axis(std::string_view name) const;  // -1 when absent
  std::vector<int64_t> coords(int64_t rank) const;
  int64_t rank(std::span<const int64_t> coords) const;
  // The ranks that differ from `rank` only along `axis`, in axis order (rank included).
  std::vector<int64_t> group(int64_t rank, int axis) const;
  std::string str() const;  // "dp=8 x tp=8"
  bool operator==(const Mesh&) const = default;
};

struct Placement {
  enum class Kind : uint8_t { replicate, shard, partial };
  Kind kind = Kind::replicate;
  int dim = -1;                               // shard: the split dim
  FactorReduce reduce = FactorReduce::none;   // partial: how the parts combine

  static Placement R() { return {}; }
  static Placement S(int d) { return {Kind::shard, d, FactorReduce::none}; }
  static Placement P(FactorReduce r = FactorReduce::sum) { return {Kind::partial, -1, r}; }
  bool is_shard() const { return kind == Kind::shard; }
  bool is_partial() const { return kind == Kind::partial; }
  std::string str() const;  // "R", "S(1)", "P(sum)"
  bool operator==(const Placement&) const = default;
};

// One placement per mesh axis. Where several axes split one dim their blocks nest, the
// last axis outermost: on a (dp, tp) mesh, tp picks a tensor-parallel piece and dp a part of
// that piece (what ZeRO stores of a tensor-parallel shard). shard_offsets says where each
// device's block starts; reshard keeps the nesting.
// Held inline: meshes have few axes (microbatch, dp, tp), and planning copies placements of
// every value many times.
class Sharding {
 public:
  static constexpr size_t kMaxAxes = 6;
  Sharding() = default;
  explicit Sharding(size_t n, Placement p = {}) : n_(checked(n)) { std::fill(p_.begin(), p_.begin() + n, p); }
  Sharding(std::initializer_list<Placement> l) : n_(checked(l.size())) { std::copy(l.begin(), l.end(), p_.begin()); }
  template <class It>
  Sharding(It b, It e) : n_(checked(static_cast<size_t>(std::distance(b, e)))) {
    std::copy(b, e, p_.begin());
  }
  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  Placement& operator[](size_t i) { return p_[i]; }
  const Placement& operator[](size_t i) const { return p_[i]; }
  Placement* begin() { return p_.data(); }
  Placement* end() { return p_.data() + n_; }
  const Placement* begin() const { return p_.data(); }
  const Placement* end() const { return p_.data() + n_; }
  void push_back(Placement p) {
    checked(n_ + size_t{1});
    p_[n_++] = p;
  }
  bool operator==(const Sharding& o) const { return n_ == o.n_ && std::equal(begin(), end(), o.begin()); }

 private:
  static uint8_t checked(size_t n);  // throws for more than kMaxAxes
  std::array<Placement, kMaxAxes> p_{};
  uint8_t n_ = 0;
};
std::string sharding_str(const Sharding& s);          // "[S(0), R]"
Sharding replicated(const Mesh& m);
// The shape each device holds; throws naming the dim when a split does not divide evenly.
Shape local_shape(std::span<const int64_t> global, const Sharding& s, const Mesh& m);

// Changing one axis's placement of a tensor.
struct ReshardStep {
  std::optional<Collective> op;  // none: each device keeps its slice (no communication)
  int axis;
  Placement from, to;
  double bytes;  // NCCL convention for the collective (see comm_cost.h), per device
  bool is_collective() const { return op.has_value(); }
  std::string str(const Mesh& m) const;  // "all-reduce over tp (P(sum) -> R), 4.2 MB"
};
std::string_view reshard_name(const ReshardStep& s);  // "all-reduce", "slice"

// The steps that turn placement `from` into `to` for a tensor of `type`, axis by axis.
// Throws for impossible changes (R or S to P).
std::vector<ReshardStep> reshard(const TensorType& type, const Sharding& from, const Sharding& to,
                                 const Mesh& m);

// How a node runs on the mesh: what each input must be resharded to first, and what its
// outputs then are. Inputs already placed right need no step.
struct NodePlacement {
  std::vector<Sharding> inputs;   // required input placements
  std::vector<Sharding> outputs;
};

// Preferences that a plan adds to propagation.
struct PropagationHints {
  // Sequence parallelism (Megatron): on this mesh axis, an op with a [batch, seq, ...]
  // output that would resolve a partial sum (the row-parallel projection's output entering a
  // bias add, dropout or residual add; the vocabulary-parallel embedding) takes it as a
  // reduce-scatter along the sequence instead of an all-reduce, so the norm, dropout and
  // residual regions after it run on 1/n of the sequence; the next column-parallel matmul
  // then all-gathers its input. -1: none.
  int sequence_axis = -1;
  // On this mesh axis a partial sum passes through every op of the forward and backward
  // passes linear in it (the scaling of a mean, a negation) instead of being resolved before
  // it: the microbatch axis, whose sums the runtime forms before the optimizer runs, not a
  // collective in the middle of a pass. -1: none.
  int deferred_sum_axis = -1;
  // Per node (or empty): values whose placement later passes keep (read by nodes that
  // repeat others' placements).
  std::span<const char> keep;
  // A source stored in one placement that a consumer reads in another (ZeRO-3: a parameter
  // stored split over dp, gathered whole for the forward and backward that use it, read as
  // stored by its optimizer update). Returns the placement `consumer` reads `source` in;
  // nullopt: as stored. The change is one reshard per placement, shared by its consumers.
  std::function<std::optional<Sharding>(const Node& source, const Node& consumer)> read_as;
};

// Chooses, per mesh axis, the factor of the node's rule to split (the one already split on
// the most input bytes, if it divides evenly), so that the fewest bytes move. Partial
// inputs pass through additive ops whose inputs are all partial; otherwise they are
// resolved before the op.
// `weight` (optional, per input) scales how much keeping an input in place counts:
// propagate_graph gives parameters a large weight, so activations move to meet the
// weights' split (Megatron) and not the other way round.
NodePlacement propagate(const Graph& g, const Node& n, std::span<const Sharding> in, const Mesh& m,
                        std::span<const double> weight = {}, const PropagationHints& hints = {});

// Placements of a whole graph (or of the nodes listed, in order): sources take the
// placement `source` gives them (replicated when it gives none), every other node the
// result of propagate(). Where a consumer needs another placement than its producer gives,
// the value is resharded once per target placement, however many consumers share it; an
// update whose value is placed differently from its variable reshards it too.
struct GraphPlacement {
  std::vector<std::vector<Sharding>> values;  // per node, per output (empty: not visited)
  struct Reshard {
    Value value;
    Sharding to;
    std::vector<ReshardStep> steps;
    std::vector<std::pair<int32_t, int>> consumers;  // (node, input); input -1: an update
  };
  std::vector<Reshard> reshards;
  // Per node (or empty): the node whose placements it takes (propagate_graph's same_as).
  std::vector<int32_t> alias;
  // Placements of nodes this one did not place (not owned; may be null).
  const GraphPlacement* base = nullptr;
  bool has(Value v) const {
    const int32_t n = alias.empty() || alias[static_cast<size_t>(v.node)] < 0 ? v.node : alias[static_cast<size_t>(v.node)];
    return !values.at(static_cast<size_t>(n)).empty() || (base && base->has(v));
  }
  const Sharding& at(Value v) const {
    const int32_t n = alias.empty() || alias[static_cast<size_t>(v.node)] < 0 ? v.node : alias[static_cast<size_t>(v.node)];
    if (base && values.at(static_cast<size_t>(n)).empty()) return base->at(v);
    return values.at(static_cast<size_t>(n)).at(static_cast<size_t>(v.index));
  }
};
using SourcePlacement = std::function<std::optional<Sharding>(const Node&)>;
// `same_as` (optional, per node): a node that takes the placements of another (the
// corresponding node of an identical layer, placed before it) instead of being propagated:
// at() answers for it, nothing is resharded for it, and it need not be in `nodes`.
// `base` (optional): where the placements of nodes outside `nodes` that these read come from.
// `reuse` (optional): a placement whose storage the result takes over (its contents are lost).
GraphPlacement propagate_graph(const Graph& g, const Mesh& m, const SourcePlacement& source,
                               std::span<const int32_t> nodes = {}, const PropagationHints& hints = {},
                               std::span<const int32_t> same_as = {}, const GraphPlacement* base = nullptr,
                               GraphPlacement* reuse = nullptr);

}  // namespace tessel::planner
