// session/dispatch: work sent to skill:NAME. See dispatch.h.
#include "session/dispatch.h"

#include "core/clock.h"
#include "core/json.h"
#include "core/log.h"
#include "session/broker.h"
#include "session/frame.h"

#include <algorithm>

namespace meshd::session {

namespace {

using store::Task;
using store::TaskState;

// The state a sender is told: an untracked message is stored as done once assigned.
std::string_view shown_state(const Task& t) {
    if (!t.tracked && t.state == TaskState::done)
        return "assigned";
    return store::to_string(t.state);
}

core::Error wire_error(const char* code, std::string message) {
    return core::make_error(code, std::move(message));
}

} // namespace

core::Result<Dispatcher::Sent> Dispatcher::send(store::Principal& sender, std::string_view skill,
                                                const Frame& f, int64_t now_ms) {
    store::Store& store = broker_.store();
    if (f.has_task && f.deadline_ms > 0 && f.deadline_ms <= now_ms)
        return wire_error("bad_frame", "\"task.deadline\" " + std::to_string(f.deadline_ms) +
                                           " has already passed (now is " + std::to_string(now_ms) +
                                           ")");
    const auto* queue = store.task_queue(skill);
    size_t cap = broker_.limits().task_queue_cap;
    if (queue && queue->size() >= cap) {
        // Full only matters when the work would wait: with a candidate it goes out at once.
        candidates(skill, all_);
        std::erase_if(all_, [&](const auto& c) { return c.principal == &sender; });
        if (all_.empty())
            return wire_error("rate_limited",
                              "skill:" + std::string(skill) + " already has " +
                                  std::to_string(queue->size()) +
                                  " messages waiting (tasks.queue_cap); try again later");
    }
    auto r = store.send_to_skill(&sender, skill, f.body, f.has_id ? f.id : std::string_view(),
                                 now_ms, f.has_task, f.deadline_ms);
    if (!r)
        return r.error();
    Sent out;
    out.append = r->append;
    int64_t id = r->task.id;
    Task now = r->task;
    if (!r->append.dup) {
        drain(std::string(skill), now_ms);
        if (const Task* open = store.find_task(id)) {
            now = *open;
        } else if (auto row = store.stored_task(id); row && *row) {
            now = (*row)->task;
        }
    }
    std::string& m = out.ack_members;
    m += R"(,"task":)";
    core::json_append_int(m, id);
    m += R"(,"state":)";
    core::json_append_string(m, shown_state(now));
    if (now.agent_pid && now.state != TaskState::queued)
        if (const store::Principal* agent = store.find_pid(now.agent_pid)) {
            m += R"(,"agent":)";
            core::json_append_string(m, agent->name);
        }
    return out;
}

core::Result<void> Dispatcher::task_frame(store::Principal& p, const Frame& f, int64_t now_ms) {
    store::Store& store = broker_.store();
    int64_t id = f.task_id;
    std::string name = "task " + std::to_string(id);
    Task* open = store.find_task(id);
    Task finished;
    if (!open) {
        auto row = store.stored_task(id);
        if (!row)
            return row.error();
        if (!*row)
            return wire_error("not_found", "there is no " + name);
        finished = (*row)->task;
    }
    const Task& t = open ? *open : finished;
    bool is_sender = t.sender_pid == p.pid;
    bool is_holder = t.agent_pid == p.pid;
    bool was_holder = t.held_before_by(p.pid);
    if (!is_sender && !is_holder && !was_holder)
        return wire_error("not_found", "there is no " + name + " sent by you or given to you");
    if (!t.tracked)
        return wire_error("conflict", name + " is an untracked message (its send had no "
                                             "\"task\"): it has no states to move");
    if (!open)
        return wire_error("conflict",
                          name + " is already " + std::string(store::to_string(t.state)));
    TaskState want = *store::parse_task_state(f.task_state); // the parser checked the name
    std::string extra;
    if (want == TaskState::canceled) {
        if (!is_sender)
            return is_holder ? wire_error("forbidden", "only the sender may cancel " + name)
                             : wire_error("conflict", name + " was given to another agent "
                                                             "after your lease ran out");
        if (f.has_reason) {
            extra = R"(,"reason":)";
            core::json_append_string(extra, f.reason);
        }
        return store.set_task_state(*open, want, extra, now_ms);
    }
    if (!is_holder || t.state == TaskState::queued)
        return was_holder ? wire_error("conflict", name + " was given back to the queue after "
                                                          "your lease ran out; it is not yours")
                          : wire_error("forbidden", "only the agent holding " + name +
                                                        " may set it " + std::string(f.task_state));
    if (want == TaskState::working && t.state == TaskState::working)
        return {}; // working twice is fine
    if (want == TaskState::done) {
        extra = R"(,"result":)";
        extra += f.result;
    } else if (want == TaskState::failed && f.has_reason) {
        extra = R"(,"reason":)";
        core::json_append_string(extra, f.reason);
    }
    return store.set_task_state(*open, want, extra, now_ms);
}

void Dispatcher::candidates(std::string_view skill, std::vector<router::AssignCandidate>& out) {
    out.clear();
    store::Store& store = broker_.store();
    const auto* listed = store.principals_with_skill(skill);
    if (!listed)
        return;
    for (const auto& [name, p] : *listed) {
        if (p->kind != store::Kind::agent || p->status != store::Status::available ||
            broker_.live_count(*p) == 0)
            continue;
        out.push_back({p, store.held_tasks(p->pid)});
    }
}

bool Dispatcher::try_assign(int64_t id, const std::vector<router::AssignCandidate>& all,
                            int64_t now_ms) {
    store::Store& store = broker_.store();
    Task* t = store.find_task(id);
    if (!t || t->state != TaskState::queued)
        return false;
    store::Principal* sender = store.find_pid(t->sender_pid);
    if (!sender) {
        if (auto r = store.set_task_state(*t, TaskState::canceled, R"(,"reason":"sender_deleted")",
                                          now_ms);
            !r)
            log_failure("cancel", id, r.error());
        return false;
    }
    pick_.clear();
    for (const auto& c : all)
        if (c.principal != sender)
            pick_.push_back({c.principal, store.held_tasks(c.principal->pid)});
    if (pick_.empty())
        return false;
    std::string skill = t->skill;
    int chosen = broker_.modules().assign(skill, *sender, id, pick_);
    if (chosen < 0)
        return false;
    store::Principal& agent = *pick_[static_cast<size_t>(chosen)].principal;
    if (auto r = store.assign_task(*t, agent, now_ms); !r) {
        log_failure("assign", id, r.error());
        if (r.error().code == "not_found")
            if (Task* gone = store.find_task(id))
                if (auto c = store.set_task_state(*gone, TaskState::expired,
                                                  R"(,"reason":"message_gone")", now_ms);
                    !c)
                    log_failure("expire", id, c.error());
        return false;
    }
    broker_.metrics().tasks_assigned.inc();
    MESHD_LOG(debug, "task.assigned", "task=%lld skill=%s agent=%s", static_cast<long long>(id),
              skill.c_str(), agent.name.c_str());
    return true;
}

void Dispatcher::drain(const std::string& skill, int64_t now_ms) {
    store::Store& store = broker_.store();
    const auto* queue = store.task_queue(skill);
    if (!queue || queue->empty())
        return;
    candidates(skill, all_);
    if (all_.empty())
        return;
    std::vector<int64_t> ids(queue->begin(), queue->end()); // assigning changes the queue
    for (int64_t id : ids) {
        try_assign(id, all_, now_ms);
        if (store.batch_failed())
            break; // nothing more can be written this turn
    }
}

void Dispatcher::came_online(store::Principal& p) {
    if (p.kind != store::Kind::agent)
        return;
    store::Store& store = broker_.store();
    for (auto& [id, t] : store.open_tasks())
        if (t.agent_pid == p.pid && t.lease_until_ms != 0)
            if (Task* held = store.find_task(id))
                if (auto r = store.set_task_lease(*held, 0); !r)
                    log_failure("end lease", id, r.error());
    candidate_changed(p);
}

void Dispatcher::went_offline(store::Principal& p) {
    if (p.kind != store::Kind::agent)
        return;
    store::Store& store = broker_.store();
    if (store.held_tasks(p.pid) == 0)
        return;
    int64_t until = core::wall_ms() + static_cast<int64_t>(broker_.limits().task_lease_ms);
    std::vector<int64_t> held;
    for (const auto& [id, t] : store.open_tasks())
        if (t.agent_pid == p.pid && t.tracked && t.state != TaskState::queued)
            held.push_back(id);
    for (int64_t id : held)
        if (Task* t = store.find_task(id))
            if (auto r = store.set_task_lease(*t, until); !r)
                log_failure("start lease", id, r.error());
}

void Dispatcher::candidate_changed(store::Principal& p) {
    if (p.kind != store::Kind::agent || p.status != store::Status::available || !p.profile ||
        broker_.live_count(p) == 0)
        return;
    int64_t now = core::wall_ms();
    for (const std::string& skill : p.profile->skills)
        drain(skill, now);
}

void Dispatcher::tick(int64_t now_ms) {
    store::Store& store = broker_.store();
    if (store.open_tasks().empty())
        return;
    struct Due {
        int64_t id;
        enum { deadline, queue_ttl, requeue, orphan } what;
    };
    std::vector<Due> due;
    auto ttl = static_cast<int64_t>(broker_.limits().task_queue_ttl_ms);
    for (const auto& [id, t] : store.open_tasks()) {
        if (!store.find_pid(t.sender_pid))
            due.push_back({id, Due::orphan});
        else if (t.tracked && t.deadline_ms > 0 && now_ms >= t.deadline_ms)
            due.push_back({id, Due::deadline});
        else if (t.state == TaskState::queued && now_ms - t.queued_ms >= ttl)
            due.push_back({id, Due::queue_ttl});
        else if (t.state != TaskState::queued &&
                 (!store.find_pid(t.agent_pid) ||
                  (t.lease_until_ms != 0 && now_ms >= t.lease_until_ms)))
            due.push_back({id, Due::requeue});
    }
    std::vector<std::string> requeued;
    for (const Due& d : due) {
        Task* t = store.find_task(d.id);
        if (!t)
            continue;
        core::Result<void> r;
        switch (d.what) {
        case Due::orphan:
            r = store.set_task_state(*t, TaskState::canceled, R"(,"reason":"sender_deleted")",
                                     now_ms);
            break;
        case Due::deadline:
            r = store.set_task_state(*t, TaskState::expired, R"(,"reason":"deadline")", now_ms);
            broker_.metrics().tasks_expired.inc();
            break;
        case Due::queue_ttl:
            r = store.set_task_state(*t, TaskState::expired, R"(,"reason":"queue_ttl")", now_ms);
            broker_.metrics().tasks_expired.inc();
            break;
        case Due::requeue: {
            std::string skill = t->skill;
            r = store.requeue_task(*t, now_ms);
            if (r) {
                broker_.metrics().tasks_requeued.inc();
                if (std::find(requeued.begin(), requeued.end(), skill) == requeued.end())
                    requeued.push_back(std::move(skill));
            }
            break;
        }
        }
        if (!r) {
            log_failure("expire", d.id, r.error());
            return; // the batch failed; the next tick tries again
        }
    }
    for (const std::string& skill : requeued)
        drain(skill, now_ms);
}

void Dispatcher::start(int64_t now_ms) {
    store::Store& store = broker_.store();
    int64_t until = now_ms + static_cast<int64_t>(broker_.limits().task_lease_ms);
    std::vector<int64_t> held;
    for (const auto& [id, t] : store.open_tasks())
        if (t.state != TaskState::queued && t.tracked)
            held.push_back(id);
    for (int64_t id : held)
        if (Task* t = store.find_task(id))
            if (auto r = store.set_task_lease(*t, until); !r)
                log_failure("start lease", id, r.error());
}

void Dispatcher::log_failure(const char* what, int64_t id, const core::Error& e) {
    MESHD_LOG(warn, "task.failed", "action=%s task=%lld code=%s message=%s", what,
              static_cast<long long>(id), e.code.c_str(), core::log_value(e.message).c_str());
}

} // namespace meshd::session
