// transport/ws_server: the lws protocol callback, receive assembly, writes and the raw close
// frame Debian's lws 4.1 needs (see shared/notes/lws-4.1-on-uv.md §2).
#include "transport/ws_server.h"

#include "core/log.h"

#include <algorithm>
#include <cstring>
#include <libwebsockets.h>
#include <simdjson.h>

namespace meshd::transport {

size_t write_headroom() {
    return LWS_PRE;
}

namespace {

constexpr size_t shrink_above = 64 * 1024;

// Bytes of frames handed to the socket per writable callback.
constexpr size_t write_budget = 64 * 1024;

// RFC 6455 header of an unmasked, final text frame carrying `len` payload bytes.
void append_frame_header(std::string& out, size_t len) {
    out += static_cast<char>(0x81);
    if (len < 126) {
        out += static_cast<char>(len);
    } else if (len < 65536) {
        out += static_cast<char>(126);
        out += static_cast<char>(len >> 8);
        out += static_cast<char>(len & 0xff);
    } else {
        out += static_cast<char>(127);
        for (int shift = 56; shift >= 0; shift -= 8)
            out += static_cast<char>((static_cast<uint64_t>(len) >> shift) & 0xff);
    }
}

// One accepted WebSocket connection.
class Connection final : public session::Link {
  public:
    Connection(WsServer& server, lws* wsi) : server_(server), wsi_(wsi) {}
    ~Connection() = default;
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    void want_write() override {
        if (!dead_)
            lws_callback_on_writable(wsi_);
    }
    void write_now() override {
        if (dead_ || failed_)
            return;
        // A failed write cannot close the connection from here (the caller may be walking
        // a list of sessions); the next writable callback returns -1 instead.
        if (on_writable() < 0) {
            failed_ = true;
            lws_callback_on_writable(wsi_);
        }
    }
    void kill() override {
        if (dead_)
            return;
        dead_ = true;
        // Synchronous: CLOSED fires (and destroys this object) before this returns.
        lws_set_timeout(wsi_, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_SYNC);
    }

    void on_receive(const char* in, size_t len, bool first, bool final, bool binary) {
        WsServer::Metrics& m = server_.metrics();
        m.bytes_received.add(static_cast<double>(len));
        if (final)
            m.frames_received.inc();
        if (first) {
            rx_.clear();
            rx_total_ = 0;
            rx_oversize_ = false;
            rx_binary_ = binary;
        }
        rx_total_ += len;
        if (!rx_binary_ && !rx_oversize_) {
            if (rx_.size() + len > server_.max_frame()) {
                rx_oversize_ = true;
                std::string().swap(rx_);
            } else {
                rx_.append(in, len);
            }
        }
        if (!final)
            return;
        if (rx_binary_) {
            session_->on_binary();
        } else if (rx_oversize_) {
            session_->on_too_large(rx_total_);
        } else {
            rx_.reserve(rx_.size() + simdjson::SIMDJSON_PADDING);
            session_->on_text(rx_);
        }
        // Buffers grow only while a frame is in flight, then shrink back.
        if (rx_.capacity() > shrink_above)
            std::string().swap(rx_);
        else
            rx_.clear();
    }

    // One socket write per writable callback: the session's text frames are framed here
    // (server frames are unmasked) into one buffer, up to write_budget bytes, and handed to
    // lws as LWS_WRITE_HTTP, which the ws role sends raw, in order with anything lws still
    // buffers. Pings and the close frame go through lws's own framing.
    int on_writable() {
        if (failed_)
            return -1;
        std::string& batch = server_.write_batch();
        batch.assign(LWS_PRE, '\0');
        bool more = false;
        for (;;) {
            if (batch.size() - LWS_PRE >= write_budget) {
                more = true;
                break;
            }
            session::OutFrame f = session_->next_frame();
            if (f.kind == session::OutFrame::Kind::none)
                break;
            WsServer::Metrics& m = server_.metrics();
            m.frames_sent.inc();
            m.bytes_sent.add(static_cast<double>(f.len));
            if (f.kind == session::OutFrame::Kind::text) {
                append_frame_header(batch, f.len);
                batch.append(f.data, f.len);
                continue;
            }
            if (flush(batch) < 0)
                return -1;
            if (f.kind == session::OutFrame::Kind::ping) {
                if (lws_write(wsi_, reinterpret_cast<unsigned char*>(f.data), f.len,
                              LWS_WRITE_PING) < 0)
                    return -1;
                continue;
            }
            // Debian's lws 4.1 debug build sends only a FIN for lws_close_reason()+return -1,
            // so write the close frame ourselves; lws closes when the peer echoes it, and the
            // broker kills the connection if that takes longer than 3 s.
            lws_write(wsi_, reinterpret_cast<unsigned char*>(f.data), f.len,
                      static_cast<lws_write_protocol>(4 /* LWS_WRITE_CLOSE, internal in 4.1 */));
            return 0;
        }
        if (flush(batch) < 0)
            return -1;
        if (more)
            lws_callback_on_writable(wsi_);
        return 0;
    }

