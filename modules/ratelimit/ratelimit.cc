// ratelimit: token buckets for sends per principal, and for connections and failed logins per
// source IP (token_bucket.h has the arithmetic, source_key.h what one source IP is).
//
//   hook         bucket (keys of [ratelimit])   keyed by    when empty
//   check        send_rate, send_burst          sender      error rate_limited + retry_after_ms;
//                                                            the send is not stored
//   accept       connect_rate, connect_burst    source IP   error rate_limited, close 1013
//   accept       auth_fail_rate, auth_fail_burst source IP  the same (looked at, not taken)
//   auth_failed  auth_fail_*                    source IP   takes a token, refuses nothing
//   tick         drops full (idle) buckets once a second, writes the aggregated log lines
//   reload       re-reads [ratelimit]; buckets keep their level, clamped to the new burst
//
// Source IP: an IPv4 address, or an IPv6 address's /64 prefix. Behind a reverse proxy every
// client has the proxy's address; see meshd.toml(5).
//
// Memory: each table holds at most max_tracked buckets. A key that would go past that is not
// limited (fails open) and a warning is logged: refusing sources never seen before would let
// a flood from many addresses lock everybody else out, while the flood's own buckets, which
// are not full, stay tracked and limited. Full buckets say nothing a new one would not, so the
// tick drops them and the tables shrink back as soon as a burst is over.
//
// dry_run: nothing is refused; what would have been is counted per reason and logged as
// event=ratelimit.dry_run, at most once a second per reason (real refusals likewise as
// event=ratelimit.refused). A would-be refusal takes no token, exactly as a real one.
//
// The send check is on the hot path: a hash look-up with a string_view (no allocation for a
// known sender) and arithmetic; refusal messages are formatted into a fixed buffer.
#include "meshd/module.h"
#include "source_key.h"
#include "token_bucket.h"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace {

using meshd::ratelimit::Bucket;
using meshd::ratelimit::IpHash;
using meshd::ratelimit::IpKey;
using meshd::ratelimit::Limit;
using meshd::ratelimit::parse_ip;
using meshd::ratelimit::SteadyMs;

// ---- settings ------------------------------------------------------------------------------

constexpr double rate_max = 1e6;
constexpr double burst_max = 1e9;
constexpr int64_t tracked_max = 10000000;

// One key of [ratelimit]; every one is reloadable.
constexpr meshd_config_key key(const char* name, meshd_config_type type, double min, double max,
                               const char* help) {
    return meshd_config_key{name, type, min, max, 1, help, {}};
}

// meshd checks types and ranges against this list; this module checks them again when it
// reads them (read_settings), so a meshd that does not is no risk.
const meshd_config_key config_keys[] = {
    key("send_rate", MESHD_CONFIG_DOUBLE, 0, rate_max,
        "sends per second per principal; 0: no send limit"),
    key("send_burst", MESHD_CONFIG_DOUBLE, 1, burst_max,
        "sends a principal may make at once before send_rate applies"),
    key("connect_rate", MESHD_CONFIG_DOUBLE, 0, rate_max,
        "new connections per second per source IP; 0: no connection limit"),
    key("connect_burst", MESHD_CONFIG_DOUBLE, 1, burst_max,
        "connections a source IP may open at once before connect_rate applies"),
    key("auth_fail_rate", MESHD_CONFIG_DOUBLE, 0, rate_max,
        "failed logins forgiven per second per source IP; 0: no failed-login limit"),
    key("auth_fail_burst", MESHD_CONFIG_DOUBLE, 1, burst_max,
        "failed logins from a source IP before its new connections are refused"),
    key("dry_run", MESHD_CONFIG_BOOL, 1, 0, "count and log what would be refused, refuse nothing"),
    key("max_tracked", MESHD_CONFIG_INT, 1, static_cast<double>(tracked_max),
        "principals or source IPs each table tracks; past it new ones are not limited"),
    key(nullptr, MESHD_CONFIG_INT, 0, 0, nullptr),
};

// Defaults: far above what a person or a well-behaved agent does, low enough to stop a
// runaway loop. Documented in meshd.toml(5).
struct Settings {
    Limit send{100, 500};
    Limit connect{10, 100};
    Limit auth_fail{0.2, 10};
    bool dry_run = false;
    int64_t max_tracked = 100000;
};

