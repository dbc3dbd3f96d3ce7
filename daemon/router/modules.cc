// router/modules: the module loader, the verdict dispatch, and the host calls that modules
// make back into meshd (exported from the meshd executable with --export-dynamic).
#include "router/modules.h"

#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/names.h"
#include "meshd_build.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <optional>
#include <unordered_map>

// The opaque handle a module gets; one per loaded module.
struct meshd_host {
    meshd::router::LoadedModule* module;
};

// The recipient list a route hook fills.
struct meshd_route_out {
    meshd::store::Store* store;
    std::vector<meshd::store::Principal*>* recipients;
    std::string* canonical_to;
    std::string* skill; // set by meshd_host_route_skill
};

// A byte buffer meshd hands to a hook (an http response body, a metrics render).
struct meshd_buf {
    std::string data;
};

// A module's handle on one series of the registry. Handles live as long as the process:
// a second registration of the same series returns the same one.
struct meshd_metric {
    meshd::core::MetricType type;
    meshd::core::MetricSeries* series;
    std::string module; // who registered it first, for warnings
    bool warned = false;
};

namespace meshd::router {

struct DlClose {
    void operator()(void* handle) const { dlclose(handle); }
};

struct LoadedModule {
    std::string name;
    std::string file;
    std::unique_ptr<void, DlClose> handle;
    const meshd_module* desc = nullptr;
    void* state = nullptr;
    bool initialised = false;
    meshd_host host{};
    store::Store* store = nullptr;
    uv_loop_t* loop = nullptr;
    core::ModuleTable table;               // what the module sees now
    std::vector<core::ModuleKeySpec> keys; // what it declares
    // While its reload hook runs: what the module logs at warn or error, to tell the user why
    // it refused.
    std::string* log_capture = nullptr;
    size_t index = 0;
    bool in_init = false;
    std::vector<HttpListen> http_listens; // asked for from init
};

namespace {

const int host_abis[] = {MESHD_MODULE_ABI};

// Logs `event=module.load_failed file=... message=...` and returns the same as an error.
core::Error load_error(const std::string& file, const std::string& message) {
    std::string text = "cannot load module " + file + ": " + message;
    MESHD_LOG(error, "module.load_failed", "file=%s message=%s", core::log_value(file).c_str(),
              core::log_value(text).c_str());
    return core::make_error("internal", text);
}

std::string cstr(const char* s) {
    return s ? std::string(s) : std::string();
}

} // namespace

namespace {

// The keys a module declares, in the core's terms.
std::vector<core::ModuleKeySpec> key_specs(const meshd_module* desc) {
    std::vector<core::ModuleKeySpec> out;
    for (const meshd_config_key* k = desc->config; k && k->name; ++k) {
        core::ModuleKeySpec spec;
        spec.name = k->name;
        spec.type = k->type == MESHD_CONFIG_BOOL     ? core::ModuleKeySpec::Type::boolean
                    : k->type == MESHD_CONFIG_STRING ? core::ModuleKeySpec::Type::string
                    : k->type == MESHD_CONFIG_DOUBLE ? core::ModuleKeySpec::Type::floating
                                                     : core::ModuleKeySpec::Type::integer;
        spec.min = k->min;
        spec.max = k->max;
        spec.reloadable = k->reloadable != 0;
        spec.help = cstr(k->help);
        out.push_back(std::move(spec));
    }
    return out;
}

const core::ModuleTable& table_of(const core::Config& config, const std::string& name) {
    static const core::ModuleTable empty;
    auto it = config.module_tables.find(name);
    return it == config.module_tables.end() ? empty : it->second;
}

// dlopen, ABI handshake and descriptor of `name`; the message says why not.
std::optional<std::string> open_module(LoadedModule& m, const std::string& name,
                                       const core::Config& config) {
    m.name = name;
    m.file = config.modules_dir + "/" + name + ".so";
    m.handle.reset(dlopen(m.file.c_str(), RTLD_NOW | RTLD_LOCAL));
    if (!m.handle)
        return cstr(dlerror()) + " (check modules.dir and modules.load in the config)";
    auto abi_fn =
        reinterpret_cast<int (*)(const int*, int)>(dlsym(m.handle.get(), "meshd_module_abi"));
    auto get_fn =
        reinterpret_cast<const meshd_module* (*)(int)>(dlsym(m.handle.get(), "meshd_module_get"));
    if (!abi_fn || !get_fn)
        return "it does not export meshd_module_abi and meshd_module_get; is it a meshd module?";
    int abi = abi_fn(host_abis, static_cast<int>(std::size(host_abis)));
    bool known = false;
    for (int a : host_abis)
        known = known || a == abi;
    if (!known)
        return "it was built for module ABI " + std::to_string(abi) +
               ", and this meshd " MESHD_VERSION " hosts ABI " + std::to_string(MESHD_MODULE_ABI) +
               "; rebuild it against this meshd's module.h";
    m.desc = get_fn(abi);
    if (!m.desc || m.desc->abi != abi)
        return "meshd_module_get(" + std::to_string(abi) + ") returned no descriptor for that ABI";
    if (!m.desc->name || name != m.desc->name)
        return "it calls itself '" + cstr(m.desc->name) + "', not '" + name + "'";
    return std::nullopt;
}

std::string error_lines(const std::vector<core::ConfigError>& errors) {
    std::string out;
    for (const auto& e : errors) {
        if (!out.empty())
            out += '\n';
        out += e.to_string();
    }
    return out;
}

} // namespace

core::Result<std::unique_ptr<ModuleSet>> ModuleSet::load(const core::Config& config,
                                                         store::Store& store, uv_loop_t* loop) {
    std::unique_ptr<ModuleSet> set(new ModuleSet());
    for (const std::string& name : config.modules_load) {
        auto m = std::make_unique<LoadedModule>();
        m->store = &store;
        m->loop = loop;
        m->host.module = m.get();
        if (auto why = open_module(*m, name, config))
            return load_error(m->file, *why);
        m->keys = key_specs(m->desc);
        m->table = table_of(config, name);
        std::vector<core::ConfigError> errors;
        core::check_module_table(config.path, name, m->table, m->keys, errors);
        if (!errors.empty()) {
            for (const auto& e : errors)
                MESHD_LOG(error, "config.invalid", "message=%s",
                          core::log_value(e.to_string()).c_str());
            load_error(m->file, "its section [" + name + "] in " + config.path + " has errors");
            return core::make_error("bad_config", error_lines(errors));
        }
        m->index = set->modules_.size();
        m->in_init = true;
        int init_rc = m->desc->init ? m->desc->init(&m->host, &m->state) : 0;
        m->in_init = false;
        if (init_rc != 0)
            return load_error(m->file, "its init failed (see the lines it logged above)");
        m->initialised = true;
        for (HttpListen& l : m->http_listens)
            set->http_listens_.push_back(std::move(l));
        m->http_listens.clear();
        set->has_stored_ = set->has_stored_ || m->desc->stored;
        MESHD_LOG(info, "module.loaded", "name=%s version=%s file=%s", name.c_str(),
                  core::log_value(cstr(m->desc->version)).c_str(), m->file.c_str());
        set->modules_.push_back(std::move(m));
    }
    return set;
}

std::vector<core::ConfigError> ModuleSet::check(const core::Config& config) {
    std::vector<core::ConfigError> errors;
    for (const std::string& name : config.modules_load) {
        LoadedModule m;
        if (auto why = open_module(m, name, config)) {
            errors.push_back(core::ConfigError{config.path, 0, 0,
                                               "modules.load: cannot load module " + m.file +
                                                   ": " + *why});
            continue;
        }
        core::check_module_table(config.path, name, table_of(config, name), key_specs(m.desc),
                                 errors);
    }
    return errors;
}

ModuleSet::~ModuleSet() {
    for (auto it = modules_.rbegin(); it != modules_.rend(); ++it) {
        LoadedModule& m = **it;
        if (m.initialised && m.desc->fini)
            m.desc->fini(m.state);
    }
    // dlclose in reverse order as the vector unwinds.
    while (!modules_.empty())
        modules_.pop_back();
}

bool ModuleSet::has_auth() const {
    for (const auto& m : modules_)
        if (m->desc->auth)
            return true;
    return false;
}

std::vector<ModuleInfo> ModuleSet::info() const {
    std::vector<ModuleInfo> out;
    for (const auto& m : modules_)
        out.push_back({m->name, cstr(m->desc->version), m->file});
    return out;
}

AuthOutcome ModuleSet::auth(const AuthRequest& r) {
    meshd_auth_request req{};
    req.token = r.token.data();
    req.token_len = r.token.size();
    req.claimed_id = r.claimed_id.data();
    req.claimed_id_len = r.claimed_id.size();
    req.device = r.device.data();
    req.device_len = r.device.size();
    req.remote_addr = r.remote_addr.data();
    req.remote_addr_len = r.remote_addr.size();
    req.pubkey = r.pubkey.data();
    req.pubkey_len = r.pubkey.size();
    req.step = r.step;
    req.challenge = reinterpret_cast<const unsigned char*>(r.challenge.data());
    req.challenge_len = r.challenge.size();
    req.sig = r.sig.data();
    req.sig_len = r.sig.size();
    AuthOutcome outcome;
    for (size_t i = 0; i < modules_.size(); ++i) {
        const LoadedModule& m = *modules_[i];
        // Step 1 belongs to the module that challenged, and to no other.
        if (!m.desc->auth || (r.step == 1 && i != r.challenger))
            continue;
        meshd_auth_result res{};
        meshd_verdict v = m.desc->auth(m.state, &req, &res);
        if (v == MESHD_PASS && r.step == 0)
            continue;
        if (v == MESHD_ALLOW) {
            res.principal[sizeof res.principal - 1] = '\0';
            res.credential[sizeof res.credential - 1] = '\0';
            outcome.principal = m.store->find(res.principal);
            if (!outcome.principal)
                outcome.message = "no such principal";
            outcome.credential = res.credential[0] ? res.credential : m.name;
            return outcome;
        }
        if (v == MESHD_CHALLENGE && r.step == 0 && res.challenge_len > 0 &&
            res.challenge_len <= sizeof res.challenge) {
            outcome.challenged = true;
            outcome.challenge.assign(reinterpret_cast<const char*>(res.challenge),
                                     res.challenge_len);
            outcome.challenge_timeout_ms = res.challenge_timeout_ms;
            outcome.challenger = i;
            return outcome;
        }
        if (v == MESHD_DENY) {
            outcome.message = res.message ? res.message : "credentials refused";
            return outcome;
        }
        // PASS at step 1, a second challenge, or one of no or too many bytes: a module bug.
        MESHD_LOG(error, "module.bad_verdict", "name=%s step=%d verdict=%d challenge_len=%zu",
                  m.name.c_str(), r.step, static_cast<int>(v), res.challenge_len);
        outcome.message = "authentication failed: module " + m.name +
                          " gave no usable answer (a bug; see the server log)";
        return outcome;
    }
    if (r.step == 1)
        outcome.message = "no module is waiting for an answer to a challenge";
    else
        outcome.message = has_auth() ? "no credentials a loaded auth module accepts"
                                     : "no auth module is loaded; nobody can log in";
    return outcome;
}

RouteOutcome ModuleSet::route(const store::Principal& sender, std::string_view to,
                              std::vector<store::Principal*>& recipients,
                              std::string& canonical_to) {
    recipients.clear();
    canonical_to.clear();
    meshd_route_request req{};
    req.sender = sender.name.data();
    req.sender_len = sender.name.size();
    req.to = to.data();
    req.to_len = to.size();
    RouteOutcome outcome;
    for (const auto& m : modules_) {
        if (!m->desc->route)
            continue;
        meshd_route_out out{m->store, &recipients, &canonical_to, &outcome.skill};
        meshd_route_result res{};
        meshd_verdict v = m->desc->route(m->state, &req, &out, &res);
        if (v == MESHD_PASS) {
            recipients.clear();
            canonical_to.clear();
            outcome.skill.clear();
            continue;
        }
        if (v == MESHD_ALLOW && !outcome.skill.empty()) {
            recipients.clear(); // the dispatcher picks the one recipient, or queues
            canonical_to = "skill:" + outcome.skill;
            outcome.ok = true;
            return outcome;
        }
        if (v == MESHD_ALLOW && !recipients.empty()) {
            if (canonical_to.empty())
                canonical_to = std::string(to);
            outcome.ok = true;
            return outcome;
        }
        outcome.code = (v == MESHD_DENY && res.code) ? res.code : "unknown_peer";
        outcome.message = (v == MESHD_DENY && res.message) ? res.message : "no recipients";
        return outcome;
    }
    outcome.code = "unknown_peer";
    outcome.message = "no routing module knows the address '" + std::string(to) + "'";
    return outcome;
}

bool ModuleSet::has_assign() const {
    for (const auto& m : modules_)
        if (m->desc->assign)
            return true;
    return false;
}

int ModuleSet::assign(std::string_view skill, const store::Principal& sender, int64_t task,
                      std::span<const AssignCandidate> candidates) {
    if (candidates.empty())
        return -1;
    assign_scratch_.clear();
    for (const AssignCandidate& c : candidates) {
        meshd_assign_candidate m{};
        m.name = c.principal->name.data();
        m.name_len = c.principal->name.size();
        m.open_tasks = static_cast<uint32_t>(c.open_tasks);
        assign_scratch_.push_back(m);
    }
    meshd_assign_request req{};
    req.skill = skill.data();
    req.skill_len = skill.size();
    req.sender = sender.name.data();
    req.sender_len = sender.name.size();
    req.task = task;
    req.candidates = assign_scratch_.data();
    req.count = assign_scratch_.size();
    for (const auto& m : modules_) {
        if (!m->desc->assign)
            continue;
        int chosen = m->desc->assign(m->state, &req);
        if (chosen < -1 || chosen >= static_cast<int>(candidates.size())) {
            MESHD_LOG(warn, "module.assign",
                      "module=%s skill=%.*s chose %d of %zu candidates; work stays queued",
                      m->name.c_str(), static_cast<int>(skill.size()), skill.data(), chosen,
                      candidates.size());
            return -1;
        }
        return chosen;
    }
    return -1;
}

CheckOutcome ModuleSet::check(const store::Principal& sender, std::string_view to,
                              std::string_view body, size_t recipients) {
    meshd_check_request req{};
    req.sender = sender.name.data();
    req.sender_len = sender.name.size();
    req.to = to.data();
    req.to_len = to.size();
    req.body = body.data();
    req.body_len = body.size();
    req.recipients = recipients;
    CheckOutcome outcome;
    for (const auto& m : modules_) {
        if (!m->desc->check)
            continue;
        meshd_check_result res{};
        if (m->desc->check(m->state, &req, &res) != MESHD_DENY)
            continue;
        outcome.ok = false;
        outcome.code = res.code ? res.code : "forbidden";
        outcome.message = res.message ? res.message : "refused by module " + m->name;
        outcome.retry_after_ms = res.retry_after_ms;
        return outcome;
    }
    return outcome;
}

CheckOutcome ModuleSet::accept(std::string_view remote_ip) {
    meshd_accept_request req{};
    req.remote_ip = remote_ip.data();
    req.remote_ip_len = remote_ip.size();
    CheckOutcome outcome;
    for (const auto& m : modules_) {
        if (!m->desc->accept)
            continue;
        meshd_check_result res{};
        if (m->desc->accept(m->state, &req, &res) != MESHD_DENY)
            continue;
        outcome.ok = false;
        outcome.code = res.code ? res.code : "rate_limited";
        outcome.message = res.message ? res.message : "connection refused by module " + m->name;
        outcome.retry_after_ms = res.retry_after_ms;
        return outcome;
    }
    return outcome;
}

void ModuleSet::auth_failed(std::string_view remote_ip, std::string_view claimed_id,
                            std::string_view message) {
    std::string text(message); // the ABI hands it NUL-terminated
    meshd_auth_failure ev{};
    ev.remote_ip = remote_ip.data();
    ev.remote_ip_len = remote_ip.size();
    ev.claimed_id = claimed_id.data();
    ev.claimed_id_len = claimed_id.size();
    ev.message = text.c_str();
    for (const auto& m : modules_)
        if (m->desc->auth_failed)
            m->desc->auth_failed(m->state, &ev);
}

void ModuleSet::stored(const store::Principal& recipient, std::string_view sender, int64_t seq,
                       bool has_live_device) {
    meshd_stored_event ev{};
    ev.recipient = recipient.name.data();
    ev.recipient_len = recipient.name.size();
    ev.sender = sender.data();
    ev.sender_len = sender.size();
    ev.seq = seq;
    ev.has_live_device = has_live_device ? 1 : 0;
    for (const auto& m : modules_)
        if (m->desc->stored)
            m->desc->stored(m->state, &ev);
}

void ModuleSet::session_event(bool connect, const store::Principal& p, std::string_view device,
                              std::string_view session) {
    meshd_session_event ev{};
    ev.principal = p.name.data();
    ev.principal_len = p.name.size();
    ev.device = device.data();
    ev.device_len = device.size();
    ev.session = session.data();
    ev.session_len = session.size();
    ev.kind = p.kind == store::Kind::agent ? MESHD_KIND_AGENT : MESHD_KIND_USER;
    for (const auto& m : modules_) {
        meshd_session_cb cb = connect ? m->desc->connect : m->desc->disconnect;
        if (cb)
            cb(m->state, &ev);
    }
}

void ModuleSet::tick(int64_t now_ms) {
    for (const auto& m : modules_)
        if (m->desc->tick)
            m->desc->tick(m->state, now_ms);
}

HttpReply ModuleSet::http(size_t listener, std::string_view method, std::string_view path,
                          std::string_view query, std::string_view remote_addr) {
    HttpReply reply;
    if (listener >= http_listens_.size()) {
        reply.status = 404;
        return reply;
    }
    const LoadedModule& m = *modules_[http_listens_[listener].module_index];
    meshd_http_request req{};
    req.method = method.data();
    req.method_len = method.size();
    req.path = path.data();
    req.path_len = path.size();
    req.query = query.data();
    req.query_len = query.size();
    req.remote_addr = remote_addr.data();
    req.remote_addr_len = remote_addr.size();
    meshd_buf body;
    meshd_http_response resp{};
    resp.status = 200;
    resp.content_type = "text/plain; charset=utf-8";
    resp.body = &body;
    m.desc->http(m.state, &req, &resp);
    if (resp.status < 100 || resp.status > 599) {
        MESHD_LOG(error, "http.bad_status", "module=%s status=%d", m.name.c_str(), resp.status);
        reply.status = 500;
        reply.body = "module " + m.name + " answered with an invalid HTTP status\n";
        return reply;
    }
    reply.status = resp.status;
    if (resp.content_type)
        reply.content_type = resp.content_type;
    reply.body = std::move(body.data);
    return reply;
}

core::Result<core::ConfigDiff> ModuleSet::prepare_reload(const core::Config& config) const {
    std::vector<core::ConfigError> errors;
    core::ConfigDiff diff;
    for (const auto& m : modules_) {
        const core::ModuleTable& next = table_of(config, m->name);
        core::check_module_table(config.path, m->name, next, m->keys, errors);
        for (const core::ModuleKeySpec& k : m->keys) {
            auto a = m->table.find(k.name);
            auto b = next.find(k.name);
            bool same = (a == m->table.end()) == (b == next.end()) &&
                        (a == m->table.end() || core::same_module_value(a->second, b->second));
            if (!same)
                (k.reloadable ? diff.applied : diff.restart_required)
                    .push_back(m->name + "." + k.name);
        }
    }
    if (!errors.empty())
        return core::make_error("bad_config", error_lines(errors));
    std::sort(diff.applied.begin(), diff.applied.end());
    std::sort(diff.restart_required.begin(), diff.restart_required.end());
    return diff;
}

core::Result<void> ModuleSet::reload(const core::Config& config) {
    // All or nothing: a module that refuses keeps its old table, and the modules switched
    // before it get theirs back (and re-read them), so a refused reload changes nothing.
    std::vector<std::pair<LoadedModule*, core::ModuleTable>> switched;
    for (const auto& m : modules_) {
        // Reloadable keys take their new values; the others keep the running ones.
        core::ModuleTable table = table_of(config, m->name);
        for (const core::ModuleKeySpec& k : m->keys) {
            if (k.reloadable)
                continue;
            table.erase(k.name);
            if (auto it = m->table.find(k.name); it != m->table.end())
                table.insert(*it);
        }
        core::ModuleTable old = std::move(m->table);
        m->table = std::move(table);
        std::string why;
        int rc = 0;
        if (m->desc->reload) {
            m->log_capture = &why;
            rc = m->desc->reload(m->state);
            m->log_capture = nullptr;
        }
        if (rc == 0) {
            switched.emplace_back(m.get(), std::move(old));
            continue;
        }
        m->table = std::move(old);
        if (why.empty())
            why = "it gave no reason (see its log lines)";
        MESHD_LOG(warn, "module.reload_refused", "name=%s message=%s", m->name.c_str(),
                  core::log_value(why).c_str());
        for (auto it = switched.rbegin(); it != switched.rend(); ++it) {
            it->first->table = std::move(it->second);
            if (it->first->desc->reload && it->first->desc->reload(it->first->state) != 0)
                MESHD_LOG(error, "module.reload_undo_failed", "name=%s", it->first->name.c_str());
        }
        return core::make_error("bad_config", "module " + m->name + " refused its new [" + m->name +
                                                  "] section: " + why);
    }
    return {};
}

} // namespace meshd::router

