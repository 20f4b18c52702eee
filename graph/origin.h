// Where a node came from: a DSL call site, or a node name in an imported file.
#pragma once

#include <cstdint>
#include <source_location>
#include <string>

namespace tessel {

struct Origin {
  std::string file;      // source file of the DSL call, or the graph file it was loaded from
  uint32_t line = 0;     // 0 when the node came from a file
  std::string function;  // DSL: enclosing function; file: empty

  static Origin here(std::source_location loc = std::source_location::current());
  static Origin from_file(std::string path) { return Origin{std::move(path), 0, {}}; }
  bool empty() const { return file.empty(); }
  // "model.cc:42" (basename and line), "mlp.tsg", or "<unknown>".
  std::string str() const;
  bool operator==(const Origin&) const = default;
};

}  // namespace tessel
