// core/json: the few JSON writing helpers the daemon needs. Parsing is simdjson's job; frames
// and control responses are written by appending to a reused std::string.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace meshd::core {

// Append s as a JSON string literal (with quotes). Control characters, quotes and
// backslashes are escaped; bytes >= 0x80 are copied as they are (input is UTF-8).
void json_append_string(std::string& out, std::string_view s);
void json_append_int(std::string& out, int64_t v);

} // namespace meshd::core
