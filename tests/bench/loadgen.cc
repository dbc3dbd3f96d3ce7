// loadgen: load generator for meshd durable direct messaging (tests/bench).
//
// Owns: one single-threaded epoll loop driving 2N WebSocket connections to a meshd on
// 127.0.0.1: N senders and N receivers, sender i -> receiver i. Senders keep up to --window
// unacked `send` frames in flight (optionally paced to --rate msgs/s in total); receivers
// record send->deliver latency and ack every 64 messages. One result block (or one JSON line
// with --json) reports throughput and send->ack / send->deliver latency. With --skill, the
// senders send to "skill:NAME" instead and the receivers are --agents agents that publish
// that skill in their profile first: meshd picks one agent for each send (dispatch).
//
// It carries its own minimal RFC 6455 client (HTTP upgrade with Sec-WebSocket-Accept check,
// masked client frames, fragmented and 16/64-bit-length server frames, ping -> pong, close
// handshake) and a tiny JSON scanner. The client has to stay cheap: the daemon, not loadgen,
// must be the bottleneck (STYLE §7), so there are no threads, no allocations per message on
// the hot path and one send() per connection per loop turn.
//
// Bench rule: print numbers, assert nothing. The exit status is 0 when a measurement ran,
// 1 when the connections could not be set up, 2 on a usage error, 3 at the hard deadline.

#include <algorithm>
#include <arpa/inet.h>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <map>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <optional>
#include <signal.h>
#include <string>
#include <string_view>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <system_error>
#include <time.h>
#include <unistd.h>
#include <utility>
#include <vector>

#include "sampling.h"

namespace meshd::bench {
namespace {

constexpr int64_t ns_per_s = 1'000'000'000;
constexpr int64_t drain_timeout_ns = 2 * ns_per_s; // after the window: collect acks/msgs
constexpr int64_t close_timeout_ns = 1 * ns_per_s; // close handshake
constexpr int64_t hard_slack_s = 10;               // total <= warmup + duration + this
constexpr uint32_t receiver_ack_every = 64;
constexpr size_t max_frame_payload = 64u << 20; // a bigger length is a broken stream
constexpr size_t max_http_header = 16u << 10;
constexpr size_t read_chunk = 64u << 10;
constexpr size_t idle_read_chunk = 2u << 10; // idle mode: 20,000 x 64 KiB would be 1.3 GB
constexpr size_t max_connecting = 256;       // handshakes in progress at once

int64_t now_ns() noexcept {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return int64_t(ts.tv_sec) * ns_per_s + ts.tv_nsec;
}

// strerror() is not thread-safe (clang-tidy concurrency-mt-unsafe); this is.
std::string errno_text(int err) {
    return std::error_code(err, std::generic_category()).message();
}

// ---------------------------------------------------------------------------------------------
// SHA-1 and base64, only for the handshake's Sec-WebSocket-Accept (RFC 6455 §4.2.2).

uint32_t rotl32(uint32_t v, int bits) {
    return (v << bits) | (v >> (32 - bits));
}

std::array<uint8_t, 20> sha1(std::string_view data) {
    uint32_t h[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};
    std::string padded(data);
    const uint64_t bit_len = uint64_t(data.size()) * 8;
    padded.push_back(char(0x80));
    while (padded.size() % 64 != 56)
        padded.push_back('\0');
    for (int shift = 56; shift >= 0; shift -= 8)
        padded.push_back(char((bit_len >> shift) & 0xff));

    for (size_t block = 0; block < padded.size(); block += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; ++i) {
            const auto* p = reinterpret_cast<const uint8_t*>(padded.data() + block + 4 * size_t(i));
            w[i] = (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3];
        }
        for (int i = 16; i < 80; ++i)
            w[i] = rotl32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; ++i) {
            uint32_t f = 0, k = 0;
            if (i < 20) {
                f = (b & c) | (~b & d);
                k = 0x5A827999u;
            } else if (i < 40) {
                f = b ^ c ^ d;
                k = 0x6ED9EBA1u;
            } else if (i < 60) {
                f = (b & c) | (b & d) | (c & d);
                k = 0x8F1BBCDCu;
            } else {
                f = b ^ c ^ d;
                k = 0xCA62C1D6u;
            }
            const uint32_t next = rotl32(a, 5) + f + e + k + w[i];
            e = d;
            d = c;
            c = rotl32(b, 30);
            b = a;
            a = next;
        }
        h[0] += a;
        h[1] += b;
        h[2] += c;
        h[3] += d;
        h[4] += e;
    }
    std::array<uint8_t, 20> digest{};
    for (int i = 0; i < 5; ++i) {
        for (int j = 0; j < 4; ++j)
            digest[4 * i + j] = uint8_t(h[i] >> (24 - 8 * j));
    }
    return digest;
}

std::string base64(const uint8_t* data, size_t len) {
    static constexpr char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((len + 2) / 3 * 4);
    for (size_t i = 0; i < len; i += 3) {
        const uint32_t b0 = data[i];
        const uint32_t b1 = i + 1 < len ? data[i + 1] : 0;
        const uint32_t b2 = i + 2 < len ? data[i + 2] : 0;
        const uint32_t triple = (b0 << 16) | (b1 << 8) | b2;
        out.push_back(alphabet[(triple >> 18) & 63]);
        out.push_back(alphabet[(triple >> 12) & 63]);
        out.push_back(i + 1 < len ? alphabet[(triple >> 6) & 63] : '=');
        out.push_back(i + 2 < len ? alphabet[triple & 63] : '=');
    }
    return out;
}

std::string ws_accept_for(std::string_view key) {
    std::string input(key);
    input += "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    const auto digest = sha1(input);
    return base64(digest.data(), digest.size());
}

// xorshift64*: mask keys and handshake nonces. Masking exists to protect proxies from
// cache poisoning; a benchmark on loopback needs cheap, not cryptographic, keys.
class Rng {
  public:
    Rng() {
        if (getrandom(&state_, sizeof state_, 0) != sizeof state_ || state_ == 0) {
            state_ = uint64_t(now_ns()) | 1;
        }
    }
    uint64_t next() noexcept {
        state_ ^= state_ >> 12;
        state_ ^= state_ << 25;
        state_ ^= state_ >> 27;
        return state_ * 0x2545F4914F6CDD1Dull;
    }

  private:
    uint64_t state_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Minimal JSON scanning: the server's frames are flat objects; we need a few members by name
// and must skip any value (nested bodies, strings with escapes) correctly.

size_t skip_ws(std::string_view s, size_t i) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        ++i;
    return i;
}

// s[i] == '"'; returns the index just past the closing quote.
size_t skip_string(std::string_view s, size_t i) {
    for (++i; i < s.size(); ++i) {
        if (s[i] == '\\') {
            ++i;
        } else if (s[i] == '"') {
            return i + 1;
        }
    }
    return std::string_view::npos;
}

size_t skip_value(std::string_view s, size_t i) {
    if (i >= s.size())
        return std::string_view::npos;
    const char first = s[i];
    if (first == '"')
        return skip_string(s, i);
    if (first == '{' || first == '[') {
        int depth = 0;
        while (i < s.size()) {
            const char ch = s[i];
            if (ch == '"') {
                i = skip_string(s, i);
                if (i == std::string_view::npos)
                    return i;
                continue;
            }
            if (ch == '{' || ch == '[') {
                ++depth;
            } else if (ch == '}' || ch == ']') {
                if (--depth == 0)
                    return i + 1;
            }
            ++i;
        }
        return std::string_view::npos;
    }
    const size_t start = i;
    while (i < s.size() && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' &&
           s[i] != '\t' && s[i] != '\n' && s[i] != '\r') {
        ++i;
    }
    return i == start ? std::string_view::npos : i;
}

