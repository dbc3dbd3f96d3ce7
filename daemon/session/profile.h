// session/profile: what a principal may publish in the directory. Checks a profile frame's
// fields and skill names, and builds the profile as stored and served by who. Pure functions
// of their input (no store, no loop), so they are unit-tested and fuzzed on their own.
#pragma once

#include "core/names.h"
#include "core/result.h"
#include "store/store.h"

#include <optional>
#include <simdjson.h>
#include <string>
#include <string_view>

namespace meshd::session {

inline constexpr size_t max_display_name_bytes = 256;
inline constexpr size_t max_skill_len = core::max_name_len; // skills follow the name rules

// A skill name in canonical form: ASCII [a-z0-9._-]{1,64}, upper case folded to lower; nothing
// if it is not a skill name.
std::optional<std::string> canonical_skill(std::string_view name);

// Checks the fields of a profile frame (display_name, description, skills, metadata; each
// optional, null counting as absent) and builds the profile that replaces the principal's:
//   {"display_name":"..","description":"..","skills":["..",..],"metadata":{..}}
// Skills are canonical, repeats dropped, in the order given. Errors: bad_frame naming the
// field, or too_large when that JSON text is longer than max_bytes.
core::Result<store::ProfileRef> build_profile(simdjson::dom::object frame, size_t max_bytes);

// A client's string shown in an error: printable ASCII only (others become '?'), quoted, cut
// after 64 characters, so the error frame stays valid UTF-8 and short.
std::string shown_value(std::string_view text);

} // namespace meshd::session
