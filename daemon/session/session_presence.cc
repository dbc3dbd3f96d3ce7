// session/session_presence: a session's presence and directory frames — watch, status, profile,
// who (meshd-protocol(7), PRESENCE AND DIRECTORY). What they change is kept by
// session/presence and the store; this file checks the frames and answers them.
#include "core/json.h"
#include "core/names.h"
#include "session/broker.h"
#include "session/profile.h"
#include "session/session.h"

#include <unordered_set>

namespace meshd::session {

namespace {

// A who page is cut at this many bytes (at least one entry) or at a quarter of
// limits.max_queue, whichever is less, so that a reply never closes its connection; and it
// looks at this many principals at most, so one query never holds the loop long.
constexpr size_t who_max_bytes = 256 * 1024;
constexpr size_t who_max_scanned = 10000;

void append_ref(std::string& out, std::string_view ref, bool has_ref) {
    if (has_ref) {
        out += R"(,"ref":)";
        core::json_append_string(out, ref);
    }
}

} // namespace

void Session::send_ok(std::string_view ref, bool has_ref) {
    std::string f = R"({"type":"ok")";
    append_ref(f, ref, has_ref);
    f += '}';
    queue_control(std::move(f));
}

void Session::ok_after_commit(std::string_view ref, bool has_ref, std::function<void()> then) {
    // By conn id, not pointer: with storage.sync = full the session may be gone by then.
    broker_.after_commit([&broker = broker_, conn = conn_id_, ref = std::string(ref), has_ref,
                          then = std::move(then)](const core::Error* error) {
        Session* s = broker.find_connection(conn);
        if (s && s->state_ == State::ready) {
            if (error)
                s->send_error(error->code, error->message, ref, has_ref);
            else
                s->send_ok(ref, has_ref);
        }
        if (!error && then)
            then();
    });
}

// Replaces the session's watch list. Names that are no principal do not fail the request (a
// contact list outlives its contacts): they come back in "unknown".
void Session::handle_watch(const Frame& f) {
    size_t count = f.ids.size();
    size_t max_watch = broker_.limits().max_watch;
    if (count > max_watch) {
        send_error("too_large",
                   "\"ids\" lists " + std::to_string(count) +
                       " ids, more than presence.max_watch (" + std::to_string(max_watch) +
                       "); watch fewer",
                   f.ref, f.has_ref);
        return;
    }
    store::Store& store = broker_.store();
    std::vector<store::Principal*> targets;
    std::unordered_set<const store::Principal*> seen;
    std::string unknown;
    targets.reserve(count);
    for (simdjson::dom::element item : f.ids) {
        std::string_view id = item.get_string().value_unsafe(); // checked by the parser
        auto name = core::canonical_principal(id);
        store::Principal* p = name ? store.find(*name) : nullptr;
        if (!p) {
            if (!unknown.empty())
                unknown += ',';
            core::json_append_string(unknown, name ? std::string_view(*name) : id);
            continue;
        }
        if (seen.insert(p).second)
            targets.push_back(p);
    }
    Presence& presence = broker_.presence();
    presence.watch(*this, targets);

    std::string r = R"({"type":"watch")";
    append_ref(r, f.ref, f.has_ref);
    r += R"(,"presence":[)";
    for (size_t i = 0; i < targets.size(); ++i) {
        if (i > 0)
            r += ',';
        r += '{';
        presence.append_fields(r, *targets[i]);
        r += '}';
    }
    r += ']';
    if (!unknown.empty()) {
        r += R"(,"unknown":[)";
        r += unknown;
        r += ']';
    }
    r += '}';
    queue_control(std::move(r));
}

void Session::handle_status(const Frame& f) {
    auto status = store::parse_status(f.status);
    if (!status) {
        send_error("bad_frame",
                   "\"status\" must be \"available\", \"busy\", \"away\" or \"dnd\", got " +
                       shown_value(f.status),
                   f.ref, f.has_ref);
        return;
    }
    store::Principal& p = *principal_;
    if (p.status != *status || p.note != f.note) {
        if (auto r = broker_.store().set_status(p, *status, f.note); !r) {
            send_error(r.error().code, r.error().message, f.ref, f.has_ref);
            return;
        }
        broker_.dispatcher().candidate_changed(p); // available again: queued work may go
    }
    // Watchers hear of it once it is stored, like the ok.
    ok_after_commit(f.ref, f.has_ref,
                    [&broker = broker_, pid = p.pid] { broker.presence().refresh(pid); });
}

void Session::handle_profile(const Frame& f) {
    auto profile = build_profile(f.object, broker_.limits().max_profile_bytes);
    if (!profile) {
        send_error(profile.error().code, profile.error().message, f.ref, f.has_ref);
        return;
    }
    if (auto r = broker_.store().set_profile(*principal_, std::move(profile.value())); !r) {
        send_error(r.error().code, r.error().message, f.ref, f.has_ref);
        return;
    }
    broker_.dispatcher().candidate_changed(*principal_); // a new skill: its queue may go
    ok_after_commit(f.ref, f.has_ref);
}

void Session::handle_who(const Frame& f) {
    WhoQuery q;
    if (f.has_skill) {
        auto skill = canonical_skill(f.skill);
        if (!skill) {
            send_error("bad_frame",
                       "\"skill\" " + shown_value(f.skill) +
                           " is not a skill name: use 1-64 of a-z 0-9 . _ -",
                       f.ref, f.has_ref);
            return;
        }
        q.skill = std::move(*skill);
    }
    if (f.has_kind) {
        if (f.kind != "user" && f.kind != "agent") {
            send_error("bad_frame",
                       "\"kind\" must be \"user\" or \"agent\", got " + shown_value(f.kind), f.ref,
                       f.has_ref);
            return;
        }
        q.kind = f.kind == "agent" ? store::Kind::agent : store::Kind::user;
    }
    if (f.has_online)
        q.online = f.online;
    if (f.has_who_after) {
        // The cursor is the last name of a page: anything else is a client bug.
        auto after = core::canonical_principal(f.who_after);
        if (!after || *after != f.who_after) {
            send_error("bad_frame",
                       "\"after\" " + shown_value(f.who_after) +
                           " is not a cursor: pass the \"next\" of the previous who reply",
                       f.ref, f.has_ref);
            return;
        }
        q.after = std::move(*after);
    }
    q.limit = static_cast<size_t>(f.limit);
    q.max_scanned = who_max_scanned;
    q.max_bytes = std::min(who_max_bytes, broker_.limits().max_queue / 4);

    std::string r = R"({"type":"who")";
    append_ref(r, f.ref, f.has_ref);
    r += R"(,"principals":[)";
    std::optional<std::string> next = broker_.presence().who(q, r);
    r += ']';
    if (next) {
        r += R"(,"next":)";
        core::json_append_string(r, *next);
    }
    r += '}';
    queue_control(std::move(r));
}

} // namespace meshd::session
