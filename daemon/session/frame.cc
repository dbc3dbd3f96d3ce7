// session/frame: envelope parsing with simdjson and the raw-body scan.
#include "session/frame.h"

#include "store/store.h"

namespace meshd::session {

namespace {

bool is_ws(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

// Index just past the string token starting at json[i] == '"'.
size_t skip_string(std::string_view json, size_t i, bool& escaped) {
    ++i;
    while (i < json.size()) {
        char c = json[i];
        if (c == '\\') {
            escaped = true;
            i += 2;
            continue;
        }
        ++i;
        if (c == '"')
            break;
    }
    return i;
}

// Index just past the value starting at json[i] (valid JSON assumed).
size_t skip_value(std::string_view json, size_t i) {
    int depth = 0;
    while (i < json.size()) {
        char c = json[i];
        if (c == '"') {
            bool escaped = false;
            i = skip_string(json, i, escaped);
            if (depth == 0)
                return i;
            continue;
        }
        if (c == '{' || c == '[') {
            ++depth;
        } else if (c == '}' || c == ']') {
            --depth;
            if (depth == 0)
                return i + 1;
            if (depth < 0)
                return i;
        } else if (depth == 0 && (c == ',' || is_ws(c))) {
            return i;
        }
        ++i;
    }
    return i;
}

// True if the JSON text nests deeper than `limit` containers. Counted here rather than by
// simdjson because its depth check skips empty innermost containers ([[[]]] passes a limit
// of 2). Strings are skipped so brackets inside them do not count.
bool nests_deeper_than(std::string_view json, size_t limit) {
    size_t depth = 0;
    for (size_t i = 0; i < json.size(); ++i) {
        char c = json[i];
        if (c == '"') {
            for (++i; i < json.size() && json[i] != '"'; ++i)
                if (json[i] == '\\')
                    ++i;
        } else if (c == '{' || c == '[') {
            if (++depth > limit)
                return true;
        } else if ((c == '}' || c == ']') && depth > 0) {
            --depth;
        }
    }
    return false;
}

FrameError error(const char* code, std::string message) {
    return FrameError{code, std::move(message)};
}

} // namespace

bool find_top_level_value(std::string_view json, std::string_view key, std::string_view& value) {
    size_t i = 0;
    while (i < json.size() && is_ws(json[i]))
        ++i;
    if (i >= json.size() || json[i] != '{')
        return false;
    ++i;
    while (i < json.size()) {
        while (i < json.size() && (is_ws(json[i]) || json[i] == ','))
            ++i;
        if (i >= json.size() || json[i] != '"')
            return false;
        bool escaped = false;
        size_t key_start = i + 1;
        i = skip_string(json, i, escaped);
        if (escaped)
            return false;
        std::string_view k = json.substr(key_start, i - 1 - key_start);
        while (i < json.size() && (is_ws(json[i]) || json[i] == ':'))
            ++i;
        size_t start = i;
        i = skip_value(json, i);
        if (k == key) {
            value = json.substr(start, i - start);
            return true;
        }
    }
    return false;
}

FrameParser::FrameParser(size_t max_depth) : parser_(), max_depth_(max_depth) {
    set_max_depth(max_depth);
}

void FrameParser::set_max_depth(size_t max_depth) {
    max_depth_ = max_depth;
    // The frame object itself is one level; a body may nest max_depth levels below it.
    // A failed allocation leaves the parser to allocate on the next parse.
    if (parser_.allocate(64 * 1024, max_depth + 2) != simdjson::SUCCESS)
        return;
}

FrameError FrameParser::parse(std::string_view text, Frame& out) {
    out = Frame{};
    simdjson::dom::element root;
    auto err = parser_.parse(text.data(), text.size(), false).get(root);
    // The frame object is one level; a body may nest max_depth levels below it.
    if (err == simdjson::DEPTH_ERROR || (!err && nests_deeper_than(text, max_depth_ + 1)))
        return error("bad_frame", "JSON nesting is deeper than limits.max_depth (" +
                                      std::to_string(max_depth_) + ")");
    if (err)
        return error("bad_frame", std::string("invalid JSON: ") + simdjson::error_message(err));
    simdjson::dom::object obj;
    if (root.get_object().get(obj))
        return error("bad_frame", "a frame must be a JSON object");
    out.object = obj;

    // ref first, so that every later error can echo it.
    if (auto r = obj["ref"]; r.error() == simdjson::SUCCESS) {
        std::string_view ref;
        if (r.get_string().get(ref) || ref.size() > 256)
            return error("bad_frame", "\"ref\" must be a string of at most 256 bytes");
        out.ref = ref;
        out.has_ref = true;
    }
    std::string_view type;
    auto t = obj["type"];
    if (t.error() != simdjson::SUCCESS)
        return error("bad_frame", "the frame has no \"type\"");
    if (t.get_string().get(type))
        return error("bad_frame", "\"type\" must be a string");
    out.type_name = type;

    auto get_string = [&](const char* key, std::string_view& into, bool& present,
                          size_t max_len) -> FrameError {
        auto v = obj[key];
        if (v.error() != simdjson::SUCCESS)
            return {};
        if (v.get_string().get(into))
            return error("bad_frame", std::string("\"") + key + "\" must be a string");
        if (into.size() > max_len)
            return error("bad_frame", std::string("\"") + key + "\" is longer than " +
                                          std::to_string(max_len) + " bytes");
        present = true;
        return {};
    };

    if (type == "hello") {
        out.type = FrameType::hello;
        bool present = false;
        if (auto e = get_string("token", out.token, out.has_token, 4096))
            return e;
        if (auto e = get_string("device", out.device, out.has_device, 1024))
            return e;
        if (auto e = get_string("id", out.claimed_id, present, 1024))
            return e;
        if (auto e = get_string("epoch", out.epoch, out.has_epoch, 256))
            return e;
        if (auto e = get_string("pubkey", out.pubkey, out.has_pubkey, 4096))
            return e;
        if (auto ev = obj["events"]; ev.error() == simdjson::SUCCESS) {
            simdjson::dom::array names;
            if (ev.get_array().get(names))
                return error("bad_frame", "\"events\" must be an array of event names, e.g. "
                                          "[\"receipts\", \"typing\"]");
            size_t i = 0;
            for (simdjson::dom::element item : names) {
                std::string_view name;
                if (item.get_string().get(name))
                    return error("bad_frame", "\"events[" + std::to_string(i) +
                                                  "]\" must be a string (an event name)");
                // Names this server does not know are left out: a newer client still logs in.
                if (name == "receipts")
                    out.wants_receipts = true;
                else if (name == "typing")
                    out.wants_typing = true;
                ++i;
            }
        }
        if (auto r = obj["resume"]; r.error() == simdjson::SUCCESS) {
            std::string_view s;
            int64_t n = 0;
            if (!r.get_string().get(s) && s == "head") {
                out.resume = Frame::Resume::head;
            } else if (!r.get_int64().get(n) && n >= 0) {
                out.resume = Frame::Resume::seq;
                out.resume_seq = n;
            } else {
                return error("bad_frame", "\"resume\" must be a seq (integer >= 0) or \"head\"");
            }
        }
        return {};
    }
    if (type == "auth") {
        out.type = FrameType::auth;
        if (auto e = get_string("sig", out.sig, out.has_sig, 4096))
            return e;
        if (auto e = get_string("nonce", out.nonce, out.has_nonce, 4096))
            return e;
        return {};
    }
    if (type == "send") {
        out.type = FrameType::send;
        bool present = false;
        if (obj["to"].error() != simdjson::SUCCESS)
            return error("bad_frame", "send needs \"to\": a principal id or \"#group\"");
        if (auto e = get_string("to", out.to, present, 256))
            return e;
        if (out.to.empty())
            return error("bad_frame", "\"to\" must not be empty");
        if (auto e = get_string("id", out.id, out.has_id, 1024))
            return e;
        auto b = obj["body"];
        if (b.error() != simdjson::SUCCESS)
            return error("bad_frame", "send needs \"body\": any JSON value");
        if (!find_top_level_value(text, "body", out.body)) {
            body_fallback_ = simdjson::minify(b.value_unsafe());
            out.body = body_fallback_;
        }
        if (auto tv = obj["task"]; tv.error() == simdjson::SUCCESS) {
            simdjson::dom::object task;
            if (tv.get_object().get(task))
                return error("bad_frame", "\"task\" must be an object, such as "
                                          "{\"deadline\":<ms since the epoch>} or {}");
            out.has_task = true;
            if (auto d = task["deadline"]; d.error() == simdjson::SUCCESS && !d.is_null()) {
                if (d.get_int64().get(out.deadline_ms) || out.deadline_ms < 1)
                    return error("bad_frame", "\"task.deadline\" must be a time in milliseconds "
                                              "since the Unix epoch (an integer >= 1)");
            }
        }
        return {};
    }
    if (type == "ack") {
        out.type = FrameType::ack;
        auto u = obj["upto"];
        if (u.error() != simdjson::SUCCESS)
            return error("bad_frame", "ack needs \"upto\": the highest seq this device processed");
        if (u.get_int64().get(out.upto) || out.upto < 0)
            return error("bad_frame", "\"upto\" must be an integer >= 0");
        return {};
    }
    if (type == "watch") {
        out.type = FrameType::watch;
        auto v = obj["ids"];
        if (v.error() != simdjson::SUCCESS)
            return error("bad_frame",
                         "watch needs \"ids\": an array of principal ids ([] stops watching)");
        if (v.get_array().get(out.ids))
            return error("bad_frame", "\"ids\" must be an array of principal ids");
        size_t i = 0;
        for (simdjson::dom::element item : out.ids) {
            if (!item.is_string())
                return error("bad_frame", "\"ids\"[" + std::to_string(i) + "] must be a string");
            ++i;
        }
        return {};
    }
    if (type == "status") {
        out.type = FrameType::status;
        bool present = false;
        if (obj["status"].error() != simdjson::SUCCESS)
            return error("bad_frame",
                         "status needs \"status\": \"available\", \"busy\", \"away\" or \"dnd\"");
        if (auto e = get_string("status", out.status, present, 64))
            return e;
        if (auto e = get_string("note", out.note, present, store::max_note_bytes))
            return e;
        return {};
    }
    if (type == "profile") {
        out.type = FrameType::profile; // session/profile checks its fields
        return {};
    }
    if (type == "who") {
        out.type = FrameType::who;
        if (auto e = get_string("skill", out.skill, out.has_skill, 1024))
            return e;
        if (auto e = get_string("kind", out.kind, out.has_kind, 64))
            return e;
        if (auto e = get_string("after", out.who_after, out.has_who_after, 1024))
            return e;
        if (auto v = obj["online"]; v.error() == simdjson::SUCCESS) {
            if (v.get_bool().get(out.online))
                return error("bad_frame", "\"online\" must be true or false");
            out.has_online = true;
        }
        out.limit = who_default_limit;
        if (auto v = obj["limit"]; v.error() == simdjson::SUCCESS) {
            if (v.get_int64().get(out.limit) || out.limit < 1 || out.limit > who_max_limit)
                return error("bad_frame",
                             "\"limit\" must be an integer 1.." + std::to_string(who_max_limit));
        }
        return {};
    }
    if (type == "history") {
        out.type = FrameType::history;
        if (auto e = get_string("with", out.with, out.has_with, 256))
            return e;
        if (out.has_with && out.with.empty())
            return error("bad_frame", "\"with\" must not be empty");
        auto get_seq = [&](const char* key, int64_t& into, bool& present) -> FrameError {
            auto v = obj[key];
            if (v.error() != simdjson::SUCCESS)
                return {};
            if (v.get_int64().get(into) || into < 0)
                return error("bad_frame", std::string("\"") + key +
                                              "\" must be a seq (an integer >= 0)");
            present = true;
            return {};
        };
        if (auto e = get_seq("before", out.before, out.has_before))
            return e;
        if (auto e = get_seq("after", out.after, out.has_after))
            return e;
        if (out.has_before && out.has_after)
            return error("bad_frame", "history takes \"before\" or \"after\", not both");
        if (auto v = obj["limit"]; v.error() == simdjson::SUCCESS) {
            const std::string range = "\"limit\" must be an integer 1.." +
                                      std::to_string(max_history_limit);
            if (v.get_int64().get(out.limit))
                return error("bad_frame", range);
            if (out.limit < 1 || out.limit > max_history_limit)
                return error("bad_frame", range + ", got " + std::to_string(out.limit));
        }
        return {};
    }
    if (type == "typing") {
        out.type = FrameType::typing;
        bool present = false;
        if (obj["to"].error() != simdjson::SUCCESS)
            return error("bad_frame", "typing needs \"to\": a principal id or \"#group\"");
        if (auto e = get_string("to", out.to, present, 256))
            return e;
        if (out.to.empty())
            return error("bad_frame", "\"to\" must not be empty");
        std::string_view state;
        bool has_state = false;
        if (auto e = get_string("state", state, has_state, 16))
            return e;
        if (has_state && state != "start" && state != "stop")
            return error("bad_frame", "\"state\" must be \"start\" or \"stop\"");
        out.typing_stop = has_state && state == "stop";
        return {};
    }
    if (type == "read") {
        out.type = FrameType::read;
        auto u = obj["upto"];
        if (u.error() != simdjson::SUCCESS)
            return error("bad_frame", "read needs \"upto\": the highest seq the principal read");
        if (u.get_int64().get(out.upto) || out.upto < 0)
            return error("bad_frame", "\"upto\" must be an integer >= 0");
        return {};
    }
    if (type == "receipts") {
        out.type = FrameType::receipts;
        const std::string what =
            "an array of 1 to " + std::to_string(max_receipt_seqs) + " seqs (integers >= 1)";
        auto v = obj["seqs"];
        if (v.error() != simdjson::SUCCESS)
            return error("bad_frame", "receipts needs \"seqs\": " + what);
        simdjson::dom::array seqs;
        if (v.get_array().get(seqs))
            return error("bad_frame", "\"seqs\" must be " + what);
        size_t n = seqs.size();
        if (n == 0 || n > max_receipt_seqs)
            return error("bad_frame", "\"seqs\" must be " + what + ", got " +
                                          std::to_string(n) + " seqs");
        out.seqs.reserve(n);
        for (simdjson::dom::element item : seqs) {
            int64_t seq = 0;
            if (item.get_int64().get(seq) || seq < 1)
                return error("bad_frame", "\"seqs[" + std::to_string(out.seqs.size()) +
                                              "]\" must be a seq (an integer >= 1)");
            out.seqs.push_back(seq);
        }
        return {};
    }
    if (type == "settings") {
        out.type = FrameType::settings;
        if (auto v = obj["read_receipts"]; v.error() == simdjson::SUCCESS) {
            if (v.get_bool().get(out.read_receipts))
                return error("bad_frame", "\"read_receipts\" must be true or false");
            out.has_read_receipts = true;
        }
        return {};
    }
    if (type == "task") {
        out.type = FrameType::task;
        auto v = obj["id"];
        if (v.error() != simdjson::SUCCESS || v.get_int64().get(out.task_id) || out.task_id < 1)
            return error("bad_frame", "task needs \"id\": the task's id (an integer >= 1)");
        bool present = false;
        if (auto e = get_string("state", out.task_state, present, 16))
            return e;
        if (!present || (out.task_state != "working" && out.task_state != "done" &&
                         out.task_state != "failed" && out.task_state != "canceled"))
            return error("bad_frame", "task needs \"state\": \"working\", \"done\", \"failed\" "
                                      "or \"canceled\"");
        if (auto e = get_string("reason", out.reason, out.has_reason, max_task_reason_bytes))
            return e;
        out.result = "null";
        if (auto r = obj["result"]; r.error() == simdjson::SUCCESS) {
            if (out.task_state != "done")
                return error("bad_frame", "only a \"done\" task has a \"result\"");
            if (!find_top_level_value(text, "result", out.result)) {
                body_fallback_ = simdjson::minify(r.value_unsafe());
                out.result = body_fallback_;
            }
        }
        return {};
    }
    out.type = FrameType::unknown;
    return {};
}

} // namespace meshd::session
