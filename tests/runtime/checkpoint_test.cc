// Checkpoint files: the safetensors reader and writer (every dtype round trips; truncated,
// mangled and hostile files give an Error naming the file, never a crash), blocks saved under
// one split read back under any other (seeded random shapes, splits and boxes), and the
// directory protocol (partial saves ignored, pruning after the commit, broken checkpoints
// named).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>

#include "graph/error.h"
#include "runtime/checkpoint.h"
#include "runtime/safetensors.h"

namespace tessel::runtime {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

struct TempDir {
  std::string path;
  TempDir() {
    char t[] = "/tmp/tessel_ckpt_XXXXXX";
    path = ::mkdtemp(t);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (fs::path(path) / name).string(); }
};

std::string read_file(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void write_raw(const std::string& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
}

TEST(Safetensors, EveryDtypeRoundTripsWithItsMetadata) {
  TempDir d;
  std::vector<float> f32(12);
  std::iota(f32.begin(), f32.end(), -3.5f);
  std::vector<double> f64 = {1e300, -2};
  std::vector<uint16_t> half = {0x3f80, 0xc000, 0x7fc0, 1, 2};
  std::vector<uint16_t> f16 = {0x3c00};
  std::vector<int64_t> scalar = {int64_t{1} << 40};
  std::vector<uint8_t> flags = {1, 0, 1, 1, 0, 0, 1};
  const std::vector<safetensors::TensorView> in = {
      {"w \"quoted\"\\name", DType::f32, {3, 4}, f32.data()}, {"f64", DType::f64, {2}, f64.data()},
      {"bf16", DType::bf16, {5}, half.data()},                  {"f16", DType::f16, {1, 1}, f16.data()},
      {"empty", DType::i32, {0, 3}, nullptr},                   {"step", DType::i64, {}, scalar.data()},
      {"mask", DType::boolean, {7}, flags.data()}};
  safetensors::write(d / "a.safetensors", in, {{"format", "pt"}, {"note", "line\nbreak"}});
  const std::string bytes = read_file(d / "a.safetensors");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
  EXPECT_EQ(n % 8, 0u);  // the data section starts 8-byte aligned, as the Python package writes it
  safetensors::Reader r(d / "a.safetensors");
  ASSERT_EQ(r.tensors().size(), in.size());
  EXPECT_EQ(r.metadata().at("note"), "line\nbreak");
  for (const auto& t : in) {
    const auto* info = r.find(t.name);
    ASSERT_NE(info, nullptr) << t.name;
    EXPECT_EQ(info->dtype, t.dtype);
    EXPECT_EQ(info->shape, t.shape);
    std::string got(static_cast<size_t>(info->end - info->begin), '\0');
    r.read(*info, got.data());
    const size_t len = static_cast<size_t>(numel(t.shape)) * dtype_size(t.dtype);
    EXPECT_EQ(got, std::string(static_cast<const char*>(t.data), static_cast<const char*>(t.data) + len)) << t.name;
  }
}

// Every prefix of a file and thousands of seeded random mutations of its header: each is
// read or refused with an Error naming the file; nothing crashes (the sanitizer pass runs
// this too).
TEST(Safetensors, TruncatedAndMangledFilesAreRefusedNamingTheFile) {
  TempDir d;
  std::vector<float> a(6, 1.5f);
  std::vector<int64_t> b = {7, 8};
  const std::vector<safetensors::TensorView> in = {{"a", DType::f32, {2, 3}, a.data()}, {"b", DType::i64, {2}, b.data()}};
  safetensors::write(d / "good.safetensors", in, {{"k", "v"}});
  const std::string good = read_file(d / "good.safetensors");
  const std::string path = d / "bad.safetensors";
  for (size_t len = 0; len < good.size(); ++len) {
    write_raw(path, good.substr(0, len));
    try {
      safetensors::Reader r(path);
      ADD_FAILURE() << "a prefix of " << len << " of " << good.size() << " bytes was accepted";
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr(path)) << "prefix " << len;
    }
  }
  std::mt19937 rng(7);
  uint64_t header = 0;
  for (int i = 7; i >= 0; --i) header = (header << 8) | static_cast<unsigned char>(good[static_cast<size_t>(i)]);
  int refused = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string m = good;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t at = rng() % (8 + header);  // the length and the JSON
      m[at] = static_cast<char>(rng() % 3 == 0 ? "{}[]\",:0-9e"[rng() % 12] : static_cast<char>(rng()));
    }
    write_raw(path, m);
    try {
      safetensors::Reader r(path);
      for (const auto& t : r.tensors()) {  // what was accepted reads within the file
        std::string buf(static_cast<size_t>(t.end - t.begin), '\0');
        r.read(t, buf.data());
      }
    } catch (const Error& e) {
      ++refused;
      EXPECT_THAT(e.what(), HasSubstr(path)) << "trial " << trial;
    }
  }
  EXPECT_GT(refused, 2000);
}

