// core/log: one event per line on stderr, key=value, stable event names.
//   level=warn event=conn.closed reason=backpressure conn=42 principal=alice
// Never log a token or a key. Values with spaces or quotes are quoted by log_value().
#pragma once

#include "core/config.h"

#include <cstdarg>
#include <string>
#include <string_view>

namespace meshd::core {

void log_set_level(LogLevel level);
bool log_enabled(LogLevel level);
// fields: already formatted "k=v k2=v2" text (may be empty).
void log_event(LogLevel level, std::string_view event, std::string_view fields);
// printf-style fields.
void logf(LogLevel level, const char* event, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
// Quote a value for a log field if it needs it: abc -> abc, "a b" -> "a b" with escapes.
std::string log_value(std::string_view v);
// Untrusted text for a one-line error message: quoted, at most max_len bytes (then "..."),
// control and non-ASCII bytes shown as '?'.
std::string quoted_excerpt(std::string_view text, size_t max_len = 64);

} // namespace meshd::core

#define MESHD_LOG(level, event, ...)                                                               \
    do {                                                                                           \
        if (::meshd::core::log_enabled(::meshd::core::LogLevel::level))                            \
            ::meshd::core::logf(::meshd::core::LogLevel::level, event, __VA_ARGS__);               \
    } while (0)
