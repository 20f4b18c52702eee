// The C++ DSL: a Model owns a graph; Tensors are handles to its values. Every call records
// the user's source line, so errors and plans point back at the model code:
//
//   Model m;
//   Tensor x = m.input("x", {256, 784});
//   nn::Linear fc1(m, "fc1", 784, 1024);
//   Tensor y = relu(fc1(x));          // a shape error here names this file and line
//
// Building a graph allocates no tensor memory.
#pragma once

#include <source_location>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "graph/graph.h"
#include "ops/emit.h"

namespace tessel {

class Model;
using SourceLoc = std::source_location;

// Carries the call site of an operator expression: the default argument is evaluated
// where the implicit conversion happens, which is the user's expression.
template <class T>
struct At {
  T v;
  SourceLoc loc;
  At(const T& value, SourceLoc l = SourceLoc::current()) : v(value), loc(l) {}  // NOLINT
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(Model* m, Value v) : model_(m), value_(v) {}

  bool valid() const { return model_ && value_.valid(); }
  Value value() const { return value_; }
  Model& model() const { return *model_; }
  const TensorType& type() const;
  const Shape& shape() const { return type().shape; }
  DType dtype() const { return type().dtype; }
  int rank() const { return type().rank(); }
  int64_t dim(int i) const;
  const Node& node() const;

 private:
  Model* model_ = nullptr;  // not owned
  Value value_;
};

class Model {
 public:
  Model();
  explicit Model(const OpRegistry& registry);
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  Model(Model&&) = delete;  // Tensors point at their Model

  Graph& graph() { return graph_; }
  const Graph& graph() const { return graph_; }

  // Data fed each step. Dim `batch_dim` holds the samples (-1: none), which the planner splits
  // into microbatches and over data-parallel replicas; `role` says what a dataset feeds it
  // ("data", "labels", "tokens", "targets"; empty: bound by name).
  Tensor input(std::string_view name, Shape shape, DType dt = DType::f32, std::string_view role = {},
               int64_t batch_dim = 0, SourceLoc loc = SourceLoc::current());
  Tensor parameter(std::string_view name, Shape shape, ops::Init init, double scale = 0,
                   SourceLoc loc = SourceLoc::current());
  Tensor constant(double v, Shape shape = {}, DType dt = DType::f32, SourceLoc loc = SourceLoc::current());
  // A constant holding `values` (row-major), stored in the graph: tables such as rotary
  // angles. Floating dtypes only.
  Tensor constant(std::string_view name, Shape shape, std::span<const double> values, DType dt,
                  SourceLoc loc = SourceLoc::current());
  void output(std::string_view name, const Tensor& t) { graph_.set_output(name, t.value()); }

  // Names created inside a scope are prefixed "<scope>/".
  class Scope {
   public:
    // absolute: the scope becomes `name` instead of nesting under the current one.
    Scope(Model& m, std::string_view name, bool absolute = false);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    Model& m_;
    std::string saved_;
  };
  // The full name of `name` created in the current scope.
  std::string scoped(std::string_view name) const {
    return scope_.empty() ? std::string(name) : scope_ + "/" + std::string(name);
  }
  const std::string& current_scope() const { return scope_; }

  // Training mode turns dropout on; set it before building.
  bool training() const { return training_; }
  void set_training(bool on) { training_ = on; }
  // The floating dtype of the parameters and tables that layers create (f32; f64 for
  // gradient checks); set it before building.
  DType float_dtype() const { return float_dtype_; }
  void set_float_dtype(DType dt);
  // The per-forward-pass counter that seeds dropout masks (created on first use).
  Tensor dropout_counter();

  ops::Emitter emit(SourceLoc loc) {
    Origin o = Origin::at(loc);
    o.scope = scope_;
    return ops::Emitter(graph_, std::move(o), scope_);
  }
  Tensor wrap(Value v) { return Tensor(this, v); }