TEST(Safetensors, WhatThePythonPackageRefusesIsRefusedWithTheReason) {
  TempDir d;
  auto file = [&](const std::string& json, size_t data_bytes) {
    std::string h = json;
    h.resize((h.size() + 7) / 8 * 8, ' ');
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>(static_cast<uint64_t>(h.size()) >> (8 * i));
    out += h + std::string(data_bytes, '\x01');
    const std::string p = d / "x.safetensors";
    write_raw(p, out);
    return p;
  };
  auto refusal = [&](const std::string& p) -> std::string {
    try {
      safetensors::Reader r(p);
    } catch (const Error& e) {
      return e.what();
    }
    return "(accepted)";
  };
  EXPECT_THAT(refusal(file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})", 16)),
              HasSubstr("tensor 'b' starts at data byte 12, expected 8 (a gap or an overlap)"));
  EXPECT_THAT(refusal(file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 9)), HasSubstr("trailing bytes"));
  EXPECT_THAT(refusal(file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)), HasSubstr("needs 12"));
  EXPECT_THAT(refusal(file(R"({"a":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}})", 8)), HasSubstr("dtype 'f32'"));
  EXPECT_THAT(refusal(file(R"({"__metadata__":{"n":42}})", 0)), HasSubstr("'n' is not a string"));
  EXPECT_THAT(refusal(file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8)), HasSubstr("not a count"));
  EXPECT_THAT(refusal(file(R"({"a":{"dtype":"F32","shape":[2]}})", 8)), HasSubstr("data_offsets"));
  EXPECT_THAT(refusal(file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8)),
              HasSubstr("too many elements"));
  std::string huge(8, '\0');
  huge[5] = 1;  // a header of 2^40 bytes: refused without allocating it
  write_raw(d / "h.safetensors", huge + "{}");
  EXPECT_THAT(refusal(d / "h.safetensors"), HasSubstr("at most 100 MB"));
  EXPECT_EQ(refusal(file(R"({})", 0)), "(accepted)");
}

