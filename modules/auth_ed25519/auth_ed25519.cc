// auth_ed25519: challenge authentication with ed25519 keys (contract §2).
//
//   C: {"type":"hello","id":"alice","pubkey":"<base64, 32 bytes>"}      step 0: CHALLENGE
//   S: {"type":"challenge","nonce":"<base64, 32 random bytes>"}          (meshd sends it)
//   C: {"type":"auth","sig":"<base64 signature of 'meshd-auth-v1' || nonce>"}   step 1
//
// Step 0 answers every well-formed hello with a fresh challenge, registered key or not, so
// that a client learns nothing about which ids or keys exist before it proves it holds the
// secret key. Step 1 verifies the signature against the hello's key first, then asks meshd
// whether that key is registered for the id (meshctl key add). The nonce is random per
// challenge and kept by meshd per connection, so a signature made for another connection's
// challenge, or an earlier one, does not verify. A hello with no pubkey is another module's
// business (PASS).
//
// [auth_ed25519] challenge_timeout_ms: how long a client has to answer (default 10000).
#include "meshd/module.h"

#include <cstring>
#include <sodium.h>
#include <string>
#include <string_view>

namespace {

constexpr char sign_prefix[] = "meshd-auth-v1"; // without its NUL
constexpr size_t nonce_bytes = 32;
constexpr int64_t default_timeout_ms = 10000;
constexpr int64_t min_timeout_ms = 100;
constexpr int64_t max_timeout_ms = 60000;

struct State {
    meshd_host* host = nullptr;
    uint32_t challenge_timeout_ms = default_timeout_ms;
    std::string message; // the last DENY message; lives until the next call
};

State g_state;

const meshd_config_key config_keys[] = {
    [] {
        meshd_config_key k{};
        k.name = "challenge_timeout_ms";
        k.type = MESHD_CONFIG_INT;
        k.min = min_timeout_ms;
        k.max = max_timeout_ms;
        k.reloadable = 1;
        k.help = "how long a client has to answer the challenge, in ms";
        return k;
    }(),
    meshd_config_key{},
};

// Reads [auth_ed25519]; meshd has checked it against config_keys already, but a module
// must not trust that with its own safety.
bool read_config(State& st) {
    int64_t timeout = default_timeout_ms;
    int rc = meshd_host_config_int(st.host, "challenge_timeout_ms", &timeout);
    if (rc == 1)
        timeout = default_timeout_ms;
    if (rc < 0 || timeout < min_timeout_ms || timeout > max_timeout_ms) {
        meshd_host_log(st.host, MESHD_LOG_ERROR, "config.invalid",
                       "auth_ed25519.challenge_timeout_ms must be an integer 100..60000");
        return false;
    }
    st.challenge_timeout_ms = static_cast<uint32_t>(timeout);
    return true;
}

// Standard base64, padded or not; false if the text is not base64.
bool decode_base64(const char* text, size_t len, std::string& out) {
    out.assign(len / 4 * 3 + 3, '\0');
    size_t bin_len = 0;
    for (int variant :
         {sodium_base64_VARIANT_ORIGINAL, sodium_base64_VARIANT_ORIGINAL_NO_PADDING}) {
        const char* end = nullptr;
        if (sodium_base642bin(reinterpret_cast<unsigned char*>(out.data()), out.size(), text, len,
                              nullptr, &bin_len, &end, variant) == 0 &&
            end == text + len) {
            out.resize(bin_len);
            return true;
        }
    }
    out.clear();
    return false;
}

meshd_verdict deny(std::string message, meshd_auth_result* out) {
    g_state.message = std::move(message);
    out->message = g_state.message.c_str();
    return MESHD_DENY;
}

meshd_verdict challenge(meshd_auth_result* out) {
    randombytes_buf(out->challenge, nonce_bytes);
    out->challenge_len = nonce_bytes;
    out->challenge_timeout_ms = g_state.challenge_timeout_ms;
    return MESHD_CHALLENGE;
}

meshd_verdict verify(const meshd_auth_request* req, const std::string& pubkey,
                     meshd_auth_result* out) {
    std::string sig;
    if (!req->sig || req->sig_len == 0)
        return deny("auth needs \"sig\": the base64 ed25519 signature of \"meshd-auth-v1\" "
                    "followed by the nonce's bytes",
                    out);
    if (!decode_base64(req->sig, req->sig_len, sig))
        return deny("\"sig\" is not standard base64", out);
    if (sig.size() != crypto_sign_BYTES)
        return deny("\"sig\" is " + std::to_string(sig.size()) +
                        " bytes; an ed25519 signature is 64 bytes",
                    out);
    std::string signed_text(sign_prefix, sizeof sign_prefix - 1);
    signed_text.append(reinterpret_cast<const char*>(req->challenge), req->challenge_len);
    if (crypto_sign_verify_detached(reinterpret_cast<const unsigned char*>(sig.data()),
                                    reinterpret_cast<const unsigned char*>(signed_text.data()),
                                    signed_text.size(),
                                    reinterpret_cast<const unsigned char*>(pubkey.data())) != 0)
        return deny("the signature does not verify: sign \"meshd-auth-v1\" followed by the 32 "
                    "bytes of this connection's nonce with the secret key of \"pubkey\"",
                    out);
    if (meshd_host_key_registered(g_state.host, req->claimed_id, req->claimed_id_len,
                                  reinterpret_cast<const unsigned char*>(pubkey.data()),
                                  pubkey.size()) != 1)
        return deny("this key is not registered for this id (the admin registers it with "
                    "meshctl key add ID PUBKEY)",
                    out);
    // The host case-folded the id and checked it is a valid name (< sizeof principal).
    if (req->claimed_id_len >= sizeof out->principal)
        return deny("\"id\" is too long", out);
    std::memcpy(out->principal, req->claimed_id, req->claimed_id_len);
    out->principal[req->claimed_id_len] = '\0';
    // "ed25519:" + 44 characters of base64 + NUL fits in credential[96].
    std::string credential = "ed25519:";
    size_t at = credential.size();
    credential.resize(at + sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_ORIGINAL));
    sodium_bin2base64(credential.data() + at, credential.size() - at,
                      reinterpret_cast<const unsigned char*>(pubkey.data()), pubkey.size(),
                      sodium_base64_VARIANT_ORIGINAL);
    std::memcpy(out->credential, credential.c_str(), std::strlen(credential.c_str()) + 1);
    return MESHD_ALLOW;
}

