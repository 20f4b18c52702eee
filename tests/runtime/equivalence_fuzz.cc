#include "tests/runtime/equivalence_fuzz.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <typeinfo>

#include "frontend/cli/verify.h"
#include "frontend/models.h"
#include "frontend/optim.h"
#include "graph/error.h"
#include "planner/layers.h"

namespace tessel::fuzz {

namespace {

bool chance(Rng& rng, double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; }

template <class T>
T pick(Rng& rng, const std::vector<T>& v) {
  return v.at(std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng));
}

std::vector<int64_t> divisors(int64_t n) {
  std::vector<int64_t> d;
  for (int64_t i = 1; i <= n; ++i)
    if (n % i == 0) d.push_back(i);
  return d;
}

// Values of `v` that `by` divides; when none, a value times `by`.
std::vector<int64_t> multiples(Rng& rng, std::vector<int64_t> v, int64_t by) {
  std::vector<int64_t> m;
  for (int64_t x : v)
    if (x % by == 0) m.push_back(x);
  if (m.empty()) m.push_back(pick(rng, v) * by);
  return m;
}

// mlp:IN-H1-...-OUT with 1-4 linear layers. Tensor parallelism alternates column and row
// splits from fc1, so it splits the width after each column layer (fc1, fc3) unless that
// layer is the last.
std::string draw_mlp(Rng& rng, int64_t tp, bool, double fit) {
  const int64_t layers = pick<int64_t>(rng, {1, 2, 2, 3, 3, 4});
  std::vector<int64_t> sizes{pick<int64_t>(rng, {5, 8, 12, 16, 33})};
  for (int64_t i = 1; i < layers; ++i) {
    std::vector<int64_t> widths{7, 12, 16, 30, 33, 64};
    const bool split = i % 2 == 1;
    if (split && tp > 1 && chance(rng, fit)) widths = multiples(rng, widths, tp);
    sizes.push_back(pick(rng, widths));
  }
  sizes.push_back(pick<int64_t>(rng, {3, 4, 7, 10}));
  std::string s = "mlp:";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? "-" : "") + std::to_string(sizes[i]);
  return s;
}

}  // namespace

Family key_value_family(std::string name, std::vector<Key> keys) {
  return {name, [name, keys](Rng& rng, int64_t tp, bool sp, double fit) {
            std::map<std::string, int64_t> got;
            std::string s = name + ":";
            for (const Key& k : keys) {
              if (!k.text.empty()) {
                const std::string t = pick(rng, k.text);
                if (!t.empty()) s += (s.back() == ':' ? "" : ",") + k.name + "=" + t;
                continue;
              }
              std::vector<int64_t> v = k.values;
              if (!k.times.empty())
                for (int64_t& x : v) x *= got.at(k.times);
              if (!k.divides.empty()) {
                const int64_t of = got.at(k.divides);
                std::erase_if(v, [&](int64_t x) { return of % x != 0; });
                if (v.empty()) v.push_back(of);
              }
              const int64_t by = k.split == Key::tp ? tp : k.split == Key::sp && sp ? tp : 1;
              if (by > 1 && chance(rng, fit)) {
                std::vector<int64_t> m;
                for (int64_t x : v)
                  if (x % by == 0) m.push_back(x);
                if (!m.empty()) v = m;
              }
              got[k.name] = pick(rng, v);
              s += (s.back() == ':' ? "" : ",") + k.name + "=" + std::to_string(got[k.name]);
            }
            return s;
          }};
}

// Adding a family is one line here (its spec keys, sizes and what tensor and sequence
// parallelism split); keep models tiny so that a case runs in well under a second.
const std::vector<Family>& families() {
  static const std::vector<Family> f{
      {"mlp", draw_mlp},
      key_value_family("gpt", {{"layers", {1, 2, 3, 4}}, {"heads", {1, 2, 3, 4}, Key::tp}, {"d_model", {2, 4, 6, 8}, Key::tp, "heads"}, {"seq", {4, 6, 8, 12, 20}, Key::sp}, {"vocab", {16, 20, 33, 48}, Key::tp}, {"dropout", {}, Key::none, "", "", {"", "", "", "0.1"}}}),
      // Grouped-query attention: kv_heads divides heads.
      key_value_family("llama", {{"layers", {1, 2, 3}}, {"heads", {2, 4}, Key::tp}, {"kv_heads", {1, 2, 4}, Key::tp, "", "heads"}, {"d_model", {8, 16}, Key::tp, "heads"}, {"ffn", {12, 30, 32}, Key::tp}, {"seq", {4, 12, 20}, Key::sp}, {"vocab", {16, 33}, Key::tp}}),
  };
  return f;
}