// A tensor split into a grid of blocks (each dim cut at random places) by the "writers", saved,
// and read back as random boxes: every box equals that part of the whole. Replicated copies of
// a block are written once.
TEST(Checkpoint, BlocksSavedUnderOneSplitReadBackUnderAnyOther) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 40; ++trial) {
    TempDir d;
    const int rank = static_cast<int>(rng() % 4);  // scalars too
    Shape shape;
    for (int i = 0; i < rank; ++i) shape.push_back(1 + static_cast<int64_t>(rng() % 9));
    const TensorType type{trial % 2 ? DType::f32 : DType::f64, shape};
    std::vector<double> whole(static_cast<size_t>(numel(shape)));
    for (size_t i = 0; i < whole.size(); ++i) whole[i] = static_cast<double>(i) * 0.5 - 7;
    // Cuts per dim, then every block of the grid, owned by a random writer (some twice).
    std::vector<std::vector<int64_t>> cuts(static_cast<size_t>(rank));
    for (int i = 0; i < rank; ++i) {
      cuts[static_cast<size_t>(i)] = {0, shape[static_cast<size_t>(i)]};
      const int64_t c = static_cast<int64_t>(rng() % static_cast<unsigned>(shape[static_cast<size_t>(i)] + 1));
      if (c > 0 && c < shape[static_cast<size_t>(i)]) cuts[static_cast<size_t>(i)].insert(cuts[static_cast<size_t>(i)].begin() + 1, c);
    }
    std::vector<std::vector<Shard>> held(3);
    std::vector<std::vector<std::byte>> storage;
    std::vector<size_t> at(static_cast<size_t>(rank), 0);
    auto element = [&](std::span<const int64_t> idx) {
      int64_t flat = 0;
      for (int i = 0; i < rank; ++i) flat = flat * shape[static_cast<size_t>(i)] + idx[static_cast<size_t>(i)];
      return whole[static_cast<size_t>(flat)];
    };
    auto fill = [&](const std::vector<int64_t>& off, const Shape& s, auto* out) {
      std::vector<int64_t> idx(static_cast<size_t>(rank));
      for (int64_t e = 0; e < numel(s); ++e) {
        int64_t rest = e;
        for (int i = rank - 1; i >= 0; --i) {
          idx[static_cast<size_t>(i)] = off[static_cast<size_t>(i)] + rest % s[static_cast<size_t>(i)];
          rest /= s[static_cast<size_t>(i)];
        }
        out[e] = static_cast<std::remove_pointer_t<decltype(out)>>(element(idx));
      }
    };
    for (;;) {
      std::vector<int64_t> off(static_cast<size_t>(rank));
      Shape s(static_cast<size_t>(rank));
      for (int i = 0; i < rank; ++i) {
        off[static_cast<size_t>(i)] = cuts[static_cast<size_t>(i)][at[static_cast<size_t>(i)]];
        s[static_cast<size_t>(i)] = cuts[static_cast<size_t>(i)][at[static_cast<size_t>(i)] + 1] - off[static_cast<size_t>(i)];
      }
      storage.emplace_back(static_cast<size_t>(numel(s)) * dtype_size(type.dtype));
      if (type.dtype == DType::f32) fill(off, s, reinterpret_cast<float*>(storage.back().data()));
      else fill(off, s, reinterpret_cast<double*>(storage.back().data()));
      const Shard block{"t", type, off, s, storage.back().data()};
      held[rng() % 3].push_back(block);
      if (rng() % 3 == 0) held[rng() % 3].push_back(block);  // a replica
      int i = rank - 1;
      while (i >= 0 && ++at[static_cast<size_t>(i)] + 1 == cuts[static_cast<size_t>(i)].size()) {
        at[static_cast<size_t>(i)] = 0;
        --i;
      }
      if (i < 0) break;
    }
    CheckpointState st;
    st.step = trial;
    save_checkpoint(d.path, st, distinct_blocks(held));
    const Checkpoint ck(d.path);
    ASSERT_EQ(ck.state().step, trial);
    for (int box = 0; box < 10; ++box) {
      std::vector<int64_t> off(static_cast<size_t>(rank));
      Shape s(static_cast<size_t>(rank));
      for (int i = 0; i < rank; ++i) {
        const int64_t n = shape[static_cast<size_t>(i)];
        off[static_cast<size_t>(i)] = static_cast<int64_t>(rng() % static_cast<unsigned>(n));
        s[static_cast<size_t>(i)] = 1 + static_cast<int64_t>(rng() % static_cast<unsigned>(n - off[static_cast<size_t>(i)]));
      }
      std::vector<std::byte> got(static_cast<size_t>(numel(s)) * dtype_size(type.dtype)), want(got.size());
      ck.read("t", type, off, s, got.data());
      if (type.dtype == DType::f32) fill(off, s, reinterpret_cast<float*>(want.data()));
      else fill(off, s, reinterpret_cast<double*>(want.data()));
      ASSERT_EQ(got, want) << "trial " << trial << " shape " << shape_str(shape) << " box at " << shape_str(off) << " of "
                           << shape_str(s);
    }
  }
}

