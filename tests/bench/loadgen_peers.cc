// loadgen_peers: the peer brokers' side of tests/bench (Mosquitto over MQTT, NATS).
//
// Owns: the same workloads loadgen.cc drives against meshd, against a peer broker on
// 127.0.0.1, with the peer's reference C client library, and the same result line (field
// names match loadgen's --json output so tests/bench/run can put both in one table).
//
//   --proto mqtt --mode pairs   N senders -> N receivers, QoS 1 both ways: each sender
//                               publishes to its receiver's own topic and counts PUBACK as
//                               the broker's ack; receivers hold a QoS 1 subscription on a
//                               persistent session (clean_session false). One libmosquitto
//                               client per sender/receiver, all on one epoll thread.
//   --proto mqtt --mode fanout  one QoS 1 publisher, M QoS 1 subscribers on one topic.
//   --proto nats --mode pairs   JetStream: one file-storage stream (R1) on bench.>; sender i
//                               publishes to bench.<run>.<i> with js_Publish (waits for the
//                               PubAck); receiver i is a push consumer on that subject,
//                               deliver-new, ack-all, acking every 64th message (what
//                               loadgen's meshd receivers do with `ack upto`). libnats runs
//                               its own threads per connection; senders are one thread each.
//   --proto nats --mode fanout  core NATS (not durable): one publisher, M subscriber
//                               connections on one subject; the sender publishes --window
//                               messages, then flushes (PING/PONG) as its "ack".
//   --proto mqtt|nats --mode idle
//                               N connections that do the protocol's handshake (MQTT
//                               CONNECT/CONNACK, NATS CONNECT+PING/PONG) on raw sockets, held
//                               idle; reports the server's VmRSS delta per connection and the
//                               kernel's TCP memory (/proc/net/sockstat) separately.
//
// Bodies are the same JSON text loadgen sends ({"t":<send ns>,"p":"xx..."}, --body-bytes
// long), so send->deliver latency is measured the same way (CLOCK_MONOTONIC, one process).
// Bench rule: print numbers, assert nothing. Exit 0 when a measurement ran, 1 when the
// clients could not be set up, 2 on a usage error.

#include <algorithm>
#include <arpa/inet.h>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mosquitto.h>
#include <mutex>
#include <nats/nats.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <optional>
#include <signal.h>
#include <string>
#include <string_view>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <system_error>
#include <thread>
#include <time.h>
#include <unistd.h>
#include <vector>

#include "sampling.h"

