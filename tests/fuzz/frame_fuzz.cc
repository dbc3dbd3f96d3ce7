// tests/fuzz/frame_fuzz: libFuzzer target for the client frame parser (daemon/session/frame.cc).
//
// One input is one frame text, as a WebSocket text message would carry it. Each input is
//   1. parsed by a FrameParser at the default limits.max_depth (64) and by one at a small
//      depth, 2..9, picked from the input's size so that a reproducer replays the same way;
//   2. scanned by find_top_level_value, on an unpadded copy of exactly the input's size so that
//      ASan catches a read past its end (the parser itself needs simdjson's padding).
// Invariants (a broken one aborts, and libFuzzer reports it like a crash):
//   - an error has the code "bad_frame" and a non-empty one-line message;
//   - a frame accepted at the small depth is accepted at the default depth, with equal fields;
//   - an accepted frame respects the parser's length limits, and every view is readable;
//   - a send's body is the same JSON value as the DOM's "body" member, and when it is a view
//     of the input (not the parser's re-encoded fallback) it lies inside the input;
//   - find_top_level_value returns only views inside its input;
//   - a profile frame's fields either build a profile (valid JSON, canonical skills, within
//     the size limit) or give bad_frame/too_large with a one-line message.
#include "session/frame.h"
#include "session/profile.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <simdjson.h>
#include <string>
#include <string_view>
#include <vector>

