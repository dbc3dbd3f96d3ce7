// route_groups: messages to a group, addressed "#name".
//
// The sender must be a member (else `forbidden`); the message is then appended once to every
// member's log, the sender's included, with `to` stored as "#name". Groups and their members
// live in meshd's store (meshctl group add/list/del/remove); membership changes apply to the
// next send. Other addresses are left to other modules.
#include "meshd/module.h"

#include <string>

namespace {

meshd_host* g_host = nullptr;
std::string g_message; // lives until the next call, as the ABI asks

int init(meshd_host* host, void** state) {
    g_host = host;
    *state = nullptr;
    return 0;
}

void fini(void*) {
    g_host = nullptr;
}

meshd_verdict route(void*, const meshd_route_request* req, meshd_route_out* recipients,
                    meshd_route_result* out) {
    if (req->to_len < 2 || req->to[0] != '#')
        return MESHD_PASS;
    std::string group(req->to + 1, req->to_len - 1);
    int member = meshd_host_group_has_member(g_host, group.data(), group.size(), req->sender,
                                             req->sender_len);
    if (member < 0) {
        g_message = "no group named #" + group;
        out->code = "unknown_peer";
        out->message = g_message.c_str();
        return MESHD_DENY;
    }
    if (member == 0) {
        g_message = "you are not a member of #" + group;
        out->code = "forbidden";
        out->message = g_message.c_str();
        return MESHD_DENY;
    }
    meshd_host_route_add_group(recipients, group.data(), group.size());
    return MESHD_ALLOW;
}

const meshd_module descriptor = [] {
    meshd_module m{};
    m.abi = MESHD_MODULE_ABI;
    m.name = "route_groups";
    m.version = "0.1.0";
    m.init = init;
    m.fini = fini;
    m.route = route;
    return m;
}();

} // namespace

MESHD_MODULE_DEFINE(descriptor)
