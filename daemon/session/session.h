// session/session: one client connection's state machine and its cursor-driven output.
//
//   fresh ──hello ok──▶ ready ──close()──▶ closing ──close frame written──▶ close_sent
//     │  ▲                 ▲                  ▲                  (lws closes on the peer's
//     │  │ (new hello)     │ auth ok          │                   echo, or kill after 3 s)
//     │  └─ fresh + challenge_ ───────────────┤ bad answer / no answer in time
//     │     (hello challenged)                │
//     └──bad credentials / hello timeout──────┘
// Transitions: on_text() -> handle_hello() (fresh->ready, or a challenge is issued);
// handle_auth() (challenge answered: ->ready); refuse_auth() and close() (any->closing);
// next_frame() (closing->close_sent). on_closed() ends the object's life.
//
// Output is pulled, not pushed: the transport asks next_frame() on each writable callback.
// Control frames (welcome, errors) come from a small byte-capped queue; messages are read
// from the principal's log at next_seq_ (memory tail, else a page from SQLite), so a slow
// reader never makes meshd buffer its backlog. Invariant: frames to one device leave in seq
// order; the ack for this device's own send takes the place of the msg at that seq.
//
// Besides control frames and log entries, a ready session writes events (typing, receipt:
// queued only while the control queue holds under max_event_bytes, else dropped and
// counted) and answers to queries read off the loop (history, receipts: each counts against
// history.max_inflight until it is written, which bounds what waits in memory).
#pragma once

#include "core/vec_queue.h"
#include "session/frame.h"
#include "core/result.h"
#include "store/reader.h"
#include "store/store.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace meshd::router {
struct AuthOutcome;
} // namespace meshd::router

namespace meshd::session {

class Broker;
struct PresenceEntry;

// What the transport does for a session.
class Link {
  public:
    virtual void want_write() = 0; // call next_frame() on the next writable callback
    // Write what next_frame() gives now, without waiting for a writable callback; whatever
    // does not fit goes out on writable callbacks. Only outside transport callbacks.
    virtual void write_now() = 0;
    virtual void kill() = 0; // drop the TCP connection now, without a close handshake
  protected:
    ~Link() = default;
};

struct OutFrame {
    enum class Kind { none, text, ping, close };
    Kind kind = Kind::none;
    // The payload; broker().write_headroom() writable bytes precede it in memory.
    char* data = nullptr;
    size_t len = 0;
};

class Session {
  public:
    enum class State { fresh, ready, closing, close_sent, gone };

    Session(Broker& broker, Link& link, uint64_t conn_id, std::string remote, std::string bearer);
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    // ---- transport events ----
    // `frame` has spare capacity for the parser's padding; it may be modified.
    void on_text(std::string& frame);
    void on_binary();
    void on_too_large(size_t bytes);
    void on_pong();
    void on_closed();
    OutFrame next_frame();

    // ---- the one close path ----
    // Stops reading and drops queued output (unless flush: then queued control frames, such
    // as the error that explains the close, go first); the close frame is written next.
    void close(uint16_t code, std::string_view reason, bool flush = false);

    // ---- broker-facing ----
    // Asks the accept hooks (rate limits) about the new connection, before anything is read;
    // on a refusal the error frame is flushed, then close 1013 (rate_limited) or 1008.
    void admit();
    void wake(); // new committed entries or acks may be ready
    void fail_pending(const core::Error& error); // the batch failed: un-ack its sends
    void tick(uint64_t now_ms);                  // timeouts and pings
    bool kill_due(uint64_t now_ms) const;
    void kill_link() { link_.kill(); } // may destroy this session before returning

    State state() const { return state_; }
    uint64_t conn_id() const { return conn_id_; }
    store::Principal* principal() const { return principal_; }
    const std::string& device() const { return device_; }
    const std::string& session_id() const { return session_id_; }
    const std::string& remote() const { return remote_; }
    std::string_view remote_ip() const; // remote() without the port
    // What opened the session, as the auth module named it: "token", "ed25519:<key>", ...
    const std::string& credential() const { return credential_; }
    int64_t connected_ms() const { return connected_ms_; }
    int64_t next_seq() const { return next_seq_; }
    size_t queued_bytes() const { return control_bytes_ + reply_bytes_; }
    // Committed entries of the log not yet written to this device (0 unless ready).
    int64_t delivery_backlog() const {
        return state_ == State::ready && principal_
                   ? std::max<int64_t>(0, principal_->committed_head - next_seq_ + 1)
                   : 0;
    }
    bool in_batch = false; // listed in the broker's pending sessions of this turn
    // Events this device asked for in hello ("events"): v1 clients that did not ask never
    // get frame types they do not know.
    bool wants_receipts() const { return wants_receipts_; }
    bool wants_typing() const { return wants_typing_; }

