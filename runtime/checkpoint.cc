#include "runtime/checkpoint.h"

#include <fcntl.h>
#include <google/protobuf/util/json_util.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "graph/error.h"
#include "graph/shape.h"
#include "runtime/block_copy.h"
#include "runtime/checkpoint.pb.h"
#include "runtime/safetensors.h"

namespace tessel::runtime {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "tessel checkpoint";
constexpr const char* kMetaFile = "checkpoint.json";
constexpr const char* kPartial = ".partial";
constexpr int64_t kMaxMeta = 256 << 20;

std::string step_name(int64_t step) {
  char b[32];
  std::snprintf(b, sizeof b, "step-%08lld", static_cast<long long>(step));
  return b;
}

// The step of a committed checkpoint's directory name ("step-00000100"), or -1.
int64_t step_of(const std::string& name) {
  if (name.size() <= 5 || name.compare(0, 5, "step-") != 0) return -1;
  int64_t s = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || s > (int64_t{1} << 50)) return -1;
    s = s * 10 + (name[i] - '0');
  }
  return s;
}

std::string file_name(size_t writer) {
  char b[40];
  std::snprintf(b, sizeof b, "rank-%05zu.safetensors", writer);
  return b;
}

[[noreturn]] void fail_sys(const std::string& path, const std::string& what) {
  throw Error(path + ": " + what + ": " + std::strerror(errno));
}

// Flushes a directory's entries (a rename or a new file in it) to disk.
void sync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail_sys(dir, "cannot open the directory");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) fail_sys(dir, "cannot flush the directory to disk");
}

void write_file_synced(const std::string& path, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail_sys(path, "cannot create");
  size_t at = 0;
  while (at < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + at, bytes.size() - at);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      const int e = errno;
      ::close(fd);
      errno = e;
      fail_sys(path, "cannot write");
    }
    at += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0) {
    const int e = errno;
    ::close(fd);
    errno = e;
    fail_sys(path, "cannot flush to disk");
  }
  if (::close(fd) != 0) fail_sys(path, "cannot close");
}

template <class F>
void filesystem(const std::string& what, F&& f) {
  std::error_code ec;
  f(ec);
  if (ec) throw Error(what + ": " + ec.message());
}

std::string dims_str(std::span<const int64_t> v) { return shape_str(v); }

}  // namespace

std::vector<std::vector<Shard>> distinct_blocks(const std::vector<std::vector<Shard>>& held) {
  std::set<std::pair<std::string, std::vector<int64_t>>> seen;
  std::vector<std::vector<Shard>> out(held.size());
  for (size_t r = 0; r < held.size(); ++r)
    for (const Shard& s : held[r])
      if (seen.insert({s.name, s.offsets}).second) out[r].push_back(s);
  return out;
}

std::string begin_checkpoint(const std::string& root, int64_t step) {
  const std::string final_dir = (fs::path(root) / step_name(step)).string();
  const std::string partial = final_dir + kPartial;
  filesystem("cannot create the checkpoint directory " + root, [&](std::error_code& ec) { fs::create_directories(root, ec); });
  if (fs::exists(final_dir)) return "";  // this step is committed already
  filesystem("cannot remove " + partial, [&](std::error_code& ec) { fs::remove_all(partial, ec); });
  filesystem("cannot create " + partial, [&](std::error_code& ec) { fs::create_directory(partial, ec); });
  return partial;
}

void write_checkpoint_file(const std::string& root, int64_t step, size_t writer, const std::vector<Shard>& blocks) {
  const std::string partial = (fs::path(root) / step_name(step)).string() + kPartial;
  std::vector<safetensors::TensorView> views;
  std::map<std::string, int> blocks_of;  // a writer's blocks of one variable get names of their own
  for (const Shard& s : blocks) {
    if (s.offsets.size() != s.global.shape.size() || s.shape.size() != s.global.shape.size())
      throw Error("checkpoint: block of '" + s.name + "' has offsets " + dims_str(s.offsets) + " and shape " +
                  dims_str(s.shape) + " for a tensor of " + s.global.str());
    const int k = blocks_of[s.name]++;
    views.push_back({k == 0 ? s.name : s.name + "#" + std::to_string(k), s.global.dtype, s.shape, s.data});
  }
  safetensors::write((fs::path(partial) / file_name(writer)).string(), views,
                     {{"format", "tessel checkpoint shard"}, {"step", std::to_string(step)}});
}

void abandon_checkpoint(const std::string& root, int64_t step) {
  std::error_code ec;
  fs::remove_all((fs::path(root) / step_name(step)).string() + kPartial, ec);
}