// ---- host calls ------------------------------------------------------------------------

namespace {

const meshd::core::ModuleValue* config_value(meshd_host* host, const char* key) {
    if (!host || !key)
        return nullptr;
    const auto& table = host->module->table;
    auto it = table.find(std::string_view(key));
    return it == table.end() ? nullptr : &it->second;
}

// Host look-ups take names in any case, as clients write them; the store keeps them folded.
std::string folded(const char* name, size_t len) {
    auto canonical = meshd::core::canonical_principal(std::string_view(name, len));
    return canonical ? *canonical : std::string();
}

// One meshd_metric per series, whoever registered it.
std::unordered_map<const meshd::core::MetricSeries*, std::unique_ptr<meshd_metric>>&
metric_handles() {
    static std::unordered_map<const meshd::core::MetricSeries*, std::unique_ptr<meshd_metric>>
        handles;
    return handles;
}

// A line about a module's call into the host: level=... event=EVENT module=NAME message=...
void module_log(meshd::core::LogLevel level, const char* event, std::string_view module,
                const std::string& message) {
    if (!meshd::core::log_enabled(level))
        return;
    std::string fields = "module=" + meshd::core::log_value(module);
    fields += " message=" + meshd::core::log_value(message);
    meshd::core::log_event(level, event, fields);
}

bool valid_http_path(std::string_view path) {
    if (path.empty() || path.front() != '/' || path.size() > 256)
        return false;
    for (char c : path)
        if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f || c == '?' || c == '#')
            return false;
    return true;
}