namespace meshd::bench {
namespace {

constexpr int64_t ns_per_s = 1'000'000'000;
constexpr int64_t setup_timeout_ns = 10 * ns_per_s;
constexpr int64_t drain_timeout_ns = 2 * ns_per_s;
constexpr int64_t hard_slack_s = 20;
constexpr uint32_t receiver_ack_every = 64;

int64_t now_ns() noexcept {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return int64_t(ts.tv_sec) * ns_per_s + ts.tv_nsec;
}

std::string errno_text(int err) {
    return std::error_code(err, std::generic_category()).message();
}

template <class T> bool parse_number(std::string_view text, T& out) {
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
    return ec == std::errc() && end == text.data() + text.size();
}

// ---------------------------------------------------------------------------------------------
// Options

enum class Proto { mqtt, nats };
enum class Mode { pairs, fanout, idle };

struct Options {
    Proto proto = Proto::mqtt;
    Mode mode = Mode::pairs;
    int port = 0;
    size_t pairs = 16;
    size_t members = 100;
    size_t conns = 1000;
    size_t sources = 1;
    size_t body_bytes = 100;
    double duration_s = 10;
    double warmup_s = 2;
    double hold_s = 2;
    uint32_t window = 1;
    double rate = 0;
    int server_pid = 0;
    bool json = false;
};

void usage(FILE* to) {
    std::fputs(
        "usage: loadgen_peers --proto mqtt|nats --mode pairs|fanout|idle --port P\n"
        "         [--pairs N] [--members M] [--conns N] [--sources K] [--window W] [--rate R]\n"
        "         [--body-bytes B] [--duration-s S] [--warmup-s S] [--hold-s S]\n"
        "         [--server-pid PID] [--json]\n"
        "  pairs:  N senders -> N receivers, durable (MQTT QoS 1, NATS JetStream file R1)\n"
        "  fanout: one sender -> M subscribers of one topic/subject (R = sends/s, 0 = max)\n"
        "  idle:   N handshaken idle connections from 127.0.0.1..127.0.0.K; needs --server-pid\n"
        "Connects to 127.0.0.0/8 only.\n",
        to);
}

std::optional<Options> parse_options(int argc, char** argv) {
    Options opt;
    bool ok = true;
    for (int i = 1; i < argc && ok; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--json") {
            opt.json = true;
            continue;
        }
        if (i + 1 >= argc) {
            std::fprintf(stderr, "loadgen_peers: %s needs a value\n", argv[i]);
            return std::nullopt;
        }
        const std::string_view v = argv[++i];
        if (arg == "--proto") {
            ok = v == "mqtt" || v == "nats";
            opt.proto = v == "nats" ? Proto::nats : Proto::mqtt;
        } else if (arg == "--mode") {
            ok = v == "pairs" || v == "fanout" || v == "idle";
            opt.mode = v == "fanout" ? Mode::fanout : v == "idle" ? Mode::idle : Mode::pairs;
        } else if (arg == "--port") {
            ok = parse_number(v, opt.port) && opt.port > 0 && opt.port < 65536;
        } else if (arg == "--pairs") {
            ok = parse_number(v, opt.pairs) && opt.pairs >= 1 && opt.pairs <= 1000;
        } else if (arg == "--members") {
            ok = parse_number(v, opt.members) && opt.members >= 1 && opt.members <= 10000;
        } else if (arg == "--conns") {
            ok = parse_number(v, opt.conns) && opt.conns >= 1 && opt.conns <= 200000;
        } else if (arg == "--sources") {
            ok = parse_number(v, opt.sources) && opt.sources >= 1 && opt.sources <= 250;
        } else if (arg == "--window") {
            ok = parse_number(v, opt.window) && opt.window >= 1 && opt.window <= 1000;
        } else if (arg == "--rate") {
            ok = parse_number(v, opt.rate) && opt.rate >= 0;
        } else if (arg == "--body-bytes") {
            ok = parse_number(v, opt.body_bytes) && opt.body_bytes <= 65536;
        } else if (arg == "--duration-s") {
            ok = parse_number(v, opt.duration_s) && opt.duration_s > 0 && opt.duration_s <= 3600;
        } else if (arg == "--warmup-s") {
            ok = parse_number(v, opt.warmup_s) && opt.warmup_s >= 0 && opt.warmup_s <= 3600;
        } else if (arg == "--hold-s") {
            ok = parse_number(v, opt.hold_s) && opt.hold_s >= 0 && opt.hold_s <= 3600;
        } else if (arg == "--server-pid") {
            ok = parse_number(v, opt.server_pid) && opt.server_pid > 0;
        } else {
            std::fprintf(stderr, "loadgen_peers: unknown option %s\n", argv[i - 1]);
            return std::nullopt;
        }
        if (!ok)
            std::fprintf(stderr, "loadgen_peers: bad value for %s: %s\n", argv[i - 1], argv[i]);
    }
    if (ok && opt.port == 0) {
        std::fprintf(stderr, "loadgen_peers: --port is required\n");
        ok = false;
    }
    if (ok && opt.mode == Mode::idle && opt.server_pid == 0) {
        std::fprintf(stderr, "loadgen_peers: --mode idle needs --server-pid\n");
        ok = false;
    }
    return ok ? std::optional<Options>(opt) : std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Results

std::string num(double v, int decimals) {
    if (std::isnan(v))
        return "null";
    char buf[48];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    return buf;
}

// What every mode measures; printed as one JSON line (or a short text block).
struct Result {
    std::string status = "ok";
    std::string failure;
    uint64_t sent = 0, acked = 0, delivered = 0;
    std::vector<int64_t> ack_ns, deliver_ns;
    double secs = 0;
    double client_cpu_s = 0;
    std::optional<double> server_cpu_s;
    std::optional<int64_t> server_rss_kb;
    std::map<std::string, uint64_t> errors;
    // idle
    std::optional<int64_t> rss_before_kb, rss_after_kb, tcp_pages_before, tcp_pages_after;
    size_t idle_conns = 0;
};

void print_result(const Options& opt, Result& r) {
    const char* proto = opt.proto == Proto::mqtt ? "mqtt" : "nats";
    const char* mode = opt.mode == Mode::pairs ? "pairs" : opt.mode == Mode::fanout ? "fanout" : "idle";
    const double secs = r.secs > 0 ? r.secs : opt.duration_s;
    std::string errors = "{";
    for (const auto& [code, count] : r.errors) {
        if (errors.size() > 1)
            errors += ',';
        errors += '"' + code + "\":" + std::to_string(count);
    }
    errors += '}';
    std::string j = "{\"status\":\"" + r.status + "\"";
    if (!r.failure.empty()) {
        std::string f;
        for (const char ch : r.failure)
            f += (ch == '"' || ch == '\\') ? '\'' : ch;
        j += ",\"failure\":\"" + f + "\"";
    }
    j += std::string(",\"broker\":\"") + proto + "\",\"mode\":\"" + mode + "\"";
    j += ",\"pairs\":" + std::to_string(opt.mode == Mode::fanout ? 1 : opt.pairs);
    j += ",\"members\":" + std::to_string(opt.members);
    j += ",\"window\":" + std::to_string(opt.window);
    j += ",\"rate\":" + num(opt.rate, 0);
    j += ",\"body_bytes\":" + std::to_string(opt.body_bytes);
    j += ",\"warmup_s\":" + num(opt.warmup_s, 3) + ",\"duration_s\":" + num(secs, 3);
    if (opt.mode == Mode::idle) {
        auto opt_int = [](const std::optional<int64_t>& v) {
            return v ? std::to_string(*v) : std::string("null");
        };
        j += ",\"conns\":" + std::to_string(r.idle_conns);
        j += ",\"rss_before_kb\":" + opt_int(r.rss_before_kb);
        j += ",\"rss_after_kb\":" + opt_int(r.rss_after_kb);
        j += ",\"tcp_mem_pages_before\":" + opt_int(r.tcp_pages_before);
        j += ",\"tcp_mem_pages_after\":" + opt_int(r.tcp_pages_after);
        j += ",\"page_bytes\":" + std::to_string(sysconf(_SC_PAGESIZE));
    } else {
        j += ",\"sent\":" + std::to_string(r.sent) + ",\"acked\":" + std::to_string(r.acked) +
             ",\"delivered\":" + std::to_string(r.delivered);
        j += ",\"msgs_per_s\":" + num(double(r.delivered) / secs, 1);
        j += ",\"sends_per_s\":" + num(double(r.acked) / secs, 1);
        j += ",\"ack_p50_us\":" + num(percentile_us(r.ack_ns, 0.50), 1);
        j += ",\"ack_p99_us\":" + num(percentile_us(r.ack_ns, 0.99), 1);
        j += ",\"deliver_p50_us\":" + num(percentile_us(r.deliver_ns, 0.50), 1);
        j += ",\"deliver_p99_us\":" + num(percentile_us(r.deliver_ns, 0.99), 1);
        j += ",\"client_cpu_pct\":" + num(100 * r.client_cpu_s / secs, 1);
        j += ",\"server_cpu_pct\":" +
             (r.server_cpu_s ? num(100 * *r.server_cpu_s / secs, 1) : std::string("null"));
        j += ",\"server_rss_kb\":" +
             (r.server_rss_kb ? std::to_string(*r.server_rss_kb) : std::string("null"));
    }
    j += ",\"errors\":" + errors + "}\n";
    if (opt.json) {
        std::fputs(j.c_str(), stdout);
    } else {
        std::printf("loadgen_peers: %s", j.c_str());
    }
    std::fflush(stdout);
}

// The body: the same JSON text as loadgen's meshd bodies, body_bytes long.
size_t make_body(char* buf, size_t cap, size_t body_bytes, int64_t t) {
    int n = std::snprintf(buf, cap, "{\"t\":%lld,\"p\":\"", static_cast<long long>(t));
    size_t len = size_t(std::max(n, 0));
    while (len + 2 < body_bytes && len + 2 < cap)
        buf[len++] = 'x';
    buf[len++] = '"';
    buf[len++] = '}';
    return len;
}

std::optional<int64_t> body_time(const void* data, size_t len) {
    const std::string_view s(static_cast<const char*>(data), len);
    const size_t at = s.find("\"t\":");
    if (at == std::string_view::npos)
        return std::nullopt;
    int64_t t = 0;
    const auto [end, ec] = std::from_chars(s.data() + at + 4, s.data() + s.size(), t);
    if (ec != std::errc())
        return std::nullopt;
    return t;
}

// The measured window, shared by the threads of the NATS modes.
struct Clock {
    std::atomic<int64_t> start{INT64_MAX}, end{INT64_MAX};
    bool in(int64_t t) const { return t >= start.load(std::memory_order_relaxed) && t < end.load(std::memory_order_relaxed); }
};

// Samples taken at the edges of the measured window.
struct WindowSampler {
    const Options& opt;
    double self0 = 0;
    std::optional<double> server0;
    void begin() {
        self0 = self_cpu_s();
        if (opt.server_pid)
            server0 = proc_cpu_s(opt.server_pid);
    }
    void end(Result& r, double secs) {
        r.secs = secs;
        r.client_cpu_s = self_cpu_s() - self0;
        if (opt.server_pid) {
            const auto s1 = proc_cpu_s(opt.server_pid);
            if (s1 && server0)
                r.server_cpu_s = *s1 - *server0;
            r.server_rss_kb = proc_status_kb(opt.server_pid, "VmRSS");
        }
    }
};

// ---------------------------------------------------------------------------------------------
// MQTT: libmosquitto clients driven by one epoll loop (mosquitto_loop_read/write/misc).

struct MqttClient {
    mosquitto* m = nullptr;
    bool sender = false;
    size_t index = 0;
    std::string topic;
    bool connected = false;
    bool subscribed = false;
    uint32_t inflight = 0;
    uint64_t next = 0;               // sends so far (pacing)
    std::vector<int64_t> sent_at;    // by message id (1..65535)
    uint32_t since_ack = 0;
};

class MqttBench {
  public:
    explicit MqttBench(const Options& opt) : opt_(opt), sampler_{opt, 0, std::nullopt} {}
    ~MqttBench() {
        for (auto& c : clients_) {
            if (c->m) {
                mosquitto_disconnect(c->m);
                mosquitto_destroy(c->m);
            }
        }
    }
    int run(Result& r);

