#include "frontend/nn.h"

#include <cmath>

#include "graph/error.h"

namespace tessel::nn {

namespace {
std::string sub(std::string_view a, std::string_view b) { return std::string(a) + "/" + std::string(b); }
}  // namespace

Linear::Linear(Model& m, std::string_view name_, int64_t in, int64_t out, Init init, SourceLoc loc)
    : in_features(in), out_features(out), name(m.scoped(name_)) {
  double scale = init.scale;
  if (scale < 0) scale = init.kind == ops::Init::uniform ? 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(in, 1))) : 0.02;
  weight = m.parameter(sub(name_, "weight"), {in, out}, init.kind, scale, loc);
  if (init.bias) {
    // PyTorch draws biases from the same uniform as weights; normal-initialised layers
    // (GPT) start them at zero.
    bias = init.kind == ops::Init::uniform ? m.parameter(sub(name_, "bias"), {out}, ops::Init::uniform, scale, loc)
                                           : m.parameter(sub(name_, "bias"), {out}, ops::Init::zeros, 0, loc);
  }
}

Tensor Linear::operator()(const Tensor& x, SourceLoc loc) const {
  Model& m = x.model();
  Model::Scope scope(m, name, true);
  ops::Emitter e = m.emit(loc);
  const Shape& s = x.shape();
  if (s.empty() || s.back() != in_features)
    throw Error(Origin::at(loc).str() + ": linear '" + name + "': input " +
                x.type().str() + " does not end in " + std::to_string(in_features) + " features");
  // Fold leading dims into rows so forward and backward are plain 2-D GEMMs. The bias is
  // added after unfolding: a row-parallel product's partial sum then meets it as
  // [batch, seq, features], which sequence parallelism reduce-scatters along the sequence.
  Value v = x.value();
  const bool fold = s.size() != 2;
  if (fold) v = e.reshape(v, {-1, in_features});
  Value y = e.matmul(v, weight.value());
  if (fold) {
    Shape out(s.begin(), s.end() - 1);
    out.push_back(out_features);
    y = e.reshape(y, out);
  }
  if (bias.valid()) y = e.add(y, bias.value());
  return m.wrap(y);
}

Embedding::Embedding(Model& m, std::string_view name_, int64_t vocab, int64_t dim, double std, SourceLoc loc)
    : name(m.scoped(name_)) {
  weight = m.parameter(sub(name_, "weight"), {vocab, dim}, ops::Init::normal, std, loc);
}

Tensor Embedding::operator()(const Tensor& ids, SourceLoc loc) const {
  Model::Scope scope(ids.model(), name, true);
  return gather(weight, ids, loc);
}

LayerNorm::LayerNorm(Model& m, std::string_view name_, int64_t dim, double eps_, SourceLoc loc)
    : eps(eps_), name(m.scoped(name_)) {
  gamma = m.parameter(sub(name_, "gamma"), {dim}, ops::Init::ones, 0, loc);
  beta = m.parameter(sub(name_, "beta"), {dim}, ops::Init::zeros, 0, loc);
}

Tensor LayerNorm::operator()(const Tensor& x, SourceLoc loc) const {
  Model& m = x.model();
  Model::Scope scope(m, name, true);
  if (x.rank() < 1 || x.shape().back() != gamma.shape()[0])
    throw Error(Origin::at(loc).str() + ": layer norm '" + name + "': input " +
                x.type().str() + " does not end in " + std::to_string(gamma.shape()[0]));
  return m.wrap(m.emit(loc).layer_norm(x.value(), gamma.value(), beta.value(), eps));
}

RMSNorm::RMSNorm(Model& m, std::string_view name_, int64_t dim, double eps_, SourceLoc loc)
    : eps(eps_), name(m.scoped(name_)) {
  weight = m.parameter(sub(name_, "weight"), {dim}, ops::Init::ones, 0, loc);
}

Tensor RMSNorm::operator()(const Tensor& x, SourceLoc loc) const {
  Model& m = x.model();
  Model::Scope scope(m, name, true);
  if (x.rank() < 1 || x.shape().back() != weight.shape()[0])
    throw Error(Origin::at(loc).str() + ": rms norm '" + name + "': input " + x.type().str() +
                " does not end in " + std::to_string(weight.shape()[0]));
  ops::Emitter e = m.emit(loc);
  Value ms = e.mean(e.square(x.value()), {-1}, true);
  return m.wrap(e.mul(e.mul(x.value(), e.rsqrt(e.add(ms, eps))), weight.value()));
}

SwiGLU::SwiGLU(Model& m, std::string_view name_, int64_t d, int64_t ffn, double out_std, SourceLoc loc)
    : gate(m, sub(name_, "gate"), d, ffn, Linear::Init{ops::Init::normal, 0.02, false}, loc),
      up(m, sub(name_, "up"), d, ffn, Linear::Init{ops::Init::normal, 0.02, false}, loc),
      down(m, sub(name_, "down"), ffn, d, Linear::Init{ops::Init::normal, out_std, false}, loc),
      name(m.scoped(name_)) {}