meshd_verdict auth(void*, const meshd_auth_request* req, meshd_auth_result* out) noexcept {
    try {
        if (!req->pubkey || req->pubkey_len == 0)
            return MESHD_PASS; // a token hello, or another module's scheme
        if (req->claimed_id_len == 0)
            return deny("a hello with \"pubkey\" needs \"id\": the principal the key is "
                        "registered for",
                        out);
        std::string pubkey;
        if (!decode_base64(req->pubkey, req->pubkey_len, pubkey))
            return deny("\"pubkey\" is not standard base64; send the 32-byte ed25519 public "
                        "key as 44 characters of base64",
                        out);
        if (pubkey.size() != crypto_sign_PUBLICKEYBYTES)
            return deny("\"pubkey\" is " + std::to_string(pubkey.size()) +
                            " bytes; an ed25519 public key is 32 bytes",
                        out);
        if (req->step == 0)
            return challenge(out);
        if (req->challenge_len != nonce_bytes)
            return deny("no challenge of this module is pending", out);
        return verify(req, pubkey, out);
    } catch (...) { // std::bad_alloc: refuse rather than let it cross the C ABI
        out->message = "authentication failed: out of memory";
        return MESHD_DENY;
    }
}

int init(meshd_host* host, void** state) {
    if (sodium_init() < 0) {
        meshd_host_log(host, MESHD_LOG_ERROR, "module.init_failed", "libsodium failed to start");
        return 1;
    }
    g_state = State{};
    g_state.host = host;
    if (!read_config(g_state))
        return 1;
    *state = &g_state;
    return 0;
}

int reload(void*) {
    State next = g_state;
    if (!read_config(next))
        return 1;
    g_state.challenge_timeout_ms = next.challenge_timeout_ms;
    return 0;
}

void fini(void*) {
    g_state = State{};
}

const meshd_module descriptor = [] {
    meshd_module m{};
    m.abi = MESHD_MODULE_ABI;
    m.name = "auth_ed25519";
    m.version = "0.1.0";
    m.init = init;
    m.fini = fini;
    m.auth = auth;
    m.reload = reload;
    m.config = config_keys;
    return m;
}();

} // namespace

MESHD_MODULE_DEFINE(descriptor)
