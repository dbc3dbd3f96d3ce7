// session/dispatch: work sent to skill:NAME (meshd-protocol(7), WORK DISPATCH).
//
// The mechanism lives here and in the store (store/tasks.cc); the policy — which candidate
// gets a piece of work — is the route_skills module's assign hook. The dispatcher decides
// when work can be assigned (a send; an agent that becomes a candidate; work that comes back
// from an expired lease), who the candidates are (agents listing the skill, online, status
// available, not the sender), and runs the clock: leases, deadlines and queue TTLs, checked
// on the broker's tick. Every change joins the turn's batch like a send; a failed batch
// restores the store's tasks, so a task is never held by two agents.
#pragma once

#include "core/result.h"
#include "router/modules.h"
#include "store/store.h"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace meshd::session {

class Broker;
struct Frame;

class Dispatcher {
  public:
    explicit Dispatcher(Broker& broker) : broker_(broker) {}

    // A send the modules routed to skill:NAME. Stores it, assigns it if a candidate is there
    // (or queues it) and returns the members the sender's ack carries after seq
    // (,"task":17,"state":"assigned","agent":"tr-1").
    struct Sent {
        store::AppendResult append;
        std::string ack_members;
    };
    core::Result<Sent> send(store::Principal& sender, std::string_view skill, const Frame& f,
                            int64_t now_ms);
    // A client's task frame (working, done, failed, canceled). Errors carry the wire code.
    core::Result<void> task_frame(store::Principal& p, const Frame& f, int64_t now_ms);

    // p's first device became ready / its last one went: leases end / start.
    void came_online(store::Principal& p);
    void went_offline(store::Principal& p);
    // p may have become a candidate (status or profile changed): assign what waits for it.
    void candidate_changed(store::Principal& p);
    // Deadlines, queue TTLs, leases. Called from the broker's tick.
    void tick(int64_t now_ms);
    // At start: every held task's holder is disconnected, so its lease starts now.
    void start(int64_t now_ms);

  private:
    // Assigns the skill's queued work, oldest first, while candidates take it.
    void drain(const std::string& skill, int64_t now_ms);
    // Agents that could take work for `skill` now, in name order (the sender left out later).
    void candidates(std::string_view skill, std::vector<router::AssignCandidate>& out);
    // Tries to assign queued task `id` among `all` (its sender left out). True if assigned.
    bool try_assign(int64_t id, const std::vector<router::AssignCandidate>& all, int64_t now_ms);
    void log_failure(const char* what, int64_t id, const core::Error& e);

    Broker& broker_;
    std::vector<router::AssignCandidate> all_, pick_;
};

} // namespace meshd::session
