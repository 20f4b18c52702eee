#include "frontend/models.h"

#include <charconv>
#include <map>

#include "graph/error.h"

namespace tessel::models {

Built mlp(const MlpConfig& cfg, bool training) {
  if (cfg.sizes.size() < 2) throw Error("mlp needs at least an input and an output size");
  for (int64_t s : cfg.sizes)
    if (s <= 0) throw Error("mlp sizes must be positive");
  Built b;
  b.model = std::make_unique<Model>();
  Model& m = *b.model;
  m.set_training(training);
  Tensor x = m.input("x", {cfg.batch, cfg.sizes.front()}, DType::f32, "data");
  Tensor labels = m.input("labels", {cfg.batch}, DType::i32, "labels");
  Tensor h = x;
  for (size_t i = 1; i < cfg.sizes.size(); ++i) {
    nn::Linear fc(m, "fc" + std::to_string(i), cfg.sizes[i - 1], cfg.sizes[i]);
    h = fc(h);
    if (i + 1 < cfg.sizes.size()) h = relu(h);
  }
  b.logits = h;
  b.loss = cross_entropy(h, labels);
  m.output("logits", b.logits);
  m.output("loss", b.loss);
  b.inputs = {"x", "labels"};
  b.description = "mlp";
  for (size_t i = 0; i < cfg.sizes.size(); ++i)
    b.description += (i ? "-" : " ") + std::to_string(cfg.sizes[i]);
  return b;
}

int64_t GptConfig::parameters() const {
  const int64_t per_block = 12 * d_model * d_model + 13 * d_model;
  return layers * per_block + vocab * d_model + seq * d_model + 2 * d_model;
}

Built gpt(const GptConfig& c, bool training) {
  if (c.layers < 1 || c.d_model < 1 || c.heads < 1 || c.vocab < 1 || c.seq < 1)
    throw Error("gpt: layers, d_model, heads, vocab and seq must be positive");
  Built b;
  b.model = std::make_unique<Model>();
  Model& m = *b.model;
  m.set_training(training);
  Tensor tokens = m.input("tokens", {c.batch, c.seq}, DType::i32, "tokens");
  Tensor targets = m.input("targets", {c.batch, c.seq}, DType::i32, "targets");
  nn::Embedding wte(m, "wte", c.vocab, c.d_model);
  Tensor wpe = m.parameter("wpe", {c.seq, c.d_model}, ops::Init::normal, 0.01);
  Tensor x = dropout(wte(tokens) + wpe, c.dropout);
  for (int64_t i = 0; i < c.layers; ++i) {
    nn::TransformerBlock block(m, "block" + std::to_string(i), c.d_model, c.heads, c.layers, c.dropout);
    x = block(x);
  }
  nn::LayerNorm ln_f(m, "ln_f", c.d_model);
  x = ln_f(x);
  Tensor flat = reshape(x, {c.batch * c.seq, c.d_model});
  Tensor logits = reshape(matmul(flat, wte.weight, false, true), {c.batch, c.seq, c.vocab});
  b.logits = logits;
  b.loss = cross_entropy(logits, targets);
  m.output("logits", b.logits);
  m.output("loss", b.loss);
  b.inputs = {"tokens", "targets"};
  b.description = "gpt layers=" + std::to_string(c.layers) + " d_model=" + std::to_string(c.d_model) +
                  " heads=" + std::to_string(c.heads) + " seq=" + std::to_string(c.seq) +
                  " vocab=" + std::to_string(c.vocab);
  return b;
}

int64_t LlamaConfig::hidden() const {
  if (ffn != 0) return ffn;
  const int64_t h = 2 * (4 * d_model) / 3;
  return (h + 255) / 256 * 256;
}

int64_t LlamaConfig::parameters() const {
  const int64_t head_dim = heads > 0 ? d_model / heads : 0;
  const int64_t attn = 2 * d_model * d_model + 2 * d_model * kv() * head_dim;  // q, proj; k, v
  const int64_t per_block = attn + 3 * d_model * hidden() + 2 * d_model;      // + gate, up, down; norms
  return layers * per_block + 2 * vocab * d_model + d_model;                   // + wte, lm_head; ln_f
}

Built llama(const LlamaConfig& c, bool training) {
  const std::pair<const char*, int64_t> sizes[] = {{"layers", c.layers}, {"d_model", c.d_model}, {"heads", c.heads},
                                                   {"kv_heads", c.kv()},   {"ffn", c.hidden()},     {"seq", c.seq},
                                                   {"vocab", c.vocab}};
  for (auto [key, v] : sizes)
    if (v < 1) throw Error("llama: " + std::string(key) + "=" + std::to_string(v) + " must be positive");
  // The rotary table needs head_dim before any attention layer can check it.
  if (c.d_model % c.heads != 0)
    throw Error("llama: d_model " + std::to_string(c.d_model) + " is not divisible by heads " +
                std::to_string(c.heads));
  if (c.d_model / c.heads % 2 != 0)
    throw Error("llama: head_dim = d_model " + std::to_string(c.d_model) + " / heads " + std::to_string(c.heads) +
                " = " + std::to_string(c.d_model / c.heads) + " is odd; rotary positions rotate pairs of features");
  Built b;
  b.model = std::make_unique<Model>();
  Model& m = *b.model;
  m.set_training(training);
  Tensor tokens = m.input("tokens", {c.batch, c.seq}, DType::i32, "tokens");
  Tensor targets = m.input("targets", {c.batch, c.seq}, DType::i32, "targets");
  nn::Embedding wte(m, "wte", c.vocab, c.d_model);
  nn::Rotary rope(m, "rope", c.d_model / c.heads, c.seq, c.rope_theta);
  Tensor x = wte(tokens);
  for (int64_t i = 0; i < c.layers; ++i) {
    nn::LlamaBlock block(m, "block" + std::to_string(i), c.d_model, c.heads, c.kv(), c.hidden(), c.layers, &rope,
                         c.norm_eps);
    x = block(x);
  }
  nn::RMSNorm ln_f(m, "ln_f", c.d_model, c.norm_eps);
  nn::Linear lm_head(m, "lm_head", c.d_model, c.vocab, nn::Linear::Init{ops::Init::normal, 0.02, false});
  b.logits = lm_head(ln_f(x));
  b.loss = cross_entropy(b.logits, targets);
  m.output("logits", b.logits);
  m.output("loss", b.loss);
  b.inputs = {"tokens", "targets"};
  char theta[32];
  *std::to_chars(theta, theta + sizeof theta - 1, c.rope_theta, std::chars_format::fixed).ptr = '\0';
  b.description = "llama layers=" + std::to_string(c.layers) + " d_model=" + std::to_string(c.d_model) +
                  " heads=" + std::to_string(c.heads) + " kv_heads=" + std::to_string(c.kv()) +
                  " ffn=" + std::to_string(c.hidden()) + " seq=" + std::to_string(c.seq) +
                  " vocab=" + std::to_string(c.vocab) + " rope_theta=" + theta;
  return b;
}

namespace {
int64_t parse_int(const std::string& spec, const std::string& s) {
  int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty())
    throw Error("model spec '" + spec + "': '" + s + "' is not an integer");
  return v;
}

double parse_double(const std::string& spec, const std::string& key, const std::string& s) {
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty())
    throw Error("model spec '" + spec + "': " + key + "='" + s + "' is not a number");
  return v;
}

