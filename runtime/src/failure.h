// The core's error type: thrown inside the C++ core, caught at the C API (c_api.cpp), which turns it into an
// mw_status and mw_last_error's one line. Messages name the problem and the fix.
#pragma once

#include <stdexcept>
#include <string>

#include "memwall.h"

namespace memwall {

class Failure : public std::runtime_error {
 public:
  Failure(mw_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  mw_status status() const { return status_; }

 private:
  mw_status status_;
};

[[noreturn]] inline void fail(mw_status status, const std::string& message) { throw Failure(status, message); }

}  // namespace memwall
