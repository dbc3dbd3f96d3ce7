// core/config: the daemon's configuration, read from TOML with toml++.
//
// Every key is declared once in the key table (config.cc): name, type, default, range and
// whether `meshctl reload` can apply it live. The same table validates files, produces the
// `FILE:LINE:COL: message` errors of `meshd --check`, and lists the keys for meshd.toml(5).
#pragma once

#include "core/result.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace meshd::core {

struct ListenAddr {
    std::string host; // "127.0.0.1", "::1", "0.0.0.0"
    uint16_t port = 0;
    std::string text; // as written: "127.0.0.1:7700"
};

enum class SyncMode { normal, full };
enum class LogLevel { debug, info, warn, error };

// One module's own TOML table, flattened: "key" or "sub.key" -> value.
struct ModuleValue {
    enum class Type { integer, boolean, string, floating, other } type = Type::other;
    int64_t integer = 0;
    double floating = 0;
    bool boolean = false;
    std::string string;
    std::string described; // "an integer", "an array", ... for errors
    int line = 0;          // where the value is written, for errors
    int column = 0;
    int key_line = 0;      // where its key is written, for "unknown key" errors
    int key_column = 0;
    bool operator==(const ModuleValue& o) const {
        return type == o.type && integer == o.integer && floating == o.floating &&
               boolean == o.boolean && string == o.string;
    }
};
using ModuleTable = std::map<std::string, ModuleValue, std::less<>>;

struct Config {
    std::string path; // the file it was read from, as given

    // [server]
    std::vector<ListenAddr> listen;
    std::string data_dir;
    // [control]
    std::string control_socket;
    // [modules]
    std::string modules_dir;
    std::vector<std::string> modules_load;
    // [limits]
    int64_t max_frame = 1048576;
    int64_t max_depth = 64;
    int64_t max_queue = 4194304;
    int64_t max_inflight = 1024;
    int64_t max_devices = 32;
    int64_t hello_timeout_ms = 10000;
    int64_t ping_interval_ms = 30000;
    // [storage]
    SyncMode sync = SyncMode::normal;
    int64_t dedupe_window_s = 86400;
    int64_t cache_bytes = 67108864;
    int64_t retention_days = 0;
    int64_t max_log_entries = 0;
    int64_t checkpoint_wal_bytes = 268435456;
    // [log]
    LogLevel log_level = LogLevel::info;
    // [presence]
    int64_t presence_grace_ms = 5000;
    int64_t away_after_s = 300;
    int64_t max_watch = 1000;
    // [directory]
    int64_t max_profile_bytes = 8192;
    // [history]
    int64_t history_readers = 2;
    int64_t history_max_inflight = 4;
    // [typing]
    int64_t typing_interval_ms = 1000;
    // [tasks]
    int64_t task_lease_s = 60;
    int64_t task_queue_cap = 10000;
    int64_t task_queue_ttl_s = 86400;

    // Top-level tables named after a module in modules.load, handed to that module.
    std::map<std::string, ModuleTable, std::less<>> module_tables;
};

struct ConfigError {
    std::string file;
    int line = 0; // 1-based; 0 when there is no position (e.g. the file cannot be read)
    int column = 0;
    std::string message;
    // "FILE:LINE:COL: message", or "FILE: message" without a position.
    std::string to_string() const;
};

struct ConfigResult {
    std::unique_ptr<Config> config; // null when errors is not empty
    std::vector<ConfigError> errors;
};

// Parse TOML text. `path` names the file in errors and anchors relative paths (data_dir,
// control.socket, modules.dir are resolved against the file's directory).
ConfigResult parse_config(std::string_view text, const std::string& path);
// Read and parse a file; an unreadable file is one error naming it.
ConfigResult load_config(const std::string& path);

// A key of the table, for documentation and tests.
struct KeyInfo {
    std::string name;         // "limits.max_frame"
    std::string type;         // "integer", "string", "array of strings", "boolean"
    std::string default_text; // as TOML: 1048576, "normal", ["127.0.0.1:7700"]
    std::string range;        // "1024..16777216", "normal | full", "" if any
    bool reloadable = false;
    std::string help; // one line
};
const std::vector<KeyInfo>& config_keys();

// Keys whose values differ between two configs, split by whether reload can apply them.
struct ConfigDiff {
    std::vector<std::string> applied;          // reloadable keys that changed
    std::vector<std::string> restart_required; // non-reloadable keys that changed
};
ConfigDiff diff_config(const Config& before, const Config& after);

// A key a module declares for its own table (from its meshd_config_key list).
struct ModuleKeySpec {
    enum class Type { integer, boolean, string, floating } type = Type::integer;
    std::string name; // "key" or "sub.key"
    double min = 1, max = 0; // integer and floating; min > max: unbounded
    bool reloadable = false;
    std::string help;
};

// Equal as settings: the same type and value, where 5 and 5.0 are the same number.
bool same_module_value(const ModuleValue& a, const ModuleValue& b);

// Checks module `module`'s table (as read from config_path) against the keys it declares:
// unknown keys (with a did-you-mean), wrong types and out-of-range values, as positioned
// errors like the core's. Appends to errors.
void check_module_table(const std::string& config_path, std::string_view module,
                        const ModuleTable& table, const std::vector<ModuleKeySpec>& keys,
                        std::vector<ConfigError>& errors);
// "host:port" ("127.0.0.1:7700", "[::1]:7700"; numeric hosts only) as server.listen takes it,
// or the reason it is not one.
Result<ListenAddr> parse_listen_addr(std::string_view text);

std::string_view to_string(SyncMode);
std::string_view to_string(LogLevel);

} // namespace meshd::core