Tensor SwiGLU::operator()(const Tensor& x, SourceLoc loc) const {
  Model& m = x.model();
  Model::Scope scope(m, name, true);
  Tensor h = silu(gate(x, loc), loc);
  return down(m.wrap(m.emit(loc).mul(h.value(), up(x, loc).value())), loc);
}

Rotary::Rotary(Model& m, std::string_view name_, int64_t hd, int64_t seq, double theta_, SourceLoc loc)
    : head_dim(hd), max_seq(seq), theta(theta_), name(m.scoped(name_)) {
  const std::string where = Origin::at(loc).str() + ": rotary '" + name + "': ";
  if (hd <= 0 || hd % 2 != 0) throw Error(where + "head_dim " + std::to_string(hd) + " must be even and positive");
  if (seq <= 0) throw Error(where + "max_seq " + std::to_string(seq) + " must be positive");
  if (!(theta_ > 1)) throw Error(where + "theta " + std::to_string(theta_) + " must be above 1");
  const int64_t half = hd / 2;
  std::vector<double> c(static_cast<size_t>(seq * half)), s(c.size());
  for (int64_t i = 0; i < half; ++i) {
    const double freq = std::pow(theta_, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
    for (int64_t t = 0; t < seq; ++t) {
      c[t * half + i] = std::cos(static_cast<double>(t) * freq);
      s[t * half + i] = std::sin(static_cast<double>(t) * freq);
    }
  }
  // No '/' in the names: the planner keeps unscoped constants global (on every stage)
  // instead of making them a layer of their own.
  cos = m.constant(std::string(name_) + "_cos", {seq, half}, c, m.float_dtype(), loc);
  sin = m.constant(std::string(name_) + "_sin", {seq, half}, s, m.float_dtype(), loc);
}

Tensor Rotary::operator()(const Tensor& x, SourceLoc loc) const {
  Model& m = x.model();
  if (x.rank() < 2 || x.dim(-1) != head_dim || x.dim(-2) > max_seq)
    throw Error(Origin::at(loc).str() + ": rotary '" + name + "': expects [..., seq <= " + std::to_string(max_seq) +
                ", " + std::to_string(head_dim) + "], got " + x.type().str());
  // Nodes go under the caller's scope (its layer), not under the tables' name.
  Model::Scope scope(m, name.substr(name.rfind('/') + 1));
  const int64_t T = x.dim(-2), half = head_dim / 2;
  Tensor c = cos, s = sin;
  if (T < max_seq) {
    c = slice(c, 0, 0, T, loc);
    s = slice(s, 0, 0, T, loc);
  }
  if (c.dtype() != x.dtype()) {
    c = cast(c, x.dtype(), loc);
    s = cast(s, x.dtype(), loc);
  }
  Value x1 = slice(x, -1, 0, half, loc).value(), x2 = slice(x, -1, half, head_dim, loc).value();
  ops::Emitter e = m.emit(loc);
  Value lo = e.sub(e.mul(x1, c.value()), e.mul(x2, s.value()));
  Value hi = e.add(e.mul(x2, c.value()), e.mul(x1, s.value()));
  return m.wrap(e.concat({lo, hi}, -1));
}

namespace {
// Checks the head counts before any parameter is made; returns kv_heads.
int64_t checked_kv_heads(const Model& m, std::string_view name, int64_t d, int64_t h,
                         const AttentionOptions& o, SourceLoc loc) {
  const std::string where = Origin::at(loc).str() + ": attention '" + m.scoped(name) + "': ";
  if (h <= 0 || d % h != 0)
    throw Error(where + "d_model " + std::to_string(d) + " is not divisible by heads " + std::to_string(h));
  const int64_t kv = o.kv_heads == 0 ? h : o.kv_heads;
  if (kv <= 0 || h % kv != 0)
    throw Error(where + "heads " + std::to_string(h) + " is not divisible by kv_heads " + std::to_string(kv));
  if (o.rotary && o.rotary->head_dim != d / h)
    throw Error(where + "rotary '" + o.rotary->name + "' is for head_dim " + std::to_string(o.rotary->head_dim) +
                ", but d_model " + std::to_string(d) + " / heads " + std::to_string(h) + " is " +
                std::to_string(d / h));
  return kv;
}
}  // namespace

CausalSelfAttention::CausalSelfAttention(Model& m, std::string_view name_, int64_t d, int64_t h,
                                         const AttentionOptions& o, SourceLoc loc)
    : d_model(d), heads(h), kv_heads(checked_kv_heads(m, name_, d, h, o, loc)),
      q(m, sub(name_, "q"), d, d, Linear::Init{ops::Init::normal, 0.02, o.bias}, loc),
      k(m, sub(name_, "k"), d, kv_heads * (d / h), Linear::Init{ops::Init::normal, 0.02, o.bias}, loc),
      v(m, sub(name_, "v"), d, kv_heads * (d / h), Linear::Init{ops::Init::normal, 0.02, o.bias}, loc),
      proj(m, sub(name_, "proj"), d, d, Linear::Init{ops::Init::normal, o.out_std, o.bias}, loc),
      rotary(o.rotary), dropout(o.dropout), name(m.scoped(name_)) {}

Tensor CausalSelfAttention::operator()(const Tensor& x, SourceLoc loc) const {
  Model& m = x.model();
  if (x.rank() != 3 || x.dim(2) != d_model)
    throw Error(Origin::at(loc).str() + ": attention '" + name + "': expects [batch, seq, " +
                std::to_string(d_model) + "], got " + x.type().str());
  Model::Scope scope(m, name, true);
  const int64_t B = x.dim(0), T = x.dim(1), H = heads, D = d_model / heads;
  auto heads_of = [&](const Linear& proj_in, int64_t n) {  // [B, T, n*D] -> [B, n, T, D]
    return transpose(reshape(proj_in(x, loc), {B, T, n, D}, loc), {0, 2, 1, 3}, loc);
  };
  Tensor qh = heads_of(q, H), kh = heads_of(k, kv_heads), vh = heads_of(v, kv_heads);
  if (rotary) {
    qh = (*rotary)(qh, loc);
    kh = (*rotary)(kh, loc);  // before sharing: kv_heads rotations, not heads
  }
  if (kv_heads != H) {
    // KV head j serves query heads j*G .. j*G+G-1. Splitting heads over devices splits the
    // kv_heads dim of this reshape where the split divides it, and replicates it otherwise.
    const int64_t G = H / kv_heads;
    auto shared = [&](const Tensor& t) {
      Tensor g = broadcast_to(reshape(t, {B, kv_heads, 1, T, D}, loc), {B, kv_heads, G, T, D}, loc);
      return reshape(g, {B, H, T, D}, loc);
    };
    kh = shared(kh);
    vh = shared(vh);
  }
  // Library code passes the caller's loc everywhere (no operators), so every node here
  // points at the user's line.
  ops::Emitter e = m.emit(loc);
  Value scores = e.mul(matmul(qh, kh, false, true, loc).value(), 1.0 / std::sqrt(static_cast<double>(D)));
  scores = e.add(scores, e.causal_mask(T, T, x.dtype()));
  Tensor p = tessel::dropout(softmax(m.wrap(scores), -1, loc), this->dropout, loc);
  Tensor y = transpose(matmul(p, vh, false, false, loc), {0, 2, 1, 3}, loc);  // [B, T, H, D]
  return tessel::dropout(proj(reshape(y, {B, T, d_model}, loc), loc), this->dropout, loc);
}

TransformerBlock::TransformerBlock(Model& m, std::string_view name_, int64_t d, int64_t h,
                                   int64_t n_layers, double p, SourceLoc loc)
    : ln1(m, sub(name_, "ln1"), d, 1e-5, loc),
      attn(m, sub(name_, "attn"), d, h, p, 0.02 / std::sqrt(2.0 * std::max<int64_t>(n_layers, 1)), loc),
      ln2(m, sub(name_, "ln2"), d, 1e-5, loc),
      fc(m, sub(name_, "mlp/fc"), d, 4 * d, Linear::Init{ops::Init::normal, 0.02, true}, loc),
      proj(m, sub(name_, "mlp/proj"), 4 * d, d,
           Linear::Init{ops::Init::normal, 0.02 / std::sqrt(2.0 * std::max<int64_t>(n_layers, 1)), true}, loc),
      dropout(p), name(m.scoped(name_)) {}

Tensor TransformerBlock::operator()(const Tensor& x, SourceLoc loc) const {
  Model& m = x.model();
  Model::Scope scope(m, name, true);
  ops::Emitter e = m.emit(loc);
  Tensor h = m.wrap(e.add(x.value(), attn(ln1(x, loc), loc).value()));
  Tensor mlp = proj(gelu(fc(ln2(h, loc), loc), loc), loc);
  return m.wrap(e.add(h.value(), tessel::dropout(mlp, dropout, loc).value()));
}

LlamaBlock::LlamaBlock(Model& m, std::string_view name_, int64_t d, int64_t h, int64_t kv, int64_t ffn,
                       int64_t n_layers, const Rotary* rotary, double norm_eps, SourceLoc loc)
    : ln1(m, sub(name_, "ln1"), d, norm_eps, loc),
      attn(m, sub(name_, "attn"), d, h,
           AttentionOptions{.kv_heads = kv, .rotary = rotary, .bias = false,
                            .out_std = 0.02 / std::sqrt(2.0 * std::max<int64_t>(n_layers, 1))},
           loc),
      ln2(m, sub(name_, "ln2"), d, norm_eps, loc),
      mlp(m, sub(name_, "mlp"), d, ffn, 0.02 / std::sqrt(2.0 * std::max<int64_t>(n_layers, 1)), loc),
      name(m.scoped(name_)) {}

Tensor LlamaBlock::operator()(const Tensor& x, SourceLoc loc) const {
  Model& m = x.model();
  Model::Scope scope(m, name, true);
  ops::Emitter e = m.emit(loc);
  Tensor h = m.wrap(e.add(x.value(), attn(ln1(x, loc), loc).value()));
  return m.wrap(e.add(h.value(), mlp(ln2(h, loc), loc).value()));
}

}  // namespace tessel::nn