    // Queues an event frame (presence, typing, receipt) if this session is ready and its
    // control queue stays under max_event_bytes (64 KiB) and half of limits.max_queue; false
    // when it was dropped (the caller counts).
    bool queue_event(std::string frame);
    // The answer to a query this session asked the reader for (history, receipts).
    void finish_history(std::string frame, const core::Error* error, std::string_view ref,
                        bool has_ref);
    void finish_receipts(const std::vector<store::SentMessage>& sent, const core::Error* error,
                         std::string_view ref, bool has_ref);

  private:
    struct PendingAck {
        int64_t seq;
        bool dup;
        std::string ref;
        bool has_ref;
        std::string extra; // members after seq (a send to a skill); usually empty
    };
    void queue_ack(PendingAck ack);

    // What a hello asked for, kept while its challenge is pending.
    struct HelloRequest {
        std::string device;
        std::string claimed_id; // case-folded
        std::string pubkey;
        std::string epoch;
        bool has_epoch = false;
        Frame::Resume resume = Frame::Resume::none;
        int64_t resume_seq = 0;
        bool wants_receipts = false;
        bool wants_typing = false;
    };
    struct PendingChallenge {
        HelloRequest hello;
        std::string nonce; // raw bytes, as sent to the client
        size_t challenger = 0;
        uint64_t timeout_ms = 0;
        uint64_t deadline_ms = 0; // loop time
    };

    void handle_hello(const struct Frame& f);
    void handle_auth(const struct Frame& f);
    void start_challenge(HelloRequest hello, const router::AuthOutcome& auth);
    void login(store::Principal& p, const HelloRequest& hello, std::string credential,
               std::string_view ref, bool has_ref);
    // The one way a refused hello or auth ends: error unauthorized, then close 1008.
    void refuse_auth(std::string_view claimed_id, std::string_view message, std::string_view ref,
                     bool has_ref);
    void handle_send(const struct Frame& f);
    void handle_ack(const struct Frame& f);
    // session_presence.cc: watch, status, profile, who.
    void handle_watch(const struct Frame& f);
    void handle_status(const struct Frame& f);
    void handle_profile(const struct Frame& f);
    void handle_who(const struct Frame& f);
    void send_ok(std::string_view ref, bool has_ref);
    // Answers ok (or the batch's error) once the turn's batch is committed; then runs
    // `then` if it committed (even when this session is gone by then).
    void ok_after_commit(std::string_view ref, bool has_ref, std::function<void()> then = {});
    void handle_history(const struct Frame& f);
    void handle_typing(const struct Frame& f);
    void handle_read(const struct Frame& f);
    void handle_receipts(const struct Frame& f);
    void handle_settings(const struct Frame& f);
    void handle_task(const struct Frame& f);
    // Takes a slot of history.max_inflight, or answers rate_limited and returns false.
    bool begin_query(const struct Frame& f);
    void queue_reply(std::string frame);
    void send_error(std::string_view code, std::string_view message, std::string_view ref,
                    bool has_ref, uint32_t retry_after_ms = 0);
    void queue_control(std::string frame);
    void bad_input(std::string_view code, std::string_view message, std::string_view ref,
                   bool has_ref);
    const store::LogEntry* entry_at(int64_t seq);
    void append_synced(std::string& buf);
    void detach(); // leaves the principal's live set

    Broker& broker_;
    Link& link_;
    uint64_t conn_id_;
    std::string remote_;
    std::string bearer_;
    std::string session_id_;
    std::string device_;
    store::Principal* principal_ = nullptr;
    PresenceEntry* presence_ = nullptr; // while ready: where activity is noted
    std::string credential_;
    bool wants_receipts_ = false;
    bool wants_typing_ = false;
    std::unique_ptr<PendingChallenge> challenge_; // while a hello's challenge is open
    State state_ = State::fresh;
    int64_t connected_ms_ = 0;
    uint64_t opened_loop_ms_ = 0;

    // output
    core::VecQueue<std::string> control_;
    size_t control_bytes_ = 0;
    core::VecQueue<PendingAck> acks_; // sorted by seq
    // Query answers not yet written; queries_inflight_ counts these and those being read.
    core::VecQueue<std::string> replies_;
    size_t reply_bytes_ = 0;
    size_t queries_inflight_ = 0;
    int64_t next_seq_ = 1;
    int64_t sync_target_ = 0;
    bool synced_ = true;
    std::vector<store::LogEntry> page_;

    // liveness and closing
    bool ping_due_ = false;
    int pings_unanswered_ = 0;
    int bad_frames_in_row_ = 0;
    uint64_t last_ping_ms_ = 0;
    uint16_t close_code_ = 0;
    std::string close_reason_;
    bool close_flush_ = false;
    uint64_t close_deadline_ms_ = 0;
};

} // namespace meshd::session