// Calls on_member(key, raw_value) for each member of the object in s. Keys are compared raw
// (an escaped key never matches, which is fine for the protocol's plain ASCII keys).
template <class OnMember> bool scan_object(std::string_view s, OnMember&& on_member) {
    size_t i = skip_ws(s, 0);
    if (i >= s.size() || s[i] != '{')
        return false;
    i = skip_ws(s, i + 1);
    if (i < s.size() && s[i] == '}')
        return true;
    while (i < s.size()) {
        if (s[i] != '"')
            return false;
        const size_t key_end = skip_string(s, i);
        if (key_end == std::string_view::npos)
            return false;
        const std::string_view key = s.substr(i + 1, key_end - i - 2);
        i = skip_ws(s, key_end);
        if (i >= s.size() || s[i] != ':')
            return false;
        i = skip_ws(s, i + 1);
        const size_t value_end = skip_value(s, i);
        if (value_end == std::string_view::npos)
            return false;
        on_member(key, s.substr(i, value_end - i));
        i = skip_ws(s, value_end);
        if (i >= s.size())
            return false;
        if (s[i] == '}')
            return true;
        if (s[i] != ',')
            return false;
        i = skip_ws(s, i + 1);
    }
    return false;
}

std::optional<int64_t> json_int(std::string_view raw) {
    int64_t v = 0;
    const auto [end, ec] = std::from_chars(raw.data(), raw.data() + raw.size(), v);
    if (ec != std::errc() || end != raw.data() + raw.size())
        return std::nullopt;
    return v;
}

// The inside of a JSON string, escapes left as they are (codes and refs are plain ASCII).
std::string_view json_str(std::string_view raw) {
    if (raw.size() < 2 || raw.front() != '"')
        return {};
    return raw.substr(1, raw.size() - 2);
}

void append_json_string(std::string& out, std::string_view s) {
    out.push_back('"');
    for (const char ch : s) {
        if (ch == '"' || ch == '\\') {
            out.push_back('\\');
            out.push_back(ch);
        } else if (uint8_t(ch) < 0x20) {
            char esc[8];
            std::snprintf(esc, sizeof esc, "\\u%04x", unsigned(uint8_t(ch)));
            out += esc;
        } else {
            out.push_back(ch);
        }
    }
    out.push_back('"');
}

void append_int(std::string& out, int64_t v) {
    char buf[24];
    const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    (void)ec;
    out.append(buf, size_t(end - buf));
}

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
    int port = 0;
    std::string tokens_path;
    size_t pairs = 1;
    size_t body_bytes = 100;
    double duration_s = 10;
    double warmup_s = 2;
    uint32_t window = 1;
    double rate = 0; // total msgs/s over all senders; 0 = as fast as the window allows
    bool json = false;
    bool help = false;
    int server_pid = 0; // optional: sample meshd's CPU and RSS from /proc over the window
    std::string mode = "pairs"; // pairs | fill | replay | idle
    std::string group;          // pairs mode: one sender -> --members receivers, to "#group"
    size_t members = 0;
    std::string skill;          // pairs mode: N senders -> "skill:NAME", served by --agents
    size_t agents = 0;
    uint64_t count = 0;  // fill: stop after this many acks (0: after --duration-s)
    size_t conns = 0;    // idle: connections to hold
    size_t sources = 1;  // idle: source addresses 127.0.0.1 .. 127.0.0.K
};

void usage(FILE* to) {
    std::fputs(
        "usage: loadgen --port P --tokens FILE [--pairs N] [--body-bytes B] [--duration-s S]\n"
        "               [--warmup-s S] [--window W] [--rate R] [--server-pid PID] [--json]\n"
        "  --tokens FILE   lines 'name token': the first N are senders, the next N receivers\n"
        "  --pairs N       N senders -> N receivers, sender i sends to receiver i (default 1)\n"
        "  --body-bytes B  size of each message body's JSON text (default 100)\n"
        "  --duration-s S  measured window in seconds (default 10)\n"
        "  --warmup-s S    traffic before the window, not measured (default 2)\n"
        "  --window W      unacked sends in flight per sender (default 1: wait for each ack)\n"
        "  --rate R        total msgs/s target over all senders, 0 = as fast as possible\n"
        "  --server-pid P  also report that process's CPU% and RSS over the window\n"
        "  --json          print the result as one JSON line\n"
        "  --group G --members M   one sender -> M receivers (tokens: sender, then members),\n"
        "                  each send to \"#G\"; delivered counts every member's copy\n"
        "  --skill K --agents A   N senders send to \"skill:K\" (no task), A agents (tokens:\n"
        "                  senders, then agents) publish the skill and get one copy each\n"
        "  --mode fill     only the N senders connect (receivers stay offline, their logs\n"
        "                  grow); stops after --count acks or --duration-s; reports acks/s\n"
        "  --mode replay   only the N receivers connect, as a new device (cursor 0): the\n"
        "                  whole stored log is replayed; reports msgs/s until `synced`\n"
        "  --mode idle --conns C [--sources K]   C authenticated idle connections (token\n"
        "                  lines reused, one device each) from 127.0.0.1..K; reports the\n"
        "                  server's VmRSS and /proc/net/sockstat TCP memory before/after\n"
        "Connects to 127.0.0.1 only. Exits by warmup + duration + 10 s at the latest.\n",
        to);
}

template <class T> bool parse_number(std::string_view text, T& out) {
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
    return ec == std::errc() && end == text.data() + text.size();
}

std::optional<Options> parse_options(int argc, char** argv) {
    Options opt;
    bool ok = true;
    auto fail = [&](const std::string& message) {
        std::fprintf(stderr, "loadgen: %s\n", message.c_str());
        ok = false;
    };
    for (int i = 1; i < argc && ok; ++i) {
        std::string_view arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            opt.help = true;
            return opt;
        }
        if (arg == "--json") {
            opt.json = true;
            continue;
        }
        std::string_view value;
        if (const size_t eq = arg.find('='); eq != std::string_view::npos) {
            value = arg.substr(eq + 1);
            arg = arg.substr(0, eq);
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            fail("option " + std::string(arg) + " needs a value");
            break;
        }
        auto bad = [&](const char* what) {
            fail("option " + std::string(arg) + " must be " + what + ", got \"" +
                 std::string(value) + "\"");
        };
        if (arg == "--port") {
            if (!parse_number(value, opt.port) || opt.port < 1 || opt.port > 65535) {
                bad("a port 1..65535");
            }
        } else if (arg == "--tokens") {
            opt.tokens_path = std::string(value);
        } else if (arg == "--pairs") {
            if (!parse_number(value, opt.pairs) || opt.pairs < 1 || opt.pairs > 10000) {
                bad("an integer 1..10000");
            }
        } else if (arg == "--body-bytes") {
            if (!parse_number(value, opt.body_bytes) || opt.body_bytes > (16u << 20)) {
                bad("an integer 0..16777216");
            }
        } else if (arg == "--duration-s") {
            if (!parse_number(value, opt.duration_s) || !(opt.duration_s > 0) ||
                opt.duration_s > 3600) {
                bad("seconds in (0, 3600]");
            }
        } else if (arg == "--warmup-s") {
            if (!parse_number(value, opt.warmup_s) || !(opt.warmup_s >= 0) || opt.warmup_s > 3600) {
                bad("seconds in [0, 3600]");
            }
        } else if (arg == "--window") {
            if (!parse_number(value, opt.window) || opt.window < 1 || opt.window > 65536) {
                bad("an integer 1..65536");
            }
        } else if (arg == "--rate") {
            if (!parse_number(value, opt.rate) || !(opt.rate >= 0) || opt.rate > 1e9) {
                bad("msgs/s >= 0");
            }
        } else if (arg == "--mode") {
            opt.mode = std::string(value);
            if (opt.mode != "pairs" && opt.mode != "fill" && opt.mode != "replay" &&
                opt.mode != "idle") {
                bad("pairs, fill, replay or idle");
            }
        } else if (arg == "--group") {
            opt.group = std::string(value);
        } else if (arg == "--skill") {
            opt.skill = std::string(value);
        } else if (arg == "--agents") {
            if (!parse_number(value, opt.agents) || opt.agents < 1 || opt.agents > 10000)
                bad("an integer 1..10000");
        } else if (arg == "--members") {
            if (!parse_number(value, opt.members) || opt.members < 1 || opt.members > 10000)
                bad("an integer 1..10000");
        } else if (arg == "--count") {
            if (!parse_number(value, opt.count))
                bad("a whole number");
        } else if (arg == "--conns") {
            if (!parse_number(value, opt.conns) || opt.conns < 1 || opt.conns > 200000)
                bad("an integer 1..200000");
        } else if (arg == "--sources") {
            if (!parse_number(value, opt.sources) || opt.sources < 1 || opt.sources > 254)
                bad("an integer 1..254");
        } else if (arg == "--server-pid") {
            if (!parse_number(value, opt.server_pid) || opt.server_pid < 1)
                bad("a pid");
        } else {
            fail("unknown option " + std::string(arg) + " (see --help)");
        }
    }
    if (ok && opt.port == 0)
        fail("--port is required");
    if (ok && opt.tokens_path.empty())
        fail("--tokens is required");
    if (ok && opt.group.empty() != (opt.members == 0))
        fail("--group and --members go together");
    if (ok && opt.skill.empty() != (opt.agents == 0))
        fail("--skill and --agents go together");
    if (ok && !opt.skill.empty() && (!opt.group.empty() || opt.mode != "pairs"))
        fail("--skill goes with the pairs mode only, without --group");
    if (ok && opt.mode == "idle" && opt.conns == 0)
        fail("--mode idle needs --conns");
    if (!ok)
        return std::nullopt;
    return opt;
}

