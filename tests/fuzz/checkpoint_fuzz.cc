// libFuzzer target for the checkpoint readers: an input whose first byte is even is a
// safetensors file (runtime/safetensors.h); odd, the metadata file of a checkpoint whose one
// shard is a small valid safetensors file (runtime/checkpoint.h). Each must give a
// tessel::Error or a reader whose every tensor (every variable, whole) reads within the file.
// Any other exception, crash or sanitizer report is a bug. Build with clang (TESSEL_FUZZ);
// seed it with tests/data/checkpoint_corpus.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "graph/error.h"
#include "runtime/checkpoint.h"
#include "runtime/safetensors.h"

namespace {

const std::string& dir() {
  // Never destroyed: the exit handler that removes the directory runs after static destructors.
  static const std::string& d = *new std::string([] {
    char t[] = "/tmp/tessel_ckpt_fuzz_XXXXXX";
    std::string p = ::mkdtemp(t);
    std::atexit([] { std::filesystem::remove_all(dir()); });
    // The shard a fuzzed metadata file may point at: w f32[2,3] and step i64[].
    const float w[6] = {1, 2, 3, 4, 5, 6};
    const int64_t step = 9;
    const std::vector<tessel::runtime::safetensors::TensorView> views = {{"w", tessel::DType::f32, {2, 3}, w},
                                                                    {"step", tessel::DType::i64, {}, &step}};
    std::filesystem::create_directories(p + "/ck");
    tessel::runtime::safetensors::write(p + "/ck/rank-00000.safetensors", views);
    return p;
  }());
  return d;
}

void put(const std::string& path, const uint8_t* data, size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  try {
    if (data[0] % 2 == 0) {
      const std::string p = dir() + "/x.safetensors";
      put(p, data + 1, size - 1);
      tessel::runtime::safetensors::Reader r(p);
      for (const auto& t : r.tensors()) {
        std::vector<char> buf(static_cast<size_t>(t.end - t.begin));
        r.read(t, buf.data());
      }
    } else {
      put(dir() + "/ck/checkpoint.json", data + 1, size - 1);
      tessel::runtime::Checkpoint ck(dir() + "/ck");
      for (const auto& t : ck.tensors()) {
        if (t.type.bytes() > (int64_t{1} << 20)) continue;  // covered by the files: at most a few bytes
        std::vector<std::byte> whole(static_cast<size_t>(t.type.bytes()));
        ck.read(t.name, t.type, std::vector<int64_t>(t.type.shape.size(), 0), t.type.shape, whole.data());
      }
    }
  } catch (const tessel::Error&) {
    return 0;  // refused cleanly
  }
  return 0;
}
