// router/module_config: a module's own TOML table checked against the keys its descriptor
// declares (meshd_module.config), at start and before every reload.
//
// The checks mirror the core's: an unknown key, a wrong type or a value out of range is an
// error FILE:LINE:COL: message, all of a table's errors reported together. A key declared
// not reloadable keeps the value it had at start until meshd restarts.
#pragma once

#include "core/config.h"
#include "meshd/module.h"

#include <string>
#include <string_view>
#include <vector>

namespace meshd::router {

// Errors of [module] against keys (NULL: the module takes no keys). file names the config.
std::vector<core::ConfigError> check_module_table(std::string_view module,
                                                  const meshd_config_key* keys,
                                                  const core::ModuleTable& table,
                                                  const std::string& file);

struct ModuleTableDiff {
    std::vector<std::string> applied;          // "module.key" of reloadable keys that changed
    std::vector<std::string> restart_required; // "module.key" of other keys that changed
};

// Compares next with the table in use (current) and the one at start (started). Keys that
// are not reloadable get their start value (or absence) back in next.
ModuleTableDiff diff_module_table(std::string_view module, const meshd_config_key* keys,
                                  const core::ModuleTable& started,
                                  const core::ModuleTable& current, core::ModuleTable& next);

} // namespace meshd::router
