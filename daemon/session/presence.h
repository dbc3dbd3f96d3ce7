// session/presence: who is online and with what status, who watches whom, and the directory
// listing (who).
//
// DESIGN
// - A principal is online while at least one of its sessions is ready. When its last session
//   ends, the offline event waits presence.grace_ms: a device back within it (a reconnect)
//   shows no offline/online flap.
// - A principal none of whose devices sent a frame (of any type; pongs are no frames) for
//   presence.away_after_s shows "away" instead of "available", and "available" again with
//   its next frame. Only "available" is ever shown as "away": busy, dnd and a manual away
//   are never changed, and the stored status (store::Principal::status) is never written.
// - State per principal lives in a PresenceEntry while the principal is online, in its grace
//   window, or watched; otherwise it has none. Each entry lists the sessions that watch it,
//   so an event costs O(watchers) and nothing here runs per message (the only per-frame work
//   is activity(): a store and a branch).
// - Events go to the watchers' control queues; a session whose queue is full misses the
//   event (counted in meshd_events_dropped_total). Presence is never stored in a log nor
//   replayed. Only ready sessions watch: a session stops watching when it leaves ready.
//
//   offline ──first session ready (session_ready)──────────▶ online            event
//   online  ──last session ends (session_gone)──────────────▶ grace (shown online)
//   grace   ──a session ready again (session_ready)─────────▶ online            no event
//   grace   ──presence.grace_ms passed (tick)───────────────▶ offline           event
//   online  ──no frame for away_after_s (tick) / a frame (activity)──▶ idle / not idle,
//             an event when the shown status changes
#pragma once

#include "core/metrics.h"
#include "store/store.h"

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace meshd::session {

class Broker;
class Session;

struct PresenceEntry {
    store::Principal* principal = nullptr;
    uint32_t live = 0;           // ready sessions of the principal
    bool online = false;         // as announced: stays true through the grace window
    uint64_t offline_at_ms = 0;  // loop time the grace window ends (when live == 0 && online)
    uint64_t last_active_ms = 0; // loop time of the last frame from any of its devices
    bool idle = false;           // no frame for presence.away_after_s
    // What watchers were told last; an event goes out only when this changes.
    bool shown_online = false;
    store::Status shown_status = store::Status::available;
    std::string shown_note;
    std::unordered_set<Session*> watchers;
};

// A who query (meshd-protocol(7), "who"; meshctl who).
struct WhoQuery {
    std::string skill; // canonical; empty: any
    std::optional<store::Kind> kind;
    std::optional<bool> online;
    std::string after; // only names after this one; empty: from the start
    size_t limit = 50;
    bool admin = false;            // list hidden principals too, marked "hidden"
    size_t max_scanned = SIZE_MAX; // principals looked at, matching or not
    size_t max_bytes = SIZE_MAX;   // of the listing (at least one entry is listed)
};

class Presence {
  public:
    explicit Presence(Broker& broker);
    Presence(const Presence&) = delete;
    Presence& operator=(const Presence&) = delete;

    // s became ready (its principal is set): returns the entry it reports activity to, valid
    // until session_gone(s).
    PresenceEntry* session_ready(Session& s);
    // s leaves ready (closed, replaced, killed): it stops watching and may take its principal
    // offline after the grace window.
    void session_gone(Session& s);
    // A frame from a device of e's principal. Runs per frame: keep it a store and a branch.
    void activity(PresenceEntry& e, uint64_t now_ms) {
        e.last_active_ms = now_ms;
        if (e.idle)
            wake(e);
    }
    // Grace windows and idleness; every broker tick.
    void tick(uint64_t now_ms);

    // Replaces what s watches (its principal is ready). Targets are distinct.
    void watch(Session& s, const std::vector<store::Principal*>& targets);
    void unwatch_all(Session& s);
    // The principal's status or note changed (committed): tell its watchers.
    void refresh(int64_t pid);
    // The principal was deleted (committed): watchers see it offline, its entry goes.
    void forget(int64_t pid);

    bool online(const store::Principal& p) const;
    // The status others see: "away" for an idle available principal, else its own.
    store::Status shown_status(const store::Principal& p) const;
    // "id":..,"kind":..,"online":..,"status":..,"note":..,"last_seen":.. (no braces)
    void append_fields(std::string& out, const store::Principal& p) const;
    // Appends the listing's entries (comma-separated objects) to out; returns the cursor for
    // the next page, or nothing after the last one.
    std::optional<std::string> who(const WhoQuery& q, std::string& out) const;

  private:
    PresenceEntry& entry(store::Principal& p);
    PresenceEntry* find(int64_t pid);
    const PresenceEntry* find(int64_t pid) const;
    void wake(PresenceEntry& e);
    void go_offline(PresenceEntry& e);
    void announce_if_changed(PresenceEntry& e);
    void erase_if_unused(int64_t pid);
    int64_t last_seen(const store::Principal& p) const;

    Broker& broker_;
    std::unordered_map<int64_t, PresenceEntry> entries_; // by pid; node-based: stable addresses
    std::unordered_map<const Session*, std::vector<int64_t>> watching_; // session -> pids
    store::Store::ByName online_names_; // announced online, in name order (who online:true)
    core::Counter events_dropped_;
};

} // namespace meshd::session