// Seconds allowed for connect + upgrade + hello + synced on every connection: 5, plus 3 ms a
// connection (idle mode), plus 120 for a replay of a large backlog.
double setup_allowance_s(const Options& opt) {
    const size_t conns =
        opt.mode == "idle" ? opt.conns : 2 * std::max({opt.pairs, opt.members, opt.agents});
    return 5.0 + 0.003 * double(conns) + (opt.mode == "replay" ? 120.0 : 0.0);
}

struct Credential {
    std::string name;
    std::string token;
};

// Reads up to `want` credentials; fewer than `need` is an error.
std::optional<std::vector<Credential>> read_tokens(const std::string& path, size_t want,
                                                   size_t need) {
    std::ifstream in(path);
    if (!in) {
        std::fprintf(stderr, "loadgen: %s: cannot open: %s\n", path.c_str(),
                     errno_text(errno).c_str());
        return std::nullopt;
    }
    std::vector<Credential> creds;
    std::string line;
    size_t line_no = 0;
    while (creds.size() < want && std::getline(in, line)) {
        ++line_no;
        if (line.empty() || line[0] == '#')
            continue;
        const size_t space = line.find_first_of(" \t");
        const size_t token_at = line.find_first_not_of(" \t", space);
        if (space == std::string::npos || token_at == std::string::npos) {
            std::fprintf(stderr, "loadgen: %s:%zu: expected 'name token'\n", path.c_str(), line_no);
            return std::nullopt;
        }
        const size_t token_end = line.find_first_of(" \t\r", token_at);
        creds.push_back({line.substr(0, space), line.substr(token_at, token_end - token_at)});
    }
    if (creds.size() < need) {
        std::fprintf(stderr,
                     "loadgen: %s: need %zu 'name token' lines (senders, then receivers), "
                     "found %zu\n",
                     path.c_str(), need, creds.size());
        return std::nullopt;
    }
    return creds;
}

// ---------------------------------------------------------------------------------------------
// Connections

// Move-only owner of a file descriptor.
class Fd {
  public:
    Fd() = default;
    explicit Fd(int fd) : fd_(fd) {}
    Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    Fd& operator=(Fd&& other) noexcept {
        if (this != &other) {
            reset();
            fd_ = std::exchange(other.fd_, -1);
        }
        return *this;
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() { reset(); }
    void reset() noexcept {
        if (fd_ >= 0)
            ::close(fd_);
        fd_ = -1;
    }
    int get() const noexcept { return fd_; }
    explicit operator bool() const noexcept { return fd_ >= 0; }

  private:
    int fd_ = -1;
};

enum class Role { sender, receiver };

// Connection state machine (function behind each transition):
//   connecting --on_connected--> upgrading --on_upgrade_response--> hello_sent
//   hello_sent --on_text(welcome)--> welcomed --on_text(synced)--> ready
//   (--skill agents: welcomed --on_text(synced)--> publishing --on_text(ok)--> ready)
//   any --on_close_frame / begin_close--> closing --EOF--> dead
//   any --fail (protocol error, EOF without close, socket error)--> dead
enum class ConnState {
    connecting,
    upgrading,
    hello_sent,
    welcomed,
    publishing,
    ready,
    closing,
    dead
};

struct InflightSlot {
    uint64_t ref = 0;
    int64_t sent_ns = 0;
    bool used = false;
};

struct Conn {
    Role role = Role::sender;
    size_t index = 0;  // pair number
    std::string name;  // our principal
    std::string token; // our credential
    std::string peer;  // sender: the receiver's principal id, or "#group"
    std::string device = "bench";
    bool resume_head = true; // false: a new device replays the whole stored log
    Fd fd;
    ConnState state = ConnState::connecting;
    std::string expected_accept;

    std::vector<char> in; // bytes read, not yet parsed: in[0, in_len)
    size_t in_len = 0;
    std::string out; // bytes queued, not yet written: out[out_off, size)
    size_t out_off = 0;
    bool want_write = false; // the last send() hit EAGAIN; wait for EPOLLOUT

    std::string fragments; // payload of a fragmented message being reassembled
    uint8_t fragment_opcode = 0;
    bool in_fragment = false;
    bool close_sent = false;
    bool close_received = false;

    // Sender: refs are 0, 1, 2, ...; ring slot = ref & ring_mask.
    std::vector<InflightSlot> ring;
    uint64_t ring_mask = 0;
    uint64_t next_ref = 0;
    uint32_t inflight = 0;

    // Receiver
    int64_t last_seq = -1;
    uint32_t unacked_msgs = 0;
};

enum class Phase { setup, running, draining, closing, done };

struct Counters {
    uint64_t sent = 0;
    uint64_t acked = 0;
    uint64_t delivered = 0;
};

class LoadGen {
  public:
    LoadGen(Options opt, std::vector<Credential> creds) : opt_(std::move(opt)) {
        const bool group = !opt_.group.empty();
        const bool skill = !opt_.skill.empty();
        const bool idle = opt_.mode == "idle";
        // Credentials: senders first, then receivers (idle: any number, reused).
        senders_ = idle ? 0 : group ? 1 : opt_.pairs;
        receivers_ = idle ? opt_.conns : group ? opt_.members : skill ? opt_.agents : opt_.pairs;
        fanout_ = group ? opt_.members : 1;
        uint64_t ring_size = 1;
        while (ring_size < 2ull * opt_.window)
            ring_size <<= 1;
        if (opt_.mode != "replay") {
            for (size_t i = 0; i < senders_; ++i) {
                Conn& c = conns_.emplace_back();
                c.role = Role::sender;
                c.index = i;
                c.name = creds[i].name;
                c.token = creds[i].token;
                c.peer = group   ? "#" + opt_.group
                         : skill ? "skill:" + opt_.skill
                                 : creds[senders_ + i].name;
                c.ring.resize(ring_size);
                c.ring_mask = ring_size - 1;
                c.in.resize(read_chunk);
            }
        }
        if (opt_.mode != "fill") {
            for (size_t i = 0; i < receivers_; ++i) {
                Conn& c = conns_.emplace_back();
                c.role = Role::receiver;
                c.index = i;
                const Credential& cred = idle ? creds[i % creds.size()] : creds[senders_ + i];
                c.name = cred.name;
                c.token = cred.token;
                if (idle) {
                    c.device = "idle" + std::to_string(i / creds.size());
                } else if (opt_.mode == "replay") {
                    c.device = "replay";
                    c.resume_head = false;
                }
                c.in.resize(idle ? idle_read_chunk : read_chunk);
            }
        }
        padding_.assign(opt_.body_bytes, 'x');
        const size_t expect = size_t(std::max(1.0, (opt_.duration_s + opt_.warmup_s) * 50000));
        ack_lat_ns_.reserve(std::min<size_t>(expect, 4u << 20));
        deliver_lat_ns_.reserve(std::min<size_t>(expect, 4u << 20));
    }

    int run();

