// session/profile: profile frame checks and the stored form of a profile.
#include "session/profile.h"

#include "core/json.h"
#include "core/log.h"
#include "core/names.h"

#include <algorithm>

namespace meshd::session {

std::optional<std::string> canonical_skill(std::string_view name) {
    return core::canonical_principal(name); // the same rules as principal names
}

std::string shown_value(std::string_view text) { return core::quoted_excerpt(text, 64); }

namespace {

core::Error bad(std::string message) {
    return core::make_error("bad_frame", std::move(message));
}

// The field's element, or nothing when it is absent or null.
std::optional<simdjson::dom::element> field(simdjson::dom::object frame, const char* key) {
    simdjson::dom::element e;
    if (frame[key].get(e) != simdjson::SUCCESS || e.is_null())
        return std::nullopt;
    return e;
}

} // namespace

core::Result<store::ProfileRef> build_profile(simdjson::dom::object frame, size_t max_bytes) {
    std::string_view display_name, description;
    if (auto e = field(frame, "display_name")) {
        if (e->get_string().get(display_name))
            return bad("\"display_name\" must be a string");
        if (display_name.size() > max_display_name_bytes)
            return bad("\"display_name\" is longer than " + std::to_string(max_display_name_bytes) +
                       " bytes");
    }
    if (auto e = field(frame, "description"))
        if (e->get_string().get(description))
            return bad("\"description\" must be a string");

    auto profile = std::make_shared<store::Profile>();
    if (auto e = field(frame, "skills")) {
        simdjson::dom::array skills;
        if (e->get_array().get(skills))
            return bad("\"skills\" must be an array of skill names, e.g. [\"translate\"]");
        // Counted as given, before any work per item: a frame may hold a huge array.
        if (size_t n = skills.size(); n > store::max_skills)
            return bad("\"skills\" lists " + std::to_string(n) + " skills, more than the " +
                       std::to_string(store::max_skills) + " a profile may have");
        size_t i = 0;
        for (simdjson::dom::element item : skills) {
            std::string_view text;
            if (item.get_string().get(text))
                return bad("\"skills\"[" + std::to_string(i) + "] must be a string");
            auto skill = canonical_skill(text);
            if (!skill)
                return bad("\"skills\"[" + std::to_string(i) + "] " + shown_value(text) +
                           " is not a skill name: use 1-64 of a-z 0-9 . _ -");
            if (std::find(profile->skills.begin(), profile->skills.end(), *skill) ==
                profile->skills.end())
                profile->skills.push_back(std::move(*skill));
            ++i;
        }
    }
    std::string metadata = "{}";
    if (auto e = field(frame, "metadata")) {
        if (!e->is_object())
            return bad("\"metadata\" must be a JSON object, e.g. {\"model\":\"...\"}");
        metadata = simdjson::minify(*e);
    }

    std::string& json = profile->json;
    json.reserve(64 + display_name.size() + description.size() + metadata.size());
    json += R"({"display_name":)";
    core::json_append_string(json, display_name);
    json += R"(,"description":)";
    core::json_append_string(json, description);
    json += R"(,"skills":[)";
    for (size_t i = 0; i < profile->skills.size(); ++i) {
        if (i > 0)
            json += ',';
        core::json_append_string(json, profile->skills[i]);
    }
    json += R"(],"metadata":)";
    json += metadata;
    json += '}';
    if (json.size() > max_bytes)
        return core::make_error("too_large", "the profile is " + std::to_string(json.size()) +
                                                 " bytes as stored, over "
                                                 "directory.max_profile_bytes (" +
                                                 std::to_string(max_bytes) +
                                                 "): shorten description or metadata");
    return store::ProfileRef(std::move(profile));
}

} // namespace meshd::session
