// tests/fuzz/control_fuzz: libFuzzer target for the control-socket request parser
// (daemon/control/request.cc), the step from one request line to a command and its arguments.
//
// One input is one request line as meshctl (or any local peer) would send it; the control
// server strips the newline and caps lines at 64 KiB before this step. Invariants:
//   - an error has the code "bad_request" and a non-empty one-line message;
//   - an accepted request has its cmd among its members, and every member read through
//     Request::arg and Request::string_array agrees with a direct simdjson lookup of the line
//     (the first member of a repeated key, the string items of an array);
//   - the error response built from it (core::json_append_string, as the server writes it)
//     is valid JSON that gives back the message, even for an unknown command name, which is
//     echoed into the message.
#include "control/request.h"
#include "core/json.h"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <simdjson.h>
#include <string>
#include <string_view>
#include <vector>

namespace {

using meshd::control::Request;

void check(bool ok, const char* invariant) {
    if (ok)
        return;
    std::fprintf(stderr, "control_fuzz: invariant broken: %s\n", invariant);
    std::abort();
}

// The response line for an error, built as commands.cc does, must parse back to the message.
void check_error_response(std::string_view code, std::string_view message) {
    std::string line = R"({"ok":false,"error":{"code":)";
    meshd::core::json_append_string(line, code);
    line += R"(,"message":)";
    meshd::core::json_append_string(line, message);
    line += "}}";
    check(line.find('\n') == std::string::npos, "a response is one line");
    simdjson::dom::parser parser;
    simdjson::padded_string padded(line);
    std::string_view back;
    check(!parser.parse(padded)["error"]["message"].get_string().get(back),
          "an error response is valid JSON");
    check(back == message, "an error response carries its message unchanged");
}

// Request::arg and string_array against simdjson's own lookup of the same key.
void check_member(const Request& req, const simdjson::dom::object& object, std::string_view key) {
    simdjson::dom::element value;
    std::string_view text;
    simdjson::dom::array items;
    std::vector<std::string_view> strings;
    if (!object.at_key(key).get(value)) {
        if (!value.get_array().get(items))
            for (simdjson::dom::element item : items)
                if (!item.get_string().get(text))
                    strings.push_back(text);
        if (value.get_string().get(text))
            text = {};
    }
    check(req.arg(key) == text, "arg() agrees with simdjson's lookup");
    check(req.string_array(key) == strings, "string_array() agrees with simdjson's lookup");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view line(reinterpret_cast<const char*>(data), size);
    meshd::core::Result<Request> parsed = meshd::control::parse_request(line);
    if (!parsed) {
        const meshd::core::Error& e = parsed.error();
        check(e.code == "bad_request", "every request error has the code bad_request");
        check(!e.message.empty(), "every request error has a message");
        check(e.message.find('\n') == std::string::npos, "an error message is one line");
        check_error_response(e.code, e.message);
        return 0;
    }
    const Request& req = parsed.value();
    check(req.arg("cmd") == req.cmd, "cmd is the request's first \"cmd\" member");

    simdjson::dom::parser parser;
    simdjson::padded_string padded(line);
    simdjson::dom::object object;
    check(!parser.parse(padded).get_object().get(object), "an accepted line is a JSON object");
    std::set<std::string_view> keys;
    for (simdjson::dom::key_value_pair member : object) {
        keys.insert(member.key);
        check_member(req, object, member.key);
    }
    check(req.members.size() == keys.size(), "one member per distinct key");
    for (std::string_view key : {"name", "kind", "device", "group", "members", "missing"})
        check_member(req, object, key);

    // What dispatch answers for a command it does not know: the name echoed in the message.
    check_error_response("bad_request", "unknown command '" + req.cmd + "'");
    return 0;
}