 private:
  Graph graph_;
  std::string scope_;
  bool training_ = true;
  DType float_dtype_ = DType::f32;
  Value dropout_counter_;
};

// ---- operators ------------------------------------------------------------------------
Tensor operator+(const Tensor& a, At<Tensor> b);
Tensor operator-(const Tensor& a, At<Tensor> b);
Tensor operator*(const Tensor& a, At<Tensor> b);
Tensor operator/(const Tensor& a, At<Tensor> b);
Tensor operator+(const Tensor& a, At<double> b);
Tensor operator-(const Tensor& a, At<double> b);
Tensor operator*(const Tensor& a, At<double> b);
Tensor operator/(const Tensor& a, At<double> b);
Tensor operator+(At<double> a, const Tensor& b);
Tensor operator-(At<double> a, const Tensor& b);
Tensor operator*(At<double> a, const Tensor& b);
Tensor operator/(At<double> a, const Tensor& b);
Tensor operator-(const Tensor& a);

// ---- functions ------------------------------------------------------------------------
#define TESSEL_UNARY(fn) Tensor fn(const Tensor& x, SourceLoc loc = SourceLoc::current());
TESSEL_UNARY(exp) TESSEL_UNARY(log) TESSEL_UNARY(sqrt) TESSEL_UNARY(rsqrt) TESSEL_UNARY(tanh)
TESSEL_UNARY(relu) TESSEL_UNARY(gelu) TESSEL_UNARY(sigmoid) TESSEL_UNARY(abs)
TESSEL_UNARY(stop_gradient)
#undef TESSEL_UNARY
Tensor silu(const Tensor& x, SourceLoc loc = SourceLoc::current());  // x * sigmoid(x)
Tensor maximum(const Tensor& a, const Tensor& b, SourceLoc loc = SourceLoc::current());
Tensor minimum(const Tensor& a, const Tensor& b, SourceLoc loc = SourceLoc::current());
Tensor greater(const Tensor& a, const Tensor& b, SourceLoc loc = SourceLoc::current());
Tensor where(const Tensor& c, const Tensor& a, const Tensor& b, SourceLoc loc = SourceLoc::current());
Tensor cast(const Tensor& x, DType dt, SourceLoc loc = SourceLoc::current());
Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_a = false, bool transpose_b = false,
              SourceLoc loc = SourceLoc::current());
Tensor sum(const Tensor& x, std::vector<int64_t> axes = {}, bool keepdims = false, SourceLoc loc = SourceLoc::current());
Tensor mean(const Tensor& x, std::vector<int64_t> axes = {}, bool keepdims = false, SourceLoc loc = SourceLoc::current());
Tensor max(const Tensor& x, std::vector<int64_t> axes = {}, bool keepdims = false, SourceLoc loc = SourceLoc::current());
Tensor reshape(const Tensor& x, Shape shape, SourceLoc loc = SourceLoc::current());
Tensor transpose(const Tensor& x, std::vector<int64_t> perm, SourceLoc loc = SourceLoc::current());
Tensor broadcast_to(const Tensor& x, Shape shape, SourceLoc loc = SourceLoc::current());
Tensor concat(const std::vector<Tensor>& xs, int64_t axis, SourceLoc loc = SourceLoc::current());
Tensor slice(const Tensor& x, int64_t axis, int64_t start, int64_t end, SourceLoc loc = SourceLoc::current());
Tensor gather(const Tensor& table, const Tensor& idx, SourceLoc loc = SourceLoc::current());
Tensor softmax(const Tensor& x, int64_t axis = -1, SourceLoc loc = SourceLoc::current());
Tensor log_softmax(const Tensor& x, int64_t axis = -1, SourceLoc loc = SourceLoc::current());
Tensor dropout(const Tensor& x, double p, SourceLoc loc = SourceLoc::current());
// Mean cross-entropy of logits [..., C] against integer labels [...].
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, SourceLoc loc = SourceLoc::current());
Tensor mse_loss(const Tensor& pred, const Tensor& target, SourceLoc loc = SourceLoc::current());

}  // namespace tessel
