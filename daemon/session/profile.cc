// session/profile: profile frame checks and the stored form of a profile.
#include "session/profile.h"

#include "core/json.h"

#include <algorithm>

namespace meshd::session {

std::optional<std::string> canonical_skill(std::string_view name) {
    if (name.empty() || name.size() > max_skill_len)
        return std::nullopt;
    std::string out(name);
    for (char& c : out) {
        if (c >= 'A' && c <= 'Z')
            c = static_cast<char>(c - 'A' + 'a');
        bool ok =
            (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
        if (!ok)
            return std::nullopt;
    }
    return out;
}

std::string shown_value(std::string_view text) {
    constexpr size_t max_shown = 64;
    std::string out = "\"";
    for (size_t i = 0; i < text.size() && i < max_shown; ++i) {
        auto c = static_cast<unsigned char>(text[i]);
        out += c < 0x20 || c >= 0x7f ? '?' : static_cast<char>(c);
    }
    if (text.size() > max_shown)
        out += "...";
    return out + "\"";
}

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
