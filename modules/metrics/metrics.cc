// metrics: Prometheus text exposition of meshd's metrics on an HTTP listener of its own.
//
// [metrics] listen (default 127.0.0.1:9770) is a listener separate from the WebSocket ones,
// so metrics are never exposed by accident along with the broker; only GET and HEAD of
// [metrics] path (default /metrics) are answered. The body is meshd's whole registry (core
// metrics and every module's), rendered by the host in text format 0.0.4. Both keys are read
// once at start: a change needs a restart (meshctl reload says so).
#include "meshd/module.h"

#include <exception>
#include <memory>

namespace {

constexpr const char* default_listen = "127.0.0.1:9770";
constexpr const char* default_path = "/metrics";

struct State {
    meshd_host* host = nullptr;
    meshd_metric* scrapes = nullptr;
};

const meshd_config_key config_keys[] = {
    {"listen",
     MESHD_CONFIG_STRING,
     0,
     0,
     0,
     "\"host:port\" of the HTTP listener for Prometheus, e.g. \"127.0.0.1:9770\"",
     {}},
    {"path", MESHD_CONFIG_STRING, 0, 0, 0, "the HTTP path served, e.g. \"/metrics\"", {}},
    {nullptr, MESHD_CONFIG_INT, 0, 0, 0, nullptr, {}},
};

// A key that is absent takes its default; the host has already checked the types.
const char* config_or(meshd_host* host, const char* key, const char* fallback) {
    const char* value = nullptr;
    size_t len = 0;
    if (meshd_host_config_string(host, key, &value, &len) == 0 && value)
        return value;
    return fallback;
}

int init(meshd_host* host, void** state) noexcept {
    try {
        auto s = std::make_unique<State>();
        s->host = host;
        s->scrapes =
            meshd_host_metric(host, MESHD_METRIC_COUNTER, "meshd_metrics_scrapes_total",
                              "Requests answered by the metrics module (GET and HEAD).", nullptr);
        const char* listen = config_or(host, "listen", default_listen);
        const char* path = config_or(host, "path", default_path);
        if (meshd_host_http_listen(host, listen, path) != 0)
            return 1; // the host logged why
        *state = s.release();
        return 0;
    } catch (const std::exception& e) {
        meshd_host_log(host, MESHD_LOG_ERROR, "metrics.init_failed", e.what());
        return 1;
    }
}

void fini(void* state) noexcept {
    std::unique_ptr<State> owned(static_cast<State*>(state));
}

void http(void* state, const meshd_http_request*, meshd_http_response* resp) noexcept {
    auto* s = static_cast<State*>(state);
    meshd_host_metric_add(s->scrapes, 1);
    resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
    if (meshd_host_metrics_render(s->host, resp->body) != 0) {
        resp->status = 500;
        resp->content_type = "text/plain; charset=utf-8";
        static const char message[] = "meshd could not render its metrics; see its log\n";
        meshd_host_buf_append(resp->body, message, sizeof message - 1);
    }
}

const meshd_module descriptor = [] {
    meshd_module m{};
    m.abi = MESHD_MODULE_ABI;
    m.name = "metrics";
    m.version = "0.1.0";
    m.init = init;
    m.fini = fini;
    m.http = http;
    m.config = config_keys;
    return m;
}();

} // namespace

MESHD_MODULE_DEFINE(descriptor)
