// Graph files (.tsg): binary protobuf (graph/graph.proto) or its text format.
// Loading treats the input as hostile: any defect gives a one-line tessel::Error naming the
// file (and the node, where there is one); memory use is bounded by the input size.
// All functions are thread-safe for distinct graphs.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "graph/graph.h"

namespace tessel {

inline constexpr uint32_t kGraphFormatVersion = 1;
// protobuf cannot parse a message of 2 GiB or more; larger weights belong in checkpoints.
inline constexpr int64_t kMaxGraphFileBytes = (int64_t{1} << 31) - 1;
inline constexpr int64_t kMaxGraphNodes = int64_t{1} << 22;

struct SaveOptions {
  bool with_data = true;  // store Graph::data of variables and constants
  bool text = false;      // protobuf text format instead of binary
};

// Writes atomically (to path.tmp.<pid>, then rename); errors name the path.
void save_graph(const Graph& g, const std::string& path, SaveOptions opt = {});
// The file's bytes. Deterministic: equal graphs give equal bytes.
std::string serialize_graph(const Graph& g, SaveOptions opt = {});

// Reads a binary or text file (told apart by content). Nodes keep the DSL origin stored in
// the file; nodes without one get Origin::from_file(path). `registry` must outlive the graph.
Graph load_graph(const std::string& path, const OpRegistry& registry);
// The same from bytes; `source_name` is the file name used in errors and origins.
Graph parse_graph(std::string_view bytes, const OpRegistry& registry,
                  const std::string& source_name);

}  // namespace tessel
