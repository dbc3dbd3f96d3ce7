// session/broker: session registry, end-of-turn group commit, the shared timeout sweep.
#include "session/broker.h"

#include "core/clock.h"
#include "core/json.h"
#include "core/log.h"

#include <algorithm>
#include <chrono>

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
    l.history_max_inflight = static_cast<size_t>(c.history_max_inflight);
    l.typing_interval_ms = static_cast<uint64_t>(c.typing_interval_ms);
    l.task_lease_ms = static_cast<uint64_t>(c.task_lease_s) * 1000;
    l.task_queue_cap = static_cast<size_t>(c.task_queue_cap);
    l.task_queue_ttl_ms = static_cast<uint64_t>(c.task_queue_ttl_s) * 1000;
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

Broker::Broker(uv_loop_t* loop, store::Store& store, store::Reader& reader,
               router::ModuleSet& modules, BrokerLimits limits, size_t write_headroom,
               std::string server_name)
    : loop_(loop), store_(store), reader_(reader), modules_(modules), limits_(limits),
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
    "unauthorized", "conflict",     "resume_invalid", "unavailable", "internal",     "not_found",
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
    metrics_.rate_limited_queries =
        core::core_counter("meshd_rate_limited_total",
                           "Requests refused as rate_limited, by reason.", "reason=\"queries\"");
    const char* typing_help = "Typing notices, by what became of them: relayed, or dropped "
                              "(more than one start per typing.interval_ms).";
    metrics_.typing_relayed =
        core::core_counter("meshd_typing_total", typing_help, "result=\"relayed\"");
    metrics_.typing_dropped =
        core::core_counter("meshd_typing_total", typing_help, "result=\"dropped\"");
    metrics_.receipts_sent = core::core_counter(
        "meshd_receipts_sent_total", "Receipt frames (delivered, read) queued for devices.");
    const char* dropped_help = "Events (typing, receipt) not queued for a device because its "
                               "control queue was full, by type.";
    metrics_.events_dropped_typing =
        core::core_counter("meshd_events_dropped_total", dropped_help, "type=\"typing\"");
    metrics_.events_dropped_receipt =
        core::core_counter("meshd_events_dropped_total", dropped_help, "type=\"receipt\"");
    metrics_.history_reads =
        core::core_counter("meshd_history_reads_total", "History pages read for clients.");
    static constexpr double read_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                              0.05,   0.1,   0.25,   0.5,   1,    2.5};
    metrics_.read_seconds = core::core_histogram(
        "meshd_read_duration_seconds",
        "Time a history or receipts read took on a reader thread (off the event loop).",
        read_buckets);
    const char* tasks_help = "Work sent to skill:NAME, by what happened: sent (stored), "
                             "assigned to an agent, requeued (a lease ran out), expired.";
    metrics_.tasks_sent = core::core_counter("meshd_tasks_total", tasks_help, "event=\"sent\"");
    metrics_.tasks_assigned =
        core::core_counter("meshd_tasks_total", tasks_help, "event=\"assigned\"");
    metrics_.tasks_requeued =
        core::core_counter("meshd_tasks_total", tasks_help, "event=\"requeued\"");
    metrics_.tasks_expired =
        core::core_counter("meshd_tasks_total", tasks_help, "event=\"expired\"");

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
    reader_.shutdown();
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
    auto& live = live_[s.principal()->pid];
    live.push_back(&s);
    ++live_by_kind_[s.principal()->kind == store::Kind::agent ? 1 : 0];
    if (s.wants_receipts())
        ++receipt_sessions_;
    PresenceEntry* entry = presence_.session_ready(s);
    if (live.size() == 1)
        dispatcher_.came_online(*s.principal());
    return entry;
}