    // Hands the framed bytes to lws (sent at once, or buffered by lws if the socket is full).
    int flush(std::string& batch) {
        size_t len = batch.size() - LWS_PRE;
        if (len == 0)
            return 0;
        int n = lws_write(wsi_, reinterpret_cast<unsigned char*>(batch.data() + LWS_PRE), len,
                          LWS_WRITE_HTTP);
        batch.resize(LWS_PRE);
        return n < 0 ? -1 : 0;
    }

    void attach(std::unique_ptr<session::Session> s) { session_ = std::move(s); }
    session::Session* session() { return session_.get(); }
    void closed() {
        dead_ = true;
        session_->on_closed();
    }

  private:
    WsServer& server_;
    lws* wsi_;
    std::unique_ptr<session::Session> session_;
    std::string rx_;
    size_t rx_total_ = 0;
    bool rx_oversize_ = false;
    bool rx_binary_ = false;
    bool dead_ = false;
    bool failed_ = false;
};

struct PerSession {
    Connection* conn;
};

std::string peer_address(lws* wsi) {
    char ip[64] = {0};
    lws_get_peer_simple(wsi, ip, sizeof ip);
    int fd = lws_get_socket_fd(wsi);
    sockaddr_storage ss{};
    socklen_t sl = sizeof ss;
    int port = 0;
    if (fd >= 0 && getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &sl) == 0) {
        if (ss.ss_family == AF_INET)
            port = ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
        else if (ss.ss_family == AF_INET6)
            port = ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
    }
    return std::string(ip) + ":" + std::to_string(port);
}

std::string bearer_token(lws* wsi) {
    int n = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);
    if (n <= 0 || n > 4096)
        return {};
    std::string value(static_cast<size_t>(n) + 1, '\0');
    if (lws_hdr_copy(wsi, value.data(), n + 1, WSI_TOKEN_HTTP_AUTHORIZATION) < 0)
        return {};
    value.resize(static_cast<size_t>(n));
    constexpr std::string_view scheme = "Bearer ";
    if (value.size() <= scheme.size() || strncasecmp(value.c_str(), "Bearer ", 7) != 0)
        return {};
    return value.substr(scheme.size());
}

bool path_is_ws(lws* wsi) {
    char uri[64] = {0};
    int n = lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI);
    if (n <= 0)
        return false;
    std::string_view path(uri, static_cast<size_t>(n));
    if (auto q = path.find('?'); q != std::string_view::npos)
        path = path.substr(0, q);
    return path == "/v1/ws";
}

int callback(lws* wsi, lws_callback_reasons reason, void* user, void* in, size_t len) noexcept {
    auto* server = static_cast<WsServer*>(lws_context_user(lws_get_context(wsi)));
    auto* pss = static_cast<PerSession*>(user);
    try {
        switch (reason) {
        case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
            return server && server->accepting() ? 0 : 1;
        case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
            if (!server->accepting() || !path_is_ws(wsi))
                return 1;
            return 0;
        case LWS_CALLBACK_ESTABLISHED: {
            auto conn = std::make_unique<Connection>(*server, wsi);
            conn->attach(
                server->broker().open_session(*conn, peer_address(wsi), bearer_token(wsi)));
            pss->conn = conn.release(); // owned by lws's per-session slot until CLOSED
            return 0;
        }
        case LWS_CALLBACK_RECEIVE:
            if (pss && pss->conn)
                pss->conn->on_receive(static_cast<const char*>(in), len, lws_is_first_fragment(wsi),
                                      lws_is_final_fragment(wsi), lws_frame_is_binary(wsi));
            return 0;
        case LWS_CALLBACK_RECEIVE_PONG:
            if (pss && pss->conn)
                pss->conn->session()->on_pong();
            return 0;
        case LWS_CALLBACK_SERVER_WRITEABLE:
            if (pss && pss->conn)
                return pss->conn->on_writable();
            return 0;
        case LWS_CALLBACK_CLOSED:
            if (pss && pss->conn) {
                std::unique_ptr<Connection> conn(pss->conn);
                pss->conn = nullptr;
                conn->closed();
            }
            return 0;
        case LWS_CALLBACK_HTTP:
            if (lws_return_http_status(wsi, HTTP_STATUS_NOT_FOUND,
                                       "meshd: WebSocket endpoint is /v1/ws"))
                return -1;
            return lws_http_transaction_completed(wsi) ? -1 : 0;
        default:
            return 0;
        }
    } catch (const std::exception& e) {
        MESHD_LOG(error, "transport.exception", "reason=%d message=%s", static_cast<int>(reason),
                  core::log_value(e.what()).c_str());
        return -1;
    }
}

