#include "runtime/data.h"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <type_traits>

namespace tessel::runtime {
namespace {

// No real dataset file comes near this; anything bigger is a corrupt or hostile header.
constexpr uint64_t kMaxBytes = uint64_t{1} << 30;
constexpr uint32_t kIdxImages = 0x00000803, kIdxLabels = 0x00000801;

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

struct GzCloser {
  void operator()(gzFile f) const { gzclose(f); }
};
using GzFile = std::unique_ptr<std::remove_pointer_t<gzFile>, GzCloser>;

class IdxReader {
 public:
  explicit IdxReader(const std::string& path) : path_(path) {
    errno = 0;
    file_.reset(gzopen(path.c_str(), "rb"));
    if (!file_) fail(std::string("cannot open: ") + (errno ? std::strerror(errno) : "out of memory"));
    gzbuffer(file_.get(), 1 << 17);
  }

  [[noreturn]] void fail(const std::string& what) const { throw Error(path_ + ": " + what); }

  // Reads up to n bytes into dst; returns how many arrived before end of file.
  size_t read(uint8_t* dst, size_t n) {
    size_t got = 0;
    while (got < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - got, 1 << 30));
      const int r = gzread(file_.get(), dst + got, chunk);
      if (r < 0) {
        int code = 0;
        const char* msg = gzerror(file_.get(), &code);
        std::string m = code == Z_ERRNO ? std::strerror(errno) : msg;
        if (m.starts_with(path_ + ": ")) m.erase(0, path_.size() + 2);  // zlib prefixes the path
        fail("read error: " + m);
      }
      if (r == 0) break;
      got += static_cast<size_t>(r);
    }
    return got;
  }

  // Reads the magic and `ndims` big-endian dims; the magic must be `magic`.
  std::vector<uint64_t> header(uint32_t magic, int ndims, const char* kind) {
    uint8_t buf[16];
    const size_t want = 4 * static_cast<size_t>(ndims + 1);
    const size_t got = read(buf, want);
    if (got < 4) fail("truncated idx header: expected " + std::to_string(want) + " bytes, found " + std::to_string(got));
    const uint32_t found = big_endian(buf);
    if (found != magic) fail("bad idx magic " + hex32(found) + " (expected " + hex32(magic) + " for " + kind + ")");
    if (got < want) fail("truncated idx header: expected " + std::to_string(want) + " bytes, found " + std::to_string(got));
    std::vector<uint64_t> dims;
    for (int i = 1; i <= ndims; ++i) dims.push_back(big_endian(buf + 4 * i));
    return dims;
  }

  // Reads exactly `n` payload bytes (n <= kMaxBytes, checked by the caller), growing the buffer
  // only as data arrives, so a header that lies about its size costs no memory; then expects EOF.
  std::vector<uint8_t> payload(uint64_t n, const std::string& shape) {
    std::vector<uint8_t> out;
    size_t have = 0;
    while (have < n) {
      const size_t step = std::min<uint64_t>(n - have, std::max<size_t>(have, 1 << 20));
      out.resize(have + step);
      const size_t got = read(out.data() + have, step);
      have += got;
      if (got < step) break;
    }
    if (have < n)
      fail("truncated: header " + shape + " needs " + std::to_string(n) + " bytes of data, found " + std::to_string(have));
    uint8_t extra[4096];
    if (size_t more = read(extra, sizeof extra))
      fail("trailing data: " + std::to_string(more) + (more == sizeof extra ? "+" : "") + " bytes after the " +
           std::to_string(n) + " bytes that header " + shape + " describes");
    return out;
  }

 private:
  static uint32_t big_endian(const uint8_t* p) {
    return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | uint32_t{p[3]};
  }
  std::string path_;
  GzFile file_;
};

// splitmix64 (Steele et al.): a tiny generator with a fully specified output sequence.
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() { return mix64(state_ += 0x9e3779b97f4a7c15ULL); }
  // Uniform in [0, bound) without modulo bias, by rejection.
  uint64_t below(uint64_t bound) {
    const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
    for (;;) {
      const uint64_t r = next();
      if (r >= threshold) return r % bound;
    }
  }

 private:
  uint64_t state_;
};

uint64_t combine(uint64_t a, uint64_t b) { return mix64(a ^ (mix64(b) + 0x9e3779b97f4a7c15ULL)); }

