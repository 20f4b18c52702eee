// Collectives as ops: the planner's partitioner inserts them into per-rank programs and the
// multi-device runtime executes them with a communicator. A group is named by the global
// ranks it spans, in order, so a program says exactly whom it talks to. The reference
// kernels handle a group of one (identity); anything larger needs the runtime.
#include <cstring>

#include "ops/defs.h"

namespace tessel::ops {

namespace {

int64_t group_size(const Node& n) {
  const auto& r = n.attrs.get_i64s("ranks");
  if (r.empty()) throw Error("a collective needs at least one rank");
  for (size_t i = 0; i < r.size(); ++i) {
    if (r[i] < 0) throw Error("negative rank " + std::to_string(r[i]));
    for (size_t j = 0; j < i; ++j)
      if (r[i] == r[j]) throw Error("rank " + std::to_string(r[i]) + " appears twice in the group");
  }
  return static_cast<int64_t>(r.size());
}

void check_reduce(const Node& n) {
  const std::string& r = n.attrs.get_str_or("reduce", "sum");
  if (r != "sum" && r != "max") throw Error("unknown reduction '" + r + "' (sum, max)");
}

std::vector<TensorType> infer_all_reduce(const Node& n, std::span<const TensorType> in) {
  group_size(n);
  check_reduce(n);
  require_numeric(in[0], "the input");
  return {in[0]};
}

std::vector<TensorType> infer_gather_scatter(const Node& n, std::span<const TensorType> in, bool gather) {
  const int64_t g = group_size(n);
  TensorType t = in[0];
  const int d = normalize_axis(n.attrs.get_i64("dim"), t.rank());
  if (gather) {
    if (t.shape[d] > kMaxElements / g) throw Error("gathered dim too large");
    t.shape[d] *= g;
  } else {
    check_reduce(n);
    require_numeric(t, "the input");
    if (t.shape[d] % g != 0)
      throw Error("dim " + std::to_string(d) + " of " + t.str() + " does not split over " + std::to_string(g) + " ranks");
    t.shape[d] /= g;
  }
  return {t};
}

std::vector<TensorType> infer_all_gather(const Node& n, std::span<const TensorType> in) {
  return infer_gather_scatter(n, in, true);
}
std::vector<TensorType> infer_reduce_scatter(const Node& n, std::span<const TensorType> in) {
  return infer_gather_scatter(n, in, false);
}

std::vector<TensorType> infer_all_to_all(const Node& n, std::span<const TensorType> in) {
  const int64_t g = group_size(n);
  TensorType t = in[0];
  const int s = normalize_axis(n.attrs.get_i64("split_dim"), t.rank());
  const int c = normalize_axis(n.attrs.get_i64("concat_dim"), t.rank());
  if (t.shape[s] % g != 0)
    throw Error("split dim " + std::to_string(s) + " of " + t.str() + " does not split over " + std::to_string(g) + " ranks");
  t.shape[s] /= g;
  t.shape[c] *= g;
  return {t};
}

std::vector<TensorType> infer_broadcast(const Node& n, std::span<const TensorType> in) {
  const int64_t g = group_size(n);
  const int64_t root = n.attrs.get_i64("root");
  if (root < 0 || root >= g) throw Error("root " + std::to_string(root) + " is not in a group of " + std::to_string(g));
  return {in[0]};
}

std::vector<TensorType> infer_send(const Node& n, std::span<const TensorType>) {
  if (n.attrs.get_i64("peer") < 0) throw Error("negative peer");
  return {TensorType{DType::boolean, {}}};  // a token: sends run because the program asks for it
}

std::vector<TensorType> infer_recv(const Node& n, std::span<const TensorType>) {
  if (n.attrs.get_i64("peer") < 0) throw Error("negative peer");
  return {TensorType{attr_dtype(n), attr_shape(n)}};
}

// A group of one: the collective is the identity (or a token).
void local_kernel(const Node& n, std::span<const TensorRef> in, std::span<const TensorRef> out, const KernelCtx& ctx) {
  if (n.attrs.get_i64s("ranks").size() == 1) {
    copy_kernel(n, in, out, ctx);
    return;
  }
  throw Error(n.where() + ": a collective over " + std::to_string(n.attrs.get_i64s("ranks").size()) +
              " ranks needs a communicator: run this program with the multi-device runtime");
}

void p2p_kernel(const Node& n, std::span<const TensorRef>, std::span<const TensorRef>, const KernelCtx&) {
  throw Error(n.where() + ": point-to-point transfer with rank " + std::to_string(n.attrs.get_i64("peer")) +
              " needs a communicator: run this program with the multi-device runtime");
}

Cost comm_cost(const Node& n, std::span<const TensorType> in) {
  Cost c = streaming_cost(n, in, 0);
  if (n.def->collective == Collective::all_reduce || n.def->collective == Collective::reduce_scatter)
    c.flops = in.empty() ? 0 : static_cast<double>(in[0].numel());
  return c;
}

// The op of collective c, named after it (send_recv: send or recv, named by `name`).
OpDef collective(Collective c, std::string name, int inputs, InferFn infer, KernelFn k, std::vector<AttrSpec> attrs,
                 std::string doc) {
  OpDef d;
  d.name = name.empty() ? std::string(collective_name(c)) : std::move(name);
  d.collective = c;
  d.min_inputs = d.max_inputs = inputs;
  d.attrs = std::move(attrs);
  d.infer = infer;
  d.kernel = k;
  d.cost = comm_cost;
  d.sharding = inputs ? rule_identity : rule_source;
  d.doc = std::move(doc);
  return d;
}

}  // namespace

void register_collective_ops(OpRegistry& r) {
  const AttrSpec ranks = attr("ranks", AttrType::i64s);
  const AttrSpec reduce = attr("reduce", AttrType::string, false);
  const AttrSpec group = attr("group", AttrType::string, false);  // mesh axis, for reports
  r.add(collective(Collective::all_reduce, {}, 1, infer_all_reduce, local_kernel, {ranks, reduce, group},
                   "sum (or max) of the input over the ranks; every rank gets the result"));
  r.add(collective(Collective::reduce_scatter, {}, 1, infer_reduce_scatter, local_kernel,
                   {ranks, reduce, group, attr("dim", AttrType::i64)},
                   "reduce over the ranks, rank i keeps slice i along dim"));
  r.add(collective(Collective::all_gather, {}, 1, infer_all_gather, local_kernel, {ranks, group, attr("dim", AttrType::i64)},
                   "concatenate every rank's input along dim"));
  r.add(collective(Collective::all_to_all, {}, 1, infer_all_to_all, local_kernel,
                   {ranks, group, attr("split_dim", AttrType::i64), attr("concat_dim", AttrType::i64)},
                   "split along split_dim, exchange, concatenate along concat_dim"));
  r.add(collective(Collective::broadcast, {}, 1, infer_broadcast, local_kernel, {ranks, group, attr("root", AttrType::i64)},
                   "every rank gets the root's input"));
  r.add(collective(Collective::send_recv, "send", 1, infer_send, p2p_kernel, {attr("peer", AttrType::i64), attr("tag", AttrType::i64)},
                   "send the input to rank peer; outputs a token"));
  r.add(collective(Collective::send_recv, "recv", 0, infer_recv, p2p_kernel,
                   {attr("peer", AttrType::i64), attr("tag", AttrType::i64), attr("dtype", AttrType::string),
                    attr("shape", AttrType::i64s)},
                   "receive a tensor of the given type from rank peer"));
}

}  // namespace tessel::ops
