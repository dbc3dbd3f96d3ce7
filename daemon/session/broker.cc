// session/broker: session registry, end-of-turn group commit, the shared timeout sweep.
#include "session/broker.h"

#include "core/clock.h"
#include "core/log.h"

#include <algorithm>

namespace meshd::session {

// Log entries retention may delete per second: small steps, the loop never waits long.
constexpr size_t retention_step_entries = 2000;

BrokerLimits BrokerLimits::from(const core::Config& c) {
    BrokerLimits l;
    l.max_frame = static_cast<size_t>(c.max_frame);
    l.max_depth = static_cast<size_t>(c.max_depth);
    l.max_queue = static_cast<size_t>(c.max_queue);
    l.max_inflight = static_cast<size_t>(c.max_inflight);
    l.max_devices = static_cast<size_t>(c.max_devices);
    l.hello_timeout_ms = static_cast<uint64_t>(c.hello_timeout_ms);
    l.ping_interval_ms = static_cast<uint64_t>(c.ping_interval_ms);
    l.presence_grace_ms = static_cast<uint64_t>(c.presence_grace_ms);
    l.away_after_ms = static_cast<uint64_t>(c.away_after_s) * 1000;
    l.max_watch = static_cast<size_t>(c.max_watch);
    l.max_profile_bytes = static_cast<size_t>(c.max_profile_bytes);
    return l;
}

namespace {

// The sweep runs often enough to honour the shortest timeout with ~25% slack (presence's
// grace window included; automatic away is counted in seconds, so 1 s is enough for it).
uint64_t tick_interval_ms(const BrokerLimits& l) {
    uint64_t t = std::min<uint64_t>({1000, l.hello_timeout_ms / 4, l.ping_interval_ms / 4});
    if (l.presence_grace_ms > 0)
        t = std::min<uint64_t>(t, l.presence_grace_ms / 4);
    return std::max<uint64_t>(t, 25);
}

} // namespace

Broker::Broker(uv_loop_t* loop, store::Store& store, router::ModuleSet& modules,
               BrokerLimits limits, size_t write_headroom, std::string server_name)
    : loop_(loop), store_(store), modules_(modules), limits_(limits),
      write_headroom_(write_headroom), server_name_(std::move(server_name)),
      parser_(limits.max_depth) {
    scratch_.reserve(64 * 1024);
    turn_end_ = core::UvCheck::create(loop_, [this] { end_of_turn(); });
    store_.set_on_durable([this] { release_durable(); });
    ticker_ = core::UvTimer::create(loop_, [this] { tick(); });
    uint64_t every = tick_interval_ms(limits_);
    ticker_.start(every, every);
    register_metrics();
}

namespace {

// The error codes of the protocol contract (meshd-protocol(7), ERRORS).
constexpr std::string_view contract_error_codes[] = {
    "bad_frame",    "unknown_type", "unknown_peer",   "forbidden",   "rate_limited", "too_large",
    "unauthorized", "conflict",     "resume_invalid", "unavailable", "internal",
};

// Codes beyond the contract's (a module's own) that get a series of their own; the rest are
// counted as code="other", so a module cannot grow the registry without bound.
constexpr size_t max_extra_error_codes = 32;

} // namespace

void Broker::register_metrics() {
    const char* errors_help = "Error frames sent to clients, by code.";
    for (std::string_view code : contract_error_codes)
        error_counters_.emplace_back(std::string(code),
                                     core::core_counter("meshd_errors_total", errors_help,
                                                        core::metric_labels({{"code", code}})));
    other_errors_ = core::core_counter("meshd_errors_total", errors_help, "code=\"other\"");
    metrics_.deliveries = core::core_counter(
        "meshd_deliveries_total", "Messages (msg frames) written to devices, replays included.");
    // Modules count their own refusals into the same family, e.g. ratelimit's reason="send".
    metrics_.rate_limited_inflight =
        core::core_counter("meshd_rate_limited_total",
                           "Requests refused as rate_limited, by reason.", "reason=\"inflight\"");

    core::Gauge connections =
        core::core_gauge("meshd_connections", "Open WebSocket connections, logged in or not.");
    core::Gauge users = core::core_gauge("meshd_sessions", "Logged-in sessions, by principal kind.",
                                         "kind=\"user\"");
    core::Gauge agents = core::core_gauge(
        "meshd_sessions", "Logged-in sessions, by principal kind.", "kind=\"agent\"");
    core::Gauge queue_bytes = core::core_gauge(
        "meshd_write_queue_bytes",
        "Bytes of control frames (acks aside: welcome, errors) queued for connections.");
    core::Gauge backlog = core::core_gauge(
        "meshd_delivery_backlog_messages",
        "Committed messages not yet written to the live devices they are for (replay and slow "
        "readers).");
    // Sums over every connection: computed when rendering, not on each event.
    collector_ = core::metrics().add_collector(
        [this, connections, users, agents, queue_bytes, backlog]() mutable {
            connections.set(static_cast<double>(sessions_.size()));
            users.set(static_cast<double>(live_by_kind_[0]));
            agents.set(static_cast<double>(live_by_kind_[1]));
            double queued = 0;
            double behind = 0;
            for (const auto& [id, s] : sessions_) {
                queued += static_cast<double>(s->queued_bytes());
                behind += static_cast<double>(s->delivery_backlog());
            }
            queue_bytes.set(queued);
            backlog.set(behind);
        });
}

void Broker::count_error(std::string_view code) {
    for (auto& [known, counter] : error_counters_)
        if (known == code) {
            counter.inc();
            return;
        }
    if (error_counters_.size() >= std::size(contract_error_codes) + max_extra_error_codes) {
        other_errors_.inc();
        return;
    }
    auto counter =
        core::metrics().counter("meshd_errors_total", "", core::metric_labels({{"code", code}}));
    if (!counter) { // a code that is not valid UTF-8, say
        other_errors_.inc();
        return;
    }
    error_counters_.emplace_back(std::string(code), counter.value());
    counter.value().inc();
}

Broker::~Broker() {
    store_.set_on_durable(nullptr);
}

void Broker::stop() {
    turn_end_.close();
    ticker_.close();
}

void Broker::apply_limits(const BrokerLimits& limits) {
    bool retime = tick_interval_ms(limits) != tick_interval_ms(limits_);
    limits_ = limits;
    parser_.set_max_depth(limits.max_depth);
    if (retime && ticker_) {
        uint64_t every = tick_interval_ms(limits_);
        ticker_.start(every, every);
    }
}

std::unique_ptr<Session> Broker::open_session(Link& link, std::string remote, std::string bearer) {
    auto s = std::make_unique<Session>(*this, link, next_conn_id_++, std::move(remote),
                                       std::move(bearer));
    sessions_[s->conn_id()] = s.get();
    MESHD_LOG(debug, "conn.open", "conn=%llu remote=%s",
              static_cast<unsigned long long>(s->conn_id()), s->remote().c_str());
    s->admit();
    return s;
}

void Broker::forget(Session& s) {
    presence_.unwatch_all(s); // normally done when it left ready
    sessions_.erase(s.conn_id());
    if (s.in_batch)
        std::erase(pending_, &s);
}

PresenceEntry* Broker::register_live(Session& s) {
    live_[s.principal()->pid].push_back(&s);
    ++live_by_kind_[s.principal()->kind == store::Kind::agent ? 1 : 0];
    return presence_.session_ready(s);
}

void Broker::unregister_live(Session& s) {
    auto it = live_.find(s.principal()->pid);
    if (it == live_.end())
        return;
    if (std::erase(it->second, &s) > 0) {
        --live_by_kind_[s.principal()->kind == store::Kind::agent ? 1 : 0];
        presence_.session_gone(s);
    }
    if (it->second.empty())
        live_.erase(it);
}

Session* Broker::find_connection(uint64_t conn_id) const {
    auto it = sessions_.find(conn_id);
    return it == sessions_.end() ? nullptr : it->second;
}

Session* Broker::find_live(const store::Principal& p, std::string_view device) const {
    auto it = live_.find(p.pid);
    if (it == live_.end())
        return nullptr;
    for (Session* s : it->second)
        if (s->device() == device)
            return s;
    return nullptr;
}

size_t Broker::live_count(const store::Principal& p) const {
    auto it = live_.find(p.pid);
    return it == live_.end() ? 0 : it->second.size();
}

size_t Broker::device_count(const store::Principal& p) const {
    size_t n = p.cursors.size();
    auto it = live_.find(p.pid);
    if (it != live_.end())
        for (const Session* s : it->second)
            if (!p.cursors.contains(s->device()))
                ++n;
    return n;
}

size_t Broker::session_count() const {
    size_t n = 0;
    for (const auto& [pid, list] : live_)
        n += list.size();
    return n;
}

void Broker::for_each_session(const std::function<void(const Session&)>& fn) const {
    for (const auto& [pid, list] : live_)
        for (const Session* s : list)
            fn(*s);
}

void Broker::note_pending(Session& s) {
    if (!s.in_batch) {
        s.in_batch = true;
        pending_.push_back(&s);
    }
}

void Broker::note_stored(store::Principal& recipient, std::string_view sender, int64_t seq) {
    stored_events_.push_back({&recipient, std::string(sender), seq});
}

void Broker::after_commit(std::function<void(const core::Error*)> fn) {
    after_commit_.push_back(std::move(fn));
}

void Broker::end_of_turn() {
    if (!store_.batch_open() && after_commit_.empty())
        return;
    core::Result<void> r;
    if (store_.batch_open())
        r = store_.commit(touched_);
    // Ack only after the batch commit returns: an acked message must survive SIGKILL.
    if (!r) {
        for (Session* s : pending_)
            s->fail_pending(r.error());
    }
    for (Session* s : pending_)
        s->in_batch = false;
    pending_.clear();
    auto callbacks = std::move(after_commit_);
    after_commit_.clear();
    if (r && store_.durable_batch() < store_.last_batch()) {
        // sync = full: acks, callbacks and stored events wait for the fdatasync.
        waiting_.push_back({store_.last_batch(), std::move(stored_events_), std::move(callbacks)});
        stored_events_.clear();
        return;
    }
    wake_touched();
    if (r)
        for (const StoredEvent& ev : stored_events_)
            modules_.stored(*ev.recipient, ev.sender, ev.seq, live_count(*ev.recipient) > 0);
    stored_events_.clear();
    // Callbacks may start a new batch (it commits in the next turn).
    for (auto& fn : callbacks)
        fn(r ? nullptr : &r.error());
    if (waiting_.empty()) // waiting callbacks may still hold deleted principals
        store_.drop_retired();
}

// Wakes every live device of the principals whose committed head just moved.
void Broker::wake_touched() {
    wake_list_.clear(); // a copy: writing must never see live_ change under it
    for (store::Principal* p : touched_) {
        auto it = live_.find(p->pid);
        if (it != live_.end())
            wake_list_.insert(wake_list_.end(), it->second.begin(), it->second.end());
    }
    touched_.clear();
    for (Session* s : wake_list_)
        s->wake();
}

void Broker::release_durable() {
    store_.take_durable(touched_);
    wake_touched();
    uint64_t durable = store_.durable_batch();
    while (!waiting_.empty() && waiting_.front().batch <= durable) {
        Waiting w = std::move(waiting_.front());
        waiting_.pop_front();
        for (const StoredEvent& ev : w.stored)
            modules_.stored(*ev.recipient, ev.sender, ev.seq, live_count(*ev.recipient) > 0);
        for (auto& fn : w.callbacks)
            fn(nullptr);
    }
    if (waiting_.empty())
        store_.drop_retired();
}

void Broker::flush() {
    end_of_turn();
    store_.sync_now();
    release_durable();
}

size_t Broker::close_principal(const store::Principal& p, uint16_t code, std::string_view reason,
                               std::string_view credential) {
    auto it = live_.find(p.pid);
    if (it == live_.end())
        return 0;
    std::vector<Session*> list = it->second; // close() edits live_
    if (!credential.empty())
        std::erase_if(list, [&](const Session* s) { return s->credential() != credential; });
    for (Session* s : list)
        s->close(code, reason);
    return list.size();
}

void Broker::close_all(uint16_t code, std::string_view reason) {
    std::vector<Session*> all;
    all.reserve(sessions_.size());
    for (const auto& [id, s] : sessions_)
        all.push_back(s);
    for (Session* s : all)
        s->close(code, reason);
}

void Broker::tick() {
    uint64_t now = now_ms();
    std::vector<Session*> all;
    all.reserve(sessions_.size());
    for (const auto& [id, s] : sessions_)
        all.push_back(s);
    for (Session* s : all) {
        s->tick(now);
        if (s->kill_due(now))
            kill_list_.push_back(s->conn_id());
    }
    presence_.tick(now);
    modules_.tick(core::wall_ms());
    // Retention in small steps, with the next commit; a device behind what it deleted gets a
    // `gap` frame (Session::next_frame).
    if (store_.retention_enabled())
        if (auto r = store_.retention_step(core::wall_ms(), retention_step_entries); !r)
            MESHD_LOG(warn, "store.retention_failed", "message=%s",
                      core::log_value(r.error().message).c_str());
    // Kills run last: a kill destroys the session synchronously.
    for (uint64_t id : kill_list_) {
        auto it = sessions_.find(id);
        if (it != sessions_.end())
            it->second->kill_link();
    }
    kill_list_.clear();
}

} // namespace meshd::session
