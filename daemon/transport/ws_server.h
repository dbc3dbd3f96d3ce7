// transport/ws_server: libwebsockets listeners on meshd's own uv loop (lws foreign-loop mode).
//
// Owns the lws context, one vhost per `server.listen` address, and each connection's
// receive assembly (fragments -> one frame, bounded by limits.max_frame). Output is pulled
// from the session on each writable callback and leaves in one socket write per callback.
// Also one HTTP-only vhost per listener a module asked for (meshd_host_http_listen): GET and
// HEAD of its path go to the module's http hook; never a WebSocket upgrade there.
#pragma once

#include "core/config.h"
#include "core/metrics.h"
#include "core/result.h"
#include "router/modules.h"
#include "session/broker.h"

#include <memory>
#include <string>
#include <uv.h>
#include <vector>

struct lws_context;

namespace meshd::transport {

// Bytes lws needs before every payload handed to lws_write (LWS_PRE).
size_t write_headroom();

class WsServer {
  public:
    static core::Result<std::unique_ptr<WsServer>>
    start(uv_loop_t* loop, const core::Config& config, session::Broker& broker);
    ~WsServer(); // the final lws_context_destroy (after the loop ran past destroy_begin)
    WsServer(const WsServer&) = delete;
    WsServer& operator=(const WsServer&) = delete;

    // The addresses really listened on (port 0 resolved), as "host:port".
    const std::vector<std::string>& listening() const { return listening_; }
    // The modules' HTTP listeners, likewise with their real ports.
    const std::vector<router::HttpListening>& http_listening() const { return http_listening_; }
    void set_max_frame(size_t max_frame) { max_frame_ = max_frame; }
    // Refuse new connections from now on.
    void stop_accepting() { accepting_ = false; }
    // First lws_context_destroy: kills remaining connections; lws closes its uv handles
    // while the loop runs on.
    void destroy_begin();

    // ---- for the lws callback ----
    session::Broker& broker() { return broker_; }
    bool accepting() const { return accepting_; }
    size_t max_frame() const { return max_frame_; }
    // The reused buffer a writable callback frames its output into.
    std::string& write_batch() { return write_batch_; }

    // Counted per WebSocket message (one meshd frame), payload bytes only.
    struct Metrics {
        core::Counter frames_received, frames_sent, bytes_received, bytes_sent;
    };
    Metrics& metrics() { return metrics_; }

    // What an HTTP vhost's user pointer points at: which module listener it serves.
    struct HttpVhost {
        WsServer* server;
        size_t listener; // index into broker().modules().http_listens()
    };

  private:
    WsServer(session::Broker& broker) : broker_(broker) {}
    ::lws_context* context_ = nullptr;
    session::Broker& broker_;
    std::vector<std::string> listening_;
    std::vector<router::HttpListening> http_listening_;
    std::vector<std::unique_ptr<HttpVhost>> http_vhosts_;
    Metrics metrics_;
    size_t max_frame_ = 1 << 20;
    std::string write_batch_;
    bool accepting_ = true;
    bool destroy_begun_ = false;
};

} // namespace meshd::transport
