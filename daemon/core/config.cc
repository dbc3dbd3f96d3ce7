// core/config: the key table and everything it drives. Reading meshd.toml with toml++ into a
// Config, the `FILE:LINE:COL: message` errors of `meshd --check` and `meshctl reload`,
// config_keys() for the man page and tests, and diff_config() for reload.
//
// Each core key is declared exactly once, in key_table below: name, kind, default (as TOML),
// range, reloadable, help, and the setter that validates a node and stores it. Defaults are
// TOML text run through the same setters, so a default can never disagree with its checks.
//
// Reading a file (parse_config):
//   1. toml::parse; a syntax error stops here (toml++ stops at the first one).
//   2. every key of the core sections goes through its setter; unknown keys are errors.
//   3. keys the file did not set get their default.
//   4. other top-level tables: a module's own table if named in modules.load, else an error.
//   5. errors are sorted by position; any error means no Config.
#include "core/config.h"

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <netinet/in.h>
#include <optional>
#include <span>
#include <sys/un.h>
#include <toml++/toml.h>
#include <type_traits>
#include <unistd.h>
#include <utility>
#include <variant>

namespace meshd::core {

namespace {

// ---- errors -------------------------------------------------------------------------------

// Collects every error of one file, with the directory that anchors its relative paths.
class Checker {
  public:
    explicit Checker(const std::string& file) : file_(file), base_dir_(config_dir(file)) {}

    void error(const toml::source_position& at, std::string message) {
        errors_.push_back(ConfigError{file_, static_cast<int>(at.line), static_cast<int>(at.column),
                                      std::move(message)});
    }
    void error(std::string message) {
        errors_.push_back(ConfigError{file_, 0, 0, std::move(message)});
    }
    bool failed() const { return !errors_.empty(); }
    const std::filesystem::path& base_dir() const { return base_dir_; }

    // In file order; errors found at the same place keep the order they were found in.
    std::vector<ConfigError> take_sorted() {
        std::stable_sort(errors_.begin(), errors_.end(),
                         [](const ConfigError& a, const ConfigError& b) {
                             return std::pair(a.line, a.column) < std::pair(b.line, b.column);
                         });
        return std::move(errors_);
    }

  private:
    // Relative paths in the file are relative to the file's own directory; a relative config
    // path is itself taken from the current directory.
    static std::filesystem::path config_dir(const std::string& file) {
        std::error_code ec;
        std::filesystem::path cwd = std::filesystem::current_path(ec);
        if (ec)
            cwd = "/";
        if (file.empty())
            return cwd;
        std::filesystem::path p(file);
        if (p.is_relative())
            p = cwd / p;
        return p.lexically_normal().parent_path();
    }

    std::string file_;
    std::filesystem::path base_dir_;
    std::vector<ConfigError> errors_;
};

// Where a node is, falling back to its key for nodes toml++ gave no position.
toml::source_position where(const toml::key& key, const toml::node& node) {
    return node.source().begin.line != 0 ? node.source().begin : key.source().begin;
}

// Appends c, with control characters escaped as TOML writes them, so a message stays one line.
void append_escaped(std::string& out, char c) {
    auto u = static_cast<unsigned char>(c);
    if (c == '\n') {
        out += "\\n";
    } else if (c == '\r') {
        out += "\\r";
    } else if (c == '\t') {
        out += "\\t";
    } else if (u < 0x20 || u == 0x7f) {
        static constexpr char hex[] = "0123456789ABCDEF";
        out += "\\u00";
        out += hex[u >> 4];
        out += hex[u & 15];
    } else {
        out += c;
    }
}

// A string as TOML would write it, cut short so that one error stays one line.
std::string quote_toml(std::string_view s) {
    constexpr size_t max_shown = 60;
    std::string out = "\"";
    size_t shown = 0;
    for (char c : s) {
        if (++shown > max_shown) {
            out += "...";
            break;
        }
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else {
            append_escaped(out, c);
        }
    }
    out += '"';
    return out;
}

// A key as written in TOML: bare when it can be, quoted otherwise.
std::string key_text(std::string_view k) {
    bool bare = !k.empty() && std::all_of(k.begin(), k.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '_' || c == '-';
    });
    return bare ? std::string(k) : quote_toml(k);
}

// What a wrong value was, for "..., got X".
std::string describe(const toml::node& node) {
    switch (node.type()) {
    case toml::node_type::string:
        return quote_toml(node.as_string()->get());
    case toml::node_type::integer:
        return std::to_string(node.as_integer()->get());
    case toml::node_type::floating_point: {
        char buf[64];
        auto [end, ec] = std::to_chars(buf, buf + sizeof buf, node.as_floating_point()->get());
        std::string text = ec == std::errc() ? std::string(buf, end) : std::string("?");
        return text + " (a float)";
    }
    case toml::node_type::boolean:
        return node.as_boolean()->get() ? "true" : "false";
    case toml::node_type::array:
        return "an array";
    case toml::node_type::table:
        return "a table";
    case toml::node_type::date:
        return "a date";
    case toml::node_type::time:
        return "a time";
    case toml::node_type::date_time:
        return "a date-time";
    case toml::node_type::none:
        break;
    }
    return "nothing";
}

// Edit distance counting a swap of two neighbours as one edit (optimal string alignment),
// for did-you-mean hints: "wrod" is one edit from "word".
size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<size_t> before(b.size() + 1), prev(b.size() + 1), row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j)
        prev[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        row[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            row[j] = std::min({prev[j] + 1, row[j - 1] + 1, prev[j - 1] + cost});
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                row[j] = std::min(row[j], before[j - 2] + 1);
        }
        before.swap(prev);
        prev.swap(row);
    }
    return prev[b.size()];
}

// The closest candidate if it is close enough to be a likely typo.
std::optional<std::string_view> closest(std::string_view word,
                                        const std::vector<std::string_view>& candidates) {
    std::optional<std::string_view> best;
    size_t best_distance = 0;
    for (std::string_view c : candidates) {
        size_t d = edit_distance(word, c);
        size_t allowed = std::clamp<size_t>(c.size() / 3, 1, 2);
        if (d <= allowed && (!best || d < best_distance)) {
            best = c;
            best_distance = d;
        }
    }
    return best;
}

// "a", "b" or "c"
std::string one_of(std::span<const std::string_view> choices) {
    std::string out;
    for (size_t i = 0; i < choices.size(); ++i) {
        if (i > 0)
            out += i + 1 == choices.size() ? " or " : ", ";
        out += quote_toml(choices[i]);
    }
    return out;
}