  private:
    // setup
    bool open_all();
    bool open_one(size_t i);
    void on_connected(Conn& c);
    void on_upgrade_response(Conn& c);
    // I/O
    void on_event(Conn& c, uint32_t events);
    void read_available(Conn& c);
    void parse_frames(Conn& c);
    void flush(Conn& c);
    void queue_frame(Conn& c, uint8_t opcode, std::string_view payload);
    void fail(Conn& c, std::string_view reason);
    void begin_close(Conn& c, uint16_t code);
    // protocol
    void on_frame(Conn& c, bool fin, uint8_t opcode, std::string_view payload);
    void on_close_frame(Conn& c, std::string_view payload);
    void on_text(Conn& c, std::string_view text);
    void on_ack(Conn& c, std::string_view ref, int64_t now);
    void on_msg(Conn& c, int64_t seq, std::string_view body, int64_t now);
    int64_t paced_due_ns(const Conn& c) const;
    void pump_sender(Conn& c, int64_t now);
    void send_receiver_ack(Conn& c);
    // bookkeeping
    void count_error(std::string_view code) { errors_[std::string(code)]++; }
    bool in_window(int64_t t) const { return t >= window_start_ns_ && t < window_end_ns_; }
    void enter_running(int64_t now);
    void sample_window_start();
    void sample_window_end();
    void report() const;

    Options opt_;
    std::vector<Conn> conns_;
    size_t senders_ = 0, receivers_ = 0;
    uint64_t fanout_ = 1; // deliveries per acked send
    size_t opened_ = 0;   // conns_[0, opened_) have a socket
    int64_t synced_ns_ = 0; // the last `synced` (replay: the end of the replay)
    std::optional<int64_t> rss_before_kb_, rss_after_kb_, tcp_pages_before_, tcp_pages_after_;
    Fd epoll_;
    Rng rng_;
    std::string padding_;
    std::string scratch_;

    Phase phase_ = Phase::setup;
    bool setup_failed_ = false;
    std::string setup_failure_;
    size_t ready_count_ = 0;
    int64_t start_ns_ = 0;
    int64_t traffic_start_ns_ = 0;
    int64_t window_start_ns_ = INT64_MAX;
    int64_t window_end_ns_ = INT64_MAX;
    bool window_started_ = false;
    bool window_ended_ = false;

    Counters window_;
    Counters total_;
    std::vector<int64_t> ack_lat_ns_;
    std::vector<int64_t> deliver_lat_ns_;
    std::map<std::string, uint64_t> errors_;
    uint64_t task_frames_ = 0;

    double self_cpu_start_ = 0, self_cpu_window_ = 0;
    std::optional<double> server_cpu_start_, server_cpu_window_;
    std::optional<int64_t> server_rss_kb_, server_hwm_kb_;
    double measured_s_ = 0;
};

bool LoadGen::open_all() {
    epoll_ = Fd(epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_) {
        std::fprintf(stderr, "loadgen: epoll_create1: %s\n", errno_text(errno).c_str());
        return false;
    }
    return true;
}

// Connections open a few hundred at a time (run() calls this as handshakes finish), so that
// 20,000 of them do not overflow the listen backlog.
bool LoadGen::open_one(size_t i) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(uint16_t(opt_.port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK); // loopback only, by design
    Conn& c = conns_[i];
    c.fd = Fd(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!c.fd) {
        setup_failure_ = "socket: " + errno_text(errno) + " (raise ulimit -n?) after " +
                         std::to_string(i) + " connections";
        return false;
    }
    const int one = 1;
    setsockopt(c.fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (opt_.sources > 1) {
        // Source 127.0.0.(1 + i mod K): K x the ephemeral port range to choose from.
        setsockopt(c.fd.get(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        sockaddr_in src{};
        src.sin_family = AF_INET;
        src.sin_addr.s_addr = htonl(INADDR_LOOPBACK + uint32_t(i % opt_.sources));
        if (bind(c.fd.get(), reinterpret_cast<const sockaddr*>(&src), sizeof src) != 0) {
            setup_failure_ = "bind 127.0.0.x: " + errno_text(errno);
            return false;
        }
    }
    if (connect(c.fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 &&
        errno != EINPROGRESS) {
        setup_failure_ = "connect 127.0.0.1:" + std::to_string(opt_.port) + ": " +
                         errno_text(errno) + " after " + std::to_string(i) + " connections";
        return false;
    }
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = i;
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c.fd.get(), &ev) != 0) {
        setup_failure_ = "epoll_ctl: " + errno_text(errno);
        return false;
    }
    return true;
}

void LoadGen::on_connected(Conn& c) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c.fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (err != 0) {
        setup_failure_ =
            std::string("connect 127.0.0.1:") + std::to_string(opt_.port) + ": " + errno_text(err);
        fail(c, "client:connect_failed");
        return;
    }
    uint8_t nonce[16];
    for (size_t i = 0; i < sizeof nonce; i += 8) {
        const uint64_t r = rng_.next();
        std::memcpy(nonce + i, &r, 8);
    }
    const std::string key = base64(nonce, sizeof nonce);
    c.expected_accept = ws_accept_for(key);
    c.out += "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:";
    c.out += std::to_string(opt_.port);
    c.out += "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ";
    c.out += key;
    c.out += "\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: meshd.v1\r\n"
             "User-Agent: meshd-loadgen\r\n\r\n";
    c.state = ConnState::upgrading;
    flush(c);
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size())
        return false;
    for (size_t i = 0; i < a.size(); ++i) {
        if (std::tolower(uint8_t(a[i])) != std::tolower(uint8_t(b[i])))
            return false;
    }
    return true;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
        s.remove_suffix(1);
    return s;
}

// Does a comma-separated header value contain token (case-insensitive)?
bool header_has_token(std::string_view value, std::string_view token) {
    while (!value.empty()) {
        const size_t comma = value.find(',');
        if (iequals(trim(value.substr(0, comma)), token))
            return true;
        if (comma == std::string_view::npos)
            break;
        value.remove_prefix(comma + 1);
    }
    return false;
}

void LoadGen::on_upgrade_response(Conn& c) {
    const std::string_view buf(c.in.data(), c.in_len);
    const size_t end = buf.find("\r\n\r\n");
    if (end == std::string_view::npos) {
        if (buf.size() > max_http_header)
            fail(c, "client:bad_handshake");
        return; // wait for the rest of the headers
    }
    std::string_view head = buf.substr(0, end + 2);
    const size_t status_end = head.find("\r\n");
    const std::string_view status = head.substr(0, status_end);
    head.remove_prefix(status_end + 2);
    if (status.size() < 12 || status.substr(0, 5) != "HTTP/" || status.substr(9, 3) != "101") {
        setup_failure_ = "upgrade refused: " + std::string(status);
        fail(c, "client:upgrade_refused");
        return;
    }
    bool upgrade_ok = false, connection_ok = false, accept_ok = false, protocol_ok = true;
    while (!head.empty()) {
        const size_t eol = head.find("\r\n");
        const std::string_view line = head.substr(0, eol);
        head.remove_prefix(eol + 2);
        const size_t colon = line.find(':');
        if (colon == std::string_view::npos)
            continue;
        const std::string_view name = trim(line.substr(0, colon));
        const std::string_view value = trim(line.substr(colon + 1));
        if (iequals(name, "upgrade")) {
            upgrade_ok = iequals(value, "websocket");
        } else if (iequals(name, "connection")) {
            connection_ok = header_has_token(value, "upgrade");
        } else if (iequals(name, "sec-websocket-accept")) {
            accept_ok = value == c.expected_accept;
        } else if (iequals(name, "sec-websocket-protocol")) {
            protocol_ok = value == "meshd.v1";
        }
    }
    if (!upgrade_ok || !connection_ok || !accept_ok || !protocol_ok) {
        setup_failure_ = "bad upgrade response (Upgrade/Connection/Sec-WebSocket-Accept/"
                         "Sec-WebSocket-Protocol)";
        fail(c, "client:bad_handshake");
        return;
    }
    // Bytes after the header block are already WebSocket frames.
    const size_t consumed = end + 4;
    std::memmove(c.in.data(), c.in.data() + consumed, c.in_len - consumed);
    c.in_len -= consumed;
    c.state = ConnState::hello_sent;

    scratch_.clear();
    scratch_ += R"({"type":"hello","token":)";
    append_json_string(scratch_, c.token);
    scratch_ += R"(,"device":)";
    append_json_string(scratch_, c.device);
    scratch_ += c.resume_head ? R"(,"resume":"head"})" : "}";
    queue_frame(c, 0x1, scratch_);
    parse_frames(c);
}

void LoadGen::queue_frame(Conn& c, uint8_t opcode, std::string_view payload) {
    if (c.state == ConnState::dead || c.close_sent)
        return;
    uint8_t header[14];
    size_t n = 0;
    header[n++] = uint8_t(0x80 | opcode); // FIN: we never fragment our own frames
    const uint64_t len = payload.size();
    if (len < 126) {
        header[n++] = uint8_t(0x80 | len);
    } else if (len <= 0xffff) {
        header[n++] = 0x80 | 126;
        header[n++] = uint8_t(len >> 8);
        header[n++] = uint8_t(len);
    } else {
        header[n++] = 0x80 | 127;
        for (int shift = 56; shift >= 0; shift -= 8)
            header[n++] = uint8_t(len >> shift);
    }
    const uint32_t mask = uint32_t(rng_.next());
    std::memcpy(header + n, &mask, 4);
    uint8_t key[4];
    std::memcpy(key, &mask, 4);
    n += 4;
    c.out.append(reinterpret_cast<const char*>(header), n);
    const size_t at = c.out.size();
    c.out.append(payload);
    // Client frames are always masked (RFC 6455 §5.3); 8 bytes at a time, then the tail.
    char* p = c.out.data() + at;
    uint64_t key8 = 0;
    for (int i = 0; i < 8; ++i)
        key8 |= uint64_t(key[i & 3]) << (8 * i);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t word;
        std::memcpy(&word, p + i, 8);
        word ^= key8;
        std::memcpy(p + i, &word, 8);
    }
    for (; i < len; ++i)
        p[i] = char(uint8_t(p[i]) ^ key[i & 3]);
}