  private:
    static void on_connect(mosquitto*, void* obj, int rc) {
        auto* c = static_cast<MqttClient*>(obj);
        c->connected = rc == 0;
        if (rc != 0)
            self_->count("mqtt:connack_" + std::to_string(rc));
        if (rc == 0 && !c->sender) {
            const int sub = mosquitto_subscribe(c->m, nullptr, c->topic.c_str(), 1);
            if (sub != MOSQ_ERR_SUCCESS)
                self_->count("mqtt:subscribe_" + std::to_string(sub));
        }
    }
    static void on_subscribe(mosquitto*, void* obj, int, int qos_count, const int* granted) {
        auto* c = static_cast<MqttClient*>(obj);
        c->subscribed = qos_count == 1 && granted[0] == 1;
        if (!c->subscribed)
            self_->count("mqtt:suback_not_qos1");
    }
    static void on_publish(mosquitto*, void* obj, int mid) {
        auto* c = static_cast<MqttClient*>(obj);
        const int64_t now = now_ns();
        if (c->inflight == 0) {
            self_->count("mqtt:unexpected_puback");
            return;
        }
        --c->inflight;
        ++self_->total_acked_;
        if (self_->clock_.in(now)) {
            ++self_->r_->acked;
            self_->r_->ack_ns.push_back(now - c->sent_at[size_t(mid) & 0xffff]);
        }
    }
    static void on_message(mosquitto*, void*, const mosquitto_message* msg) {
        const int64_t now = now_ns();
        ++self_->total_delivered_;
        const auto t = body_time(msg->payload, size_t(msg->payloadlen));
        if (!t) {
            self_->count("mqtt:body_without_t");
        } else if (self_->clock_.in(now)) {
            ++self_->r_->delivered;
            self_->r_->deliver_ns.push_back(now - *t);
        }
    }
    void count(const std::string& code) { ++r_->errors[code]; }
    void pump(MqttClient& c, int64_t now);
    int64_t due(const MqttClient& c) const {
        const double per_sender = opt_.rate / double(senders_);
        return traffic_start_ + int64_t((double(c.next) + double(c.index) / double(senders_)) *
                                        1e9 / per_sender);
    }