std::string joined(const std::vector<std::string_view>& words) {
    std::string out;
    for (std::string_view w : words) {
        if (!out.empty())
            out += ", ";
        out += w;
    }
    return out;
}

// ---- the key table ------------------------------------------------------------------------

enum class Kind { integer, choice, path, listen, module_list };

struct KeySpec;
// Validates `node` and stores it into the Config, or reports why not.
using SetFn = void (*)(const KeySpec&, const toml::node&, Checker&, Config&);
using SameFn = bool (*)(const Config&, const Config&);

struct KeySpec {
    std::string_view name; // "section.key"
    Kind kind;
    std::string_view default_toml;
    int64_t min = 0; // Kind::integer
    int64_t max = 0;
    std::span<const std::string_view> choices = {}; // Kind::choice, in enum order
    bool reloadable = false;
    std::string_view help;
    SetFn set = nullptr;
    SameFn same = nullptr;

    std::string_view section() const { return name.substr(0, name.find('.')); }
    std::string_view key() const { return name.substr(name.find('.') + 1); }
};

constexpr std::string_view sync_names[] = {"normal", "full"};
constexpr std::string_view log_level_names[] = {"debug", "info", "warn", "error"};
static_assert(static_cast<size_t>(SyncMode::full) == 1);
static_assert(static_cast<size_t>(LogLevel::error) == 3);

constexpr size_t module_name_max = 64;
// sun_path holds the path and its terminating NUL.
constexpr size_t socket_path_max = sizeof(sockaddr_un::sun_path) - 1;

template <auto M> bool same_member(const Config& a, const Config& b) {
    return a.*M == b.*M;
}

bool same_listen(const Config& a, const Config& b) {
    return std::equal(a.listen.begin(), a.listen.end(), b.listen.begin(), b.listen.end(),
                      [](const ListenAddr& x, const ListenAddr& y) {
                          return x.host == y.host && x.port == y.port;
                      });
}

std::string range_text(const KeySpec& k) {
    return std::to_string(k.min) + ".." + std::to_string(k.max);
}

template <int64_t Config::*M>
void set_integer(const KeySpec& k, const toml::node& node, Checker& c, Config& cfg) {
    const auto* v = node.as_integer();
    if (v && v->get() >= k.min && v->get() <= k.max) {
        cfg.*M = v->get();
        return;
    }
    c.error(node.source().begin, std::string(k.name) + " must be an integer " + range_text(k) +
                                     ", got " + describe(node));
}

template <auto M>
void set_choice(const KeySpec& k, const toml::node& node, Checker& c, Config& cfg) {
    using Enum = std::remove_reference_t<decltype(cfg.*M)>;
    if (const auto* v = node.as_string()) {
        auto it = std::find(k.choices.begin(), k.choices.end(), v->get());
        if (it != k.choices.end()) {
            cfg.*M = static_cast<Enum>(it - k.choices.begin());
            return;
        }
    }
    c.error(node.source().begin,
            std::string(k.name) + " must be " + one_of(k.choices) + ", got " + describe(node));
}

// Relative paths are taken from the config file's directory.
std::string resolve_path(const Checker& c, std::string_view text) {
    std::filesystem::path p(text);
    if (p.is_relative())
        p = (c.base_dir() / p).lexically_normal();
    std::string out = p.string();
    while (out.size() > 1 && out.back() == '/')
        out.pop_back();
    return out;
}

// Checks a path value; returns it resolved, or nothing after reporting why not.
std::optional<std::string> read_path(const KeySpec& k, const toml::node& node, Checker& c) {
    const auto* v = node.as_string();
    if (!v) {
        c.error(node.source().begin,
                std::string(k.name) + " must be a path string, got " + describe(node));
        return std::nullopt;
    }
    const std::string& text = v->get();
    if (text.empty()) {
        c.error(node.source().begin, std::string(k.name) + " must be a non-empty path, got \"\"");
        return std::nullopt;
    }
    if (text.find('\0') != std::string::npos) {
        c.error(node.source().begin,
                std::string(k.name) + " must not contain a NUL character, got " + quote_toml(text));
        return std::nullopt;
    }
    return resolve_path(c, text);
}

template <std::string Config::*M>
void set_path(const KeySpec& k, const toml::node& node, Checker& c, Config& cfg) {
    if (auto path = read_path(k, node, c))
        cfg.*M = std::move(*path);
}

void set_socket_path(const KeySpec& k, const toml::node& node, Checker& c, Config& cfg) {
    auto path = read_path(k, node, c);
    if (!path)
        return;
    if (path->size() > socket_path_max) {
        c.error(node.source().begin,
                std::string(k.name) + " is " + quote_toml(*path) + " (" +
                    std::to_string(path->size()) + " bytes), longer than the " +
                    std::to_string(socket_path_max) +
                    " bytes a Unix socket path may have: choose a shorter path");
        return;
    }
    cfg.control_socket = std::move(*path);
}

