// Layers. Each owns its parameters (created in the constructor, under the layer's name)
// and is applied with operator(); both record the caller's source line.
#pragma once

#include "frontend/tensor.h"

namespace tessel::nn {

// y = x W + b over the last dim of x (any leading dims). W is [in, out].
class Linear {
 public:
  struct Init {
    ops::Init kind = ops::Init::uniform;  // default: U(-1/sqrt(in), 1/sqrt(in)), as PyTorch
    double scale = -1;                    // < 0: the default for kind
    bool bias = true;
  };
  Linear(Model& m, std::string_view name, int64_t in, int64_t out, Init init,
         SourceLoc loc = SourceLoc::current());
  Linear(Model& m, std::string_view name, int64_t in, int64_t out,
         SourceLoc loc = SourceLoc::current())
      : Linear(m, name, in, out, Init{}, loc) {}
  Tensor operator()(const Tensor& x, SourceLoc loc = SourceLoc::current()) const;

  Tensor weight, bias;  // bias invalid when disabled
  int64_t in_features, out_features;
  std::string name;  // full path, e.g. "block0/mlp/fc"
};

class Embedding {
 public:
  Embedding(Model& m, std::string_view name, int64_t vocab, int64_t dim, double std = 0.02,
            SourceLoc loc = SourceLoc::current());
  Tensor operator()(const Tensor& ids, SourceLoc loc = SourceLoc::current()) const;
  Tensor weight;  // [vocab, dim]
  std::string name;
};

class LayerNorm {
 public:
  LayerNorm(Model& m, std::string_view name, int64_t dim, double eps = 1e-5,
            SourceLoc loc = SourceLoc::current());
  Tensor operator()(const Tensor& x, SourceLoc loc = SourceLoc::current()) const;
  Tensor gamma, beta;
  double eps;
  std::string name;
};

// Multi-head self-attention with a causal mask over x [batch, seq, d_model].
class CausalSelfAttention {
 public:
  CausalSelfAttention(Model& m, std::string_view name, int64_t d_model, int64_t heads,
                      double dropout = 0, double out_std = 0.02, SourceLoc loc = SourceLoc::current());
  Tensor operator()(const Tensor& x, SourceLoc loc = SourceLoc::current()) const;
  // Separate projections, so a column split over heads needs no slicing (Megatron-style
  // tensor parallelism splits each along its output features).
  Linear q, k, v, proj;
  int64_t d_model, heads;
  double dropout;
  std::string name;
};

// Pre-norm GPT block: x + attn(ln1(x)), then x + mlp(ln2(x)) with a 4x GELU MLP.
class TransformerBlock {
 public:
  TransformerBlock(Model& m, std::string_view name, int64_t d_model, int64_t heads,
                   int64_t n_layers, double dropout = 0, SourceLoc loc = SourceLoc::current());
  Tensor operator()(const Tensor& x, SourceLoc loc = SourceLoc::current()) const;
  LayerNorm ln1;
  CausalSelfAttention attn;
  LayerNorm ln2;
  Linear fc, proj;
  double dropout;
  std::string name;
};

}  // namespace tessel::nn
