#include "runtime/safetensors.h"

#include <fcntl.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <numeric>

#include "graph/error.h"

namespace tessel::runtime::safetensors {

namespace {

// The largest header accepted (the Python package's limit).
constexpr int64_t kMaxHeader = 100'000'000;

struct Code {
  DType dtype;
  std::string_view name;
};
constexpr Code kCodes[] = {{DType::f32, "F32"}, {DType::f64, "F64"},   {DType::bf16, "BF16"}, {DType::f16, "F16"},
                           {DType::i32, "I32"}, {DType::i64, "I64"}, {DType::boolean, "BOOL"}};
static_assert(std::size(kCodes) == kNumDTypes, "a safetensors code for every dtype");

std::string system_error(const std::string& path, const std::string& what) {
  return path + ": " + what + ": " + std::strerror(errno);
}

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", u);
      out += b;
    } else {
      out += c;
    }
  }
  out += '"';
}

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      throw Error(system_error(path, "cannot write"));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// A JSON number that is a whole count: not negative, exact in a double, at most `max`.
bool whole(const google::protobuf::Value& v, int64_t max, int64_t& out) {
  if (v.kind_case() != google::protobuf::Value::kNumberValue) return false;
  const double d = v.number_value();
  if (!(d >= 0) || d > static_cast<double>(max) || std::floor(d) != d) return false;
  out = static_cast<int64_t>(d);
  return true;
}

}  // namespace

std::string_view dtype_code(DType t) {
  for (const Code& c : kCodes)
    if (c.dtype == t) return c.name;
  return "?";
}

void write(const std::string& path, std::span<const TensorView> tensors, const std::map<std::string, std::string>& metadata) {
  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    for (auto& [k, v] : metadata) {
      if (!first) header += ',';
      first = false;
      append_json_string(header, k);
      header += ':';
      append_json_string(header, v);
    }
    header += '}';
    first = false;
  }
  int64_t at = 0;
  for (const TensorView& t : tensors) {
    if (t.name == "__metadata__") throw Error(path + ": a tensor may not be called __metadata__");
    const int64_t bytes = checked_numel(t.shape) * static_cast<int64_t>(dtype_size(t.dtype));
    if (!first) header += ',';
    first = false;
    append_json_string(header, t.name);
    header += ":{\"dtype\":\"" + std::string(dtype_code(t.dtype)) + "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) header += (i ? "," : "") + std::to_string(t.shape[i]);
    header += "],\"data_offsets\":[" + std::to_string(at) + "," + std::to_string(at + bytes) + "]}";
    at += bytes;
  }
  header += '}';
  header.resize((header.size() + 7) / 8 * 8, ' ');  // the data section starts 8-byte aligned
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(system_error(path, "cannot create"));
  try {
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(static_cast<uint64_t>(header.size()) >> (8 * i));
    write_all(fd, len, sizeof len, path);
    write_all(fd, header.data(), header.size(), path);
    for (const TensorView& t : tensors)
      write_all(fd, t.data, static_cast<size_t>(numel(t.shape)) * dtype_size(t.dtype), path);
    if (::fsync(fd) != 0) throw Error(system_error(path, "cannot flush to disk"));
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0) throw Error(system_error(path, "cannot close"));
}

