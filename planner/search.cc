#include "planner/search.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <future>
#include <map>
#include <set>
#include <thread>
#include <tuple>

#include "graph/error.h"

namespace tessel::planner {

namespace {

std::vector<int64_t> powers_of_two_dividing(int64_t n, int64_t limit) {
  std::vector<int64_t> v;
  for (int64_t p = 1; p <= limit && p <= n; p *= 2)
    if (n % p == 0) v.push_back(p);
  return v;
}

std::vector<int64_t> divisors(int64_t n, int64_t limit) {
  std::vector<int64_t> v;
  for (int64_t d = 1; d <= n && d <= limit; ++d)
    if (n % d == 0) v.push_back(d);
  return v;
}

std::string pct(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%+.0f %%", 100 * x);
  return b;
}

std::string why_lost(const PlanEstimate& a, const PlanEstimate& best, const ClusterSpec& cluster) {
  if (!a.fits) return "does not fit: " + a.fit_problem;
  const PlanConfig &c = a.config, &b = best.config;
  std::string what;
  const int64_t node = cluster.levels.size() > 1 ? cluster.levels[0].group_size : cluster.num_devices;
  if (c.tp > node && b.tp <= node) what = "tp=" + std::to_string(c.tp) + " crosses nodes";
  else if (c.tp != b.tp) what = "tp=" + std::to_string(c.tp);
  else if (c.pp != b.pp) what = "pp=" + std::to_string(c.pp);
  else if (c.dp != b.dp) what = "dp=" + std::to_string(c.dp);
  else if (c.microbatches != b.microbatches) what = std::to_string(c.microbatches) + " microbatches";
  else if (c.zero != b.zero) what = "ZeRO-" + std::to_string(c.zero);
  else if (c.recompute != b.recompute) what = std::string("recompute ") + std::string(recompute_name(c.recompute));
  else if (c.sequence_parallel != b.sequence_parallel) what = c.sequence_parallel ? "sequence parallel" : "no sequence parallelism";
  else what = c.str();
  struct Part {
    double delta;
    const char* name;
  } parts[] = {{a.compute_s - best.compute_s, "compute"},
               {a.exposed_comm_s - best.exposed_comm_s, "comm"},
               {a.bubble_s - best.bubble_s, "pipeline bubble"},
               {a.optimizer_s - best.optimizer_s, "optimizer"}};
  const Part* worst = &parts[0];
  for (const Part& p : parts)
    if (p.delta > worst->delta) worst = &p;
  const double step = std::max(best.step_time_s, 1e-12);
  return what + ": " + worst->name + " " + pct(worst->delta / step) + " of the best step time (step " +
         pct((a.step_time_s - best.step_time_s) / step) + ")";
}

// Why tensor parallelism of degree tp (with sequence parallelism: sp) cannot split the
// model: a dimension it shards that tp does not divide (heads, features, the vocabulary,
// the sequence). Empty when it can.
std::string tp_split_problem(const Graph& g, const LayerStructure& ls, int64_t tp, bool sp,
                             const std::vector<int8_t>& dims) {
  if (tp == 1) return "";
  PlanConfig c;
  c.tp = tp;
  c.sequence_parallel = sp;
  c.tp_dims = dims;
  const Mesh m = stage_mesh(c);
  GraphPlacement gp;
  try {
    gp = place_graph(g, c, m, ls.distinct, ls.repeats, ls.read_by_repeat);
  } catch (const Error& e) {
    return "tp=" + std::to_string(tp) + (sp ? " with sequence parallelism" : "") + ": " + e.what();
  }
  for (int32_t id : ls.distinct) {
    const Node& n = g.node(id);
    const auto& outs = gp.values[n.id];
    for (size_t o = 0; o < outs.size() && o < n.outputs.size(); ++o)
      for (size_t a = 0; a < outs[o].size(); ++a) {
        const Placement& p = outs[o][a];
        if (!p.is_shard() || n.outputs[o].shape[p.dim] % m.sizes[a] == 0) continue;
        return "tp=" + std::to_string(tp) + (sp ? " with sequence parallelism" : "") + " does not divide dim " +
               std::to_string(p.dim) + " of " + n.name + " " + n.outputs[o].str() + " (" + n.where() + ")";
      }
  }
  return "";
}

// dp as large as the batch allows up to `replicas`, then up to `max_microbatches`
// microbatches while the batch splits.
PlanConfig typical_config(int64_t batch, int64_t replicas, int64_t max_microbatches) {
  PlanConfig c;
  c.dp = replicas;
  while (c.dp > 1 && batch % c.dp != 0) --c.dp;
  for (int64_t m = std::min(max_microbatches, batch / c.dp); m >= 1; --m)
    if (batch % (c.dp * m) == 0) {
      c.microbatches = m;
      break;
    }
  return c;
}

}  // namespace

SearchResult search_plan(const Graph& g, const std::string& phase, const ClusterSpec& cluster, const Pins& pins,
                         const SearchOptions& opt) {
  auto t0 = std::chrono::steady_clock::now();
  const int64_t global_batch = graph_batch(g);
  const int64_t N = cluster.num_devices;
  const LayerStructure ls = find_layers(g, phase);
  const int64_t layer_count = static_cast<int64_t>(ls.layers.size());
  {
    int64_t pinned = 0;
    for (int64_t n : pins.stage_layers) pinned += n;
    if (!pins.stage_layers.empty() && pinned != layer_count) {
      std::string names;
      for (size_t i = 0; i < ls.layers.size() && i < 8; ++i) names += (i ? ", " : "") + ls.layers[i].name;
      if (ls.layers.size() > 8) names += ", ..., " + ls.layers.back().name;
      throw Error("plan: the layers per stage sum to " + std::to_string(pinned) + "; the model has " +
                  std::to_string(layer_count) + " layers (" + names + ")");
    }
  }

  // The tensor-parallel split of every parameter, per (tp, sp): chosen once, for the plan a
  // cluster would typically run it in: the other devices as data-parallel replicas, and
  // microbatches of as few samples as the batch gives (up to 8 per stage).
  auto choose = [&](int64_t tp, bool sp, const std::vector<int8_t>& start) {
    // A pinned pipeline is part of it (the output layer then weighs on its last stage).
    const int64_t pp = pins.pp && *pins.pp * tp <= N ? *pins.pp : 1;
    PlanConfig c = typical_config(global_batch, std::max<int64_t>(N / (tp * pp), 1), 8 * pp);
    c.pp = pp;
    c.tp = tp;
    if (pins.recompute) c.recompute = *pins.recompute;  // and so is a pinned recomputation
    if (pins.zero && c.dp > 1) c.zero = static_cast<int>(*pins.zero);
    c.sequence_parallel = sp;
    try {
      return choose_tensor_parallel(g, ls, c, cluster, opt.cost, start, pins.splits);
    } catch (const Error&) {  // a model that cannot take microbatches
      c.microbatches = 1;
      return choose_tensor_parallel(g, ls, c, cluster, opt.cost, start, pins.splits);
    }
  };
  const int64_t node = cluster.levels.size() > 1 ? cluster.levels[0].group_size : N;
  std::vector<int64_t> tps = pins.tp ? std::vector<int64_t>{*pins.tp} : powers_of_two_dividing(N, std::max<int64_t>(2 * node, 1));
  std::vector<std::string> reasons;  // why candidates were dropped, first seen first
  auto why_not = [&](std::string r) {
    if (std::find(reasons.begin(), reasons.end(), r) == reasons.end()) reasons.push_back(std::move(r));
  };
  // Pinned splits: on parameters, along dims they have; degrees that do not divide one drop out.
  for (auto& [p, d] : pins.splits) {
    if (p < 0 || p >= g.size() || g.node(p).op != "parameter")
      throw Error("plan: a split is pinned for node " + std::to_string(p) + ", which is not a parameter");
    const Node& n = g.node(p);
    if (d < -1 || d >= n.outputs[0].rank())
      throw Error("plan: the split pinned for " + n.name + " " + n.outputs[0].str() + " (" + n.where() + ") is dim " +
                  std::to_string(d) + ", which it does not have");
  }
  std::erase_if(tps, [&](int64_t tp) {
    for (auto& [p, d] : pins.splits) {
      const Node& n = g.node(p);
      if (d >= 0 && n.outputs[0].shape[d] % tp != 0) {
        why_not("tp=" + std::to_string(tp) + " does not divide dim " + std::to_string(d) + " of " + n.name + " " +
                n.outputs[0].str() + ", pinned to split along it (" + n.where() + ")");
        return true;
      }
    }
    return false;
  });
  // Every candidate, before the splits are known: those the degrees' splits cannot take
  // are dropped once they are (below).
  std::vector<PlanConfig> cands;
  for (int64_t tp : tps) {
    if (N % tp != 0) {
      why_not("tp=" + std::to_string(tp) + " does not divide " + std::to_string(N) + " devices");
      continue;
    }
    std::vector<int64_t> pps = pins.pp ? std::vector<int64_t>{*pins.pp} : divisors(N / tp, layer_count);
    for (int64_t pp : pps) {
      if (pp > layer_count) {
        why_not("pp=" + std::to_string(pp) + " exceeds the " + std::to_string(layer_count) + " layers");
        continue;
      }
      if ((N / tp) % pp != 0 && !pins.dp) {
        why_not("tp x pp = " + std::to_string(tp * pp) + " does not divide " + std::to_string(N) + " devices");
        continue;
      }
      const int64_t dp = pins.dp ? *pins.dp : N / (tp * pp);
      if (dp * tp * pp > N) {
        why_not("dp x tp x pp = " + std::to_string(dp * tp * pp) + " exceeds the " + std::to_string(N) + " devices");
        continue;
      }
      if (global_batch % dp != 0) {
        why_not("batch " + std::to_string(global_batch) + " does not split over dp=" + std::to_string(dp));
        continue;
      }
      std::vector<int64_t> bs;
      if (pins.microbatches) {
        if (global_batch % (dp * *pins.microbatches) != 0) {
          why_not("batch " + std::to_string(global_batch) + " does not split into dp=" + std::to_string(dp) +
                     " x " + std::to_string(*pins.microbatches) + " microbatches");
          continue;
        }
        bs = {global_batch / (dp * *pins.microbatches)};
      } else {
        bs = powers_of_two_dividing(global_batch, opt.max_microbatch_size);
      }
      for (int64_t b : bs) {
        if (global_batch % (dp * b) != 0) {
          why_not("batch " + std::to_string(global_batch) + " is not a multiple of dp x microbatch = " + std::to_string(dp * b));
          continue;
        }
        const int64_t m = global_batch / (dp * b);
        std::vector<int> zeros = pins.zero ? std::vector<int>{static_cast<int>(*pins.zero)}
                                           : (dp > 1 ? std::vector<int>{0, 1, 2, 3} : std::vector<int>{0});
        std::vector<Recompute> recs = pins.recompute ? std::vector<Recompute>{*pins.recompute}
                                                     : std::vector<Recompute>{Recompute::none, Recompute::selective,
                                                                              Recompute::full};
        // Sequence parallelism only matters with tensor parallelism.
        std::vector<bool> sps = pins.sequence_parallel ? std::vector<bool>{*pins.sequence_parallel}
                                : tp > 1                ? std::vector<bool>{false, true}
                                                        : std::vector<bool>{false};
        for (int z : zeros)
          for (Recompute r : recs)
            for (bool sp : sps) {
              PlanConfig c;
              c.dp = dp;
              c.tp = tp;
              c.pp = pp;
              c.zero = z;
              c.microbatches = m;
              c.recompute = r;
              c.schedule = pins.schedule.value_or(Schedule::one_f_one_b);
              c.sequence_parallel = sp;
              c.stage_layers = pins.stage_layers;
              cands.push_back(c);
            }
      }
    }
  }

  // The tensor-parallel split of every parameter, per (tp, sp): chosen once, for the plan a
  // cluster would typically run it in (choose, above). Two chains, each degree starting from
  // the one below: without sequence parallelism on this thread, with it on a second one.
  // Profiles depend on (dp, tp, zero, sp, microbatches) only, and each is independent of the
  // others: every core makes them as soon as their splits are there (tp = 1 at once, the
  // others after their chain), then each candidate's lower bound (below).
  using ProfileKey = std::tuple<int64_t, int64_t, int, bool, int64_t>;
  auto key_of = [](const PlanConfig& c) { return std::make_tuple(c.dp, c.tp, c.zero, c.sequence_parallel, c.microbatches); };
  struct Work {
    std::vector<size_t> items;  // the first candidate of each profile key
    std::atomic<size_t> next{0};
  };
  Work whole, with_sp, without_sp;  // tp = 1; tp > 1 with and without sequence parallelism
  {
    std::set<ProfileKey> seen;
    for (size_t i = 0; i < cands.size(); ++i)
      if (seen.insert(key_of(cands[i])).second)
        (cands[i].tp == 1 ? whole : cands[i].sequence_parallel ? with_sp : without_sp).items.push_back(i);
  }
  std::vector<std::optional<ModelProfile>> made(cands.size());
  std::vector<std::string> failed(cands.size());
  std::map<int64_t, std::vector<int8_t>> splits_sp, splits_no_sp;
  std::map<int64_t, std::string> problem_sp, problem_no_sp;  // per tp: why its split cannot run
  auto drain = [&](Work& w, const std::map<int64_t, std::vector<int8_t>>& splits,
                   const std::map<int64_t, std::string>& problems) {
    for (size_t i; (i = w.next.fetch_add(1)) < w.items.size();) {
      const size_t at = w.items[i];
      PlanConfig c = cands[at];
      if (c.tp > 1) {
        if (!problems.at(c.tp).empty()) continue;
        c.tp_dims = splits.at(c.tp);
      }
      try {
        made[at] = profile_model(g, ls, c, cluster, opt.cost);
      } catch (const Error& e) {
        failed[at] = e.what();
      }
    }
  };
  const std::map<int64_t, std::vector<int8_t>> no_splits;
  const std::map<int64_t, std::string> no_problems;
  auto chain = [&](bool sp, std::map<int64_t, std::vector<int8_t>>& out, std::map<int64_t, std::string>& problems) {
    std::vector<int8_t> start;
    for (int64_t tp : tps)
      if (tp > 1 && N % tp == 0 && std::any_of(cands.begin(), cands.end(), [&](const PlanConfig& c) {
            return c.tp == tp && (c.sequence_parallel == sp || !sp);
          })) {
        start = out[tp] = choose(tp, sp, start);
        problems[tp] = tp_split_problem(g, ls, tp, sp, out[tp]);
      }
  };
  std::promise<void> sp_ready, no_sp_ready;
  std::shared_future<void> sp_done = sp_ready.get_future().share(), no_sp_done = no_sp_ready.get_future().share();
  auto run_chain = [&](bool sp) {
    try {
      if (sp) chain(true, splits_sp, problem_sp);
      else chain(false, splits_no_sp, problem_no_sp);
      (sp ? sp_ready : no_sp_ready).set_value();
    } catch (...) {
      (sp ? sp_ready : no_sp_ready).set_exception(std::current_exception());
      throw;
    }
  };
  auto profile_sp = [&] { sp_done.get(); drain(with_sp, splits_sp, problem_sp); };
  auto profile_no_sp = [&] { no_sp_done.get(); drain(without_sp, splits_no_sp, problem_no_sp); };
  const size_t threads = std::max<size_t>(2, std::thread::hardware_concurrency());
  std::vector<std::future<void>> helpers;
  helpers.push_back(std::async(std::launch::async, [&] {
    run_chain(true);
    drain(whole, no_splits, no_problems);
    profile_no_sp();
  }));
  for (size_t t = 2; t < threads; ++t)
    helpers.push_back(std::async(std::launch::async, [&] {
      drain(whole, no_splits, no_problems);
      profile_sp();
      profile_no_sp();
    }));
  std::exception_ptr failure;
  try {
    run_chain(false);
    drain(whole, no_splits, no_problems);
    profile_sp();
  } catch (...) {
    failure = std::current_exception();
  }
  for (auto& h : helpers) {
    try {
      h.get();
    } catch (...) {
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);

  // Split problems drop their degree (without sequence parallelism: the degree entirely).
  for (int64_t tp : tps) {
    if (auto it = problem_no_sp.find(tp); it != problem_no_sp.end() && !it->second.empty()) why_not(it->second);
    else if (auto it2 = problem_sp.find(tp); it2 != problem_sp.end() && !it2->second.empty()) why_not(it2->second);
  }
  std::map<ProfileKey, size_t> profile_at;  // key -> the candidate holding its profile
  {
    std::vector<PlanConfig> kept;
    std::vector<std::optional<ModelProfile>> kept_made;
    for (size_t i = 0; i < cands.size(); ++i) {
      PlanConfig& c = cands[i];
      if (c.tp > 1) {
        if (!problem_no_sp.at(c.tp).empty()) continue;
        if (c.sequence_parallel && !problem_sp.at(c.tp).empty()) continue;
        c.tp_dims = (c.sequence_parallel ? splits_sp : splits_no_sp).at(c.tp);
      }
      if (!failed[i].empty()) why_not(failed[i]);
      profile_at.try_emplace(key_of(c), kept.size());
      kept.push_back(std::move(c));
      kept_made.push_back(std::move(made[i]));
    }
    cands = std::move(kept);
    made = std::move(kept_made);
  }
  if (cands.empty())
    throw Error("plan: no configuration satisfies the pins on " + std::to_string(N) + " devices" +
                (reasons.empty() ? "" : ": " + [&] {
                  std::string all;
                  for (auto& r : reasons) all += (all.empty() ? "" : "; ") + r;
                  return all;
                }()));
  // Null: the configuration cannot run (why_not said why).
  auto profile_or_null = [&](const PlanConfig& c) -> const ModelProfile* {
    const auto& p = made[profile_at.at(key_of(c))];
    return p ? &*p : nullptr;
  };
  auto profile_for = [&](const PlanConfig& c) -> const ModelProfile& { return *profile_or_null(c); };
  // A lower bound on each candidate's step time (below), to simulate the most promising
  // first and stop once the bound passes the runners-up. Independent per candidate: on
  // every core.
  struct Scored {
    PlanConfig c;
    double bound;
    double static_bytes;
  };
  std::vector<std::optional<Scored>> bounds_of(cands.size());
  {
    std::atomic<size_t> next{0};
    auto work = [&] {
      for (size_t i; (i = next.fetch_add(1)) < cands.size();) {
        const PlanConfig& c = cands[i];
        const ModelProfile* profiled = profile_or_null(c);
        if (!profiled) continue;
        const ModelProfile& mp = *profiled;
        double stat = 0;
        for (const auto& l : mp.layers) stat += static_cast<double>(l.repeat) * (l.weight_bytes + l.grad_bytes + l.optimizer_bytes);
        const std::vector<double> busy = layer_busy_times(mp, c);
        const std::vector<int64_t> bounds = stage_bounds(busy, c);
        // Stage s does m microbatches back to back, and cannot start before the stages ahead
        // of it have run the first microbatch's forward, nor finish before they have run the
        // last one's backward: at least m w_s + sum of w_s' over s' < s.
        double bound = 0, ahead = 0;
        for (int64_t s = 0; s < c.pp; ++s) {
          double t = 0;
          for (int64_t l = bounds[s]; l < bounds[s + 1]; ++l) t += busy[l];
          bound = std::max(bound, t * static_cast<double>(c.microbatches) + ahead);
          ahead += t;
        }
        bounds_of[i] = Scored{c, bound, stat / static_cast<double>(c.pp)};
      }
    };
    std::vector<std::future<void>> more;
    for (size_t t = 1; t < std::min(threads, cands.size()); ++t) more.push_back(std::async(std::launch::async, work));
    work();
    for (auto& f : more) f.get();
  }
  std::vector<Scored> scored;
  for (auto& s : bounds_of)
    if (s) scored.push_back(std::move(*s));
  std::stable_sort(scored.begin(), scored.end(), [](const Scored& a, const Scored& b) { return a.bound < b.bound; });
  if (scored.empty()) {
    std::string all;
    for (auto& r : reasons) all += (all.empty() ? "" : "; ") + r;
    throw Error("plan: no configuration can run on " + std::to_string(N) + " devices: " + all);
  }

  SearchResult res;
  res.candidates = static_cast<int64_t>(cands.size());
  std::vector<PlanEstimate> fitting, failing;
  double best_time = std::numeric_limits<double>::infinity();
  double best_alt_cut = std::numeric_limits<double>::infinity();  // keep enough runners-up
  for (const Scored& s : scored) {
    // Plans that cannot fit even their static state are only simulated when nothing fits.
    if (s.static_bytes > cluster.device.memory_bytes && !fitting.empty()) continue;
    if (s.bound >= best_alt_cut) break;
    PlanEstimate e = estimate_plan(profile_for(s.c), s.c, cluster, opt.cost, false);
    ++res.simulated;
    if (e.fits) {
      fitting.push_back(e);
      best_time = std::min(best_time, e.step_time_s);
      // Alternatives need a few more than the winner; stop once the bound passes the k-th.
      if (static_cast<int>(fitting.size()) > opt.alternatives) {
        std::vector<double> t;
        for (auto& f : fitting) t.push_back(f.step_time_s);
        std::nth_element(t.begin(), t.begin() + opt.alternatives, t.end());
        best_alt_cut = t[opt.alternatives];
      }
    } else {
      failing.push_back(e);
    }
  }
  auto by_time = [](const PlanEstimate& a, const PlanEstimate& b) {
    if (a.step_time_s != b.step_time_s) return a.step_time_s < b.step_time_s;
    return a.config.str() < b.config.str();  // deterministic ties
  };
  std::sort(fitting.begin(), fitting.end(), by_time);
  if (!fitting.empty()) {
    res.best = fitting[0];
    // Runners-up: distinct layouts first (a different dp/tp/pp says more than another
    // microbatch count), then the rest.
    std::vector<const PlanEstimate*> picked;
    auto layout = [](const PlanConfig& c) { return std::make_tuple(c.dp, c.tp, c.pp); };
    for (size_t i = 1; i < fitting.size() && static_cast<int>(picked.size()) < opt.alternatives; ++i) {
      bool seen = layout(fitting[i].config) == layout(res.best.config);
      for (auto* p : picked) seen |= layout(p->config) == layout(fitting[i].config);
      if (!seen) picked.push_back(&fitting[i]);
    }
    for (size_t i = 1; i < fitting.size() && static_cast<int>(picked.size()) < opt.alternatives; ++i)
      if (std::find(picked.begin(), picked.end(), &fitting[i]) == picked.end()) picked.push_back(&fitting[i]);
    std::sort(picked.begin(), picked.end(), [&](auto* a, auto* b) { return by_time(*a, *b); });
    for (auto* p : picked) res.alternatives.push_back({*p, why_lost(*p, res.best, cluster)});
    std::sort(failing.begin(), failing.end(), [](auto& a, auto& b) { return a.peak_memory_bytes < b.peak_memory_bytes; });
    for (size_t i = 0; i < failing.size() && static_cast<int>(res.alternatives.size()) < opt.alternatives + 1; ++i)
      res.alternatives.push_back({failing[i], why_lost(failing[i], res.best, cluster)});
  } else {
    std::sort(failing.begin(), failing.end(), [](auto& a, auto& b) { return a.peak_memory_bytes < b.peak_memory_bytes; });
    res.best = failing.at(0);
  }
  res.best_profile = profile_for(res.best.config);
  res.search_time_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

SearchOptions default_search_options(const Graph& g, const ClusterSpec& cluster) {
  SearchOptions so;
  const auto& peaks = cluster.device.peak_flops;
  const bool tensor_cores = peaks.count(DType::bf16) && peaks.at(DType::bf16) > 4 * cluster.device.peak(DType::f32);
  so.cost.precision = tensor_cores ? Precision::mixed : Precision::f32;
  if (!tensor_cores) so.max_microbatch_size = std::max<int64_t>(so.max_microbatch_size, graph_batch(g));
  return so;
}

}  // namespace tessel::planner
