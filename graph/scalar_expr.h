// The scalar expression of an elementwise op: what one output element is, as a function of
// the corresponding input elements. Kernels are hand-written; this is the data the fusion
// pass lowers to LLVM, and a test keeps it in step with each op's reference kernel.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace tessel {

enum class ScalarOp : uint8_t {
  arg,       // input #index
  constant,  // imm
  neg, exp, log, sqrt, rsqrt, tanh, abs,
  add, sub, mul, div, max, min,
  gt, ge, eq,  // 1.0 when true, else 0.0
  select,      // a != 0 ? b : c
  sigmoid,     // 1 / (1 + e^-a)
};

// The instruction's name as ScalarExpr::str() and fused kernel listings print it.
const char* scalar_op_name(ScalarOp op);

struct ScalarInstr {
  ScalarOp op;
  int32_t a = -1, b = -1, c = -1;  // operands: indices of earlier instructions
  int32_t index = 0;               // for arg
  double imm = 0;                  // for constant
};

// SSA form: each instruction may use only earlier ones; the last one is the result.
class ScalarExpr {
 public:
  int arg(int index);
  int constant(double v);
  int unary(ScalarOp op, int a);
  int binary(ScalarOp op, int a, int b);
  int select(int cond, int a, int b);

  const std::vector<ScalarInstr>& code() const { return code_; }
  bool empty() const { return code_.empty(); }
  int num_args() const;
  // Arithmetic operations per element, for the cost model.
  int flops() const;
  // Interprets the expression; slow, for tests and constant folding only.
  double eval(std::span<const double> args) const;
  std::string str() const;

 private:
  int push(ScalarInstr in);
  std::vector<ScalarInstr> code_;
};

}  // namespace tessel