void LoadGen::flush(Conn& c) {
    if (c.state == ConnState::dead || c.state == ConnState::connecting)
        return;
    while (c.out_off < c.out.size()) {
        const ssize_t n = ::send(c.fd.get(), c.out.data() + c.out_off, c.out.size() - c.out_off,
                                 MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c.out_off += size_t(n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c.want_write = true;
            return;
        }
        fail(c, "disconnect");
        return;
    }
    c.out.clear();
    c.out_off = 0;
    c.want_write = false;
}

void LoadGen::fail(Conn& c, std::string_view reason) {
    if (c.state == ConnState::dead)
        return;
    // Connections we were closing anyway end quietly; anything else is an error.
    if (!(c.state == ConnState::closing && reason == "disconnect"))
        count_error(reason);
    if (phase_ == Phase::setup) {
        setup_failed_ = true;
        if (setup_failure_.empty())
            setup_failure_ = std::string(reason);
    }
    c.state = ConnState::dead;
    c.fd.reset(); // close() also removes it from the epoll set
}

void LoadGen::begin_close(Conn& c, uint16_t code) {
    if (c.state == ConnState::dead)
        return;
    if (c.state == ConnState::connecting || c.state == ConnState::upgrading) {
        c.state = ConnState::dead; // no WebSocket yet: nothing to close politely
        c.fd.reset();
        return;
    }
    if (!c.close_sent) {
        const char payload[2] = {char(code >> 8), char(code & 0xff)};
        queue_frame(c, 0x8, std::string_view(payload, 2));
        c.close_sent = true;
    }
    c.state = ConnState::closing;
    flush(c);
}

void LoadGen::on_event(Conn& c, uint32_t events) {
    if (c.state == ConnState::dead)
        return;
    if (c.state == ConnState::connecting) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            on_connected(c);
        if (c.state == ConnState::dead)
            return;
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        read_available(c);
    if (c.state != ConnState::dead && (events & EPOLLOUT) && c.want_write)
        flush(c);
}

void LoadGen::read_available(Conn& c) {
    // Edge-triggered: read until EAGAIN, parsing after each read to keep the buffer small.
    while (c.state != ConnState::dead) {
        if (c.in.size() - c.in_len < c.in.size() / 4)
            c.in.resize(c.in.size() * 2);
        const ssize_t n = ::read(c.fd.get(), c.in.data() + c.in_len, c.in.size() - c.in_len);
        if (n > 0) {
            c.in_len += size_t(n);
            if (c.state == ConnState::upgrading) {
                on_upgrade_response(c);
            } else {
                parse_frames(c);
            }
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        // EOF or error: the close handshake (if any) is over.
        if (c.state == ConnState::closing || c.close_received) {
            c.state = ConnState::dead;
            c.fd.reset();
        } else {
            fail(c, "disconnect");
        }
        return;
    }
}

void LoadGen::parse_frames(Conn& c) {
    size_t pos = 0;
    while (c.state != ConnState::dead) {
        const size_t avail = c.in_len - pos;
        if (avail < 2)
            break;
        const auto* p = reinterpret_cast<const uint8_t*>(c.in.data() + pos);
        const bool fin = p[0] & 0x80;
        const uint8_t rsv = p[0] & 0x70;
        const uint8_t opcode = p[0] & 0x0f;
        const bool masked = p[1] & 0x80;
        uint64_t len = p[1] & 0x7f;
        size_t header = 2;
        if (len == 126) {
            if (avail < 4)
                break;
            len = (uint64_t(p[2]) << 8) | p[3];
            header = 4;
        } else if (len == 127) {
            if (avail < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; ++i)
                len = (len << 8) | p[2 + i];
            header = 10;
        }
        if (rsv != 0 || len > max_frame_payload) {
            fail(c, "client:ws_protocol");
            return;
        }
        const size_t mask_at = header;
        if (masked)
            header += 4; // servers must not mask, but unmasking costs nothing
        if (avail < header + len) {
            // Make sure the whole frame will fit, then wait for more bytes.
            if (c.in.size() < pos + header + len + read_chunk / 4) {
                c.in.resize(std::max(c.in.size() * 2, size_t(header + len) + read_chunk));
            }
            break;
        }
        char* payload = c.in.data() + pos + header;
        if (masked) {
            const uint8_t* key = p + mask_at;
            for (uint64_t i = 0; i < len; ++i)
                payload[i] = char(uint8_t(payload[i]) ^ key[i & 3]);
        }
        pos += header + len;
        on_frame(c, fin, opcode, std::string_view(payload, len));
    }
    if (c.state == ConnState::dead)
        return;
    if (pos > 0) {
        std::memmove(c.in.data(), c.in.data() + pos, c.in_len - pos);
        c.in_len -= pos;
    }
}

void LoadGen::on_frame(Conn& c, bool fin, uint8_t opcode, std::string_view payload) {
    if (opcode >= 0x8) {
        // Control frames may arrive between the fragments of a message; never fragmented.
        if (!fin || payload.size() > 125) {
            fail(c, "client:ws_protocol");
            return;
        }
        switch (opcode) {
        case 0x8:
            on_close_frame(c, payload);
            return;
        case 0x9:
            queue_frame(c, 0xA, payload); // pong echoes the ping's application data
            return;
        case 0xA:
            return; // unsolicited pong: ignore
        default:
            fail(c, "client:ws_protocol");
            return;
        }
    }
    if (c.close_received)
        return;
    if (opcode == 0x0) {
        if (!c.in_fragment) {
            fail(c, "client:ws_protocol");
            return;
        }
        c.fragments.append(payload);
        if (c.fragments.size() > max_frame_payload) {
            fail(c, "client:ws_protocol");
            return;
        }
        if (!fin)
            return;
        c.in_fragment = false;
        if (c.fragment_opcode == 0x1) {
            on_text(c, c.fragments);
        } else {
            count_error("client:binary_frame");
        }
        c.fragments.clear();
        return;
    }
    if (opcode != 0x1 && opcode != 0x2) {
        fail(c, "client:ws_protocol");
        return;
    }
    if (c.in_fragment) {
        fail(c, "client:ws_protocol"); // a new message inside a fragmented one
        return;
    }
    if (!fin) {
        c.in_fragment = true;
        c.fragment_opcode = opcode;
        c.fragments.assign(payload);
        return;
    }
    if (opcode == 0x1) {
        on_text(c, payload);
    } else {
        count_error("client:binary_frame");
    }
}

void LoadGen::on_close_frame(Conn& c, std::string_view payload) {
    uint16_t code = 1005; // no status received
    if (payload.size() >= 2)
        code = uint16_t((uint8_t(payload[0]) << 8) | uint8_t(payload[1]));
    c.close_received = true;
    if (!c.close_sent) {
        // The server started the close: count it, with its code (4001 too slow, 1001 ...).
        count_error("close:" + std::to_string(code));
        if (phase_ == Phase::setup) {
            setup_failed_ = true;
            if (setup_failure_.empty()) {
                setup_failure_ = "server closed the connection with code " + std::to_string(code);
            }
        }
        begin_close(c, code == 1005 ? 1000 : code);
    }
    c.state = ConnState::closing;
    // The server closes TCP after the handshake; read_available sees EOF and ends it.
}

void LoadGen::on_text(Conn& c, std::string_view text) {
    const int64_t now = now_ns();
    std::string_view type, ref, code, body, message;
    std::optional<int64_t> seq;
    const bool parsed = scan_object(text, [&](std::string_view key, std::string_view raw) {
        if (key == "type") {
            type = json_str(raw);
        } else if (key == "seq") {
            seq = json_int(raw);
        } else if (key == "ref") {
            ref = json_str(raw);
        } else if (key == "code") {
            code = json_str(raw);
        } else if (key == "body") {
            body = raw;
        } else if (key == "message") {
            message = json_str(raw);
        }
    });
    if (!parsed || type.empty()) {
        count_error("client:bad_json");
        return;
    }
    if (type == "msg") {
        if (c.role == Role::receiver && seq) {
            on_msg(c, *seq, body, now);
        } else {
            count_error("client:unexpected_msg");
        }
    } else if (type == "ack") {
        if (c.role == Role::sender && !ref.empty()) {
            on_ack(c, ref, now);
        } else {
            count_error("client:unexpected_ack");
        }
    } else if (type == "error") {
        count_error(code.empty() ? std::string_view("error_without_code") : code);
        if (c.role == Role::sender && !ref.empty()) {
            uint64_t n = 0;
            if (parse_number(ref, n)) {
                InflightSlot& slot = c.ring[n & c.ring_mask];
                if (slot.used && slot.ref == n) {
                    slot.used = false;
                    --c.inflight;
                }
            }
        }
        if (c.state == ConnState::publishing) {
            setup_failure_ = "profile refused: " + std::string(code) + " " + std::string(message);
            setup_failed_ = true;
            begin_close(c, 1000);
        }
        if (c.state == ConnState::hello_sent) {
            // unauthorized / resume_invalid: the session cannot start.
            setup_failure_ = "hello refused: " + std::string(code) + " " + std::string(message);
            setup_failed_ = true;
            begin_close(c, 1000);
        }
    } else if (type == "welcome") {
        if (c.state == ConnState::hello_sent)
            c.state = ConnState::welcomed;
    } else if (type == "synced") {
        if (c.state == ConnState::welcomed && c.role == Role::receiver && !opt_.skill.empty()) {
            // An agent is a candidate for the skill once its profile lists it.
            scratch_.clear();
            scratch_ += R"({"type":"profile","ref":"profile","skills":[)";
            append_json_string(scratch_, opt_.skill);
            scratch_ += "]}";
            queue_frame(c, 0x1, scratch_);
            c.state = ConnState::publishing;
        } else if (c.state == ConnState::welcomed) {
            c.state = ConnState::ready;
            ++ready_count_;
            synced_ns_ = now;
        }
    } else if (type == "ok" && c.state == ConnState::publishing) {
        c.state = ConnState::ready;
        ++ready_count_;
        synced_ns_ = now;
    } else if (type == "task") {
        // A sender's task frames (meshd-protocol(7), WORK DISPATCH): not measured.
        ++task_frames_;
    } else {
        count_error("client:unexpected_type");
    }
}

void LoadGen::on_ack(Conn& c, std::string_view ref, int64_t now) {
    uint64_t n = 0;
    if (!parse_number(ref, n)) {
        count_error("client:unknown_ref");
        return;
    }
    InflightSlot& slot = c.ring[n & c.ring_mask];
    if (!slot.used || slot.ref != n) {
        count_error("client:unknown_ref");
        return;
    }
    slot.used = false;
    --c.inflight;
    ++total_.acked;
    if (in_window(now)) {
        ++window_.acked;
        ack_lat_ns_.push_back(now - slot.sent_ns);
    }
}

void LoadGen::on_msg(Conn& c, int64_t seq, std::string_view body, int64_t now) {
    if (seq <= c.last_seq)
        count_error("client:seq_not_increasing");
    c.last_seq = std::max(c.last_seq, seq);
    std::optional<int64_t> sent_ns;
    scan_object(body, [&](std::string_view key, std::string_view raw) {
        if (key == "t")
            sent_ns = json_int(raw);
    });
    ++total_.delivered;
    if (!sent_ns) {
        count_error("client:msg_without_t");
    } else if (in_window(now)) {
        ++window_.delivered;
        deliver_lat_ns_.push_back(now - *sent_ns);
    }
    if (++c.unacked_msgs >= receiver_ack_every)
        send_receiver_ack(c);
}

void LoadGen::send_receiver_ack(Conn& c) {
    if (c.last_seq < 0 || c.unacked_msgs == 0)
        return;
    scratch_.clear();
    scratch_ += R"({"type":"ack","upto":)";
    append_int(scratch_, c.last_seq);
    scratch_ += '}';
    queue_frame(c, 0x1, scratch_);
    c.unacked_msgs = 0;
}

// Open-loop pacing (--rate): sender i sends its k-th message at (k + i/N) / per-sender rate
// after traffic starts. The i/N phase spreads the senders evenly instead of firing all N at
// once; a stalled daemon lets a sender fall behind by at most --window messages.
int64_t LoadGen::paced_due_ns(const Conn& c) const {
    const double per_sender_rate = opt_.rate / double(senders_);
    const double slot = double(c.next_ref) + double(c.index) / double(senders_);
    return traffic_start_ns_ + int64_t(slot * 1e9 / per_sender_rate);
}

void LoadGen::pump_sender(Conn& c, int64_t now) {
    if (c.state != ConnState::ready)
        return;
    while (c.inflight < opt_.window) {
        if (opt_.count > 0 && total_.sent >= opt_.count)
            break;
        if (opt_.rate > 0 && now < paced_due_ns(c))
            break;
        InflightSlot& slot = c.ring[c.next_ref & c.ring_mask];
        if (slot.used)
            break; // an older ref is still unacked; wait for it
        const uint64_t ref = c.next_ref++;
        const int64_t t = now_ns();
        scratch_.clear();
        scratch_ += R"({"type":"send","to":)";
        append_json_string(scratch_, c.peer);
        scratch_ += R"(,"ref":")";
        append_int(scratch_, int64_t(ref));
        scratch_ += R"(","body":{"t":)";
        const size_t body_start = scratch_.size() - 5; // at the '{' of "body":{
        append_int(scratch_, t);
        scratch_ += R"(,"p":")";
        // Pad so that the body's JSON text is body_bytes long (when body_bytes allows).
        const size_t body_so_far = scratch_.size() - body_start;
        const size_t pad =
            opt_.body_bytes > body_so_far + 2 ? opt_.body_bytes - body_so_far - 2 : 0;
        scratch_.append(padding_, 0, pad);
        scratch_ += R"("}})";
        queue_frame(c, 0x1, scratch_);
        slot = {ref, t, true};
        ++c.inflight;
        ++total_.sent;
        if (in_window(t))
            ++window_.sent;
    }
}

