// control/request: one control-socket request line, parsed into its command and arguments.
//
// A request is one JSON object: `{"cmd":"user.add","name":"bob","kind":"agent"}`. This file
// only parses it; what each command does is control/commands. It is a pure function of the
// line (no store, no loop), so the control-request fuzz target can drive it on its own.
#pragma once

#include "core/result.h"

#include <map>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace meshd::control {

struct Request {
    // What a top-level member holds, as far as commands care: a string, the string items of
    // an array (other items dropped), a boolean, or anything else.
    using Value = std::variant<std::monostate, std::string, std::vector<std::string>, bool>;

    std::string cmd;
    // Every top-level member. A key written twice keeps its first value, as a simdjson
    // lookup by key would.
    std::map<std::string, Value, std::less<>> members;

    // The string member `key`; empty when it is absent or not a string.
    std::string_view arg(std::string_view key) const;
    // The string items of the array member `key`; empty when it is absent or not an array.
    std::vector<std::string_view> string_array(std::string_view key) const;
    // True when the member `key` is the boolean true; false when absent or anything else.
    bool flag(std::string_view key) const;
};

// Parses one request line (without its newline). Errors have code "bad_request" and a message
// meant for the meshctl user.
core::Result<Request> parse_request(std::string_view line);

} // namespace meshd::control