// "k1=v1,k2=v2" -> {k1: v1, k2: v2}.
std::map<std::string, std::string> parse_keys(const std::string& spec, const std::string& rest) {
  std::map<std::string, std::string> kv;
  size_t pos = 0;
  while (!rest.empty() && pos <= rest.size()) {
    size_t comma = rest.find(',', pos);
    std::string item = rest.substr(pos, comma - pos);
    size_t eq = item.find('=');
    if (eq == std::string::npos) throw Error("model spec '" + spec + "': expected key=value, got '" + item + "'");
    kv[item.substr(0, eq)] = item.substr(eq + 1);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return kv;
}
}  // namespace

Built from_spec(const std::string& spec, int64_t batch, bool training) {
  auto colon = spec.find(':');
  std::string kind = spec.substr(0, colon);
  std::string rest = colon == std::string::npos ? "" : spec.substr(colon + 1);
  if (kind == "mlp") {
    MlpConfig c;
    c.batch = batch;
    size_t pos = 0;
    while (pos <= rest.size()) {
      size_t dash = rest.find('-', pos);
      c.sizes.push_back(parse_int(spec, rest.substr(pos, dash - pos)));
      if (dash == std::string::npos) break;
      pos = dash + 1;
    }
    return mlp(c, training);
  }
  if (kind == "gpt") {
    GptConfig c;
    c.batch = batch;
    for (auto& [k, v] : parse_keys(spec, rest)) {
      if (k == "layers") c.layers = parse_int(spec, v);
      else if (k == "d_model") c.d_model = parse_int(spec, v);
      else if (k == "heads") c.heads = parse_int(spec, v);
      else if (k == "seq") c.seq = parse_int(spec, v);
      else if (k == "vocab") c.vocab = parse_int(spec, v);
      else if (k == "dropout") c.dropout = parse_double(spec, k, v);
      else throw Error("model spec '" + spec + "': unknown key '" + k + "' (layers, d_model, heads, seq, vocab, dropout)");
    }
    return gpt(c, training);
  }
  if (kind == "llama") {
    LlamaConfig c;
    c.batch = batch;
    for (auto& [k, v] : parse_keys(spec, rest)) {
      if (k == "layers") c.layers = parse_int(spec, v);
      else if (k == "d_model") c.d_model = parse_int(spec, v);
      else if (k == "heads") c.heads = parse_int(spec, v);
      else if (k == "kv_heads") c.kv_heads = parse_int(spec, v);
      else if (k == "ffn") c.ffn = parse_int(spec, v);
      else if (k == "seq") c.seq = parse_int(spec, v);
      else if (k == "vocab") c.vocab = parse_int(spec, v);
      else if (k == "rope_theta") c.rope_theta = parse_double(spec, k, v);
      else if (k == "norm_eps") c.norm_eps = parse_double(spec, k, v);
      else
        throw Error("model spec '" + spec + "': unknown key '" + k +
                    "' (layers, d_model, heads, kv_heads, ffn, seq, vocab, rope_theta, norm_eps)");
    }
    return llama(c, training);
  }
  throw Error("unknown model '" + kind + "' (expected mlp:SIZES, gpt:KEY=VALUE,... or llama:KEY=VALUE,...)");
}

}  // namespace tessel::models