void Broker::unregister_live(Session& s) {
    auto it = live_.find(s.principal()->pid);
    if (it == live_.end())
        return;
    if (std::erase(it->second, &s) > 0) {
        --live_by_kind_[s.principal()->kind == store::Kind::agent ? 1 : 0];
        presence_.session_gone(s);
        if (s.wants_receipts())
            --receipt_sessions_;
    }
    if (it->second.empty()) {
        live_.erase(it);
        dispatcher_.went_offline(*s.principal());
    }
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
    dispatcher_.tick(core::wall_ms());
    // Retention in small steps, with the next commit; a device behind what it deleted gets a
    // `gap` frame (Session::next_frame).
    if (store_.retention_enabled())
        if (auto r = store_.retention_step(core::wall_ms(), retention_step_entries); !r)
            MESHD_LOG(warn, "store.retention_failed", "message=%s",
                      core::log_value(r.error().message).c_str());
    // Typing states older than any interval are of no use any more.
    if (now - typing_pruned_ms_ >= 10000) {
        typing_pruned_ms_ = now;
        uint64_t keep_ms = std::max<uint64_t>(limits_.typing_interval_ms, 30000);
        std::erase_if(typing_, [&](const auto& kv) { return now - kv.second.last_start_ms > keep_ms; });
    }
    // Kills run last: a kill destroys the session synchronously.
    for (uint64_t id : kill_list_) {
        auto it = sessions_.find(id);
        if (it != sessions_.end())
            it->second->kill_link();
    }
    kill_list_.clear();
}

// ---- conversations ------------------------------------------------------------------------

void Broker::relay_typing(const store::Principal& from, const std::string& to,
                          std::span<store::Principal* const> recipients, bool stop) {
    uint64_t now = now_ms();
    std::string key = std::to_string(from.pid);
    key += ' ';
    key += to;
    auto it = typing_.find(key);
    if (!stop) {
        if (it != typing_.end() && now - it->second.last_start_ms < limits_.typing_interval_ms) {
            metrics_.typing_dropped.inc();
            return;
        }
        TypingState& st = it != typing_.end() ? it->second : typing_[key];
        st.last_start_ms = now;
        st.started = true;
    } else {
        // A stop only ends a start that went out: at most one per start, so no flood.
        if (it == typing_.end() || !it->second.started) {
            metrics_.typing_dropped.inc();
            return;
        }
        it->second.started = false;
    }
    metrics_.typing_relayed.inc();
    std::string frame = R"({"type":"typing","from":)";
    core::json_append_string(frame, from.name);
    frame += R"(,"to":)";
    core::json_append_string(frame, to);
    frame += stop ? R"(,"state":"stop"})" : R"(,"state":"start"})";
    for (const store::Principal* r : recipients) {
        if (r->pid == from.pid)
            continue; // the sender's own devices know
        auto live = live_.find(r->pid);
        if (live == live_.end())
            continue;
        for (Session* s : live->second)
            if (s->wants_typing() && !s->queue_event(frame))
                metrics_.events_dropped_typing.inc();
    }
}

// Receipts are cumulative: "delivered" (or "read") at seq N of the sender's log covers every
// earlier direct message of that sender to this recipient, since the two logs hold them in
// the same order. So one receipt per sender per move is enough, whatever the range.
void Broker::receipts_moved(store::Principal& p, int64_t after, int64_t upto, bool read) {
    if (upto <= after)
        return;
    // Nobody asked for receipts: nobody to tell (they are derived, never stored).
    if (receipt_sessions_ == 0)
        return;
    auto& found = receipt_scratch_;
    found.clear();
    const auto& tail = p.tail;
    int64_t tail_first = tail.empty() ? upto + 1 : tail.front().seq;
    int64_t lo = std::max(after + 1, tail_first);
    int64_t hi = tail.empty() ? 0 : std::min(upto, tail.back().seq);
    for (int64_t seq = lo; seq <= hi; ++seq) {
        const store::MessageData& m = *tail[static_cast<size_t>(seq - tail_first)].msg;
        if (m.sender_pid == p.pid || m.to != p.name)
            continue; // own sends, group messages
        auto f = std::find_if(found.begin(), found.end(), [&](const store::SenderMax& x) {
            return x.sender_pid == m.sender_pid;
        });
        if (f != found.end())
            f->sender_seq = std::max(f->sender_seq, m.sender_seq);
        else if (wants_receipts(m.sender_pid))
            found.push_back({m.sender_pid, m.sender_seq});
    }
    if (!found.empty())
        after_commit([this, by = p.name, read, list = found](const core::Error* error) {
            if (!error)
                send_receipts(by, read, list);
        });
    if (after + 1 >= tail_first)
        return;
    // Senders seen in the tail got a newer receipt than anything older could give them.
    std::vector<int64_t> covered;
    covered.reserve(found.size());
    for (const auto& f : found)
        covered.push_back(f.sender_pid);
    // Entries older than the tail: read off the loop. One scan per principal and state at
    // a time; ranges that come meanwhile (a device acking through a long replay) join the
    // next one, so the reader's queue stays bounded whatever the clients send.
    OlderScan& scan = older_scans_[read ? 1 : 0][p.pid];
    int64_t older_upto = std::min(upto, tail_first - 1);
    if (!scan.queued) {
        scan.after = after;
        scan.upto = older_upto;
        scan.covered = std::move(covered);
        scan.queued = true;
    } else {
        scan.after = std::min(scan.after, after);
        scan.upto = std::max(scan.upto, older_upto);
        for (int64_t pid : covered)
            if (std::find(scan.covered.begin(), scan.covered.end(), pid) == scan.covered.end())
                scan.covered.push_back(pid);
    }
    if (!scan.running)
        start_older_scan(p, read);
}