void LoadGen::enter_running(int64_t now) {
    phase_ = Phase::running;
    traffic_start_ns_ = now;
    window_start_ns_ = now + int64_t(opt_.warmup_s * 1e9);
    window_end_ns_ = window_start_ns_ + int64_t(opt_.duration_s * 1e9);
}

void LoadGen::sample_window_start() {
    window_started_ = true;
    if (opt_.mode == "idle" && opt_.server_pid) {
        // Every connection is up and has settled for --warmup-s.
        rss_after_kb_ = proc_status_kb(opt_.server_pid, "VmRSS");
        tcp_pages_after_ = tcp_mem_pages();
    }
    self_cpu_start_ = self_cpu_s();
    if (opt_.server_pid)
        server_cpu_start_ = proc_cpu_s(opt_.server_pid);
}

void LoadGen::sample_window_end() {
    window_ended_ = true;
    const int64_t now = now_ns();
    measured_s_ = double(std::min(now, window_end_ns_) - window_start_ns_) / 1e9;
    if (measured_s_ <= 0)
        measured_s_ = opt_.duration_s;
    self_cpu_window_ = self_cpu_s() - self_cpu_start_;
    if (opt_.server_pid) {
        const auto end_cpu = proc_cpu_s(opt_.server_pid);
        if (end_cpu && server_cpu_start_)
            server_cpu_window_ = *end_cpu - *server_cpu_start_;
        server_rss_kb_ = proc_status_kb(opt_.server_pid, "VmRSS");
        server_hwm_kb_ = proc_status_kb(opt_.server_pid, "VmHWM");
    }
}

