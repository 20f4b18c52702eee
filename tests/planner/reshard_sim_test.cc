// Resharding as a class: random tensors on random meshes (1-3 axes, odd sizes, several axes
// splitting one dim), every pair of placements, the steps reshard() gives run on simulated
// devices with the runtime's collective semantics; every device must end with exactly the
// block shard_offsets says it holds. A failure prints the mesh, the shape and both
// placements.
#include <gtest/gtest.h>

#include <random>

#include "graph/error.h"
#include "planner/partition.h"
#include "planner/sharding.h"

namespace tessel::planner {
namespace {

// A dense n-d block of doubles, row-major.
struct Block {
  Shape shape;
  std::vector<double> v;
};

int64_t flat(const Shape& shape, const std::vector<int64_t>& idx) {
  int64_t f = 0;
  for (size_t d = 0; d < shape.size(); ++d) f = f * shape[d] + idx[d];
  return f;
}

// Calls fn(index) for every index of `shape`.
template <class F>
void for_each_index(const Shape& shape, F fn) {
  const int64_t n = numel(shape);
  std::vector<int64_t> idx(shape.size(), 0);
  for (int64_t i = 0; i < n; ++i) {
    fn(idx);
    for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

Block sub_block(const Block& b, const Shape& shape, const std::vector<int64_t>& off) {
  Block out{shape, std::vector<double>(static_cast<size_t>(numel(shape)))};
  for_each_index(shape, [&](const std::vector<int64_t>& idx) {
    std::vector<int64_t> src(idx);
    for (size_t d = 0; d < idx.size(); ++d) src[d] += off[d];
    out.v[flat(shape, idx)] = b.v[flat(b.shape, src)];
  });
  return out;
}

Block concat(const std::vector<Block>& parts, int dim) {
  Block out{parts[0].shape, {}};
  out.shape[dim] *= static_cast<int64_t>(parts.size());
  out.v.resize(static_cast<size_t>(numel(out.shape)));
  for (size_t p = 0; p < parts.size(); ++p)
    for_each_index(parts[p].shape, [&](const std::vector<int64_t>& idx) {
      std::vector<int64_t> dst(idx);
      dst[dim] += static_cast<int64_t>(p) * parts[p].shape[dim];
      out.v[flat(out.shape, dst)] = parts[p].v[flat(parts[p].shape, idx)];
    });
  return out;
}

Block piece(const Block& b, int dim, int64_t k, int64_t q) {
  Shape s = b.shape;
  s[dim] /= k;
  std::vector<int64_t> off(s.size(), 0);
  off[dim] = q * s[dim];
  return sub_block(b, s, off);
}

// What device `coords` holds of `global` under `s`: its block, scaled by its share of every
// partial sum (weights[axis][coordinate], summing to 1 over each axis).
Block holding(const Block& global, const Sharding& s, const Mesh& m, const std::vector<int64_t>& coords,
              const std::vector<std::vector<double>>& weights) {
  Block b = sub_block(global, local_shape(global.shape, s, m), shard_offsets(global.shape, s, m, coords));
  for (size_t a = 0; a < s.size(); ++a)
    if (s[a].is_partial())
      for (double& x : b.v) x *= weights[a][coords[a]];
  return b;
}

// Runs one step on every group of the step's axis, as the runtime's collectives do
// (members in group order).
void run_step(const ReshardStep& st, const Mesh& m, std::vector<Block>& dev) {
  const int a = st.axis;
  const int64_t k = m.sizes[a];
  std::vector<Block> next(dev.size());
  for (int64_t r = 0; r < m.size(); ++r) {
    const std::vector<int64_t> group = m.group(r, a);
    const int64_t q = m.coords(r)[a];
    auto sum = [&] {
      Block s = dev[group[0]];
      for (size_t i = 1; i < group.size(); ++i)
        for (size_t j = 0; j < s.v.size(); ++j) s.v[j] += dev[group[i]].v[j];
      return s;
    };
    if (!st.op) {
      next[r] = piece(dev[r], st.to.dim, k, q);
      continue;
    }
    switch (*st.op) {
      case Collective::all_reduce: next[r] = sum(); break;
      case Collective::reduce_scatter: next[r] = piece(sum(), st.to.dim, k, q); break;
      case Collective::all_gather: {
        std::vector<Block> parts;
        for (int64_t g : group) parts.push_back(dev[g]);
        next[r] = concat(parts, st.from.dim);
        break;
      }
      case Collective::all_to_all: {
        std::vector<Block> parts;  // member p's piece q along the new split dim
        for (int64_t g : group) parts.push_back(piece(dev[g], st.to.dim, k, q));
        next[r] = concat(parts, st.from.dim);
        break;
      }
      default: FAIL() << "resharding inserts no " << collective_name(*st.op);
    }
  }
  dev = std::move(next);
}

std::string describe(const Mesh& m, const Shape& shape, const Sharding& from, const Sharding& to) {
  return "mesh " + m.str() + ", shape " + shape_str(shape) + ": " + sharding_str(from) + " -> " + sharding_str(to);
}

// Every placement of `shape` on axis a: R, P, S(d) for each dim the axis can split (given
// the other axes' splits, which shrink the dim).
std::vector<Placement> choices(bool partial) {
  std::vector<Placement> c{Placement::R(), Placement::S(0), Placement::S(1), Placement::S(2)};
  if (partial) c.push_back(Placement::P());
  return c;
}

Sharding random_sharding(std::mt19937& rng, const Shape& shape, const Mesh& m, bool partial) {
  for (;;) {
    Sharding s;
    for (int a = 0; a < m.rank_of_axes(); ++a) {
      auto c = choices(partial);
      Placement p = c[rng() % c.size()];
      if (p.is_shard() && p.dim >= static_cast<int>(shape.size())) p = Placement::R();
      s.push_back(p);
    }
    try {
      local_shape(shape, s, m);
      return s;
    } catch (const Error&) {
    }
  }
}

TEST(Reshard, RandomPlacementsMoveExactlyTheRightBlocks) {
  std::mt19937 rng(20261202);
  int checked = 0, nested = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const int axes = 1 + static_cast<int>(rng() % 3);
    std::vector<std::string> names;
    std::vector<int64_t> sizes;
    for (int a = 0; a < axes; ++a) {
      names.push_back("a" + std::to_string(a));
      sizes.push_back(std::vector<int64_t>{1, 2, 2, 3, 4}[rng() % 5]);
    }
    const Mesh m(names, sizes);
    const int rank = 1 + static_cast<int>(rng() % 3);
    Shape shape;
    for (int d = 0; d < rank; ++d) {
      int64_t n = 1;  // a product of some axis sizes, so several axes can split it
      for (int a = 0; a < axes; ++a)
        if (rng() % 2) n *= sizes[a];
      shape.push_back(n * (1 + static_cast<int64_t>(rng() % 2)));
    }
    const Sharding from = random_sharding(rng, shape, m, true);
    Sharding to = random_sharding(rng, shape, m, false);
    for (int a = 0; a < axes; ++a)
      if (from[a].is_partial() && rng() % 4 == 0) to[a] = from[a];  // some sums stay partial
    try {
      local_shape(shape, to, m);
    } catch (const Error&) {
      continue;
    }
    const std::string what = describe(m, shape, from, to);
    Block global{shape, std::vector<double>(static_cast<size_t>(numel(shape)))};
    for (double& x : global.v) x = std::uniform_real_distribution<double>(-1, 1)(rng);
    std::vector<std::vector<double>> weights(axes);
    for (int a = 0; a < axes; ++a) {
      double total = 0;
      for (int64_t i = 0; i < sizes[a]; ++i) total += weights[a].emplace_back(0.5 + (rng() % 100) / 100.0);
      for (double& w : weights[a]) w /= total;
    }
    std::vector<Block> dev;
    for (int64_t r = 0; r < m.size(); ++r) dev.push_back(holding(global, from, m, m.coords(r), weights));
    std::vector<ReshardStep> st;
    ASSERT_NO_THROW(st = reshard(TensorType{DType::f32, shape}, from, to, m)) << what;
    for (const ReshardStep& s : st) run_step(s, m, dev);
    nested += st.size() >= 3;
    for (int64_t r = 0; r < m.size(); ++r) {
      const Block want = holding(global, to, m, m.coords(r), weights);
      ASSERT_EQ(dev[r].shape, want.shape) << what << ", rank " << r;
      for (size_t i = 0; i < want.v.size(); ++i)
        ASSERT_NEAR(dev[r].v[i], want.v[i], 1e-9) << what << ", rank " << r << ", element " << i;
    }
    ++checked;
  }
  EXPECT_GT(checked, 2000);
  EXPECT_GT(nested, 100);  // cases where inner splits had to be undone and redone
}

// The case that trained the wrong model: a gradient split along the sequence over tp and
// partial over dp, reduce-scattered over dp for ZeRO along the same dim; dp's part lies in
// tp's piece, so one reduce-scatter does it. Taking dp's part first instead needs tp's
// piece gathered and split again.
TEST(Reshard, SplitsOfOneDimNestWithTheLastAxisOutermost) {
  const Mesh m({"dp", "tp"}, {2, 2});
  const TensorType t{DType::f32, {32, 64}};
  auto st = reshard(t, {Placement::P(), Placement::S(0)}, {Placement::S(0), Placement::S(0)}, m);
  ASSERT_EQ(st.size(), 1u);
  EXPECT_EQ(st[0].op, Collective::reduce_scatter);
  EXPECT_EQ(st[0].axis, 0);
  EXPECT_EQ(shard_offsets(t.shape, {Placement::S(0), Placement::S(0)}, m, {1, 0}), (std::vector<int64_t>{8, 0}));
  EXPECT_EQ(shard_offsets(t.shape, {Placement::S(0), Placement::S(0)}, m, {0, 1}), (std::vector<int64_t>{16, 0}));
  st = reshard(t, {Placement::S(0), Placement::P()}, {Placement::S(0), Placement::S(0)}, m);
  ASSERT_EQ(st.size(), 3u);
  EXPECT_EQ(st[0].op, Collective::all_gather);  // dp's part back first
  EXPECT_EQ(st[0].axis, 0);
  EXPECT_EQ(st[1].op, Collective::reduce_scatter);
  EXPECT_EQ(st[1].axis, 1);
  EXPECT_FALSE(st[2].op);
  EXPECT_EQ(st[2].axis, 0);
}

}  // namespace
}  // namespace tessel::planner
