// A typed builder over Graph::add: one method per op and per composition. Gradient rules
// and the DSL both build nodes through it, so a composition (softmax, layer norm, ...) is
// written once and gets gradients, costs and fusion from its primitives.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "graph/graph.h"

namespace tessel::ops {

enum class Init { zeros, ones, constant, normal, uniform };

class Emitter {
 public:
  // Nodes get `origin` and names "<scope>/<op>"; the graph is not owned. When origin.scope
  // equals `scope` (the DSL's emitters), with_scope extends both.
  Emitter(Graph& g, Origin origin, std::string scope = {})
      : g_(&g), origin_(std::move(origin)), scope_(std::move(scope)) {}

  Graph& graph() const { return *g_; }
  const Origin& origin() const { return origin_; }
  Emitter with_scope(std::string_view sub) const;
  const TensorType& type(Value v) const { return g_->type(v); }
  const Shape& shape(Value v) const { return g_->type(v).shape; }

  Value op(std::string_view op, std::vector<Value> in, Attrs attrs = {},
           std::string_view name = {}) const;

  // Sources.
  Value input(std::string_view name, DType dt, Shape shape, std::string_view role = {}, int64_t batch_dim = 0) const;
  Value parameter(std::string_view name, Shape shape, Init init, double scale = 0,
                  DType dt = DType::f32) const;
  Value state(std::string_view name, Shape shape, DType dt = DType::f32, double value = 0) const;
  Value constant(double v, DType dt, Shape shape = {}) const;
  Value scalar_like(Value like, double v) const { return constant(v, type(like).dtype); }
  Value zeros_like(Value like) const { return constant(0, type(like).dtype, shape(like)); }

  // Elementwise, NumPy broadcasting for binary ops.
  Value neg(Value x) const { return op("neg", {x}); }
  Value exp(Value x) const { return op("exp", {x}); }
  Value log(Value x) const { return op("log", {x}); }
  Value sqrt(Value x) const { return op("sqrt", {x}); }
  Value rsqrt(Value x) const { return op("rsqrt", {x}); }
  Value tanh(Value x) const { return op("tanh", {x}); }
  Value relu(Value x) const { return op("relu", {x}); }
  Value gelu(Value x) const { return op("gelu", {x}); }
  Value sigmoid(Value x) const { return op("sigmoid", {x}); }
  Value abs(Value x) const { return op("abs", {x}); }
  Value add(Value a, Value b) const { return op("add", {a, b}); }
  Value sub(Value a, Value b) const { return op("sub", {a, b}); }
  Value mul(Value a, Value b) const { return op("mul", {a, b}); }
  Value div(Value a, Value b) const { return op("div", {a, b}); }
  Value maximum(Value a, Value b) const { return op("maximum", {a, b}); }
  Value minimum(Value a, Value b) const { return op("minimum", {a, b}); }
  Value greater(Value a, Value b) const { return op("greater", {a, b}); }
  Value equal(Value a, Value b) const { return op("equal", {a, b}); }
  Value where(Value cond, Value a, Value b) const { return op("where", {cond, a, b}); }
  Value cast(Value x, DType dt) const;
  Value stop_gradient(Value x) const { return op("stop_gradient", {x}); }
  Value add(Value a, double b) const { return add(a, scalar_like(a, b)); }
  Value mul(Value a, double b) const { return mul(a, scalar_like(a, b)); }
  Value square(Value x) const { return mul(x, x); }

  // Reductions over `axes` (negative counts from the end; empty: all axes).
  Value sum(Value x, std::vector<int64_t> axes = {}, bool keepdims = false) const;
  Value max(Value x, std::vector<int64_t> axes = {}, bool keepdims = false) const;
  Value mean(Value x, std::vector<int64_t> axes = {}, bool keepdims = false) const;

  // Shapes.
  Value reshape(Value x, Shape shape) const;  // one dim may be -1
  Value transpose(Value x, std::vector<int64_t> perm) const;
  Value concat(std::vector<Value> xs, int64_t axis) const;
  // Step-1 slice of [starts, ends) along `axes`.
  Value slice(Value x, std::vector<int64_t> axes, std::vector<int64_t> starts,
              std::vector<int64_t> ends) const;
  Value pad(Value x, std::vector<int64_t> before, std::vector<int64_t> after) const;
  Value broadcast_to(Value x, Shape shape) const;
  // Sums x down to `shape` (the inverse of broadcasting); identity when shapes match.
  Value sum_to(Value x, const Shape& shape) const;

  // a[..., M, K] @ b[..., K, N] (after optional transposes of the last two dims); batch
  // dims broadcast.
  Value matmul(Value a, Value b, bool transpose_a = false, bool transpose_b = false) const;

  // Rows of table[V, ...] picked by integer indices: out = idx.shape + table.shape[1:].
  Value gather(Value table, Value idx) const { return op("gather", {table, idx}); }
  Value scatter_add(Value idx, Value updates, int64_t size) const;
  Value one_hot(Value labels, int64_t depth, DType dt = DType::f32) const;
  // Additive mask [rows, cols]: 0 where col <= row + (cols - rows), -inf elsewhere.
  Value causal_mask(int64_t rows, int64_t cols, DType dt = DType::f32) const;
  // Scaled keep-mask: 1/(1-p) with probability 1-p, else 0, drawn from (seed, counter).
  Value dropout_mask(Value counter, Shape shape, double p, uint64_t seed,
                     DType dt = DType::f32) const;

  // Compositions.
  Value softmax(Value x, int64_t axis = -1) const;
  Value log_softmax(Value x, int64_t axis = -1) const;
  // Mean over rows of -log softmax(logits)[label]; logits [..., C], labels int [...].
  Value cross_entropy(Value logits, Value labels) const;
  Value layer_norm(Value x, Value gamma, Value beta, double eps = 1e-5) const;
  Value dropout(Value x, Value counter, double p, uint64_t seed) const;

 private:
  Graph* g_;  // not owned
  Origin origin_;
  std::string scope_;
};

}  // namespace tessel::ops