TEST(Checkpoint, PartialSavesAreIgnoredOldOnesPrunedAfterTheCommitAndBrokenOnesNamed) {
  TempDir d;
  std::vector<float> w(8, 2.f);
  std::vector<int64_t> step(1, 0);
  auto save = [&](int64_t s, int keep) {
    step[0] = s;
    CheckpointState st;
    st.step = s;
    st.seed = 5;
    st.plan = "dp=2";
    const std::vector<std::vector<Shard>> files = {
        {Shard{"w", {DType::f32, {2, 8}}, {0, 0}, {1, 8}, w.data()}, Shard{"step", {DType::i64, {}}, {}, {}, step.data()}},
        {Shard{"w", {DType::f32, {2, 8}}, {1, 0}, {1, 8}, w.data()}}};
    return save_checkpoint(d.path, st, files, keep);
  };
  save(1, 0);
  save(2, 2);
  fs::create_directory(d / "step-00000009.partial");  // a save that a crash cut off
  write_raw(d / "step-00000009.partial/rank-00000.safetensors", "junk");
  fs::create_directory(d / "step-00000008");  // no metadata: not committed
  const std::string third = save(3, 2);
  EXPECT_FALSE(fs::exists(d / "step-00000001"));  // pruned to the newest 2
  EXPECT_TRUE(fs::exists(d / "step-00000002"));
  std::vector<std::string> ignored;
  EXPECT_EQ(latest_checkpoint(d.path, &ignored), third);
  EXPECT_EQ(ignored.size(), 2u);
  const Checkpoint ck(d.path);
  EXPECT_EQ(ck.state().step, 3);
  std::vector<float> got(16);
  ck.read("w", {DType::f32, {2, 8}}, std::vector<int64_t>{0, 0}, std::vector<int64_t>{2, 8}, got.data());
  EXPECT_EQ(got, std::vector<float>(16, 2.f));
  int64_t s = 0;
  ck.read("step", {DType::i64, {}}, {}, {}, &s);
  EXPECT_EQ(s, 3);
  EXPECT_THAT([&] { ck.read("w", {DType::f32, {4, 4}}, std::vector<int64_t>{0, 0}, std::vector<int64_t>{4, 4}, got.data()); }, 
              ::testing::ThrowsMessage<Error>(HasSubstr("variable 'w' is F32[2,8] in the checkpoint, F32[4,4] in the model")));
  EXPECT_THAT([&] { ck.read("v", {DType::f32, {1}}, std::vector<int64_t>{0}, std::vector<int64_t>{1}, got.data()); },
              ::testing::ThrowsMessage<Error>(HasSubstr("no variable 'v'")));

  // Broken checkpoints: each refused naming the file and what is wrong.
  auto refusal = [&](const std::string& dir) -> std::string {
    try {
      Checkpoint c(dir);
    } catch (const Error& e) {
      return e.what();
    }
    return "(accepted)";
  };
  const std::string two = d / "step-00000002";
  const std::string meta = read_file(two + "/checkpoint.json");
  fs::remove(two + "/rank-00001.safetensors");
  EXPECT_THAT(refusal(two), HasSubstr("rank-00001.safetensors: cannot open"));
  fs::copy_file(third + "/rank-00001.safetensors", two + "/rank-00001.safetensors");
  EXPECT_EQ(refusal(two), "(accepted)");
  const std::string shard = read_file(two + "/rank-00000.safetensors");
  write_raw(two + "/rank-00000.safetensors", shard.substr(0, shard.size() - 3));
  EXPECT_THAT(refusal(two), HasSubstr("rank-00000.safetensors: not a valid safetensors file"));
  write_raw(two + "/rank-00000.safetensors", shard);
  write_raw(two + "/checkpoint.json", meta.substr(0, meta.size() / 2));
  EXPECT_THAT(refusal(two), HasSubstr("checkpoint.json: not valid checkpoint metadata"));
  std::string outside = meta;
  const std::string victim = "\"rank-00001.safetensors\"";
  outside.replace(outside.find(victim), victim.size(), "\"../../etc/passwd\"");
  write_raw(two + "/checkpoint.json", outside);
  EXPECT_THAT(refusal(two), HasSubstr("not a file of the checkpoint's directory"));
  fs::remove(two + "/checkpoint.json");
  EXPECT_THAT(refusal(d / "nowhere"), HasSubstr("no such directory"));
}

}  // namespace
}  // namespace tessel::runtime
