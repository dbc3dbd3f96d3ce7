// control/control_server: the Unix stream socket `meshctl` talks to.
//
// Protocol: JSON lines. Each request is one line `{"cmd":"user.add",...}\n`; each response is
// one line `{"ok":true,"result":{...}}\n` or `{"ok":false,"error":{"code":..,"message":..}}\n`.
// The socket is created with mode 0660; every accepted peer is checked with SO_PEERCRED and
// must be root, the daemon's own uid, or in the socket's group.
#pragma once

#include "core/result.h"

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <uv.h>

namespace meshd::control {

// Sends one response line (without the trailing newline; it is added). Safe to call after the
// client went away (then it does nothing), and at most once per request.
using Reply = std::function<void(std::string response_line)>;
// Called on the loop thread for every complete request line; may reply later (e.g. after the
// store commits).
using Handler = std::function<void(std::string_view request_line, Reply reply)>;

class ControlServer {
  public:
    // Binds `path` (mode 0660). A stale socket file (nobody listening) is replaced; a live one
    // means another meshd runs there, and that is an error.
    static core::Result<std::unique_ptr<ControlServer>>
    start(uv_loop_t* loop, const std::string& path, Handler handler);
    virtual ~ControlServer() = default;
    // Stop listening, close every client, unlink the socket file. Idempotent; the destructor
    // calls it. uv handles finish closing on the next loop run.
    virtual void stop() = 0;
    virtual size_t client_count() const = 0;
};

} // namespace meshd::control