namespace {

using meshd::session::Frame;
using meshd::session::FrameError;
using meshd::session::FrameParser;
using meshd::session::FrameType;

constexpr size_t kDefaultDepth = 64; // limits.max_depth's default
constexpr size_t kMinDepth = 2;      // limits.max_depth's lower bound
constexpr size_t kSmallDepths = 8;   // small depths tried: 2..9

void check(bool ok, const char* invariant) {
    if (ok)
        return;
    std::fprintf(stderr, "frame_fuzz: invariant broken: %s\n", invariant);
    std::abort();
}

// Reads every byte, so ASan checks the whole view is addressable.
void touch(std::string_view v) {
    volatile unsigned char sink = 0;
    for (char c : v)
        sink = sink ^ static_cast<unsigned char>(c);
    (void)sink;
}

bool inside(std::string_view part, std::string_view whole) {
    auto begin = reinterpret_cast<uintptr_t>(whole.data());
    auto at = reinterpret_cast<uintptr_t>(part.data());
    return at >= begin && at + part.size() <= begin + whole.size();
}

bool points_into(std::string_view part, std::string_view whole) {
    auto begin = reinterpret_cast<uintptr_t>(whole.data());
    auto at = reinterpret_cast<uintptr_t>(part.data());
    return part.data() != nullptr && at >= begin && at < begin + whole.size();
}

FrameParser& parser_for_depth(size_t depth) {
    // Built once: a parser allocates its buffers up front, far slower than one parse.
    static std::array<std::unique_ptr<FrameParser>, kSmallDepths> small = [] {
        std::array<std::unique_ptr<FrameParser>, kSmallDepths> parsers;
        for (size_t i = 0; i < kSmallDepths; ++i)
            parsers[i] = std::make_unique<FrameParser>(kMinDepth + i);
        return parsers;
    }();
    static FrameParser default_depth(kDefaultDepth);
    return depth == kDefaultDepth ? default_depth : *small[depth - kMinDepth];
}

void check_error(const FrameError& e) {
    check(e.code != nullptr && std::strcmp(e.code, "bad_frame") == 0,
          "every frame error has the code bad_frame");
    check(!e.message.empty(), "every frame error has a message");
    check(e.message.find('\n') == std::string::npos, "an error message is one line");
}

// The DOM's "body" member of `text`, minified; the text is valid JSON with such a member.
std::string dom_body(std::string_view text) {
    simdjson::dom::parser parser;
    simdjson::padded_string padded(text);
    simdjson::dom::element body;
    check(!parser.parse(padded)["body"].get(body), "an accepted send's text has a DOM body");
    return simdjson::minify(body);
}

std::string minified(std::string_view json) {
    simdjson::dom::parser parser;
    simdjson::padded_string padded(json);
    simdjson::dom::element value;
    check(!parser.parse(padded).get(value), "a send's body is valid JSON on its own");
    return simdjson::minify(value);
}

void check_frame(const Frame& f, std::string_view text) {
    for (std::string_view v :
         {f.type_name, f.ref, f.token, f.device, f.claimed_id, f.epoch, f.to, f.body, f.id})
        touch(v);
    check(f.ref.size() <= 256, "ref is at most 256 bytes");
    check(f.has_ref || f.ref.empty(), "no ref means an empty ref");
    check(f.token.size() <= 4096 && f.device.size() <= 1024 && f.claimed_id.size() <= 1024 &&
              f.epoch.size() <= 256 && f.to.size() <= 256 && f.id.size() <= 1024,
          "string fields respect their length limits");
    check(f.resume_seq >= 0 && f.upto >= 0, "seqs are never negative");
    for (std::string_view v : {f.status, f.note, f.skill, f.kind, f.who_after, f.with})
        touch(v);
    check(f.note.size() <= meshd::store::max_note_bytes, "a note is at most 200 bytes");
    check(f.limit >= 1 && f.limit <= meshd::session::who_max_limit, "who limit is 1..500");
    switch (f.type) {
    case FrameType::hello:
        check(f.type_name == "hello", "type hello comes from \"hello\"");
        break;
    case FrameType::auth:
        check(f.type_name == "auth", "type auth comes from \"auth\"");
        break;
    case FrameType::ack:
        check(f.type_name == "ack", "type ack comes from \"ack\"");
        break;
    case FrameType::unknown:
        for (std::string_view known :
             {"hello", "auth", "send", "ack", "watch", "status", "profile", "who", "history",
              "typing", "read", "receipts", "settings", "task"})
            check(f.type_name != known, "a known type name never gives FrameType::unknown");
        break;
    case FrameType::watch:
        check(f.type_name == "watch", "type watch comes from \"watch\"");
        for (simdjson::dom::element id : f.ids)
            check(id.is_string(), "every watched id is a string");
        break;
    case FrameType::status:
        check(f.type_name == "status", "type status comes from \"status\"");
        break;
    case FrameType::who:
        check(f.type_name == "who", "type who comes from \"who\"");
        break;
    case FrameType::profile: {
        check(f.type_name == "profile", "type profile comes from \"profile\"");
        constexpr size_t max_bytes = 8192; // directory.max_profile_bytes's default
        auto built = meshd::session::build_profile(f.object, max_bytes);
        if (!built) {
            check(built.error().code == "bad_frame" || built.error().code == "too_large",
                  "a refused profile is bad_frame or too_large");
            check(!built.error().message.empty() &&
                      built.error().message.find('\n') == std::string::npos,
                  "a profile error is one non-empty line");
            break;
        }
        const meshd::store::Profile& p = *built.value();
        check(p.json.size() <= max_bytes, "a built profile is within the size limit");
        check(p.skills.size() <= meshd::store::max_skills, "at most 64 skills");
        for (const std::string& skill : p.skills)
            check(meshd::session::canonical_skill(skill) == skill, "skills are canonical");
        minified(p.json); // aborts unless it is valid JSON
        break;
    }
    case FrameType::history:
        check(f.type_name == "history", "type history comes from \"history\"");
        check(!(f.has_before && f.has_after), "history never has both before and after");
        check(f.before >= 0 && f.after >= 0, "history bounds are never negative");
        check(!f.has_with || !f.with.empty(), "a given with is never empty");
        break;
    case FrameType::typing:
        check(f.type_name == "typing", "type typing comes from \"typing\"");
        check(!f.to.empty(), "an accepted typing has a non-empty to");
        break;
    case FrameType::read:
        check(f.type_name == "read", "type read comes from \"read\"");
        break;
    case FrameType::receipts:
        check(f.type_name == "receipts", "type receipts comes from \"receipts\"");
        check(!f.seqs.empty() && f.seqs.size() <= meshd::session::max_receipt_seqs,
              "receipts asks for 1..100 seqs");
        for (int64_t seq : f.seqs)
            check(seq >= 1, "every asked seq is >= 1");
        break;
    case FrameType::settings:
        check(f.type_name == "settings", "type settings comes from \"settings\"");
        check(f.has_read_receipts || f.read_receipts, "read_receipts defaults to on");
        break;
    case FrameType::task:
        check(f.type_name == "task", "type task comes from \"task\"");
        check(f.task_id >= 1, "a task id is >= 1");
        check(f.task_state == "working" || f.task_state == "done" || f.task_state == "failed" ||
                  f.task_state == "canceled",
              "a task state is one a client may set");
        check(f.reason.size() <= meshd::session::max_task_reason_bytes, "a reason is short");
        check(!f.result.empty(), "a task frame always has a result text (null when absent)");
        minified(f.result); // aborts unless it is valid JSON
        break;
    case FrameType::send:
        check(f.type_name == "send", "type send comes from \"send\"");
        check(!f.has_task || f.deadline_ms >= 0, "a deadline is never negative");
        check(!f.to.empty(), "an accepted send has a non-empty to");
        check(!f.body.empty(), "an accepted send has a body");
        if (points_into(f.body, text))
            check(inside(f.body, text), "a body taken from the input lies inside it");
        check(minified(f.body) == dom_body(text), "the raw body is the DOM's body");
        break;
    }
}

bool same_fields(const Frame& a, const Frame& b) {
    return a.type == b.type && a.type_name == b.type_name && a.ref == b.ref &&
           a.has_ref == b.has_ref && a.has_token == b.has_token && a.token == b.token &&
           a.has_device == b.has_device && a.device == b.device && a.claimed_id == b.claimed_id &&
           a.epoch == b.epoch && a.has_epoch == b.has_epoch && a.resume == b.resume &&
           a.resume_seq == b.resume_seq && a.to == b.to && a.body == b.body &&
           a.has_id == b.has_id && a.id == b.id && a.upto == b.upto && a.limit == b.limit &&
           a.has_with == b.has_with && a.with == b.with && a.has_before == b.has_before &&
           a.before == b.before && a.has_after == b.has_after && a.after == b.after &&
           a.seqs == b.seqs && a.typing_stop == b.typing_stop &&
           a.has_read_receipts == b.has_read_receipts && a.read_receipts == b.read_receipts &&
           a.has_task == b.has_task && a.deadline_ms == b.deadline_ms && a.task_id == b.task_id &&
           a.task_state == b.task_state && a.result == b.result && a.reason == b.reason;
}

void check_scan(std::string_view input) {
    // Exactly the input's bytes: any read past the end is a heap overflow for ASan.
    std::vector<char> exact(input.begin(), input.end());
    std::string_view json(exact.data(), exact.size());
    for (std::string_view key : {"body", "type", "ref", ""}) {
        std::string_view value;
        if (meshd::session::find_top_level_value(json, key, value)) {
            check(value.empty() || inside(value, json), "a found value lies inside its input");
            touch(value);
        }
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::vector<char> padded(size + simdjson::SIMDJSON_PADDING, '\0');
    if (size > 0)
        std::memcpy(padded.data(), data, size);
    std::string_view text(padded.data(), size);

    Frame at_default;
    FrameError default_error = parser_for_depth(kDefaultDepth).parse(text, at_default);
    if (default_error)
        check_error(default_error);
    else
        check_frame(at_default, text);

    Frame at_small;
    FrameError small_error =
        parser_for_depth(kMinDepth + size % kSmallDepths).parse(text, at_small);
    if (small_error) {
        check_error(small_error);
    } else {
        check(!default_error, "a frame accepted at a small depth is accepted at depth 64");
        check_frame(at_small, text);
        check(same_fields(at_small, at_default), "both depths give the same fields");
    }

    check_scan(text);
    return 0;
}