int LoadGen::run() {
    if (opt_.mode == "idle" && opt_.server_pid) {
        rss_before_kb_ = proc_status_kb(opt_.server_pid, "VmRSS");
        tcp_pages_before_ = tcp_mem_pages();
    }
    start_ns_ = now_ns();
    const double setup_s = setup_allowance_s(opt_);
    const int64_t setup_timeout_ns = int64_t(setup_s * 1e9);
    const int64_t hard_deadline_ns =
        start_ns_ +
        int64_t((opt_.warmup_s + opt_.duration_s + setup_s + double(hard_slack_s)) * 1e9);
    if (!open_all())
        return 1;
    int64_t drain_deadline_ns = 0, close_deadline_ns = 0;
    std::vector<epoll_event> events(256);

    while (phase_ != Phase::done) {
        int64_t now = now_ns();
        // Phase transitions, each bounded by a deadline.
        if (phase_ == Phase::setup) {
            while (!setup_failed_ && opened_ < conns_.size() &&
                   opened_ - ready_count_ < max_connecting) {
                if (!open_one(opened_)) {
                    setup_failed_ = true;
                    count_error("client:open_failed");
                }
                ++opened_;
            }
            if (setup_failed_ || now - start_ns_ > setup_timeout_ns) {
                if (!setup_failed_) {
                    setup_failed_ = true;
                    setup_failure_ = "timed out after " + std::to_string(int(setup_s)) +
                                     " s waiting for welcome+synced on " +
                                     std::to_string(conns_.size() - ready_count_) + " of " +
                                     std::to_string(conns_.size()) + " connections";
                    count_error("client:setup_timeout");
                }
                phase_ = Phase::closing;
                close_deadline_ns = now + close_timeout_ns;
                for (Conn& c : conns_)
                    begin_close(c, 1000);
            } else if (ready_count_ == conns_.size() && opt_.mode == "replay") {
                // The replay is over when the last device got `synced`.
                window_started_ = window_ended_ = true;
                window_start_ns_ = start_ns_;
                measured_s_ = double(synced_ns_ - start_ns_) / 1e9;
                window_.delivered = total_.delivered;
                if (opt_.server_pid) {
                    server_rss_kb_ = proc_status_kb(opt_.server_pid, "VmRSS");
                    server_hwm_kb_ = proc_status_kb(opt_.server_pid, "VmHWM");
                }
                phase_ = Phase::closing;
                close_deadline_ns = now + close_timeout_ns;
                for (Conn& c : conns_) {
                    send_receiver_ack(c);
                    begin_close(c, 1000);
                }
            } else if (ready_count_ == conns_.size()) {
                enter_running(now);
            }
        }
        if (phase_ == Phase::running) {
            if (!window_started_ && now >= window_start_ns_)
                sample_window_start();
            const bool count_done = opt_.count > 0 && total_.acked >= opt_.count;
            if (now >= window_end_ns_ || count_done) {
                if (count_done)
                    window_end_ns_ = now;
                if (!window_started_)
                    sample_window_start();
                sample_window_end();
                phase_ = Phase::draining;
                drain_deadline_ns = now + drain_timeout_ns;
            }
        }
        if (phase_ == Phase::draining) {
            bool idle = opt_.mode == "fill" || total_.delivered >= total_.acked * fanout_;
            for (const Conn& c : conns_) {
                // Only a live sender can still get acks; a closed one keeps its count.
                idle = idle && (c.inflight == 0 || c.state != ConnState::ready);
            }
            if (idle || now >= drain_deadline_ns) {
                phase_ = Phase::closing;
                close_deadline_ns = now + close_timeout_ns;
                for (Conn& c : conns_) {
                    if (c.state == ConnState::ready && c.role == Role::receiver) {
                        send_receiver_ack(c);
                    }
                    begin_close(c, 1000);
                }
            }
        }
        if (phase_ == Phase::closing) {
            bool all_dead = true;
            for (const Conn& c : conns_)
                all_dead = all_dead && c.state == ConnState::dead;
            if (all_dead || now >= close_deadline_ns)
                break;
        }
        if (now >= hard_deadline_ns) {
            count_error("client:hard_deadline");
            break;
        }

        if (phase_ == Phase::running) {
            for (Conn& c : conns_) {
                if (c.role == Role::sender)
                    pump_sender(c, now);
            }
        }
        for (Conn& c : conns_) {
            if (c.out_off < c.out.size() && !c.want_write)
                flush(c);
        }

        // Sleep until an event or the next deadline / paced send.
        int64_t wake_ns = now + 100'000'000;
        if (phase_ == Phase::running) {
            if (!window_started_)
                wake_ns = std::min(wake_ns, window_start_ns_);
            wake_ns = std::min(wake_ns, window_end_ns_);
            if (opt_.rate > 0) {
                for (const Conn& c : conns_) {
                    if (c.role == Role::sender && c.state == ConnState::ready &&
                        c.inflight < opt_.window) {
                        wake_ns = std::min(wake_ns, paced_due_ns(c));
                    }
                }
            }
        }
        wake_ns = std::min(wake_ns, hard_deadline_ns);
        const int64_t wait_ns = wake_ns - now_ns();
        const int timeout_ms = wait_ns <= 0 ? 0 : int((wait_ns + 999'999) / 1'000'000);
        const int n = epoll_wait(epoll_.get(), events.data(), int(events.size()), timeout_ms);
        if (n < 0 && errno != EINTR) {
            std::fprintf(stderr, "loadgen: epoll_wait: %s\n", errno_text(errno).c_str());
            break;
        }
        for (int i = 0; i < n; ++i)
            on_event(conns_[events[i].data.u64], events[i].events);
    }
    if (!setup_failed_ && !window_ended_) {
        if (!window_started_)
            sample_window_start();
        sample_window_end();
    }
    for (Conn& c : conns_)
        c.fd.reset();
    report();
    return setup_failed_ ? 1 : 0;
}

void LoadGen::report() const {
    auto ack = ack_lat_ns_;
    auto deliver = deliver_lat_ns_;
    const double ack_p50 = percentile_us(ack, 0.50), ack_p99 = percentile_us(ack, 0.99);
    const double del_p50 = percentile_us(deliver, 0.50), del_p99 = percentile_us(deliver, 0.99);
    const double secs = measured_s_ > 0 ? measured_s_ : opt_.duration_s;
    const double msgs_per_s = setup_failed_ ? 0 : double(window_.delivered) / secs;
    const double client_cpu_pct = setup_failed_ ? 0 : 100.0 * self_cpu_window_ / secs;
    std::optional<double> server_cpu_pct;
    if (server_cpu_window_)
        server_cpu_pct = 100.0 * *server_cpu_window_ / secs;
    uint64_t unacked = 0;
    for (const Conn& c : conns_)
        unacked += c.inflight;
    const int64_t undelivered =
        opt_.mode == "pairs" ? int64_t(total_.acked * fanout_) - int64_t(total_.delivered) : 0;

    auto num = [](double v, int decimals) {
        if (std::isnan(v))
            return std::string("null");
        char buf[48];
        std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
        return std::string(buf);
    };
    std::string errors_json = "{", errors_text;
    for (const auto& [code, count] : errors_) {
        if (errors_json.size() > 1)
            errors_json += ',';
        append_json_string(errors_json, code);
        errors_json += ':' + std::to_string(count);
        errors_text += (errors_text.empty() ? "" : " ") + code + "=" + std::to_string(count);
    }
    errors_json += '}';
    if (errors_text.empty())
        errors_text = "none";

    if (opt_.json) {
        std::string j = "{";
        j += "\"status\":";
        append_json_string(j, setup_failed_ ? "setup_failed" : "ok");
        if (setup_failed_) {
            j += ",\"failure\":";
            append_json_string(j, setup_failure_);
        }
        j += ",\"broker\":\"meshd\",\"mode\":";
        append_json_string(j, !opt_.group.empty()   ? std::string("fanout")
                              : !opt_.skill.empty() ? std::string("dispatch")
                                                    : opt_.mode);
        j += ",\"pairs\":" + std::to_string(senders_);
        j += ",\"members\":" + std::to_string(opt_.members);
        j += ",\"agents\":" + std::to_string(opt_.agents);
        j += ",\"task_frames\":" + std::to_string(task_frames_);
        j += ",\"acks_per_s\":" + num(setup_failed_ ? 0 : double(window_.acked) / secs, 1);
        if (opt_.mode == "idle") {
            auto opt_int = [](const std::optional<int64_t>& v) {
                return v ? std::to_string(*v) : std::string("null");
            };
            j += ",\"conns\":" + std::to_string(ready_count_);
            j += ",\"rss_before_kb\":" + opt_int(rss_before_kb_);
            j += ",\"rss_after_kb\":" + opt_int(rss_after_kb_);
            j += ",\"tcp_mem_pages_before\":" + opt_int(tcp_pages_before_);
            j += ",\"tcp_mem_pages_after\":" + opt_int(tcp_pages_after_);
            j += ",\"page_bytes\":" + std::to_string(sysconf(_SC_PAGESIZE));
        }
        j += ",\"window\":" + std::to_string(opt_.window);
        j += ",\"rate\":" + num(opt_.rate, 0);
        j += ",\"body_bytes\":" + std::to_string(opt_.body_bytes);
        j += ",\"warmup_s\":" + num(opt_.warmup_s, 3);
        j += ",\"duration_s\":" + num(secs, 3);
        j += ",\"sent\":" + std::to_string(window_.sent);
        j += ",\"acked\":" + std::to_string(window_.acked);
        j += ",\"delivered\":" + std::to_string(window_.delivered);
        j += ",\"msgs_per_s\":" + num(msgs_per_s, 1);
        j += ",\"ack_p50_us\":" + num(ack_p50, 1);
        j += ",\"ack_p99_us\":" + num(ack_p99, 1);
        j += ",\"deliver_p50_us\":" + num(del_p50, 1);
        j += ",\"deliver_p99_us\":" + num(del_p99, 1);
        j += ",\"total_sent\":" + std::to_string(total_.sent);
        j += ",\"total_acked\":" + std::to_string(total_.acked);
        j += ",\"total_delivered\":" + std::to_string(total_.delivered);
        j += ",\"unacked_at_end\":" + std::to_string(unacked);
        j += ",\"undelivered_at_end\":" + std::to_string(undelivered);
        j += ",\"client_cpu_pct\":" + num(client_cpu_pct, 1);
        j += ",\"server_cpu_pct\":" + (server_cpu_pct ? num(*server_cpu_pct, 1) : "null");
        j += ",\"server_rss_kb\":" + (server_rss_kb_ ? std::to_string(*server_rss_kb_) : "null");
        j += ",\"server_hwm_kb\":" + (server_hwm_kb_ ? std::to_string(*server_hwm_kb_) : "null");
        j += ",\"errors\":" + errors_json + "}\n";
        std::fputs(j.c_str(), stdout);
    } else {
        auto us = [&](double v) { return std::isnan(v) ? std::string("-") : num(v, 1); };
        std::printf("loadgen: pairs=%zu window=%u rate=%s body_bytes=%zu warmup=%.3gs "
                    "measured=%.3fs\n",
                    opt_.pairs, opt_.window, opt_.rate > 0 ? num(opt_.rate, 0).c_str() : "max",
                    opt_.body_bytes, opt_.warmup_s, secs);
        if (setup_failed_)
            std::printf("  status          setup_failed: %s\n", setup_failure_.c_str());
        std::printf("  sent            %" PRIu64 "\n", window_.sent);
        std::printf("  acked           %" PRIu64 "\n", window_.acked);
        std::printf("  delivered       %" PRIu64 "\n", window_.delivered);
        std::printf("  msgs/s          %s\n", num(msgs_per_s, 1).c_str());
        std::printf("  ack us          p50 %s  p99 %s\n", us(ack_p50).c_str(), us(ack_p99).c_str());
        std::printf("  deliver us      p50 %s  p99 %s\n", us(del_p50).c_str(), us(del_p99).c_str());
        std::printf("  totals          sent %" PRIu64 " acked %" PRIu64 " delivered %" PRIu64
                    " (unacked at end %" PRIu64 ", acked-but-undelivered %" PRId64 ")\n",
                    total_.sent, total_.acked, total_.delivered, unacked, undelivered);
        std::printf("  cpu             client %s%%", num(client_cpu_pct, 1).c_str());
        if (server_cpu_pct)
            std::printf("  meshd %s%%", num(*server_cpu_pct, 1).c_str());
        if (server_rss_kb_)
            std::printf("  meshd rss %" PRId64 " KiB", *server_rss_kb_);
        std::printf("\n  errors          %s\n", errors_text.c_str());
    }
    std::fflush(stdout);
}

// ---------------------------------------------------------------------------------------------

bool self_test() {
    // RFC 6455 §1.3 example and the FIPS 180 "abc" vector.
    const auto abc = sha1("abc");
    static constexpr uint8_t want_abc[20] = {0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81,
                                             0x6a, 0xba, 0x3e, 0x25, 0x71, 0x78, 0x50,
                                             0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d};
    bool ok = std::memcmp(abc.data(), want_abc, 20) == 0;
    ok = ok && ws_accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
    int64_t t = 0;
    std::string_view raw_body;
    ok = ok && scan_object(R"({"type":"msg","x":{"a":["}",{"b":"\"{"}]},"body":{"p":"x","t":42}})",
                           [&](std::string_view k, std::string_view v) {
                               if (k == "body")
                                   raw_body = v;
                           });
    ok = ok && scan_object(raw_body, [&](std::string_view k, std::string_view v) {
             if (k == "t")
                 t = json_int(v).value_or(0);
         });
    ok = ok && t == 42;
    std::printf("self-test %s\n", ok ? "ok" : "FAILED");
    return ok;
}

