// control/request: parsing a control request line with simdjson's DOM parser.
#include "control/request.h"

#include <simdjson.h>
#include <utility>

namespace meshd::control {

std::string_view Request::arg(std::string_view key) const {
    auto it = members.find(key);
    if (it == members.end())
        return {};
    if (const auto* s = std::get_if<std::string>(&it->second))
        return *s;
    return {};
}

std::vector<std::string_view> Request::string_array(std::string_view key) const {
    std::vector<std::string_view> out;
    auto it = members.find(key);
    if (it == members.end())
        return out;
    if (const auto* items = std::get_if<std::vector<std::string>>(&it->second))
        out.assign(items->begin(), items->end());
    return out;
}

bool Request::flag(std::string_view key) const {
    auto it = members.find(key);
    if (it == members.end())
        return false;
    const bool* b = std::get_if<bool>(&it->second);
    return b && *b;
}

core::Result<Request> parse_request(std::string_view line) {
    // A parser per request: requests are rare, and a fresh one holds no memory afterwards.
    simdjson::dom::parser parser;
    simdjson::padded_string padded(line);
    simdjson::dom::object object;
    if (parser.parse(padded).get_object().get(object))
        return core::make_error("bad_request", "a request is one JSON object per line");

    Request req;
    for (simdjson::dom::key_value_pair member : object) {
        Request::Value value;
        std::string_view text;
        simdjson::dom::array items;
        bool boolean = false;
        if (!member.value.get_string().get(text)) {
            value = std::string(text);
        } else if (!member.value.get_array().get(items)) {
            std::vector<std::string> strings;
            for (simdjson::dom::element item : items)
                if (!item.get_string().get(text))
                    strings.emplace_back(text);
            value = std::move(strings);
        } else if (!member.value.get_bool().get(boolean)) {
            value = boolean;
        }
        req.members.emplace(std::string(member.key), std::move(value)); // first one wins
    }
    auto cmd = req.members.find(std::string_view("cmd"));
    if (cmd == req.members.end() || !std::holds_alternative<std::string>(cmd->second))
        return core::make_error("bad_request", "the request has no string \"cmd\"");
    req.cmd = std::get<std::string>(cmd->second);
    return req;
}

} // namespace meshd::control