Reader::Reader(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw Error(system_error(path, "cannot open"));
  try {
    auto bad = [&](const std::string& what) { return Error(path + ": not a valid safetensors file: " + what); };
    struct stat st {};
    if (::fstat(fd_, &st) != 0) throw Error(system_error(path, "cannot read its size"));
    const int64_t size = st.st_size;
    if (size < 8) throw bad("it has " + std::to_string(size) + " bytes, fewer than the 8 of the header length");
    unsigned char len[8];
    if (::pread(fd_, len, 8, 0) != 8) throw Error(system_error(path, "cannot read"));
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
    if (n > static_cast<uint64_t>(kMaxHeader)) throw bad("a header of " + std::to_string(n) + " bytes (at most 100 MB)");
    if (static_cast<int64_t>(n) > size - 8)
      throw bad("the header says it has " + std::to_string(n) + " bytes, but the file has " + std::to_string(size - 8) +
                " after the length (truncated?)");
    std::string json(n, '\0');
    if (n && ::pread(fd_, json.data(), n, 8) != static_cast<ssize_t>(n)) throw Error(system_error(path, "cannot read"));
    data_start_ = 8 + static_cast<int64_t>(n);
    const int64_t data_size = size - data_start_;
    google::protobuf::Struct root;
    google::protobuf::util::JsonParseOptions jo;
    if (auto status = google::protobuf::util::JsonStringToMessage(json, &root, jo); !status.ok())
      throw bad("its header is not a JSON object (" + std::string(status.message()) + ")");
    for (auto& [name, v] : root.fields()) {
      if (name == "__metadata__") {
        if (v.kind_case() != google::protobuf::Value::kStructValue) throw bad("__metadata__ is not an object");
        for (auto& [k, s] : v.struct_value().fields()) {
          if (s.kind_case() != google::protobuf::Value::kStringValue)
            throw bad("__metadata__ value '" + k + "' is not a string");
          metadata_[k] = s.string_value();
        }
        continue;
      }
      const std::string where = "tensor '" + name + "'";
      if (v.kind_case() != google::protobuf::Value::kStructValue) throw bad(where + " is not an object");
      const auto& f = v.struct_value().fields();
      TensorInfo t;
      t.name = name;
      auto dt = f.find("dtype");
      if (dt == f.end() || dt->second.kind_case() != google::protobuf::Value::kStringValue)
        throw bad(where + " has no dtype");
      const auto code = std::find_if(std::begin(kCodes), std::end(kCodes),
                                     [&](const Code& c) { return c.name == dt->second.string_value(); });
      if (code == std::end(kCodes)) throw bad(where + " has dtype '" + dt->second.string_value() + "', which tessel does not read");
      t.dtype = code->dtype;
      auto sh = f.find("shape");
      if (sh == f.end() || sh->second.kind_case() != google::protobuf::Value::kListValue) throw bad(where + " has no shape");
      if (sh->second.list_value().values_size() > kMaxRank)
        throw bad(where + " has " + std::to_string(sh->second.list_value().values_size()) + " dims (at most 8)");
      for (auto& d : sh->second.list_value().values()) {
        int64_t x = 0;
        if (!whole(d, kMaxElements, x)) throw bad(where + " has a dim that is not a count");
        t.shape.push_back(x);
      }
      int64_t elements = 0;
      try {
        elements = checked_numel(t.shape);
      } catch (const Error&) {
        throw bad(where + " has too many elements, " + shape_str(t.shape));
      }
      auto off = f.find("data_offsets");
      if (off == f.end() || off->second.kind_case() != google::protobuf::Value::kListValue ||
          off->second.list_value().values_size() != 2 || !whole(off->second.list_value().values(0), data_size, t.begin) ||
          !whole(off->second.list_value().values(1), data_size, t.end) || t.begin > t.end)
        throw bad(where + " has no data_offsets [begin, end] within the " + std::to_string(data_size) + " data bytes");
      if (t.end - t.begin != elements * static_cast<int64_t>(dtype_size(t.dtype)))
        throw bad(where + " has " + std::to_string(t.end - t.begin) + " bytes, but " + std::string(dtype_code(t.dtype)) +
                  shape_str(t.shape) + " needs " + std::to_string(elements * static_cast<int64_t>(dtype_size(t.dtype))));
      tensors_.push_back(std::move(t));
    }
    // The tensors tile the data section: no gap, no overlap, nothing after the last.
    std::vector<const TensorInfo*> by_offset;
    for (auto& t : tensors_) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
    int64_t at = 0;
    for (const TensorInfo* t : by_offset) {
      if (t->begin != at)
        throw bad("tensor '" + t->name + "' starts at data byte " + std::to_string(t->begin) + ", expected " +
                  std::to_string(at) + " (a gap or an overlap)");
      at = t->end;
    }
    if (at != data_size)
      throw bad("the tensors cover " + std::to_string(at) + " data bytes, the file has " + std::to_string(data_size) +
                (at < data_size ? " (trailing bytes)" : " (truncated)"));
    std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin; });
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

Reader::~Reader() {
  if (fd_ >= 0) ::close(fd_);
}

const TensorInfo* Reader::find(const std::string& name) const {
  for (const TensorInfo& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

void Reader::read(const TensorInfo& t, void* dst) const {
  char* p = static_cast<char*>(dst);
  int64_t at = data_start_ + t.begin, left = t.end - t.begin;
  while (left > 0) {
    const ssize_t r = ::pread(fd_, p, static_cast<size_t>(std::min<int64_t>(left, int64_t{1} << 30)), at);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw Error(system_error(path_, "cannot read tensor '" + t.name + "'"));
    if (r == 0) throw Error(path_ + ": tensor '" + t.name + "' ends early (the file shrank while it was read)");
    p += r, at += r, left -= r;
  }
}

}  // namespace tessel::runtime::safetensors