const meshd_config_key& key_spec(const char* name) {
    for (const meshd_config_key& k : config_keys)
        if (k.name && std::strcmp(k.name, name) == 0)
            return k;
    return config_keys[std::size(config_keys) - 1];
}

void read_double(meshd_host* host, const char* name, double& out,
                 std::vector<std::string>& errors) {
    const meshd_config_key& k = key_spec(name);
    char range[96];
    std::snprintf(range, sizeof range, "%.15g..%.15g", k.min, k.max);
    double v = 0;
    int rc = meshd_host_config_double(host, name, &v);
    if (rc == 1)
        return;
    std::string what =
        std::string("ratelimit.") + name + " must be a number " + range + " (" + k.help + ")";
    if (rc != 0) {
        errors.push_back(what + ", got a value of another type; write e.g. " + name + " = 5");
        return;
    }
    if (!std::isfinite(v) || v < k.min || v > k.max) {
        char got[64];
        std::snprintf(got, sizeof got, "%g", v);
        errors.push_back(what + ", got " + got);
        return;
    }
    out = v;
}

// Reads [ratelimit] over the defaults. Returns false, with one message per bad key, if any
// key has the wrong type or is out of range.
bool read_settings(meshd_host* host, Settings& s, std::vector<std::string>& errors) {
    read_double(host, "send_rate", s.send.rate, errors);
    read_double(host, "send_burst", s.send.burst, errors);
    read_double(host, "connect_rate", s.connect.rate, errors);
    read_double(host, "connect_burst", s.connect.burst, errors);
    read_double(host, "auth_fail_rate", s.auth_fail.rate, errors);
    read_double(host, "auth_fail_burst", s.auth_fail.burst, errors);
    int dry = 0;
    int rc = meshd_host_config_bool(host, "dry_run", &dry);
    if (rc == 0)
        s.dry_run = dry != 0;
    else if (rc < 0)
        errors.push_back("ratelimit.dry_run must be true or false, got a value of another type");
    int64_t tracked = 0;
    rc = meshd_host_config_int(host, "max_tracked", &tracked);
    if (rc == 0 && tracked >= 1 && tracked <= tracked_max)
        s.max_tracked = tracked;
    else if (rc == 0)
        errors.push_back("ratelimit.max_tracked must be an integer 1..10000000 (" +
                         std::string(key_spec("max_tracked").help) + "), got " +
                         std::to_string(tracked));
    else if (rc < 0)
        errors.push_back("ratelimit.max_tracked must be an integer 1..10000000, got a value of "
                         "another type (write it without quotes or decimals)");
    return errors.empty();
}

// ---- keys ----------------------------------------------------------------------------------

struct NameHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

using NameTable = std::unordered_map<std::string, Bucket, NameHash, std::equal_to<>>;
using IpTable = std::unordered_map<IpKey, Bucket, IpHash>;

// ---- state ---------------------------------------------------------------------------------

enum Reason { reason_send, reason_connect, reason_auth_fail, reason_count };
const char* const reason_names[reason_count] = {"send", "connect", "auth_fail"};

constexpr int64_t log_every_ms = 1000;
constexpr int64_t sweep_every_ms = 1000;
constexpr int64_t full_warn_every_ms = 60000;

// Refusals (or would-be refusals in dry_run) of one reason, logged at most once a second.
struct Tally {
    uint64_t pending = 0; // since the last line
    uint64_t total = 0;   // since start
    bool logged = false;
    int64_t last_log_ms = 0;
    char last_key[80] = {0}; // the principal or source IP of the latest one
};

// A table that refused to grow; warned about at most once a minute.
struct FullWarning {
    uint64_t untracked = 0;
    bool warned = false;
    int64_t last_warn_ms = 0;
};