// lws allocates rx_buffer_size (+ LWS_PRE) for every connection once it is established and
// keeps it for the connection's life: most of what an idle connection costs (4096 gave about
// 7.9 KB per idle connection, 512 about 4 KB less). Frames bigger than this arrive in pieces
// and are joined in Connection::rx_, which is freed after each frame; reads are capped at
// this size too, which costs a few more read calls only to clients that pipeline many frames.
constexpr size_t rx_piece_bytes = 512;

const lws_protocols protocols[] = {
    {"meshd.v1", callback, sizeof(PerSession), rx_piece_bytes, 0, nullptr, 65536},
    {nullptr, nullptr, 0, 0, 0, nullptr, 0},
};

// ---- HTTP listeners of modules ------------------------------------------------------------

// One answer on a module's HTTP listener. The hook answers at once (it runs synchronously on
// the loop); the body then leaves in pieces, one lws_write per HTTP_WRITEABLE.
struct HttpExchange {
    std::string body;
    size_t sent = 0;
};

struct HttpPerSession {
    HttpExchange* exchange; // owned: freed when written, or when the connection goes
};

constexpr size_t http_chunk = 16 * 1024;

void drop_exchange(HttpPerSession* pss) {
    if (pss && pss->exchange) {
        std::unique_ptr<HttpExchange> owned(pss->exchange);
        pss->exchange = nullptr;
    }
}

// A content type a module gave must not be able to add header lines.
bool valid_content_type(std::string_view t) {
    if (t.empty() || t.size() > 200)
        return false;
    for (char c : t)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
            return false;
    return true;
}