    static inline MqttBench* self_ = nullptr;
    const Options& opt_;
    WindowSampler sampler_;
    Result* r_ = nullptr;
    Clock clock_;
    std::vector<std::unique_ptr<MqttClient>> clients_;
    size_t senders_ = 0;
    int64_t traffic_start_ = 0;
    uint64_t total_sent_ = 0, total_acked_ = 0, total_delivered_ = 0;
    char body_[65600];
};

void MqttBench::pump(MqttClient& c, int64_t now) {
    while (c.connected && c.inflight < opt_.window) {
        if (opt_.rate > 0 && now < due(c))
            return;
        const int64_t t = now_ns();
        const size_t len = make_body(body_, sizeof body_, opt_.body_bytes, t);
        int mid = 0;
        const int rc = mosquitto_publish(c.m, &mid, c.topic.c_str(), int(len), body_, 1, false);
        if (rc != MOSQ_ERR_SUCCESS) {
            count("mqtt:publish_" + std::to_string(rc));
            return;
        }
        c.sent_at[size_t(mid) & 0xffff] = t;
        ++c.inflight;
        ++c.next;
        ++total_sent_;
        if (clock_.in(t))
            ++r_->sent;
    }
}

int MqttBench::run(Result& r) {
    self_ = this;
    r_ = &r;
    mosquitto_lib_init();
    const std::string run_id = std::to_string(getpid());
    senders_ = opt_.mode == Mode::fanout ? 1 : opt_.pairs;
    const size_t receivers = opt_.mode == Mode::fanout ? opt_.members : opt_.pairs;
    for (size_t i = 0; i < senders_ + receivers; ++i) {
        auto c = std::make_unique<MqttClient>();
        c->sender = i < senders_;
        c->index = c->sender ? i : i - senders_;
        c->topic = "bench/" + run_id + "/" +
                   (opt_.mode == Mode::fanout ? std::string("fan") : std::to_string(c->index));
        const std::string id = "b" + run_id + (c->sender ? "s" : "r") + std::to_string(c->index);
        // Receivers keep a persistent session: their QoS 1 queue outlives a disconnect.
        c->m = mosquitto_new(id.c_str(), c->sender, c.get());
        if (!c->m) {
            r.status = "setup_failed";
            r.failure = "mosquitto_new failed";
            return 1;
        }
        mosquitto_int_option(c->m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
        mosquitto_max_inflight_messages_set(c->m, opt_.window + 1);
        mosquitto_connect_callback_set(c->m, on_connect);
        mosquitto_subscribe_callback_set(c->m, on_subscribe);
        mosquitto_publish_callback_set(c->m, on_publish);
        mosquitto_message_callback_set(c->m, on_message);
        if (c->sender)
            c->sent_at.resize(65536);
        clients_.push_back(std::move(c));
    }

    const int ep = epoll_create1(EPOLL_CLOEXEC);
    for (size_t i = 0; i < clients_.size(); ++i) {
        MqttClient& c = *clients_[i];
        const int rc = mosquitto_connect(c.m, "127.0.0.1", opt_.port, 60);
        if (rc != MOSQ_ERR_SUCCESS) {
            r.status = "setup_failed";
            r.failure = std::string("mosquitto_connect: ") + mosquitto_strerror(rc);
            close(ep);
            return 1;
        }
        const int fd = mosquitto_socket(c.m);
        const int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = i;
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }

    enum class Phase { setup, running, draining } phase = Phase::setup;
    const int64_t start = now_ns();
    const int64_t hard_end =
        start + int64_t((opt_.warmup_s + opt_.duration_s + double(hard_slack_s)) * 1e9);
    int64_t drain_end = 0, last_misc = start;
    bool window_started = false;
    std::vector<epoll_event> events(256);
    for (;;) {
        const int64_t now = now_ns();
        if (now > hard_end) {
            count("client:hard_deadline");
            break;
        }
        if (phase == Phase::setup) {
            bool ready = true;
            for (const auto& c : clients_)
                ready = ready && c->connected && (c->sender || c->subscribed);
            if (ready) {
                phase = Phase::running;
                traffic_start_ = now;
                clock_.start = now + int64_t(opt_.warmup_s * 1e9);
                clock_.end = clock_.start + int64_t(opt_.duration_s * 1e9);
            } else if (now - start > setup_timeout_ns) {
                r.status = "setup_failed";
                r.failure = "MQTT clients not connected+subscribed within 10 s";
                break;
            }
        }
        if (phase == Phase::running) {
            if (!window_started && now >= clock_.start) {
                window_started = true;
                sampler_.begin();
            }
            if (now >= clock_.end) {
                sampler_.end(r, double(now - clock_.start) / 1e9);
                phase = Phase::draining;
                drain_end = now + drain_timeout_ns;
            } else {
                for (auto& c : clients_) {
                    if (c->sender)
                        pump(*c, now);
                }
            }
        }
        if (phase == Phase::draining) {
            bool idle = true;
            for (const auto& c : clients_)
                idle = idle && c->inflight == 0;
            const uint64_t expect = total_acked_ * (opt_.mode == Mode::fanout ? opt_.members : 1);
            if ((idle && total_delivered_ >= expect) || now >= drain_end)
                break;
        }
        for (auto& c : clients_) {
            if (mosquitto_want_write(c->m))
                mosquitto_loop_write(c->m, 1);
        }
        if (now - last_misc > ns_per_s) {
            last_misc = now;
            for (auto& c : clients_)
                mosquitto_loop_misc(c->m);
        }
        int timeout_ms = 100;
        if (opt_.rate > 0 && phase == Phase::running)
            timeout_ms = 1;
        const int n = epoll_wait(ep, events.data(), int(events.size()), timeout_ms);
        for (int i = 0; i < n; ++i) {
            MqttClient& c = *clients_[events[i].data.u64];
            const int rc = mosquitto_loop_read(c.m, 1);
            if (rc != MOSQ_ERR_SUCCESS) {
                count(std::string("mqtt:read_") + mosquitto_strerror(rc));
                epoll_ctl(ep, EPOLL_CTL_DEL, mosquitto_socket(c.m), nullptr);
                c.connected = false;
            }
        }
    }
    if (r.status == "ok" && r.secs == 0)
        sampler_.end(r, opt_.duration_s);
    if (total_delivered_ < total_acked_ * (opt_.mode == Mode::fanout ? opt_.members : 1))
        r.errors["undelivered_at_end"] += total_acked_ - std::min(total_acked_, total_delivered_);
    close(ep);
    return r.status == "ok" ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
// NATS: libnats connections (library threads), one thread per sender.

struct NatsReceiver {
    natsConnection* nc = nullptr;
    jsCtx* js = nullptr;
    natsSubscription* sub = nullptr;
    std::mutex mu;
    std::vector<int64_t> deliver_ns;
    uint64_t delivered_in_window = 0;
    uint32_t since_ack = 0;
};

struct NatsSender {
    natsConnection* nc = nullptr;
    jsCtx* js = nullptr;
    std::string subject;
    size_t index = 0;
    std::vector<int64_t> ack_ns;
    uint64_t sent = 0, acked = 0, sent_in_window = 0, acked_in_window = 0;
    std::map<std::string, uint64_t> errors;
};

class NatsBench {
  public:
    explicit NatsBench(const Options& opt) : opt_(opt), sampler_{opt, 0, std::nullopt} {}
    ~NatsBench();
    int run(Result& r);

  private:
    void send_loop(NatsSender& s);
    bool connect(natsConnection** nc, Result& r);

    const Options& opt_;
    WindowSampler sampler_;
    Clock clock_;
    std::atomic<bool> stop_{false};
    std::atomic<uint64_t> total_delivered_{0};
    std::atomic<uint64_t> errors_{0};
    int64_t traffic_start_ = 0;
    bool fanout_ = false;
    std::vector<std::unique_ptr<NatsReceiver>> receivers_;
    std::vector<std::unique_ptr<NatsSender>> senders_;
    natsConnection* admin_ = nullptr;
    jsCtx* admin_js_ = nullptr;
};

NatsBench::~NatsBench() {
    for (auto& rc : receivers_) {
        if (rc->sub) {
            natsSubscription_Unsubscribe(rc->sub);
            natsSubscription_Destroy(rc->sub);
        }
        jsCtx_Destroy(rc->js);
        if (rc->nc)
            natsConnection_Destroy(rc->nc);
    }
    for (auto& s : senders_) {
        jsCtx_Destroy(s->js);
        if (s->nc)
            natsConnection_Destroy(s->nc);
    }
    jsCtx_Destroy(admin_js_);
    if (admin_)
        natsConnection_Destroy(admin_);
    nats_Close();
}

bool NatsBench::connect(natsConnection** nc, Result& r) {
    natsOptions* o = nullptr;
    natsOptions_Create(&o);
    const std::string url = "nats://127.0.0.1:" + std::to_string(opt_.port);
    natsOptions_SetURL(o, url.c_str());
    natsOptions_SetNoEcho(o, true);
    // Large enough that a fast sender is not cut off as a slow consumer inside the client.
    natsOptions_SetMaxPendingMsgs(o, 1 << 20);
    const natsStatus s = natsConnection_Connect(nc, o);
    natsOptions_Destroy(o);
    if (s != NATS_OK) {
        r.status = "setup_failed";
        r.failure = std::string("nats connect: ") + natsStatus_GetText(s);
        return false;
    }
    return true;
}

struct NatsMsgCtx {
    NatsBench* bench;
    NatsReceiver* rc;
};

void NatsBench::send_loop(NatsSender& s) {
    char body[65600];
    uint64_t n = 0;
    while (!stop_.load(std::memory_order_relaxed)) {
        if (opt_.rate > 0) {
            const double per_sender = opt_.rate / double(senders_.size());
            const int64_t due = traffic_start_ + int64_t((double(n) + double(s.index) /
                                                          double(senders_.size())) * 1e9 / per_sender);
            const int64_t wait = due - now_ns();
            if (wait > 0) {
                const timespec ts{time_t(wait / ns_per_s), long(wait % ns_per_s)};
                nanosleep(&ts, nullptr);
                continue;
            }
        }
        ++n;
        if (fanout_) {
            // Core NATS has no publish ack: publish --window messages, then a PING/PONG flush.
            const int64_t t0 = now_ns();
            for (uint32_t k = 0; k < opt_.window; ++k) {
                const size_t len = make_body(body, sizeof body, opt_.body_bytes, now_ns());
                if (natsConnection_Publish(s.nc, s.subject.c_str(), body, int(len)) != NATS_OK)
                    ++s.errors["nats:publish"];
                ++s.sent;
                if (clock_.in(t0))
                    ++s.sent_in_window;
            }
            const natsStatus st = natsConnection_FlushTimeout(s.nc, 5000);
            const int64_t t1 = now_ns();
            if (st != NATS_OK) {
                ++s.errors[std::string("nats:flush_") + natsStatus_GetText(st)];
                continue;
            }
            s.acked += opt_.window;
            if (clock_.in(t1)) {
                s.acked_in_window += opt_.window;
                s.ack_ns.push_back(t1 - t0);
            }
            continue;
        }
        const int64_t t0 = now_ns();
        const size_t len = make_body(body, sizeof body, opt_.body_bytes, t0);
        jsPubAck* pa = nullptr;
        jsErrCode jerr = jsErrCode(0);
        const natsStatus st = js_Publish(&pa, s.js, s.subject.c_str(), body, int(len), nullptr, &jerr);
        const int64_t t1 = now_ns();
        ++s.sent;
        if (clock_.in(t0))
            ++s.sent_in_window;
        if (st != NATS_OK) {
            ++s.errors[std::string("nats:publish_") + natsStatus_GetText(st)];
            continue;
        }
        jsPubAck_Destroy(pa);
        ++s.acked;
        if (clock_.in(t1)) {
            ++s.acked_in_window;
            s.ack_ns.push_back(t1 - t0);
        }
    }
}

int NatsBench::run(Result& r) {
    fanout_ = opt_.mode == Mode::fanout;
    if (nats_Open(-1) != NATS_OK) {
        r.status = "setup_failed";
        r.failure = "nats_Open failed";
        return 1;
    }
    const std::string run_id = std::to_string(getpid());
    if (!fanout_) {
        if (!connect(&admin_, r))
            return 1;
        natsConnection_JetStream(&admin_js_, admin_, nullptr);
        jsStreamConfig sc;
        jsStreamConfig_Init(&sc);
        const std::string name = "BENCH" + run_id;
        const std::string subj = "bench." + run_id + ".>";
        const char* subjects[] = {subj.c_str()};
        sc.Name = name.c_str();
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Storage = js_FileStorage;
        sc.Replicas = 1;
        jsErrCode jerr = jsErrCode(0);
        jsStreamInfo* si = nullptr;
        const natsStatus s = js_AddStream(&si, admin_js_, &sc, nullptr, &jerr);
        if (s != NATS_OK) {
            r.status = "setup_failed";
            r.failure = std::string("js_AddStream: ") + natsStatus_GetText(s) + " " +
                        std::to_string(int(jerr)) + " " + nats_GetLastError(nullptr);
            return 1;
        }
        jsStreamInfo_Destroy(si);
    }
    const size_t nsend = fanout_ ? 1 : opt_.pairs;
    const size_t nrecv = fanout_ ? opt_.members : opt_.pairs;
    auto subject_of = [&](size_t i) {
        return fanout_ ? "fan." + run_id : "bench." + run_id + "." + std::to_string(i);
    };
    std::vector<std::unique_ptr<NatsMsgCtx>> ctxs;
    for (size_t i = 0; i < nrecv; ++i) {
        auto rc = std::make_unique<NatsReceiver>();
        if (!connect(&rc->nc, r))
            return 1;
        ctxs.push_back(std::make_unique<NatsMsgCtx>(NatsMsgCtx{this, rc.get()}));
        auto handler = [](natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
            auto* ctx = static_cast<NatsMsgCtx*>(closure);
            const int64_t now = now_ns();
            const auto t = body_time(natsMsg_GetData(msg), size_t(natsMsg_GetDataLength(msg)));
            ctx->bench->total_delivered_.fetch_add(1, std::memory_order_relaxed);
            {
                std::lock_guard lock(ctx->rc->mu);
                if (!t) {
                    ctx->bench->errors_.fetch_add(1);
                } else if (ctx->bench->clock_.in(now)) {
                    ++ctx->rc->delivered_in_window;
                    ctx->rc->deliver_ns.push_back(now - *t);
                }
                if (!ctx->bench->fanout_ && ++ctx->rc->since_ack >= receiver_ack_every) {
                    ctx->rc->since_ack = 0;
                    natsMsg_Ack(msg, nullptr); // ack-all: covers every earlier message too
                }
            }
            natsMsg_Destroy(msg);
        };
        natsStatus s = NATS_OK;
        const std::string subj = subject_of(i);
        if (fanout_) {
            s = natsConnection_Subscribe(&rc->sub, rc->nc, subj.c_str(), handler, ctxs.back().get());
        } else {
            natsConnection_JetStream(&rc->js, rc->nc, nullptr);
            jsSubOptions so;
            jsSubOptions_Init(&so);
            so.Config.DeliverPolicy = js_DeliverNew;
            so.Config.AckPolicy = js_AckAll;
            so.ManualAck = true;
            jsErrCode jerr = jsErrCode(0);
            s = js_Subscribe(&rc->sub, rc->js, subj.c_str(), handler, ctxs.back().get(), nullptr,
                             &so, &jerr);
        }
        if (s == NATS_OK)
            natsSubscription_SetPendingLimits(rc->sub, -1, -1);
        if (s != NATS_OK) {
            r.status = "setup_failed";
            r.failure = std::string("subscribe: ") + natsStatus_GetText(s) + " " +
                        nats_GetLastError(nullptr);
            return 1;
        }
        natsConnection_Flush(rc->nc);
        receivers_.push_back(std::move(rc));
    }
    for (size_t i = 0; i < nsend; ++i) {
        auto s = std::make_unique<NatsSender>();
        if (!connect(&s->nc, r))
            return 1;
        if (!fanout_)
            natsConnection_JetStream(&s->js, s->nc, nullptr);
        s->subject = subject_of(i);
        s->index = i;
        senders_.push_back(std::move(s));
    }

    traffic_start_ = now_ns();
    clock_.start = traffic_start_ + int64_t(opt_.warmup_s * 1e9);
    clock_.end = clock_.start + int64_t(opt_.duration_s * 1e9);
    std::vector<std::thread> threads;
    for (auto& s : senders_)
        threads.emplace_back([this, sp = s.get()] { send_loop(*sp); });
    std::this_thread::sleep_until(std::chrono::steady_clock::time_point(
        std::chrono::nanoseconds(clock_.start.load())));
    sampler_.begin();
    std::this_thread::sleep_until(std::chrono::steady_clock::time_point(
        std::chrono::nanoseconds(clock_.end.load())));
    sampler_.end(r, double(now_ns() - clock_.start) / 1e9);
    stop_ = true;
    for (auto& t : threads)
        t.join();
    uint64_t acked = 0;
    for (auto& s : senders_)
        acked += s->acked;
    const uint64_t expect = acked * (fanout_ ? opt_.members : 1);
    const int64_t drain_end = now_ns() + drain_timeout_ns;
    while (total_delivered_.load() < expect && now_ns() < drain_end)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    for (auto& s : senders_) {
        r.sent += s->sent_in_window;
        r.acked += s->acked_in_window;
        r.ack_ns.insert(r.ack_ns.end(), s->ack_ns.begin(), s->ack_ns.end());
        for (const auto& [k, v] : s->errors)
            r.errors[k] += v;
    }
    for (auto& rc : receivers_) {
        natsSubscription_Unsubscribe(rc->sub);
        std::lock_guard lock(rc->mu);
        r.delivered += rc->delivered_in_window;
        r.deliver_ns.insert(r.deliver_ns.end(), rc->deliver_ns.begin(), rc->deliver_ns.end());
    }
    if (errors_.load())
        r.errors["client:body_without_t"] += errors_.load();
    if (total_delivered_.load() < expect)
        r.errors["undelivered_at_end"] += expect - total_delivered_.load();
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Idle connections on raw sockets: the protocol's handshake, then nothing.

bool read_until(int fd, std::string& buf, std::string_view what, int64_t deadline) {
    char tmp[4096];
    while (buf.find(what) == std::string::npos) {
        if (now_ns() > deadline)
            return false;
        const ssize_t n = recv(fd, tmp, sizeof tmp, 0);
        if (n > 0) {
            buf.append(tmp, size_t(n));
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            return false;
        }
    }
    return true;
}

int run_idle(const Options& opt, Result& r) {
    r.rss_before_kb = proc_status_kb(opt.server_pid, "VmRSS");
    r.tcp_pages_before = tcp_mem_pages();
    std::vector<int> fds;
    fds.reserve(opt.conns);
    const int64_t deadline = now_ns() + 120 * ns_per_s;
    for (size_t i = 0; i < opt.conns; ++i) {
        const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            r.failure = "socket: " + errno_text(errno) + " after " + std::to_string(i);
            break;
        }
        fds.push_back(fd);
        const timeval tv{5, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        // Spread over 127.0.0.1..127.0.0.K so that K x the ephemeral range is available.
        sockaddr_in src{};
        src.sin_family = AF_INET;
        src.sin_addr.s_addr = htonl(INADDR_LOOPBACK + uint32_t(i % opt.sources));
        const int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (opt.sources > 1 && bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0) {
            r.failure = "bind: " + errno_text(errno);
            break;
        }
        sockaddr_in dst{};
        dst.sin_family = AF_INET;
        dst.sin_port = htons(uint16_t(opt.port));
        dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof dst) != 0) {
            r.failure = "connect: " + errno_text(errno) + " after " + std::to_string(i);
            break;
        }
        std::string buf;
        bool ok = false;
        if (opt.proto == Proto::mqtt) {
            // CONNECT, MQTT 3.1.1, clean session, keepalive 0 (never pinged), client id.
            const std::string id = "idle" + std::to_string(getpid()) + "-" + std::to_string(i);
            std::string pkt;
            pkt += std::string("\x00\x04MQTT\x04\x02\x00\x00", 10);
            pkt += char(id.size() >> 8);
            pkt += char(id.size() & 0xff);
            pkt += id;
            std::string frame;
            frame += char(0x10);
            frame += char(pkt.size()); // < 128
            frame += pkt;
            ok = send(fd, frame.data(), frame.size(), MSG_NOSIGNAL) == ssize_t(frame.size());
            char ack[4];
            ok = ok && recv(fd, ack, 4, MSG_WAITALL) == 4 && uint8_t(ack[0]) == 0x20 && ack[3] == 0;
        } else {
            ok = read_until(fd, buf, "\r\n", deadline);
            static constexpr std::string_view hello =
                "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\nPING\r\n";
            ok = ok && send(fd, hello.data(), hello.size(), MSG_NOSIGNAL) == ssize_t(hello.size());
            buf.clear();
            ok = ok && read_until(fd, buf, "PONG\r\n", deadline);
        }
        if (!ok) {
            r.failure = "handshake failed on connection " + std::to_string(i);
            break;
        }
        if (now_ns() > deadline) {
            r.failure = "setup took over 120 s";
            break;
        }
    }
    r.idle_conns = r.failure.empty() ? fds.size() : fds.size() - 1;
    if (!r.failure.empty())
        r.status = "partial";
    const timespec hold{time_t(opt.hold_s), long((opt.hold_s - std::floor(opt.hold_s)) * 1e9)};
    nanosleep(&hold, nullptr);
    r.rss_after_kb = proc_status_kb(opt.server_pid, "VmRSS");
    r.tcp_pages_after = tcp_mem_pages();
    for (const int fd : fds)
        close(fd);
    return 0;
}

void on_hard_deadline(int) {
    static constexpr char message[] = "loadgen_peers: hard deadline reached, exiting\n";
    (void)!::write(2, message, sizeof message - 1);
    _exit(3);
}

} // namespace
} // namespace meshd::bench

int main(int argc, char** argv) {
    using namespace meshd::bench;
    const auto opt = parse_options(argc, argv);
    if (!opt) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_hard_deadline);
    alarm(opt->mode == Mode::idle ? unsigned(180 + opt->hold_s)
                                  : unsigned(std::ceil(opt->warmup_s + opt->duration_s)) +
                                        unsigned(2 * hard_slack_s));
    Result r;
    int rc = 0;
    if (opt->mode == Mode::idle) {
        rc = run_idle(*opt, r);
    } else if (opt->proto == Proto::mqtt) {
        MqttBench b(*opt);
        rc = b.run(r);
    } else {
        NatsBench b(*opt);
        rc = b.run(r);
    }
    print_result(*opt, r);
    return rc;
}
