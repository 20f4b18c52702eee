// Where a node came from: a DSL call site, or a node name in an imported file.
#pragma once

#include <cstdint>
#include <string>
#include <version>
#if defined(__cpp_lib_source_location)
#include <source_location>
#endif

namespace tessel {

struct Origin {
  std::string file;      // source file of the DSL call, or the graph file it was loaded from
  uint32_t line = 0;     // 0 when the node came from a file
  std::string function;  // DSL: enclosing function; file: empty
  // The DSL module path of the layer that made the node ("block3/attn/q"), empty outside
  // any layer. Nodes made for this one (its gradient, inserted collectives) copy the whole
  // origin, so they keep it. The planner finds layers from it, never from node names.
  std::string scope;

  // The caller's location (default arguments are evaluated at the call site). Built on
  // compiler builtins so graph/ also compiles where <source_location> is missing (clang 14
  // with libstdc++ 12, used for fuzzing).
  static Origin here(const char* file = __builtin_FILE(), uint32_t line = __builtin_LINE(),
                     const char* function = __builtin_FUNCTION()) {
    return Origin{file, line, function, {}};
  }
#if defined(__cpp_lib_source_location)
  static Origin at(const std::source_location& loc) {
    return Origin{loc.file_name(), static_cast<uint32_t>(loc.line()), loc.function_name(), {}};
  }
#endif
  static Origin from_file(std::string path) { return Origin{std::move(path), 0, {}, {}}; }
  bool empty() const { return file.empty(); }
  // "model.cc:42" (basename and line), "mlp.tsg", or "<unknown>".
  std::string str() const;
  bool operator==(const Origin&) const = default;
};

}  // namespace tessel
