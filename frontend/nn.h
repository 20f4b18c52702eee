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

// y = x * rsqrt(mean(x^2 over the last dim) + eps) * weight; weight [dim] starts at ones.
// The parameter is "<name>/weight", as Llama checkpoints name it.
class RMSNorm {
 public:
  RMSNorm(Model& m, std::string_view name, int64_t dim, double eps = 1e-5,
          SourceLoc loc = SourceLoc::current());
  Tensor operator()(const Tensor& x, SourceLoc loc = SourceLoc::current()) const;
  Tensor weight;
  double eps;
  std::string name;
};

// down(silu(gate(x)) * up(x)): the Llama MLP, three bias-free Linears "<name>/gate",
// "<name>/up" [d_model, ffn] and "<name>/down" [ffn, d_model].
class SwiGLU {
 public:
  SwiGLU(Model& m, std::string_view name, int64_t d_model, int64_t ffn, double out_std = 0.02,
         SourceLoc loc = SourceLoc::current());
  Tensor operator()(const Tensor& x, SourceLoc loc = SourceLoc::current()) const;
  Linear gate, up, down;
  std::string name;
};

// Rotary position embeddings in the "rotate half" convention (GPT-NeoX, Llama as Hugging
// Face writes it): with h = head_dim / 2 and angle(t, i) = t * theta^(-2i / head_dim),
//   y[i]     = x[i] cos(angle) - x[i + h] sin(angle)
//   y[i + h] = x[i + h] cos(angle) + x[i] sin(angle)     for i < h, position t.
// The tables are constants "<name>/cos" and "<name>/sin" [max_seq, h] stored in the graph,
// in the model's float dtype; one Rotary serves every layer.
class Rotary {
 public:
  Rotary(Model& m, std::string_view name, int64_t head_dim, int64_t max_seq, double theta = 10000,
         SourceLoc loc = SourceLoc::current());
  // x [..., seq, head_dim], seq <= max_seq, positions 0..seq-1.
  Tensor operator()(const Tensor& x, SourceLoc loc = SourceLoc::current()) const;
  Tensor cos, sin;
  int64_t head_dim, max_seq;
  double theta;
  std::string name;
};

struct AttentionOptions {
  int64_t kv_heads = 0;            // 0: as many as query heads; fewer: grouped-query attention
  const Rotary* rotary = nullptr;  // not owned; applied to queries and keys
  bool bias = true;
  double dropout = 0;
  double out_std = 0.02;           // init std of the output projection (the others: 0.02)
};

// Causal self-attention over x [batch, seq, d_model]: multi-head, or grouped-query with
// kv_heads dividing heads (query head h reads KV head h / (heads / kv_heads)).
class CausalSelfAttention {
 public:
  CausalSelfAttention(Model& m, std::string_view name, int64_t d_model, int64_t heads,
                      const AttentionOptions& options, SourceLoc loc = SourceLoc::current());
  CausalSelfAttention(Model& m, std::string_view name, int64_t d_model, int64_t heads,
                      double dropout = 0, double out_std = 0.02, SourceLoc loc = SourceLoc::current())
      : CausalSelfAttention(m, name, d_model, heads, AttentionOptions{.dropout = dropout, .out_std = out_std}, loc) {}
  Tensor operator()(const Tensor& x, SourceLoc loc = SourceLoc::current()) const;
  int64_t d_model, heads, kv_heads;  // declared first: checked before any parameter is made
  // Separate projections, so a column split over heads needs no slicing (Megatron-style
  // tensor parallelism splits each along its output features). k and v project to
  // kv_heads * head_dim features.
  Linear q, k, v, proj;
  const Rotary* rotary;  // not owned
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

// Pre-norm Llama block: h = x + attn(ln1(x)), then h + mlp(ln2(h)) with RMSNorms, a
// grouped-query attention with rotary positions and a SwiGLU MLP; no biases.
class LlamaBlock {
 public:
  LlamaBlock(Model& m, std::string_view name, int64_t d_model, int64_t heads, int64_t kv_heads,
             int64_t ffn, int64_t n_layers, const Rotary* rotary, double norm_eps = 1e-5,
             SourceLoc loc = SourceLoc::current());
  Tensor operator()(const Tensor& x, SourceLoc loc = SourceLoc::current()) const;
  RMSNorm ln1;
  CausalSelfAttention attn;
  RMSNorm ln2;
  SwiGLU mlp;
  std::string name;
};

}  // namespace tessel::nn