struct State {
    meshd_host* host = nullptr;
    Settings settings;
    SteadyMs clock;
    NameTable sends;
    IpTable connects;
    IpTable auth_fails;
    Tally tallies[reason_count];
    FullWarning full[reason_count];
    int64_t last_sweep_ms = 0;
    char message[256] = {0}; // a refusal's text: lives until the next call, as the ABI asks
    // meshd_rate_limited_total{reason} (refused) and meshd_ratelimit_dry_run_total{reason}
    // (would have been refused), registered in init; null if the registry said no.
    meshd_metric* refused_metric[reason_count] = {};
    meshd_metric* dry_run_metric[reason_count] = {};

    explicit State(uint64_t seed)
        : connects(64, IpHash{seed}), auth_fails(64, IpHash{seed ^ 0x5bd1e995ULL}) {}

    int64_t now() { return clock.advance(meshd_host_now_ms(host)); }
};

void log_line(State& st, meshd_log_level level, const char* event, const char* text) {
    meshd_host_log(st.host, level, event, text);
}

void flush_tally(State& st, Reason r, int64_t now) {
    Tally& t = st.tallies[r];
    if (t.pending == 0 || (t.logged && now - t.last_log_ms < log_every_ms))
        return;
    char text[256];
    std::snprintf(text, sizeof text, "reason=%s count=%" PRIu64 " total=%" PRIu64 " last=%s",
                  reason_names[r], t.pending, t.total, t.last_key);
    log_line(st, MESHD_LOG_INFO, st.settings.dry_run ? "ratelimit.dry_run" : "ratelimit.refused",
             text);
    t.pending = 0;
    t.logged = true;
    t.last_log_ms = now;
}

// Counts a refusal (or a would-be one); returns true if it must really be refused.
bool refuse(State& st, Reason r, std::string_view key, int64_t now) {
    Tally& t = st.tallies[r];
    ++t.pending;
    ++t.total;
    size_t n = std::min(key.size(), sizeof t.last_key - 1);
    std::memcpy(t.last_key, key.data(), n);
    t.last_key[n] = '\0';
    if (meshd_metric* m = st.settings.dry_run ? st.dry_run_metric[r] : st.refused_metric[r])
        meshd_host_metric_add(m, 1);
    flush_tally(st, r, now);
    return !st.settings.dry_run;
}

void note_full(State& st, Reason r, int64_t now) {
    FullWarning& w = st.full[r];
    ++w.untracked;
    if (w.warned && now - w.last_warn_ms < full_warn_every_ms)
        return;
    char text[384];
    std::snprintf(text, sizeof text,
                  "the %s table already tracks ratelimit.max_tracked=%" PRId64
                  " %s; new ones are not limited (fail open) until idle ones expire "
                  "(untracked so far: %" PRIu64 "); raise ratelimit.max_tracked if this is "
                  "normal load",
                  reason_names[r], st.settings.max_tracked,
                  r == reason_send ? "principals" : "source IPs", w.untracked);
    log_line(st, MESHD_LOG_WARN, "ratelimit.table_full", text);
    w.warned = true;
    w.last_warn_ms = now;
}

// The bucket of key, created full if new; nullptr if the table is full (then: not limited).
template <class Table, class Key>
Bucket* bucket_for(State& st, Table& table, const Key& key, const Limit& limit, Reason r,
                   int64_t now) {
    auto it = table.find(key);
    if (it != table.end())
        return &it->second;
    if (table.size() >= static_cast<size_t>(st.settings.max_tracked)) {
        note_full(st, r, now);
        return nullptr;
    }
    return &table.emplace(typename Table::key_type(key), Bucket::full(limit, now)).first->second;
}

template <class Table> void sweep(Table& table, const Limit& limit, int64_t now) {
    for (auto it = table.begin(); it != table.end();) {
        it->second.refill(limit, now);
        if (it->second.is_full(limit))
            it = table.erase(it);
        else
            ++it;
    }
}

template <class Table> void clamp(Table& table, const Limit& limit, int64_t now) {
    if (!limit.active()) {
        table.clear(); // the limit is off: free the memory too
        table.rehash(0);
        return;
    }
    for (auto& [key, bucket] : table)
        bucket.refill(limit, now);
}

