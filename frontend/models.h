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

// "mlp:784-1024-1024-10" or "gpt:layers=4,d_model=256,heads=4,seq=128,vocab=256[,dropout=0.1]".
// Throws tessel::Error naming the bad part of the spec.
Built from_spec(const std::string& spec, int64_t batch, bool training = true);

}  // namespace tessel::models
