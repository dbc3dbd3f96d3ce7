// core/names: the rules for principal and device names.
//   principal: case-folded ASCII [a-z0-9._-]{1,64} (input may use upper case; it is folded)
//   device:    [A-Za-z0-9._-]{1,64}, kept as written
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <sys/types.h>

namespace meshd::core {

inline constexpr size_t max_name_len = 64;

// The canonical form of a principal name, or nothing if it is not a valid name.
std::optional<std::string> canonical_principal(std::string_view name);
bool valid_device(std::string_view device);
// A client message id: 1..64 printable ASCII (0x21..0x7e).
bool valid_client_id(std::string_view id);
// The name of a Unix group, or "gid N" when it has none.
std::string group_name(gid_t gid);

} // namespace meshd::core