void Broker::start_older_scan(const store::Principal& p, bool read) {
    OlderScan& scan = older_scans_[read ? 1 : 0][p.pid];
    scan.running = true;
    scan.queued = false;
    struct Job {
        int64_t pid;
        std::string name;
        int64_t after, upto;
        std::vector<int64_t> covered;
        std::vector<store::SenderMax> senders;
        bool ok = false;
        double seconds = 0;
    };
    auto job = std::make_shared<Job>(
        Job{p.pid, p.name, scan.after, scan.upto, std::move(scan.covered), {}, false, 0});
    scan.covered.clear();
    reader_.submit(
        [job](store::ReadConn& conn) {
            auto started = std::chrono::steady_clock::now();
            auto r = conn.direct_senders(job->pid, job->name, job->after, job->upto);
            if (r) {
                job->senders = std::move(r.value());
                job->ok = true;
            }
            std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
            job->seconds = took.count();
        },
        [this, job, read] {
            metrics_.read_seconds.observe(job->seconds);
            auto& scans = older_scans_[read ? 1 : 0];
            auto it = scans.find(job->pid);
            if (it != scans.end()) {
                it->second.running = false;
                const store::Principal* p = store_.find_pid(job->pid);
                if (it->second.queued && p)
                    start_older_scan(*p, read);
                else
                    scans.erase(it);
            }
            if (!job->ok)
                return; // receipts are a courtesy: the receipts query still tells
            std::erase_if(job->senders, [&](const store::SenderMax& m) {
                return std::find(job->covered.begin(), job->covered.end(), m.sender_pid) !=
                       job->covered.end();
            });
            // The watermark that moved was committed with an earlier batch, or joins the
            // current one: either way, tell once the current batch is committed.
            if (!job->senders.empty())
                after_commit([this, job, read](const core::Error* error) {
                    if (!error)
                        send_receipts(job->name, read, job->senders);
                });
        });
}

bool Broker::wants_receipts(int64_t pid) const {
    auto it = live_.find(pid);
    if (it == live_.end())
        return false;
    return std::any_of(it->second.begin(), it->second.end(),
                       [](const Session* s) { return s->wants_receipts(); });
}

void Broker::send_receipts(const std::string& by, bool read,
                           std::span<const store::SenderMax> list) {
    for (const store::SenderMax& m : list) {
        auto live = live_.find(m.sender_pid);
        if (live == live_.end())
            continue;
        std::string frame = read ? R"({"type":"receipt","state":"read","seq":)"
                                 : R"({"type":"receipt","state":"delivered","seq":)";
        core::json_append_int(frame, m.sender_seq);
        frame += R"(,"by":)";
        core::json_append_string(frame, by);
        frame += '}';
        for (Session* s : live->second) {
            if (!s->wants_receipts())
                continue;
            if (s->queue_event(frame))
                metrics_.receipts_sent.inc();
            else
                metrics_.events_dropped_receipt.inc();
        }
    }
}

} // namespace meshd::session