void check_sharding(const char* who, int64_t global_batch, int rank, int world) {
  if (world < 1 || rank < 0 || rank >= world)
    throw Error(std::string(who) + ": rank " + std::to_string(rank) + " is not in [0, world size " +
                std::to_string(world) + ")");
  if (global_batch <= 0 || global_batch % world != 0)
    throw Error(std::string(who) + ": global batch " + std::to_string(global_batch) +
                " must be a positive multiple of the world size " + std::to_string(world));
}

}  // namespace

ImageDataset load_idx(const std::string& images_path, const std::string& labels_path) {
  ImageDataset d;
  IdxReader images(images_path);
  auto dims = images.header(kIdxImages, 3, "ubyte images");
  const std::string shape = "[" + std::to_string(dims[0]) + " x " + std::to_string(dims[1]) + " x " +
                            std::to_string(dims[2]) + "]";
  if (dims[1] == 0 || dims[2] == 0) images.fail("header " + shape + " has empty images");
  // Each dim is < 2^32, so the first product cannot overflow and the second is guarded.
  const uint64_t per_image = dims[1] * dims[2];
  if (per_image > kMaxBytes || dims[0] > kMaxBytes / per_image)
    images.fail("header " + shape + " describes more than the 1 GiB limit of image data");
  d.count = static_cast<int64_t>(dims[0]);
  d.rows = static_cast<int64_t>(dims[1]);
  d.cols = static_cast<int64_t>(dims[2]);
  d.images = images.payload(dims[0] * per_image, shape);

  IdxReader labels(labels_path);
  const uint64_t n = labels.header(kIdxLabels, 1, "ubyte labels")[0];
  if (n != dims[0])
    labels.fail("has " + std::to_string(n) + " labels but " + images_path + " has " + std::to_string(dims[0]) +
                " images");
  d.labels = labels.payload(n, "[" + std::to_string(n) + "]");
  for (size_t i = 0; i < d.labels.size(); ++i)
    if (d.labels[i] >= d.num_classes)
      labels.fail("label " + std::to_string(d.labels[i]) + " of sample " + std::to_string(i) + " is not in [0, " +
                  std::to_string(d.num_classes) + ")");
  return d;
}

TrainTest load_fashion_mnist(const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    throw Error(dir + ": no such directory; install the Debian package dataset-fashion-mnist "
                      "(apt-get install dataset-fashion-mnist)");
  auto part = [&](const char* prefix) {
    return load_idx(dir + "/" + prefix + "-images-idx3-ubyte.gz", dir + "/" + prefix + "-labels-idx1-ubyte.gz");
  };
  TrainTest t{part("train"), part("t10k")};
  if (t.train.features() != t.test.features())
    throw Error(dir + ": train images are " + std::to_string(t.train.rows) + "x" + std::to_string(t.train.cols) +
                " but test images are " + std::to_string(t.test.rows) + "x" + std::to_string(t.test.cols));
  return t;
}

BatchSampler::BatchSampler(int64_t dataset_size, int64_t global_batch, uint64_t seed, int rank, int world,
                           bool shuffle)
    : size_(dataset_size), global_batch_(global_batch), seed_(seed), rank_(rank), world_(world), shuffle_(shuffle) {
  check_sharding("BatchSampler", global_batch, rank, world);
  if (dataset_size < 0) throw Error("BatchSampler: negative dataset size " + std::to_string(dataset_size));
  set_epoch(0);
}

void BatchSampler::set_epoch(int64_t epoch) {
  permutation_.resize(static_cast<size_t>(size_));
  for (int64_t i = 0; i < size_; ++i) permutation_[i] = i;
  if (!shuffle_) return;
  SplitMix64 rng(combine(seed_, static_cast<uint64_t>(epoch)));
  for (int64_t i = size_ - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i) + 1));
    std::swap(permutation_[i], permutation_[j]);
  }
}

std::span<const int64_t> BatchSampler::batch(int64_t b) const {
  if (b < 0 || b >= batches_per_epoch())
    throw Error("BatchSampler: batch " + std::to_string(b) + " is not in [0, " + std::to_string(batches_per_epoch()) +
                ") for " + std::to_string(size_) + " samples in global batches of " + std::to_string(global_batch_));
  const int64_t local = local_batch();
  return std::span<const int64_t>(permutation_).subspan(b * global_batch_ + rank_ * local, local);
}

