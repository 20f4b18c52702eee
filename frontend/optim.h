// Turns a model graph into a training graph: gradients by autodiff, then optimizer updates
// as graph nodes (so the planner sees and shards them: ZeRO is a sharding of these).
#pragma once

#include <string>
#include <vector>

#include "graph/graph.h"

namespace tessel {

struct OptimizerConfig {
  std::string kind = "sgd";  // "sgd" (with momentum) or "adamw"
  double lr = 0.01;
  double momentum = 0;       // sgd
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // adamw
  double weight_decay = 0;   // decoupled (AdamW); L2 added to the gradient for SGD.
                             // Applied to weights of rank >= 2 only, not biases or norms.
  std::string schedule = "constant";  // "constant" or "cosine"
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;   // cosine decays to min_lr over this many optimizer steps
  double min_lr = 0;
  double clip_norm = 0;      // > 0: clip gradients by global L2 norm
  int64_t accumulate = 1;    // microbatches per optimizer step
};

// What add_training added: the phases to run and how.
struct TrainingPhases {
  // accumulate == 1: run `step` once per batch. Otherwise run `micro` once per microbatch
  // and then `apply` once.
  std::string step = "train";
  std::string micro, apply;
  int64_t accumulate = 1;
};

// Adds gradients of the scalar output `loss_output` with respect to every parameter and the
// optimizer's updates. Outputs added: "lr", and with clipping "grad_norm" (the global L2
// norm of the gradient before clipping).
// Throws for a bad config or a parameter the loss does not depend on.
TrainingPhases add_training(Graph& g, const std::string& loss_output, const OptimizerConfig& cfg);

}  // namespace tessel