void on_hard_deadline(int) {
    static constexpr char message[] = "loadgen: hard deadline reached, exiting\n";
    (void)!::write(2, message, sizeof message - 1);
    _exit(3);
}

} // namespace
} // namespace meshd::bench

int main(int argc, char** argv) {
    using namespace meshd::bench;
    if (argc == 2 && std::string_view(argv[1]) == "--self-test")
        return self_test() ? 0 : 1;
    auto opt = parse_options(argc, argv);
    if (!opt) {
        usage(stderr);
        return 2;
    }
    if (opt->help) {
        usage(stdout);
        return 0;
    }
    const size_t need = opt->mode == "idle"   ? 1
                        : !opt->group.empty() ? 1 + opt->members
                        : !opt->skill.empty() ? opt->pairs + opt->agents
                                              : 2 * opt->pairs;
    auto creds = read_tokens(opt->tokens_path, opt->mode == "idle" ? opt->conns : need, need);
    if (!creds)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    // Backstop only: the loop's own deadlines end it sooner. alarm() is whole seconds.
    signal(SIGALRM, on_hard_deadline);
    alarm(unsigned(std::ceil(opt->warmup_s + opt->duration_s + setup_allowance_s(*opt))) +
          unsigned(hard_slack_s));
    LoadGen gen(std::move(*opt), std::move(*creds));
    return gen.run();
}
