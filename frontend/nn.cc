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

CausalSelfAttention::CausalSelfAttention(Model& m, std::string_view name_, int64_t d, int64_t h,
                                         double p, double out_std, SourceLoc loc)
    : q(m, sub(name_, "q"), d, d, Linear::Init{ops::Init::normal, 0.02, true}, loc),
      k(m, sub(name_, "k"), d, d, Linear::Init{ops::Init::normal, 0.02, true}, loc),
      v(m, sub(name_, "v"), d, d, Linear::Init{ops::Init::normal, 0.02, true}, loc),
      proj(m, sub(name_, "proj"), d, d, Linear::Init{ops::Init::normal, out_std, true}, loc),
      d_model(d), heads(h), dropout(p), name(m.scoped(name_)) {
  if (h <= 0 || d % h != 0)
    throw Error(Origin::at(loc).str() + ": attention '" + name + "': d_model " + std::to_string(d) +
                " is not divisible by heads " + std::to_string(h));
}

Tensor CausalSelfAttention::operator()(const Tensor& x, SourceLoc loc) const {
  Model& m = x.model();
  if (x.rank() != 3 || x.dim(2) != d_model)
    throw Error(Origin::at(loc).str() + ": attention '" + name + "': expects [batch, seq, " +
                std::to_string(d_model) + "], got " + x.type().str());
  Model::Scope scope(m, name, true);
  const int64_t B = x.dim(0), T = x.dim(1), H = heads, D = d_model / heads;
  auto heads_of = [&](const Linear& proj_in) {  // [B, T, d] -> [B, H, T, D]
    return transpose(reshape(proj_in(x, loc), {B, T, H, D}, loc), {0, 2, 1, 3}, loc);
  };
  Tensor qh = heads_of(q), kh = heads_of(k), vh = heads_of(v);
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

}  // namespace tessel::nn
