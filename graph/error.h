// Errors thrown by every tessel layer. Library code throws; it never aborts the process.
#pragma once

#include <stdexcept>
#include <string>

namespace tessel {

// The one exception type users catch. The message is complete and single-line where it
// can be: "model.cc:42: matmul 'fc2': inner dims differ: [256,1024] x [512,10]".
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace tessel