std::string commit_checkpoint(const std::string& root, const CheckpointState& state,
                              const std::vector<std::vector<Shard>>& files, int keep) {
  const std::string final_dir = (fs::path(root) / step_name(state.step)).string();
  const std::string partial = final_dir + kPartial;
  proto::CheckpointMeta meta;
  meta.set_format(kFormat);
  meta.set_version(1);
  meta.set_step(state.step);
  meta.set_seed(state.seed);
  meta.set_model(state.model);
  meta.set_plan(state.plan);
  meta.set_world(state.world);
  for (auto& [k, v] : state.data) (*meta.mutable_data())[k] = v;
  std::map<std::string, proto::CheckpointTensor*> by_name;
  for (size_t w = 0; w < files.size(); ++w) {
    std::map<std::string, int> blocks_of;  // as write_checkpoint_file names them
    for (const Shard& s : files[w]) {
      const int k = blocks_of[s.name]++;
      proto::CheckpointTensor*& t = by_name[s.name];
      if (!t) {
        t = meta.add_tensors();
        t->set_name(s.name);
        t->set_dtype(std::string(safetensors::dtype_code(s.global.dtype)));
        t->set_parameter(state.parameters.count(s.name) > 0);
        for (int64_t d : s.global.shape) t->add_shape(d);
      }
      proto::CheckpointPiece* p = t->add_pieces();
      p->set_file(file_name(w));
      if (k > 0) p->set_tensor(s.name + "#" + std::to_string(k));
      for (int64_t o : s.offsets) p->add_offsets(o);
      for (int64_t d : s.shape) p->add_shape(d);
    }
  }
  std::string json;
  google::protobuf::util::JsonPrintOptions jo;
  jo.add_whitespace = true;
  jo.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(meta, &json, jo).ok())
    throw Error(partial + ": cannot describe the checkpoint");
  write_file_synced((fs::path(partial) / kMetaFile).string(), json);
  sync_dir(partial);
  if (::rename(partial.c_str(), final_dir.c_str()) != 0) fail_sys(final_dir, "cannot commit (rename from " + partial + ")");
  sync_dir(root);
  if (keep > 0) {
    std::vector<std::pair<int64_t, std::string>> committed;
    for (const auto& e : fs::directory_iterator(root)) {
      const int64_t s = step_of(e.path().filename().string());
      if (s >= 0 && fs::exists(e.path() / kMetaFile)) committed.push_back({s, e.path().string()});
    }
    std::sort(committed.rbegin(), committed.rend());
    for (size_t i = static_cast<size_t>(keep); i < committed.size(); ++i)
      filesystem("cannot remove the old checkpoint " + committed[i].second,
                 [&](std::error_code& ec) { fs::remove_all(committed[i].second, ec); });
  }
  return final_dir;
}

std::string save_checkpoint(const std::string& root, const CheckpointState& state,
                            const std::vector<std::vector<Shard>>& files, int keep) {
  const std::string partial = begin_checkpoint(root, state.step);
  if (partial.empty()) return (fs::path(root) / step_name(state.step)).string();  // committed already
  try {
    for (size_t w = 0; w < files.size(); ++w) write_checkpoint_file(root, state.step, w, files[w]);
    return commit_checkpoint(root, state, files, keep);
  } catch (...) {
    abandon_checkpoint(root, state.step);  // a failed save leaves nothing behind (a full disk gets its space back)
    throw;
  }
}

AsyncCheckpointer::~AsyncCheckpointer() {
  if (writer_.joinable()) writer_.join();
}

void AsyncCheckpointer::check() {
  if (writer_.joinable() && done_.load()) {
    writer_.join();
    if (!error_) last_ = writing_;
  }
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

void AsyncCheckpointer::finish() {
  if (writer_.joinable()) {
    writer_.join();
    if (!error_) last_ = writing_;
  }
  check();
}

void AsyncCheckpointer::save(const CheckpointState& state, const std::vector<std::vector<Shard>>& files) {
  finish();  // one write at a time; the buffers are reused
  const auto t0 = std::chrono::steady_clock::now();
  size_t n = 0;
  for (auto& f : files) n += f.size();
  copies_.resize(n);
  files_ = files;
  size_t k = 0;
  for (auto& f : files_)
    for (Shard& s : f) {
      const size_t bytes = static_cast<size_t>(numel(s.shape)) * dtype_size(s.global.dtype);
      copies_[k].resize(bytes);
      copy_bytes(copies_[k].data(), s.data, bytes);
      s.data = copies_[k++].data();
    }
  state_ = state;
  copy_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ++saves_;
  done_.store(false);
  writer_ = std::thread([this] {
    try {
      writing_ = save_checkpoint(root_, state_, files_, keep_);
    } catch (...) {
      error_ = std::current_exception();
    }
    done_.store(true);
  });
}

std::string latest_checkpoint(const std::string& root, std::vector<std::string>* ignored) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return "";
  int64_t best = -1;
  std::string path;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() > std::strlen(kPartial) && name.compare(name.size() - std::strlen(kPartial), std::string::npos, kPartial) == 0) {
      if (ignored) ignored->push_back(e.path().string());
      continue;
    }
    const int64_t s = step_of(name);
    if (s < 0) continue;
    if (!fs::exists(e.path() / kMetaFile)) {
      if (ignored) ignored->push_back(e.path().string());
      continue;
    }
    if (s > best) best = s, path = e.path().string();
  }
  return path;
}

