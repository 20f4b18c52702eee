#include "planner/pipeline.h"

#include <algorithm>
#include <cstdio>
#include <limits>

#include "graph/error.h"
#include "graph/text.h"

namespace tessel::planner {

std::vector<int64_t> partition_layers(const std::vector<double>& cost, int64_t stages) {
  const int64_t n = static_cast<int64_t>(cost.size());
  std::vector<double> prefix(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + cost[i];
  const double inf = std::numeric_limits<double>::infinity();
  // best[s][i]: min over splits of the max stage cost, first i layers in s stages.
  std::vector<std::vector<double>> best(stages + 1, std::vector<double>(n + 1, inf));
  std::vector<std::vector<int64_t>> cut(stages + 1, std::vector<int64_t>(n + 1, 0));
  best[0][0] = 0;
  for (int64_t s = 1; s <= stages; ++s)
    for (int64_t i = s; i <= n; ++i)
      for (int64_t j = s - 1; j < i; ++j) {
        double v = std::max(best[s - 1][j], prefix[i] - prefix[j]);
        if (v < best[s][i]) {
          best[s][i] = v;
          cut[s][i] = j;
        }
      }
  std::vector<int64_t> bounds(stages + 1, n);
  for (int64_t s = stages, i = n; s > 0; --s) {
    bounds[s] = i;
    i = cut[s][i];
    bounds[s - 1] = i;
  }
  bounds[0] = 0;
  return bounds;
}

std::vector<int64_t> stage_bounds(const std::vector<double>& busy, const PlanConfig& c) {
  if (c.stage_layers.empty()) return partition_layers(busy, c.pp);
  const int64_t L = static_cast<int64_t>(busy.size());
  std::vector<int64_t> b{0};
  for (int64_t n : c.stage_layers) {
    if (n < 1) throw Error("plan " + c.str() + ": every pipeline stage needs at least one layer");
    b.push_back(b.back() + n);
  }
  if (static_cast<int64_t>(c.stage_layers.size()) != c.pp || b.back() != L)
    throw Error("plan " + c.str() + ": the layers per stage must be " + std::to_string(c.pp) + " counts summing to the model's " +
                std::to_string(L) + " layers (embedding, blocks, final norm, loss)");
  return b;
}

std::vector<double> layer_busy_times(const ModelProfile& mp, const PlanConfig& c) {
  std::vector<double> t;
  for (const LayerProfile& l : mp.layers) {
    double f = 0, b = 0;
    for (auto& s : l.forward) f += s.seconds;
    for (auto& s : l.backward) b += s.seconds;
    const double v = f * (c.recompute == Recompute::full ? 2 : 1) + b +
                     (c.recompute == Recompute::selective ? l.core_forward_s : 0) +
                     (c.microbatches > 1 ? l.grad_accumulate_s : 0);
    for (int64_t r = 0; r < l.repeat; ++r) t.push_back(v);
  }
  return t;
}

PlanEstimate estimate_plan(const ModelProfile& mp, const PlanConfig& c, const ClusterSpec& cluster,
                           const CostOptions& opt, bool keep_simulation) {
  PlanEstimate est;
  est.config = c;
  est.memory_capacity_bytes = cluster.device.memory_bytes;
  if (c.devices() > cluster.num_devices)
    throw Error("plan " + c.str() + " needs " + std::to_string(c.devices()) + " devices; the cluster has " +
                std::to_string(cluster.num_devices));
  // Expand repeated layers.
  std::vector<const LayerProfile*> layers;
  std::vector<std::string> names;
  for (const LayerProfile& l : mp.layers)
    for (int64_t r = 0; r < l.repeat; ++r) {
      layers.push_back(&l);
      names.push_back(static_cast<size_t>(r) < l.members.size() ? l.members[static_cast<size_t>(r)]
                      : l.repeat == 1                          ? l.name
                                                               : l.name + "#" + std::to_string(r));
    }
  const int64_t L = static_cast<int64_t>(layers.size());
  if (c.pp > L) throw Error("plan " + c.str() + ": " + std::to_string(c.pp) + " pipeline stages for " + std::to_string(L) + " layers");
  const bool recompute = c.recompute == Recompute::full;
  const bool selective = c.recompute == Recompute::selective;
  // FLOPs a microbatch of layer l reruns before its backward.
  auto rerun_flops = [&](const LayerProfile& l) {
    return recompute ? l.forward_flops : selective ? l.core_forward_flops : 0;
  };
  std::vector<int64_t> bounds = stage_bounds(layer_busy_times(mp, c), c);
  const int64_t m = c.microbatches;

  std::vector<double> base(c.pp, 0);
  for (int64_t s = 0; s < c.pp; ++s) {
    StageEstimate st;
    st.first_layer = bounds[s];
    st.end_layer = bounds[s + 1];
    std::string first = names[st.first_layer], last = names[st.end_layer - 1];
    st.layers = first == last ? first : first + ".." + last;
    for (int64_t i = st.first_layer; i < st.end_layer; ++i) {
      st.weight_bytes += layers[i]->weight_bytes;
      st.grad_bytes += layers[i]->grad_bytes;
      st.optimizer_bytes += layers[i]->optimizer_bytes;
      st.working_bytes = std::max(st.working_bytes, layers[i]->working_bytes);
      st.io_bytes += layers[i]->io_bytes;
      st.flops += (layers[i]->model_flops + rerun_flops(*layers[i])) * static_cast<double>(m) /
                  static_cast<double>(c.tp * c.dp);
    }
    // Gradients are taken by the layer's first backward (below), not held through the forward.
    base[s] = st.weight_bytes + st.optimizer_bytes + st.io_bytes;  // working: while each layer runs (emit)
    est.stages.push_back(st);
  }

  // One representative device per stage.
  auto sim = std::make_shared<Simulation>(c.pp, base);
  // Simulated devices sharing a host's cores: each simulated rank stands for a stage's dp x tp
  // devices, so the host runs concurrent_devices / (dp x tp) stages at full speed.
  if (cluster.concurrent_devices > 0)
    sim->set_compute_concurrency(cluster.concurrent_devices / static_cast<double>(c.dp * c.tp));
  std::vector<std::vector<int64_t>> fwd_end(c.pp, std::vector<int64_t>(m, -1)), bwd_end(c.pp, std::vector<int64_t>(m, -1));
  std::vector<std::vector<int64_t>> fwd_start(c.pp, std::vector<int64_t>(m, -1)), bwd_start(c.pp, std::vector<int64_t>(m, -1));
  std::vector<int64_t> last_bwd_of_layer(L, -1);
  std::vector<char> grads_taken(L, 0);
  // The gradient memory each layer's first backward takes: its own sums, or the whole bucket
  // of all-reduced gradients it opens (buckets fill in the backward's order, a stage each).
  // A layer's gradient reduction starts after the backward of sync_after[layer]: its own
  // (a reduce-scatter, launched as its input is final), or that of the last member of its
  // bucket (a bucket is reduced when full, or when the backward ends).
  std::vector<double> grad_alloc(L, 0);
  std::vector<int64_t> sync_after(L, -1), bucket_of(L, -1);  // bucket_of: its last member; -1: not bucketed
  for (int64_t s = 0; s < c.pp; ++s) {
    int64_t open = -1;
    std::vector<int64_t> members;
    auto close = [&] {
      for (int64_t i : members) sync_after[i] = bucket_of[i] = members.back();
      members.clear();
    };
    for (int64_t i = bounds[s + 1] - 1; i >= bounds[s]; --i) {
      sync_after[i] = i;
      const bool bucketed = std::any_of(layers[i]->grad_sync.begin(), layers[i]->grad_sync.end(), [](const Segment& g) {
        return g.comm && g.op == Collective::all_reduce;
      });
      const double sums = layers[i]->grad_bytes - layers[i]->grad_shard_bytes;  // shards come later
      if (!bucketed) {
        grad_alloc[i] = sums;
        continue;
      }
      if (open < 0 || grad_alloc[open] + sums > opt.bucket_bytes) close(), open = i;
      grad_alloc[open] += sums;
      members.push_back(i);
    }
    close();
    if (opt.grad_reduce_after_backward)
      for (int64_t i = bounds[s]; i < bounds[s + 1]; ++i) sync_after[i] = bounds[s];  // its backward ends the stage's
  }
  // Without a trace to show, each layer's pass is one task: its collectives block the
  // compute stream anyway (nothing else is queued behind them on that rank), so folding
  // them in changes no times, and their time is booked as exposed communication.
  const bool coarse = !keep_simulation;
  // Task names only matter for a trace; the search simulates hundreds of plans without.
  const bool named = keep_simulation;
  auto mb_label = [&](const std::string& what, int64_t j, const char* suffix) {
    return named ? what + "/mb" + std::to_string(j) + suffix : std::string();
  };
  auto stage_label = [&](int64_t s, const char* what) {
    return named ? "stage" + std::to_string(s) + what : std::string();
  };
  std::vector<double> folded_comm(c.pp, 0);
  // A layer's pass: its segments as tasks on stage s after `dep`; mem_delta taken by its
  // first compute piece, `working` held by every compute piece while it runs.
  auto emit = [&](int64_t s, const std::vector<Segment>& segs, TaskKind kind, const std::string& label,
                  int64_t dep, double mem_delta, int64_t& first_task, double working = 0, double released = 0) {
    int64_t prev = dep;
    if (coarse && kind != TaskKind::collective) {
      Task t;
      t.name = label;
      t.rank = s;
      t.kind = kind;
      for (const Segment& seg : segs) {
        // A blocking collective (the layer's next piece needs it) is run by the compute thread
        // itself when the communication thread is idle, so it wakes no one: no comm_wake_s, as
        // in the detailed simulation below.
        t.duration_s += seg.seconds;
        if (seg.comm) folded_comm[s] += seg.seconds;
      }
      if (prev >= 0) t.deps.push_back(prev);
      t.memory_delta_bytes = mem_delta;
      t.transient_bytes = working;
      t.released_bytes = released;
      prev = sim->add(std::move(t));
      if (first_task < 0) first_task = prev;
      return prev;
    }
    for (const Segment& seg : segs) {
      Task t;
      if (named) t.name = label + (seg.comm ? "/" + std::string(collective_name(seg.op)) : "");
      t.rank = s;
      t.stream = seg.comm ? Stream::comm : Stream::compute;
      t.kind = seg.comm ? TaskKind::collective : kind;
      t.duration_s = seg.seconds;
      // Handed to the communication thread: a collective the pass does not wait for (a gradient
      // reduction). One it waits for runs on the compute thread (the runtime's Op::blocking),
      // or queues behind a busy communication thread: neither wakes a sleeping thread.
      if (seg.comm && kind == TaskKind::collective) t.wake_s = cluster.comm_wake_s;
      if (prev >= 0) t.deps.push_back(prev);
      if (!seg.comm) t.transient_bytes = working;
      if (mem_delta > 0 && !seg.comm) {  // memory is taken by the first compute piece
        t.memory_delta_bytes = mem_delta;
        mem_delta = 0;
      }
      if (released > 0 && !seg.comm) {  // and handed over to it
        t.released_bytes = released;
        released = 0;
      }
      prev = sim->add(std::move(t));
      if (first_task < 0) first_task = prev;
    }
    if (mem_delta > 0 || released > 0) {  // no compute piece to carry it
      Task t;
      if (named) t.name = label + "/alloc";
      t.rank = s;
      t.memory_delta_bytes = mem_delta;
      t.released_bytes = released;
      if (prev >= 0) t.deps.push_back(prev);
      prev = sim->add(std::move(t));
      if (first_task < 0) first_task = prev;
    }
    return prev;
  };
  // Pipeline transfers across the boundary after stage s (activations forward, their
  // gradients back: the same bytes), between stage s's and stage s+1's first ranks.
  std::vector<double> p2p_s(c.pp, 0);
  for (int64_t s = 0; s + 1 < c.pp; ++s) {
    std::vector<int64_t> pair{s * c.dp * c.tp, (s + 1) * c.dp * c.tp};
    p2p_s[s] = collective_time(cluster, Collective::send_recv, layers[bounds[s + 1] - 1]->output_bytes, pair).seconds;
  }
  // Receives run on the comm stream beside compute; with blocking transfers both the
  // receive and the sender's send hold the compute stream instead.
  const Stream p2p_stream = opt.blocking_p2p ? Stream::compute : Stream::comm;
  auto send = [&](int64_t s, double seconds, const std::string& label, int64_t dep) {
    Task t;
    t.name = label;
    t.rank = s;
    t.stream = Stream::compute;
    t.kind = TaskKind::send;
    t.duration_s = seconds;
    t.deps.push_back(dep);
    folded_comm[s] += seconds;
    sim->add(std::move(t));
  };
  // Other layers' values a layer's backward reads: those that came from another stage (the
  // received copy), and those their own layer does not keep already.
  auto kept_inputs = [&](int64_t s, int64_t i) {
    double b = 0;
    for (const LayerProfile::BackwardInput& in : layers[i]->backward_inputs) {
      const int64_t src = i - in.layers_back;
      b += src < bounds[s] || src >= bounds[s + 1] || !in.kept_by_source ? in.bytes : 0.0;
    }
    return b;
  };
  auto forward = [&](int64_t s, int64_t j) {
    int64_t dep = -1;
    if (s > 0) {  // activations from the previous stage
      Task recv;
      recv.name = mb_label(stage_label(s, ""), j, "/recv");
      recv.rank = s;
      recv.stream = p2p_stream;
      recv.kind = TaskKind::recv;
      recv.duration_s = p2p_s[s - 1];
      if (p2p_stream == Stream::comm) recv.wake_s = cluster.comm_wake_s;
      if (opt.blocking_p2p) folded_comm[s] += recv.duration_s;
      recv.deps.push_back(fwd_end[s - 1][j]);
      dep = sim->add(std::move(recv));
    }
    int64_t first = -1, last = dep;
    for (int64_t i = bounds[s]; i < bounds[s + 1]; ++i) {
      const double keep = recompute   ? layers[i]->input_bytes
                          : (selective ? layers[i]->selective_kept_bytes : layers[i]->activation_bytes) +
                                kept_inputs(s, i);
      int64_t f = -1;
      last = emit(s, layers[i]->forward, TaskKind::forward, mb_label(names[i], j, "/fwd"), last, keep, f,
                  recompute ? layers[i]->kept_input_forward_working_bytes : layers[i]->forward_working_bytes);
      if (first < 0) first = f;
    }
    fwd_start[s][j] = first;
    fwd_end[s][j] = last;
    if (opt.blocking_p2p && s + 1 < c.pp) send(s, p2p_s[s], mb_label(stage_label(s, ""), j, "/send"), last);
  };
  auto backward = [&](int64_t s, int64_t j) {
    int64_t dep = fwd_end[s][j];
    int64_t recv = -1;
    if (s + 1 < c.pp) {  // gradients from the next stage (added later: wired with add_dep)
      Task t;
      t.name = mb_label(stage_label(s, ""), j, "/recv_grad");
      t.rank = s;
      t.stream = p2p_stream;
      t.kind = TaskKind::recv;
      t.duration_s = p2p_s[s];
      if (p2p_stream == Stream::comm) t.wake_s = cluster.comm_wake_s;
      if (opt.blocking_p2p) folded_comm[s] += t.duration_s;
      t.deps.push_back(dep);
      recv = dep = sim->add(std::move(t));
    }
    int64_t first = -1, last = dep;
    for (int64_t i = bounds[s + 1] - 1; i >= bounds[s]; --i) {
      const std::string label = mb_label(names[i], j, "");
      int64_t f = -1;
      if (recompute) last = emit(s, layers[i]->forward, TaskKind::recompute, named ? label + "/recompute" : label, last,
                                  layers[i]->activation_bytes, f, layers[i]->kept_input_forward_working_bytes);
      if (selective && layers[i]->core_forward_s > 0) {
        const std::vector<Segment> core{Segment{false, layers[i]->core_forward_s, Collective::all_reduce, -1, 0, -1, 0}};
        last = emit(s, core, TaskKind::recompute, named ? label + "/recompute_core" : label, last, layers[i]->core_rebuilt_bytes, f);
      }
      int64_t b = -1;
      // The sums, from the first microbatch on (shards come with their reduce-scatter).
      const double grads = grads_taken[i] ? 0 : grad_alloc[i] + layers[i]->grad_whole_bytes;
      // Without recomputation what the forward kept dies op by op in the backward: the
      // backward's own profile holds it, from its start.
      // After a recomputation the same holds for what it rebuilt and for the layer's input.
      // (Selective recomputation keeps its sets until the backward ends: freed below.)
      const bool hand_over = !selective;
      const double kept = layers[i]->activation_bytes;
      const double kept_in = recompute ? layers[i]->backward_input_bytes : kept_inputs(s, i);
      const double handed = recompute ? layers[i]->activation_bytes + layers[i]->input_bytes : kept + kept_in;
      const double holding =
          layers[i]->backward_holding(!grads_taken[i], grads, hand_over ? kept : 0, hand_over ? kept_in : 0);
      last = emit(s, layers[i]->backward, TaskKind::backward, named ? label + "/bwd" : label, last, grads, b, holding,
                  hand_over ? handed : 0);
      grads_taken[i] = 1;
      if (m > 1 && layers[i]->grad_accumulate_s > 0) {
        const std::vector<Segment> acc{Segment{false, layers[i]->grad_accumulate_s, Collective::all_reduce, -1, 0, -1, 0}};
        last = emit(s, acc, TaskKind::backward, named ? label + "/grad_accumulate" : label, last, 0, b);
      }
      if (first < 0) first = f >= 0 ? f : b;
      // Free what the forward kept for a selectively recomputing backward (and what it rebuilt) when it ends.
      Task free_task;
      if (named) free_task.name = label + "/free";
      free_task.rank = s;
      free_task.deps.push_back(last);
      free_task.memory_delta_bytes =
          selective ? -(layers[i]->selective_kept_bytes + layers[i]->core_rebuilt_bytes + kept_inputs(s, i)) : 0.0;
      last = sim->add(std::move(free_task));
      last_bwd_of_layer[i] = last;
    }
    bwd_start[s][j] = recv >= 0 ? recv : first;
    bwd_end[s][j] = last;
    if (opt.blocking_p2p && s > 0) send(s, p2p_s[s - 1], mb_label(stage_label(s, ""), j, "/send_grad"), last);
  };
  // Programs in schedule order, stage after stage; cross-stage waits are wired afterwards.
  for (int64_t s = 0; s < c.pp; ++s)
    for (const ScheduleStep& step : stage_schedule(c, s)) {
      if (step.section == Section::forward) forward(s, step.microbatch);
      else if (step.section == Section::backward) backward(s, step.microbatch);
    }
  for (int64_t s = 0; s + 1 < c.pp; ++s)
    for (int64_t j = 0; j < m; ++j) sim->add_dep(bwd_start[s][j], bwd_end[s + 1][j]);

  // Gradient reductions in the order the backward finishes them (on the comm stream, which
  // runs its tasks in the order they are added), each after sync_after's backward; the
  // optimizer after all of a stage's; then gathers of updated parameters.
  for (int64_t s = 0; s < c.pp; ++s) {
    std::vector<int64_t> syncs;
    std::vector<Task> at_optimizer;  // frees after the optimizer's wait
    double opt_s = 0;
    // A bucket's all-reduces are one collective of their summed bytes (one latency, not one
    // per gradient), started after its last member's backward.
    double bucket_bytes = 0;
    std::vector<int64_t> bucket_group;
    int64_t launches = 0;  // collectives the compute thread hands to the communication thread
    for (int64_t i = bounds[s + 1] - 1; i >= bounds[s]; --i) {
      int64_t f = -1;
      const int64_t after = last_bwd_of_layer[sync_after[i]];
      std::vector<Segment> own;  // what is not in a bucket
      for (const Segment& g : layers[i]->grad_sync) {
        if (bucket_of[i] >= 0 && g.comm && g.op == Collective::all_reduce) {
          bucket_bytes += g.bytes;
          if (bucket_group.empty()) bucket_group = planning_mesh(c).group(0, g.axis);
        } else {
          own.push_back(g);
        }
      }
      int64_t t = emit(s, own, TaskKind::collective, names[i] + "/grad_sync", after, 0, f);
      for (const Segment& g : own) launches += g.comm;
      if (bucket_of[i] == i && bucket_bytes > 0) {  // the bucket is complete
        Task b;
        if (named) b.name = names[i] + "/grad_sync/bucket";
        b.rank = s;
        b.stream = Stream::comm;
        b.kind = TaskKind::collective;
        b.duration_s = collective_time(cluster, Collective::all_reduce, bucket_bytes, bucket_group).seconds;
        b.wake_s = cluster.comm_wake_s;
        b.deps.push_back(t);
        t = sim->add(std::move(b));
        ++launches;
        bucket_bytes = 0;
        bucket_group.clear();
      }
      if (layers[i]->grad_shard_bytes > 0) {  // the reduce-scatter's results, from its launch
        Task alloc;
        if (named) alloc.name = names[i] + "/grad_sync/shards";
        alloc.rank = s;
        alloc.stream = Stream::none;
        alloc.deps.push_back(after);
        alloc.memory_delta_bytes = layers[i]->grad_shard_bytes;
        sim->add(std::move(alloc));
      }
      if (layers[i]->grad_whole_bytes > 0) {
        // Reduced to its shard, the whole sum is freed where the program next waits for the
        // communication stream after launching the reduction: a blocking collective in the
        // backward of this layer or of one after it (ZeRO-3's gather, tp's all-reduce), else
        // the optimizer's wait for the shards.
        Task free_task;
        if (named) free_task.name = names[i] + "/grad_sync/free";
        free_task.rank = s;
        free_task.stream = Stream::none;
        free_task.deps.push_back(t >= 0 ? t : after);
        free_task.memory_delta_bytes = -layers[i]->grad_whole_bytes;
        int64_t k = i;
        while (k >= bounds[s] && std::none_of(layers[k]->backward.begin(), layers[k]->backward.end(),
                                              [](const Segment& g) { return g.comm; }))
          --k;
        if (k >= bounds[s]) {  // that wait waits for the reduction too (the stream runs in order)
          free_task.deps = {last_bwd_of_layer[k]};
          sim->add(std::move(free_task));
        } else {
          at_optimizer.push_back(std::move(free_task));
        }
      }
      syncs.push_back(t);
      opt_s += layers[i]->optimizer_s;
    }
    if (s == 0) opt_s += mp.global_compute_s;
    // Each hand-off wakes the communication thread, which costs the launching (compute) thread
    // a wake-up of a sleeping thread on busy cores: comm_wake_s, the calibrated figure (0 on
    // GPU clusters, whose launches are asynchronous). The gradient reductions' hand-offs
    // happen during the backward, the parameter gathers' after the update; both are booked here.
    for (int64_t i = bounds[s]; i < bounds[s + 1]; ++i)
      for (const Segment& g : layers[i]->param_sync) launches += g.comm;
    opt_s += static_cast<double>(launches) * cluster.comm_wake_s;
    Task o;
    o.name = "stage" + std::to_string(s) + "/optimizer";
    o.rank = s;
    o.kind = TaskKind::optimizer;
    o.duration_s = opt_s;
    for (int64_t i = bounds[s]; i < bounds[s + 1]; ++i) o.transient_bytes = std::max(o.transient_bytes, layers[i]->optimizer_working_bytes);
    for (int64_t t : syncs)
      if (t >= 0) o.deps.push_back(t);
    int64_t last = sim->add(std::move(o));
    for (Task& f : at_optimizer) {
      f.deps.push_back(last);
      sim->add(std::move(f));
    }
    for (int64_t i = bounds[s]; i < bounds[s + 1]; ++i) {
      int64_t f = -1;
      last = emit(s, layers[i]->param_sync, TaskKind::collective, names[i] + "/param_sync", last, 0, f);
    }
  }

  Simulation::Result r = sim->run();
  est.step_time_s = r.step_time_s;
  double busiest = -1;
  for (int64_t s = 0; s < c.pp; ++s) {
    const auto& rs = r.ranks[s];
    StageEstimate& st = est.stages[s];
    st.compute_s = rs.compute_s - rs.optimizer_s - folded_comm[s];
    st.optimizer_s = rs.optimizer_s;
    st.exposed_comm_s = rs.exposed_comm_s + folded_comm[s];
    st.bubble_s = rs.bubble_s;
    st.peak_memory_bytes = rs.peak_memory_bytes;
    // The parts sum to the peak: what the simulated peak holds beyond the fixed parts, the
    // gradients and one layer's working set is the activations'.
    st.activation_bytes = std::max(0.0, rs.peak_memory_bytes - base[s] - st.grad_bytes - st.working_bytes);
    if (st.compute_s + st.optimizer_s > busiest) {
      busiest = st.compute_s + st.optimizer_s;
      est.compute_s = st.compute_s;
      est.optimizer_s = st.optimizer_s;
      est.exposed_comm_s = st.exposed_comm_s;
      est.bubble_s = st.bubble_s;
    }
    est.peak_memory_bytes = std::max(est.peak_memory_bytes, st.peak_memory_bytes);
  }
  // FLOPs and utilisation.
  double model = 0, hardware = 0;
  for (const LayerProfile* l : layers) {
    model += l->model_flops;
    hardware += l->model_flops + rerun_flops(*l);
  }
  const double per_step = static_cast<double>(m);  // profiles cover all replicas' microbatch
  est.model_flops_per_step = model * per_step;
  est.hardware_flops_per_step = hardware * per_step;
  const double devices = static_cast<double>(c.devices());
  const DType peak_dtype = opt.precision == Precision::mixed ? DType::bf16 : DType::f32;
  if (est.step_time_s > 0) {
    est.tflops_per_device = est.hardware_flops_per_step / est.step_time_s / devices / 1e12;
    est.mfu = est.model_flops_per_step / (est.step_time_s * devices * cluster.device.peak(peak_dtype));
  }
  // Traffic per link level, per device per step.
  est.traffic_bytes_per_level.assign(cluster.levels.size(), 0);
  auto count = [&](const std::vector<Segment>& segs, double times) {
    for (auto& s : segs)
      if (s.comm && s.level >= 0 && s.level < static_cast<int>(cluster.levels.size()))
        est.traffic_bytes_per_level[s.level] += s.bus_bytes * times;
  };
  for (const LayerProfile* l : layers) {
    count(l->forward, static_cast<double>(m) * (recompute ? 2 : 1));
    count(l->backward, static_cast<double>(m));
    count(l->grad_sync, 1);
    count(l->param_sync, 1);
  }
  for (auto& t : est.traffic_bytes_per_level) t /= static_cast<double>(c.pp);
  // Pipeline sends: activations forward and their gradients back at every stage boundary.
  for (int64_t s = 0; s + 1 < c.pp; ++s) {
    std::vector<int64_t> pair{s * c.dp * c.tp, (s + 1) * c.dp * c.tp};
    CommEstimate p2p = collective_time(cluster, Collective::send_recv, layers[bounds[s + 1] - 1]->output_bytes, pair);
    if (p2p.level >= 0) est.traffic_bytes_per_level[p2p.level] += 2 * p2p.bus_bytes * static_cast<double>(m) / static_cast<double>(c.pp);
  }
  // Memory fit.
  for (int64_t s = 0; s < c.pp; ++s) {
    const StageEstimate& st = est.stages[s];
    if (st.peak_memory_bytes <= cluster.device.memory_bytes) continue;
    est.fits = false;
    std::vector<std::pair<double, std::string>> parts = {{st.weight_bytes, "weights"},
                                                         {st.grad_bytes, "gradients"},
                                                         {st.optimizer_bytes, "optimizer state"},
                                                         {st.activation_bytes, "activations"},
                                                         {st.working_bytes, "working memory"},
                                                         {st.io_bytes, "inputs, outputs and constants"}};
    std::sort(parts.rbegin(), parts.rend());
    est.fit_problem = "stage " + std::to_string(s) + " (" + st.layers + ") needs " + si_units(st.peak_memory_bytes, "B") +
                      " per device, " + si_units(st.peak_memory_bytes - cluster.device.memory_bytes, "B") +
                      " more than the " + si_units(cluster.device.memory_bytes, "B") + " it has; largest part: " +
                      parts[0].second + " " + si_units(parts[0].first, "B");
    break;
  }
  for (const LayerProfile& l : mp.layers)
    for (auto& n : l.notes) est.notes.push_back(n);
  if (keep_simulation) est.simulation = sim;
  return est;
}

}  // namespace tessel::planner
