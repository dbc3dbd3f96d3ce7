// session/presence: online state with a grace window, automatic away, watchers and events, and
// the who listing.
#include "session/presence.h"

#include "core/clock.h"
#include "core/json.h"
#include "session/broker.h"
#include "session/session.h"

namespace meshd::session {

Presence::Presence(Broker& broker) : broker_(broker) {
    events_dropped_ = core::core_counter(
        "meshd_events_dropped_total",
        "Events (presence) not sent to a connection because its control queue was full, by type.",
        "type=\"presence\"");
}

PresenceEntry& Presence::entry(store::Principal& p) {
    auto [it, fresh] = entries_.try_emplace(p.pid);
    PresenceEntry& e = it->second;
    if (fresh) {
        e.principal = &p;
        e.shown_status = p.status; // offline: its own status
        e.shown_note = p.note;
    }
    return e;
}

PresenceEntry* Presence::find(int64_t pid) {
    auto it = entries_.find(pid);
    return it == entries_.end() ? nullptr : &it->second;
}

const PresenceEntry* Presence::find(int64_t pid) const {
    auto it = entries_.find(pid);
    return it == entries_.end() ? nullptr : &it->second;
}

void Presence::erase_if_unused(int64_t pid) {
    auto it = entries_.find(pid);
    if (it != entries_.end() && it->second.live == 0 && !it->second.online &&
        it->second.watchers.empty())
        entries_.erase(it);
}

PresenceEntry* Presence::session_ready(Session& s) {
    store::Principal& p = *s.principal();
    PresenceEntry& e = entry(p);
    ++e.live;
    e.last_active_ms = broker_.now_ms(); // logging in is activity
    e.idle = false;
    e.offline_at_ms = 0;
    // Stored at connect too, so that after a crash last_seen is at least the connect time.
    if (e.live == 1)
        broker_.store().set_last_seen(p, core::wall_ms());
    if (!e.online) {
        e.online = true;
        online_names_[p.name] = &p;
    }
    announce_if_changed(e);
    return &e;
}

void Presence::session_gone(Session& s) {
    unwatch_all(s);
    PresenceEntry* e = find(s.principal()->pid);
    if (!e || e->live == 0)
        return;
    if (--e->live > 0)
        return;
    broker_.store().set_last_seen(*e->principal, core::wall_ms());
    uint64_t grace = broker_.limits().presence_grace_ms;
    if (grace == 0)
        go_offline(*e); // may erase e
    else
        e->offline_at_ms = broker_.now_ms() + grace;
}

// Last use of e: it may be erased.
void Presence::go_offline(PresenceEntry& e) {
    e.online = false;
    e.idle = false;
    online_names_.erase(e.principal->name);
    announce_if_changed(e);
    erase_if_unused(e.principal->pid);
}

void Presence::wake(PresenceEntry& e) {
    e.idle = false;
    announce_if_changed(e);
}

void Presence::tick(uint64_t now_ms) {
    uint64_t away_ms = broker_.limits().away_after_ms;
    for (auto it = entries_.begin(); it != entries_.end();) {
        PresenceEntry& e = it->second;
        if (e.live == 0 && e.online && now_ms >= e.offline_at_ms) {
            e.online = false;
            e.idle = false;
            online_names_.erase(e.principal->name);
            announce_if_changed(e);
        } else if (e.live > 0) {
            bool idle = away_ms > 0 && now_ms >= e.last_active_ms + away_ms;
            if (idle != e.idle) {
                e.idle = idle;
                announce_if_changed(e);
            }
        }
        if (e.live == 0 && !e.online && e.watchers.empty())
            it = entries_.erase(it);
        else
            ++it;
    }
}

void Presence::watch(Session& s, const std::vector<store::Principal*>& targets) {
    unwatch_all(s);
    if (targets.empty())
        return;
    std::vector<int64_t>& pids = watching_[&s];
    pids.reserve(targets.size());
    for (store::Principal* p : targets) {
        entry(*p).watchers.insert(&s);
        pids.push_back(p->pid);
    }
}

void Presence::unwatch_all(Session& s) {
    auto it = watching_.find(&s);
    if (it == watching_.end())
        return;
    std::vector<int64_t> pids = std::move(it->second);
    watching_.erase(it);
    for (int64_t pid : pids)
        if (PresenceEntry* e = find(pid)) {
            e->watchers.erase(&s);
            erase_if_unused(pid);
        }
}

void Presence::refresh(int64_t pid) {
    if (PresenceEntry* e = find(pid))
        announce_if_changed(*e);
}

void Presence::forget(int64_t pid) {
    auto it = entries_.find(pid);
    if (it == entries_.end())
        return;
    PresenceEntry& e = it->second;
    if (e.online) {
        e.online = false;
        e.idle = false;
        online_names_.erase(e.principal->name);
        announce_if_changed(e);
    }
    for (Session* w : e.watchers)
        if (auto wit = watching_.find(w); wit != watching_.end())
            std::erase(wit->second, pid);
    e.watchers.clear();
    // Its sessions were closed when it was deleted; an entry still counting one would be
    // pointed to by that session, so it stays (it is never reached by name again).
    if (e.live == 0)
        entries_.erase(it);
}

namespace {

store::Status shown(const PresenceEntry* e, const store::Principal& p) {
    if (e && e->online && e->idle && p.status == store::Status::available)
        return store::Status::away;
    return p.status;
}

} // namespace

bool Presence::online(const store::Principal& p) const {
    const PresenceEntry* e = find(p.pid);
    return e && e->online;
}

store::Status Presence::shown_status(const store::Principal& p) const {
    return shown(find(p.pid), p);
}

int64_t Presence::last_seen(const store::Principal& p) const {
    return online(p) ? core::wall_ms() : p.last_seen_ms;
}

// Only when what watchers last saw differs: a no-op change (same status again, a reconnect
// in the grace window, idle while busy) sends nothing.
void Presence::announce_if_changed(PresenceEntry& e) {
    const store::Principal& p = *e.principal;
    store::Status status = shown(&e, p);
    if (e.shown_online == e.online && e.shown_status == status && e.shown_note == p.note)
        return;
    e.shown_online = e.online;
    e.shown_status = status;
    e.shown_note = p.note;
    if (e.watchers.empty())
        return;
    std::string frame = R"({"type":"presence",)";
    append_fields(frame, p);
    frame += '}';
    for (Session* w : e.watchers)
        if (!w->queue_event(frame))
            events_dropped_.inc();
}

void Presence::append_fields(std::string& out, const store::Principal& p) const {
    out += R"("id":)";
    core::json_append_string(out, p.name);
    out += R"(,"kind":)";
    core::json_append_string(out, store::to_string(p.kind));
    out += R"(,"online":)";
    out += online(p) ? "true" : "false";
    out += R"(,"status":)";
    core::json_append_string(out, store::to_string(shown_status(p)));
    out += R"(,"note":)";
    core::json_append_string(out, p.note);
    out += R"(,"last_seen":)";
    if (int64_t seen = last_seen(p); seen > 0)
        core::json_append_int(out, seen);
    else
        out += "null";
}

std::optional<std::string> Presence::who(const WhoQuery& q, std::string& out) const {
    const store::Store& store = broker_.store();
    const store::Store::ByName* source = &store.principals_by_name();
    if (!q.skill.empty())
        source = store.principals_with_skill(q.skill);
    else if (q.online == true)
        source = &online_names_; // usually far fewer than all
    if (!source)
        return std::nullopt;
    auto it = q.after.empty() ? source->begin() : source->upper_bound(std::string_view(q.after));
    size_t listed = 0, scanned = 0;
    const size_t start = out.size();
    std::string_view last_listed, last_scanned;
    for (; it != source->end(); ++it) {
        if (scanned == q.max_scanned)
            return std::string(last_scanned); // all up to it listed or not matching
        ++scanned;
        last_scanned = it->first;
        const store::Principal& p = *it->second;
        if (store.find(p.name) != &p) // deleted in a batch not yet committed
            continue;
        if ((p.hidden && !q.admin) || (q.kind && p.kind != *q.kind) ||
            (q.online && online(p) != *q.online))
            continue;
        if (listed == q.limit)
            return std::string(last_listed); // one more matches: there is a next page
        size_t before = out.size();
        if (listed > 0)
            out += ',';
        out += '{';
        append_fields(out, p);
        out += R"(,"profile":)";
        out += p.profile ? std::string_view(p.profile->json) : std::string_view("null");
        if (q.admin)
            out += p.hidden ? R"(,"hidden":true)" : R"(,"hidden":false)";
        out += '}';
        if (listed > 0 && out.size() - start > q.max_bytes) {
            out.resize(before);
            return std::string(last_listed);
        }
        ++listed;
        last_listed = it->first;
    }
    return std::nullopt;
}

} // namespace meshd::session
