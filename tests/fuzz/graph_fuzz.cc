// libFuzzer target for graph files: parse_graph must give a tessel::Error or a graph that
// verifies and round-trips exactly. Any other exception, crash or sanitizer report is a bug.
// Build with clang -fsanitize=fuzzer,address (TESSEL_FUZZ); seed it with saved .tsg files.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "graph/error.h"
#include "graph/serialize.h"
#include "ops/registry.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const tessel::OpRegistry& registry = tessel::ops::registry();
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  std::optional<tessel::Graph> g;
  try {
    g.emplace(tessel::parse_graph(bytes, registry, "fuzz.tsg"));
  } catch (const tessel::Error&) {
    return 0;  // rejected cleanly: the expected outcome for almost every input
  }
  // Past this point an exception escapes on purpose: a loaded graph must verify and save.
  g->verify();
  for (bool text : {false, true}) {
    std::string once = tessel::serialize_graph(*g, {.with_data = true, .text = text});
    std::string twice = tessel::serialize_graph(tessel::parse_graph(once, registry, "fuzz.tsg"),
                                                {.with_data = true, .text = text});
    if (once != twice) {
      std::fprintf(stderr, "graph_fuzz: %s round trip is not exact\n", text ? "text" : "binary");
      std::abort();
    }
  }
  return 0;
}
