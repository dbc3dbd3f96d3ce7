// route_direct: direct messages to one principal.
//
// Handles every `to` that is a principal name (case-folded); leaves addresses with a prefix
// ("#group", "skill:...") to other modules. An unknown name is `unknown_peer`.
#include "meshd/module.h"

#include <string>
#include <string_view>

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
    std::string_view to(req->to, req->to_len);
    if (to.empty() || to[0] == '#' || to.find(':') != std::string_view::npos)
        return MESHD_PASS;
    if (meshd_host_route_add(recipients, to.data(), to.size()) != 0) { // the host folds case
        g_message = "no user or agent named '" + std::string(to) + "'";
        out->code = "unknown_peer";
        out->message = g_message.c_str();
        return MESHD_DENY;
    }
    return MESHD_ALLOW;
}

const meshd_module descriptor = [] {
    meshd_module m{};
    m.abi = MESHD_MODULE_ABI;
    m.name = "route_direct";
    m.version = "0.1.0";
    m.init = init;
    m.fini = fini;
    m.route = route;
    return m;
}();

} // namespace

MESHD_MODULE_DEFINE(descriptor)