Checkpoint::Checkpoint(const std::string& path) {
  std::error_code ec;
  dir_ = path;
  if (!fs::exists(fs::path(path) / kMetaFile, ec)) {
    std::vector<std::string> ignored;
    dir_ = latest_checkpoint(path, &ignored);
    if (dir_.empty()) {
      std::string why = fs::is_directory(path, ec) ? "no committed checkpoint in it" : "no such directory";
      if (!ignored.empty()) why += " (" + std::to_string(ignored.size()) + " partial save(s) ignored, e.g. " + ignored[0] + ")";
      throw Error(path + ": " + why);
    }
  }
  const std::string meta_path = (fs::path(dir_) / kMetaFile).string();
  auto bad = [&](const std::string& what) { return Error(meta_path + ": " + what); };
  std::ifstream in(meta_path, std::ios::binary);
  if (!in) fail_sys(meta_path, "cannot open");
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0 || size > kMaxMeta) throw bad("larger than 256 MiB: not a checkpoint's metadata");
  in.seekg(0);
  std::string json(static_cast<size_t>(size), '\0');
  if (!in.read(json.data(), size)) fail_sys(meta_path, "cannot read");
  proto::CheckpointMeta meta;
  google::protobuf::util::JsonParseOptions po;
  if (auto st = google::protobuf::util::JsonStringToMessage(json, &meta, po); !st.ok())
    throw bad("not valid checkpoint metadata (" + std::string(st.message()) + ")");
  if (meta.format() != kFormat) throw bad("its format is '" + meta.format() + "', not '" + kFormat + "'");
  if (meta.version() != 1) throw bad("version " + std::to_string(meta.version()) + ", this tessel reads version 1");
  if (meta.step() < 0) throw bad("a negative step");
  state_.step = meta.step();
  state_.seed = meta.seed();
  state_.model = meta.model();
  state_.plan = meta.plan();
  state_.world = meta.world();
  for (auto& [k, v] : meta.data()) state_.data[k] = v;
  std::set<std::string> names;
  for (const proto::CheckpointTensor& t : meta.tensors()) {
    const std::string what = "tensor '" + t.name() + "'";
    if (!names.insert(t.name()).second) throw bad(what + " is listed twice");
    Tensor x;
    x.name = t.name();
    x.parameter = t.parameter();
    if (x.parameter) state_.parameters.insert(x.name);
    bool known = false;
    for (int d = 0; d < kNumDTypes; ++d)
      if (safetensors::dtype_code(static_cast<DType>(d)) == t.dtype()) x.type.dtype = static_cast<DType>(d), known = true;
    if (!known) throw bad(what + " has dtype '" + t.dtype() + "'");
    if (t.shape_size() > kMaxRank) throw bad(what + " has more than 8 dims");
    x.type.shape.assign(t.shape().begin(), t.shape().end());
    int64_t total = 0;
    try {
      total = checked_numel(x.type.shape);
    } catch (const Error&) {
      throw bad(what + " has shape " + dims_str(x.type.shape));
    }
    int64_t covered = 0;
    for (const proto::CheckpointPiece& p : t.pieces()) {
      Piece q{p.file(), p.tensor().empty() ? t.name() : p.tensor(), {p.offsets().begin(), p.offsets().end()},
              {p.shape().begin(), p.shape().end()}};
      if (q.file.empty() || q.file.find('/') != std::string::npos || q.file == "." || q.file == "..")
        throw bad(what + " names the file '" + q.file + "', not a file of the checkpoint's directory");
      if (q.offsets.size() != x.type.shape.size() || q.shape.size() != x.type.shape.size())
        throw bad(what + ": a piece in " + q.file + " has offsets " + dims_str(q.offsets) + " and shape " +
                  dims_str(q.shape) + " for a tensor of " + dims_str(x.type.shape));
      for (size_t d = 0; d < q.shape.size(); ++d)
        if (q.offsets[d] < 0 || q.shape[d] < 0 || q.offsets[d] > x.type.shape[d] || q.shape[d] > x.type.shape[d] - q.offsets[d])
          throw bad(what + ": the piece in " + q.file + " at " + dims_str(q.offsets) + " of shape " + dims_str(q.shape) +
                    " lies outside " + dims_str(x.type.shape));
      for (const Piece& o : x.pieces) {  // disjoint from the others
        bool overlap = true;
        for (size_t d = 0; d < q.shape.size() && overlap; ++d)
          overlap = std::max(q.offsets[d], o.offsets[d]) < std::min(q.offsets[d] + q.shape[d], o.offsets[d] + o.shape[d]);
        if (overlap && numel(q.shape) > 0 && numel(o.shape) > 0)
          throw bad(what + ": the pieces in " + q.file + " and " + o.file + " overlap");
      }
      covered += numel(q.shape);
      x.pieces.push_back(std::move(q));
    }
    if (covered != total)
      throw bad(what + ": its pieces hold " + std::to_string(covered) + " of its " + std::to_string(total) + " elements");
    tensors_.push_back(std::move(x));
  }
  // Every piece is in its file, with the dtype and shape the metadata says.
  for (const Tensor& t : tensors_)
    for (const Piece& p : t.pieces) {
      const safetensors::Reader& r = reader(p.file);
      const safetensors::TensorInfo* info = r.find(p.tensor);
      if (!info) throw Error(r.path() + ": has no tensor '" + p.tensor + "', which " + meta_path + " places there");
      if (info->dtype != t.type.dtype || info->shape != p.shape)
        throw Error(r.path() + ": tensor '" + p.tensor + "' is " + std::string(safetensors::dtype_code(info->dtype)) +
                    dims_str(info->shape) + ", but " + meta_path + " says " +
                    std::string(safetensors::dtype_code(t.type.dtype)) + dims_str(p.shape));
    }
}

