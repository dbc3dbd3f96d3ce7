// router/module_config: checking and diffing a module's table against its declared keys.
#include "router/module_config.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>

namespace meshd::router {

namespace {

using Type = core::ModuleValue::Type;

const meshd_config_key* find_key(const meshd_config_key* keys, std::string_view name) {
    for (const meshd_config_key* k = keys; k && k->name; ++k)
        if (name == k->name)
            return k;
    return nullptr;
}

std::string key_list(const meshd_config_key* keys) {
    std::string out;
    for (const meshd_config_key* k = keys; k && k->name; ++k) {
        if (!out.empty())
            out += ", ";
        out += k->name;
    }
    return out;
}

size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j)
        row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        size_t diagonal = row[0];
        row[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
            diagonal = up;
        }
    }
    return row[b.size()];
}

std::optional<std::string_view> closest_key(const meshd_config_key* keys, std::string_view name) {
    std::optional<std::string_view> best;
    size_t best_distance = 3; // a guess further away than 2 edits is noise
    for (const meshd_config_key* k = keys; k && k->name; ++k) {
        size_t d = edit_distance(name, k->name);
        if (d < best_distance) {
            best_distance = d;
            best = k->name;
        }
    }
    return best;
}

std::string number_text(double v) {
    if (v == std::trunc(v) && std::fabs(v) < 1e15)
        return std::to_string(static_cast<int64_t>(v));
    std::string s = std::to_string(v);
    while (s.size() > 1 && s.back() == '0')
        s.pop_back();
    return s;
}

std::string describe(const core::ModuleValue& v) {
    switch (v.type) {
    case Type::integer:
        return std::to_string(v.integer);
    case Type::boolean:
        return v.boolean ? "true" : "false";
    case Type::string: {
        std::string out = "\"";
        for (char c : v.string)
            out += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
        return out + "\"";
    }
    case Type::floating:
        return number_text(v.floating);
    case Type::other:
        break;
    }
    return "an array or a date";
}

const char* type_name(meshd_config_type t) {
    switch (t) {
    case MESHD_CONFIG_INT:
        return "an integer";
    case MESHD_CONFIG_BOOL:
        return "a boolean (true or false)";
    case MESHD_CONFIG_STRING:
        return "a string";
    case MESHD_CONFIG_DOUBLE:
        return "a number";
    }
    return "a value";
}

bool type_matches(meshd_config_type t, const core::ModuleValue& v) {
    switch (t) {
    case MESHD_CONFIG_INT:
        return v.type == Type::integer;
    case MESHD_CONFIG_BOOL:
        return v.type == Type::boolean;
    case MESHD_CONFIG_STRING:
        return v.type == Type::string;
    case MESHD_CONFIG_DOUBLE:
        return v.type == Type::floating || v.type == Type::integer;
    }
    return false;
}

bool same_value(const core::ModuleValue& a, const core::ModuleValue& b) {
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
        break;
    }
    return true;
}

bool same_entry(const core::ModuleTable& a, const core::ModuleTable& b, const std::string& key) {
    auto x = a.find(key);
    auto y = b.find(key);
    if (x == a.end() || y == b.end())
        return (x == a.end()) == (y == b.end());
    return same_value(x->second, y->second);
}

} // namespace

std::vector<core::ConfigError> check_module_table(std::string_view module,
                                                  const meshd_config_key* keys,
                                                  const core::ModuleTable& table,
                                                  const std::string& file) {
    std::vector<core::ConfigError> errors;
    const std::string prefix = std::string(module) + ".";
    for (const auto& [name, value] : table) {
        const meshd_config_key* k = find_key(keys, name);
        if (!k) {
            std::string message = "unknown key " + prefix + name;
            if (auto guess = closest_key(keys, name))
                message += " (did you mean " + prefix + std::string(*guess) + "?)";
            std::string known = key_list(keys);
            message += known.empty() ? ": module " + std::string(module) + " takes no settings"
                                     : ": module " + std::string(module) + " takes " + known;
            errors.push_back({file, value.key_line, value.key_column, std::move(message)});
            continue;
        }
        bool ranged =
            (k->type == MESHD_CONFIG_INT || k->type == MESHD_CONFIG_DOUBLE) && k->min <= k->max;
        std::string expected = type_name(k->type);
        if (ranged)
            expected += " " + number_text(k->min) + ".." + number_text(k->max);
        std::string what = prefix + name + " must be " + expected;
        if (k->help && *k->help)
            what += " (" + std::string(k->help) + ")";
        if (!type_matches(k->type, value)) {
            errors.push_back({file, value.line, value.column, what + ", got " + describe(value)});
            continue;
        }
        if (ranged) {
            double v =
                value.type == Type::integer ? static_cast<double>(value.integer) : value.floating;
            if (std::isnan(v) || v < k->min || v > k->max)
                errors.push_back(
                    {file, value.line, value.column, what + ", got " + describe(value)});
        }
    }
    std::sort(errors.begin(), errors.end(), [](const auto& a, const auto& b) {
        return std::tie(a.line, a.column) < std::tie(b.line, b.column);
    });
    return errors;
}

ModuleTableDiff diff_module_table(std::string_view module, const meshd_config_key* keys,
                                  const core::ModuleTable& started,
                                  const core::ModuleTable& current, core::ModuleTable& next) {
    ModuleTableDiff diff;
    const std::string prefix = std::string(module) + ".";
    for (const meshd_config_key* k = keys; k && k->name; ++k) {
        const std::string name = k->name;
        if (k->reloadable) {
            if (!same_entry(current, next, name))
                diff.applied.push_back(prefix + name);
            continue;
        }
        if (same_entry(started, next, name))
            continue;
        diff.restart_required.push_back(prefix + name);
        if (auto it = started.find(name); it != started.end())
            next.insert_or_assign(name, it->second);
        else
            next.erase(name);
    }
    return diff;
}

} // namespace meshd::router
