// Ready-made models. Building allocates no tensor memory, so any size can be planned.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "frontend/nn.h"

namespace tessel::models {

// A built model: its graph has inputs, a "logits" output and a scalar "loss" output.
struct Built {
  std::unique_ptr<Model> model;
  std::vector<std::string> inputs;  // fed each step, e.g. {"x", "labels"}
  Tensor logits, loss;
  std::string description;          // e.g. "mlp 784-1024-1024-10"
};

struct MlpConfig {
  std::vector<int64_t> sizes;  // input, hidden..., classes
  int64_t batch = 1;
};
// x [batch, sizes[0]] f32 -> ReLU hidden layers -> logits [batch, classes]; labels i32.
Built mlp(const MlpConfig& cfg, bool training = true);

struct GptConfig {
  int64_t layers = 2, d_model = 64, heads = 4, vocab = 256, seq = 32;
  double dropout = 0;
  int64_t batch = 1;
  int64_t parameters() const;  // without building
};
// tokens [batch, seq] i32 -> logits [batch, seq, vocab]; targets i32 [batch, seq].
// Token embedding is tied to the output projection (GPT-2).
Built gpt(const GptConfig& cfg, bool training = true);

struct LlamaConfig {
  int64_t layers = 2, d_model = 64, heads = 4, vocab = 256, seq = 32;
  int64_t kv_heads = 0;  // 0: as many as heads
  int64_t ffn = 0;       // 0: Llama's rule, 2/3 of 4 d_model rounded up to a multiple of 256
  double rope_theta = 10000;  // Llama 3: 500000
  double norm_eps = 1e-5;
  int64_t batch = 1;
  int64_t kv() const { return kv_heads == 0 ? heads : kv_heads; }
  int64_t hidden() const;      // ffn, or the default
  int64_t parameters() const;  // without building
};
// tokens [batch, seq] i32 -> logits [batch, seq, vocab]; targets i32 [batch, seq]. Token
// embedding "wte", blocks "block<i>" (nn::LlamaBlock) sharing one rotary table, RMSNorm
// "ln_f" and an untied output head "lm_head/weight" [d_model, vocab]; no biases.
Built llama(const LlamaConfig& cfg, bool training = true);

// "mlp:784-1024-1024-10", "gpt:layers=4,d_model=256,heads=4,seq=128,vocab=256[,dropout=0.1]" or
// "llama:layers=..,d_model=..,heads=..,kv_heads=..,ffn=..,seq=..,vocab=..[,rope_theta=..]".
// Throws tessel::Error naming the bad part of the spec.
Built from_spec(const std::string& spec, int64_t batch, bool training = true);

}  // namespace tessel::models