void log_settings(State& st, const char* event) {
    const Settings& s = st.settings;
    char text[384];
    std::snprintf(text, sizeof text,
                  "send_rate=%g send_burst=%g connect_rate=%g connect_burst=%g "
                  "auth_fail_rate=%g auth_fail_burst=%g dry_run=%s max_tracked=%" PRId64,
                  s.send.rate, s.send.burst, s.connect.rate, s.connect.burst, s.auth_fail.rate,
                  s.auth_fail.burst, s.dry_run ? "true" : "false", s.max_tracked);
    log_line(st, MESHD_LOG_INFO, event, text);
}

void log_errors(State& st, const std::vector<std::string>& errors) {
    for (const std::string& e : errors)
        log_line(st, MESHD_LOG_ERROR, "ratelimit.config_invalid", e.c_str());
}

// ---- hooks ---------------------------------------------------------------------------------

int init(meshd_host* host, void** state) {
    try {
        std::random_device rd;
        auto st = std::make_unique<State>((uint64_t{rd()} << 32) | rd());
        st->host = host;
        std::vector<std::string> errors;
        if (!read_settings(host, st->settings, errors)) {
            log_errors(*st, errors);
            return 1;
        }
        st->last_sweep_ms = st->now();
        for (int r = 0; r < reason_count; ++r) {
            char labels[32];
            std::snprintf(labels, sizeof labels, "reason=\"%s\"", reason_names[r]);
            st->refused_metric[r] = meshd_host_metric(
                host, MESHD_METRIC_COUNTER, "meshd_rate_limited_total",
                "Requests refused as rate_limited, by reason.", labels);
            st->dry_run_metric[r] = meshd_host_metric(
                host, MESHD_METRIC_COUNTER, "meshd_ratelimit_dry_run_total",
                "Requests ratelimit would have refused while dry_run is on, by reason", labels);
        }
        log_settings(*st, "ratelimit.settings");
        *state = st.release(); // owned by meshd until fini
        return 0;
    } catch (const std::exception& e) {
        meshd_host_log(host, MESHD_LOG_ERROR, "ratelimit.init_failed", e.what());
        return 1;
    }
}

void fini(void* state) {
    std::unique_ptr<State> owned(static_cast<State*>(state));
}

meshd_verdict check(void* state, const meshd_check_request* req, meshd_check_result* out) {
    auto& st = *static_cast<State*>(state);
    const Limit& limit = st.settings.send;
    if (!limit.active())
        return MESHD_PASS;
    try {
        int64_t now = st.now();
        std::string_view sender(req->sender, req->sender_len);
        Bucket* b = bucket_for(st, st.sends, sender, limit, reason_send, now);
        if (!b)
            return MESHD_PASS;
        uint32_t wait = b->take(limit, now);
        if (wait == 0 || !refuse(st, reason_send, sender, now))
            return MESHD_PASS;
        std::snprintf(st.message, sizeof st.message,
                      "too many sends from %.*s (over ratelimit.send_burst=%g at once or "
                      "ratelimit.send_rate=%g per second); retry in %" PRIu32 " ms",
                      static_cast<int>(sender.size()), sender.data(), limit.burst, limit.rate,
                      wait);
        out->code = "rate_limited";
        out->message = st.message;
        out->retry_after_ms = wait;
        return MESHD_DENY;
    } catch (const std::exception&) {
        return MESHD_PASS; // no memory for a new bucket: let it through
    }
}

