// tests/unit/config_test: the TOML configuration layer (daemon/core/config.cc). Table-driven:
// each row is a document and the exact `FILE:LINE:COL: message` errors it must produce.
// MESHD_SOURCE_ROOT (set by meson) points at the tree, for the shipped config and man page.
#include "core/config.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace meshd::core {
namespace {

using Errors = std::vector<std::string>;

ConfigResult parse(const std::string& text, const std::string& path = "meshd.toml") {
    return parse_config(text, path);
}

Errors errors_of(const ConfigResult& r) {
    Errors out;
    for (const ConfigError& e : r.errors)
        out.push_back(e.to_string());
    return out;
}

// Parses a document that must be valid.
Config parse_ok(const std::string& text, const std::string& path = "meshd.toml") {
    ConfigResult r = parse(text, path);
    EXPECT_EQ(errors_of(r), Errors{}) << "document:\n" << text;
    EXPECT_NE(r.config, nullptr);
    return r.config ? *r.config : Config{};
}

std::string source_root() {
    // NOLINTNEXTLINE(concurrency-mt-unsafe): the test has no threads
    const char* root = std::getenv("MESHD_SOURCE_ROOT");
    return root ? root : "";
}

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::string cwd() {
    return std::filesystem::current_path().string();
}

// ---- defaults -----------------------------------------------------------------------------

void expect_defaults(const Config& c) {
    ASSERT_EQ(c.listen.size(), 1u);
    EXPECT_EQ(c.listen[0].host, "127.0.0.1");
    EXPECT_EQ(c.listen[0].port, 7700);
    EXPECT_EQ(c.listen[0].text, "127.0.0.1:7700");
    EXPECT_EQ(c.data_dir, "/var/lib/meshd");
    EXPECT_EQ(c.control_socket, "/run/meshd/control.sock");
    EXPECT_EQ(c.modules_dir, "/usr/lib/meshd/modules");
    EXPECT_EQ(c.modules_load, (std::vector<std::string>{"auth_token", "auth_ed25519",
                                                        "route_direct", "route_groups", "route_skills"}));
    EXPECT_EQ(c.max_frame, 1048576);
    EXPECT_EQ(c.max_depth, 64);
    EXPECT_EQ(c.max_queue, 4194304);
    EXPECT_EQ(c.max_inflight, 1024);
    EXPECT_EQ(c.max_devices, 32);
    EXPECT_EQ(c.hello_timeout_ms, 10000);
    EXPECT_EQ(c.ping_interval_ms, 30000);
    EXPECT_EQ(c.sync, SyncMode::normal);
    EXPECT_EQ(c.dedupe_window_s, 86400);
    EXPECT_EQ(c.checkpoint_wal_bytes, 268435456);
    EXPECT_EQ(c.log_level, LogLevel::info);
    EXPECT_EQ(c.presence_grace_ms, 5000);
    EXPECT_EQ(c.away_after_s, 300);
    EXPECT_EQ(c.max_watch, 1000);
    EXPECT_EQ(c.max_profile_bytes, 8192);
    EXPECT_TRUE(c.module_tables.empty());
}

TEST(ConfigDefaults, EmptyFileGivesDefaults) {
    Config c = parse_ok("");
    expect_defaults(c);
    EXPECT_EQ(c.path, "meshd.toml");
}

TEST(ConfigDefaults, MinimalFileGivesDefaults) {
    expect_defaults(parse_ok("# minimal\n[server]\nlisten = [\"127.0.0.1:7700\"]\n\n[limits]\n"));
}

// The header's member initializers and the key table must agree.
TEST(ConfigDefaults, HeaderInitializersMatchTable) {
    Config parsed = parse_ok("");
    Config plain;
    plain.listen = parsed.listen;
    plain.data_dir = parsed.data_dir;
    plain.control_socket = parsed.control_socket;
    plain.modules_dir = parsed.modules_dir;
    plain.modules_load = parsed.modules_load;
    ConfigDiff d = diff_config(plain, parsed);
    EXPECT_EQ(d.applied, std::vector<std::string>{});
    EXPECT_EQ(d.restart_required, std::vector<std::string>{});
}

// ---- integer ranges -----------------------------------------------------------------------

struct IntRow {
    std::string doc;
    int64_t Config::*field; // checked when the row expects no error
    int64_t value;
    std::string error; // "" = valid
};

const IntRow int_rows[] = {
    // clang-format off
    {"[limits]\nmax_frame = 1024\n", &Config::max_frame, 1024, ""},
    {"[limits]\nmax_frame = 16777216\n", &Config::max_frame, 16777216, ""},
    {"[limits]\nmax_frame = 1023\n", nullptr, 0,
     "meshd.toml:2:13: limits.max_frame must be an integer 1024..16777216, got 1023"},
    {"[limits]\nmax_frame = 16777217\n", nullptr, 0,
     "meshd.toml:2:13: limits.max_frame must be an integer 1024..16777216, got 16777217"},
    {"[limits]\nmax_depth = 2\n", &Config::max_depth, 2, ""},
    {"[limits]\nmax_depth = 1024\n", &Config::max_depth, 1024, ""},
    {"[limits]\nmax_depth = 1\n", nullptr, 0,
     "meshd.toml:2:13: limits.max_depth must be an integer 2..1024, got 1"},
    {"[limits]\nmax_depth = 1025\n", nullptr, 0,
     "meshd.toml:2:13: limits.max_depth must be an integer 2..1024, got 1025"},
    {"[limits]\nmax_queue = 65536\n", &Config::max_queue, 65536, ""},
    {"[limits]\nmax_queue = 1073741824\n", &Config::max_queue, 1073741824, ""},
    {"[limits]\nmax_queue = 65535\n", nullptr, 0,
     "meshd.toml:2:13: limits.max_queue must be an integer 65536..1073741824, got 65535"},
    {"[limits]\nmax_queue = 1073741825\n", nullptr, 0,
     "meshd.toml:2:13: limits.max_queue must be an integer 65536..1073741824, got 1073741825"},
    {"[limits]\nmax_inflight = 1\n", &Config::max_inflight, 1, ""},
    {"[limits]\nmax_inflight = 65536\n", &Config::max_inflight, 65536, ""},
    {"[limits]\nmax_inflight = 0\n", nullptr, 0,
     "meshd.toml:2:16: limits.max_inflight must be an integer 1..65536, got 0"},
    {"[limits]\nmax_inflight = 65537\n", nullptr, 0,
     "meshd.toml:2:16: limits.max_inflight must be an integer 1..65536, got 65537"},
    {"[limits]\nmax_devices = 1\n", &Config::max_devices, 1, ""},
    {"[limits]\nmax_devices = 1024\n", &Config::max_devices, 1024, ""},
    {"[limits]\nmax_devices = 0\n", nullptr, 0,
     "meshd.toml:2:15: limits.max_devices must be an integer 1..1024, got 0"},
    {"[limits]\nmax_devices = 1025\n", nullptr, 0,
     "meshd.toml:2:15: limits.max_devices must be an integer 1..1024, got 1025"},
    {"[limits]\nhello_timeout_ms = 100\n", &Config::hello_timeout_ms, 100, ""},
    {"[limits]\nhello_timeout_ms = 600000\n", &Config::hello_timeout_ms, 600000, ""},
    {"[limits]\nhello_timeout_ms = 99\n", nullptr, 0,
     "meshd.toml:2:20: limits.hello_timeout_ms must be an integer 100..600000, got 99"},
    {"[limits]\nhello_timeout_ms = 600001\n", nullptr, 0,
     "meshd.toml:2:20: limits.hello_timeout_ms must be an integer 100..600000, got 600001"},
    {"[limits]\nping_interval_ms = 100\n", &Config::ping_interval_ms, 100, ""},
    {"[limits]\nping_interval_ms = 3600000\n", &Config::ping_interval_ms, 3600000, ""},
    {"[limits]\nping_interval_ms = 99\n", nullptr, 0,
     "meshd.toml:2:20: limits.ping_interval_ms must be an integer 100..3600000, got 99"},
    {"[limits]\nping_interval_ms = 3600001\n", nullptr, 0,
     "meshd.toml:2:20: limits.ping_interval_ms must be an integer 100..3600000, got 3600001"},
    {"[storage]\ndedupe_window_s = 1\n", &Config::dedupe_window_s, 1, ""},
    {"[storage]\ndedupe_window_s = 31536000\n", &Config::dedupe_window_s, 31536000, ""},
    {"[storage]\ndedupe_window_s = 0\n", nullptr, 0,
     "meshd.toml:2:19: storage.dedupe_window_s must be an integer 1..31536000, got 0"},
    {"[storage]\ndedupe_window_s = 31536001\n", nullptr, 0,
     "meshd.toml:2:19: storage.dedupe_window_s must be an integer 1..31536000, got 31536001"},
    {"[storage]\nretention_days = 0\n", &Config::retention_days, 0, ""},
    {"[storage]\nretention_days = 36500\n", &Config::retention_days, 36500, ""},
    {"[storage]\nretention_days = -1\n", nullptr, 0,
     "meshd.toml:2:18: storage.retention_days must be an integer 0..36500, got -1"},
    {"[storage]\nretention_days = 36501\n", nullptr, 0,
     "meshd.toml:2:18: storage.retention_days must be an integer 0..36500, got 36501"},
    {"[storage]\nmax_log_entries = 0\n", &Config::max_log_entries, 0, ""},
    {"[storage]\nmax_log_entries = 1000000000000\n", &Config::max_log_entries, 1000000000000,
     ""},
    {"[storage]\nmax_log_entries = -1\n", nullptr, 0,
     "meshd.toml:2:19: storage.max_log_entries must be an integer 0..1000000000000, got -1"},
    {"[storage]\nmax_log_entries = 1000000000001\n", nullptr, 0,
     "meshd.toml:2:19: storage.max_log_entries must be an integer 0..1000000000000, got "
     "1000000000001"},
    {"[storage]\ncache_bytes = 0\n", &Config::cache_bytes, 0, ""},
    {"[storage]\ncache_bytes = 17179869184\n", &Config::cache_bytes, 17179869184, ""},
    {"[storage]\ncache_bytes = -1\n", nullptr, 0,
     "meshd.toml:2:15: storage.cache_bytes must be an integer 0..17179869184, got -1"},
    {"[storage]\ncache_bytes = 17179869185\n", nullptr, 0,
     "meshd.toml:2:15: storage.cache_bytes must be an integer 0..17179869184, got 17179869185"},
    {"[storage]\ncheckpoint_wal_bytes = 1048576\n", &Config::checkpoint_wal_bytes, 1048576, ""},
    {"[storage]\ncheckpoint_wal_bytes = 17179869184\n", &Config::checkpoint_wal_bytes,
     17179869184, ""},
    {"[storage]\ncheckpoint_wal_bytes = 1048575\n", nullptr, 0,
     "meshd.toml:2:24: storage.checkpoint_wal_bytes must be an integer 1048576..17179869184, "
     "got 1048575"},
    {"[storage]\ncheckpoint_wal_bytes = 17179869185\n", nullptr, 0,
     "meshd.toml:2:24: storage.checkpoint_wal_bytes must be an integer 1048576..17179869184, "
     "got 17179869185"},
    {"[presence]\ngrace_ms = 0\n", &Config::presence_grace_ms, 0, ""},
    {"[presence]\ngrace_ms = 600000\n", &Config::presence_grace_ms, 600000, ""},
    {"[presence]\ngrace_ms = -1\n", nullptr, 0,
     "meshd.toml:2:12: presence.grace_ms must be an integer 0..600000, got -1"},
    {"[presence]\ngrace_ms = 600001\n", nullptr, 0,
     "meshd.toml:2:12: presence.grace_ms must be an integer 0..600000, got 600001"},
    {"[presence]\naway_after_s = 0\n", &Config::away_after_s, 0, ""},
    {"[presence]\naway_after_s = 604800\n", &Config::away_after_s, 604800, ""},
    {"[presence]\naway_after_s = -1\n", nullptr, 0,
     "meshd.toml:2:16: presence.away_after_s must be an integer 0..604800, got -1"},
    {"[presence]\naway_after_s = 604801\n", nullptr, 0,
     "meshd.toml:2:16: presence.away_after_s must be an integer 0..604800, got 604801"},
    {"[presence]\nmax_watch = 1\n", &Config::max_watch, 1, ""},
    {"[presence]\nmax_watch = 100000\n", &Config::max_watch, 100000, ""},
    {"[presence]\nmax_watch = 0\n", nullptr, 0,
     "meshd.toml:2:13: presence.max_watch must be an integer 1..100000, got 0"},
    {"[presence]\nmax_watch = 100001\n", nullptr, 0,
     "meshd.toml:2:13: presence.max_watch must be an integer 1..100000, got 100001"},
    {"[directory]\nmax_profile_bytes = 256\n", &Config::max_profile_bytes, 256, ""},
    {"[directory]\nmax_profile_bytes = 1048576\n", &Config::max_profile_bytes, 1048576, ""},
    {"[directory]\nmax_profile_bytes = 255\n", nullptr, 0,
     "meshd.toml:2:21: directory.max_profile_bytes must be an integer 256..1048576, got 255"},
    {"[directory]\nmax_profile_bytes = 1048577\n", nullptr, 0,
     "meshd.toml:2:21: directory.max_profile_bytes must be an integer 256..1048576, got 1048577"},
    {"[history]\nreaders = 1\n", &Config::history_readers, 1, ""},
    {"[history]\nreaders = 16\n", &Config::history_readers, 16, ""},
    {"[history]\nreaders = 0\n", nullptr, 0,
     "meshd.toml:2:11: history.readers must be an integer 1..16, got 0"},
    {"[history]\nreaders = 17\n", nullptr, 0,
     "meshd.toml:2:11: history.readers must be an integer 1..16, got 17"},
    {"[history]\nmax_inflight = 1\n", &Config::history_max_inflight, 1, ""},
    {"[history]\nmax_inflight = 64\n", &Config::history_max_inflight, 64, ""},
    {"[history]\nmax_inflight = 0\n", nullptr, 0,
     "meshd.toml:2:16: history.max_inflight must be an integer 1..64, got 0"},
    {"[history]\nmax_inflight = 65\n", nullptr, 0,
     "meshd.toml:2:16: history.max_inflight must be an integer 1..64, got 65"},
    {"[typing]\ninterval_ms = 100\n", &Config::typing_interval_ms, 100, ""},
    {"[typing]\ninterval_ms = 60000\n", &Config::typing_interval_ms, 60000, ""},
    {"[typing]\ninterval_ms = 99\n", nullptr, 0,
     "meshd.toml:2:15: typing.interval_ms must be an integer 100..60000, got 99"},
    {"[typing]\ninterval_ms = 60001\n", nullptr, 0,
     "meshd.toml:2:15: typing.interval_ms must be an integer 100..60000, got 60001"},
    {"[tasks]\nlease_s = 1\n", &Config::task_lease_s, 1, ""},
    {"[tasks]\nlease_s = 604800\n", &Config::task_lease_s, 604800, ""},
    {"[tasks]\nlease_s = 0\n", nullptr, 0,
     "meshd.toml:2:11: tasks.lease_s must be an integer 1..604800, got 0"},
    {"[tasks]\nlease_s = 604801\n", nullptr, 0,
     "meshd.toml:2:11: tasks.lease_s must be an integer 1..604800, got 604801"},
    {"[tasks]\nqueue_cap = 1\n", &Config::task_queue_cap, 1, ""},
    {"[tasks]\nqueue_cap = 10000000\n", &Config::task_queue_cap, 10000000, ""},
    {"[tasks]\nqueue_cap = 0\n", nullptr, 0,
     "meshd.toml:2:13: tasks.queue_cap must be an integer 1..10000000, got 0"},
    {"[tasks]\nqueue_cap = 10000001\n", nullptr, 0,
     "meshd.toml:2:13: tasks.queue_cap must be an integer 1..10000000, got 10000001"},
    {"[tasks]\nqueue_ttl_s = 1\n", &Config::task_queue_ttl_s, 1, ""},
    {"[tasks]\nqueue_ttl_s = 31536000\n", &Config::task_queue_ttl_s, 31536000, ""},
    {"[tasks]\nqueue_ttl_s = 0\n", nullptr, 0,
     "meshd.toml:2:15: tasks.queue_ttl_s must be an integer 1..31536000, got 0"},
    {"[tasks]\nqueue_ttl_s = 31536001\n", nullptr, 0,
     "meshd.toml:2:15: tasks.queue_ttl_s must be an integer 1..31536000, got 31536001"},
    // negative and hex integers are integers too
    {"[limits]\nmax_depth = -5\n", nullptr, 0,
     "meshd.toml:2:13: limits.max_depth must be an integer 2..1024, got -5"},
    {"[limits]\nmax_frame = 0x800\n", &Config::max_frame, 2048, ""},
    {"[limits]\nmax_frame = 1_048_576\n", &Config::max_frame, 1048576, ""},
    // clang-format on
};

TEST(ConfigRanges, EveryIntegerKeyAtBothEnds) {
    for (const IntRow& row : int_rows) {
        SCOPED_TRACE(row.doc);
        ConfigResult r = parse(row.doc);
        if (row.error.empty()) {
            ASSERT_EQ(errors_of(r), Errors{});
            ASSERT_NE(r.config, nullptr);
            EXPECT_EQ((*r.config).*row.field, row.value);
        } else {
            EXPECT_EQ(errors_of(r), Errors{row.error});
            EXPECT_EQ(r.config, nullptr);
        }
    }
}

// Every integer key of the table has both ends tested above, just inside and just outside.
TEST(ConfigRanges, TableCoversEveryIntegerKey) {
    auto has_row = [](const std::string& line, bool valid) {
        return std::any_of(std::begin(int_rows), std::end(int_rows), [&](const IntRow& row) {
            return row.error.empty() == valid && row.doc.find(line) != std::string::npos;
        });
    };
    for (const KeyInfo& k : config_keys()) {
        if (k.type != "integer")
            continue;
        std::string prefix = "\n" + k.name.substr(k.name.find('.') + 1);
        prefix += " = ";
        int64_t lo = std::stoll(k.range.substr(0, k.range.find("..")));
        int64_t hi = std::stoll(k.range.substr(k.range.find("..") + 2));
        EXPECT_TRUE(has_row(prefix + std::to_string(lo) + "\n", true)) << k.name << " " << lo;
        EXPECT_TRUE(has_row(prefix + std::to_string(hi) + "\n", true)) << k.name << " " << hi;
        EXPECT_TRUE(has_row(prefix + std::to_string(lo - 1) + "\n", false)) << k.name;
        EXPECT_TRUE(has_row(prefix + std::to_string(hi + 1) + "\n", false)) << k.name;
    }
}

// ---- wrong types and bad values -----------------------------------------------------------

struct DocRow {
    std::string doc;
    Errors errors;
};

void check_rows(const std::vector<DocRow>& rows) {
    for (const DocRow& row : rows) {
        SCOPED_TRACE(row.doc);
        ConfigResult r = parse(row.doc);
        EXPECT_EQ(errors_of(r), row.errors);
        EXPECT_EQ(r.config == nullptr, !row.errors.empty());
    }
}

TEST(ConfigErrors, WrongTypes) {
    check_rows({
        {"[limits]\nmax_frame = \"1M\"\n",
         {"meshd.toml:2:13: limits.max_frame must be an integer 1024..16777216, got \"1M\""}},
        {"[limits]\nmax_frame = 1.5\n",
         {"meshd.toml:2:13: limits.max_frame must be an integer 1024..16777216, got 1.5 (a "
          "float)"}},
        {"[limits]\nmax_frame = 1e6\n",
         {"meshd.toml:2:13: limits.max_frame must be an integer 1024..16777216, got 1e+06 (a "
          "float)"}},
        {"[limits]\nmax_frame = true\n",
         {"meshd.toml:2:13: limits.max_frame must be an integer 1024..16777216, got true"}},
        {"[limits]\nmax_frame = [2048]\n",
         {"meshd.toml:2:13: limits.max_frame must be an integer 1024..16777216, got an array"}},
        {"[limits]\nmax_depth = 1979-05-27\n",
         {"meshd.toml:2:13: limits.max_depth must be an integer 2..1024, got a date"}},
        {"[limits.max_frame]\nx = 1\n",
         {"meshd.toml:1:1: limits.max_frame must be an integer 1024..16777216, got a table"}},
        {"[server]\ndata_dir = 5\n",
         {"meshd.toml:2:12: server.data_dir must be a path string, got 5"}},
        {"[server]\ndata_dir = \"\"\n",
         {"meshd.toml:2:12: server.data_dir must be a non-empty path, got \"\""}},
        {"[control]\nsocket = false\n",
         {"meshd.toml:2:10: control.socket must be a path string, got false"}},
        {"[modules]\ndir = [\"/a\"]\n",
         {"meshd.toml:2:7: modules.dir must be a path string, got an array"}},
        {"[storage]\nsync = \"fast\"\n",
         {"meshd.toml:2:8: storage.sync must be \"normal\" or \"full\", got \"fast\""}},
        {"[storage]\nsync = \"FULL\"\n",
         {"meshd.toml:2:8: storage.sync must be \"normal\" or \"full\", got \"FULL\""}},
        {"[log]\nlevel = \"verbose\"\n",
         {"meshd.toml:2:9: log.level must be \"debug\", \"info\", \"warn\" or \"error\", got "
          "\"verbose\""}},
        {"[log]\nlevel = 3\n",
         {"meshd.toml:2:9: log.level must be \"debug\", \"info\", \"warn\" or \"error\", got 3"}},
        {"server = 5\n", {"meshd.toml:1:10: server must be a table ([server]), got 5"}},
        {"[[limits]]\nmax_frame = 2048\n",
         {"meshd.toml:1:1: limits must be a table ([limits]), got an array"}},
        {"[server]\nlisten = \"127.0.0.1:7700\"\n",
         {"meshd.toml:2:10: server.listen must be an array of \"host:port\" strings, e.g. "
          "[\"127.0.0.1:7700\"], got \"127.0.0.1:7700\""}},
        {"[modules]\nload = \"auth_token\"\n",
         {"meshd.toml:2:8: modules.load must be an array of module names, e.g. [\"auth_token\", "
          "\"route_direct\"], got \"auth_token\""}},
        {"[storage]\nsync = \"a\\tb\\u0001\"\n",
         {"meshd.toml:2:8: storage.sync must be \"normal\" or \"full\", got \"a\\tb\\u0001\""}},
    });
}

TEST(ConfigErrors, ChoicesAreStored) {
    EXPECT_EQ(parse_ok("[storage]\nsync = \"full\"\n").sync, SyncMode::full);
    EXPECT_EQ(parse_ok("[storage]\nsync = \"normal\"\n").sync, SyncMode::normal);
    EXPECT_EQ(parse_ok("[log]\nlevel = \"debug\"\n").log_level, LogLevel::debug);
    EXPECT_EQ(parse_ok("[log]\nlevel = \"warn\"\n").log_level, LogLevel::warn);
    EXPECT_EQ(parse_ok("[log]\nlevel = \"error\"\n").log_level, LogLevel::error);
}

TEST(ConfigErrors, LongValuesAreCutShort) {
    std::string value(100, 'x');
    ConfigResult r = parse("[log]\nlevel = \"" + value + "\"\n");
    EXPECT_EQ(
        errors_of(r),
        Errors{"meshd.toml:2:9: log.level must be \"debug\", \"info\", \"warn\" or \"error\", "
               "got \"" +
               std::string(60, 'x') + "...\""});
}

// ---- server.listen ------------------------------------------------------------------------

struct ListenRow {
    std::string value; // the TOML array's contents
    Errors errors;
};

TEST(ConfigListen, Entries) {
    const std::string not_numeric =
        " is not a numeric IP address; host names are not resolved: write an IPv4 address like "
        "127.0.0.1 or an IPv6 address in brackets like [::1]";
    const std::vector<ListenRow> rows = {
        {"\"127.0.0.1:0\"", {}},
        {"\"127.0.0.1:65535\"", {}},
        {"\"[::1]:7700\", \"0.0.0.0:1\", \"[::]:0\", \"127.0.0.1:0\"", {}},
        {"\"localhost:7700\"",
         {"meshd.toml:2:11: server.listen[0] \"localhost:7700\": host \"localhost\"" +
          not_numeric}},
        {"\"999.1.1.1:80\"",
         {"meshd.toml:2:11: server.listen[0] \"999.1.1.1:80\": host \"999.1.1.1\"" + not_numeric}},
        {"\"127.0.0.1\"",
         {"meshd.toml:2:11: server.listen[0] \"127.0.0.1\": missing port; write \"host:port\", "
          "e.g. \"127.0.0.1:7700\""}},
        {"\"127.0.0.1:65536\"",
         {"meshd.toml:2:11: server.listen[0] \"127.0.0.1:65536\": port must be an integer "
          "0..65535, got \"65536\""}},
        {"\"127.0.0.1:-1\"",
         {"meshd.toml:2:11: server.listen[0] \"127.0.0.1:-1\": port must be an integer 0..65535, "
          "got \"-1\""}},
        {"\"127.0.0.1:\"",
         {"meshd.toml:2:11: server.listen[0] \"127.0.0.1:\": port must be an integer 0..65535, "
          "got \"\""}},
        {"\"127.0.0.1:000007700\"",
         {"meshd.toml:2:11: server.listen[0] \"127.0.0.1:000007700\": port must be an integer "
          "0..65535, got \"000007700\""}},
        {"\"::1:7700\"",
         {"meshd.toml:2:11: server.listen[0] \"::1:7700\": an IPv6 address must be in brackets, "
          "e.g. \"[::1]:7700\""}},
        {"\"[::1:7700\"",
         {"meshd.toml:2:11: server.listen[0] \"[::1:7700\": missing ']' after the IPv6 address, "
          "e.g. \"[::1]:7700\""}},
        {"\"[::1]7700\"",
         {"meshd.toml:2:11: server.listen[0] \"[::1]7700\": missing \":port\" after ']', e.g. "
          "\"[::1]:7700\""}},
        {"\"[127.0.0.1]:7700\"",
         {"meshd.toml:2:11: server.listen[0] \"[127.0.0.1]:7700\": host \"127.0.0.1\" in "
          "brackets is not a numeric IPv6 address; write IPv4 without brackets, e.g. "
          "\"127.0.0.1:7700\""}},
        {"\":7700\"",
         {"meshd.toml:2:11: server.listen[0] \":7700\": missing host; write 0.0.0.0 to listen on "
          "all IPv4 addresses, e.g. \"0.0.0.0:7700\""}},
        {"",
         {"meshd.toml:2:10: server.listen must list at least one \"host:port\" address, e.g. "
          "[\"127.0.0.1:7700\"]"}},
        {"\"127.0.0.1:1\", 7700",
         {"meshd.toml:2:26: server.listen[1] must be a \"host:port\" string, got 7700"}},
        {"\"127.0.0.1:7700\", \"127.0.0.1:7700\"",
         {"meshd.toml:2:29: server.listen[1] \"127.0.0.1:7700\" is listed twice (first as "
          "\"127.0.0.1:7700\")"}},
        {"\"127.0.0.1:7700\", \"127.0.0.1:07700\"",
         {"meshd.toml:2:29: server.listen[1] \"127.0.0.1:07700\" is listed twice (first as "
          "\"127.0.0.1:7700\")"}},
        {"\"a:1\", \"b:2\"",
         {"meshd.toml:2:11: server.listen[0] \"a:1\": host \"a\"" + not_numeric,
          "meshd.toml:2:18: server.listen[1] \"b:2\": host \"b\"" + not_numeric}},
    };
    for (const ListenRow& row : rows) {
        std::string doc = "[server]\nlisten = [" + row.value + "]\n";
        SCOPED_TRACE(doc);
        EXPECT_EQ(errors_of(parse(doc)), row.errors);
    }
}

TEST(ConfigListen, ParsedAddresses) {
    Config c =
        parse_ok("[server]\nlisten = [\"[::1]:7700\", \"0.0.0.0:0\", \"127.0.0.1:65535\"]\n");
    ASSERT_EQ(c.listen.size(), 3u);
    EXPECT_EQ(c.listen[0].host, "::1");
    EXPECT_EQ(c.listen[0].port, 7700);
    EXPECT_EQ(c.listen[0].text, "[::1]:7700");
    EXPECT_EQ(c.listen[1].host, "0.0.0.0");
    EXPECT_EQ(c.listen[1].port, 0);
    EXPECT_EQ(c.listen[2].port, 65535);
}

// ---- modules.load -------------------------------------------------------------------------

TEST(ConfigModules, LoadNames) {
    const std::string name_rule = "must be a module name of 1 to 64 characters a-z, 0-9 or _, got ";
    check_rows({
        {"[modules]\nload = []\n", {}},
        {"[modules]\nload = [\"a\", \"b_2\", \"" + std::string(64, 'z') + "\"]\n", {}},
        {"[modules]\nload = [\"Auth\"]\n",
         {"meshd.toml:2:9: modules.load[0] " + name_rule + "\"Auth\""}},
        {"[modules]\nload = [\"auth-token\"]\n",
         {"meshd.toml:2:9: modules.load[0] " + name_rule + "\"auth-token\""}},
        {"[modules]\nload = [\"\"]\n", {"meshd.toml:2:9: modules.load[0] " + name_rule + "\"\""}},
        {"[modules]\nload = [\"" + std::string(65, 'z') + "\"]\n",
         {"meshd.toml:2:9: modules.load[0] " + name_rule + "\"" + std::string(60, 'z') + "...\""}},
        {"[modules]\nload = [1]\n", {"meshd.toml:2:9: modules.load[0] " + name_rule + "1"}},
        {"[modules]\nload = [\"a\", \"a\"]\n",
         {"meshd.toml:2:14: modules.load[1] \"a\" is listed twice"}},
        {"[modules]\nload = [\"limits\"]\n",
         {"meshd.toml:2:9: modules.load[0] \"limits\" cannot be a module name: [limits] is a core "
          "section"}},
    });
    EXPECT_EQ(parse_ok("[modules]\nload = [\"b\", \"a\"]\n").modules_load,
              (std::vector<std::string>{"b", "a"}));
}

// ---- unknown keys and sections ------------------------------------------------------------

TEST(ConfigUnknown, KeysAndSections) {
    const std::string sections =
        "core sections are server, control, modules, limits, storage, log, presence, directory, "
        "history, typing, tasks";
    const std::string module_rule =
        "; a module's section must name a module listed in modules.load";
    check_rows({
        {"# comment\n\n[server]\nlisen = [\"127.0.0.1:7700\"]\n",
         {"meshd.toml:4:1: unknown key server.lisen (did you mean server.listen?)"}},
        {"[limits]\n  max_fram = 2048\n",
         {"meshd.toml:2:3: unknown key limits.max_fram (did you mean limits.max_frame?)"}},
        {"[limits]\nmax_farme = 2048\n",
         {"meshd.toml:2:1: unknown key limits.max_farme (did you mean limits.max_frame?)"}},
        {"[server]\nmax_frame = 2048\n",
         {"meshd.toml:2:1: unknown key server.max_frame: max_frame belongs in [limits]"}},
        {"[limits]\nfoo = 1\n",
         {"meshd.toml:2:1: unknown key limits.foo: keys of [limits] are max_frame, max_depth, "
          "max_queue, max_inflight, max_devices, hello_timeout_ms, ping_interval_ms"}},
        {"[log]\n\"a b\" = 1\n",
         {"meshd.toml:2:1: unknown key log.\"a b\": keys of [log] are level"}},
        {"[limits.nested]\nx = 1\n",
         {"meshd.toml:1:9: unknown key limits.nested: keys of [limits] are max_frame, max_depth, "
          "max_queue, max_inflight, max_devices, hello_timeout_ms, ping_interval_ms"}},
        {"[server]\nlisten = [\"127.0.0.1:7700\"]\n\n[foo]\nx = 1\n",
         {"meshd.toml:4:1: unknown section [foo]: " + sections + module_rule}},
        {"[sever]\n",
         {"meshd.toml:1:1: unknown section [sever] (did you mean [server]?): " + sections +
          module_rule}},
        {"[auth_tokn]\nx = 1\n",
         {"meshd.toml:1:1: unknown section [auth_tokn] (did you mean [auth_token]?): " + sections +
          module_rule}},
        {"[modules]\nload = [\"auth_token\"]\n[route_direct]\nx = 1\n",
         {"meshd.toml:3:1: unknown section [route_direct]: " + sections + module_rule}},
        {"[[foo]]\nx = 1\n", {"meshd.toml:1:1: unknown section [foo]: " + sections + module_rule}},
        {"foo.bar = 1\n", {"meshd.toml:1:1: unknown section [foo]: " + sections + module_rule}},
        {"listen = [\"127.0.0.1:7700\"]\n",
         {"meshd.toml:1:1: unknown key listen at the top level: listen belongs in [server]"}},
        {"foo = 1\n",
         {"meshd.toml:1:1: unknown key foo at the top level: every key belongs in a "
          "section; " +
          sections}},
        {"auth_token = 5\n",
         {"meshd.toml:1:14: auth_token must be a table ([auth_token], the section of module "
          "auth_token), got 5"}},
    });
}

// ---- syntax errors ------------------------------------------------------------------------

TEST(ConfigSyntax, PositionFromTomlpp) {
    check_rows({
        {"[limits]\nmax_frame = \n",
         {"meshd.toml:2:13: TOML syntax error while parsing key-value pair: expected value, saw "
          "'\\n'"}},
        {"[server\nlisten = []\n",
         {"meshd.toml:1:8: TOML syntax error while parsing table header: expected ']', saw "
          "'\\n'"}},
        {"[limits]\nmax_frame = 2048\nmax_frame = 4096\n",
         {"meshd.toml:3:13: TOML syntax error while parsing key-value pair: cannot redefine "
          "existing integer 'max_frame'"}},
        {"[log]\nlevel = \"info\n",
         {"meshd.toml:2:14: TOML syntax error while parsing string: unescaped control "
          "characters other than TAB (U+0009) are explicitly prohibited"}},
        // toml++ quotes what it saw raw; the line break must not split the error (found by
        // tests/fuzz/config_fuzz).
        {"[log]\nlevel = t\n",
         {"meshd.toml:2:10: TOML syntax error while parsing boolean: expected 'true', saw "
          "'t\\n'"}},
        {"[log]\nlevel = fals\r\n",
         {"meshd.toml:2:13: TOML syntax error while parsing boolean: expected 'false', saw "
          "'fals\\r'"}},
    });
}

// A syntax error is reported alone: toml++ stops there, so later errors would be guesses.
TEST(ConfigSyntax, StopsAtTheFirst) {
    ConfigResult r = parse("[limits]\nmax_frame = 1\n[foo\n");
    ASSERT_EQ(r.errors.size(), 1u);
    EXPECT_EQ(r.errors[0].line, 3);
}

TEST(ConfigSyntax, GarbageNeverThrows) {
    const std::string docs[] = {
        std::string("\0\0\0", 3),
        "\xff\xfe[limits]",
        "[[[",
        "a = {",
        "a = [1, 2",
        "=\n",
        "\"\n",
        "x = 1\n[x]\n",
        "a.b.c.d.e.f = 1\nmodules.load = [\"a\"]\n[a.b.c]\n",
    };
    for (const std::string& doc : docs) {
        ConfigResult r;
        EXPECT_NO_THROW(r = parse(doc));
        EXPECT_FALSE(r.errors.empty()) << doc;
        for (const ConfigError& e : r.errors)
            EXPECT_GT(e.line, 0) << e.to_string();
    }
}

// toml++ 3.3 runs into undefined behaviour on some non-ASCII characters outside strings (found
// by tests/fuzz/config_fuzz with `aé = 1`); meshd refuses them itself, at their position.
TEST(ConfigSyntax, NonAsciiOutsideStringsIsRefusedBeforeTomlpp) {
    const std::string outside = " outside a quoted string or comment: TOML allows non-ASCII "
                                "text only there (quote a key that needs it)";
    const std::string line_ending = " right after a line-ending backslash, which the TOML library "
                                    "meshd uses (toml++ 3.3) cannot read safely: start the line "
                                    "with an ASCII character or remove the backslash";
    check_rows({
        {"a\xc3\xa9 = 1\n", {"meshd.toml:1:2: non-ASCII U+00E9" + outside}},
        {"[limits]\nmax_d\xc3\xa9pth = 1\n", {"meshd.toml:2:6: non-ASCII U+00E9" + outside}},
        {"[log]\nlevel = \xca\x84\n", {"meshd.toml:2:9: non-ASCII U+0284" + outside}},
        {"[\xc3\xa9]\n", {"meshd.toml:1:2: non-ASCII U+00E9" + outside}},
        {"k = \"\xc3\xa9\" \xe2\x80\x83\n", {"meshd.toml:1:9: non-ASCII U+2003" + outside}},
        {"k = 'x' # \xc3\xa9\n\xf0\x9f\x98\x80 = 1\n",
         {"meshd.toml:2:1: non-ASCII U+1F600" + outside}},
        {"\xff = 1\n", {"meshd.toml:1:1: non-ASCII byte 0xFF (not UTF-8)" + outside}},
        {"s = \"\"\"\\\xc2\xa7\"\"\"\n",
         {"meshd.toml:1:9: non-ASCII U+00A7 after a backslash in a \"\"\" string: not a TOML "
          "escape (escapes are \\b \\t \\n \\f \\r \\\" \\\\ \\uXXXX \\UXXXXXXXX)"}},
        {"s = \"\"\"\\\n  \xc2\xa7\"\"\"\n", {"meshd.toml:2:3: non-ASCII U+00A7" + line_ending}},
        {"s = \"\"\"x\\ \r\n\r\n\t\xc3\xa9\"\"\"\n",
         {"meshd.toml:3:2: non-ASCII U+00E9" + line_ending}},
    });
}

// toml++ 3.3 reads a number or date ahead across quotes, with the same undefined behaviour
// (found by tests/fuzz/config_fuzz with `2.710".0\u0493a"` in an array): refused too.
TEST(ConfigSyntax, NonAsciiInAQuoteGluedToANumberIsRefused) {
    const std::string glued = " in the quote right after a number or date, which the TOML "
                              "library meshd uses (toml++ 3.3) cannot read safely: put a space "
                              "or a comma before the quote";
    check_rows({
        {"x = 2.7\"\xd2\x93\"\n", {"meshd.toml:1:9: non-ASCII U+0493" + glued}},
        {"[server]\nlisten = [\"a\", 1\"\xc3\xa9\"]\n",
         {"meshd.toml:2:18: non-ASCII U+00E9" + glued}},
        {"x = -'\xc3\xa9'\n", {"meshd.toml:1:7: non-ASCII U+00E9" + glued}},
        {"d = 1979-05-27 07\"\xc3\xa9\"\n", {"meshd.toml:1:19: non-ASCII U+00E9" + glued}},
        {"x = {a = 1, b = [2\"\xc3\xa9\"]}\n", {"meshd.toml:1:20: non-ASCII U+00E9" + glued}},
        {"x = [\n  [3,\n   4\"\xc3\xa9\"]]\n", {"meshd.toml:3:6: non-ASCII U+00E9" + glued}},
    });
    // Separated by a space, a comma or a bracket, it is an ordinary string (or toml++'s own
    // syntax error).
    EXPECT_EQ(parse_ok("[auth_token]\nx = [1, \"\xc3\xa9\", 2 ]\n")
                  .module_tables["auth_token"]
                  .size(),
              1u);
    // Keys are never read ahead: a key that starts with a digit may be followed by a quote.
    for (const char* doc : {"[auth_token]\nk1=\"\xc3\xa9\"\n", "[auth_token]\n1.\"\xc3\xa9\" = 1\n",
                            "[auth_token]\nt = {1.\"\xc3\xa9\"=1, 2=\"\xc3\xa9\"}\n",
                            "[auth_token.1.\"\xc3\xa9\"]\n", "[[auth_token.2\"\"]]\nx=[1]\n3=\"\xc3\xa9\"\n"}) {
        ConfigResult r = parse_config(doc, "meshd.toml");
        for (const ConfigError& e : r.errors)
            EXPECT_EQ(e.message.find("non-ASCII"), std::string::npos) << doc << ": "
                                                                        << e.to_string();
    }
}

// Everywhere TOML allows it, non-ASCII text still reaches toml++ and the config unchanged.
TEST(ConfigSyntax, NonAsciiInStringsAndCommentsIsKept) {
    const std::string doc = "\xef\xbb\xbf# caf\xc3\xa9\n"
                            "[auth_token]\n"
                            "basic = \"caf\xc3\xa9 \\\" \xc3\xa9\" # \xc3\xa9\n"
                            "literal = 'caf\xc3\xa9 \\'\n"
                            "\"k\xc3\xa9y\" = 1\n"
                            "ml = \"\"\"\n\xc3\xa9 \"\" \\\"\"\" \\\n  x\xc3\xa9\"\"\"\n"
                            "mll = '''\xc3\xa9\n\xc3\xa9 '' '''\n"
                            "quotes = \"\"\"a\"\"\"\"\n"
                            "after = \"\xc3\xa9\"\n";
    Config c = parse_ok(doc);
    const ModuleTable& t = c.module_tables["auth_token"];
    ASSERT_EQ(t.size(), 7u);
    EXPECT_EQ(t.at("basic").string, "caf\xc3\xa9 \" \xc3\xa9");
    EXPECT_EQ(t.at("literal").string, "caf\xc3\xa9 \\");
    EXPECT_EQ(t.at("k\xc3\xa9y").integer, 1);
    EXPECT_EQ(t.at("ml").string, "\xc3\xa9 \"\" \"\"\" x\xc3\xa9");
    EXPECT_EQ(t.at("mll").string, "\xc3\xa9\n\xc3\xa9 '' ");
    EXPECT_EQ(t.at("quotes").string, "a\"");
    EXPECT_EQ(t.at("after").string, "\xc3\xa9");
}

// ---- several errors -----------------------------------------------------------------------

TEST(ConfigErrors, AllAreReportedInFileOrder) {
    const std::string doc = "[server]\n"                   // 1
                            "listen = [\"localhost:1\"]\n" // 2
                            "data_dir = 7\n"               // 3
                            "[limits]\n"                   // 4
                            "max_frame = \"1M\"\n"         // 5
                            "max_depht = 3\n"              // 6
                            "max_queue = 1\n"              // 7
                            "[storage]\n"                  // 8
                            "sync = \"fast\"\n"            // 9
                            "[bogus]\n"                    // 10
                            "[log]\n"                      // 11
                            "level = \"loud\"\n";          // 12
    ConfigResult r = parse(doc, "/etc/meshd/meshd.toml");
    EXPECT_EQ(r.config, nullptr);
    // Each message spans several literals.
    // NOLINTBEGIN(bugprone-suspicious-missing-comma)
    EXPECT_EQ(
        errors_of(r),
        (Errors{
            "/etc/meshd/meshd.toml:2:11: server.listen[0] \"localhost:1\": host \"localhost\" is "
            "not a numeric IP address; host names are not resolved: write an IPv4 address like "
            "127.0.0.1 or an IPv6 address in brackets like [::1]",
            "/etc/meshd/meshd.toml:3:12: server.data_dir must be a path string, got 7",
            "/etc/meshd/meshd.toml:5:13: limits.max_frame must be an integer 1024..16777216, got "
            "\"1M\"",
            "/etc/meshd/meshd.toml:6:1: unknown key limits.max_depht (did you mean "
            "limits.max_depth?)",
            "/etc/meshd/meshd.toml:7:13: limits.max_queue must be an integer 65536..1073741824, "
            "got 1",
            "/etc/meshd/meshd.toml:9:8: storage.sync must be \"normal\" or \"full\", got \"fast\"",
            "/etc/meshd/meshd.toml:10:1: unknown section [bogus]: core sections are server, "
            "control, modules, limits, storage, log, presence, directory, history, typing, tasks; a "
            "module's section must "
            "name a module listed in modules.load",
            "/etc/meshd/meshd.toml:12:9: log.level must be \"debug\", \"info\", \"warn\" or "
            "\"error\", got \"loud\"",
        }));
    // NOLINTEND(bugprone-suspicious-missing-comma)
    ASSERT_FALSE(r.errors.empty());
    EXPECT_EQ(r.errors[0].file, "/etc/meshd/meshd.toml");
    EXPECT_EQ(r.errors[0].line, 2);
    EXPECT_EQ(r.errors[0].column, 11);
}

// A bad modules.load entry does not turn the valid modules' sections into unknown sections.
TEST(ConfigErrors, NoCascadeFromModulesLoad) {
    ConfigResult r = parse("[modules]\nload = [\"good\", \"Bad\"]\n[good]\nx = 1\n");
    EXPECT_EQ(errors_of(r),
              Errors{"meshd.toml:2:17: modules.load[1] must be a module name of 1 to 64 "
                     "characters a-z, 0-9 or _, got \"Bad\""});
}

// ---- paths --------------------------------------------------------------------------------

TEST(ConfigPaths, RelativeToTheConfigFile) {
    const std::string doc = "[server]\ndata_dir = \"data\"\n"
                            "[control]\nsocket = \"run/./control.sock\"\n"
                            "[modules]\ndir = \"../lib/meshd\"\n";
    Config c = parse_ok(doc, "/etc/meshd/meshd.toml");
    EXPECT_EQ(c.data_dir, "/etc/meshd/data");
    EXPECT_EQ(c.control_socket, "/etc/meshd/run/control.sock");
    EXPECT_EQ(c.modules_dir, "/etc/lib/meshd");
    EXPECT_EQ(c.path, "/etc/meshd/meshd.toml");

    Config rel = parse_ok(doc, "conf/meshd.toml");
    EXPECT_EQ(rel.data_dir, cwd() + "/conf/data");
    EXPECT_EQ(rel.modules_dir, cwd() + "/lib/meshd");
    EXPECT_EQ(rel.path, "conf/meshd.toml");

    Config bare = parse_ok(doc, "meshd.toml");
    EXPECT_EQ(bare.data_dir, cwd() + "/data");

    Config dot = parse_ok("[server]\ndata_dir = \".\"\n[modules]\ndir = \"mods/\"\n",
                          "/etc/meshd/meshd.toml");
    EXPECT_EQ(dot.data_dir, "/etc/meshd");
    EXPECT_EQ(dot.modules_dir, "/etc/meshd/mods");
}

TEST(ConfigPaths, AbsoluteStayAsWritten) {
    Config c =
        parse_ok("[server]\ndata_dir = \"/srv/meshd\"\n[control]\nsocket = \"/tmp/c.sock\"\n",
                 "conf/meshd.toml");
    EXPECT_EQ(c.data_dir, "/srv/meshd");
    EXPECT_EQ(c.control_socket, "/tmp/c.sock");
}

TEST(ConfigPaths, ControlSocketLength) {
    std::string ok = "/" + std::string(106, 's'); // 107 bytes: the most sun_path holds
    EXPECT_EQ(parse_ok("[control]\nsocket = \"" + ok + "\"\n").control_socket, ok);
    ConfigResult r = parse("[control]\nsocket = \"" + ok + "s\"\n");
    ASSERT_EQ(r.errors.size(), 1u);
    EXPECT_EQ(r.errors[0].to_string(),
              "meshd.toml:2:10: control.socket is \"/" + std::string(59, 's') +
                  "...\" (108 bytes), longer than the 107 bytes a Unix socket path may have: "
                  "choose a shorter path");
}

// ---- module tables ------------------------------------------------------------------------

TEST(ConfigModuleTables, Flattened) {
    Config c = parse_ok("[modules]\nload = [\"auth_token\", \"ratelimit\", \"metrics\"]\n"
                        "[auth_token]\nfile = \"tokens\"\nmax = -5\nstrict = true\n"
                        "ratio = 1.5\nlist = [1, 2]\n"
                        "[auth_token.sub]\nk = \"v\"\n[auth_token.sub.deeper]\nn = 7\n"
                        "[ratelimit]\n");
    ASSERT_EQ(c.module_tables.size(), 2u); // metrics has no section
    const ModuleTable& t = c.module_tables.at("auth_token");
    ASSERT_EQ(t.size(), 7u);
    EXPECT_EQ(t.at("file").type, ModuleValue::Type::string);
    EXPECT_EQ(t.at("file").string, "tokens");
    EXPECT_EQ(t.at("max").type, ModuleValue::Type::integer);
    EXPECT_EQ(t.at("max").integer, -5);
    EXPECT_EQ(t.at("strict").type, ModuleValue::Type::boolean);
    EXPECT_TRUE(t.at("strict").boolean);
    EXPECT_EQ(t.at("ratio").type, ModuleValue::Type::floating);
    EXPECT_DOUBLE_EQ(t.at("ratio").floating, 1.5);
    EXPECT_EQ(t.at("list").type, ModuleValue::Type::other);
    EXPECT_EQ(t.at("list").described, "an array");
    EXPECT_EQ(t.at("max").line, 5);
    EXPECT_EQ(t.at("max").column, 7);
    EXPECT_EQ(t.at("sub.k").string, "v");
    EXPECT_EQ(t.at("sub.deeper.n").integer, 7);
    EXPECT_TRUE(c.module_tables.at("ratelimit").empty());
}

TEST(ConfigModuleTables, DefaultLoadListNamesModules) {
    Config c = parse_ok("[route_direct]\nmode = \"strict\"\n");
    EXPECT_EQ(c.module_tables.at("route_direct").at("mode").string, "strict");
}

// Checks [m] of `text` against `keys`; returns the errors as FILE:LINE:COL lines.
std::vector<std::string> module_errors(const std::string& text,
                                       const std::vector<ModuleKeySpec>& keys) {
    Config c = parse_ok("[modules]\nload = [\"m\"]\n" + text);
    std::vector<ConfigError> errors;
    static const ModuleTable empty;
    auto it = c.module_tables.find("m");
    check_module_table("f.toml", "m", it == c.module_tables.end() ? empty : it->second, keys,
                       errors);
    std::vector<std::string> out;
    for (const auto& e : errors)
        out.push_back(e.to_string());
    return out;
}

std::vector<ModuleKeySpec> sample_keys() {
    ModuleKeySpec rate{ModuleKeySpec::Type::floating, "send_rate", 0, 1e6, true, "sends per second"};
    ModuleKeySpec burst{ModuleKeySpec::Type::integer, "send_burst", 1, 1000, true, ""};
    ModuleKeySpec dry{ModuleKeySpec::Type::boolean, "dry_run", 1, 0, true, ""};
    ModuleKeySpec listen{ModuleKeySpec::Type::string, "listen", 1, 0, false, ""};
    return {rate, burst, dry, listen};
}

TEST(ConfigModuleTables, ValidTableHasNoErrors) {
    EXPECT_TRUE(module_errors("[m]\nsend_rate = 2\nsend_burst = 5\ndry_run = false\n"
                              "listen = \"127.0.0.1:1\"\n",
                              sample_keys())
                    .empty());
    EXPECT_TRUE(module_errors("[m]\nsend_rate = 0.5\n", sample_keys()).empty());
    EXPECT_TRUE(module_errors("", sample_keys()).empty());
}

TEST(ConfigModuleTables, ErrorsArePositionedAndSay) {
    auto e = module_errors("[m]\nsend_rat = 2\nsend_burst = \"5\"\nsend_rate = -1\n"
                           "dry_run = 1\n[m.sub]\nx = 1\n",
                           sample_keys());
    ASSERT_EQ(e.size(), 5u);
    EXPECT_EQ(e[0], "f.toml:4:1: unknown key m.send_rat (did you mean m.send_rate?)");
    EXPECT_EQ(e[1], "f.toml:5:14: m.send_burst must be an integer, got \"5\"");
    EXPECT_EQ(e[2], "f.toml:6:13: m.send_rate = -1 is out of range (sends per second): it must "
                    "be 0..1000000");
    EXPECT_EQ(e[3], "f.toml:7:11: m.dry_run must be a boolean, got 1");
    EXPECT_EQ(e[4], "f.toml:9:1: unknown key m.sub.x: keys of [m] are send_rate, send_burst, "
                    "dry_run, listen");
}

TEST(ConfigModuleTables, IntegerRangeAndNoKeys) {
    auto e = module_errors("[m]\nsend_burst = 1001\n", sample_keys());
    ASSERT_EQ(e.size(), 1u);
    EXPECT_EQ(e[0], "f.toml:4:14: m.send_burst = 1001 is out of range: it must be 1..1000");
    e = module_errors("[m]\nx = 1\n", {});
    ASSERT_EQ(e.size(), 1u);
    EXPECT_EQ(e[0], "f.toml:4:1: unknown key m.x: module m takes no settings; remove [m]");
}

// ---- diff_config --------------------------------------------------------------------------

TEST(ConfigDiff, SplitsAppliedAndRestart) {
    Config before = parse_ok("");
    Config same = parse_ok("[limits]\nmax_frame = 1048576\n");
    ConfigDiff none = diff_config(before, same);
    EXPECT_TRUE(none.applied.empty());
    EXPECT_TRUE(none.restart_required.empty());

    Config after = parse_ok("[server]\nlisten = [\"127.0.0.1:7701\"]\n"
                            "[limits]\nmax_frame = 2048\n"
                            "[storage]\nsync = \"full\"\ndedupe_window_s = 60\n"
                            "[log]\nlevel = \"debug\"\n");
    ConfigDiff d = diff_config(before, after);
    EXPECT_EQ(d.applied, (std::vector<std::string>{"limits.max_frame", "storage.dedupe_window_s",
                                                   "log.level"}));
    EXPECT_EQ(d.restart_required, (std::vector<std::string>{"server.listen", "storage.sync"}));
}

TEST(ConfigDiff, EveryKeyIsCompared) {
    Config before = parse_ok("");
    Config after = parse_ok("[server]\nlisten = [\"[::1]:1\"]\ndata_dir = \"/d\"\n"
                            "[control]\nsocket = \"/s\"\n"
                            "[modules]\ndir = \"/m\"\nload = []\n"
                            "[limits]\nmax_frame = 2048\nmax_depth = 3\nmax_queue = 65536\n"
                            "max_inflight = 2\nmax_devices = 2\nhello_timeout_ms = 101\n"
                            "ping_interval_ms = 101\n"
                            "[storage]\nsync = \"full\"\ndedupe_window_s = 2\n"
                            "retention_days = 3\nmax_log_entries = 4\n"
                            "cache_bytes = 5\ncheckpoint_wal_bytes = 1048576\n"
                            "[log]\nlevel = \"error\"\n"
                            "[presence]\ngrace_ms = 1\naway_after_s = 1\nmax_watch = 2\n"
                            "[directory]\nmax_profile_bytes = 300\n"
                            "[history]\nreaders = 1\nmax_inflight = 1\n"
                            "[typing]\ninterval_ms = 100\n"
                            "[tasks]\nlease_s = 1\nqueue_cap = 1\nqueue_ttl_s = 1\n");
    ConfigDiff d = diff_config(before, after);
    std::vector<std::string> applied, restart;
    for (const KeyInfo& k : config_keys())
        (k.reloadable ? applied : restart).push_back(k.name);
    EXPECT_EQ(d.applied, applied);
    EXPECT_EQ(d.restart_required, restart);
    // The reloadable set is the design's: all [limits], [presence] and [directory] keys,
    // log.level, storage.dedupe_window_s, retention, storage.cache_bytes,
    // history.max_inflight, typing.interval_ms and every [tasks] key.
    EXPECT_EQ(applied, (std::vector<std::string>{
                           "limits.max_frame", "limits.max_depth", "limits.max_queue",
                           "limits.max_inflight", "limits.max_devices", "limits.hello_timeout_ms",
                           "limits.ping_interval_ms", "storage.dedupe_window_s",
                           "storage.retention_days", "storage.max_log_entries",
                           "storage.cache_bytes", "log.level", "presence.grace_ms",
                           "presence.away_after_s", "presence.max_watch",
                           "directory.max_profile_bytes", "history.max_inflight",
                           "typing.interval_ms", "tasks.lease_s", "tasks.queue_cap",
                           "tasks.queue_ttl_s"}));
}

TEST(ConfigModuleTables, SameValueTreatsIntegerAndFloatAlike) {
    // Module key changes are found by ModuleSet::prepare_reload with this comparison.
    Config c = parse_ok("[modules]\nload = [\"m\"]\n[m]\na = 5\nb = 5.0\nc = 5.5\nd = \"5\"\n"
                        "e = true\nf = 1\n");
    const ModuleTable& t = c.module_tables.at("m");
    EXPECT_TRUE(same_module_value(t.at("a"), t.at("b")));
    EXPECT_TRUE(same_module_value(t.at("b"), t.at("a")));
    EXPECT_FALSE(same_module_value(t.at("a"), t.at("c")));
    EXPECT_FALSE(same_module_value(t.at("a"), t.at("d")));
    EXPECT_FALSE(same_module_value(t.at("e"), t.at("f")));
    EXPECT_TRUE(same_module_value(t.at("e"), t.at("e")));
}

TEST(ConfigDiff, ListenTextDoesNotMatterOnlyTheAddress) {
    Config a = parse_ok("[server]\nlisten = [\"127.0.0.1:7700\"]\n");
    Config b = parse_ok("[server]\nlisten = [\"127.0.0.1:07700\"]\n");
    EXPECT_TRUE(diff_config(a, b).restart_required.empty());
}

// ---- the key list -------------------------------------------------------------------------

TEST(ConfigKeys, Table) {
    std::vector<std::string> names;
    for (const KeyInfo& k : config_keys()) {
        names.push_back(k.name);
        EXPECT_FALSE(k.type.empty()) << k.name;
        EXPECT_FALSE(k.default_text.empty()) << k.name;
        EXPECT_FALSE(k.help.empty()) << k.name;
    }
    EXPECT_EQ(names, (std::vector<std::string>{
                         "server.listen", "server.data_dir", "control.socket", "modules.dir",
                         "modules.load", "limits.max_frame", "limits.max_depth", "limits.max_queue",
                         "limits.max_inflight", "limits.max_devices", "limits.hello_timeout_ms",
                         "limits.ping_interval_ms", "storage.sync", "storage.dedupe_window_s",
                         "storage.retention_days", "storage.max_log_entries",
                         "storage.cache_bytes", "storage.checkpoint_wal_bytes", "log.level",
                         "presence.grace_ms",
                         "presence.away_after_s", "presence.max_watch",
                         "directory.max_profile_bytes", "history.readers", "history.max_inflight",
                         "typing.interval_ms", "tasks.lease_s", "tasks.queue_cap",
                         "tasks.queue_ttl_s"}));
    const KeyInfo& frame = config_keys()[5];
    EXPECT_EQ(frame.type, "integer");
    EXPECT_EQ(frame.default_text, "1048576");
    EXPECT_EQ(frame.range, "1024..16777216");
    EXPECT_TRUE(frame.reloadable);
    const KeyInfo& sync = config_keys()[12];
    EXPECT_EQ(sync.type, "string");
    EXPECT_EQ(sync.default_text, "\"normal\"");
    EXPECT_EQ(sync.range, "normal | full");
    EXPECT_FALSE(sync.reloadable);
    EXPECT_EQ(config_keys()[0].type, "array of strings");
    EXPECT_EQ(config_keys()[0].default_text, "[\"127.0.0.1:7700\"]");
}

TEST(ConfigKeys, EnumNames) {
    EXPECT_EQ(to_string(SyncMode::normal), "normal");
    EXPECT_EQ(to_string(SyncMode::full), "full");
    EXPECT_EQ(to_string(LogLevel::debug), "debug");
    EXPECT_EQ(to_string(LogLevel::info), "info");
    EXPECT_EQ(to_string(LogLevel::warn), "warn");
    EXPECT_EQ(to_string(LogLevel::error), "error");
}

// ---- files --------------------------------------------------------------------------------

class TempDir {
  public:
    TempDir() {
        std::string tmpl =
            (std::filesystem::temp_directory_path() / "meshd-config-XXXXXX").string();
        path_ = ::mkdtemp(tmpl.data()) ? tmpl : "";
    }
    ~TempDir() {
        std::error_code ec;
        if (!path_.empty())
            std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const { return path_; }

  private:
    std::string path_;
};

TEST(ConfigFiles, Unreadable) {
    TempDir dir;
    ASSERT_FALSE(dir.path().empty());
    std::string missing = dir.path() + "/nope.toml";
    ConfigResult r = load_config(missing);
    EXPECT_EQ(r.config, nullptr);
    EXPECT_EQ(errors_of(r), Errors{missing + ": cannot read: No such file or directory"});
    EXPECT_EQ(r.errors[0].line, 0);

    EXPECT_EQ(errors_of(load_config(dir.path())),
              Errors{dir.path() + ": cannot read: Is a directory"});
}

TEST(ConfigFiles, LoadsAndResolvesAgainstItsDirectory) {
    TempDir dir;
    ASSERT_FALSE(dir.path().empty());
    std::string file = dir.path() + "/meshd.toml";
    std::ofstream(file) << "[server]\ndata_dir = \"state\"\n[limits]\nmax_frame = 4096\n";
    ConfigResult r = load_config(file);
    ASSERT_EQ(errors_of(r), Errors{});
    EXPECT_EQ(r.config->data_dir, dir.path() + "/state");
    EXPECT_EQ(r.config->max_frame, 4096);
    EXPECT_EQ(r.config->path, file);

    std::ofstream(file) << "[limits]\nmax_frame = 1\n";
    EXPECT_EQ(errors_of(load_config(file)),
              Errors{file + ":2:13: limits.max_frame must be an integer 1024..16777216, got 1"});
}

TEST(ConfigFiles, ErrorToStringWithoutPosition) {
    ConfigError e{"x.toml", 0, 0, "cannot read: Permission denied"};
    EXPECT_EQ(e.to_string(), "x.toml: cannot read: Permission denied");
    ConfigError p{"x.toml", 3, 1, "unknown key server.lisen"};
    EXPECT_EQ(p.to_string(), "x.toml:3:1: unknown key server.lisen");
}

// The installed config parses cleanly, sets every key, and sets each to its default.
TEST(ConfigShipped, DefaultConfigParsesAndHasEveryKey) {
    ASSERT_FALSE(source_root().empty()) << "set MESHD_SOURCE_ROOT to the source tree";
    std::string path = source_root() + "/conf/meshd.toml";
    ConfigResult r = load_config(path);
    ASSERT_EQ(errors_of(r), Errors{});
    ConfigDiff d = diff_config(parse_ok(""), *r.config);
    EXPECT_TRUE(d.applied.empty()) << "conf/meshd.toml differs from the defaults";
    EXPECT_TRUE(d.restart_required.empty()) << "conf/meshd.toml differs from the defaults";

    // Every key is written out, not left to its default.
    std::string text = read_file(path);
    std::string section;
    std::vector<std::string> written;
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
        if (line.rfind('[', 0) == 0)
            section = line.substr(1, line.find(']') - 1);
        else if (size_t eq = line.find(" = "); eq != std::string::npos && line[0] != '#')
            written.push_back(section + "." + line.substr(0, eq));
    }
    for (const KeyInfo& k : config_keys()) {
        EXPECT_NE(std::find(written.begin(), written.end(), k.name), written.end())
            << k.name << " is missing from conf/meshd.toml";
    }
}

// Every key has an entry in meshd.toml(5) naming it and its default.
TEST(ConfigShipped, ManPageDocumentsEveryKey) {
    ASSERT_FALSE(source_root().empty()) << "set MESHD_SOURCE_ROOT to the source tree";
    std::string text = read_file(source_root() + "/man/meshd.toml.5");
    ASSERT_FALSE(text.empty()) << "man/meshd.toml.5 is missing";
    for (const KeyInfo& k : config_keys()) {
        size_t entry = text.find("\n.TP\n.B " + k.name + "\n");
        ASSERT_NE(entry, std::string::npos) << k.name << " has no .TP entry in man/meshd.toml.5";
        size_t end = std::min(text.find("\n.TP", entry + 1), text.find("\n.SH", entry + 1));
        std::string body = text.substr(entry, end - entry);
        EXPECT_NE(body.find(k.default_text), std::string::npos)
            << k.name << ": default " << k.default_text << " not in its man page entry";
        EXPECT_NE(body.find(k.reloadable ? "Reloadable: yes" : "Reloadable: no"), std::string::npos)
            << k.name << ": reloadable flag not in its man page entry";
        if (!k.range.empty() && k.type == "integer") {
            EXPECT_NE(body.find(k.range), std::string::npos)
                << k.name << ": range " << k.range << " not in its man page entry";
        }
    }
}

} // namespace
} // namespace meshd::core
