// router/modules: loading dlopen modules and asking them for verdicts.
//
// A module is `<modules.dir>/<name>.so` exporting meshd_module_abi() and meshd_module_get()
// (include/meshd/module.h). Modules are asked in `modules.load` order; for auth, route, check
// and accept the first verdict other than PASS decides; auth_failed, stored, connect and
// disconnect go to every module that has the hook. Every hook runs on the loop thread.
#pragma once

#include "core/config.h"
#include "core/result.h"
#include "meshd/module.h"
#include "store/store.h"

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <uv.h>
#include <vector>

namespace meshd::router {

struct LoadedModule;

// A hello (step 0) or the auth frame that answers a challenge (step 1).
struct AuthRequest {
    int step = 0;
    std::string_view token;      // hello.token or the Bearer header
    std::string_view claimed_id; // hello.id, case-folded
    std::string_view device;
    std::string_view remote_addr;
    std::string_view pubkey; // hello.pubkey as sent
    // Step 1: what step 0 issued, the module that issued it (only it is asked), auth.sig.
    std::string_view challenge;
    size_t challenger = 0;
    std::string_view sig;
};

struct AuthOutcome {
    store::Principal* principal = nullptr; // set when a module allowed
    std::string credential;                // what opened the session: "token", "ed25519:<key>", ...
    std::string message;                   // why not, when denied
    // A module answered CHALLENGE: send `challenge` (raw bytes) as the nonce and pass the
    // answer, within challenge_timeout_ms (0: limits.hello_timeout_ms), to module `challenger`.
    bool challenged = false;
    std::string challenge;
    uint32_t challenge_timeout_ms = 0;
    size_t challenger = 0;
};

struct RouteOutcome {
    bool ok = false;
    // A send to "skill:NAME" a module accepted (meshd_host_route_skill): the canonical skill.
    // No recipients then; the dispatcher assigns the work or queues it.
    std::string skill;
    std::string code; // error code when !ok: unknown_peer, forbidden, ...
    std::string message;
};

struct CheckOutcome {
    bool ok = true;
    std::string code;
    std::string message;
    uint32_t retry_after_ms = 0;
};

// An agent that could take work for a skill (meshd_assign_candidate).
struct AssignCandidate {
    store::Principal* principal = nullptr;
    size_t open_tasks = 0;
};

struct ModuleInfo {
    std::string name;
    std::string version;
    std::string file;
};

// An HTTP listener a module asked for from its init (meshd_host_http_listen); the transport
// opens it with the WebSocket listeners.
struct HttpListen {
    std::string module;
    size_t module_index = 0;
    core::ListenAddr addr;
    std::string path;       // the one path served; others get 404
    std::string config_key; // where addr came from, for errors: "[metrics] listen"
};

// An HTTP listener as opened: "host:port" with the real port (for status and logs).
struct HttpListening {
    std::string module;
    std::string listen;
    std::string path;
};

struct HttpReply {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
};

class ModuleSet {
  public:
    // Loads and initialises every module of config.modules_load. Errors name the file; a
    // module table that fails its module's key list gives code "bad_config" with one
    // FILE:LINE:COL line per problem.
    static core::Result<std::unique_ptr<ModuleSet>> load(const core::Config& config,
                                                         store::Store& store, uv_loop_t* loop);
    // For `meshd --check`: opens every module (without init) and checks its table.
    static std::vector<core::ConfigError> check(const core::Config& config);
    ~ModuleSet(); // calls fini in reverse order, then dlclose
    ModuleSet(const ModuleSet&) = delete;
    ModuleSet& operator=(const ModuleSet&) = delete;

    bool has_auth() const;
    std::vector<ModuleInfo> info() const;
    const std::vector<HttpListen>& http_listens() const { return http_listens_; }
    // Asks the module behind http_listens()[listener] to answer a GET or HEAD of its path.
    HttpReply http(size_t listener, std::string_view method, std::string_view path,
                   std::string_view query, std::string_view remote_addr);

    AuthOutcome auth(const AuthRequest& request);
    // Expands `to` into recipients (cleared first). `canonical_to` receives the address as it
    // will be stored: a principal's name for a direct message.
    RouteOutcome route(const store::Principal& sender, std::string_view to,
                       std::vector<store::Principal*>& recipients, std::string& canonical_to);
    CheckOutcome check(const store::Principal& sender, std::string_view to, std::string_view body,
                       size_t recipients);
    // Work for `skill` can go to one of `candidates` (in name order): the index the first
    // module with an assign hook picks, or -1 (no such module, or it leaves the work queued).
    bool has_assign() const;
    int assign(std::string_view skill, const store::Principal& sender, int64_t task,
               std::span<const AssignCandidate> candidates);
    // A connection from remote_ip (no port) was opened; the first DENY refuses it. The code
    // defaults to rate_limited.
    CheckOutcome accept(std::string_view remote_ip);
    // A hello or auth from remote_ip was refused; every module with the hook is told.
    void auth_failed(std::string_view remote_ip, std::string_view claimed_id,
                     std::string_view message);
    bool wants_stored() const { return has_stored_; }
    void stored(const store::Principal& recipient, std::string_view sender, int64_t seq,
                bool has_live_device);
    void session_event(bool connect, const store::Principal& p, std::string_view device,
                       std::string_view session);
    void tick(int64_t now_ms);
    // Checks the new config's module tables against the loaded modules' key lists and says
    // which keys changed ("ratelimit.send_rate"): reloadable ones are applied by reload(),
    // others keep their running value until a restart. Errors: code "bad_config".
    core::Result<core::ConfigDiff> prepare_reload(const core::Config& config) const;
    // Hands the new config's module tables to the modules and calls their reload hooks. If
    // one refuses, every module is left with (and re-reads) its old table, and the error
    // names the module with what it logged (warn or error) during its reload hook.
    core::Result<void> reload(const core::Config& config);

  private:
    ModuleSet() = default;
    std::vector<std::unique_ptr<LoadedModule>> modules_;
    std::vector<HttpListen> http_listens_;
    bool has_stored_ = false;
    std::vector<meshd_assign_candidate> assign_scratch_;
};

} // namespace meshd::router