uint64_t case_seed(uint64_t seed, int64_t index) {
  // splitmix64 of the pair: neighbouring seeds and indices give unrelated cases.
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(index) + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::string Case::command_line() const {
  std::string s = "tessel verify";
  for (const std::string& a : args) s += " " + a;
  return s;
}

namespace {

// Layers the planner cuts stages from (planner/layers.h), counted on the training graph.
int64_t layer_count(const std::string& spec) {
  models::Built b = models::from_spec(spec, 1, true);
  add_training(b.model->graph(), "loss", OptimizerConfig{});
  return static_cast<int64_t>(planner::find_layers(b.model->graph(), "train").layers.size());
}

// `n` split into `parts` positive counts at random.
std::vector<int64_t> random_composition(Rng& rng, int64_t n, int64_t parts) {
  std::vector<int64_t> cuts;
  for (int64_t i = 1; i < n; ++i) cuts.push_back(i);
  std::shuffle(cuts.begin(), cuts.end(), rng);
  cuts.resize(static_cast<size_t>(parts - 1));
  std::sort(cuts.begin(), cuts.end());
  std::vector<int64_t> v;
  int64_t prev = 0;
  for (int64_t c : cuts) v.push_back(c - prev), prev = c;
  v.push_back(n - prev);
  return v;
}

// `--split` rules for a family's parameters: patterns that match in every model the family
// draws, dims each matched parameter has (0 or none for vectors, 0, 1 or none for matrices).
std::string draw_split_pins(Rng& rng, const std::string& family) {
  struct Rule {
    const char* pattern;
    bool matrix;
  };
  static const std::map<std::string, std::vector<Rule>> rules{
      {"mlp", {{"fc1/weight", true}, {"fc*/weight", true}, {"fc*/bias", false}, {"fc1/bias", false}}},
      {"gpt",
       {{"*/attn/q/weight", true}, {"*/attn/proj/weight", true}, {"*/mlp/fc/weight", true},
        {"*/mlp/proj/weight", true}, {"*/mlp/fc/bias", false}, {"wte/weight", true}, {"wpe", true},
        {"*/ln1/gamma", false}}},
      {"llama",
       {{"*/attn/q/weight", true}, {"*/attn/k/weight", true}, {"*/attn/proj/weight", true},
        {"*/mlp/gate/weight", true}, {"*/mlp/down/weight", true}, {"wte/weight", true},
        {"lm_head/weight", true}, {"*/ln2/weight", false}}},
  };
  const std::vector<Rule>& all = rules.at(family);
  const int64_t n = pick<int64_t>(rng, {1, 1, 2, 3});
  std::string out;
  for (int64_t i = 0; i < n; ++i) {
    const Rule& r = all[std::uniform_int_distribution<size_t>(0, all.size() - 1)(rng)];
    const std::string dim = r.matrix ? pick<std::string>(rng, {"0", "1", "none"}) : pick<std::string>(rng, {"0", "none"});
    out += (out.empty() ? "" : ",") + std::string(r.pattern) + "=" + dim;
  }
  if (chance(rng, 0.1)) out += ",*=none";
  return out;
}

}  // namespace

// Most choices are biased towards plans the planner accepts (degrees dividing the devices,
// sizes the degrees divide, a batch that splits); the rest explore refusals.
Case draw_case(uint64_t seed) {
  Rng rng(seed);
  Case c;
  c.seed = seed;
  const int64_t devices = pick<int64_t>(rng, {1, 2, 2, 3, 4, 4, 4, 5, 6, 6, 7, 8, 8});
  std::vector<int64_t> tps;
  for (int64_t d : divisors(devices))
    if (d > 1 && d <= 4) tps.push_back(d);
  const int64_t tp = tps.empty() || chance(rng, 0.35) ? 1 : pick(rng, tps);
  int64_t pp = chance(rng, 0.4) ? 1 : pick(rng, divisors(devices / tp));
  const bool sp_on = tp > 1 ? chance(rng, 0.45) : chance(rng, 0.05);
  const bool sp_off = !sp_on && tp > 1 && chance(rng, 0.5);

  const Family& fam = pick(rng, std::vector<Family>(families()));
  c.family = fam.name;
  const std::string spec = fam.draw(rng, tp, sp_on, 0.85);
  const int64_t layers = layer_count(spec);
  if (pp > layers && chance(rng, 0.9)) {
    int64_t best = 1;
    for (int64_t d : divisors(devices / tp))
      if (d <= layers) best = d;
    pp = best;
  }
  const int64_t dp = devices / (tp * pp);
  const int64_t mb = pp > 1 ? pick<int64_t>(rng, {1, 2, pp, pp + 1, 2 * pp}) : pick<int64_t>(rng, {1, 1, 2, 3});
  const int64_t batch = chance(rng, 0.85) ? dp * mb * pick<int64_t>(rng, {1, 1, 2, 3, 5})
                                          : std::uniform_int_distribution<int64_t>(1, 24)(rng);

  auto& a = c.args;
  auto add = [&](const std::string& k, const std::string& v = "") {
    a.push_back(k);
    if (!v.empty()) a.push_back(v);
  };
  add("--model", spec);
  add("--batch", std::to_string(batch));
  add("--devices", std::to_string(devices));
  if (chance(rng, 0.85)) add("--dp", std::to_string(dp));
  if (chance(rng, 0.85)) add("--tp", std::to_string(tp));
  const bool layout = pp > 1 && pp <= layers && chance(rng, 0.4);
  if (layout) {
    std::string s;
    for (int64_t n : random_composition(rng, layers, pp)) s += (s.empty() ? "" : ",") + std::to_string(n);
    add("--stage-layers", s);
  } else if (chance(rng, 0.85)) {
    add("--pp", std::to_string(pp));
  }
  if (chance(rng, 0.8)) add("--zero", std::to_string(dp > 1 ? pick<int64_t>(rng, {0, 1, 2, 3}) : 0));
  if (chance(rng, 0.85)) add("--microbatches", std::to_string(mb));
  if (chance(rng, pp > 1 ? 0.8 : 0.1)) add("--pipeline-schedule", pick<std::string>(rng, {"1f1b", "gpipe"}));
  if (chance(rng, 0.6)) add("--recompute", pick<std::string>(rng, {"none", "full", "selective"}));
  if (sp_on) add("--sp");
  if (sp_off) add("--no-sp");
  // Split pins, drawn from a generator of their own so that the rest of every case stays
  // as it was drawn before they existed: one to three rules over the family's parameters,
  // each a dim the parameter has or `none`; the planner must honour them or refuse.
  {
    Rng pins(seed ^ 0x9e3779b97f4a7c15ULL);
    if (chance(pins, tp > 1 ? 0.3 : 0.05)) add("--split", draw_split_pins(pins, fam.name));
  }
  // Mostly SGD with momentum. AdamW divides each gradient by its magnitude, so a gradient
  // near zero moves its parameter by an amount that rounding noise decides: a GPT's key bias
  // (zero in exact arithmetic: see `tessel verify --help`), or an MLP weight with |g| ~ eps,
  // where only the summation order differs (one device, three microbatches: 4e-4 apart).
  // AdamW only on MLPs, with a looser tolerance; a wrong shard of its moments or a wrong
  // step count still moves whole tensors by ~lr.
  const bool adamw = fam.name == "mlp" && chance(rng, 0.2);
  add("--optimizer", adamw ? "adamw" : "sgd");
  add("--lr", pick<std::string>(rng, {"0.01", "0.03", "0.1"}));
  if (!adamw) add("--momentum", pick<std::string>(rng, {"0", "0.5", "0.9"}));
  if (chance(rng, 0.3)) add("--clip-norm", pick<std::string>(rng, {"0.05", "0.5", "2"}));
  add("--steps", pick<std::string>(rng, {"1", "2", "2", "3"}));
  add("--seed", std::to_string(rng() % 100000));
  if (chance(rng, 0.3)) add("--bucket-mb", pick<std::string>(rng, {"0.0001", "0.001", "0.01"}));
  if (chance(rng, 0.2)) add("--no-overlap");
  if (adamw) add("--tolerance", "1e-2");
  add("--timeout", "60");
  return c;
}

std::string refusal_category(const std::string& message) {
  // The planner lists every reason; the first names the category.
  std::string first = message;
  if (first.find("no configuration satisfies the pins") != std::string::npos)
    if (auto at = first.find(" devices: "); at != std::string::npos) first = first.substr(at + 10);
  first = first.substr(0, first.find("; "));
  static const std::vector<std::pair<std::vector<std::string>, std::string>> table{
      {{"does not split"}, "batch does not split"},
      {{"is not a multiple of dp x microbatch"}, "batch does not split"},
      {{"does not divide dim"}, "tp does not divide a dim"},
      {{"with sequence parallelism:"}, "sequence parallelism does not apply"},
      {{"does not divide", "devices"}, "degrees do not divide the devices"},
      {{"exceeds the", "layers"}, "more stages than layers"},
      {{"stages for", "layers"}, "more stages than layers"},
      {{"exceeds the", "devices"}, "more devices than given"},
      {{"of the", "devices: pin dp, tp and pp"}, "devices left idle"},
      {{"layers per stage"}, "stage layers do not match the model"},
      {{"at least one layer"}, "a stage without layers"},
  };
  for (auto& [all, category] : table)
    if (std::all_of(all.begin(), all.end(), [&](const std::string& s) { return first.find(s) != std::string::npos; }))
      return category;
  return "other: " + first.substr(0, 80);
}

Outcome run_case(const Case& c, const Corruption& corrupt, double timeout_s) {
  const auto t0 = std::chrono::steady_clock::now();
  Outcome out;
  auto fail = [&](std::string category, std::string message) {
    out.kind = Outcome::failed;
    out.category = std::move(category);
    out.message = std::move(message);
  };
  bool planned = false;
  try {
    std::vector<std::string> a = c.args;
    std::vector<char*> argv;
    for (auto& s : a) argv.push_back(s.data());
    std::optional<cli::VerifyCommand> cmd = cli::parse_verify(static_cast<int>(argv.size()), argv.data());
    if (!cmd) throw Error("the case's command line printed help");
    DevicePlan plan;
    try {
      plan = cmd->plan();
    } catch (const Error& e) {
      out.kind = Outcome::refused;
      out.category = refusal_category(e.what());
      out.message = e.what();
      out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      return out;
    }
    planned = true;
    if (timeout_s > 0) cmd->options.timeout_s = timeout_s;
    if (corrupt) cmd->options.rewrite_programs = [&](std::vector<planner::RankProgram>& p) { out.planted = corrupt(p); };
    const VerifyReport r = verify_plan(cmd->options, plan);
    out.loss_diff = r.max_rel_diff_loss;
    out.param_diff = r.max_rel_diff_params;
    if (!r.ok) {
      char b[256];
      std::snprintf(b, sizeof b, "%s: loss differs by %.3g, parameters by %.3g at %s (tolerance %.3g)",
                    plan.config.str().c_str(), r.max_rel_diff_loss, r.max_rel_diff_params, r.worst_parameter.c_str(),
                    cmd->options.tolerance);
      fail("trains a different model", b);
    }
  } catch (const Error& e) {
    fail(planned ? "error after the plan was accepted" : "command line refused", e.what());
  } catch (const std::exception& e) {
    fail(std::string("not a tessel::Error: ") + typeid(e).name(), e.what());
  } catch (...) {
    fail("not a std::exception", "");
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

int64_t Summary::refused_total() const {
  int64_t n = 0;
  for (auto& [k, v] : refused) n += v;
  return n;
}

std::string Summary::str() const {
  std::string s = "cases " + std::to_string(cases) + ": accepted " + std::to_string(accepted) + " (";
  for (auto it = families.begin(); it != families.end(); ++it)
    s += (it == families.begin() ? "" : ", ") + it->first + " " + std::to_string(it->second);
  s += "), refused " + std::to_string(refused_total()) + ", failed " + std::to_string(failed);
  if (planted > 0) s += "; planted mistake applied in " + std::to_string(planted) + ", caught in " + std::to_string(caught);
  char b[64];
  std::snprintf(b, sizeof b, ", %.1f s\n", seconds);
  s += b;
  for (auto& [k, v] : refused) s += "  refused: " + k + ": " + std::to_string(v) + "\n";
  for (auto& f : failures) s += "  FAILED: " + f + "\n";
  for (auto& m : missed) s += "  MISSED: " + m + "\n";
  return s;
}

Summary run_search(uint64_t seed, int64_t first, int64_t count, const Corruption& corrupt, std::ostream* progress,
                   const std::function<bool(const Case&)>& only, double timeout_s) {
  Summary sum;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = first; i < first + count; ++i) {
    const Case c = draw_case(case_seed(seed, i));
    if (only && !only(c)) continue;
    if (progress) *progress << "case " << i << ": " << c.command_line() << std::endl;
    const Outcome o = run_case(c, corrupt, timeout_s);
    ++sum.cases;
    if (o.kind == Outcome::refused) {
      ++sum.refused[o.category];
      if (progress) *progress << "  refused (" << o.category << "): " << o.message << "\n";
      continue;
    }
    ++sum.accepted;
    ++sum.families[c.family];
    if (!o.planted.empty()) ++sum.planted;
    if (o.kind == Outcome::failed) {
      ++sum.failed;
      if (!o.planted.empty()) ++sum.caught;
      std::string line = c.command_line() + "   # " + o.category + ": " + o.message;
      if (!o.planted.empty()) line += " [planted: " + o.planted + "]";
      std::replace(line.begin(), line.end(), '\n', ' ');
      sum.failures.push_back(line);
      if (progress) *progress << "  FAILED: " << line << "\n";
    } else if (!o.planted.empty()) {
      sum.missed.push_back(c.command_line() + "   # passed with a planted mistake: " + o.planted);
      if (progress) *progress << "  MISSED: " << sum.missed.back() << "\n";
    } else if (progress) {
      char b[32];
      std::snprintf(b, sizeof b, "  ok (%.2f s)\n", o.seconds);
      *progress << b;
    }
  }
  sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return sum;
}

}  // namespace tessel::fuzz