// Writes the status line and headers; queues the body unless head_only. Returns what the lws
// callback returns.
int http_respond(lws* wsi, HttpPerSession* pss, unsigned status, const std::string& content_type,
                 std::string body, bool head_only, bool allow_header = false) {
    unsigned char buf[LWS_PRE + 1024];
    unsigned char* start = buf + LWS_PRE;
    unsigned char* p = start;
    unsigned char* end = buf + sizeof buf - 1;
    if (lws_add_http_common_headers(wsi, status, content_type.c_str(), body.size(), &p, end))
        return -1;
    if (allow_header) {
        static const char allow[] = "GET, HEAD";
        if (lws_add_http_header_by_name(wsi, reinterpret_cast<const unsigned char*>("allow:"),
                                        reinterpret_cast<const unsigned char*>(allow),
                                        sizeof allow - 1, &p, end))
            return -1;
    }
    if (lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    if (head_only || body.empty())
        return lws_http_transaction_completed(wsi) ? -1 : 0;
    drop_exchange(pss);
    auto exchange = std::make_unique<HttpExchange>();
    exchange->body = std::move(body);
    pss->exchange = exchange.release();
    lws_callback_on_writable(wsi);
    return 0;
}

int http_writable(lws* wsi, HttpPerSession* pss, std::string& scratch) {
    HttpExchange* ex = pss ? pss->exchange : nullptr;
    if (!ex)
        return 0;
    size_t n = std::min(http_chunk, ex->body.size() - ex->sent);
    bool last = ex->sent + n == ex->body.size();
    scratch.assign(LWS_PRE, '\0');
    scratch.append(ex->body, ex->sent, n);
    if (lws_write(wsi, reinterpret_cast<unsigned char*>(scratch.data() + LWS_PRE), n,
                  last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) < 0)
        return -1;
    ex->sent += n;
    if (!last) {
        lws_callback_on_writable(wsi);
        return 0;
    }
    drop_exchange(pss);
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

// The query as lws kept it: each name=value pair %-decoded, joined again with '&'.
std::string query_of(lws* wsi) {
    std::string q;
    char piece[1024];
    for (int i = 0; i < 64; ++i) {
        int n = lws_hdr_copy_fragment(wsi, piece, sizeof piece, WSI_TOKEN_HTTP_URI_ARGS, i);
        if (n < 0)
            break; // no such fragment (or one too long to pass on)
        if (i > 0)
            q += '&';
        q.append(piece, static_cast<size_t>(n));
    }
    return q;
}

int http_request(lws* wsi, HttpPerSession* pss, WsServer::HttpVhost& vhost, std::string_view path) {
    WsServer& server = *vhost.server;
    router::ModuleSet& modules = server.broker().modules();
    const router::HttpListen& listen = modules.http_listens()[vhost.listener];
    char* uri = nullptr;
    int uri_len = 0;
    int method = lws_http_get_uri_and_method(wsi, &uri, &uri_len);
    bool head = method == LWSHUMETH_HEAD;
    const std::string text = "text/plain; charset=utf-8";
    if (method != LWSHUMETH_GET && !head)
        return http_respond(wsi, pss, HTTP_STATUS_METHOD_NOT_ALLOWED, text,
                            "meshd: only GET and HEAD are served here\n", false, true);
    if (path != listen.path)
        return http_respond(wsi, pss, HTTP_STATUS_NOT_FOUND, text,
                            "meshd: not found; module " + listen.module + " serves " + listen.path +
                                " here\n",
                            head);
    std::string query = query_of(wsi);
    std::string remote = peer_address(wsi);
    router::HttpReply reply =
        modules.http(vhost.listener, head ? "HEAD" : "GET", path, query, remote);
    MESHD_LOG(debug, "http.request", "module=%s method=%s path=%s query=%s remote=%s status=%d",
              listen.module.c_str(), head ? "HEAD" : "GET", core::log_value(path).c_str(),
              core::log_value(query).c_str(), remote.c_str(), reply.status);
    if (!valid_content_type(reply.content_type)) {
        MESHD_LOG(error, "http.bad_content_type", "module=%s", listen.module.c_str());
        return http_respond(
            wsi, pss, HTTP_STATUS_INTERNAL_SERVER_ERROR, text,
            "meshd: module " + listen.module + " answered with an invalid content type\n", head);
    }
    return http_respond(wsi, pss, static_cast<unsigned>(reply.status), reply.content_type,
                        std::move(reply.body), head);
}

int http_callback(lws* wsi, lws_callback_reasons reason, void* user, void* in,
                  size_t len) noexcept {
    auto* pss = static_cast<HttpPerSession*>(user);
    lws_vhost* vh = lws_get_vhost(wsi);
    auto* vhost = vh ? static_cast<WsServer::HttpVhost*>(lws_vhost_user(vh)) : nullptr;
    try {
        switch (reason) {
        case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
            return vhost && vhost->server->accepting() ? 0 : 1;
        case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
            return 1; // HTTP only: a WebSocket upgrade gets a bare close
        case LWS_CALLBACK_HTTP:
            if (!vhost || !pss)
                return -1;
            return http_request(wsi, pss, *vhost,
                                std::string_view(static_cast<const char*>(in), len));
        case LWS_CALLBACK_HTTP_BODY:
            return 0; // a body (of a refused POST, say) is read and dropped
        case LWS_CALLBACK_HTTP_WRITEABLE:
            return vhost ? http_writable(wsi, pss, vhost->server->write_batch()) : -1;
        case LWS_CALLBACK_CLOSED_HTTP:
        case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
            drop_exchange(pss);
            return 0;
        default:
            return 0;
        }
    } catch (const std::exception& e) {
        MESHD_LOG(error, "transport.exception", "reason=%d message=%s", static_cast<int>(reason),
                  core::log_value(e.what()).c_str());
        drop_exchange(pss);
        return -1;
    }
}

const lws_protocols http_protocols[] = {
    {"meshd-http", http_callback, sizeof(HttpPerSession), 1024, 0, nullptr, 0},
    {nullptr, nullptr, 0, 0, 0, nullptr, 0},
};

void lws_log_line(int level, const char* line) {
    std::string_view l(line);
    while (!l.empty() && (l.back() == '\n' || l.back() == ' '))
        l.remove_suffix(1);
    std::string fields = "message=" + core::log_value(l);
    core::log_event(level == LLL_ERR ? core::LogLevel::error : core::LogLevel::warn, "lws", fields);
}

} // namespace

core::Result<std::unique_ptr<WsServer>> WsServer::start(uv_loop_t* loop, const core::Config& config,
                                                        session::Broker& broker) {
    lws_set_log_level(LLL_ERR, lws_log_line);
    std::unique_ptr<WsServer> server(new WsServer(broker));
    server->max_frame_ = static_cast<size_t>(config.max_frame);

    lws_context_creation_info info{};
    void* loops[] = {loop};
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
    info.foreign_loops = loops;
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.user = server.get();
    info.pcontext = &server->context_;
    info.gid = -1;
    info.uid = -1;
    server->context_ = lws_create_context(&info);
    if (!server->context_)
        return core::make_error("internal", "cannot create the libwebsockets context (is "
                                            "libwebsockets-evlib-uv installed?)");
    auto fail = [&](const std::string& message) -> core::Error {
        // Two destroys need the loop to run between them (lws 4.1 on a foreign loop).
        server->destroy_begin();
        for (int i = 0; i < 20 && uv_run(loop, UV_RUN_NOWAIT) != 0; ++i) {
        }
        return core::make_error("internal", message);
    };
    // A vhost on addr; returns the "host:port" it listens on, or "" if it cannot bind.
    auto open_vhost = [&](const std::string& name, const core::ListenAddr& addr,
                          const lws_protocols* protos, void* user) -> std::string {
        lws_context_creation_info vh{};
        vh.vhost_name = name.c_str();
        vh.port = addr.port;
        vh.iface = addr.host.c_str();
        vh.protocols = protos;
        vh.user = user;
        vh.options = LWS_SERVER_OPTION_LIBUV;
        if (addr.host.find(':') == std::string::npos)
            vh.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
        lws_vhost* v = lws_create_vhost(server->context_, &vh);
        if (!v)
            return {};
        int port = lws_get_vhost_listen_port(v);
        std::string host =
            addr.host.find(':') == std::string::npos ? addr.host : "[" + addr.host + "]";
        return host + ":" + std::to_string(port);
    };
    int index = 0;
    for (const core::ListenAddr& addr : config.listen) {
        std::string listening =
            open_vhost("listen" + std::to_string(index++), addr, protocols, nullptr);
        if (listening.empty())
            return fail("cannot listen on " + addr.text +
                        " (server.listen): address in use or not available on this host");
        server->listening_.push_back(std::move(listening));
    }
    const auto& http = broker.modules().http_listens();
    for (size_t i = 0; i < http.size(); ++i) {
        const router::HttpListen& l = http[i];
        // Owned by the server from here, even if the vhost fails: lws may still pass its user
        // pointer to callbacks while it tears the failed vhost down.
        server->http_vhosts_.push_back(std::make_unique<HttpVhost>(HttpVhost{server.get(), i}));
        std::string listening = open_vhost("http" + std::to_string(i), l.addr, http_protocols,
                                           server->http_vhosts_.back().get());
        if (listening.empty())
            return fail("cannot listen on " + l.addr.text + " (" + l.config_key + ", for module " +
                        l.module + "): address in use or not available on this host; change " +
                        l.config_key + " or free the port");
        MESHD_LOG(info, "http.listen", "module=%s listen=%s path=%s", l.module.c_str(),
                  listening.c_str(), core::log_value(l.path).c_str());
        server->http_listening_.push_back({l.module, std::move(listening), l.path});
    }
    server->metrics_.frames_received = core::core_counter(
        "meshd_frames_received_total", "WebSocket messages (meshd frames) received from clients.");
    server->metrics_.frames_sent = core::core_counter(
        "meshd_frames_sent_total",
        "WebSocket messages (meshd frames, pings and closes) written to clients.");
    server->metrics_.bytes_received = core::core_counter(
        "meshd_received_bytes_total", "Payload bytes of WebSocket messages received.");
    server->metrics_.bytes_sent = core::core_counter(
        "meshd_sent_bytes_total", "Payload bytes of WebSocket messages written.");
    return server;
}

void WsServer::destroy_begin() {
    if (context_ && !destroy_begun_) {
        destroy_begun_ = true;
        lws_context_destroy(context_);
    }
}

WsServer::~WsServer() {
    // lws 4.1 on a foreign loop finishes only with a second destroy after the loop ran.
    if (context_) {
        if (!destroy_begun_) {
            lws_context_destroy(context_);
        }
        if (context_)
            lws_context_destroy(context_);
    }
}

} // namespace meshd::transport
