// For the C++ tools built with the library (memwall-run): the core object behind a C handle.
#pragma once

#include "bundle_reader.h"
#include "memwall.h"

namespace memwall {
const Bundle& bundle_of(const mw_bundle* bundle);
}  // namespace memwall
