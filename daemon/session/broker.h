// session/broker: every live session, the turn's batch, and what happens after a commit.
//
// One broker per daemon, owned by the loop thread. Each loop turn: sessions parse frames and
// append to the store's open batch; at the end of the turn (a uv_check callback) the broker
// commits once, then acks and deliveries go out — never before the commit (an acked
// message must survive SIGKILL). A failed commit turns every send of the batch into an
// `unavailable` error and acks nothing.
//
// Conversation events that are not log entries also go out from here: typing relays (rate
// limited per sender and conversation) and receipts (derived from the recipient's cursors
// and read marker when they move; never stored). Reads that may scan far (history pages,
// receipts look-ups) run on the store's reader threads; their answers come back to the loop
// and find their session by connection id.
#pragma once

#include "core/config.h"
#include "core/metrics.h"
#include "core/uv_handle.h"
#include "router/modules.h"
#include "session/dispatch.h"
#include "session/frame.h"
#include "session/presence.h"
#include "session/session.h"
#include "store/reader.h"
#include "store/store.h"

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <uv.h>
#include <vector>

namespace meshd::session {

struct BrokerLimits {
    size_t max_frame = 1 << 20;
    size_t max_depth = 64;
    size_t max_queue = 4 << 20;
    size_t max_inflight = 1024;
    size_t max_devices = 32;
    uint64_t hello_timeout_ms = 10000;
    uint64_t ping_interval_ms = 30000;
    uint64_t presence_grace_ms = 5000;
    uint64_t away_after_ms = 300000; // 0: no automatic away
    size_t max_watch = 1000;
    size_t max_profile_bytes = 8192;
    size_t history_max_inflight = 4; // history and receipts queries per connection
    uint64_t typing_interval_ms = 1000;
    uint64_t task_lease_ms = 60000;
    size_t task_queue_cap = 10000;
    uint64_t task_queue_ttl_ms = 86400000;
    static BrokerLimits from(const core::Config& config);
};

class Broker {
  public:
    Broker(uv_loop_t* loop, store::Store& store, store::Reader& reader, router::ModuleSet& modules,
           BrokerLimits limits, size_t write_headroom, std::string server_name);
    ~Broker();
    Broker(const Broker&) = delete;
    Broker& operator=(const Broker&) = delete;

    std::unique_ptr<Session> open_session(Link& link, std::string remote, std::string bearer);
    void apply_limits(const BrokerLimits& limits);
    // Commits the turn's batch and wakes whom it concerns. Called once per loop turn.
    void end_of_turn();
    // Runs fn(error) once the current batch is committed and durable (error null), or failed
    // (or at the end of this turn if nothing is pending). Like acks, never earlier.
    void after_commit(std::function<void(const core::Error* error)> fn);

    // Closes every session of p (only those opened with `credential`, when given); returns
    // how many.
    size_t close_principal(const store::Principal& p, uint16_t code, std::string_view reason,
                           std::string_view credential = {});
    void close_all(uint16_t code, std::string_view reason);
    // Shutdown: commit, make everything durable now and release what waited for it.
    void flush();
    // Stops the timers and the reader threads (shutdown); sessions still close through the
    // transport.
    void stop();

    size_t connection_count() const { return sessions_.size(); }
    size_t session_count() const;
    size_t session_count(store::Kind kind) const {
        return live_by_kind_[kind == store::Kind::agent ? 1 : 0];
    }
    size_t live_count(const store::Principal& p) const;
    // Devices of p: those with a stored cursor plus live ones without one.
    size_t device_count(const store::Principal& p) const;
    void for_each_session(const std::function<void(const Session&)>& fn) const;
    // The connection with this id (Session::conn_id), or null once it is gone.
    Session* find_connection(uint64_t conn_id) const;
    Presence& presence() { return presence_; }
    Dispatcher& dispatcher() { return dispatcher_; }

    // ---- for sessions ----
    store::Store& store() { return store_; }
    store::Reader& reader() { return reader_; }
    router::ModuleSet& modules() { return modules_; }
    const BrokerLimits& limits() const { return limits_; }
    FrameParser& parser() { return parser_; }
    const std::string& server_name() const { return server_name_; }
    uint64_t now_ms() const { return uv_now(loop_); }
    size_t write_headroom() const { return write_headroom_; }
    // The reused output buffer: write_headroom() bytes, then the frame being built.
    std::string& scratch() {
        scratch_.resize(write_headroom_);
        return scratch_;
    }
    std::vector<store::Principal*>& route_buffer() { return route_buffer_; }
    std::string& to_buffer() { return to_buffer_; }
    // s became ready: returns its principal's presence entry (see Presence::session_ready).
    PresenceEntry* register_live(Session& s);
    void unregister_live(Session& s);
    Session* find_live(const store::Principal& p, std::string_view device) const;
    void note_pending(Session& s);
    void note_stored(store::Principal& recipient, std::string_view sender, int64_t seq);
    void forget(Session& s); // the session is being destroyed

