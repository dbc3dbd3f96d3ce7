// auth_token: bearer-token authentication.
//
// A hello carries a token (or the connection sent `Authorization: Bearer <token>`). The
// module asks meshd to verify it against the stored keyed hashes (meshd_host_token_verify);
// the secret itself is never compared or logged. A hello without a token is not this
// module's business (PASS), so a challenge-based module can answer it.
#include "meshd/module.h"

#include <cstring>

namespace {

meshd_host* g_host = nullptr;

int init(meshd_host* host, void** state) {
    g_host = host;
    *state = nullptr;
    return 0;
}

void fini(void*) {
    g_host = nullptr;
}

meshd_verdict auth(void*, const meshd_auth_request* req, meshd_auth_result* out) {
    if (!req->token || req->token_len == 0)
        return MESHD_PASS;
    if (meshd_host_token_verify(g_host, req->token, req->token_len, out->principal,
                                sizeof out->principal) != 0) {
        out->message = "invalid token";
        return MESHD_DENY;
    }
    // A hello that also names an id must name the token's owner.
    if (req->claimed_id_len > 0 &&
        (std::strlen(out->principal) != req->claimed_id_len ||
         std::memcmp(out->principal, req->claimed_id, req->claimed_id_len) != 0)) {
        out->message = "the token does not belong to the id in hello";
        return MESHD_DENY;
    }
    // meshctl sessions shows it; meshctl user token closes the sessions it opened.
    static constexpr char credential[] = "token";
    std::memcpy(out->credential, credential, sizeof credential);
    return MESHD_ALLOW;
}

const meshd_module descriptor = [] {
    meshd_module m{};
    m.abi = MESHD_MODULE_ABI;
    m.name = "auth_token";
    m.version = "0.1.0";
    m.init = init;
    m.fini = fini;
    m.auth = auth;
    return m;
}();

} // namespace

MESHD_MODULE_DEFINE(descriptor)