meshd_verdict accept(void* state, const meshd_accept_request* req, meshd_check_result* out) {
    auto& st = *static_cast<State*>(state);
    const Settings& s = st.settings;
    if (!s.auth_fail.active() && !s.connect.active())
        return MESHD_PASS;
    IpKey key;
    if (!parse_ip(req->remote_ip, req->remote_ip_len, key))
        return MESHD_PASS;
    std::string_view ip(req->remote_ip, req->remote_ip_len);
    try {
        int64_t now = st.now();
        // Failed logins: looked at, not taken (auth_failed takes). An IP without a bucket has
        // not failed lately.
        if (s.auth_fail.active()) {
            auto it = st.auth_fails.find(key);
            if (it != st.auth_fails.end()) {
                it->second.refill(s.auth_fail, now);
                if (!it->second.has_token() && refuse(st, reason_auth_fail, ip, now)) {
                    uint32_t wait = it->second.wait_ms(s.auth_fail);
                    std::snprintf(st.message, sizeof st.message,
                                  "too many failed logins from %.*s (over "
                                  "ratelimit.auth_fail_burst=%g, forgiven at "
                                  "ratelimit.auth_fail_rate=%g per second); retry in %" PRIu32
                                  " ms, with valid credentials",
                                  static_cast<int>(ip.size()), ip.data(), s.auth_fail.burst,
                                  s.auth_fail.rate, wait);
                    out->code = "rate_limited";
                    out->message = st.message;
                    out->retry_after_ms = wait;
                    return MESHD_DENY;
                }
            }
        }
        if (s.connect.active()) {
            Bucket* b = bucket_for(st, st.connects, key, s.connect, reason_connect, now);
            if (!b)
                return MESHD_PASS;
            uint32_t wait = b->take(s.connect, now);
            if (wait != 0 && refuse(st, reason_connect, ip, now)) {
                std::snprintf(st.message, sizeof st.message,
                              "too many connections from %.*s (over "
                              "ratelimit.connect_burst=%g at once or ratelimit.connect_rate=%g "
                              "per second); retry in %" PRIu32 " ms",
                              static_cast<int>(ip.size()), ip.data(), s.connect.burst,
                              s.connect.rate, wait);
                out->code = "rate_limited";
                out->message = st.message;
                out->retry_after_ms = wait;
                return MESHD_DENY;
            }
        }
        return MESHD_PASS;
    } catch (const std::exception&) {
        return MESHD_PASS;
    }
}

void auth_failed(void* state, const meshd_auth_failure* ev) {
    auto& st = *static_cast<State*>(state);
    const Limit& limit = st.settings.auth_fail;
    IpKey key;
    if (!limit.active() || !parse_ip(ev->remote_ip, ev->remote_ip_len, key))
        return;
    try {
        int64_t now = st.now();
        if (Bucket* b = bucket_for(st, st.auth_fails, key, limit, reason_auth_fail, now))
            b->drain(limit, now);
    } catch (const std::exception&) {
    }
}

void tick(void* state, int64_t now_ms) {
    auto& st = *static_cast<State*>(state);
    int64_t now = st.clock.advance(now_ms);
    for (int r = 0; r < reason_count; ++r)
        flush_tally(st, static_cast<Reason>(r), now);
    if (now - st.last_sweep_ms < sweep_every_ms)
        return;
    st.last_sweep_ms = now;
    const Settings& s = st.settings;
    sweep(st.sends, s.send, now);
    sweep(st.connects, s.connect, now);
    sweep(st.auth_fails, s.auth_fail, now);
    for (FullWarning& w : st.full)
        if (w.warned && now - w.last_warn_ms >= full_warn_every_ms)
            w = FullWarning{};
}

int reload(void* state) {
    auto& st = *static_cast<State*>(state);
    try {
        Settings next;
        std::vector<std::string> errors;
        if (!read_settings(st.host, next, errors)) {
            log_errors(st, errors); // meshctl reload shows these lines
            return 1;
        }
        int64_t now = st.now();
        // Lines pending under the old mode are written before dry_run may change.
        for (auto& t : st.tallies)
            t.logged = false;
        for (int r = 0; r < reason_count; ++r)
            flush_tally(st, static_cast<Reason>(r), now);
        st.settings = next;
        clamp(st.sends, next.send, now);
        clamp(st.connects, next.connect, now);
        clamp(st.auth_fails, next.auth_fail, now);
        log_settings(st, "ratelimit.reloaded");
        return 0;
    } catch (const std::exception& e) {
        log_line(st, MESHD_LOG_ERROR, "ratelimit.reload_failed", e.what());
        return 1;
    }
}

const meshd_module descriptor = [] {
    meshd_module m{};
    m.abi = MESHD_MODULE_ABI;
    m.name = "ratelimit";
    m.version = "0.1.0";
    m.init = init;
    m.fini = fini;
    m.check = check;
    m.accept = accept;
    m.auth_failed = auth_failed;
    m.tick = tick;
    m.reload = reload;
    m.config = config_keys;
    return m;
}();

} // namespace

MESHD_MODULE_DEFINE(descriptor)