    // ---- conversations ----
    // Relays a typing notice from `from` to the live devices of the recipients (the sender's
    // own devices excepted), at most one start per typing.interval_ms per sender and `to`.
    void relay_typing(const store::Principal& from, const std::string& to,
                      std::span<store::Principal* const> recipients, bool stop);
    // p's delivered or read watermark moved from `after` to `upto`: tell the senders of the
    // direct messages in between (their live devices), once the current batch is committed.
    // Entries still in p's memory tail are looked at here; older ones on a reader thread.
    void receipts_moved(store::Principal& p, int64_t after, int64_t upto, bool read);

    // Core instruments the sessions count into (handles resolved once, in the constructor).
    struct Metrics {
        core::Counter deliveries;            // msg frames handed to the transport
        core::Counter rate_limited_inflight; // sends refused by limits.max_inflight
        core::Counter rate_limited_queries;  // history/receipts refused by history.max_inflight
        core::Counter typing_relayed;        // typing notices relayed (once per notice)
        core::Counter typing_dropped;        // typing notices over typing.interval_ms
        core::Counter receipts_sent;         // receipt frames queued for devices
        core::Counter events_dropped_typing; // events a device's full control queue refused
        core::Counter events_dropped_receipt;
        core::Counter history_reads;         // history pages read
        core::Histogram read_seconds;        // time a reader job took, on its thread
        core::Counter tasks_sent;            // sends to skill:NAME stored
        core::Counter tasks_assigned;        // work given to an agent (again after a lease)
        core::Counter tasks_requeued;        // held work back in the queue (lease ran out)
        core::Counter tasks_expired;         // deadline or queue TTL passed
    };
    Metrics& metrics() { return metrics_; }
    // Counts an error frame sent to a client, by its code.
    void count_error(std::string_view code);

  private:
    void tick();
    void send_receipts(const std::string& by, bool read, std::span<const store::SenderMax> list);
    void start_older_scan(const store::Principal& p, bool read);

    uv_loop_t* loop_;
    store::Store& store_;
    store::Reader& reader_;
    router::ModuleSet& modules_;
    BrokerLimits limits_;
    size_t write_headroom_;
    std::string server_name_;
    FrameParser parser_;
    std::string scratch_;
    std::vector<store::Principal*> route_buffer_;
    std::string to_buffer_;
    uint64_t next_conn_id_ = 1;

    std::unordered_map<uint64_t, Session*> sessions_;
    std::unordered_map<int64_t, std::vector<Session*>> live_; // pid -> ready sessions
    std::vector<Session*> pending_;                           // sessions with sends this turn
    struct StoredEvent {
        store::Principal* recipient;
        std::string sender;
        int64_t seq;
    };
    std::vector<StoredEvent> stored_events_;
    std::vector<std::function<void(const core::Error*)>> after_commit_;
    // sync = full: what waits for a committed batch to become durable, oldest first.
    struct Waiting {
        uint64_t batch;
        std::vector<StoredEvent> stored;
        std::vector<std::function<void(const core::Error*)>> callbacks;
    };
    std::deque<Waiting> waiting_;
    void release_durable();
    void wake_touched();
    std::vector<store::Principal*> touched_;
    std::vector<Session*> wake_list_;
    std::vector<uint64_t> kill_list_;

    // Typing rate limits: "<sender pid> <to>" -> last start relayed.
    struct TypingState {
        uint64_t last_start_ms = 0;
        bool started = false; // a start was relayed and no stop since
    };
    std::unordered_map<std::string, TypingState> typing_;
    uint64_t typing_pruned_ms_ = 0;
    std::vector<store::SenderMax> receipt_scratch_;
    // Receipts for entries older than a principal's memory tail, read off the loop: at most
    // one scan per principal and state (delivered, read) at a time; what comes meanwhile is
    // merged into `after..upto` and read next.
    struct OlderScan {
        int64_t after = 0, upto = 0;
        std::vector<int64_t> covered; // senders already told something newer
        bool running = false;
        bool queued = false;
    };
    std::unordered_map<int64_t, OlderScan> older_scans_[2]; // [0] delivered, [1] read

    core::UvCheck turn_end_;
    core::UvTimer ticker_;
    Presence presence_{*this};
    Dispatcher dispatcher_{*this};

    size_t live_by_kind_[2] = {0, 0}; // ready sessions of users, of agents
    size_t receipt_sessions_ = 0;     // ready sessions that asked for receipts
    // Does a ready session of this principal want receipts?
    bool wants_receipts(int64_t pid) const;
    Metrics metrics_;
    // meshd_errors_total{code}: the contract's codes are registered up front (they read 0
    // until used); codes modules invent get a series on first use, up to a cap.
    std::vector<std::pair<std::string, core::Counter>> error_counters_;
    core::Counter other_errors_;
    core::CollectorHandle collector_;
    void register_metrics();
};

} // namespace meshd::session
