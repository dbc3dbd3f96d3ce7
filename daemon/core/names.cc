// core/names: validation and case folding of principal, device and message-id names.
#include "core/names.h"

namespace meshd::core {

std::optional<std::string> canonical_principal(std::string_view name) {
    if (name.empty() || name.size() > max_name_len)
        return std::nullopt;
    std::string out(name);
    for (char& c : out) {
        if (c >= 'A' && c <= 'Z')
            c = static_cast<char>(c - 'A' + 'a');
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                  c == '-';
        if (!ok)
            return std::nullopt;
    }
    return out;
}

bool valid_device(std::string_view device) {
    if (device.empty() || device.size() > max_name_len)
        return false;
    for (char c : device) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

bool valid_client_id(std::string_view id) {
    if (id.empty() || id.size() > 64)
        return false;
    for (char c : id)
        if (c < 0x21 || c > 0x7e)
            return false;
    return true;
}

} // namespace meshd::core
