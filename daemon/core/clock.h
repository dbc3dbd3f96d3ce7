// core/clock: wall-clock time for message timestamps and records.
#pragma once

#include <cstdint>

namespace meshd::core {

// Milliseconds since the Unix epoch.
int64_t wall_ms();

} // namespace meshd::core
