// core/names: validation and case folding of principal, device and message-id names.
#include "core/names.h"

#include <cerrno>
#include <grp.h>
#include <vector>

namespace meshd::core {

std::optional<std::string> canonical_principal(std::string_view name) {
    if (name.empty() || name.size() > max_name_len)
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

std::string group_name(gid_t gid) {
    std::vector<char> buf(4096);
    struct group entry {};
    struct group* found = nullptr;
    while (getgrgid_r(gid, &entry, buf.data(), buf.size(), &found) == ERANGE &&
           buf.size() < size_t{1024} * 1024)
        buf.resize(buf.size() * 2);
    if (found == nullptr || found->gr_name == nullptr)
        return "gid " + std::to_string(gid);
    return found->gr_name;
}

} // namespace meshd::core