struct Job {
    uv_work_t req{};
    meshd_job_cb work = nullptr;
    meshd_job_cb done = nullptr;
    void* arg = nullptr;
};

} // namespace

extern "C" {

MESHD_EXPORT void meshd_host_log(meshd_host* host, meshd_log_level level, const char* event,
                                 const char* message) {
    using meshd::core::LogLevel;
    LogLevel l = level == MESHD_LOG_DEBUG  ? LogLevel::debug
                 : level == MESHD_LOG_INFO ? LogLevel::info
                 : level == MESHD_LOG_WARN ? LogLevel::warn
                                           : LogLevel::error;
    if (host && host->module->log_capture && message && l >= LogLevel::warn) {
        std::string& capture = *host->module->log_capture;
        if (!capture.empty())
            capture += "; ";
        capture += message;
    }
    if (!meshd::core::log_enabled(l))
        return;
    std::string fields = "module=";
    fields += host ? host->module->name : "?";
    if (message) {
        fields += " message=";
        fields += meshd::core::log_value(message);
    }
    meshd::core::log_event(l, event ? event : "module.log", fields);
}

MESHD_EXPORT int meshd_host_config_int(meshd_host* host, const char* key, int64_t* out) {
    const auto* v = config_value(host, key);
    if (!v)
        return 1;
    if (v->type != meshd::core::ModuleValue::Type::integer)
        return -1;
    if (out)
        *out = v->integer;
    return 0;
}

MESHD_EXPORT int meshd_host_config_bool(meshd_host* host, const char* key, int* out) {
    const auto* v = config_value(host, key);
    if (!v)
        return 1;
    if (v->type != meshd::core::ModuleValue::Type::boolean)
        return -1;
    if (out)
        *out = v->boolean ? 1 : 0;
    return 0;
}

MESHD_EXPORT int meshd_host_config_string(meshd_host* host, const char* key, const char** out,
                                          size_t* len) {
    const auto* v = config_value(host, key);
    if (!v)
        return 1;
    if (v->type != meshd::core::ModuleValue::Type::string)
        return -1;
    if (out)
        *out = v->string.c_str();
    if (len)
        *len = v->string.size();
    return 0;
}

MESHD_EXPORT int meshd_host_config_double(meshd_host* host, const char* key, double* out) {
    const auto* v = config_value(host, key);
    if (!v)
        return 1;
    using Type = meshd::core::ModuleValue::Type;
    if (v->type != Type::floating && v->type != Type::integer)
        return -1;
    if (out)
        *out = v->type == Type::floating ? v->floating : static_cast<double>(v->integer);
    return 0;
}

MESHD_EXPORT int meshd_host_principal_exists(meshd_host* host, const char* name, size_t len,
                                             meshd_principal_kind* kind) {
    if (!host || !name)
        return 0;
    auto* p = host->module->store->find(folded(name, len));
    if (!p)
        return 0;
    if (kind)
        *kind = p->kind == meshd::store::Kind::agent ? MESHD_KIND_AGENT : MESHD_KIND_USER;
    return 1;
}

MESHD_EXPORT int meshd_host_token_verify(meshd_host* host, const char* token, size_t len, char* out,
                                         size_t out_size) {
    if (!host || !token || !out || out_size == 0)
        return -1;
    auto* p = host->module->store->verify_token(std::string_view(token, len));
    if (!p || p->name.size() + 1 > out_size)
        return -1;
    std::memcpy(out, p->name.c_str(), p->name.size() + 1);
    return 0;
}

MESHD_EXPORT int meshd_host_key_registered(meshd_host* host, const char* name, size_t len,
                                           const unsigned char* pubkey, size_t pubkey_len) {
    if (!host || !name || !pubkey)
        return 0;
    const meshd::store::Store& store = *host->module->store;
    const auto* p = store.find(folded(name, len));
    if (!p)
        return 0;
    return store.key_registered(*p,
                                std::string_view(reinterpret_cast<const char*>(pubkey), pubkey_len))
               ? 1
               : 0;
}

MESHD_EXPORT int meshd_host_route_add(meshd_route_out* out, const char* principal, size_t len) {
    if (!out || !principal)
        return -1;
    auto* p = out->store->find(folded(principal, len));
    if (!p)
        return -1;
    for (auto* existing : *out->recipients)
        if (existing == p)
            return 0;
    out->recipients->push_back(p);
    if (out->canonical_to->empty())
        *out->canonical_to = p->name;
    return 0;
}

MESHD_EXPORT int meshd_host_route_add_group(meshd_route_out* out, const char* group, size_t len) {
    if (!out || !group)
        return -1;
    const auto* g = out->store->find_group(folded(group, len));
    if (!g)
        return -1;
    // Members are unique; the store skips the sender when it is one of them.
    out->recipients->insert(out->recipients->end(), g->members.begin(), g->members.end());
    *out->canonical_to = "#" + g->name;
    return static_cast<int>(g->members.size());
}

MESHD_EXPORT int meshd_host_route_skill(meshd_route_out* out, const char* skill, size_t len) {
    if (!out || !skill || !out->skill)
        return -1;
    auto canonical = meshd::core::canonical_principal(std::string_view(skill, len));
    if (!canonical)
        return -1;
    int agents = 0;
    if (const auto* listed = out->store->principals_with_skill(*canonical))
        for (const auto& [name, p] : *listed)
            if (p->kind == meshd::store::Kind::agent)
                ++agents;
    if (agents > 0)
        *out->skill = std::move(*canonical);
    return agents;
}

MESHD_EXPORT int meshd_host_group_has_member(meshd_host* host, const char* group, size_t group_len,
                                             const char* principal, size_t principal_len) {
    if (!host || !group || !principal)
        return -1;
    const auto* g = host->module->store->find_group(folded(group, group_len));
    if (!g)
        return -1;
    std::string name = folded(principal, principal_len);
    for (const auto* p : g->members)
        if (p->name == name)
            return 1;
    return 0;
}

MESHD_EXPORT int64_t meshd_host_now_ms(meshd_host*) {
    return meshd::core::wall_ms();
}

MESHD_EXPORT int meshd_host_run_job(meshd_host* host, meshd_job_cb work, meshd_job_cb done,
                                    void* arg) {
    if (!host || !work)
        return -1;
    auto job = std::make_unique<Job>();
    job->work = work;
    job->done = done;
    job->arg = arg;
    job->req.data = job.get();
    // libuv owns the job from here until the after-work callback.
    int rc = uv_queue_work(
        host->module->loop, &job->req,
        [](uv_work_t* req) {
            auto* j = static_cast<Job*>(req->data);
            j->work(j->arg);
        },
        [](uv_work_t* req, int) {
            std::unique_ptr<Job> j(static_cast<Job*>(req->data));
            if (j->done)
                j->done(j->arg);
        });
    if (rc != 0)
        return -1;
    job.release();
    return 0;
}

MESHD_EXPORT void meshd_host_buf_append(meshd_buf* buf, const char* data, size_t len) {
    if (buf && data && len > 0)
        buf->data.append(data, len);
}

MESHD_EXPORT meshd_metric* meshd_host_metric(meshd_host* host, meshd_metric_type type,
                                             const char* name, const char* help,
                                             const char* labels) {
    using meshd::core::MetricType;
    const std::string module = host ? host->module->name : "?";
    if (!name) {
        module_log(meshd::core::LogLevel::error, "metrics.register_failed", module,
                   "meshd_host_metric: name is NULL");
        return nullptr;
    }
    if (type != MESHD_METRIC_COUNTER && type != MESHD_METRIC_GAUGE) {
        module_log(meshd::core::LogLevel::error, "metrics.register_failed", module,
                   "meshd_host_metric(" + std::string(name) + "): unknown type " +
                       std::to_string(static_cast<int>(type)));
        return nullptr;
    }
    MetricType t = type == MESHD_METRIC_COUNTER ? MetricType::counter : MetricType::gauge;
    try {
        auto series =
            meshd::core::metrics().series(t, name, help ? help : "", labels ? labels : "");
        if (!series) {
            module_log(meshd::core::LogLevel::error, "metrics.register_failed", module,
                       series.error().message);
            return nullptr;
        }
        auto& slot = metric_handles()[series.value()];
        if (!slot)
            slot.reset(new meshd_metric{t, series.value(), module, false});
        return slot.get();
    } catch (const std::exception& e) {
        module_log(meshd::core::LogLevel::error, "metrics.register_failed", module, e.what());
        return nullptr;
    }
}

MESHD_EXPORT void meshd_host_metric_add(meshd_metric* metric, double delta) {
    if (!metric)
        return;
    // A counter only goes up: a negative (or NaN) step would read as a reset to Prometheus.
    if (metric->type == meshd::core::MetricType::counter && !(delta >= 0)) {
        if (!metric->warned) {
            metric->warned = true;
            module_log(meshd::core::LogLevel::warn, "metrics.bad_update", metric->module,
                       "a counter was given a negative or NaN step; ignored (only the first "
                       "such call is logged)");
        }
        return;
    }
    metric->series->value += delta;
}

MESHD_EXPORT void meshd_host_metric_set(meshd_metric* metric, double value) {
    if (!metric)
        return;
    if (metric->type == meshd::core::MetricType::counter && !(value >= metric->series->value)) {
        if (!metric->warned) {
            metric->warned = true;
            module_log(meshd::core::LogLevel::warn, "metrics.bad_update", metric->module,
                       "a counter was set below its value (or to NaN); ignored (only the first "
                       "such call is logged)");
        }
        return;
    }
    metric->series->value = value;
}

MESHD_EXPORT int meshd_host_metrics_render(meshd_host*, meshd_buf* out) {
    if (!out)
        return -1;
    try {
        meshd::core::metrics().render(out->data);
    } catch (const std::exception& e) {
        MESHD_LOG(error, "metrics.render_failed", "message=%s",
                  meshd::core::log_value(e.what()).c_str());
        return -1;
    }
    return 0;
}

MESHD_EXPORT int meshd_host_http_listen(meshd_host* host, const char* addr, const char* path) {
    if (!host)
        return -1;
    meshd::router::LoadedModule& m = *host->module;
    auto fail = [&](const std::string& message) {
        module_log(meshd::core::LogLevel::error, "http.listen_refused", m.name, message);
        return -1;
    };
    if (!m.in_init)
        return fail("meshd_host_http_listen may only be called from the module's init");
    if (!m.desc->http)
        return fail("meshd_host_http_listen needs an http hook in the module's descriptor");
    if (!addr || !path)
        return fail("meshd_host_http_listen: addr and path must not be NULL");
    std::string key;
    for (const auto& [name, value] : m.table)
        if (value.type == meshd::core::ModuleValue::Type::string && value.string == addr) {
            key = "[" + m.name + "] " + name;
            break;
        }
    if (key.empty()) {
        for (const meshd_config_key* k = m.desc->config; k && k->name; ++k)
            if (std::string_view(k->name) == "listen")
                key = "[" + m.name + "] listen";
        if (key.empty())
            key = "module " + m.name;
    }
    auto parsed = meshd::core::parse_listen_addr(addr);
    if (!parsed)
        return fail(std::string("cannot listen on \"") + addr + "\" (" + key +
                    "): " + parsed.error().message);
    if (!valid_http_path(path))
        return fail(std::string("the HTTP path \"") + path + "\" (" + key +
                    ") must start with / and have no spaces, ? or #, at most 256 bytes");
    m.http_listens.push_back({m.name, m.index, std::move(parsed.value()), path, std::move(key)});
    return 0;
}

} // extern "C"