// "host:port" -> ListenAddr, or the reason it is not one.
std::variant<ListenAddr, std::string> parse_listen(std::string_view text) {
    ListenAddr addr;
    addr.text = std::string(text);
    std::string_view port;
    if (!text.empty() && text.front() == '[') {
        size_t close = text.find(']');
        if (close == std::string_view::npos)
            return std::string("missing ']' after the IPv6 address, e.g. \"[::1]:7700\"");
        addr.host = std::string(text.substr(1, close - 1));
        std::string_view rest = text.substr(close + 1);
        if (rest.empty() || rest.front() != ':')
            return std::string("missing \":port\" after ']', e.g. \"[::1]:7700\"");
        port = rest.substr(1);
        in6_addr ip6{};
        if (inet_pton(AF_INET6, addr.host.c_str(), &ip6) != 1)
            return "host " + quote_toml(addr.host) +
                   " in brackets is not a numeric IPv6 address; write IPv4 without brackets, "
                   "e.g. \"127.0.0.1:7700\"";
    } else {
        size_t colon = text.rfind(':');
        if (colon == std::string_view::npos)
            return std::string("missing port; write \"host:port\", e.g. \"127.0.0.1:7700\"");
        addr.host = std::string(text.substr(0, colon));
        port = text.substr(colon + 1);
        if (addr.host.find(':') != std::string::npos)
            return std::string("an IPv6 address must be in brackets, e.g. \"[::1]:7700\"");
        if (addr.host.empty())
            return std::string("missing host; write 0.0.0.0 to listen on all IPv4 addresses, "
                               "e.g. \"0.0.0.0:7700\"");
        in_addr ip4{};
        if (inet_pton(AF_INET, addr.host.c_str(), &ip4) != 1)
            return "host " + quote_toml(addr.host) +
                   " is not a numeric IP address; host names are not resolved: write an IPv4 "
                   "address like 127.0.0.1 or an IPv6 address in brackets like [::1]";
    }
    unsigned value = 0;
    bool digits =
        !port.empty() && port.size() <= 5 &&
        std::all_of(port.begin(), port.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
    if (digits)
        std::from_chars(port.data(), port.data() + port.size(), value);
    if (!digits || value > 65535)
        return "port must be an integer 0..65535, got " + quote_toml(port);
    addr.port = static_cast<uint16_t>(value);
    return addr;
}

void set_listen(const KeySpec& k, const toml::node& node, Checker& c, Config& cfg) {
    const std::string name(k.name);
    const auto* list = node.as_array();
    if (!list) {
        c.error(node.source().begin,
                name +
                    " must be an array of \"host:port\" strings, e.g. [\"127.0.0.1:7700\"], got " +
                    describe(node));
        return;
    }
    if (list->empty()) {
        c.error(node.source().begin,
                name + " must list at least one \"host:port\" address, e.g. [\"127.0.0.1:7700\"]");
        return;
    }
    std::vector<ListenAddr> out;
    for (size_t i = 0; i < list->size(); ++i) {
        const toml::node& item = *list->get(i);
        const std::string item_name = name + "[" + std::to_string(i) + "]";
        const auto* s = item.as_string();
        if (!s) {
            c.error(item.source().begin,
                    item_name + " must be a \"host:port\" string, got " + describe(item));
            continue;
        }
        auto parsed = parse_listen(s->get());
        if (auto* why = std::get_if<std::string>(&parsed)) {
            c.error(item.source().begin, item_name + " " + quote_toml(s->get()) + ": " + *why);
            continue;
        }
        auto& addr = std::get<ListenAddr>(parsed);
        // Port 0 picks a free port each time, so two of them never collide.
        auto dup = std::find_if(out.begin(), out.end(), [&](const ListenAddr& a) {
            return addr.port != 0 && a.host == addr.host && a.port == addr.port;
        });
        if (dup != out.end()) {
            c.error(item.source().begin, item_name + " " + quote_toml(s->get()) +
                                             " is listed twice (first as " + quote_toml(dup->text) +
                                             ")");
            continue;
        }
        out.push_back(std::move(addr));
    }
    cfg.listen = std::move(out);
}

bool is_core_section(std::string_view name);

bool is_module_name(std::string_view s) {
    return !s.empty() && s.size() <= module_name_max &&
           std::all_of(s.begin(), s.end(), [](char ch) {
               return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_';
           });
}

// Keeps the valid names even when others are wrong: they still tell module tables apart
// from unknown sections, so one mistake does not cause a cascade of errors.
void set_module_list(const KeySpec& k, const toml::node& node, Checker& c, Config& cfg) {
    const std::string name(k.name);
    const auto* list = node.as_array();
    if (!list) {
        c.error(node.source().begin, name +
                                         " must be an array of module names, e.g. [\"auth_token\", "
                                         "\"route_direct\"], got " +
                                         describe(node));
        return;
    }
    std::vector<std::string> out;
    for (size_t i = 0; i < list->size(); ++i) {
        const toml::node& item = *list->get(i);
        const std::string item_name = name + "[" + std::to_string(i) + "]";
        const auto* s = item.as_string();
        if (!s || !is_module_name(s->get())) {
            c.error(item.source().begin,
                    item_name + " must be a module name of 1 to 64 characters a-z, 0-9 or _, got " +
                        describe(item));
            continue;
        }
        const std::string& module = s->get();
        if (is_core_section(module)) {
            std::string msg = item_name + " " + quote_toml(module);
            msg += " cannot be a module name: [" + module + "] is a core section";
            c.error(item.source().begin, std::move(msg));
            continue;
        }
        if (std::find(out.begin(), out.end(), module) != out.end()) {
            c.error(item.source().begin, item_name + " " + quote_toml(module) + " is listed twice");
            continue;
        }
        out.push_back(module);
    }
    cfg.modules_load = std::move(out);
}

// clang-format off
constexpr KeySpec key_table[] = {
    {.name = "server.listen", .kind = Kind::listen,
     .default_toml = R"(["127.0.0.1:7700"])",
     .help = "addresses to accept WebSocket connections on, \"host:port\" with a numeric IPv4 "
             "host or \"[IPv6]:port\"; port 0 picks a free port (the real one is logged)",
     .set = set_listen, .same = same_listen},
    {.name = "server.data_dir", .kind = Kind::path,
     .default_toml = R"("/var/lib/meshd")",
     .help = "directory holding the database (meshd.db) and secret.key",
     .set = set_path<&Config::data_dir>, .same = same_member<&Config::data_dir>},
    {.name = "control.socket", .kind = Kind::path,
     .default_toml = R"("/run/meshd/control.sock")",
     .help = "Unix socket that meshctl connects to",
     .set = set_socket_path, .same = same_member<&Config::control_socket>},
    {.name = "modules.dir", .kind = Kind::path,
     .default_toml = R"("/usr/lib/meshd/modules")",
     .help = "directory the modules are loaded from, as DIR/NAME.so",
     .set = set_path<&Config::modules_dir>, .same = same_member<&Config::modules_dir>},
    {.name = "modules.load", .kind = Kind::module_list,
     .default_toml =
         R"(["auth_token", "auth_ed25519", "route_direct", "route_groups", "route_skills"])",
     .help = "modules to load, in order",
     .set = set_module_list, .same = same_member<&Config::modules_load>},
    {.name = "limits.max_frame", .kind = Kind::integer,
     .default_toml = "1048576", .min = 1024, .max = 16777216, .reloadable = true,
     .help = "largest WebSocket frame accepted, in bytes; a larger one gets error too_large",
     .set = set_integer<&Config::max_frame>, .same = same_member<&Config::max_frame>},
    {.name = "limits.max_depth", .kind = Kind::integer,
     .default_toml = "64", .min = 2, .max = 1024, .reloadable = true,
     .help = "deepest JSON nesting accepted in a frame; deeper gets error bad_frame",
     .set = set_integer<&Config::max_depth>, .same = same_member<&Config::max_depth>},
    {.name = "limits.max_queue", .kind = Kind::integer,
     .default_toml = "4194304", .min = 65536, .max = 1073741824, .reloadable = true,
     .help = "bytes of output queued per connection; past it the connection is closed with 4001",
     .set = set_integer<&Config::max_queue>, .same = same_member<&Config::max_queue>},
    {.name = "limits.max_inflight", .kind = Kind::integer,
     .default_toml = "1024", .min = 1, .max = 65536, .reloadable = true,
     .help = "unacknowledged sends per connection; past it sends get error rate_limited",
     .set = set_integer<&Config::max_inflight>, .same = same_member<&Config::max_inflight>},
    {.name = "limits.max_devices", .kind = Kind::integer,
     .default_toml = "32", .min = 1, .max = 1024, .reloadable = true,
     .help = "devices per principal; a new device past it is refused",
     .set = set_integer<&Config::max_devices>, .same = same_member<&Config::max_devices>},
    {.name = "limits.hello_timeout_ms", .kind = Kind::integer,
     .default_toml = "10000", .min = 100, .max = 600000, .reloadable = true,
     .help = "time a new connection has to send hello, in milliseconds",
     .set = set_integer<&Config::hello_timeout_ms>,
     .same = same_member<&Config::hello_timeout_ms>},
    {.name = "limits.ping_interval_ms", .kind = Kind::integer,
     .default_toml = "30000", .min = 100, .max = 3600000, .reloadable = true,
     .help = "interval between pings, in milliseconds; two missed pongs close the connection",
     .set = set_integer<&Config::ping_interval_ms>,
     .same = same_member<&Config::ping_interval_ms>},
    {.name = "storage.sync", .kind = Kind::choice,
     .default_toml = R"("normal")", .choices = sync_names,
     .help = "SQLite synchronous mode: normal (WAL, a power cut may lose the last commits) or "
             "full (every commit reaches the disk)",
     .set = set_choice<&Config::sync>, .same = same_member<&Config::sync>},
    {.name = "storage.dedupe_window_s", .kind = Kind::integer,
     .default_toml = "86400", .min = 1, .max = 31536000, .reloadable = true,
     .help = "how long a send id is remembered to acknowledge a resend as a duplicate, in seconds",
     .set = set_integer<&Config::dedupe_window_s>,
     .same = same_member<&Config::dedupe_window_s>},
    {.name = "storage.retention_days", .kind = Kind::integer,
     .default_toml = "0", .min = 0, .max = 36500, .reloadable = true,
     .help = "days a log entry is kept; 0 keeps everything",
     .set = set_integer<&Config::retention_days>, .same = same_member<&Config::retention_days>},
    {.name = "storage.max_log_entries", .kind = Kind::integer,
     .default_toml = "0", .min = 0, .max = 1000000000000, .reloadable = true,
     .help = "entries each principal's log keeps at most; 0 keeps everything",
     .set = set_integer<&Config::max_log_entries>,
     .same = same_member<&Config::max_log_entries>},
    {.name = "storage.cache_bytes", .kind = Kind::integer,
     .default_toml = "67108864", .min = 0, .max = 17179869184, .reloadable = true,
     .help = "memory for the newest log entries of every principal together, in bytes",
     .set = set_integer<&Config::cache_bytes>, .same = same_member<&Config::cache_bytes>},
    {.name = "storage.checkpoint_wal_bytes", .kind = Kind::integer,
     .default_toml = "268435456", .min = 1048576, .max = 17179869184,
     .help = "WAL size in bytes that triggers a checkpoint",
     .set = set_integer<&Config::checkpoint_wal_bytes>,
     .same = same_member<&Config::checkpoint_wal_bytes>},
    {.name = "log.level", .kind = Kind::choice,
     .default_toml = R"("info")", .choices = log_level_names, .reloadable = true,
     .help = "least severe log level written to stderr",
     .set = set_choice<&Config::log_level>, .same = same_member<&Config::log_level>},
    {.name = "presence.grace_ms", .kind = Kind::integer,
     .default_toml = "5000", .min = 0, .max = 600000, .reloadable = true,
     .help = "how long a principal whose last device went away still shows online, in "
             "milliseconds; a reconnect within it shows no offline/online flap",
     .set = set_integer<&Config::presence_grace_ms>,
     .same = same_member<&Config::presence_grace_ms>},
    {.name = "presence.away_after_s", .kind = Kind::integer,
     .default_toml = "300", .min = 0, .max = 604800, .reloadable = true,
     .help = "seconds without a frame from any device after which an available principal shows "
             "away; 0 turns automatic away off",
     .set = set_integer<&Config::away_after_s>, .same = same_member<&Config::away_after_s>},
    {.name = "presence.max_watch", .kind = Kind::integer,
     .default_toml = "1000", .min = 1, .max = 100000, .reloadable = true,
     .help = "principals one connection may watch; a longer watch list gets error too_large",
     .set = set_integer<&Config::max_watch>, .same = same_member<&Config::max_watch>},
    {.name = "directory.max_profile_bytes", .kind = Kind::integer,
     .default_toml = "8192", .min = 256, .max = 1048576, .reloadable = true,
     .help = "largest directory profile, in bytes of its stored JSON; larger gets error too_large",
     .set = set_integer<&Config::max_profile_bytes>,
     .same = same_member<&Config::max_profile_bytes>},
    {.name = "history.readers", .kind = Kind::integer,
     .default_toml = "2", .min = 1, .max = 16,
     .help = "threads (each with its own database connection) that read history pages and "
             "receipts off the event loop",
     .set = set_integer<&Config::history_readers>,
     .same = same_member<&Config::history_readers>},
    {.name = "history.max_inflight", .kind = Kind::integer,
     .default_toml = "4", .min = 1, .max = 64, .reloadable = true,
     .help = "history and receipts queries per connection that may await their answer; past "
             "it they get error rate_limited",
     .set = set_integer<&Config::history_max_inflight>,
     .same = same_member<&Config::history_max_inflight>},
    {.name = "typing.interval_ms", .kind = Kind::integer,
     .default_toml = "1000", .min = 100, .max = 60000, .reloadable = true,
     .help = "a typing start is relayed at most once per this many milliseconds per sender "
             "and conversation; more are dropped",
     .set = set_integer<&Config::typing_interval_ms>,
     .same = same_member<&Config::typing_interval_ms>},
    {.name = "tasks.lease_s", .kind = Kind::integer,
     .default_toml = "60", .min = 1, .max = 604800, .reloadable = true,
     .help = "seconds an agent whose devices all disconnected keeps its unfinished tasks; "
             "then they go back to the skill's queue",
     .set = set_integer<&Config::task_lease_s>, .same = same_member<&Config::task_lease_s>},
    {.name = "tasks.queue_cap", .kind = Kind::integer,
     .default_toml = "10000", .min = 1, .max = 10000000, .reloadable = true,
     .help = "messages that may wait in one skill's queue; a send past it gets error "
             "rate_limited",
     .set = set_integer<&Config::task_queue_cap>, .same = same_member<&Config::task_queue_cap>},
    {.name = "tasks.queue_ttl_s", .kind = Kind::integer,
     .default_toml = "86400", .min = 1, .max = 31536000, .reloadable = true,
     .help = "seconds a message may wait in a skill's queue; then it expires and its sender is "
             "told",
     .set = set_integer<&Config::task_queue_ttl_s>,
     .same = same_member<&Config::task_queue_ttl_s>},
};
// clang-format on

const KeySpec* find_key(std::string_view name) {
    for (const KeySpec& k : key_table)
        if (k.name == name)
            return &k;
    return nullptr;
}

// The core sections in table order: server, control, modules, limits, storage, log, presence,
// directory.
const std::vector<std::string_view>& core_sections() {
    static const std::vector<std::string_view> sections = [] {
        std::vector<std::string_view> out;
        for (const KeySpec& k : key_table)
            if (std::find(out.begin(), out.end(), k.section()) == out.end())
                out.push_back(k.section());
        return out;
    }();
    return sections;
}

bool is_core_section(std::string_view name) {
    const auto& s = core_sections();
    return std::find(s.begin(), s.end(), name) != s.end();
}

// The defaults as one TOML document, parsed once; setters read from it like from a file.
const toml::table& defaults() {
    static const toml::table table = [] {
        std::string text;
        for (const KeySpec& k : key_table) {
            text += k.name;
            text += " = ";
            text += k.default_toml;
            text += '\n';
        }
        try {
            return toml::parse(std::string_view(text), std::string_view("<defaults>"));
        } catch (const toml::parse_error&) {
            return toml::table(); // the "defaults" unit test catches this
        }
    }();
    return table;
}

// ---- reading a document -------------------------------------------------------------------

std::string unknown_key_message(std::string_view section, std::string_view key) {
    std::string full = std::string(section) + "." + key_text(key);
    std::vector<std::string_view> same_section;
    for (const KeySpec& k : key_table)
        if (k.section() == section)
            same_section.push_back(k.key());
    if (auto guess = closest(key, same_section))
        return "unknown key " + full + " (did you mean " + std::string(section) + "." +
               std::string(*guess) + "?)";
    for (const KeySpec& k : key_table)
        if (k.key() == key)
            return "unknown key " + full + ": " + std::string(key) + " belongs in [" +
                   std::string(k.section()) + "]";
    return "unknown key " + full + ": keys of [" + std::string(section) + "] are " +
           joined(same_section);
}

std::string core_section_list() {
    return "core sections are " + joined(core_sections());
}

void read_section(std::string_view section, const toml::table& table, Checker& c, Config& cfg,
                  std::vector<const KeySpec*>& seen) {
    for (auto&& [key, node] : table) {
        const KeySpec* spec = find_key(std::string(section) + "." + std::string(key.str()));
        if (!spec) {
            c.error(key.source().begin, unknown_key_message(section, key.str()));
            continue;
        }
        spec->set(*spec, node, c, cfg);
        seen.push_back(spec);
    }
}

void apply_defaults(const std::vector<const KeySpec*>& seen, Checker& c, Config& cfg) {
    for (const KeySpec& k : key_table) {
        if (std::find(seen.begin(), seen.end(), &k) != seen.end())
            continue;
        const toml::node* node = toml::at_path(defaults(), k.name).node();
        if (!node) {
            c.error("internal error: no default for " + std::string(k.name));
            continue;
        }
        k.set(k, *node, c, cfg);
    }
}

// A module's table, flattened: "key", "sub.key", ...
void flatten_module_table(const toml::table& table, const std::string& prefix, ModuleTable& out) {
    for (auto&& [key, node] : table) {
        std::string name =
            prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
        if (const auto* sub = node.as_table()) {
            flatten_module_table(*sub, name, out);
            continue;
        }
        ModuleValue value;
        value.described = describe(node);
        auto at = where(key, node);
        value.line = static_cast<int>(at.line);
        value.column = static_cast<int>(at.column);
        value.key_line = static_cast<int>(key.source().begin.line);
        value.key_column = static_cast<int>(key.source().begin.column);
        if (const auto* i = node.as_integer()) {
            value.type = ModuleValue::Type::integer;
            value.integer = i->get();
        } else if (const auto* b = node.as_boolean()) {
            value.type = ModuleValue::Type::boolean;
            value.boolean = b->get();
        } else if (const auto* s = node.as_string()) {
            value.type = ModuleValue::Type::string;
            value.string = s->get();
        } else if (const auto* f = node.as_floating_point()) {
            value.type = ModuleValue::Type::floating;
            value.floating = f->get();
        }
        out.insert_or_assign(std::move(name), std::move(value));
    }
}

void read_core_sections(const toml::table& root, Checker& c, Config& cfg) {
    std::vector<const KeySpec*> seen;
    for (std::string_view section : core_sections()) {
        const toml::node* node = root.get(section);
        if (!node)
            continue;
        if (const auto* table = node->as_table()) {
            read_section(section, *table, c, cfg, seen);
            continue;
        }
        c.error(node->source().begin, std::string(section) + " must be a table ([" +
                                          std::string(section) + "]), got " + describe(*node));
    }
    apply_defaults(seen, c, cfg);
}

// Everything at the top level that is not a core section: module tables, or errors.
void read_other_tables(const toml::table& root, Checker& c, Config& cfg) {
    std::vector<std::string_view> known = core_sections();
    for (const std::string& m : cfg.modules_load)
        known.push_back(m);
    for (auto&& [key, node] : root) {
        std::string_view name = key.str();
        if (is_core_section(name))
            continue;
        bool is_module = std::find(cfg.modules_load.begin(), cfg.modules_load.end(), name) !=
                         cfg.modules_load.end();
        if (is_module) {
            if (const auto* table = node.as_table()) {
                flatten_module_table(*table, "", cfg.module_tables[std::string(name)]);
                continue;
            }
            c.error(where(key, node), std::string(name) + " must be a table ([" +
                                          std::string(name) + "], the section of module " +
                                          std::string(name) + "), got " + describe(node));
            continue;
        }
        if (node.is_table() || node.is_array_of_tables()) {
            std::string msg = "unknown section [" + key_text(name) + "]";
            if (auto guess = closest(name, known))
                msg += " (did you mean [" + std::string(*guess) + "]?)";
            msg += ": " + core_section_list() +
                   "; a module's section must name a module listed in modules.load";
            c.error(where(key, node), std::move(msg));
            continue;
        }
        std::string msg = "unknown key " + key_text(name) + " at the top level";
        for (const KeySpec& k : key_table)
            if (k.key() == name) {
                c.error(key.source().begin, msg + ": " + std::string(name) + " belongs in [" +
                                                std::string(k.section()) + "]");
                msg.clear();
                break;
            }
        if (!msg.empty())
            c.error(key.source().begin,
                    msg + ": every key belongs in a section; " + core_section_list());
    }
}

// ---- a guard in front of toml++ ---------------------------------------------------------
//
// toml++ 3.3 (Debian 12's) asks is_whitespace() about non-ASCII characters in a few places,
// and for U+00A1..U+0499 and a few other ranges that lookup runs into __builtin_unreachable():
// undefined behaviour on text a user typed (toml++ issue #190, fixed upstream after 3.3; the
// config fuzzer found it with `aé = 1`). The places are: a character outside strings and
// comments, one right after a backslash in a """ string, and the first one after a
// line-ending backslash. TOML allows none of these but the last, so meshd refuses all of them
// before toml++ reads the text, at their position. Everywhere else (strings, comments) any
// UTF-8 passes through untouched.

struct UnsafeCharacter {
    toml::source_position at;
    std::string message;
};

// The character starting at text[i]: its code point and length; a byte that does not start
// valid UTF-8 counts as one character with `valid` false (toml++ reports it in a string; we
// report it elsewhere).
struct Utf8Char {
    char32_t code_point = 0;
    size_t length = 1;
    bool valid = false;
};

Utf8Char decode_utf8(std::string_view text, size_t i) {
    auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
    unsigned char lead = byte(i);
    size_t length = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    Utf8Char out{lead, 1, lead < 0x80};
    if (length == 1 || lead > 0xF4 || i + length > text.size())
        return out;
    char32_t cp = lead & (0x7F >> length);
    for (size_t k = 1; k < length; ++k) {
        if ((byte(i + k) & 0xC0) != 0x80)
            return out;
        cp = (cp << 6) | (byte(i + k) & 0x3F);
    }
    constexpr char32_t shortest[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < shortest[length] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return out;
    return Utf8Char{cp, length, true};
}

std::string code_point_text(const Utf8Char& c) {
    char buf[32];
    if (c.valid)
        std::snprintf(buf, sizeof buf, "U+%04X", static_cast<unsigned>(c.code_point));
    else
        std::snprintf(buf, sizeof buf, "byte 0x%02X (not UTF-8)",
                      static_cast<unsigned>(c.code_point));
    return buf;
}

// toml++ reads a value that starts with a digit or a sign ahead, up to the next space, tab,
// line break, comma, ], } or # and across quotes, asking of each character whether it is
// whitespace: the same undefined behaviour as a non-ASCII character outside a string. It
// also reads on past one space before a digit ("1979-05-27 07:32:00"). Returns the
// position of a non-ASCII byte in the run that starts at i; end: where the run ends.
std::optional<size_t> non_ascii_in_run(std::string_view text, size_t i, size_t& end) {
    auto ends_run = [](char c) {
        return c == ' ' || c == '\t' || (c >= '\n' && c <= '\r') || c == ',' || c == ']' ||
               c == '}' || c == '#';
    };
    size_t k = i;
    for (;;) {
        for (; k < text.size() && !ends_run(text[k]); ++k)
            if (static_cast<unsigned char>(text[k]) >= 0x80) {
                end = k;
                return k;
            }
        if (k + 1 < text.size() && text[k] == ' ' && text[k + 1] >= '0' && text[k + 1] <= '9') {
            ++k;
            continue;
        }
        end = k;
        return std::nullopt;
    }
}

std::optional<UnsafeCharacter> find_unsafe_character(std::string_view text) {
    enum class State { outside, comment, basic, literal, ml_basic, ml_literal };
    State state = State::outside;
    size_t line = 1, line_start = 0, i = 0;
    size_t run_checked_until = 0; // the digit-or-sign run checked last ends here
    // Where keys are (toml++ never reads ahead in a key, and `1="\u00e9"` is valid): at the
    // start of a statement, in a table header, after { or a comma of an inline table, up to
    // the =. `open` holds the brackets: a = array, h = header, i = inline table.
    bool in_key = true;
    std::string open;
    if (text.substr(0, 3) == "\xEF\xBB\xBF")
        i = line_start = 3; // a byte order mark, which toml++ skips
    auto fail = [&](size_t at, std::string message) {
        size_t column = 1;
        for (size_t k = line_start; k < at; ++k)
            column += (static_cast<unsigned char>(text[k]) & 0xC0) != 0x80;
        return UnsafeCharacter{
            {static_cast<toml::source_index>(line), static_cast<toml::source_index>(column)},
            std::move(message)};
    };
    auto run_of = [&](char quote) {
        size_t n = 0;
        while (i + n < text.size() && text[i + n] == quote)
            ++n;
        return n;
    };
    while (i < text.size()) {
        char ch = text[i];
        if (ch == '\n') {
            ++line;
            line_start = i + 1;
            if (state != State::ml_basic && state != State::ml_literal) {
                state = State::outside; // comments end here; one-line strings too (unclosed)
                if (open.empty() || open.back() == 'h')
                    in_key = true, open.clear();
            }
            ++i;
            continue;
        }
        switch (state) {
        case State::outside:
            if (ch == '=') {
                in_key = false;
            } else if (ch == '[') {
                open += in_key && (open.empty() || open.back() == 'h') ? 'h' : 'a';
            } else if (ch == '{') {
                open += 'i';
                in_key = true;
            } else if (ch == ']' || ch == '}') {
                if (!open.empty())
                    open.pop_back();
                in_key = false;
            } else if (ch == ',') {
                in_key = !open.empty() && open.back() == 'i';
            }
            if (ch == '#') {
                state = State::comment;
            } else if (ch == '"' || ch == '\'') {
                bool multi_line = run_of(ch) >= 3;
                state = ch == '"' ? (multi_line ? State::ml_basic : State::basic)
                                  : (multi_line ? State::ml_literal : State::literal);
                i += multi_line ? 3 : 1;
                continue;
            } else if (static_cast<unsigned char>(ch) >= 0x80) {
                return fail(i, "non-ASCII " + code_point_text(decode_utf8(text, i)) +
                                   " outside a quoted string or comment: TOML allows non-ASCII "
                                   "text only there (quote a key that needs it)");
            } else if (((ch >= '0' && ch <= '9') || ch == '+' || ch == '-') && !in_key &&
                       i >= run_checked_until) {
                if (auto at = non_ascii_in_run(text, i, run_checked_until))
                    return fail(*at, "non-ASCII " + code_point_text(decode_utf8(text, *at)) +
                                         " in the quote right after a number or date, which the "
                                         "TOML library meshd uses (toml++ 3.3) cannot read "
                                         "safely: put a space or a comma before the quote");
            }
            break;
        case State::comment:
            break;
        case State::basic:
        case State::literal:
            if (ch == (state == State::basic ? '"' : '\''))
                state = State::outside;
            else if (ch == '\\' && state == State::basic && i + 1 < text.size() &&
                     text[i + 1] != '\n')
                ++i; // the escaped character, which cannot end the string
            break;
        case State::ml_literal:
        case State::ml_basic: {
            char quote = state == State::ml_basic ? '"' : '\'';
            if (ch == quote) {
                size_t n = run_of(quote); // the last three of a run of 3..5 close the string
                i += n;
                if (n >= 3)
                    state = State::outside;
                continue;
            }
            if (ch != '\\' || state == State::ml_literal || i + 1 >= text.size())
                break;
            ++i;
            ch = text[i];
            if (static_cast<unsigned char>(ch) >= 0x80)
                return fail(i, "non-ASCII " + code_point_text(decode_utf8(text, i)) +
                                   " after a backslash in a \"\"\" string: not a TOML escape "
                                   "(escapes are \\b \\t \\n \\f \\r \\\" \\\\ \\uXXXX "
                                   "\\UXXXXXXXX)");
            if (ch != ' ' && ch != '\t' && ch != '\r' && ch != '\n')
                break; // an ASCII escape: the escaped character is skipped
            // A line-ending backslash: toml++ skips the whitespace and line breaks after it.
            while (i < text.size() &&
                   (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n')) {
                if (text[i] == '\n') {
                    ++line;
                    line_start = i + 1;
                }
                ++i;
            }
            if (i < text.size() && static_cast<unsigned char>(text[i]) >= 0x80)
                return fail(i, "non-ASCII " + code_point_text(decode_utf8(text, i)) +
                                   " right after a line-ending backslash, which the TOML "
                                   "library meshd uses (toml++ 3.3) cannot read safely: start "
                                   "the line with an ASCII character or remove the backslash");
            continue;
        }
        }
        ++i;
    }
    return std::nullopt;
}

// toml++ says "Error while parsing key-value pair: ..."; make it read as our errors do.
// It also quotes the text it saw raw, a line break included ("expected 'true', saw
// 't<LF>'"): control characters are escaped so that one error stays one line (found by
// tests/fuzz/config_fuzz).
std::string syntax_message(std::string_view description) {
    constexpr std::string_view toml_prefix = "Error while ";
    std::string out = "TOML syntax error: ";
    if (description.substr(0, toml_prefix.size()) == toml_prefix) {
        out = "TOML syntax error while ";
        description.remove_prefix(toml_prefix.size());
    }
    for (char c : description)
        append_escaped(out, c);
    return out;
}

ConfigResult parse_checked(std::string_view text, const std::string& path) {
    Checker c(path);
    ConfigResult result;
    toml::table root;
    if (auto unsafe = find_unsafe_character(text)) {
        c.error(unsafe->at, std::move(unsafe->message));
        result.errors = c.take_sorted();
        return result;
    }
    try {
        root = toml::parse(text, std::string_view(path));
    } catch (const toml::parse_error& e) {
        c.error(e.source().begin, syntax_message(e.description()));
        result.errors = c.take_sorted();
        return result;
    }
    auto cfg = std::make_unique<Config>();
    cfg->path = path;
    read_core_sections(root, c, *cfg);
    read_other_tables(root, c, *cfg);
    if (c.failed())
        result.errors = c.take_sorted();
    else
        result.config = std::move(cfg);
    return result;
}

// Owns a file descriptor for load_config.
struct Fd {
    int fd = -1;
    explicit Fd(int f) : fd(f) {}
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() {
        if (fd >= 0)
            ::close(fd);
    }
};

// strerror() is not thread-safe and the store thread may log at the same time. This is the
// GNU strerror_r (g++ defines _GNU_SOURCE): it returns the text, in buf or static.
std::string errno_text(int err) {
    char buf[256];
    return strerror_r(err, buf, sizeof buf);
}

ConfigResult cannot_read(const std::string& path, const std::string& why) {
    ConfigResult result;
    result.errors.push_back(ConfigError{path, 0, 0, "cannot read: " + why});
    return result;
}

} // namespace

// ---- public interface ---------------------------------------------------------------------

std::string ConfigError::to_string() const {
    if (line <= 0)
        return file + ": " + message;
    return file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + message;
}

ConfigResult parse_config(std::string_view text, const std::string& path) {
    try {
        return parse_checked(text, path);
    } catch (const std::exception& e) {
        ConfigResult result;
        result.errors.push_back(
            ConfigError{path, 0, 0, std::string("internal error: ") + e.what()});
        return result;
    }
}

ConfigResult load_config(const std::string& path) {
    // A config file is small; the cap stops `--config /dev/zero` from eating memory.
    constexpr size_t max_bytes = 16u << 20;
    try {
        Fd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        if (file.fd < 0)
            return cannot_read(path, errno_text(errno));
        std::string text;
        char buf[65536];
        for (;;) {
            ssize_t n = ::read(file.fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                return cannot_read(path, errno_text(errno));
            if (n == 0)
                break;
            text.append(buf, static_cast<size_t>(n));
            if (text.size() > max_bytes)
                return cannot_read(path, "larger than 16 MiB; is this the config file?");
        }
        return parse_config(text, path);
    } catch (const std::exception& e) {
        return cannot_read(path, e.what());
    }
}

const std::vector<KeyInfo>& config_keys() {
    static const std::vector<KeyInfo> keys = [] {
        std::vector<KeyInfo> out;
        for (const KeySpec& k : key_table) {
            KeyInfo info;
            info.name = std::string(k.name);
            info.default_text = std::string(k.default_toml);
            info.reloadable = k.reloadable;
            info.help = std::string(k.help);
            switch (k.kind) {
            case Kind::integer:
                info.type = "integer";
                info.range = range_text(k);
                break;
            case Kind::choice:
                info.type = "string";
                for (std::string_view choice : k.choices)
                    info.range += (info.range.empty() ? "" : " | ") + std::string(choice);
                break;
            case Kind::path:
                info.type = "string";
                break;
            case Kind::listen:
                info.type = "array of strings";
                info.range = "\"host:port\" or \"[v6]:port\", numeric host, port 0..65535; "
                             "at least one";
                break;
            case Kind::module_list:
                info.type = "array of strings";
                info.range = "names [a-z0-9_]{1,64}, no duplicates";
                break;
            }
            out.push_back(std::move(info));
        }
        return out;
    }();
    return keys;
}

namespace {

std::string_view describe(ModuleKeySpec::Type type) {
    switch (type) {
    case ModuleKeySpec::Type::integer:
        return "an integer";
    case ModuleKeySpec::Type::boolean:
        return "a boolean";
    case ModuleKeySpec::Type::string:
        return "a string";
    case ModuleKeySpec::Type::floating:
        return "a number";
    }
    return "a value";
}

std::string number_text(double v, bool integer) {
    if (integer || (v == std::floor(v) && std::fabs(v) < 1e15))
        return std::to_string(static_cast<long long>(v));
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}

} // namespace

bool same_module_value(const ModuleValue& a, const ModuleValue& b) {
    using Type = ModuleValue::Type;
    auto number = [](const ModuleValue& v) {
        return v.type == Type::floating ? v.floating : static_cast<double>(v.integer);
    };
    bool a_number = a.type == Type::integer || a.type == Type::floating;
    bool b_number = b.type == Type::integer || b.type == Type::floating;
    if (a_number && b_number && a.type != b.type) // 5 and 5.0 are the same number
        return number(a) == number(b);
    if (a.type != b.type)
        return false;
    switch (a.type) {
    case Type::integer:
        return a.integer == b.integer;
    case Type::boolean:
        return a.boolean == b.boolean;
    case Type::string:
        return a.string == b.string;
    case Type::floating:
        return a.floating == b.floating;
    case Type::other:
        return true;
    }
    return true;
}

void check_module_table(const std::string& config_path, std::string_view module,
                        const ModuleTable& table, const std::vector<ModuleKeySpec>& keys,
                        std::vector<ConfigError>& errors) {
    size_t first = errors.size();
    std::vector<std::string_view> names;
    for (const ModuleKeySpec& k : keys)
        names.push_back(k.name);
    auto error = [&](const ModuleValue& v, std::string message) {
        errors.push_back(ConfigError{config_path, v.line, v.column, std::move(message)});
    };
    for (const auto& [name, value] : table) {
        std::string full = std::string(module) + "." + name;
        // A named reference, not the binding: clang before 16 cannot capture bindings.
        const std::string& key_name = name;
        auto spec = std::find_if(keys.begin(), keys.end(),
                                 [&](const ModuleKeySpec& k) { return k.name == key_name; });
        if (spec == keys.end()) {
            std::string msg = "unknown key " + full;
            if (keys.empty())
                msg += ": module " + std::string(module) + " takes no settings; remove [" +
                       std::string(module) + "]";
            else if (auto guess = closest(name, names))
                msg += " (did you mean " + std::string(module) + "." + std::string(*guess) + "?)";
            else
                msg += ": keys of [" + std::string(module) + "] are " + joined(names);
            errors.push_back(ConfigError{config_path, value.key_line, value.key_column,
                                         std::move(msg)});
            continue;
        }
        using VT = ModuleValue::Type;
        using KT = ModuleKeySpec::Type;
        bool type_ok = (spec->type == KT::integer && value.type == VT::integer) ||
                       (spec->type == KT::boolean && value.type == VT::boolean) ||
                       (spec->type == KT::string && value.type == VT::string) ||
                       (spec->type == KT::floating &&
                        (value.type == VT::floating || value.type == VT::integer));
        std::string what = spec->help.empty() ? "" : " (" + spec->help + ")";
        if (!type_ok) {
            error(value, full + " must be " + std::string(describe(spec->type)) + what + ", got " +
                             value.described);
            continue;
        }
        if ((spec->type == KT::integer || spec->type == KT::floating) && spec->min <= spec->max) {
            double v = value.type == VT::integer ? static_cast<double>(value.integer)
                                                 : value.floating;
            if (!(v >= spec->min && v <= spec->max)) {
                bool integer = spec->type == KT::integer;
                error(value, full + " = " +
                                 (value.type == VT::integer ? std::to_string(value.integer)
                                                            : number_text(v, false)) +
                                 " is out of range" + what + ": it must be " +
                                 number_text(spec->min, integer) + ".." +
                                 number_text(spec->max, integer));
            }
        }
    }
    // The table is sorted by name; report in file order like the core does.
    std::stable_sort(errors.begin() + static_cast<std::ptrdiff_t>(first), errors.end(),
                     [](const ConfigError& a, const ConfigError& b) {
                         return std::pair(a.line, a.column) < std::pair(b.line, b.column);
                     });
}

ConfigDiff diff_config(const Config& before, const Config& after) {
    ConfigDiff diff;
    for (const KeySpec& k : key_table) {
        if (k.same(before, after))
            continue;
        (k.reloadable ? diff.applied : diff.restart_required).push_back(std::string(k.name));
    }
    return diff;
}

Result<ListenAddr> parse_listen_addr(std::string_view text) {
    auto parsed = parse_listen(text);
    if (auto* why = std::get_if<std::string>(&parsed))
        return make_error("bad_config", std::move(*why));
    return std::get<ListenAddr>(std::move(parsed));
}

std::string_view to_string(SyncMode mode) {
    auto i = static_cast<size_t>(mode);
    return i < std::size(sync_names) ? sync_names[i] : "unknown";
}

std::string_view to_string(LogLevel level) {
    auto i = static_cast<size_t>(level);
    return i < std::size(log_level_names) ? log_level_names[i] : "unknown";
}

} // namespace meshd::core
