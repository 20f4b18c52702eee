// Data loading: idx image files (Fashion-MNIST), byte-level text corpora, and the
// deterministic shuffling and sharding that makes N data-parallel ranks see exactly what
// one device sees with the same global batch.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "graph/error.h"

namespace tessel::runtime {

// Images (uint8, row-major [count, rows, cols]) with uint8 labels.
struct ImageDataset {
  int64_t count = 0, rows = 0, cols = 0;
  std::vector<uint8_t> images;  // count*rows*cols
  std::vector<uint8_t> labels;  // count
  int num_classes = 10;
  int64_t features() const { return rows * cols; }
};

// Reads an idx3-ubyte images file and an idx1-ubyte labels file; either may be gzip
// compressed (zlib reads plain files too). Header sizes are checked against the data
// actually present before anything is allocated for them, so hostile files give an Error.
ImageDataset load_idx(const std::string& images_path, const std::string& labels_path);

struct TrainTest {
  ImageDataset train, test;
};
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
// Loads {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz from dir (Debian package
// dataset-fashion-mnist).
TrainTest load_fashion_mnist(const std::string& dir = kFashionMnistDir);

// Deterministic epoch shuffling, batching and data-parallel sharding. Every rank builds the
// same permutation from (seed, epoch); rank r takes slice r of each global batch, so the
// ranks' slices concatenated in rank order are the single-device batch. The last
// incomplete global batch of an epoch is dropped.
// const methods may be called concurrently; set_epoch may not run alongside them.
class BatchSampler {
 public:
  // global_batch must be a positive multiple of world.
  BatchSampler(int64_t dataset_size, int64_t global_batch, uint64_t seed, int rank = 0, int world = 1,
               bool shuffle = true);
  // Bit-identical on every platform: splitmix64 + Fisher-Yates, no std:: distributions.
  void set_epoch(int64_t epoch);
  int64_t batches_per_epoch() const { return size_ / global_batch_; }
  int64_t local_batch() const { return global_batch_ / world_; }
  // This rank's indices of global batch b; valid until the next set_epoch.
  std::span<const int64_t> batch(int64_t b) const;

 private:
  int64_t size_, global_batch_;
  uint64_t seed_;
  int rank_, world_;
  bool shuffle_;
  std::vector<int64_t> permutation_;
};

// Gather samples into caller-owned buffers without allocating: images as f32 [n, rows*cols]
// scaled to [0,1]; labels as int32 [n]. Indices out of range throw.
void gather_images(const ImageDataset& d, std::span<const int64_t> idx, float* out);
void gather_labels(const ImageDataset& d, std::span<const int64_t> idx, int32_t* out);

// A byte-level text corpus for language models: token = byte value (vocab 256). The last
// val_fraction of the file is held out for validation. Immutable after load, so all
// methods are safe to call from several threads.
class TextDataset {
 public:
  static TextDataset load(const std::string& path, double val_fraction = 0.1);
  int64_t train_size() const { return train_end_; }
  int64_t val_size() const { return static_cast<int64_t>(bytes_.size()) - train_end_; }
  // Entropy of the training split's byte unigram distribution, in nats per byte: the loss
  // of a model that ignores context, which a trained LM must beat.
  double unigram_entropy() const;
  // Fills tokens and targets [global_batch/world, seq] (int32) with windows of a split;
  // targets[i][t] = tokens[i][t+1]. Window starts depend only on (seed, step, global
  // sample index, split), so rank r of world gets slice r of the same global batch.
  // Throws if the split is shorter than seq+1 bytes.
  void fill_batch(bool validation, uint64_t seed, int64_t step, int64_t global_batch, int rank, int world,
                  int64_t seq, int32_t* tokens, int32_t* targets) const;
  // The same windows for the global batch's samples [first, first + count) only (what one
  // process's ranks read); either output may be null.
  void fill_rows(bool validation, uint64_t seed, int64_t step, int64_t first, int64_t count, int64_t seq,
                 int32_t* tokens, int32_t* targets) const;

 private:
  TextDataset() = default;
  std::string path_;
  std::vector<uint8_t> bytes_;
  int64_t train_end_ = 0;
};

}  // namespace tessel::runtime
