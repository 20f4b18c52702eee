#include "frontend/optim.h"

#include "graph/autodiff.h"
#include "graph/error.h"
#include "ops/emit.h"

namespace tessel {

namespace {

struct Param {
  int32_t id;
  Value value;
  Value grad;
  std::string name;
};

// Increments an integer counter variable in `phase`.
void add_counter_update(Graph& g, const ops::Emitter& e, Value counter, const std::string& phase) {
  g.add_update(counter.node, e.add(counter, e.constant(1, g.type(counter).dtype)), phase);
}

void check(const OptimizerConfig& c) {
  auto bad = [](const std::string& m) { throw Error("optimizer: " + m); };
  if (c.kind != "sgd" && c.kind != "adamw") bad("unknown kind '" + c.kind + "' (sgd, adamw)");
  if (!(c.lr >= 0)) bad("learning rate must be >= 0");
  if (c.momentum < 0 || c.momentum >= 1) bad("momentum must be in [0, 1)");
  if (c.beta1 < 0 || c.beta1 >= 1 || c.beta2 < 0 || c.beta2 >= 1) bad("betas must be in [0, 1)");
  if (c.schedule != "constant" && c.schedule != "cosine") bad("unknown schedule '" + c.schedule + "' (constant, cosine)");
  if (c.schedule == "cosine" && c.total_steps <= 0) bad("a cosine schedule needs the total number of steps");
  if (c.accumulate < 1) bad("accumulate must be >= 1");
  if (c.weight_decay < 0 || c.clip_norm < 0 || c.warmup_steps < 0) bad("weight decay, clip norm and warmup must be >= 0");
}

}  // namespace

TrainingPhases add_training(Graph& g, const std::string& loss_output, const OptimizerConfig& cfg) {
  check(cfg);
  auto loss = g.output(loss_output);
  if (!loss) throw Error("the graph has no output '" + loss_output + "'");
  if (g.type(*loss).rank() != 0)
    throw Error(g.node(loss->node).where() + ": the loss must be a scalar, got " + g.type(*loss).str());
  Origin origin = g.node(loss->node).origin;
  origin.scope.clear();  // update nodes belong to the parameter they serve, not to the loss's layer

  std::vector<Param> params;
  std::vector<Value> wrt;
  for (int32_t id : g.parameters()) {
    params.push_back({id, Value{id, 0}, {}, g.node(id).name});
    wrt.push_back(Value{id, 0});
  }
  if (params.empty()) throw Error("the model has no parameters to train");
  std::vector<Value> grads = gradients(g, *loss, wrt);
  for (size_t i = 0; i < params.size(); ++i) {
    if (!grads[i].valid())
      throw Error(g.node(params[i].id).where() + ": parameter does not affect the loss");
    params[i].grad = grads[i];
  }

  // Everything from here on is the optimizer's: shared (step counter, learning rate,
  // gradient norm: marked as each part is made) or serving one parameter.
  int32_t shared_from = g.size();
  auto mark_shared = [&] {
    g.annotate(shared_from, Pass::update, -1);
    shared_from = g.size();
  };
  ops::Emitter e(g, origin, "optimizer");
  TrainingPhases phases;
  phases.accumulate = cfg.accumulate;
  std::string apply_phase = "train";
  // Dropout masks change every forward pass.
  std::optional<int32_t> dropout_counter = g.find("dropout/counter");

  if (cfg.accumulate > 1) {
    phases.step.clear();
    phases.micro = "micro";
    phases.apply = apply_phase = "apply";
    ops::Emitter acc_e = e.with_scope("accumulate");
    for (auto& p : params) {
      const TensorType& t = g.type(p.value);
      mark_shared();
      Value acc = acc_e.state(p.name + "/grad_sum", t.shape, t.dtype, 0);
      g.add_update(acc.node, acc_e.add(acc, p.grad), "micro");
      // The apply phase uses the mean of the microbatch gradients, then clears the sums.
      p.grad = acc_e.mul(acc, 1.0 / static_cast<double>(cfg.accumulate));
      g.add_update(acc.node, acc_e.zeros_like(acc), "apply");
      g.annotate(shared_from, Pass::update, p.id);
      shared_from = g.size();
    }
    if (dropout_counter) add_counter_update(g, e, Value{*dropout_counter, 0}, "micro");
  } else if (dropout_counter) {
    add_counter_update(g, e, Value{*dropout_counter, 0}, "train");
  }

  // Clipping by the global gradient norm (reported as an output). Without clipping the
  // norm is not computed: it would read every gradient once more each step.
  if (cfg.clip_norm > 0) {
    Value norm_sq;
    for (auto& p : params) {
      Value s = e.sum(e.square(p.grad));
      norm_sq = norm_sq.valid() ? e.add(norm_sq, s) : s;
    }
    Value norm = e.sqrt(norm_sq);
    g.set_output("grad_norm", norm);
    // scale = min(1, clip / (norm + 1e-6))
    Value scale = e.minimum(e.div(e.scalar_like(norm, cfg.clip_norm), e.add(norm, 1e-6)), e.scalar_like(norm, 1));
    for (auto& p : params) p.grad = e.mul(p.grad, scale);
  }

  Value step = e.state("step", {}, DType::i64, 0);
  add_counter_update(g, e, step, apply_phase);
  Value lr = e.op("lr_schedule", {step},
                  {{"kind", cfg.schedule}, {"base", cfg.lr}, {"min", cfg.min_lr},
                   {"warmup", cfg.warmup_steps}, {"total", cfg.total_steps}, {"dtype", std::string("f32")}},
                  "lr");
  g.set_output("lr", lr);

  Value b1_pow, b2_pow, bias1, bias2;
  if (cfg.kind == "adamw") {
    // beta^t as state, so bias correction needs no pow op.
    b1_pow = e.state("beta1_pow", {}, DType::f32, 1);
    b2_pow = e.state("beta2_pow", {}, DType::f32, 1);
    Value b1_new = e.mul(b1_pow, cfg.beta1);
    Value b2_new = e.mul(b2_pow, cfg.beta2);
    g.add_update(b1_pow.node, b1_new, apply_phase);
    g.add_update(b2_pow.node, b2_new, apply_phase);
    bias1 = e.sub(e.scalar_like(b1_new, 1), b1_new);  // 1 - beta1^t
    bias2 = e.sub(e.scalar_like(b2_new, 1), b2_new);
  }

  mark_shared();
  for (auto& p : params) {
    ops::Emitter pe = e.with_scope(p.name);
    const TensorType& t = g.type(p.value);
    Value lr_p = pe.cast(lr, t.dtype);
    const bool decay = cfg.weight_decay > 0 && t.rank() >= 2;
    Value updated;
    if (cfg.kind == "sgd") {
      Value gr = decay ? pe.add(p.grad, pe.mul(p.value, cfg.weight_decay)) : p.grad;
      if (cfg.momentum > 0) {
        Value v = pe.state("momentum", t.shape, t.dtype, 0);
        Value v_new = pe.add(pe.mul(v, cfg.momentum), gr);
        g.add_update(v.node, v_new, apply_phase);
        gr = v_new;
      }
      updated = pe.sub(p.value, pe.mul(gr, lr_p));
    } else {
      Value m = pe.state("adam_m", t.shape, t.dtype, 0);
      Value v = pe.state("adam_v", t.shape, t.dtype, 0);
      Value m_new = pe.add(pe.mul(m, cfg.beta1), pe.mul(p.grad, 1 - cfg.beta1));
      Value v_new = pe.add(pe.mul(v, cfg.beta2), pe.mul(pe.square(p.grad), 1 - cfg.beta2));
      g.add_update(m.node, m_new, apply_phase);
      g.add_update(v.node, v_new, apply_phase);
      Value mhat = pe.div(m_new, pe.cast(bias1, t.dtype));
      Value vhat = pe.div(v_new, pe.cast(bias2, t.dtype));
      Value step_dir = pe.div(mhat, pe.add(pe.sqrt(vhat), cfg.eps));
      Value base = p.value;
      if (decay) base = pe.sub(p.value, pe.mul(pe.mul(p.value, lr_p), cfg.weight_decay));
      updated = pe.sub(base, pe.mul(step_dir, lr_p));
    }
    g.add_update(p.id, updated, apply_phase);
    g.annotate(shared_from, Pass::update, p.id);
    shared_from = g.size();
  }
  return phases;
}

}  // namespace tessel
