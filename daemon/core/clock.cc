// core/clock: wall-clock time for message timestamps.
#include "core/clock.h"

#include <chrono>

namespace meshd::core {

int64_t wall_ms() {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

} // namespace meshd::core
