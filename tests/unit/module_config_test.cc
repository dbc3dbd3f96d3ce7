// tests/unit/module_config_test: a module's table checked against the keys its descriptor
// declares (daemon/router/module_config.cc): exact messages with line:col, and what a reload
// applies or keeps for a restart.
#include "router/module_config.h"

#include <gtest/gtest.h>
#include <string>
#include <vector>

namespace meshd::router {
namespace {

const meshd_config_key keys[] = {
    {"listen", MESHD_CONFIG_STRING, 0, 0, 0, "address to serve on", {}},
    {"path", MESHD_CONFIG_STRING, 0, 0, 1, "the HTTP path", {}},
    {"burst", MESHD_CONFIG_INT, 1, 1000, 1, "messages at once", {}},
    {"rate", MESHD_CONFIG_DOUBLE, 0.5, 100, 1, nullptr, {}},
    {"any", MESHD_CONFIG_INT, 1, 0, 1, "unbounded", {}},
    {"strict", MESHD_CONFIG_BOOL, 0, 0, 1, "", {}},
    {"sub.key", MESHD_CONFIG_STRING, 0, 0, 1, "nested", {}},
    {nullptr, MESHD_CONFIG_INT, 0, 0, 0, nullptr, {}},
};

core::ModuleTable table_of(const std::string& body) {
    auto r = core::parse_config("[modules]\nload = [\"mod\"]\n[mod]\n" + body, "m.toml");
    EXPECT_TRUE(r.config) << (r.errors.empty() ? "" : r.errors[0].to_string());
    if (!r.config)
        return {};
    return r.config->module_tables["mod"];
}

std::vector<std::string> errors_of(const std::string& body, const meshd_config_key* list = keys) {
    std::vector<std::string> out;
    for (const auto& e : check_module_table("mod", list, table_of(body), "m.toml"))
        out.push_back(e.to_string());
    return out;
}

TEST(ModuleConfig, AcceptsDeclaredKeysOfTheRightType) {
    EXPECT_EQ(errors_of("listen = \"127.0.0.1:1\"\npath = \"/x\"\nburst = 1000\nrate = 2\n"
                        "any = -7\nstrict = false\n[mod.sub]\nkey = \"v\"\n"),
              std::vector<std::string>{});
    EXPECT_EQ(errors_of("rate = 0.5\n"), std::vector<std::string>{});
}

TEST(ModuleConfig, ReportsEveryErrorWithLineAndColumn) {
    struct Row {
        std::string body;
        std::vector<std::string> errors;
    };
    const Row rows[] = {
        {"lisen = \"x\"\n",
         {"m.toml:4:1: unknown key mod.lisen (did you mean mod.listen?): module mod takes "
          "listen, path, burst, rate, any, strict, sub.key"}},
        {"zzzzzz = 1\n",
         {"m.toml:4:1: unknown key mod.zzzzzz: module mod takes listen, path, burst, rate, any, "
          "strict, sub.key"}},
        {"listen = 9770\n",
         {"m.toml:4:10: mod.listen must be a string (address to serve on), got 9770"}},
        {"burst = 0\n",
         {"m.toml:4:9: mod.burst must be an integer 1..1000 (messages at once), got 0"}},
        {"burst = 1.5\n",
         {"m.toml:4:9: mod.burst must be an integer 1..1000 (messages at once), got 1.5"}},
        {"rate = 100.5\n", {"m.toml:4:8: mod.rate must be a number 0.5..100, got 100.5"}},
        {"rate = \"fast\"\n", {"m.toml:4:8: mod.rate must be a number 0.5..100, got \"fast\""}},
        {"strict = 1\n", {"m.toml:4:10: mod.strict must be a boolean (true or false), got 1"}},
        {"path = [\"/a\"]\n",
         {"m.toml:4:8: mod.path must be a string (the HTTP path), got an array or a date"}},
        {"path = 1\nburst = 5000\n",
         {"m.toml:4:8: mod.path must be a string (the HTTP path), got 1",
          "m.toml:5:9: mod.burst must be an integer 1..1000 (messages at once), got 5000"}},
    };
    for (const Row& row : rows)
        EXPECT_EQ(errors_of(row.body), row.errors) << row.body;
}

TEST(ModuleConfig, AModuleWithoutAListTakesNoKeys) {
    EXPECT_EQ(errors_of("", nullptr), std::vector<std::string>{});
    EXPECT_EQ(errors_of("x = 1\n", nullptr),
              std::vector<std::string>{"m.toml:4:1: unknown key mod.x: module mod takes no "
                                       "settings"});
}

TEST(ModuleConfig, ReloadAppliesReloadableKeysAndKeepsTheOthers) {
    core::ModuleTable started = table_of("listen = \"127.0.0.1:1\"\npath = \"/a\"\nburst = 5\n");
    core::ModuleTable current = started;
    core::ModuleTable next = table_of("listen = \"127.0.0.1:2\"\npath = \"/b\"\nburst = 5\n");
    ModuleTableDiff d = diff_module_table("mod", keys, started, current, next);
    EXPECT_EQ(d.applied, std::vector<std::string>{"mod.path"});
    EXPECT_EQ(d.restart_required, std::vector<std::string>{"mod.listen"});
    // The module keeps seeing the listen address it started with.
    EXPECT_EQ(next.at("listen").string, "127.0.0.1:1");
    EXPECT_EQ(next.at("path").string, "/b");

    // A non-reloadable key removed from the file stays as it was, and is reported again on
    // every reload until the restart; one added is held back the same way.
    core::ModuleTable removed = table_of("path = \"/b\"\nburst = 5\n");
    d = diff_module_table("mod", keys, started, next, removed);
    EXPECT_EQ(d.applied, std::vector<std::string>{});
    EXPECT_EQ(d.restart_required, std::vector<std::string>{"mod.listen"});
    EXPECT_EQ(removed.at("listen").string, "127.0.0.1:1");

    core::ModuleTable none = table_of("");
    core::ModuleTable added = table_of("listen = \"127.0.0.1:3\"\n");
    d = diff_module_table("mod", keys, none, none, added);
    EXPECT_EQ(d.restart_required, std::vector<std::string>{"mod.listen"});
    EXPECT_EQ(added.count("listen"), 0u);
}

} // namespace
} // namespace meshd::router
