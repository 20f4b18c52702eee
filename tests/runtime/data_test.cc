// Data loading: real Fashion-MNIST, hostile idx files (clear errors, bounded memory),
// sampler determinism and the data-parallel equivalence later layers rely on.
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <new>
#include <numeric>
#include <set>

#include "graph/error.h"
#include "runtime/data.h"

// Records the largest single heap request, to show hostile headers allocate nothing big.
static std::atomic<size_t> g_largest_alloc{0};
void* operator new(size_t n) {
  size_t prev = g_largest_alloc.load(std::memory_order_relaxed);
  while (n > prev && !g_largest_alloc.compare_exchange_weak(prev, n, std::memory_order_relaxed)) {
  }
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
// Not inlined: GCC would then see free() on memory from operator new and warn.
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace tessel::runtime {
namespace {

using Bytes = std::vector<uint8_t>;

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "tessel_data_test_XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void write_plain(const std::string& path, const Bytes& b) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), std::ssize(b));
}

void write_gz(const std::string& path, const Bytes& b) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  if (!b.empty()) {
    EXPECT_EQ(gzwrite(f, b.data(), static_cast<unsigned>(b.size())), static_cast<int>(b.size()));
  }
  gzclose(f);
}

void put32(Bytes& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
}

Bytes idx_images(uint32_t count, uint32_t rows, uint32_t cols, size_t data_bytes, uint32_t magic = 0x803) {
  Bytes b;
  put32(b, magic);
  put32(b, count);
  put32(b, rows);
  put32(b, cols);
  for (size_t i = 0; i < data_bytes; ++i) b.push_back(static_cast<uint8_t>(i * 7));
  return b;
}

Bytes idx_labels(uint32_t count, size_t data_bytes, uint32_t magic = 0x801) {
  Bytes b;
  put32(b, magic);
  put32(b, count);
  for (size_t i = 0; i < data_bytes; ++i) b.push_back(static_cast<uint8_t>(i % 10));
  return b;
}

// Runs fn, which must throw tessel::Error whose message holds every needle, without any
// single allocation over 64 MiB.
void expect_error(const std::function<void()>& fn, std::vector<std::string> needles) {
  g_largest_alloc = 0;
  try {
    fn();
    ADD_FAILURE() << "no error; expected one containing " << needles[0];
  } catch (const Error& e) {
    if (std::getenv("TESSEL_PRINT_ERRORS")) std::printf("  error: %s\n", e.what());
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
  EXPECT_LT(g_largest_alloc.load(), size_t{64} << 20);
}

TEST(FashionMnist, RealData) {
  if (!std::filesystem::is_directory(kFashionMnistDir))
    GTEST_SKIP() << kFashionMnistDir << " is missing: apt-get install dataset-fashion-mnist";
  TrainTest t = load_fashion_mnist();
  ASSERT_EQ(t.train.count, 60000);
  ASSERT_EQ(t.test.count, 10000);
  for (const ImageDataset* d : {&t.train, &t.test}) {
    EXPECT_EQ(d->rows, 28);
    EXPECT_EQ(d->cols, 28);
    EXPECT_EQ(d->features(), 784);
    EXPECT_EQ(d->num_classes, 10);
    EXPECT_EQ(std::ssize(d->images), d->count * 784);
    EXPECT_EQ(std::ssize(d->labels), d->count);
  }
  std::vector<int64_t> per_class(10, 0);
  for (uint8_t l : t.train.labels) {
    ASSERT_LT(l, 10);
    ++per_class[l];
  }
  for (int64_t c : per_class) EXPECT_EQ(c, 6000);
  for (uint8_t l : t.test.labels) ASSERT_LT(l, 10);
  const double sum = std::accumulate(t.train.images.begin(), t.train.images.end(), 0.0);
  EXPECT_NEAR(sum / static_cast<double>(t.train.images.size()) / 255.0, 0.286, 0.01);
}

TEST(FashionMnist, MissingDirectorySaysWhatToInstall) {
  expect_error([] { load_fashion_mnist("/nonexistent/fashion-mnist"); },
               {"/nonexistent/fashion-mnist", "apt-get install dataset-fashion-mnist"});
}

TEST(LoadIdx, ReadsGzipAndPlainFiles) {
  TempDir dir;
  const Bytes file = idx_images(3, 2, 4, 24);
  write_gz(dir.file("img.gz"), file);
  write_plain(dir.file("lab"), idx_labels(3, 3));
  ImageDataset d = load_idx(dir.file("img.gz"), dir.file("lab"));
  EXPECT_EQ(d.count, 3);
  EXPECT_EQ(d.rows, 2);
  EXPECT_EQ(d.cols, 4);
  EXPECT_EQ(d.images, Bytes(file.begin() + 16, file.end()));
  EXPECT_EQ(d.labels, (Bytes{0, 1, 2}));
}

TEST(LoadIdx, TruncatedImagesSayExpectedAndFoundBytes) {
  TempDir dir;
  write_gz(dir.file("img.gz"), idx_images(10, 28, 28, 100));
  write_gz(dir.file("lab.gz"), idx_labels(10, 10));
  expect_error([&] { load_idx(dir.file("img.gz"), dir.file("lab.gz")); },
               {dir.file("img.gz"), "truncated", "7840", "found 100"});
}

TEST(LoadIdx, TruncatedHeader) {
  TempDir dir;
  Bytes b = idx_images(1, 1, 1, 0);
  b.resize(7);
  write_gz(dir.file("img.gz"), b);
  expect_error([&] { load_idx(dir.file("img.gz"), dir.file("lab.gz")); },
               {dir.file("img.gz"), "expected 16 bytes, found 7"});
}

TEST(LoadIdx, BadMagic) {
  TempDir dir;
  write_gz(dir.file("img.gz"), idx_images(1, 1, 1, 1, 0));
  write_gz(dir.file("lab.gz"), idx_labels(1, 1));
  expect_error([&] { load_idx(dir.file("img.gz"), dir.file("lab.gz")); },
               {dir.file("img.gz"), "bad idx magic 0x00000000 (expected 0x00000803 for ubyte images)"});
  // Files passed the wrong way round.
  write_gz(dir.file("img.gz"), idx_images(1, 1, 1, 1));
  expect_error([&] { load_idx(dir.file("lab.gz"), dir.file("img.gz")); },
               {dir.file("lab.gz"), "bad idx magic 0x00000801 (expected 0x00000803"});
  expect_error([&] { load_idx(dir.file("img.gz"), dir.file("img.gz")); },
               {dir.file("img.gz"), "bad idx magic 0x00000803 (expected 0x00000801 for ubyte labels)"});
}

TEST(LoadIdx, HugeHeaderCountIsRejectedWithoutAllocating) {
  TempDir dir;
  write_gz(dir.file("img.gz"), idx_images(uint32_t{1} << 31, 1, 1, 16));
  write_gz(dir.file("lab.gz"), idx_labels(1, 1));
  expect_error([&] { load_idx(dir.file("img.gz"), dir.file("lab.gz")); }, {dir.file("img.gz"), "2147483648"});
  write_gz(dir.file("img.gz"), idx_images(0xffffffffu, 0xffffffffu, 0xffffffffu, 16));
  expect_error([&] { load_idx(dir.file("img.gz"), dir.file("lab.gz")); }, {dir.file("img.gz"), "1 GiB"});
  // Under the limit but far more than the file holds: the buffer grows only with the data.
  write_gz(dir.file("img.gz"), idx_images(1000000, 28, 28, 16));
  expect_error([&] { load_idx(dir.file("img.gz"), dir.file("lab.gz")); },
               {dir.file("img.gz"), "784000000", "found 16"});
  write_gz(dir.file("img.gz"), idx_images(1, 1, 1, 1));
  write_gz(dir.file("lab.gz"), idx_labels(0xffffffffu, 16));
  expect_error([&] { load_idx(dir.file("img.gz"), dir.file("lab.gz")); }, {dir.file("lab.gz"), "4294967295"});
}

TEST(LoadIdx, CountMismatch) {
  TempDir dir;
  write_gz(dir.file("img.gz"), idx_images(4, 2, 2, 16));
  write_gz(dir.file("lab.gz"), idx_labels(3, 3));
  expect_error([&] { load_idx(dir.file("img.gz"), dir.file("lab.gz")); },
               {dir.file("lab.gz"), "3 labels", dir.file("img.gz"), "4 images"});
}

TEST(LoadIdx, TrailingDataAndBadLabels) {
  TempDir dir;
  write_gz(dir.file("img.gz"), idx_images(2, 2, 2, 9));
  write_gz(dir.file("lab.gz"), idx_labels(2, 2));
  expect_error([&] { load_idx(dir.file("img.gz"), dir.file("lab.gz")); }, {dir.file("img.gz"), "trailing"});
  write_gz(dir.file("img.gz"), idx_images(2, 2, 2, 8));
  Bytes labels = idx_labels(2, 2);
  labels.back() = 200;
  write_gz(dir.file("lab.gz"), labels);
  expect_error([&] { load_idx(dir.file("img.gz"), dir.file("lab.gz")); }, {dir.file("lab.gz"), "label 200"});
}

TEST(LoadIdx, NotGzipAndCorruptGzip) {
  TempDir dir;
  const std::string text = "this is not an idx file, nor gzip\n";
  write_plain(dir.file("img.gz"), Bytes(text.begin(), text.end()));
  write_gz(dir.file("lab.gz"), idx_labels(1, 1));
  expect_error([&] { load_idx(dir.file("img.gz"), dir.file("lab.gz")); }, {dir.file("img.gz"), "bad idx magic"});
  // A gzip stream cut short, and one with its compressed body overwritten.
  write_gz(dir.file("full.gz"), idx_images(50, 28, 28, 50 * 784));
  std::ifstream in(dir.file("full.gz"), std::ios::binary);
  Bytes gz((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  write_plain(dir.file("cut.gz"), Bytes(gz.begin(), gz.begin() + std::ssize(gz) / 2));
  expect_error([&] { load_idx(dir.file("cut.gz"), dir.file("lab.gz")); }, {dir.file("cut.gz")});
  for (size_t i = 20; i < gz.size(); ++i) gz[i] = static_cast<uint8_t>(i * 131);
  write_plain(dir.file("bad.gz"), gz);
  expect_error([&] { load_idx(dir.file("bad.gz"), dir.file("lab.gz")); }, {dir.file("bad.gz")});
}

TEST(LoadIdx, MissingFile) {
  TempDir dir;
  write_gz(dir.file("img.gz"), idx_images(1, 1, 1, 1));
  expect_error([&] { load_idx(dir.file("nope.gz"), dir.file("lab.gz")); }, {dir.file("nope.gz"), "cannot open"});
  expect_error([&] { load_idx(dir.file("img.gz"), dir.file("nope.gz")); }, {dir.file("nope.gz"), "cannot open"});
}

std::vector<int64_t> epoch_order(const BatchSampler& s) {
  std::vector<int64_t> all;
  for (int64_t b = 0; b < s.batches_per_epoch(); ++b) {
    auto idx = s.batch(b);
    all.insert(all.end(), idx.begin(), idx.end());
  }
  return all;
}

TEST(BatchSampler, EpochIsAPermutation) {
  BatchSampler s(100, 10, 42);
  std::vector<int64_t> all = epoch_order(s);
  ASSERT_EQ(all.size(), 100u);
  std::vector<int64_t> sorted = all;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 100; ++i) EXPECT_EQ(sorted[i], i);
  std::vector<int64_t> identity(100);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_NE(all, identity);
  EXPECT_EQ(epoch_order(BatchSampler(100, 10, 42, 0, 1, false)), identity);
}

TEST(BatchSampler, DeterministicPerSeedAndEpoch) {
  BatchSampler a(1000, 32, 7), b(1000, 32, 7), c(1000, 32, 8);
  EXPECT_EQ(epoch_order(a), epoch_order(b));
  EXPECT_NE(epoch_order(a), epoch_order(c));
  const auto first = epoch_order(a);
  a.set_epoch(1);
  EXPECT_NE(epoch_order(a), first);
  b.set_epoch(1);
  EXPECT_EQ(epoch_order(a), epoch_order(b));
  a.set_epoch(0);
  EXPECT_EQ(epoch_order(a), first);
}

TEST(BatchSampler, RanksTogetherSeeTheSingleDeviceBatch) {
  const int64_t size = 1003, global = 24;
  for (int64_t epoch : {0, 3}) {
    BatchSampler single(size, global, 5);
    single.set_epoch(epoch);
    for (int world : {1, 2, 3, 4}) {
      std::vector<BatchSampler> ranks;
      for (int r = 0; r < world; ++r) {
        ranks.emplace_back(size, global, 5, r, world);
        ranks.back().set_epoch(epoch);
        EXPECT_EQ(ranks.back().local_batch(), global / world);
        EXPECT_EQ(ranks.back().batches_per_epoch(), single.batches_per_epoch());
      }
      for (int64_t b = 0; b < single.batches_per_epoch(); ++b) {
        std::vector<int64_t> joined;
        for (const auto& s : ranks) joined.insert(joined.end(), s.batch(b).begin(), s.batch(b).end());
        auto expect = single.batch(b);
        ASSERT_EQ(joined, std::vector<int64_t>(expect.begin(), expect.end())) << "world " << world << " batch " << b;
      }
    }
  }
}

TEST(BatchSampler, ValidatesArgumentsAndDropsLast) {
  EXPECT_EQ(BatchSampler(100, 30, 1).batches_per_epoch(), 3);
  EXPECT_EQ(BatchSampler(90, 30, 1).batches_per_epoch(), 3);
  EXPECT_EQ(BatchSampler(29, 30, 1).batches_per_epoch(), 0);
  // The dropped tail is never served, and its samples are still a valid subset.
  BatchSampler s(100, 30, 1);
  auto seen = epoch_order(s);
  EXPECT_EQ(seen.size(), 90u);
  EXPECT_EQ(std::set<int64_t>(seen.begin(), seen.end()).size(), 90u);
  expect_error([] { BatchSampler(100, 10, 1, 0, 3); }, {"global batch 10", "world size 3"});
  expect_error([] { BatchSampler(100, 0, 1); }, {"global batch 0"});
  expect_error([] { BatchSampler(100, 10, 1, 2, 2); }, {"rank 2"});
  expect_error([&] { s.batch(3); }, {"batch 3"});
}

TEST(Gather, ImagesScaledRowMajorAndLabels) {
  ImageDataset d;
  d.count = 3;
  d.rows = 1;
  d.cols = 2;
  d.images = {0, 255, 51, 102, 7, 128};
  d.labels = {4, 9, 0};
  const std::vector<int64_t> idx = {2, 0, 2};
  std::vector<float> x(6, -1);
  gather_images(d, idx, x.data());
  EXPECT_EQ(x, (std::vector<float>{7 / 255.0f, 128 / 255.0f, 0.0f, 1.0f, 7 / 255.0f, 128 / 255.0f}));
  std::vector<int32_t> y(3, -1);
  gather_labels(d, idx, y.data());
  EXPECT_EQ(y, (std::vector<int32_t>{0, 4, 0}));
  const std::vector<int64_t> bad = {3};
  expect_error([&] { gather_images(d, bad, x.data()); }, {"sample 3"});
  expect_error([&] { gather_labels(d, bad, y.data()); }, {"sample 3"});
}

std::string write_text(const TempDir& dir, const std::string& content) {
  write_plain(dir.file("corpus.txt"), Bytes(content.begin(), content.end()));
  return dir.file("corpus.txt");
}

TEST(TextDataset, SplitAndUnigramEntropy) {
  TempDir dir;
  EXPECT_EQ(TextDataset::load(write_text(dir, "aaaaaaaaaa")).unigram_entropy(), 0.0);
  std::string ab;
  for (int i = 0; i < 50; ++i) ab += "ab";
  TextDataset t = TextDataset::load(write_text(dir, ab));
  EXPECT_EQ(t.train_size(), 90);
  EXPECT_EQ(t.val_size(), 10);
  EXPECT_NEAR(t.unigram_entropy(), std::log(2.0), 1e-12);
  EXPECT_EQ(TextDataset::load(write_text(dir, ab), 0).val_size(), 0);
}

TEST(TextDataset, WindowsTargetsAndDeterminism) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 2000; ++i) text += static_cast<char>('a' + (i * 7 + i / 26) % 26);
  TextDataset t = TextDataset::load(write_text(dir, text));
  const int64_t batch = 12, seq = 16;
  std::vector<int32_t> tok(batch * seq), tgt(batch * seq), tok2(batch * seq), tgt2(batch * seq);
  for (bool val : {false, true}) {
    t.fill_batch(val, 3, 5, batch, 0, 1, seq, tok.data(), tgt.data());
    const std::string split = val ? text.substr(t.train_size()) : text.substr(0, t.train_size());
    for (int64_t i = 0; i < batch; ++i) {
      std::string window;
      for (int64_t s = 0; s < seq; ++s) {
        window += static_cast<char>(tok[i * seq + s]);
        if (s + 1 < seq) {
          EXPECT_EQ(tgt[i * seq + s], tok[i * seq + s + 1]);
        }
      }
      window += static_cast<char>(tgt[i * seq + seq - 1]);
      EXPECT_NE(split.find(window), std::string::npos) << "window " << i << " is not in the split";
    }
    t.fill_batch(val, 3, 5, batch, 0, 1, seq, tok2.data(), tgt2.data());
    EXPECT_EQ(tok, tok2);
    EXPECT_EQ(tgt, tgt2);
    t.fill_batch(val, 3, 6, batch, 0, 1, seq, tok2.data(), tgt2.data());
    EXPECT_NE(tok, tok2);
    t.fill_batch(val, 4, 5, batch, 0, 1, seq, tok2.data(), tgt2.data());
    EXPECT_NE(tok, tok2);
  }
  for (int world : {2, 3, 4}) {
    t.fill_batch(false, 3, 5, batch, 0, 1, seq, tok.data(), tgt.data());
    const int64_t local = batch / world;
    for (int r = 0; r < world; ++r) {
      std::vector<int32_t> a(local * seq), b(local * seq);
      t.fill_batch(false, 3, 5, batch, r, world, seq, a.data(), b.data());
      EXPECT_TRUE(std::equal(a.begin(), a.end(), tok.begin() + r * local * seq)) << "world " << world << " rank " << r;
      EXPECT_TRUE(std::equal(b.begin(), b.end(), tgt.begin() + r * local * seq)) << "world " << world << " rank " << r;
    }
  }
  expect_error([&] { t.fill_batch(false, 3, 5, 10, 0, 3, seq, tok.data(), tgt.data()); }, {"world size 3"});
}

TEST(TextDataset, ErrorsNameTheFile) {
  TempDir dir;
  expect_error([&] { TextDataset::load(dir.file("missing.txt")); }, {dir.file("missing.txt"), "cannot open"});
  expect_error([&] { TextDataset::load(write_text(dir, "")); }, {dir.file("corpus.txt"), "too short"});
  expect_error([&] { TextDataset::load(write_text(dir, "a")); }, {dir.file("corpus.txt"), "too short"});
  TextDataset t = TextDataset::load(write_text(dir, "0123456789"));  // 9 training bytes, 1 validation
  std::vector<int32_t> tok(16), tgt(16);
  t.fill_batch(false, 0, 0, 1, 0, 1, 8, tok.data(), tgt.data());  // exactly one window fits
  EXPECT_EQ(tok[0], '0');
  EXPECT_EQ(tgt[7], '8');
  expect_error([&] { t.fill_batch(false, 0, 0, 1, 0, 1, 9, tok.data(), tgt.data()); },
               {dir.file("corpus.txt"), "training split has 9 bytes", "needs 10"});
  expect_error([&] { t.fill_batch(true, 0, 0, 1, 0, 1, 1, tok.data(), tgt.data()); },
               {dir.file("corpus.txt"), "validation split has 1 bytes"});
  expect_error([&] { TextDataset::load(dir.path()); }, {dir.path(), "not a regular file"});
}

}  // namespace
}  // namespace tessel::runtime
