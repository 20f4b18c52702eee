#include "graph/scalar_expr.h"

#include <algorithm>
#include <cmath>
#include <iterator>

#include "graph/error.h"

namespace tessel {

int ScalarExpr::push(ScalarInstr in) {
  code_.push_back(in);
  return static_cast<int>(code_.size()) - 1;
}
int ScalarExpr::arg(int index) { return push({ScalarOp::arg, -1, -1, -1, index, 0}); }
int ScalarExpr::constant(double v) { return push({ScalarOp::constant, -1, -1, -1, 0, v}); }
int ScalarExpr::unary(ScalarOp op, int a) { return push({op, a}); }
int ScalarExpr::binary(ScalarOp op, int a, int b) { return push({op, a, b}); }
int ScalarExpr::select(int c, int a, int b) { return push({ScalarOp::select, c, a, b}); }

int ScalarExpr::num_args() const {
  int n = 0;
  for (auto& i : code_)
    if (i.op == ScalarOp::arg) n = std::max(n, i.index + 1);
  return n;
}

int ScalarExpr::flops() const {
  int n = 0;
  for (auto& i : code_)
    if (i.op != ScalarOp::arg && i.op != ScalarOp::constant) ++n;
  return n;
}

double ScalarExpr::eval(std::span<const double> args) const {
  std::vector<double> r(code_.size());
  for (size_t k = 0; k < code_.size(); ++k) {
    const ScalarInstr& i = code_[k];
    auto A = [&] { return r.at(i.a); };
    auto B = [&] { return r.at(i.b); };
    double v = 0;
    switch (i.op) {
      case ScalarOp::arg: v = args[i.index]; break;
      case ScalarOp::constant: v = i.imm; break;
      case ScalarOp::neg: v = -A(); break;
      case ScalarOp::exp: v = std::exp(A()); break;
      case ScalarOp::log: v = std::log(A()); break;
      case ScalarOp::sqrt: v = std::sqrt(A()); break;
      case ScalarOp::rsqrt: v = 1.0 / std::sqrt(A()); break;
      case ScalarOp::tanh: v = std::tanh(A()); break;
      case ScalarOp::abs: v = std::fabs(A()); break;
      case ScalarOp::add: v = A() + B(); break;
      case ScalarOp::sub: v = A() - B(); break;
      case ScalarOp::mul: v = A() * B(); break;
      case ScalarOp::div: v = A() / B(); break;
      case ScalarOp::max: v = std::max(A(), B()); break;
      case ScalarOp::min: v = std::min(A(), B()); break;
      case ScalarOp::gt: v = A() > B() ? 1.0 : 0.0; break;
      case ScalarOp::ge: v = A() >= B() ? 1.0 : 0.0; break;
      case ScalarOp::eq: v = A() == B() ? 1.0 : 0.0; break;
      case ScalarOp::select: v = A() != 0 ? B() : r.at(i.c); break;
      case ScalarOp::sigmoid: v = 1.0 / (1.0 + std::exp(-A())); break;
    }
    r[k] = v;
  }
  if (r.empty()) throw Error("empty scalar expression");
  return r.back();
}

const char* scalar_op_name(ScalarOp op) {
  static const char* names[] = {"arg", "const", "neg", "exp", "log", "sqrt", "rsqrt", "tanh", "abs", "add",
                                "sub", "mul",   "div", "max", "min", "gt",   "ge",    "eq",   "select", "sigmoid"};
  static_assert(std::size(names) == static_cast<size_t>(ScalarOp::sigmoid) + 1);
  return names[static_cast<int>(op)];
}

std::string ScalarExpr::str() const {
  std::string s;
  for (size_t k = 0; k < code_.size(); ++k) {
    const ScalarInstr& i = code_[k];
    s += "%" + std::to_string(k) + " = " + scalar_op_name(i.op);
    if (i.op == ScalarOp::arg) s += " " + std::to_string(i.index);
    else if (i.op == ScalarOp::constant) s += " " + std::to_string(i.imm);
    else {
      for (int o : {i.a, i.b, i.c})
        if (o >= 0) s += " %" + std::to_string(o);
    }
    s += "; ";
  }
  return s;
}

}  // namespace tessel
