// session/session: frame handling and the pull-based output of one connection.
#include "session/session.h"

#include "core/base64.h"
#include "core/clock.h"
#include "core/json.h"
#include "core/log.h"
#include "core/names.h"
#include "session/broker.h"
#include "session/frame.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <sodium.h>

namespace meshd::session {

namespace {

constexpr size_t page_rows = 256;
constexpr size_t page_bytes = 256 * 1024;
constexpr uint64_t close_grace_ms = 3000;
constexpr int max_unanswered_pings = 2;
// A peer that sends nothing but bad frames is closed (1008) instead of being answered forever.
constexpr int max_bad_frames_in_row = 100;

void append_ack(std::string& buf, const auto& a) {
    buf += R"({"type":"ack",)";
    if (a.has_ref) {
        buf += R"("ref":)";
        core::json_append_string(buf, a.ref);
        buf += ',';
    }
    buf += R"("seq":)";
    core::json_append_int(buf, a.seq);
    if (a.dup)
        buf += R"(,"dup":true)";
    buf += a.extra; // a send to a skill: ,"task":..,"state":..
    buf += '}';
}

// A log entry as the msg frame carries it; history pages carry the same objects.
void append_msg(std::string& buf, int64_t seq, const store::MessageData& m) {
    buf.reserve(buf.size() + 96 + m.from.size() + m.to.size() + m.body.size() + m.task.size());
    if (m.is_task_event()) { // a task's transition: the body is the task object
        buf += R"({"type":"task","seq":)";
        core::json_append_int(buf, seq);
        buf += R"(,"ts":)";
        core::json_append_int(buf, m.ts);
        buf += R"(,"task":)";
        buf += m.body;
        buf += '}';
        return;
    }
    buf += R"({"type":"msg","seq":)";
    core::json_append_int(buf, seq);
    buf += R"(,"from":)";
    core::json_append_string(buf, m.from);
    buf += R"(,"to":)";
    core::json_append_string(buf, m.to);
    buf += R"(,"ts":)";
    core::json_append_int(buf, m.ts);
    if (!m.client_id.empty()) {
        buf += R"(,"id":)";
        core::json_append_string(buf, m.client_id);
    }
    if (!m.task.empty()) {
        buf += R"(,"task":)";
        buf += m.task;
    }
    buf += R"(,"body":)";
    buf += m.body;
    buf += '}';
}

// {"type":TYPE,"ref":REF, — the start of a reply; the caller appends its fields and '}'.
void begin_reply(std::string& buf, std::string_view type, std::string_view ref, bool has_ref) {
    buf += R"({"type":)";
    core::json_append_string(buf, type);
    if (has_ref) {
        buf += R"(,"ref":)";
        core::json_append_string(buf, ref);
    }
}

// Bodies in one history page stop at about this many bytes (the first entry always fits):
// a page waits in memory until written, so its size is bounded, not its row count alone.
constexpr size_t history_page_bytes = 1 << 20;
// Events (typing, receipts) are dropped while a device's control queue holds this much.
constexpr size_t max_event_bytes = 64 * 1024;

std::string new_session_id() {
    unsigned char raw[9];
    randombytes_buf(raw, sizeof raw);
    char hex[19];
    sodium_bin2hex(hex, sizeof hex, raw, sizeof raw);
    return std::string("s-") + hex;
}

} // namespace

Session::Session(Broker& broker, Link& link, uint64_t conn_id, std::string remote,
                 std::string bearer)
    : broker_(broker), link_(link), conn_id_(conn_id), remote_(std::move(remote)),
      bearer_(std::move(bearer)), session_id_(new_session_id()), connected_ms_(core::wall_ms()),
      opened_loop_ms_(broker.now_ms()) {
    last_ping_ms_ = opened_loop_ms_;
}

Session::~Session() {
    if (!bearer_.empty())
        sodium_memzero(bearer_.data(), bearer_.size());
    broker_.forget(*this);
}

std::string_view Session::remote_ip() const {
    std::string_view r = remote_; // "1.2.3.4:5678" or "::1:5678" (IPv6 without brackets)
    size_t colon = r.rfind(':');
    return colon == std::string_view::npos ? r : r.substr(0, colon);
}

void Session::admit() {
    router::CheckOutcome r = broker_.modules().accept(remote_ip());
    if (r.ok)
        return;
    // debug: under a flood this is one line per connection; the module logs the aggregate.
    MESHD_LOG(debug, "session.refused", "conn=%llu remote=%s code=%s message=%s",
              static_cast<unsigned long long>(conn_id_), remote_.c_str(), r.code.c_str(),
              core::log_value(r.message).c_str());
    send_error(r.code, r.message, {}, false, r.retry_after_ms);
    if (r.code == "rate_limited")
        close(1013, "try again later", true);
    else
        close(1008, "connection refused", true);
}

void Session::queue_control(std::string frame) {
    control_bytes_ += frame.size();
    control_.push_back(std::move(frame));
    if (control_bytes_ > broker_.limits().max_queue) {
        MESHD_LOG(warn, "conn.too_slow", "conn=%llu queued_bytes=%zu",
                  static_cast<unsigned long long>(conn_id_), control_bytes_);
        close(4001, "too slow: output queue over limits.max_queue; resume later");
        return;
    }
    link_.want_write();
}

void Session::send_error(std::string_view code, std::string_view message, std::string_view ref,
                         bool has_ref, uint32_t retry_after_ms) {
    broker_.count_error(code);
    std::string f;
    f.reserve(64 + message.size() + ref.size());
    f += R"({"type":"error",)";
    if (has_ref) {
        f += R"("ref":)";
        core::json_append_string(f, ref);
        f += ',';
    }
    f += R"("code":)";
    core::json_append_string(f, code);
    f += R"(,"message":)";
    core::json_append_string(f, message);
    if (retry_after_ms > 0) {
        f += R"(,"retry_after_ms":)";
        core::json_append_int(f, retry_after_ms);
    }
    f += '}';
    queue_control(std::move(f));
}

void Session::on_text(std::string& frame) {
    if (state_ != State::fresh && state_ != State::ready)
        return;
    pings_unanswered_ = 0;
    if (presence_) // any frame, even a bad one, is activity (automatic away)
        broker_.presence().activity(*presence_, broker_.now_ms());
    Frame f;
    FrameError err = broker_.parser().parse(frame, f);
    if (err) {
        bad_input(err.code, err.message, f.ref, f.has_ref);
        return;
    }
    bad_frames_in_row_ = 0;
    switch (f.type) {
    case FrameType::hello:
        handle_hello(f);
        return;
    case FrameType::auth:
        handle_auth(f);
        return;
    default:
        break;
    }
    if (state_ != State::ready) {
        send_error("unauthorized", "send hello first: nothing else is accepted before welcome",
                   f.ref, f.has_ref);
        return;
    }
    switch (f.type) {
    case FrameType::send:
        handle_send(f);
        return;
    case FrameType::ack:
        handle_ack(f);
        return;
    case FrameType::watch:
        handle_watch(f);
        return;
    case FrameType::status:
        handle_status(f);
        return;
    case FrameType::profile:
        handle_profile(f);
        return;
    case FrameType::who:
        handle_who(f);
        return;
    case FrameType::history:
        handle_history(f);
        return;
    case FrameType::typing:
        handle_typing(f);
        return;
    case FrameType::read:
        handle_read(f);
        return;
    case FrameType::receipts:
        handle_receipts(f);
        return;
    case FrameType::settings:
        handle_settings(f);
        return;
    case FrameType::task:
        handle_task(f);
        return;
    default:
        send_error("unknown_type", "unknown frame type '" + std::string(f.type_name) + "'", f.ref,
                   f.has_ref);
    }
}

void Session::bad_input(std::string_view code, std::string_view message, std::string_view ref,
                        bool has_ref) {
    send_error(code, message, ref, has_ref);
    if (++bad_frames_in_row_ >= max_bad_frames_in_row)
        close(1008, "too many bad frames in a row", true);
}

void Session::on_binary() {
    if (state_ == State::fresh || state_ == State::ready)
        bad_input("bad_frame", "binary frames are not accepted; send JSON text frames", {}, false);
}

void Session::on_too_large(size_t bytes) {
    if (state_ == State::fresh || state_ == State::ready)
        bad_input("too_large",
                  "frame of " + std::to_string(bytes) + " bytes is over limits.max_frame (" +
                      std::to_string(broker_.limits().max_frame) + ")",
                  {}, false);
}

void Session::on_pong() {
    pings_unanswered_ = 0;
}

// Every refused hello or auth ends here (an unanswered challenge too): modules are told
// (failed-login limits), the client gets unauthorized and close 1008.
void Session::refuse_auth(std::string_view claimed_id, std::string_view message,
                          std::string_view ref, bool has_ref) {
    MESHD_LOG(info, "session.auth_failed", "conn=%llu remote=%s message=%s",
              static_cast<unsigned long long>(conn_id_), remote_.c_str(),
              core::log_value(message).c_str());
    broker_.modules().auth_failed(remote_ip(), claimed_id, message);
    send_error("unauthorized", message, ref, has_ref);
    close(1008, "unauthorized", true);
    challenge_.reset(); // last: claimed_id may point into it
}

void Session::handle_hello(const Frame& f) {
    if (state_ == State::ready) {
        send_error("bad_frame",
                   "already authenticated as " + principal_->name +
                       "; open a new connection to log in again",
                   f.ref, f.has_ref);
        return;
    }
    challenge_.reset(); // a new hello starts over
    std::string_view device = f.has_device ? f.device : std::string_view("default");
    if (!core::valid_device(device)) {
        send_error("bad_frame", "\"device\" must match [A-Za-z0-9._-]{1,64}", f.ref, f.has_ref);
        return;
    }
    HelloRequest hello;
    if (!f.claimed_id.empty()) {
        auto c = core::canonical_principal(f.claimed_id);
        if (!c) {
            refuse_auth(f.claimed_id, "\"id\" is not a valid principal name", f.ref, f.has_ref);
            return;
        }
        hello.claimed_id = std::move(*c);
    }
    hello.device = std::string(device);
    hello.pubkey = std::string(f.pubkey);
    hello.epoch = std::string(f.epoch);
    hello.has_epoch = f.has_epoch;
    hello.resume = f.resume;
    hello.resume_seq = f.resume_seq;
    hello.wants_receipts = f.wants_receipts;
    hello.wants_typing = f.wants_typing;

    router::AuthRequest req;
    req.token = f.has_token ? f.token : std::string_view(bearer_);
    req.claimed_id = hello.claimed_id;
    req.device = hello.device;
    req.remote_addr = remote_;
    req.pubkey = hello.pubkey;
    router::AuthOutcome auth = broker_.modules().auth(req);
    if (auth.challenged) {
        start_challenge(std::move(hello), auth);
        return;
    }
    if (!auth.principal) {
        refuse_auth(hello.claimed_id, auth.message, f.ref, f.has_ref);
        return;
    }
    login(*auth.principal, hello, std::move(auth.credential), f.ref, f.has_ref);
}

// The module wants proof: send its nonce and wait (Session::tick enforces the deadline).
void Session::start_challenge(HelloRequest hello, const router::AuthOutcome& auth) {
    PendingChallenge c;
    c.hello = std::move(hello);
    c.nonce = auth.challenge;
    c.challenger = auth.challenger;
    c.timeout_ms = auth.challenge_timeout_ms > 0 ? auth.challenge_timeout_ms
                                                 : broker_.limits().hello_timeout_ms;
    c.deadline_ms = broker_.now_ms() + c.timeout_ms;
    std::string frame = R"({"type":"challenge","nonce":)";
    core::json_append_string(frame, core::base64_encode(c.nonce));
    frame += '}';
    challenge_ = std::make_unique<PendingChallenge>(std::move(c));
    queue_control(std::move(frame));
}

void Session::handle_auth(const Frame& f) {
    if (state_ == State::ready) {
        send_error("bad_frame", "already authenticated", f.ref, f.has_ref);
        return;
    }
    if (!challenge_) {
        refuse_auth({}, "no challenge is pending: send hello (with id and pubkey) first", f.ref,
                    f.has_ref);
        return;
    }
    // One answer per challenge, right or wrong: a nonce is never signed for twice.
    PendingChallenge c = std::move(*challenge_);
    challenge_.reset();
    if (f.has_nonce && core::base64_decode(f.nonce) != c.nonce) {
        refuse_auth(c.hello.claimed_id,
                    "\"nonce\" is not the nonce this connection was sent; sign the one in its "
                    "challenge frame",
                    f.ref, f.has_ref);
        return;
    }
    router::AuthRequest req;
    req.step = 1;
    req.claimed_id = c.hello.claimed_id;
    req.device = c.hello.device;
    req.remote_addr = remote_;
    req.pubkey = c.hello.pubkey;
    req.challenge = c.nonce;
    req.challenger = c.challenger;
    req.sig = f.sig;
    router::AuthOutcome auth = broker_.modules().auth(req);
    if (!auth.principal) {
        refuse_auth(c.hello.claimed_id, auth.message, f.ref, f.has_ref);
        return;
    }
    login(*auth.principal, c.hello, std::move(auth.credential), f.ref, f.has_ref);
}

// Credentials are good: check the resume and the device slot, then go ready and welcome.
void Session::login(store::Principal& p, const HelloRequest& hello, std::string credential,
                    std::string_view ref, bool has_ref) {
    store::Store& store = broker_.store();
    if (hello.has_epoch && hello.epoch != store.epoch()) {
        send_error("resume_invalid",
                   "epoch '" + hello.epoch + "' is not this store's epoch '" + store.epoch() +
                       "': seqs are not comparable; send hello without resume and epoch",
                   ref, has_ref);
        return;
    }
    if (hello.resume == Frame::Resume::seq && hello.resume_seq > p.committed_head) {
        send_error("resume_invalid",
                   "resume " + std::to_string(hello.resume_seq) + " is above the log's head " +
                       std::to_string(p.committed_head),
                   ref, has_ref);
        return;
    }
    const std::string& device = hello.device;
    Session* old = broker_.find_live(p, device);
    if (!old && !p.cursors.contains(device) &&
        broker_.device_count(p) >= broker_.limits().max_devices) {
        send_error("forbidden",
                   std::string(p.name) + " already uses " +
                       std::to_string(broker_.limits().max_devices) +
                       " devices (limits.max_devices); reuse a device name or ask the admin to "
                       "raise the limit",
                   ref, has_ref);
        return;
    }
    if (old)
        old->close(4000, "replaced by a newer connection of the same principal and device");

    int64_t cursor = store.cursor(p, device);
    int64_t start = cursor;
    if (hello.resume == Frame::Resume::head)
        start = p.committed_head;
    else if (hello.resume == Frame::Resume::seq)
        start = std::max(hello.resume_seq, cursor);
    principal_ = &p;
    device_ = device;
    credential_ = std::move(credential);
    wants_receipts_ = hello.wants_receipts;
    wants_typing_ = hello.wants_typing;
    next_seq_ = start + 1;
    sync_target_ = p.committed_head;
    synced_ = false;
    state_ = State::ready;
    if (!bearer_.empty())
        sodium_memzero(bearer_.data(), bearer_.size());
    bearer_.clear();
    presence_ = broker_.register_live(*this);

    std::string w;
    w.reserve(192);
    w += R"({"type":"welcome","id":)";
    core::json_append_string(w, p.name);
    w += R"(,"kind":)";
    core::json_append_string(w, store::to_string(p.kind));
    w += R"(,"session":)";
    core::json_append_string(w, session_id_);
    w += R"(,"seq":)";
    core::json_append_int(w, p.committed_head);
    w += R"(,"oldest":)";
    core::json_append_int(w, p.oldest);
    w += R"(,"epoch":)";
    core::json_append_string(w, store.epoch());
    w += R"(,"server":)";
    core::json_append_string(w, broker_.server_name());
    w += R"(,"device":)";
    core::json_append_string(w, device_);
    w += R"(,"cursor":)";
    core::json_append_int(w, cursor);
    w += R"(,"read":)";
    core::json_append_int(w, p.read_upto);
    // What another device (or an earlier session) set: a new device starts from it.
    w += R"(,"status":)";
    core::json_append_string(w, store::to_string(p.status));
    w += R"(,"note":)";
    core::json_append_string(w, p.note);
    w += R"(,"events":[)";
    if (wants_receipts_)
        w += R"("receipts")";
    if (wants_typing_)
        w += wants_receipts_ ? R"(,"typing")" : R"("typing")";
    w += ']';
    w += R"(,"max_frame":)";
    core::json_append_int(w, static_cast<int64_t>(broker_.limits().max_frame));
    w += '}';
    queue_control(std::move(w));
    std::string_view method = std::string_view(credential_).substr(0, credential_.find(':'));
    MESHD_LOG(info, "session.open",
              "conn=%llu principal=%s device=%s session=%s remote=%s auth=%.*s",
              static_cast<unsigned long long>(conn_id_), p.name.c_str(), device_.c_str(),
              session_id_.c_str(), remote_.c_str(), static_cast<int>(method.size()), method.data());
    broker_.modules().session_event(true, p, device_, session_id_);
}

void Session::handle_send(const Frame& f) {
    if (f.has_id && !core::valid_client_id(f.id)) {
        send_error("bad_frame", "\"id\" must be 1-64 printable ASCII characters", f.ref, f.has_ref);
        return;
    }
    if (acks_.size() >= broker_.limits().max_inflight) {
        broker_.metrics().rate_limited_inflight.inc();
        send_error("rate_limited",
                   "more than " + std::to_string(broker_.limits().max_inflight) +
                       " sends await their ack (limits.max_inflight); read the acks, then send",
                   f.ref, f.has_ref, 100);
        return;
    }
    auto& recipients = broker_.route_buffer();
    std::string& to = broker_.to_buffer();
    router::RouteOutcome route = broker_.modules().route(*principal_, f.to, recipients, to);
    if (!route.ok) {
        send_error(route.code, route.message, f.ref, f.has_ref);
        return;
    }
    if (f.has_task && route.skill.empty()) {
        send_error("bad_frame",
                   "\"task\" goes with a send to skill:NAME; to '" + std::string(f.to) +
                       "' send without it",
                   f.ref, f.has_ref);
        return;
    }
    router::CheckOutcome check = broker_.modules().check(
        *principal_, to, f.body, route.skill.empty() ? recipients.size() : 1);
    if (!check.ok) {
        send_error(check.code, check.message, f.ref, f.has_ref, check.retry_after_ms);
        return;
    }
    if (!route.skill.empty()) {
        auto sent = broker_.dispatcher().send(*principal_, route.skill, f, core::wall_ms());
        if (!sent) {
            send_error(sent.error().code, sent.error().message, f.ref, f.has_ref,
                       sent.error().code == "rate_limited" ? 1000 : 0);
            return;
        }
        broker_.metrics().tasks_sent.inc();
        queue_ack({sent->append.sender_seq, sent->append.dup, std::string(f.ref), f.has_ref,
                   std::move(sent->ack_members)});
        return;
    }
    auto r = broker_.store().append(principal_, to, recipients, f.body,
                                    f.has_id ? f.id : std::string_view(), core::wall_ms());
    if (!r) {
        send_error(r.error().code, r.error().message, f.ref, f.has_ref);
        return;
    }
    queue_ack({r->sender_seq, r->dup, std::string(f.ref), f.has_ref, {}});
    if (!r->dup && broker_.modules().wants_stored())
        for (store::Principal* rcpt : recipients)
            broker_.note_stored(*rcpt, principal_->name, rcpt->head);
}

// A send's ack, in seq order among the others; it goes out once the batch is committed.
void Session::queue_ack(PendingAck ack) {
    bool dup = ack.dup;
    int64_t seq = ack.seq;
    auto pos = std::upper_bound(acks_.begin(), acks_.end(), seq,
                                [](int64_t s, const PendingAck& a) { return s < a.seq; });
    acks_.insert(pos, std::move(ack));
    broker_.note_pending(*this);
    if (dup && seq <= principal_->committed_head)
        link_.want_write();
}

void Session::handle_task(const Frame& f) {
    if (auto r = broker_.dispatcher().task_frame(*principal_, f, core::wall_ms()); !r) {
        send_error(r.error().code, r.error().message, f.ref, f.has_ref);
        return;
    }
    ok_after_commit(f.ref, f.has_ref, nullptr);
}

void Session::handle_ack(const Frame& f) {
    if (f.upto > principal_->committed_head) {
        send_error("bad_frame",
                   "upto " + std::to_string(f.upto) + " is above the log's head " +
                       std::to_string(principal_->committed_head),
                   f.ref, f.has_ref);
        return;
    }
    store::Principal& p = *principal_;
    // Delivered means acked by any device, or read (a read marker implies delivery).
    int64_t before = std::max(p.delivered_upto, p.read_upto);
    broker_.store().set_cursor(p, device_, f.upto);
    int64_t after = std::max(p.delivered_upto, p.read_upto);
    if (after > before)
        broker_.receipts_moved(p, before, after, false);
}

void Session::fail_pending(const core::Error& error) {
    if (!principal_)
        return;
    auto first_failed =
        std::upper_bound(acks_.begin(), acks_.end(), principal_->committed_head,
                         [](int64_t seq, const PendingAck& a) { return seq < a.seq; });
    std::vector<PendingAck> failed(std::make_move_iterator(first_failed),
                                   std::make_move_iterator(acks_.end()));
    acks_.erase(first_failed, acks_.end());
    for (const PendingAck& a : failed)
        send_error(error.code, error.message, a.ref, a.has_ref);
}

// Called after a commit (outside transport callbacks): write at once, like Redis flushing
// its clients before it sleeps, instead of paying an epoll round trip per frame.
void Session::wake() {
    if (state_ == State::ready)
        link_.write_now();
}

void Session::detach() {
    if (state_ == State::ready && principal_) {
        presence_ = nullptr;
        broker_.unregister_live(*this);
        broker_.modules().session_event(false, *principal_, device_, session_id_);
    }
}

void Session::close(uint16_t code, std::string_view reason, bool flush) {
    if (state_ == State::closing || state_ == State::close_sent || state_ == State::gone)
        return;
    detach();
    MESHD_LOG(info, "session.close", "conn=%llu code=%u reason=%s principal=%s",
              static_cast<unsigned long long>(conn_id_), static_cast<unsigned>(code),
              core::log_value(reason).c_str(), principal_ ? principal_->name.c_str() : "-");
    state_ = State::closing;
    principal_ = nullptr;
    acks_.clear();
    replies_.clear();
    reply_bytes_ = 0;
    page_.clear();
    close_flush_ = flush;
    if (!flush) {
        control_.clear();
        control_bytes_ = 0;
    }
    close_code_ = code;
    close_reason_ = std::string(reason.substr(0, 120)); // a close frame's payload is <= 125
    close_deadline_ms_ = broker_.now_ms() + close_grace_ms;
    link_.want_write();
}

void Session::on_closed() {
    detach();
    state_ = State::gone;
    principal_ = nullptr;
}

void Session::tick(uint64_t now_ms) {
    const BrokerLimits& limits = broker_.limits();
    if (state_ == State::fresh && challenge_) {
        if (now_ms >= challenge_->deadline_ms)
            refuse_auth(challenge_->hello.claimed_id,
                        "no answer to the challenge within " +
                            std::to_string(challenge_->timeout_ms) + " ms",
                        {}, false);
        return;
    }
    if (state_ == State::fresh && now_ms - opened_loop_ms_ >= limits.hello_timeout_ms) {
        send_error("unauthorized",
                   "no hello within " + std::to_string(limits.hello_timeout_ms) +
                       " ms (limits.hello_timeout_ms)",
                   {}, false);
        close(1008, "hello timeout", true);
        return;
    }
    if (state_ == State::ready && now_ms - last_ping_ms_ >= limits.ping_interval_ms) {
        if (pings_unanswered_ >= max_unanswered_pings) {
            MESHD_LOG(info, "session.dead", "conn=%llu principal=%s",
                      static_cast<unsigned long long>(conn_id_), principal_->name.c_str());
            close(4003, "no pong to two pings; reconnect and resume");
            // A dead peer will not echo the close: wait one ping interval at most.
            close_deadline_ms_ = now_ms + std::min(close_grace_ms, limits.ping_interval_ms);
            return;
        }
        // A ping still unwritten a whole interval later means the peer reads nothing (its
        // socket is full): that counts as a missed pong, or such a peer would never be closed.
        if (ping_due_)
            ++pings_unanswered_;
        ping_due_ = true;
        last_ping_ms_ = now_ms;
        link_.want_write();
    }
}

bool Session::kill_due(uint64_t now_ms) const {
    return (state_ == State::closing || state_ == State::close_sent) &&
           now_ms >= close_deadline_ms_;
}

const store::LogEntry* Session::entry_at(int64_t seq) {
    const auto& tail = principal_->tail;
    if (!tail.empty() && seq >= tail.front().seq && seq <= tail.back().seq)
        return &tail[static_cast<size_t>(seq - tail.front().seq)];
    if (page_.empty() || seq < page_.front().seq || seq > page_.back().seq) {
        auto r = broker_.store().read_page(*principal_, seq, page_rows, page_bytes, page_);
        if (!r) {
            MESHD_LOG(error, "session.read_failed", "conn=%llu message=%s",
                      static_cast<unsigned long long>(conn_id_),
                      core::log_value(r.error().message).c_str());
            page_.clear();
            return nullptr;
        }
        if (page_.empty())
            return nullptr;
    }
    if (seq < page_.front().seq)
        return nullptr;
    return &page_[static_cast<size_t>(seq - page_.front().seq)];
}

// The end of the replay: everything up to the head at welcome has been sent.
void Session::append_synced(std::string& buf) {
    synced_ = true;
    buf += R"({"type":"synced","seq":)";
    core::json_append_int(buf, sync_target_);
    buf += '}';
}

OutFrame Session::next_frame() {
    OutFrame out;
    std::string& buf = broker_.scratch();
    auto finish = [&](OutFrame::Kind kind) {
        out.kind = kind;
        out.data = buf.data() + broker_.write_headroom();
        out.len = buf.size() - broker_.write_headroom();
        return out;
    };
    auto pop_control = [&] {
        buf += control_.front();
        control_bytes_ -= control_.front().size();
        control_.pop_front();
        return finish(OutFrame::Kind::text);
    };

    if (state_ == State::closing) {
        if (close_flush_ && !control_.empty())
            return pop_control();
        buf += static_cast<char>(close_code_ >> 8);
        buf += static_cast<char>(close_code_ & 0xff);
        buf += close_reason_;
        state_ = State::close_sent;
        return finish(OutFrame::Kind::close);
    }
    if (state_ != State::fresh && state_ != State::ready)
        return out;
    if (ping_due_) {
        ping_due_ = false;
        ++pings_unanswered_;
        buf += "meshd"; // measured: lws 4.1.6 reported no RECEIVE_PONG for empty pongs
        return finish(OutFrame::Kind::ping);
    }
    if (!control_.empty())
        return pop_control();
    if (state_ != State::ready)
        return out;
    if (!replies_.empty()) {
        buf += replies_.front();
        reply_bytes_ -= replies_.front().size();
        replies_.pop_front();
        --queries_inflight_; // written: the slot is free again
        return finish(OutFrame::Kind::text);
    }

    store::Principal& p = *principal_;
    // Acks of earlier (already delivered or deduplicated) seqs go out as soon as committed.
    if (!acks_.empty() && acks_.front().seq < next_seq_ && acks_.front().seq <= p.committed_head) {
        append_ack(buf, acks_.front());
        acks_.pop_front();
        return finish(OutFrame::Kind::text);
    }
    if (!synced_ && next_seq_ > sync_target_) {
        append_synced(buf);
        return finish(OutFrame::Kind::text);
    }
    if (next_seq_ < p.oldest && next_seq_ <= p.committed_head) {
        // Retention deleted what this device would get next: say so, then go on after it.
        buf += R"({"type":"gap","from":)";
        core::json_append_int(buf, next_seq_);
        buf += R"(,"to":)";
        core::json_append_int(buf, p.oldest - 1);
        buf += R"(,"reason":"retention"})";
        next_seq_ = p.oldest;
        return finish(OutFrame::Kind::text);
    }
    while (next_seq_ <= p.committed_head) {
        if (!acks_.empty() && acks_.front().seq == next_seq_) {
            // This device's own send: its ack stands for the msg at this seq.
            append_ack(buf, acks_.front());
            acks_.pop_front();
            if (acks_.empty() || acks_.front().seq != next_seq_)
                ++next_seq_;
            return finish(OutFrame::Kind::text);
        }
        const store::LogEntry* e = entry_at(next_seq_);
        if (!e) {
            // Rows below the page's first seq are gone (deleted); skip to what exists.
            if (!page_.empty() && page_.front().seq > next_seq_) {
                next_seq_ = page_.front().seq;
                continue;
            }
            next_seq_ = p.committed_head + 1;
            break;
        }
        append_msg(buf, e->seq, *e->msg);
        broker_.metrics().deliveries.inc();
        ++next_seq_;
        if (!page_.empty() && next_seq_ > page_.back().seq) {
            page_.clear();
            if (page_.capacity() > page_rows)
                page_.shrink_to_fit();
        }
        return finish(OutFrame::Kind::text);
    }
    if (!synced_ && next_seq_ > sync_target_) {
        append_synced(buf);
        return finish(OutFrame::Kind::text);
    }
    return out;
}

// ---- conversations ------------------------------------------------------------------------

bool Session::queue_event(std::string frame) {
    const size_t cap = std::min(max_event_bytes, broker_.limits().max_queue / 2);
    if (state_ != State::ready || control_bytes_ + frame.size() > cap)
        return false;
    control_bytes_ += frame.size();
    control_.push_back(std::move(frame));
    link_.want_write();
    return true;
}

void Session::queue_reply(std::string frame) {
    reply_bytes_ += frame.size();
    replies_.push_back(std::move(frame));
    link_.want_write();
}

bool Session::begin_query(const Frame& f) {
    size_t limit = broker_.limits().history_max_inflight;
    if (queries_inflight_ >= limit) {
        broker_.metrics().rate_limited_queries.inc();
        send_error("rate_limited",
                   std::to_string(limit) +
                       " history or receipts queries of this connection await their answer "
                       "(history.max_inflight); read the answers, then ask again",
                   f.ref, f.has_ref, 100);
        return false;
    }
    ++queries_inflight_;
    return true;
}

void Session::handle_history(const Frame& f) {
    store::Principal& me = *principal_;
    store::HistoryQuery q;
    q.pid = me.pid;
    q.head = me.committed_head;
    q.ascending = f.has_after;
    q.bound = f.has_after ? f.after : f.has_before ? f.before : me.committed_head + 1;
    q.limit = static_cast<size_t>(f.limit);
    q.max_bytes = history_page_bytes;
    if (f.has_with) {
        bool group = f.with.front() == '#';
        auto name = core::canonical_principal(group ? f.with.substr(1) : f.with);
        if (!name) {
            send_error("bad_frame",
                       "\"with\" must be a principal id or \"#group\" ([a-z0-9._-]{1,64})", f.ref,
                       f.has_ref);
            return;
        }
        if (group) {
            // Matched by address, so the history of a deleted group can still be read.
            q.filter = store::HistoryQuery::Filter::group;
            q.group = "#" + *name;
        } else {
            const store::Principal* peer = broker_.store().find(*name);
            if (!peer) {
                send_error("unknown_peer", "\"with\": no principal named '" + *name + "'", f.ref,
                           f.has_ref);
                return;
            }
            q.filter = store::HistoryQuery::Filter::peer;
            q.self_pid = me.pid;
            q.self_name = me.name;
            q.peer_pid = peer->pid;
            q.peer_name = peer->name;
        }
    }
    if (!begin_query(f))
        return;
    struct Job {
        store::HistoryQuery query;
        std::string ref;
        bool has_ref = false;
        std::string frame;
        std::optional<core::Error> error;
        double seconds = 0;
    };
    auto job = std::make_shared<Job>();
    job->query = std::move(q);
    job->ref = std::string(f.ref);
    job->has_ref = f.has_ref;
    broker_.reader().submit(
        // On a reader thread: only the job's own data.
        [job](store::ReadConn& conn) {
            auto started = std::chrono::steady_clock::now();
            auto page = conn.history(job->query);
            if (!page) {
                job->error = page.error();
            } else {
                std::string& out = job->frame;
                begin_reply(out, "history", job->ref, job->has_ref);
                out += R"(,"messages":[)";
                bool first = true;
                for (const store::LogEntry& e : page->entries) {
                    if (!first)
                        out += ',';
                    first = false;
                    append_msg(out, e.seq, *e.msg);
                }
                out += R"(],"more":)";
                out += page->more ? "true" : "false";
                out += '}';
            }
            std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
            job->seconds = took.count();
        },
        [&broker = broker_, conn = conn_id_, job] {
            broker.metrics().read_seconds.observe(job->seconds);
            broker.metrics().history_reads.inc();
            if (Session* s = broker.find_connection(conn))
                s->finish_history(std::move(job->frame), job->error ? &*job->error : nullptr,
                                  job->ref, job->has_ref);
        });
}

void Session::finish_history(std::string frame, const core::Error* error, std::string_view ref,
                             bool has_ref) {
    if (state_ != State::ready)
        return;
    if (error) {
        --queries_inflight_;
        send_error(error->code, error->message, ref, has_ref);
        return;
    }
    queue_reply(std::move(frame));
}

void Session::handle_receipts(const Frame& f) {
    store::Principal& me = *principal_;
    for (size_t i = 0; i < f.seqs.size(); ++i)
        if (f.seqs[i] > me.committed_head) {
            send_error("bad_frame",
                       "\"seqs[" + std::to_string(i) + "]\" " + std::to_string(f.seqs[i]) +
                           " is above the log's head " + std::to_string(me.committed_head),
                       f.ref, f.has_ref);
            return;
        }
    if (!begin_query(f))
        return;
    struct Job {
        int64_t pid = 0;
        int64_t head = 0;
        std::vector<int64_t> seqs;
        std::string ref;
        bool has_ref = false;
        std::vector<store::SentMessage> sent;
        std::optional<core::Error> error;
        double seconds = 0;
    };
    auto job = std::make_shared<Job>();
    job->pid = me.pid;
    job->head = me.committed_head;
    job->seqs = f.seqs;
    job->ref = std::string(f.ref);
    job->has_ref = f.has_ref;
    broker_.reader().submit(
        [job](store::ReadConn& conn) {
            auto started = std::chrono::steady_clock::now();
            auto sent = conn.sent(job->pid, job->head, job->seqs);
            if (sent)
                job->sent = std::move(sent.value());
            else
                job->error = sent.error();
            std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
            job->seconds = took.count();
        },
        [&broker = broker_, conn = conn_id_, job] {
            broker.metrics().read_seconds.observe(job->seconds);
            if (Session* s = broker.find_connection(conn))
                s->finish_receipts(job->sent, job->error ? &*job->error : nullptr, job->ref,
                                   job->has_ref);
        });
}

// The receipts state of sent messages, from the recipients' cursors and read markers as they
// are now (in memory: fresher than what is stored).
void Session::finish_receipts(const std::vector<store::SentMessage>& sent,
                              const core::Error* error, std::string_view ref, bool has_ref) {
    if (state_ != State::ready)
        return;
    if (error) {
        --queries_inflight_;
        send_error(error->code, error->message, ref, has_ref);
        return;
    }
    const store::Store& store = broker_.store();
    std::string out;
    begin_reply(out, "receipts", ref, has_ref);
    out += R"(,"receipts":[)";
    bool first = true;
    for (const store::SentMessage& m : sent) {
        bool group = !m.to.empty() && m.to.front() == '#';
        std::string item;
        if (group) {
            int64_t members = 0, delivered = 0, read = 0;
            for (const auto& copy : m.copies) {
                const store::Principal* p = store.find_pid(copy.pid);
                if (!p)
                    continue; // deleted since
                ++members;
                if (std::max(p->delivered_upto, p->read_upto) >= copy.seq)
                    ++delivered;
                if (p->read_receipts && p->read_upto >= copy.seq)
                    ++read;
            }
            item += R"({"seq":)";
            core::json_append_int(item, m.seq);
            item += R"(,"to":)";
            core::json_append_string(item, m.to);
            item += R"(,"members":)";
            core::json_append_int(item, members);
            item += R"(,"delivered":)";
            core::json_append_int(item, delivered);
            item += R"(,"read":)";
            core::json_append_int(item, read);
            item += '}';
        } else {
            // The recipient's copy; none for a message to oneself or to a deleted principal.
            const store::Principal* p = nullptr;
            int64_t seq = 0;
            for (const auto& copy : m.copies) {
                const store::Principal* q = store.find_pid(copy.pid);
                if (q && q->name == m.to) {
                    p = q;
                    seq = copy.seq;
                }
            }
            if (!p)
                continue;
            item += R"({"seq":)";
            core::json_append_int(item, m.seq);
            item += R"(,"to":)";
            core::json_append_string(item, m.to);
            item += R"(,"delivered":)";
            item += std::max(p->delivered_upto, p->read_upto) >= seq ? "true" : "false";
            item += R"(,"read":)";
            item += !p->read_receipts ? "null" : p->read_upto >= seq ? "true" : "false";
            item += '}';
        }
        if (!first)
            out += ',';
        first = false;
        out += item;
    }
    out += "]}";
    queue_reply(std::move(out));
}

void Session::handle_typing(const Frame& f) {
    auto& recipients = broker_.route_buffer();
    std::string& to = broker_.to_buffer();
    router::RouteOutcome route = broker_.modules().route(*principal_, f.to, recipients, to);
    if (!route.ok) {
        send_error(route.code, route.message, f.ref, f.has_ref);
        return;
    }
    if (!route.skill.empty()) {
        send_error("bad_frame", "typing goes to a principal or a group, not to a skill", f.ref,
                   f.has_ref);
        return;
    }
    broker_.relay_typing(*principal_, to, recipients, f.typing_stop);
    if (f.has_ref) {
        // Nothing is stored: the answer needs no commit. It says the notice was taken, not
        // that it was relayed (a rate-limited one is dropped without an error).
        std::string ok;
        begin_reply(ok, "ok", f.ref, true);
        ok += '}';
        queue_control(std::move(ok));
    }
}

void Session::handle_read(const Frame& f) {
    store::Principal& p = *principal_;
    if (f.upto > p.committed_head) {
        send_error("bad_frame",
                   "upto " + std::to_string(f.upto) + " is above the log's head " +
                       std::to_string(p.committed_head),
                   f.ref, f.has_ref);
        return;
    }
    int64_t read_before = p.read_upto;
    int64_t delivered_before = std::max(p.delivered_upto, p.read_upto);
    if (auto r = broker_.store().set_read_marker(p, f.upto, core::wall_ms()); !r) {
        send_error(r.error().code, r.error().message, f.ref, f.has_ref);
        return;
    }
    if (p.read_receipts) {
        if (p.read_upto > read_before)
            broker_.receipts_moved(p, read_before, p.read_upto, true);
    } else if (p.read_upto > delivered_before) {
        // Read receipts are off, but what was read was delivered.
        broker_.receipts_moved(p, delivered_before, p.read_upto, false);
    }
    if (f.has_ref)
        ok_after_commit(f.ref, f.has_ref);
}

void Session::handle_settings(const Frame& f) {
    store::Principal& p = *principal_;
    if (!f.has_read_receipts) {
        // No setting in it: a query of the current settings.
        std::string out;
        begin_reply(out, "settings", f.ref, f.has_ref);
        out += R"(,"read_receipts":)";
        out += p.read_receipts ? "true" : "false";
        out += '}';
        queue_control(std::move(out));
        return;
    }
    if (f.read_receipts != p.read_receipts) {
        if (auto r = broker_.store().set_read_receipts(p, f.read_receipts); !r) {
            send_error(r.error().code, r.error().message, f.ref, f.has_ref);
            return;
        }
    }
    ok_after_commit(f.ref, f.has_ref);
}

} // namespace meshd::session
