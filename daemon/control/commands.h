// control/commands: what each meshctl request does inside the daemon.
//
// Requests that change the store join the turn's batch and are answered after it commits,
// like sends: a `user add` whose token was printed is durable. `user del` and `user token`
// close the principal's live sessions (close code 4002) right after the commit.
#pragma once

#include "control/control_server.h"
#include "core/config.h"
#include "router/modules.h"
#include "session/broker.h"
#include "store/store.h"

#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace meshd::control {

struct CommandContext {
    session::Broker& broker;
    store::Store& store;
    router::ModuleSet& modules;
    // Re-reads the config file and applies what can change live.
    std::function<core::Result<core::ConfigDiff>()> reload;
    std::vector<std::string> listeners;
    int64_t started_ms = 0;
    std::vector<router::HttpListening> http_listeners; // modules' HTTP listeners
};

void handle_command(CommandContext& ctx, std::string_view request_line, Reply reply);

// A fresh token: "mshd_" + 43 characters of base64url (32 random bytes).
std::string new_token();

} // namespace meshd::control
