// The randomized equivalence search: seeded random models and plans, each checked the way
// `tessel verify` checks it (its own command-line parsing, plan_for_devices, verify_plan and
// tolerance), so every case is a `tessel verify` command line and a failure prints it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "planner/partition.h"

namespace tessel::fuzz {

using Rng = std::mt19937_64;

// A model family: draws a spec string. A family's spec must be accepted by models::from_spec.
// `tp` is the tensor-parallel degree the plan will pin (1: none), `sp` whether sequence
// parallelism is pinned on: with probability `fit` the family draws sizes they divide, so
// that most cases are accepted; otherwise anything in its range (odd, non-dividing sizes).
struct Family {
  std::string name;
  std::function<std::string(Rng& rng, int64_t tp, bool sp, double fit)> draw;
};
const std::vector<Family>& families();

// One spec key of a `name:key=value,...` family: its candidate values, and how tensor and
// sequence parallelism split it.
struct Key {
  std::string name;
  std::vector<int64_t> values;
  enum Split { none, tp, sp } split = none;
  std::string times = {};    // non-empty: the value is values[i] x this key's value (d_model = heads x head dim)
  std::string divides = {};  // non-empty: the value must divide this key's value (kv_heads of heads)
  // Instead of values: spellings written as given ("0.1"); "" leaves the key out.
  std::vector<std::string> text = {};
};
// A family whose spec is "name:k1=v1,k2=v2,..." drawn key by key in the order given.
Family key_value_family(std::string name, std::vector<Key> keys);

// One case: the arguments after `tessel verify`.
struct Case {
  uint64_t seed = 0;  // the case's own seed (the search seed and its index mixed)
  std::string family;
  std::vector<std::string> args;
  std::string command_line() const;  // "tessel verify --model ... --seed ..."
};
Case draw_case(uint64_t case_seed);
// The seed of case `index` of a search seeded `seed`.
uint64_t case_seed(uint64_t seed, int64_t index);

// A planted mistake: rewrites the rank programs; returns a description of what it changed,
// or "" when the programs hold nothing it applies to.
using Corruption = std::function<std::string(std::vector<planner::RankProgram>&)>;

struct Outcome {
  enum Kind { passed, refused, failed } kind = passed;
  std::string category;  // refused: the reason's category; failed: what went wrong
  std::string message;   // the planner's reason, or the differences / the error
  std::string planted;   // the corruption applied ("" when none applied)
  double loss_diff = 0, param_diff = 0;  // verify's largest relative differences (accepted cases)
  double seconds = 0;
};
// Runs one case; a corruption (if given) is applied after partitioning. Refusals must be
// tessel::Error; any other exception, and any error after the plan was accepted, is a failure.
Outcome run_case(const Case& c, const Corruption& corrupt = {}, double timeout_s = 0);
// The category of a planner refusal: "batch does not split", "tp does not divide a dim", ...
std::string refusal_category(const std::string& message);

struct Summary {
  int64_t cases = 0, accepted = 0, failed = 0;
  int64_t planted = 0, caught = 0;  // accepted cases a corruption applied to; of which failed
  std::map<std::string, int64_t> refused;  // by category
  std::map<std::string, int64_t> families;  // accepted cases per model family
  std::vector<std::string> failures;        // one line each: the reproduction, then why
  std::vector<std::string> missed;          // cases that passed with a planted mistake
  double seconds = 0;
  int64_t refused_total() const;
  std::string str() const;  // the summary lines
};
// Runs cases [first, first + count) of the search seeded `seed`. progress: one line per case
// (nullptr: none). `only` (if given) keeps the cases it accepts (the others are not run nor counted).
Summary run_search(uint64_t seed, int64_t first, int64_t count, const Corruption& corrupt = {},
                   std::ostream* progress = nullptr, const std::function<bool(const Case&)>& only = {},
                   double timeout_s = 0);

}  // namespace tessel::fuzz
