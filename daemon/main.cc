// main: meshd's command line, start-up order and the shutdown sequence.
//
// Start: config -> store -> modules -> broker -> listeners -> control socket -> ready.
// Shutdown (SIGTERM/SIGINT): refuse new connections, commit the last batch, close every
// session with 1001, run the loop until they are gone (at most 5 s), then lws's first
// context destroy; close our own handles; the loop returns; lws's second destroy; and
// uv_loop_close() must find nothing left.
#include "control/commands.h"
#include "control/control_server.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/uv_handle.h"
#include "meshd_build.h"
#include "router/modules.h"
#include "session/broker.h"
#include "store/reader.h"
#include "store/store.h"
#include "transport/ws_server.h"

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>
#include <vector>

namespace {

using namespace meshd;

constexpr uint64_t shutdown_grace_ms = 5000;

void usage(FILE* out) {
    std::fprintf(out, "usage: meshd --config FILE [--check]\n"
                      "       meshd --version\n"
                      "Runs the meshd message broker in the foreground; see meshd(8).\n");
}

std::string join(const std::vector<std::string>& items, std::string_view separator) {
    std::string out;
    for (const auto& item : items) {
        if (!out.empty())
            out += separator;
        out += item;
    }
    return out;
}

void raise_fd_limit() {
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

class Daemon {
  public:
    Daemon(uv_loop_t* loop, std::unique_ptr<core::Config> config)
        : loop_(loop), started_config_(*config), config_(std::move(config)) {}

    int run() {
        core::log_set_level(config_->log_level);
        started_ms_ = core::wall_ms();
        register_process_metrics();
        // Signals first: a SIGTERM during start-up is handled once the loop runs.
        sigterm_ = core::UvSignal::create(loop_, SIGTERM, [this] { begin_shutdown("SIGTERM"); });
        sigint_ = core::UvSignal::create(loop_, SIGINT, [this] { begin_shutdown("SIGINT"); });
        sighup_ = core::UvSignal::create(loop_, SIGHUP, [this] {
            auto r = reload();
            if (!r)
                MESHD_LOG(error, "config.reload_failed", "message=%s",
                          core::log_value(r.error().message).c_str());
        });
        store::StoreOptions so;
        so.loop = loop_;
        so.data_dir = config_->data_dir;
        so.sync = config_->sync;
        so.dedupe_window_s = config_->dedupe_window_s;
        so.checkpoint_wal_bytes = config_->checkpoint_wal_bytes;
        so.cache_bytes = static_cast<size_t>(config_->cache_bytes);
        so.retention_days = config_->retention_days;
        so.max_log_entries = config_->max_log_entries;
        auto st = store::Store::open(so);
        if (!st)
            return fail("store.open_failed", st.error().message);
        store_ = std::move(st.value());
        auto rd = store::Reader::open(loop_, store_->db_path(),
                                      static_cast<size_t>(config_->history_readers));
        if (!rd)
            return fail("store.open_failed", rd.error().message);
        reader_ = std::move(rd.value());

        auto mods = router::ModuleSet::load(*config_, *store_, loop_);
        if (!mods) {
            // ModuleSet::load logged event=module.load_failed with the file; a bad module
            // table is also printed as FILE:LINE:COL lines, like the core's config errors.
            if (mods.error().code == "bad_config")
                std::fprintf(stderr, "%s\n", mods.error().message.c_str());
            teardown();
            return 1;
        }
        modules_ = std::move(mods.value());
        if (!modules_->has_auth())
            MESHD_LOG(warn, "modules.none_auth",
                      "message=\"no auth module loaded: nobody can log in (add auth_token to "
                      "modules.load)\"");

        broker_ = std::make_unique<session::Broker>(
            loop_, *store_, *reader_, *modules_, session::BrokerLimits::from(*config_),
            transport::write_headroom(), std::string("meshd/") + MESHD_VERSION);
        // No agent is connected yet: the leases of the tasks they held start now.
        broker_->dispatcher().start(core::wall_ms());

        auto ws = transport::WsServer::start(loop_, *config_, *broker_);
        if (!ws)
            return fail("server.listen_failed", ws.error().message);
        ws_ = std::move(ws.value());

        commands_ = std::make_unique<control::CommandContext>(
            control::CommandContext{*broker_, *store_, *modules_, [this] { return reload(); },
                                    ws_->listening(), started_ms_, ws_->http_listening()});
        auto ctl = control::ControlServer::start(
            loop_, config_->control_socket, [this](std::string_view line, control::Reply reply) {
                control::handle_command(*commands_, line, std::move(reply));
            });
        if (!ctl)
            return fail("control.listen_failed", ctl.error().message);
        control_ = std::move(ctl.value());

        std::string listen = join(ws_->listening(), ",");
        // Module HTTP listeners come last, after the fields scripts already parse.
        std::vector<std::string> http;
        for (const auto& l : ws_->http_listening())
            http.push_back(l.listen);
        std::string http_field = http.empty() ? std::string() : " http=" + join(http, ",");
        MESHD_LOG(info, "server.ready", "listen=%s control=%s version=%s pid=%d%s", listen.c_str(),
                  config_->control_socket.c_str(), MESHD_VERSION, static_cast<int>(getpid()),
                  http_field.c_str());

        uv_run(loop_, UV_RUN_DEFAULT);
        teardown();
        MESHD_LOG(info, "server.stopped", "message=\"clean exit\"");
        return 0;
    }

  private:
    // meshd_build_info and meshd_uptime_seconds; the uptime is read when rendering.
    void register_process_metrics() {
        core::core_gauge("meshd_build_info", "Always 1; the labels name the running meshd.",
                         core::metric_labels({{"version", MESHD_VERSION}}))
            .set(1);
        core::Gauge uptime =
            core::core_gauge("meshd_uptime_seconds", "Seconds since meshd started.");
        uptime_collector_ = core::metrics().add_collector([this, uptime]() mutable {
            uptime.set(static_cast<double>(core::wall_ms() - started_ms_) / 1000.0);
        });
    }

    int fail(const char* event, const std::string& message) {
        MESHD_LOG(error, event, "message=%s", core::log_value(message).c_str());
        teardown();
        return 1;
    }

    core::Result<core::ConfigDiff> reload() {
        auto loaded = core::load_config(config_->path);
        if (!loaded.config) {
            std::vector<std::string> lines;
            for (const auto& e : loaded.errors)
                lines.push_back(e.to_string());
            return core::make_error("bad_config", join(lines, "\n"));
        }
        core::Config& next = *loaded.config;
        auto module_diff = modules_->prepare_reload(next);
        if (!module_diff)
            return module_diff.error();
        core::ConfigDiff applied = core::diff_config(*config_, next);
        core::ConfigDiff since_start = core::diff_config(started_config_, next);
        for (auto& k : module_diff.value().applied)
            applied.applied.push_back(k);
        for (auto& k : module_diff.value().restart_required)
            since_start.restart_required.push_back(k);
        // Modules first: one that refuses its new section leaves everything as it was.
        if (auto r = modules_->reload(next); !r)
            return core::make_error(r.error().code, r.error().message +
                                                        "; nothing was changed: fix the file and "
                                                        "run meshctl reload again");
        core::log_set_level(next.log_level);
        broker_->apply_limits(session::BrokerLimits::from(next));
        ws_->set_max_frame(static_cast<size_t>(next.max_frame));
        store_->set_dedupe_window_s(next.dedupe_window_s);
        store_->set_cache_bytes(static_cast<size_t>(next.cache_bytes));
        store_->set_retention(next.retention_days, next.max_log_entries);
        config_ = std::move(loaded.config);
        core::ConfigDiff result{applied.applied, since_start.restart_required};
        std::string applied_text = join(result.applied, ",");
        std::string restart_text = join(result.restart_required, ",");
        MESHD_LOG(info, "config.reloaded", "applied=%s restart_required=%s",
                  applied_text.empty() ? "-" : applied_text.c_str(),
                  restart_text.empty() ? "-" : restart_text.c_str());
        return result;
    }

    void begin_shutdown(const char* why) {
        if (shutting_down_ || !ws_ || !control_ || !broker_)
            return;
        shutting_down_ = true;
        MESHD_LOG(info, "server.stopping", "signal=%s sessions=%zu", why,
                  broker_->connection_count());
        ws_->stop_accepting();
        control_->stop();
        broker_->flush(); // the last commit, durable, before anyone is told goodbye
        broker_->close_all(1001, "server shutting down");
        shutdown_started_ms_ = uv_now(loop_);
        shutdown_timer_ = core::UvTimer::create(loop_, [this] { poll_shutdown(); });
        shutdown_timer_.start(20, 20);
    }

    void poll_shutdown() {
        bool timed_out = uv_now(loop_) - shutdown_started_ms_ >= shutdown_grace_ms;
        if (broker_->connection_count() > 0 && !timed_out)
            return;
        if (timed_out)
            MESHD_LOG(warn, "server.shutdown_timeout", "connections=%zu",
                      broker_->connection_count());
        broker_->flush();
        ws_->destroy_begin();
        broker_->stop();
        shutdown_timer_.close();
        sigterm_.close();
        sigint_.close();
        sighup_.close();
    }

    // Everything after uv_run returned (or a failed start): destroy in reverse order and
    // let libuv finish every close callback.
    void teardown() {
        sigterm_.close();
        sigint_.close();
        sighup_.close();
        shutdown_timer_.close();
        if (control_)
            control_->stop();
        if (ws_)
            ws_->destroy_begin();
        if (broker_)
            broker_->stop();
        if (reader_)
            reader_->shutdown(); // joins the reader threads, closes their uv handle
        uv_run(loop_, UV_RUN_DEFAULT);
        ws_.reset(); // the second lws_context_destroy
        uv_run(loop_, UV_RUN_DEFAULT);
        control_.reset();
        broker_.reset();
        commands_.reset();
        modules_.reset();
        reader_.reset();
        store_.reset();
        uv_run(loop_, UV_RUN_DEFAULT);
    }

    uv_loop_t* loop_;
    core::Config started_config_;
    std::unique_ptr<core::Config> config_;
    std::unique_ptr<store::Store> store_;
    std::unique_ptr<store::Reader> reader_;
    std::unique_ptr<router::ModuleSet> modules_;
    std::unique_ptr<session::Broker> broker_;
    std::unique_ptr<transport::WsServer> ws_;
    std::unique_ptr<control::CommandContext> commands_;
    std::unique_ptr<control::ControlServer> control_;
    core::UvSignal sigterm_, sigint_, sighup_;
    core::UvTimer shutdown_timer_;
    bool shutting_down_ = false;
    uint64_t shutdown_started_ms_ = 0;
    int64_t started_ms_ = 0;
    core::CollectorHandle uptime_collector_;
};

} // namespace

int main(int argc, char** argv) {
    std::string config_path;
    bool check = false;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        if (a == "--version") {
            std::printf("meshd %s\n", MESHD_VERSION);
            return 0;
        } else if (a == "--help" || a == "-h") {
            usage(stdout);
            return 0;
        } else if (a == "--check") {
            check = true;
        } else if (a == "--config" && i + 1 < argc) {
            config_path = argv[++i];
        } else if (a.starts_with("--config=")) {
            config_path = std::string(a.substr(9));
        } else {
            std::fprintf(stderr, "meshd: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (config_path.empty()) {
        std::fprintf(stderr, "meshd: --config FILE is required (the installed one is %s)\n",
                     MESHD_DEFAULT_CONFIG);
        usage(stderr);
        return 2;
    }
    auto loaded = meshd::core::load_config(config_path);
    if (!loaded.config) {
        for (const auto& e : loaded.errors)
            std::fprintf(stderr, "%s\n", e.to_string().c_str());
        return 1;
    }
    if (check) {
        // Module tables are checked against the key lists of the modules themselves.
        auto errors = meshd::router::ModuleSet::check(*loaded.config);
        for (const auto& e : errors)
            std::fprintf(stderr, "%s\n", e.to_string().c_str());
        if (!errors.empty())
            return 1;
        std::printf("%s: ok\n", config_path.c_str());
        return 0;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        std::fprintf(stderr, "meshd: cannot create the event loop\n");
        return 1;
    }
    int rc;
    {
        Daemon daemon(&loop, std::move(loaded.config));
        rc = daemon.run();
    }
    if (uv_loop_close(&loop) != 0) {
        MESHD_LOG(error, "server.handles_left",
                  "message=\"uv handles still open at exit (a bug; please report)\"");
        uv_walk(
            &loop,
            [](uv_handle_t* h, void*) {
                MESHD_LOG(error, "server.handle_left", "type=%s",
                          uv_handle_type_name(uv_handle_get_type(h)));
            },
            nullptr);
        return rc == 0 ? 1 : rc;
    }
    return rc;
}
