// tests/fuzz/config_fuzz: libFuzzer target for the TOML config layer (daemon/core/config.cc).
//
// One input is the text of a meshd.toml. parse_config must never crash, throw or hang on it;
// it may (and mostly will) return errors. In the fuzz build toml++ is compiled header-only, so
// its parser is instrumented and ASan-checked along with ours. Invariants:
//   - a result holds a Config or errors, never both, never neither;
//   - every error names the file, has a non-empty one-line message, a position inside the
//     text (or none), comes in file order, and is never an "internal error" (an exception
//     that escaped the checks);
//   - an accepted Config holds every integer key inside the range config_keys() documents,
//     absolute paths, at least one listener, module tables only for modules it loads, and
//     diff_config() finds no difference between it and itself;
//   - check_module_table, run on every module table against a fixed key list, gives errors
//     with the same properties.
#include "core/config.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using meshd::core::Config;
using meshd::core::ConfigError;
using meshd::core::ModuleKeySpec;

// Relative, so base-directory resolution runs too; nothing is read from or written to it.
const std::string kPath = "fuzz/meshd.toml";

void check(bool ok, const char* invariant) {
    if (ok)
        return;
    std::fprintf(stderr, "config_fuzz: invariant broken: %s\n", invariant);
    std::abort();
}

void check_errors(const std::vector<ConfigError>& errors, std::string_view text) {
    int lines = 1 + static_cast<int>(std::count(text.begin(), text.end(), '\n'));
    for (const ConfigError& e : errors) {
        check(e.file == kPath, "an error names the file it was given");
        check(!e.message.empty(), "an error has a message");
        check(e.message.find('\n') == std::string::npos, "an error message is one line");
        check(e.message.rfind("internal error", 0) != 0, "no error is an internal error");
        check(e.line >= 0 && e.column >= 0, "positions are not negative");
        check(e.line <= lines, "an error's line is inside the text");
        std::string shown = e.to_string();
        check(shown.rfind(kPath + ":", 0) == 0, "an error prints as FILE:...");
    }
    check(std::is_sorted(errors.begin(), errors.end(),
                         [](const ConfigError& a, const ConfigError& b) {
                             return std::pair(a.line, a.column) < std::pair(b.line, b.column);
                         }),
          "errors come in file order");
}

// "MIN..MAX" from config_keys()' range text.
std::pair<int64_t, int64_t> range_of(const std::string& key) {
    for (const auto& info : meshd::core::config_keys()) {
        if (info.name != key)
            continue;
        size_t dots = info.range.find("..");
        check(dots != std::string::npos, "an integer key documents its range as MIN..MAX");
        return {std::stoll(info.range.substr(0, dots)), std::stoll(info.range.substr(dots + 2))};
    }
    check(false, "every integer key this target checks is in config_keys()");
    return {0, 0};
}

void check_config(const Config& cfg) {
    const std::pair<const char*, int64_t Config::*> integers[] = {
        {"limits.max_frame", &Config::max_frame},
        {"limits.max_depth", &Config::max_depth},
        {"limits.max_queue", &Config::max_queue},
        {"limits.max_inflight", &Config::max_inflight},
        {"limits.max_devices", &Config::max_devices},
        {"limits.hello_timeout_ms", &Config::hello_timeout_ms},
        {"limits.ping_interval_ms", &Config::ping_interval_ms},
        {"storage.dedupe_window_s", &Config::dedupe_window_s},
        {"storage.checkpoint_wal_bytes", &Config::checkpoint_wal_bytes},
    };
    for (const auto& [name, member] : integers) {
        auto [min, max] = range_of(name);
        check(cfg.*member >= min && cfg.*member <= max, "an accepted integer is in its range");
    }
    check(cfg.path == kPath, "the config remembers its file");
    check(!cfg.listen.empty(), "an accepted config listens somewhere");
    for (const std::string* path : {&cfg.data_dir, &cfg.control_socket, &cfg.modules_dir})
        check(!path->empty() && path->front() == '/', "paths are resolved to absolute ones");
    for (const auto& [module, table] : cfg.module_tables)
        check(std::find(cfg.modules_load.begin(), cfg.modules_load.end(), module) !=
                  cfg.modules_load.end(),
              "a module table belongs to a loaded module");
    auto diff = meshd::core::diff_config(cfg, cfg);
    check(diff.applied.empty() && diff.restart_required.empty(), "a config equals itself");
}

// Keys a made-up module declares: one of each type, bounded and not, and a nested one.
const std::vector<ModuleKeySpec>& module_keys() {
    static const std::vector<ModuleKeySpec> keys = [] {
        std::vector<ModuleKeySpec> out(5);
        out[0].type = ModuleKeySpec::Type::integer;
        out[0].name = "limit";
        out[0].min = 1;
        out[0].max = 100;
        out[1].type = ModuleKeySpec::Type::floating;
        out[1].name = "rate";
        out[1].min = 0;
        out[1].max = 1;
        out[1].help = "a fraction";
        out[2].type = ModuleKeySpec::Type::string;
        out[2].name = "word";
        out[3].type = ModuleKeySpec::Type::boolean;
        out[3].name = "on";
        out[4].type = ModuleKeySpec::Type::integer;
        out[4].name = "sub.count"; // min > max: unbounded
        return out;
    }();
    return keys;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    meshd::core::ConfigResult result = meshd::core::parse_config(text, kPath);
    check((result.config == nullptr) != result.errors.empty(),
          "a result has a config or errors, never both or neither");
    check_errors(result.errors, text);
    if (!result.config)
        return 0;
    check_config(*result.config);

    for (const auto& [module, table] : result.config->module_tables) {
        std::vector<ConfigError> errors;
        meshd::core::check_module_table(kPath, module, table, module_keys(), errors);
        check_errors(errors, text);
        std::vector<ConfigError> none_declared;
        meshd::core::check_module_table(kPath, module, table, {}, none_declared);
        check(none_declared.size() == table.size(), "a module with no keys refuses every key");
        check_errors(none_declared, text);
    }
    return 0;
}
