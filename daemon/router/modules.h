// router/modules: loading dlopen modules and asking them for verdicts.
//
// A module is `<modules.dir>/<name>.so` exporting meshd_module_abi() and meshd_module_get()
// (include/meshd/module.h). Modules are asked in `modules.load` order; for auth, route and
// check the first verdict other than PASS decides. Every hook runs on the loop thread.
#pragma once

#include "core/config.h"
#include "core/result.h"
#include "meshd/module.h"
#include "store/store.h"

#include <memory>
#include <string>
#include <string_view>
#include <uv.h>
#include <vector>

namespace meshd::router {

struct LoadedModule;

struct AuthOutcome {
    store::Principal* principal = nullptr; // set when a module allowed
    std::string message;                   // why not, when denied
};

struct RouteOutcome {
    bool ok = false;
    std::string code; // error code when !ok: unknown_peer, forbidden, ...
    std::string message;
};

struct CheckOutcome {
    bool ok = true;
    std::string code;
    std::string message;
    uint32_t retry_after_ms = 0;
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
    // Loads and initialises every module of config.modules_load. Errors name the file.
    static core::Result<std::unique_ptr<ModuleSet>> load(const core::Config& config,
                                                         store::Store& store, uv_loop_t* loop);
    ~ModuleSet(); // calls fini in reverse order, then dlclose
    ModuleSet(const ModuleSet&) = delete;
    ModuleSet& operator=(const ModuleSet&) = delete;

    bool has_auth() const;
    std::vector<ModuleInfo> info() const;
    const std::vector<HttpListen>& http_listens() const { return http_listens_; }
    // Asks the module behind http_listens()[listener] to answer a GET or HEAD of its path.
    HttpReply http(size_t listener, std::string_view method, std::string_view path,
                   std::string_view query, std::string_view remote_addr);

    AuthOutcome auth(std::string_view token, std::string_view claimed_id, std::string_view device,
                     std::string_view remote_addr);
    // Expands `to` into recipients (cleared first). `canonical_to` receives the address as it
    // will be stored: a principal's name for a direct message.
    RouteOutcome route(const store::Principal& sender, std::string_view to,
                       std::vector<store::Principal*>& recipients, std::string& canonical_to);
    CheckOutcome check(const store::Principal& sender, std::string_view to, std::string_view body,
                       size_t recipients);
    bool wants_stored() const { return has_stored_; }
    void stored(const store::Principal& recipient, std::string_view sender, int64_t seq,
                bool has_live_device);
    void session_event(bool connect, const store::Principal& p, std::string_view device,
                       std::string_view session);
    void tick(int64_t now_ms);
    // The errors of the new config's module tables against the keys each module declares;
    // empty if reload() may be called with it.
    std::vector<core::ConfigError> check_config(const core::Config& config) const;
    // Hands the new config's module tables to the modules and calls their reload hooks.
    // Returns the module keys that changed ("metrics.path"), split like core keys; a key that
    // is not reloadable keeps its start value.
    core::ConfigDiff reload(const core::Config& config);

  private:
    ModuleSet() = default;
    std::vector<std::unique_ptr<LoadedModule>> modules_;
    std::vector<HttpListen> http_listens_;
    bool has_stored_ = false;
};

} // namespace meshd::router