Checkpoint::~Checkpoint() = default;

const safetensors::Reader& Checkpoint::reader(const std::string& file) const {
  auto& r = readers_[file];
  if (!r) r = std::make_unique<safetensors::Reader>((fs::path(dir_) / file).string());
  return *r;
}

const Checkpoint::Tensor* Checkpoint::find(const std::string& name) const {
  for (const Tensor& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

int64_t Checkpoint::bytes() const {
  int64_t b = 0;
  for (const Tensor& t : tensors_) b += t.type.bytes();
  return b;
}

void Checkpoint::read(const std::string& name, const TensorType& global, std::span<const int64_t> offsets,
                      std::span<const int64_t> shape, void* dst) const {
  const Tensor* t = find(name);
  if (!t) throw Error(dir_ + ": the checkpoint has no variable '" + name + "'");
  if (t->type != global)
    throw Error(dir_ + ": variable '" + name + "' is " + std::string(safetensors::dtype_code(t->type.dtype)) +
                dims_str(t->type.shape) + " in the checkpoint, " + std::string(safetensors::dtype_code(global.dtype)) +
                dims_str(global.shape) + " in the model");
  const size_t rank = global.shape.size();
  if (offsets.size() != rank || shape.size() != rank)
    throw Error("checkpoint read of '" + name + "': a block of rank " + std::to_string(shape.size()) + " of a tensor of rank " +
                std::to_string(rank));
  const size_t es = dtype_size(global.dtype);
  int64_t filled = 0;
  std::vector<std::byte> buf;
  for (const Piece& p : t->pieces) {
    std::vector<int64_t> lo(rank), hi(rank), block(rank), src_off(rank), dst_off(rank);
    bool empty = false;
    for (size_t d = 0; d < rank; ++d) {
      lo[d] = std::max(p.offsets[d], offsets[d]);
      hi[d] = std::min(p.offsets[d] + p.shape[d], offsets[d] + shape[d]);
      empty = empty || hi[d] <= lo[d];
      block[d] = hi[d] - lo[d];
      src_off[d] = lo[d] - p.offsets[d];
      dst_off[d] = lo[d] - offsets[d];
    }
    if (empty && rank > 0) continue;
    const safetensors::Reader& r = reader(p.file);
    const safetensors::TensorInfo* info = r.find(p.tensor);
    buf.resize(static_cast<size_t>(info->end - info->begin));
    r.read(*info, buf.data());
    copy_block(buf.data(), p.shape, src_off, static_cast<std::byte*>(dst), shape, dst_off, block, es);
    filled += numel(block);
  }
  if (filled != numel(shape))
    throw Error(dir_ + ": the checkpoint holds " + std::to_string(filled) + " of the " + std::to_string(numel(shape)) +
                " elements of '" + name + "' at " + dims_str(offsets) + " of shape " + dims_str(std::vector<int64_t>(shape.begin(), shape.end())));
}

}  // namespace tessel::runtime
