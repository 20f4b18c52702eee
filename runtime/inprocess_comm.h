// The in-process engine: ranks are threads of one process sharing memory, so collectives
// work on the members' buffers directly. Member i of a group of k reduces (or copies) only
// its 1/k share of the data, reading every member's share and writing every member's
// output for it: a reduce-scatter and an all-gather in one pass, with no thread doing
// everything. Sends copy into a mailbox (reused between steps), so a send never waits.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "runtime/communicator.h"

namespace tessel::runtime {

class InProcessWorld {
 public:
  explicit InProcessWorld(int64_t ranks, CommOptions options = {});
  ~InProcessWorld();
  InProcessWorld(const InProcessWorld&) = delete;
  InProcessWorld& operator=(const InProcessWorld&) = delete;

  int64_t size() const;
  // Rank r's endpoint; owned by the world. Thread-safe.
  Communicator& rank(int64_t r);

  struct State;

 private:
  std::unique_ptr<State> state_;
  std::vector<std::unique_ptr<Communicator>> ranks_;
};

}  // namespace tessel::runtime
