// A Llama-style decoder written as a user would, from the DSL's pieces (embedding, RMSNorm,
// grouped-query attention with rotary positions, SwiGLU, an untied output head), trained as a
// byte-level language model on a text file on 4 simulated devices. The plan is searched with
// tensor parallelism pinned on; the search chooses what tensor parallelism splits, and the rest.
//
//   llama_text FILE [STEPS]
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <vector>

#include "frontend/api.h"
#include "frontend/nn.h"
#include "runtime/data.h"

using namespace tessel;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: llama_text FILE [STEPS]\n";
    return 2;
  }
  try {
    const int64_t steps = argc > 2 ? std::atoll(argv[2]) : 100;
    const int64_t batch = 8, seq = 32, vocab = 256, d = 64, heads = 4, kv_heads = 2, layers = 2;
    const runtime::TextDataset text = runtime::TextDataset::load(argv[1]);

    Model m;
    Tensor tokens = m.input("tokens", {batch, seq}, DType::i32, "tokens");
    Tensor targets = m.input("targets", {batch, seq}, DType::i32, "targets");
    nn::Embedding embed(m, "embed", vocab, d);
    nn::Rotary rope(m, "rope", d / heads, seq);
    Tensor x = embed(tokens);
    std::vector<nn::LlamaBlock> blocks;
    blocks.reserve(layers);
    for (int64_t i = 0; i < layers; ++i) {
      blocks.emplace_back(m, "layer" + std::to_string(i), d, heads, kv_heads, 4 * d, layers, &rope);
      x = blocks.back()(x);
    }
    nn::RMSNorm norm(m, "norm", d);
    nn::Linear head(m, "head", d, vocab, nn::Linear::Init{ops::Init::normal, 0.02, false});
    Tensor logits = head(norm(x));
    Tensor loss = cross_entropy(logits, targets);

    Devices devices{.count = 4};
    devices.pins.tp = 2;
    Trainer trainer(m, loss, AdamW{.lr = 3e-3}, devices);
    std::cout << trainer.report();

    std::vector<int32_t> tok(batch * seq), tgt(batch * seq);
    double first = 0, last = 0;
    for (int64_t s = 0; s < steps; ++s) {
      text.fill_batch(false, 1, s, batch, 0, 1, seq, tok.data(), tgt.data());
      last = trainer.step(Batch().set("tokens", tok).set("targets", tgt));
      if (s == 0) first = last;
      if ((s + 1) % 20 == 0 || s + 1 == steps) std::printf("step %lld: loss %.4f\n", static_cast<long long>(s + 1), last);
    }
    std::printf("loss %.4f -> %.4f (unigram entropy %.4f)\n", first, last, text.unigram_entropy());
    return last < first ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "llama_text: " << e.what() << "\n";
    return 1;
  }
}
