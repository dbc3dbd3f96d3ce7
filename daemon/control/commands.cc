// control/commands: the control-socket request handlers.
#include "control/commands.h"

#include "control/request.h"
#include "core/base64.h"
#include "core/clock.h"
#include "core/json.h"
#include "core/log.h"
#include "core/names.h"
#include "meshd_build.h"
#include "session/profile.h"

#include <map>
#include <optional>
#include <sodium.h>
#include <unistd.h>

namespace meshd::control {

namespace {

std::string ok(std::string_view result_json) {
    std::string out = R"({"ok":true,"result":)";
    out += result_json;
    out += '}';
    return out;
}

std::string fail(std::string_view code, std::string_view message) {
    std::string out = R"({"ok":false,"error":{"code":)";
    core::json_append_string(out, code);
    out += R"(,"message":)";
    core::json_append_string(out, message);
    out += "}}";
    return out;
}

void field(std::string& out, std::string_view key, std::string_view value, bool first = false) {
    if (!first)
        out += ',';
    core::json_append_string(out, key);
    out += ':';
    core::json_append_string(out, value);
}

void field_int(std::string& out, std::string_view key, int64_t value, bool first = false) {
    if (!first)
        out += ',';
    core::json_append_string(out, key);
    out += ':';
    core::json_append_int(out, value);
}

std::string string_list(const std::vector<std::string>& items) {
    std::string out = "[";
    for (size_t i = 0; i < items.size(); ++i) {
        if (i)
            out += ',';
        core::json_append_string(out, items[i]);
    }
    out += ']';
    return out;
}

void cmd_status(CommandContext& ctx, const Reply& reply) {
    store::StoreStatus st = ctx.store.status();
    std::string r = "{";
    field(r, "version", MESHD_VERSION, true);
    field_int(r, "pid", getpid());
    field_int(r, "uptime_s", (core::wall_ms() - ctx.started_ms) / 1000);
    r += R"(,"listeners":)" + string_list(ctx.listeners);
    r += R"(,"http_listeners":[)";
    for (size_t i = 0; i < ctx.http_listeners.size(); ++i) {
        const auto& l = ctx.http_listeners[i];
        if (i)
            r += ',';
        r += '{';
        field(r, "module", l.module, true);
        field(r, "listen", l.listen);
        field(r, "path", l.path);
        r += '}';
    }
    r += ']';
    r += R"(,"modules":[)";
    bool first = true;
    for (const auto& m : ctx.modules.info()) {
        if (!first)
            r += ',';
        first = false;
        r += '{';
        field(r, "name", m.name, true);
        field(r, "version", m.version);
        r += '}';
    }
    r += ']';
    field_int(r, "connections", static_cast<int64_t>(ctx.broker.connection_count()));
    field_int(r, "sessions", static_cast<int64_t>(ctx.broker.session_count()));
    r += R"(,"sessions_by_kind":{)";
    field_int(r, "user", static_cast<int64_t>(ctx.broker.session_count(store::Kind::user)), true);
    field_int(r, "agent", static_cast<int64_t>(ctx.broker.session_count(store::Kind::agent)));
    r += '}';
    field_int(r, "principals", static_cast<int64_t>(ctx.store.principal_count()));
    // Unfinished tasks by state, and the queued ones by skill (what waits for an agent).
    int64_t queued = 0, assigned = 0, working = 0;
    std::map<std::string_view, int64_t> by_skill;
    for (const auto& [id, t] : ctx.store.open_tasks()) {
        if (t.state == store::TaskState::queued) {
            ++queued;
            ++by_skill[t.skill];
        } else if (t.state == store::TaskState::working) {
            ++working;
        } else {
            ++assigned;
        }
    }
    r += R"(,"tasks":{)";
    field_int(r, "queued", queued, true);
    field_int(r, "assigned", assigned);
    field_int(r, "working", working);
    r += R"(,"queued_by_skill":{)";
    first = true;
    for (const auto& [skill, n] : by_skill) {
        field_int(r, skill, n, first);
        first = false;
    }
    r += "}}";
    r += R"(,"store":{)";
    field(r, "path", ctx.store.db_path(), true);
    field_int(r, "bytes", st.db_bytes);
    field(r, "state", st.degraded ? "degraded" : "ok");
    field_int(r, "commits", static_cast<int64_t>(ctx.store.last_batch()));
    field_int(r, "cache_bytes", static_cast<int64_t>(ctx.store.cache_bytes_used()));
    field(r, "message", st.message);
    r += "}}";
    reply(ok(r));
}

void cmd_user_list(CommandContext& ctx, const Reply& reply) {
    std::vector<store::Principal*> all;
    ctx.store.for_each_principal([&](store::Principal& p) {
        if (ctx.store.find(p.name) == &p)
            all.push_back(&p);
    });
    std::sort(all.begin(), all.end(),
              [](const auto* a, const auto* b) { return a->name < b->name; });
    std::string r = R"({"users":[)";
    for (size_t i = 0; i < all.size(); ++i) {
        const store::Principal& p = *all[i];
        if (i)
            r += ',';
        r += '{';
        field(r, "id", p.name, true);
        field(r, "kind", store::to_string(p.kind));
        field_int(r, "created_ms", p.created_ms);
        field_int(r, "seq", p.committed_head);
        field_int(r, "sessions", static_cast<int64_t>(ctx.broker.live_count(p)));
        r += '}';
    }
    r += "]}";
    reply(ok(r));
}

void cmd_sessions(CommandContext& ctx, const Reply& reply) {
    std::vector<const session::Session*> all;
    ctx.broker.for_each_session([&](const session::Session& s) { all.push_back(&s); });
    std::sort(all.begin(), all.end(), [](const auto* a, const auto* b) {
        if (a->principal()->name != b->principal()->name)
            return a->principal()->name < b->principal()->name;
        return a->device() < b->device();
    });
    std::string r = R"({"sessions":[)";
    for (size_t i = 0; i < all.size(); ++i) {
        const session::Session& s = *all[i];
        const store::Principal& p = *s.principal();
        int64_t cursor = ctx.store.cursor(p, s.device());
        if (i)
            r += ',';
        r += '{';
        field(r, "id", p.name, true);
        field(r, "device", s.device());
        field(r, "session", s.session_id());
        field(r, "remote", s.remote());
        // auth: the method ("token", "ed25519"); credential: the module's full name for it.
        field(r, "auth", std::string_view(s.credential()).substr(0, s.credential().find(':')));
        field(r, "credential", s.credential());
        field_int(r, "connected_ms", s.connected_ms());
        field_int(r, "cursor", cursor);
        field_int(r, "sent_seq", s.next_seq() - 1);
        field_int(r, "head", p.committed_head);
        field_int(r, "lag", p.committed_head - cursor);
        r += '}';
    }
    r += "]}";
    reply(ok(r));
}

std::string bad_name(std::string_view name) {
    std::string message = "'";
    message += name;
    message += "' is not a valid name: use 1-64 of a-z 0-9 . _ -";
    return fail("bad_name", message);
}

// Looks up NAME of a request, replying with the error itself when it fails.
store::Principal* principal_arg(CommandContext& ctx, std::string_view name, const Reply& reply) {
    auto canonical = core::canonical_principal(name);
    if (!canonical) {
        reply(bad_name(name));
        return nullptr;
    }
    store::Principal* p = ctx.store.find(*canonical);
    if (!p)
        reply(fail("not_found",
                   "no user or agent named '" + *canonical + "' (meshctl user list shows them)"));
    return p;
}

void cmd_user_add(CommandContext& ctx, std::string_view name, std::string_view kind_text,
                  const Reply& reply) {
    auto canonical = core::canonical_principal(name);
    if (!canonical) {
        reply(bad_name(name));
        return;
    }
    if (kind_text != "user" && kind_text != "agent") {
        reply(fail("bad_request", "kind must be \"user\" or \"agent\""));
        return;
    }
    store::Kind kind = kind_text == "agent" ? store::Kind::agent : store::Kind::user;
    auto added = ctx.store.add_principal(*canonical, kind, core::wall_ms());
    if (!added) {
        reply(fail(added.error().code, added.error().message));
        return;
    }
    std::string token = new_token();
    if (auto r = ctx.store.set_token(*added, token, core::wall_ms()); !r) {
        reply(fail(r.error().code, r.error().message));
        return;
    }
    std::string id = *canonical;
    ctx.broker.after_commit([reply, id, kind, token](const core::Error* error) mutable {
        if (error) {
            reply(fail(error->code, error->message));
        } else {
            MESHD_LOG(info, "control.user_added", "id=%s kind=%s", id.c_str(),
                      std::string(store::to_string(kind)).c_str());
            std::string r = "{";
            field(r, "id", id, true);
            field(r, "kind", store::to_string(kind));
            field(r, "token", token);
            r += '}';
            reply(ok(r));
        }
        sodium_memzero(token.data(), token.size());
    });
}

void cmd_user_del(CommandContext& ctx, std::string_view name, const Reply& reply) {
    store::Principal* p = principal_arg(ctx, name, reply);
    if (!p)
        return;
    if (auto r = ctx.store.delete_principal(p); !r) {
        reply(fail(r.error().code, r.error().message));
        return;
    }
    // Close now, not after the commit: until then (with sync = full, until the fdatasync)
    // a live session could still send or ack as the principal being deleted.
    size_t closed = ctx.broker.close_principal(*p, 4002, "principal deleted");
    std::string id = p->name;
    int64_t pid = p->pid;
    session::Broker& broker = ctx.broker;
    ctx.broker.after_commit([reply, id, closed, pid, &broker](const core::Error* error) {
        if (error) {
            reply(fail(error->code, error->message));
            return;
        }
        broker.presence().forget(pid); // its watchers see it go offline
        MESHD_LOG(info, "control.user_deleted", "id=%s closed_sessions=%zu", id.c_str(), closed);
        std::string r = "{";
        field(r, "id", id, true);
        field_int(r, "closed_sessions", static_cast<int64_t>(closed));
        r += '}';
        reply(ok(r));
    });
}

void cmd_user_token(CommandContext& ctx, std::string_view name, const Reply& reply) {
    store::Principal* p = principal_arg(ctx, name, reply);
    if (!p)
        return;
    std::string token = new_token();
    if (auto r = ctx.store.set_token(p, token, core::wall_ms()); !r) {
        reply(fail(r.error().code, r.error().message));
        return;
    }
    // Sessions opened with the old token end now (see user del for why not after commit).
    size_t closed = ctx.broker.close_principal(*p, 4002, "credentials revoked");
    std::string id = p->name;
    ctx.broker.after_commit([reply, id, closed, token](const core::Error* error) mutable {
        if (error) {
            reply(fail(error->code, error->message));
            return;
        }
        MESHD_LOG(info, "control.token_rotated", "id=%s closed_sessions=%zu", id.c_str(), closed);
        std::string r = "{";
        field(r, "id", id, true);
        field(r, "token", token);
        field_int(r, "closed_sessions", static_cast<int64_t>(closed));
        r += '}';
        reply(ok(r));
        sodium_memzero(token.data(), token.size());
    });
}

// Known devices: those with a stored cursor, and connected ones.
void cmd_device_list(CommandContext& ctx, std::string_view name, const Reply& reply) {
    store::Principal* p = principal_arg(ctx, name, reply);
    if (!p)
        return;
    std::map<std::string, std::pair<int64_t, bool>> devices; // device -> cursor, live
    for (const auto& [device, cursor] : p->cursors)
        devices[device] = {cursor, false};
    ctx.broker.for_each_session([&](const session::Session& s) {
        if (s.principal() == p)
            devices[s.device()].second = true;
    });
    std::string r = "{";
    field(r, "id", p->name, true);
    r += R"(,"devices":[)";
    bool first = true;
    for (const auto& [device, state] : devices) {
        if (!first)
            r += ',';
        first = false;
        r += '{';
        field(r, "device", device, true);
        field_int(r, "cursor", state.first);
        field_int(r, "head", p->committed_head);
        field_int(r, "lag", p->committed_head - state.first);
        r += R"(,"live":)";
        r += state.second ? "true" : "false";
        r += '}';
    }
    r += "]}";
    reply(ok(r));
}

void cmd_device_forget(CommandContext& ctx, std::string_view name, std::string_view device,
                       const Reply& reply) {
    store::Principal* p = principal_arg(ctx, name, reply);
    if (!p)
        return;
    std::string dev(device);
    if (!core::valid_device(dev)) {
        std::string message = "'";
        message += dev;
        message += "' is not a valid device name: use 1-64 of A-Z a-z 0-9 . _ -";
        reply(fail("bad_name", message));
        return;
    }
    session::Session* live = ctx.broker.find_live(*p, dev);
    if (!p->cursors.contains(dev) && !live) {
        reply(fail("not_found", p->name + " has no device named '" + dev +
                                    "' (meshctl device list " + p->name + " shows them)"));
        return;
    }
    if (auto r = ctx.store.forget_device(*p, dev); !r) {
        reply(fail(r.error().code, r.error().message));
        return;
    }
    // Close now: an ack from the live session before the commit would store the cursor again.
    size_t closed = 0;
    if (live) {
        live->close(4002, "device forgotten by the admin");
        closed = 1;
    }
    std::string id = p->name;
    ctx.broker.after_commit([reply, id, dev, closed](const core::Error* error) {
        if (error) {
            reply(fail(error->code, error->message));
            return;
        }
        MESHD_LOG(info, "control.device_forgotten", "id=%s device=%s closed_sessions=%zu",
                  id.c_str(), dev.c_str(), closed);
        std::string r = "{";
        field(r, "id", id, true);
        field(r, "device", dev);
        field_int(r, "closed_sessions", static_cast<int64_t>(closed));
        r += '}';
        reply(ok(r));
    });
}

// ---- ed25519 keys --------------------------------------------------------------------------

// What a session opened with this key calls its credential (auth_ed25519 names it so).
std::string key_credential(std::string_view pubkey) {
    return "ed25519:" + core::base64_encode(pubkey);
}

// The 32 raw bytes of a PUBKEY argument, or a bad_key reply saying what is wrong with it.
std::optional<std::string> pubkey_arg(std::string_view text, const Reply& reply) {
    const std::string how =
        "; give the ed25519 public key (32 bytes) as 44 characters of standard base64";
    if (text.empty()) {
        reply(fail("bad_key", "PUBKEY is empty" + how));
        return std::nullopt;
    }
    auto raw = core::base64_decode(text);
    if (!raw) {
        reply(fail("bad_key", "PUBKEY " + core::quoted_excerpt(text, 60) +
                                  " is not standard base64 (A-Z a-z 0-9 + /, optional = "
                                  "padding)" +
                                  how));
        return std::nullopt;
    }
    if (raw->size() != store::ed25519_key_bytes) {
        reply(fail("bad_key", "PUBKEY " + core::quoted_excerpt(text, 60) + " decodes to " +
                                  std::to_string(raw->size()) +
                                  " bytes, not the 32 of an ed25519 public key" + how));
        return std::nullopt;
    }
    return raw;
}

// Live sessions per credential, for key list.
std::map<std::string, int64_t> sessions_by_credential(CommandContext& ctx) {
    std::map<std::string, int64_t> out;
    ctx.broker.for_each_session([&](const session::Session& s) { ++out[s.credential()]; });
    return out;
}

void cmd_key_add(CommandContext& ctx, std::string_view name, std::string_view pubkey,
                 const Reply& reply) {
    store::Principal* p = principal_arg(ctx, name, reply);
    if (!p)
        return;
    auto raw = pubkey_arg(pubkey, reply);
    if (!raw)
        return;
    int64_t now = core::wall_ms();
    if (auto r = ctx.store.add_key(p, *raw, now); !r) {
        reply(fail(r.error().code, r.error().message));
        return;
    }
    std::string id = p->name;
    std::string result = "{";
    field(result, "id", id, true);
    field(result, "key", core::base64_encode(*raw));
    field_int(result, "added_ms", now);
    result += '}';
    ctx.broker.after_commit([reply, id, result](const core::Error* error) {
        if (error) {
            reply(fail(error->code, error->message));
            return;
        }
        MESHD_LOG(info, "control.key_added", "id=%s", id.c_str());
        reply(ok(result));
    });
}

// name: the principal whose keys to list; absent: every principal's.
void cmd_key_list(CommandContext& ctx, std::optional<std::string_view> name, const Reply& reply) {
    const store::Principal* p = nullptr;
    if (name) {
        p = principal_arg(ctx, *name, reply);
        if (!p)
            return;
    }
    std::map<std::string, int64_t> live = sessions_by_credential(ctx);
    std::string r = R"({"keys":[)";
    bool first = true;
    for (const store::StoredKey& k : ctx.store.keys(p)) {
        if (!first)
            r += ',';
        first = false;
        auto it = live.find(key_credential(k.pubkey));
        r += '{';
        field(r, "id", k.principal->name, true);
        field(r, "key", core::base64_encode(k.pubkey));
        field_int(r, "added_ms", k.added_ms);
        field_int(r, "sessions", it == live.end() ? 0 : it->second);
        r += '}';
    }
    r += "]}";
    reply(ok(r));
}

void cmd_key_revoke(CommandContext& ctx, std::string_view name, std::string_view pubkey,
                    const Reply& reply) {
    store::Principal* p = principal_arg(ctx, name, reply);
    if (!p)
        return;
    auto raw = pubkey_arg(pubkey, reply);
    if (!raw)
        return;
    if (auto r = ctx.store.revoke_key(p, *raw); !r) {
        reply(fail(r.error().code, r.error().message));
        return;
    }
    // Only the sessions this key opened end, and at once (see user del for why not after
    // the commit); the principal's other keys and its token keep theirs.
    size_t closed =
        ctx.broker.close_principal(*p, 4002, "credentials revoked", key_credential(*raw));
    std::string id = p->name;
    std::string result = "{";
    field(result, "id", id, true);
    field(result, "key", core::base64_encode(*raw));
    field_int(result, "closed_sessions", static_cast<int64_t>(closed));
    result += '}';
    ctx.broker.after_commit([reply, id, closed, result](const core::Error* error) {
        if (error) {
            reply(fail(error->code, error->message));
            return;
        }
        MESHD_LOG(info, "control.key_revoked", "id=%s closed_sessions=%zu", id.c_str(), closed);
        reply(ok(result));
    });
}

// ---- groups ------------------------------------------------------------------------------

std::string group_json(const store::Group& g, std::string_view extra_key,
                       const std::vector<store::Principal*>& extra) {
    std::vector<std::string> members;
    for (const auto* p : g.members)
        members.push_back(p->name);
    std::sort(members.begin(), members.end());
    std::string r = "{";
    field(r, "group", g.name, true);
    r += R"(,"members":)" + string_list(members);
    if (!extra_key.empty()) {
        std::vector<std::string> names;
        for (const auto* p : extra)
            names.push_back(p->name);
        std::sort(names.begin(), names.end());
        r += ',';
        core::json_append_string(r, extra_key);
        r += ':' + string_list(names);
    }
    r += '}';
    return r;
}

// The canonical group name ("Team" gives "team"), or a bad_name reply. Requests carry the
// bare name; meshctl takes the '#' off what the admin typed.
std::optional<std::string> group_arg(std::string_view name, const Reply& reply) {
    auto canonical = core::canonical_principal(name);
    if (!canonical) {
        std::string message = "'";
        message += name;
        message += "' is not a valid group name: use 1-64 of a-z 0-9 . _ -";
        reply(fail("bad_name", message));
    }
    return canonical;
}

// Resolves member names; replies with the first error (nothing changes then).
std::optional<std::vector<store::Principal*>>
members_arg(CommandContext& ctx, const std::vector<std::string_view>& names, const Reply& reply) {
    std::vector<store::Principal*> members;
    for (std::string_view name : names) {
        store::Principal* p = principal_arg(ctx, name, reply);
        if (!p)
            return std::nullopt;
        members.push_back(p);
    }
    return members;
}

void cmd_group_change(CommandContext& ctx, bool add, std::string_view group,
                      const std::vector<std::string_view>& names, const Reply& reply) {
    auto name = group_arg(group, reply);
    if (!name)
        return;
    if (names.empty()) {
        reply(fail("bad_request", "name at least one member"));
        return;
    }
    auto members = members_arg(ctx, names, reply);
    if (!members)
        return;
    auto changed = add ? ctx.store.group_add(*name, *members, core::wall_ms())
                       : ctx.store.group_remove(*name, *members);
    if (!changed) {
        reply(fail(changed.error().code, changed.error().message));
        return;
    }
    // Names, not pointers: the answer is built after the commit.
    std::string result =
        group_json(*ctx.store.find_group(*name), add ? "added" : "removed", changed.value());
    ctx.broker.after_commit([reply, result](const core::Error* error) {
        reply(error ? fail(error->code, error->message) : ok(result));
    });
}

void cmd_group_list(CommandContext& ctx, const Reply& reply) {
    std::vector<const store::Group*> all;
    ctx.store.for_each_group([&](const store::Group& g) { all.push_back(&g); });
    std::sort(all.begin(), all.end(),
              [](const auto* a, const auto* b) { return a->name < b->name; });
    std::string r = R"({"groups":[)";
    for (size_t i = 0; i < all.size(); ++i) {
        if (i)
            r += ',';
        r += group_json(*all[i], {}, {});
    }
    r += "]}";
    reply(ok(r));
}

void cmd_group_del(CommandContext& ctx, std::string_view group, const Reply& reply) {
    auto name = group_arg(group, reply);
    if (!name)
        return;
    if (auto r = ctx.store.group_delete(*name); !r) {
        reply(fail(r.error().code, r.error().message));
        return;
    }
    std::string result = "{";
    field(result, "group", *name, true);
    result += '}';
    ctx.broker.after_commit([reply, result](const core::Error* error) {
        reply(error ? fail(error->code, error->message) : ok(result));
    });
}

// ---- directory ---------------------------------------------------------------------------

// The request's "skill" in canonical form into `out` (left as is when absent). False after
// replying bad_request for a bad name.
bool skill_arg(const control::Request& req, std::string& out, const Reply& reply) {
    std::string_view skill = req.arg("skill");
    if (skill.empty())
        return true;
    auto canonical = session::canonical_skill(skill);
    if (!canonical) {
        reply(fail("bad_request", "skill " + session::shown_value(skill) +
                                      " is not a skill name: use 1-64 of a-z 0-9 . _ -"));
        return false;
    }
    out = std::move(*canonical);
    return true;
}

// The same listing as the who frame (session/presence), hidden principals included and
// marked, every page at once.
void cmd_who(CommandContext& ctx, const control::Request& req, const Reply& reply) {
    session::WhoQuery q;
    q.admin = true;
    q.limit = SIZE_MAX;
    if (!skill_arg(req, q.skill, reply))
        return;
    if (std::string_view kind = req.arg("kind"); !kind.empty()) {
        if (kind != "user" && kind != "agent") {
            reply(fail("bad_request",
                       "kind must be \"user\" or \"agent\", got " + session::shown_value(kind)));
            return;
        }
        q.kind = kind == "agent" ? store::Kind::agent : store::Kind::user;
    }
    if (req.flag("online"))
        q.online = true;
    std::string r = R"({"principals":[)";
    ctx.broker.presence().who(q, r);
    r += "]}";
    reply(ok(r));
}

// ---- work dispatch -----------------------------------------------------------------------

// Tracked tasks, newest first, optionally of one state and one skill (at most 1000).
void cmd_tasks(CommandContext& ctx, const control::Request& req, const Reply& reply) {
    store::TaskFilter filter;
    if (std::string_view state = req.arg("state"); !state.empty()) {
        filter.state = store::parse_task_state(state);
        if (!filter.state) {
            reply(fail("bad_request", "state " + session::shown_value(state) +
                                          " is not a task state: queued, assigned, working, "
                                          "done, failed, expired or canceled"));
            return;
        }
    }
    if (!skill_arg(req, filter.skill, reply))
        return;
    auto rows = ctx.store.list_tasks(filter);
    if (!rows) {
        reply(fail(rows.error().code, rows.error().message));
        return;
    }
    std::string r = R"({"tasks":[)";
    bool first = true;
    for (const store::TaskRow& row : *rows) {
        const store::Task& t = row.task;
        if (!first)
            r += ',';
        first = false;
        r += '{';
        field_int(r, "id", t.id, true);
        field(r, "state", store::to_string(t.state));
        field(r, "skill", t.skill);
        field(r, "from", row.sender);
        r += R"(,"agent":)";
        if (row.agent.empty())
            r += "null";
        else
            core::json_append_string(r, row.agent);
        field_int(r, "created_ms", t.created_ms);
        field_int(r, "updated_ms", t.updated_ms);
        r += R"(,"deadline_ms":)";
        if (t.deadline_ms > 0)
            core::json_append_int(r, t.deadline_ms);
        else
            r += "null";
        r += R"(,"lease_until_ms":)";
        if (t.lease_until_ms > 0)
            core::json_append_int(r, t.lease_until_ms);
        else
            r += "null";
        r += '}';
    }
    r += "]}";
    reply(ok(r));
}

void cmd_hide(CommandContext& ctx, std::string_view name, bool hidden, const Reply& reply) {
    store::Principal* p = principal_arg(ctx, name, reply);
    if (!p)
        return;
    if (p->hidden != hidden) {
        if (auto r = ctx.store.set_hidden(*p, hidden); !r) {
            reply(fail(r.error().code, r.error().message));
            return;
        }
    }
    std::string id = p->name;
    std::string result = "{";
    field(result, "id", id, true);
    result += hidden ? R"(,"hidden":true)" : R"(,"hidden":false)";
    result += '}';
    ctx.broker.after_commit([reply, id, hidden, result](const core::Error* error) {
        if (error) {
            reply(fail(error->code, error->message));
            return;
        }
        MESHD_LOG(info, hidden ? "control.hidden" : "control.unhidden", "id=%s", id.c_str());
        reply(ok(result));
    });
}

void cmd_reload(CommandContext& ctx, const Reply& reply) {
    auto diff = ctx.reload();
    if (!diff) {
        reply(fail(diff.error().code, diff.error().message));
        return;
    }
    std::string r = R"({"applied":)" + string_list(diff->applied) + R"(,"restart_required":)" +
                    string_list(diff->restart_required) + "}";
    reply(ok(r));
}

} // namespace

std::string new_token() {
    unsigned char raw[32];
    randombytes_buf(raw, sizeof raw);
    char b64[64];
    sodium_bin2base64(b64, sizeof b64, raw, sizeof raw, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof raw);
    return std::string("mshd_") + b64;
}

void handle_command(CommandContext& ctx, std::string_view line, Reply reply) {
    core::Result<Request> parsed = parse_request(line);
    if (!parsed) {
        reply(fail(parsed.error().code, parsed.error().message));
        return;
    }
    const Request& req = parsed.value();
    std::string_view cmd = req.cmd;
    auto string_array = [&](const char* key) { return req.string_array(key); };
    auto arg = [&](const char* key) { return req.arg(key); };
    if (cmd == "status")
        cmd_status(ctx, reply);
    else if (cmd == "user.add")
        cmd_user_add(ctx, arg("name"), arg("kind").empty() ? "user" : arg("kind"), reply);
    else if (cmd == "user.list")
        cmd_user_list(ctx, reply);
    else if (cmd == "user.del")
        cmd_user_del(ctx, arg("name"), reply);
    else if (cmd == "user.token")
        cmd_user_token(ctx, arg("name"), reply);
    else if (cmd == "device.list")
        cmd_device_list(ctx, arg("name"), reply);
    else if (cmd == "device.forget")
        cmd_device_forget(ctx, arg("name"), arg("device"), reply);
    else if (cmd == "key.add")
        cmd_key_add(ctx, arg("name"), arg("pubkey"), reply);
    else if (cmd == "key.list")
        cmd_key_list(ctx,
                     req.members.contains("name") ? std::optional<std::string_view>(arg("name"))
                                                  : std::nullopt,
                     reply);
    else if (cmd == "key.revoke")
        cmd_key_revoke(ctx, arg("name"), arg("pubkey"), reply);
    else if (cmd == "group.add" || cmd == "group.remove")
        cmd_group_change(ctx, cmd == "group.add", arg("group"), string_array("members"), reply);
    else if (cmd == "group.list")
        cmd_group_list(ctx, reply);
    else if (cmd == "group.del")
        cmd_group_del(ctx, arg("group"), reply);
    else if (cmd == "sessions")
        cmd_sessions(ctx, reply);
    else if (cmd == "who")
        cmd_who(ctx, req, reply);
    else if (cmd == "hide" || cmd == "unhide")
        cmd_hide(ctx, arg("name"), cmd == "hide", reply);
    else if (cmd == "tasks")
        cmd_tasks(ctx, req, reply);
    else if (cmd == "reload")
        cmd_reload(ctx, reply);
    else
        reply(fail("bad_request", "unknown command '" + std::string(cmd) + "'"));
}

} // namespace meshd::control
