// The safetensors file format (what Hugging Face's `safetensors` package reads and writes):
// an 8-byte little-endian header length N, N bytes of JSON naming each tensor's dtype,
// shape and [begin, end) within the data section that follows (plus an optional
// "__metadata__" object of strings), then the tensors' raw little-endian bytes back to back.
// The reader trusts nothing it has not checked: a truncated, corrupt or hostile file gives
// an Error naming the file and what is wrong (never a crash or an unbounded allocation), and
// it enforces what the Python package enforces (offsets that tile the data section exactly,
// byte counts that match dtype and shape, known dtypes, string metadata).
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "graph/dtype.h"
#include "graph/shape.h"

namespace tessel::runtime::safetensors {

struct TensorView {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  const void* data = nullptr;  // shape's numel elements of dtype, row-major
};

// Writes the file at `path` (created or truncated; the tensors in the order given), then
// fsyncs it. Throws an Error naming the path and the system's reason (a full disk, a
// missing directory, no permission). Not atomic: write to a temporary name and rename.
void write(const std::string& path, std::span<const TensorView> tensors,
           const std::map<std::string, std::string>& metadata = {});

struct TensorInfo {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  int64_t begin = 0, end = 0;  // bytes, within the data section
};

// An open file whose header has been read and checked. Reads may come from several
// threads at once.
class Reader {
 public:
  explicit Reader(const std::string& path);
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(const std::string& name) const;  // null if absent
  // The tensor's bytes into dst (end - begin of them).
  void read(const TensorInfo& t, void* dst) const;

 private:
  std::string path_;
  int fd_ = -1;
  int64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// The name the format gives a dtype ("F32", "BF16", "BOOL"), and the dtype of a name.
std::string_view dtype_code(DType t);

}  // namespace tessel::runtime::safetensors
