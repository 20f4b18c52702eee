// A fused kernel: what the fusion pass (runtime/fusion.h) makes of a chain of elementwise
// ops, broadcasts and the row reductions that end them, as one node of op "fused". The same
// description is lowered for the CPU (runtime/cpu_jit.h) and for NVIDIA GPUs (PTX), and
// interpreted by the op's reference kernel.
//
// The kernel's domain is a matrix [rows, cols]: the group's tensors flattened, with the
// reduced (trailing) axes as the columns. Every instruction has a level: a "row" value is
// one number per row (constants, per-row and scalar inputs, reductions, arithmetic on row
// values only); a "full" value one number per element. A row reduction sums or maxes a full
// value over the columns of its row. Outputs are written per element (full) or per row.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "graph/attr.h"
#include "graph/scalar_expr.h"

namespace tessel {
struct Node;
}

namespace tessel::ops {

// How an input is read at (row r, column c).
enum class FusedInput : uint8_t {
  full,     // x[r * cols + c]
  per_col,  // x[c]        (a bias of [cols] broadcast over the rows)
  per_row,  // x[r]        (a [rows, 1] statistic broadcast over the columns)
  scalar,   // x[0]
};

enum class FusedReduce : uint8_t { none, sum, max };

struct FusedInstr {
  ScalarOp op = ScalarOp::constant;  // arg: input `index`; constant: imm; else as ScalarExpr
  FusedReduce reduce = FusedReduce::none;  // sum/max: over the row of operand a (op unused);
                                           // of a per-row operand: a * cols, or a
  int32_t a = -1, b = -1, c = -1;          // operands: earlier instructions
  int32_t index = 0;
  double imm = 0;
};

struct FusedOutput {
  int32_t instr = 0;
  bool row = false;  // one value per row (else per element)
  // >= 0: the output is written over that input's buffer (a full input; a per-element
  // output): the caller passes the same pointer for both, and each element is read before
  // it is written. An executor's choice of where values live (an optimizer update written
  // into its variable), so not part of the node's attributes.
  int32_t over = -1;
};

struct FusedKernelDesc {
  int64_t rows = 1, cols = 1;
  std::vector<FusedInput> inputs;
  std::vector<FusedInstr> code;
  std::vector<FusedOutput> outputs;

  // Per instruction: true for row values. Throws when the description is malformed.
  std::vector<bool> row_levels() const;
  // Checks operand order, levels and outputs; throws tessel::Error saying what is wrong.
  void validate() const;
  bool has_reduction() const;
  int64_t input_numel(size_t i) const;
  int64_t output_numel(size_t i) const { return outputs[i].row ? rows : rows * cols; }
  // Arithmetic operations per element of the domain (cost model, reports).
  double flops_per_element() const;

  // The node attributes that hold it ("rows", "cols", "in", "code", "imm", "out"), and back.
  Attrs to_attrs() const;
  static FusedKernelDesc from_attrs(const Attrs& a);
  // A readable listing: "%3 = exp(%2)", "%5 = row_sum(%4)", "out0 = %7 (per row)".
  std::string str() const;
};

// One elementwise expression as a kernel: out = e(inputs...) over [rows, cols].
FusedKernelDesc elementwise_desc(const ScalarExpr& e, std::vector<FusedInput> inputs, int64_t rows, int64_t cols);

// The reference implementation: interprets the description in f32, one row at a time.
// `in` and `out` are in the description's order.
void run_fused_reference(const FusedKernelDesc& d, const float* const* in, float* const* out,
                         int64_t row_begin, int64_t row_end);

}  // namespace tessel::ops
