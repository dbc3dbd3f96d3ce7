// route_skills: work sent to "skill:NAME" goes to one agent that can do it.
//
// Routing: "skill:NAME" is accepted when at least one agent lists NAME in its profile
// (meshd_host_route_skill); meshd then stores the send in the sender's log and asks this
// module's assign hook whom to give it, now or when an agent becomes a candidate later.
// Assignment policy: the candidate holding the fewest unfinished tasks; among those that tie,
// round-robin in name order (the first whose name follows the one this skill last went to,
// wrapping around). The round-robin position is per skill, kept in memory: a restart starts
// each skill from the first name again, which only shifts the rotation.
#include "meshd/module.h"

#include <cstring>
#include <string>
#include <string_view>
#include <unordered_map>

namespace {

constexpr std::string_view prefix = "skill:";

struct State {
    meshd_host* host = nullptr;
    std::string message;                               // lives until the next call, as the ABI asks
    std::unordered_map<std::string, std::string> last; // skill -> name it last went to
};

int init(meshd_host* host, void** state) {
    auto* s = new (std::nothrow) State;
    if (!s)
        return 1;
    s->host = host;
    *state = s;
    return 0;
}

void fini(void* state) {
    delete static_cast<State*>(state);
}

meshd_verdict route(void* state, const meshd_route_request* req, meshd_route_out* recipients,
                    meshd_route_result* out) {
    auto* s = static_cast<State*>(state);
    std::string_view to(req->to, req->to_len);
    if (to.substr(0, prefix.size()) != prefix)
        return MESHD_PASS;
    std::string_view skill = to.substr(prefix.size());
    int agents = meshd_host_route_skill(recipients, skill.data(), skill.size());
    if (agents > 0)
        return MESHD_ALLOW;
    if (agents < 0)
        s->message = "'" + std::string(to) +
                     "' is not a skill address: after \"skill:\" come 1 to 64 of a-z 0-9 . _ -";
    else
        s->message = "no agent lists the skill '" + std::string(skill) +
                     "' in its profile; nobody could take this";
    out->code = "unknown_peer";
    out->message = s->message.c_str();
    return MESHD_DENY;
}

int assign(void* state, const meshd_assign_request* req) {
    auto* s = static_cast<State*>(state);
    uint32_t fewest = req->candidates[0].open_tasks;
    for (size_t i = 1; i < req->count; ++i)
        if (req->candidates[i].open_tasks < fewest)
            fewest = req->candidates[i].open_tasks;
    std::string& last = s->last[std::string(req->skill, req->skill_len)];
    int first = -1; // the first tied candidate, for wrapping around
    int chosen = -1;
    for (size_t i = 0; i < req->count; ++i) {
        const meshd_assign_candidate& c = req->candidates[i];
        if (c.open_tasks != fewest)
            continue;
        if (first < 0)
            first = static_cast<int>(i);
        if (std::string_view(c.name, c.name_len) > last) { // candidates come in name order
            chosen = static_cast<int>(i);
            break;
        }
    }
    if (chosen < 0)
        chosen = first;
    last.assign(req->candidates[chosen].name, req->candidates[chosen].name_len);
    return chosen;
}

const meshd_module descriptor = [] {
    meshd_module m{};
    m.abi = MESHD_MODULE_ABI;
    m.name = "route_skills";
    m.version = "0.1.0";
    m.init = init;
    m.fini = fini;
    m.route = route;
    m.assign = assign;
    return m;
}();

} // namespace

MESHD_MODULE_DEFINE(descriptor)
