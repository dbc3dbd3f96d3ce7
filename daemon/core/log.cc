// core/log: the line logger. Lines go to stderr in one write each so that concurrent
// threads (store helper) never interleave inside a line.
#include "core/log.h"

#include <cstdio>
#include <unistd.h>

namespace meshd::core {

namespace {
LogLevel g_level = LogLevel::info;
}

void log_set_level(LogLevel level) {
    g_level = level;
}
bool log_enabled(LogLevel level) {
    return static_cast<int>(level) >= static_cast<int>(g_level);
}

void log_event(LogLevel level, std::string_view event, std::string_view fields) {
    if (!log_enabled(level))
        return;
    std::string line;
    line.reserve(32 + event.size() + fields.size());
    line += "level=";
    line += to_string(level);
    line += " event=";
    line += event;
    if (!fields.empty()) {
        line += ' ';
        line += fields;
    }
    line += '\n';
    ssize_t rc = ::write(STDERR_FILENO, line.data(), line.size());
    (void)rc;
}

void logf(LogLevel level, const char* event, const char* fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if (static_cast<size_t>(n) >= sizeof buf)
        n = sizeof buf - 1;
    log_event(level, event, std::string_view(buf, static_cast<size_t>(n)));
}

std::string log_value(std::string_view v) {
    bool plain = !v.empty();
    for (char c : v)
        if (c <= ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) >= 0x7f)
            plain = false;
    if (plain)
        return std::string(v);
    std::string out = "\"";
    for (char c : v) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            out += ' ';
        } else {
            out += c;
        }
    }
    out += '"';
    return out;
}

std::string quoted_excerpt(std::string_view text, size_t max_len) {
    std::string out = "\"";
    for (size_t i = 0; i < text.size() && i < max_len; ++i) {
        auto c = static_cast<unsigned char>(text[i]);
        out += c < 0x20 || c >= 0x7f ? '?' : static_cast<char>(c);
    }
    if (text.size() > max_len)
        out += "...";
    return out + "\"";
}

} // namespace meshd::core