void gather_images(const ImageDataset& d, std::span<const int64_t> idx, float* out) {
  const int64_t f = d.features();
  for (int64_t i : idx) {
    if (i < 0 || i >= d.count)
      throw Error("gather_images: sample " + std::to_string(i) + " is not in [0, " + std::to_string(d.count) + ")");
    const uint8_t* src = d.images.data() + i * f;
    for (int64_t k = 0; k < f; ++k) out[k] = static_cast<float>(src[k]) / 255.0f;
    out += f;
  }
}

void gather_labels(const ImageDataset& d, std::span<const int64_t> idx, int32_t* out) {
  for (int64_t i : idx) {
    if (i < 0 || i >= d.count)
      throw Error("gather_labels: sample " + std::to_string(i) + " is not in [0, " + std::to_string(d.count) + ")");
    *out++ = d.labels[static_cast<size_t>(i)];
  }
}

TextDataset TextDataset::load(const std::string& path, double val_fraction) {
  if (!(val_fraction >= 0 && val_fraction < 1))
    throw Error(path + ": validation fraction " + std::to_string(val_fraction) + " is not in [0, 1)");
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw Error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (fstat(fileno(f.get()), &st) != 0) throw Error(path + ": cannot stat: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw Error(path + ": not a regular file");
  if (static_cast<uint64_t>(st.st_size) > kMaxBytes)
    throw Error(path + ": " + std::to_string(st.st_size) + " bytes is over the 1 GiB limit for a text corpus");
  TextDataset t;
  t.path_ = path;
  t.bytes_.resize(static_cast<size_t>(st.st_size));
  const size_t got = std::fread(t.bytes_.data(), 1, t.bytes_.size(), f.get());
  if (std::ferror(f.get())) throw Error(path + ": read error: " + std::strerror(errno));
  t.bytes_.resize(got);  // the file may have shrunk since fstat
  const auto n = static_cast<int64_t>(t.bytes_.size());
  t.train_end_ = n - static_cast<int64_t>(std::floor(static_cast<double>(n) * val_fraction));
  if (t.train_end_ < 2)
    throw Error(path + ": too short: " + std::to_string(n) + " bytes leave " + std::to_string(t.train_end_) +
                " for training, and one window needs at least 2");
  return t;
}

double TextDataset::unigram_entropy() const {
  int64_t counts[256] = {};
  for (int64_t i = 0; i < train_end_; ++i) ++counts[bytes_[static_cast<size_t>(i)]];
  double sum = 0;
  for (int64_t c : counts)
    if (c > 0) {
      const double p = static_cast<double>(c) / static_cast<double>(train_end_);
      sum += p * std::log(p);
    }
  return 0.0 - sum;  // not -sum: a single-byte corpus should give 0, not -0
}

void TextDataset::fill_batch(bool validation, uint64_t seed, int64_t step, int64_t global_batch, int rank, int world,
                             int64_t seq, int32_t* tokens, int32_t* targets) const {
  check_sharding("TextDataset::fill_batch", global_batch, rank, world);
  const int64_t local = global_batch / world;
  fill_rows(validation, seed, step, rank * local, local, seq, tokens, targets);
}

void TextDataset::fill_rows(bool validation, uint64_t seed, int64_t step, int64_t first, int64_t count, int64_t seq,
                            int32_t* tokens, int32_t* targets) const {
  if (first < 0 || count < 0)
    throw Error("TextDataset::fill_rows: samples [" + std::to_string(first) + ", " + std::to_string(first + count) +
                ") of a batch");
  const uint8_t* split = bytes_.data() + (validation ? train_end_ : 0);
  const int64_t len = validation ? val_size() : train_size();
  if (seq < 1 || len < seq + 1)
    throw Error(path_ + ": the " + (validation ? "validation" : "training") + " split has " + std::to_string(len) +
                " bytes; a window of seq " + std::to_string(seq) + " needs " + std::to_string(seq + 1) +
                (seq < 1 ? " and seq must be positive" : ""));
  // A window's start depends on its sample's index in the global batch only.
  const uint64_t stream = combine(combine(seed, validation ? 1 : 0), static_cast<uint64_t>(step));
  for (int64_t i = 0; i < count; ++i) {
    SplitMix64 rng(combine(stream, static_cast<uint64_t>(first + i)));
    const uint8_t* w = split + rng.below(static_cast<uint64_t>(len - seq));
    for (int64_t t = 0; t < seq; ++t) {
      if (tokens) tokens[i * seq + t] = w[t];
      if (targets) targets[i * seq + t] = w[t + 1];
    }
  }
}

}  // namespace tessel::runtime
