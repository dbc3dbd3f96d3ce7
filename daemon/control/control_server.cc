// control/control_server: the control socket's listener, its clients and their line framing.
//
// Owns: the listening uv_pipe_t bound at `[control] socket`, one Client per accepted
// connection (with its uv_pipe_t, read buffer and pending writes), and the socket file itself
// (created 0660, unlinked on stop()). It knows nothing about commands: every complete request
// line goes to the Handler, and the Handler's Reply writes the response line.
//
// A client's life (each arrow names the function that takes it):
//
//   accepted --check_peer_and_start(): refused--> forbidden written --close_gracefully()--+
//      | check_peer_and_start(): allowed, update_reading()                                |
//      v                                                                                  v
//   idle --drain(): complete line--> awaiting reply --Client::reply()--> idle          closing
//      |--drain(): line over 64 KiB--> bad_request written --close_gracefully()---------->|
//      |--drain(): EOF (half-close) and everything answered --close_gracefully()--------->|
//      \--on_read(): peer gone or error / on_write(): error / stop() --close_client()----->|
//   closing: uv_close() ran; the close callback frees the Client.
//
// Invariants:
//   1. At most one request per client is with the Handler at a time: drain() hands out the
//      next line only after the previous one's Reply ran, so responses leave in request order.
//   2. A Client is freed only in its uv close callback; until then libuv may still call its
//      write and shutdown callbacks (with UV_ECANCELED), which touch only the Client.
//   3. A Reply holds a weak_ptr to the client's Link, never the Client: the Link dies when the
//      client starts closing, so a late Reply (after a disconnect or stop()) does nothing.
//   4. Buffered input stays under kMaxRequestLine plus one read: reading pauses while the
//      buffer is that full and resumes once drain() consumed it.
#include "control/control_server.h"

#include "core/json.h"
#include "core/log.h"
#include "core/names.h"

#include <cerrno>
#include <cstring>
#include <exception>
#include <grp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <unordered_map>
#include <utility>
#include <vector>

namespace meshd::control {

namespace {

// Longest request line accepted, without its newline. Commands are small; the cap keeps a
// confused or hostile local peer from growing our buffer without end.
constexpr size_t kMaxRequestLine = size_t{64} * 1024;
// Bytes read per read callback.
constexpr size_t kReadChunk = size_t{64} * 1024;
// Output queued to a client that does not read. Past it we hand out no further request
// until the queue drains, so a pipelining client cannot make us buffer without bound.
constexpr size_t kMaxPendingOutput = size_t{4} * 1024 * 1024;
constexpr int kListenBacklog = 16;
constexpr mode_t kSocketMode = 0660;

uv_handle_t* as_handle(uv_pipe_t* pipe) {
    return reinterpret_cast<uv_handle_t*>(pipe);
}
uv_stream_t* as_stream(uv_pipe_t* pipe) {
    return reinterpret_cast<uv_stream_t*>(pipe);
}

std::string errno_text(int err) {
    return std::strerror(err); // NOLINT(concurrency-mt-unsafe): strerror_r's GNU/XSI split
}

std::string error_line(std::string_view code, std::string_view message) {
    std::string line = R"({"ok":false,"error":{"code":)";
    core::json_append_string(line, code);
    line += R"(,"message":)";
    core::json_append_string(line, message);
    line += "}}";
    return line;
}

std::string parent_dir(const std::string& path) {
    size_t slash = path.find_last_of('/');
    if (slash == std::string::npos)
        return ".";
    if (slash == 0)
        return "/";
    return path.substr(0, slash);
}

// The listening handle: closed (and freed in its close callback) when the owner goes away.
struct ListenerCloser {
    void operator()(uv_pipe_t* pipe) const noexcept {
        uv_close(as_handle(pipe), [](uv_handle_t* h) noexcept {
            std::unique_ptr<uv_pipe_t> owned(reinterpret_cast<uv_pipe_t*>(h));
        });
    }
};
using ListenerPtr = std::unique_ptr<uv_pipe_t, ListenerCloser>;

// One response line on its way out; freed in the write callback.
struct WriteRequest {
    uv_write_t req{};
    std::string data;
};

enum class PathState { absent, stale_socket };

// Decides whether `path` may be bound: missing (fine), a socket nobody listens on (fine,
// after unlinking it), or anything else (an error saying what to do).
core::Result<PathState> probe_socket_path(const std::string& path) {
    if (path.empty())
        return core::make_error("bad_config", "control socket path is empty: set [control] socket");
    if (path.size() >= sizeof(sockaddr_un{}.sun_path))
        return core::make_error("bad_config",
                                "control socket path " + path + " is too long (" +
                                    std::to_string(path.size()) + " bytes, at most " +
                                    std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) +
                                    "): choose a shorter [control] socket");
    std::string dir = parent_dir(path);
    struct stat dir_st {};
    if (::stat(dir.c_str(), &dir_st) != 0) {
        int err = errno;
        if (err == ENOENT)
            return core::make_error("bad_config",
                                    "directory " + dir + " for the control socket " + path +
                                        " does not exist: create it (systemd's "
                                        "RuntimeDirectory=meshd does) or set [control] socket");
        return core::make_error("bad_config", "cannot use directory " + dir +
                                                  " for the control socket: " + errno_text(err));
    }
    if (!S_ISDIR(dir_st.st_mode))
        return core::make_error("bad_config", dir + " is not a directory: set [control] socket "
                                                    "to a path in an existing directory");

    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
        int err = errno;
        if (err == ENOENT)
            return PathState::absent;
        return core::make_error("bad_config",
                                "cannot inspect control socket " + path + ": " + errno_text(err));
    }
    if (!S_ISSOCK(st.st_mode))
        return core::make_error("bad_config", path +
                                                  " exists and is not a socket: remove it or set "
                                                  "[control] socket to another path");

    // Somebody listening answers a connect; a leftover file of a dead daemon refuses it.
    // Non-blocking, so a full backlog (EAGAIN) also counts as alive instead of blocking us.
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return core::make_error("internal", "socket(): " + errno_text(errno));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    int err = rc == 0 ? 0 : errno;
    ::close(fd);
    if (rc == 0 || err == EAGAIN || err == EINPROGRESS)
        return core::make_error("unavailable", "another meshd is listening on " + path +
                                                   ": stop it, or set [control] socket to "
                                                   "another path");
    if (err == ECONNREFUSED)
        return PathState::stale_socket;
    if (err == ENOENT) // removed between lstat and connect
        return PathState::absent;
    return core::make_error("unavailable", "cannot check whether " + path +
                                               " is in use (connect: " + errno_text(err) +
                                               "): remove it if no meshd is running");
}

class ControlServerImpl;

class Client {
  public:
    // Lives while the client is open; a Reply reaches the client only through it (inv. 3).
    struct Link {
        Client* client;
    };

    Client(ControlServerImpl* server, uint64_t id)
        : server_(server), id_(id), link_(std::make_shared<Link>(Link{this})),
          read_buf_(kReadChunk) {
        pipe_.data = this;
        shutdown_req_.data = this;
    }

    uv_pipe_t* pipe() { return &pipe_; }
    uint64_t id() const { return id_; }
    bool closing() const { return closing_; }

    // Called by ControlServerImpl::close_client() right before uv_close.
    void mark_closing() {
        closing_ = true;
        server_ = nullptr;
        link_.reset();
    }

    void check_peer_and_start(uid_t daemon_uid, gid_t socket_gid, const std::string& path,
                              const std::string& group);
    void reply(uint64_t request_no, std::string line);

  private:
    static void on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) noexcept;
    static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) noexcept;
    static void on_write(uv_write_t* req, int status) noexcept;
    static void on_shutdown(uv_shutdown_t* req, int status) noexcept;

    void drain();
    void dispatch(const std::string& line);
    void update_reading();
    bool write_line(std::string line);
    void fail(std::string_view code, std::string_view message);
    void close_gracefully();
    void close_now();
    // After EOF: did the peer close entirely (POLLHUP), or only shut down its sending side?
    bool peer_gone() {
        uv_os_fd_t fd = -1;
        if (uv_fileno(as_handle(&pipe_), &fd) != 0)
            return true;
        pollfd pfd{fd, POLLOUT, 0};
        return ::poll(&pfd, 1, 0) < 0 || (pfd.revents & (POLLHUP | POLLERR)) != 0;
    }
    bool output_backlogged() {
        return uv_stream_get_write_queue_size(as_stream(&pipe_)) > kMaxPendingOutput;
    }

    uv_pipe_t pipe_{};
    uv_shutdown_t shutdown_req_{};
    ControlServerImpl* server_; // null once closing
    uint64_t id_;
    std::shared_ptr<Link> link_;
    std::vector<char> read_buf_;
    std::string input_; // received bytes not yet handed out as requests
    uint64_t request_count_ = 0;
    uint64_t awaiting_ = 0; // request number the Handler still owes a reply for; 0 = none
    bool reading_ = false;
    bool eof_ = false;
    bool in_drain_ = false;
    bool shutting_down_ = false; // no more requests; closes once the output is flushed
    bool closing_ = false;
};

class ControlServerImpl final : public ControlServer {
  public:
    ControlServerImpl(uv_loop_t* loop, std::string path, Handler handler)
        : loop_(loop), path_(std::move(path)), handler_(std::move(handler)) {}
    ~ControlServerImpl() override { stop(); }
    ControlServerImpl(const ControlServerImpl&) = delete;
    ControlServerImpl& operator=(const ControlServerImpl&) = delete;

    core::Result<void> listen();
    void stop() override;
    size_t client_count() const override { return clients_.size(); }

    const Handler& handler() const { return handler_; }
    const std::string& path() const { return path_; }
    // Takes `client` out of the set and closes its handle; it is freed in the close callback.
    void close_client(Client* client);

  private:
    static void on_connection(uv_stream_t* server, int status) noexcept;
    void accept_one();

    uv_loop_t* loop_;
    std::string path_;
    Handler handler_;
    ListenerPtr listener_;
    dev_t socket_dev_ = 0; // identity of the file we bound, so stop() unlinks only ours
    ino_t socket_ino_ = 0;
    gid_t socket_gid_ = 0;
    std::string socket_group_;
    uint64_t next_client_id_ = 1;
    std::unordered_map<Client*, std::unique_ptr<Client>> clients_;
};

// ---- Client ----

void Client::on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) noexcept {
    auto* self = static_cast<Client*>(h->data);
    *buf = uv_buf_init(self->read_buf_.data(), static_cast<unsigned>(self->read_buf_.size()));
}

void Client::check_peer_and_start(uid_t daemon_uid, gid_t socket_gid, const std::string& path,
                                  const std::string& group) {
    uv_os_fd_t fd = -1;
    ucred cred{};
    socklen_t len = sizeof cred;
    bool known = uv_fileno(as_handle(&pipe_), &fd) == 0 &&
                 ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
    bool allowed = known && (cred.uid == 0 || cred.uid == daemon_uid || cred.gid == socket_gid);
    // The socket's mode already lets every member of its group connect, supplementary
    // members included; SO_PEERGROUPS (Linux 4.13+) lets us agree with that.
    if (known && !allowed) {
        std::vector<gid_t> groups(64);
        socklen_t groups_len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
        int rc = ::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &groups_len);
        if (rc != 0 && errno == ERANGE) {
            groups.resize(groups_len / sizeof(gid_t) + 1);
            groups_len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
            rc = ::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &groups_len);
        }
        if (rc == 0)
            for (size_t i = 0; i < groups_len / sizeof(gid_t); ++i)
                allowed = allowed || groups[i] == socket_gid;
    }
    if (!known) {
        MESHD_LOG(warn, "control.forbidden", "client=%llu reason=no_peer_credentials",
                  static_cast<unsigned long long>(id_));
        fail("forbidden", "meshd could not read the peer credentials of this connection");
        return;
    }
    if (!allowed) {
        MESHD_LOG(warn, "control.forbidden", "client=%llu uid=%u gid=%u pid=%d",
                  static_cast<unsigned long long>(id_), cred.uid, cred.gid, cred.pid);
        fail("forbidden", "uid " + std::to_string(cred.uid) + " may not use the control socket " +
                              path + ": run meshctl as root, as the daemon's user, or as a " +
                              "member of group " + group);
        return;
    }
    MESHD_LOG(info, "control.accept", "client=%llu uid=%u gid=%u pid=%d",
              static_cast<unsigned long long>(id_), cred.uid, cred.gid, cred.pid);
    update_reading();
}

void Client::on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) noexcept {
    auto* self = static_cast<Client*>(s->data);
    if (self->closing_)
        return;
    if (nread > 0) {
        self->input_.append(buf->base, static_cast<size_t>(nread));
    } else if (nread == UV_EOF) {
        self->eof_ = true;
        self->reading_ = false;
        uv_read_stop(s);
        if (self->peer_gone()) {
            self->close_now(); // nobody left to answer; a pending Reply becomes a no-op
            return;
        }
        // Half-close (the peer shut down its sending side): answer what was sent, then close
        // (drain() does it).
    } else if (nread < 0) {
        MESHD_LOG(debug, "control.read_failed", "client=%llu error=%s",
                  static_cast<unsigned long long>(self->id_), uv_err_name(static_cast<int>(nread)));
        self->close_now();
        return;
    }
    self->drain();
}

// Hands out complete lines one at a time (invariant 1). Re-entrant calls (a Handler that
// replies at once) return immediately; the outer loop picks up the next line, so pipelined
// requests do not recurse.
void Client::drain() {
    if (in_drain_ || closing_ || shutting_down_)
        return;
    in_drain_ = true;
    while (!closing_ && !shutting_down_ && awaiting_ == 0 && !output_backlogged()) {
        size_t newline = input_.find('\n');
        size_t line_len = newline == std::string::npos ? input_.size() : newline;
        if (line_len > kMaxRequestLine) {
            MESHD_LOG(warn, "control.bad_request", "client=%llu reason=line_too_long",
                      static_cast<unsigned long long>(id_));
            fail("bad_request", "request line longer than " + std::to_string(kMaxRequestLine) +
                                    " bytes; send one JSON request per line");
            break;
        }
        if (newline == std::string::npos && !eof_)
            break; // wait for the rest of the line
        if (newline == std::string::npos && input_.empty()) {
            close_gracefully(); // EOF and everything answered
            break;
        }
        // A last line without its newline at EOF still counts as a request.
        std::string line = input_.substr(0, line_len);
        input_.erase(0, newline == std::string::npos ? input_.size() : newline + 1);
        if (!line.empty() && line.back() == '\r')
            line.pop_back();
        if (line.empty())
            continue;
        dispatch(line);
    }
    in_drain_ = false;
    update_reading();
}

void Client::dispatch(const std::string& line) {
    uint64_t request_no = ++request_count_;
    awaiting_ = request_no;
    std::weak_ptr<Link> weak = link_;
    Reply reply = [weak, request_no](std::string response) {
        if (std::shared_ptr<Link> link = weak.lock())
            link->client->reply(request_no, std::move(response));
    };
    try {
        server_->handler()(line, reply);
    } catch (const std::exception& e) {
        MESHD_LOG(error, "control.handler_failed", "client=%llu message=%s",
                  static_cast<unsigned long long>(id_), core::log_value(e.what()).c_str());
        reply(error_line("internal", std::string("internal error: ") + e.what()));
    } catch (...) {
        MESHD_LOG(error, "control.handler_failed", "client=%llu message=unknown",
                  static_cast<unsigned long long>(id_));
        reply(error_line("internal", "internal error"));
    }
}

void Client::reply(uint64_t request_no, std::string line) {
    if (closing_ || request_no != awaiting_)
        return; // second reply to one request, or the client is going away
    awaiting_ = 0;
    if (!write_line(std::move(line)))
        return;
    drain();
}

// Reading pauses while the buffer holds a full line's worth (invariant 4).
void Client::update_reading() {
    if (closing_ || shutting_down_ || eof_)
        return;
    bool want = input_.size() <= kMaxRequestLine;
    if (want == reading_)
        return;
    if (want) {
        int rc = uv_read_start(as_stream(&pipe_), on_alloc, on_read);
        if (rc != 0) {
            MESHD_LOG(warn, "control.read_failed", "client=%llu error=%s",
                      static_cast<unsigned long long>(id_), uv_err_name(rc));
            close_now();
            return;
        }
    } else {
        uv_read_stop(as_stream(&pipe_));
    }
    reading_ = want;
}

bool Client::write_line(std::string line) {
    // A raw newline can only be JSON whitespace; turning it into a space keeps the framing.
    for (char& c : line)
        if (c == '\n' || c == '\r')
            c = ' ';
    auto request = std::make_unique<WriteRequest>();
    request->req.data = request.get();
    request->data = std::move(line);
    request->data += '\n';
    uv_buf_t buf = uv_buf_init(request->data.data(), static_cast<unsigned>(request->data.size()));
    int rc = uv_write(&request->req, as_stream(&pipe_), &buf, 1, on_write);
    if (rc != 0) {
        MESHD_LOG(debug, "control.write_failed", "client=%llu error=%s",
                  static_cast<unsigned long long>(id_), uv_err_name(rc));
        close_now();
        return false;
    }
    (void)request.release(); // libuv owns it until on_write
    return true;
}

void Client::on_write(uv_write_t* req, int status) noexcept {
    std::unique_ptr<WriteRequest> owned(static_cast<WriteRequest*>(req->data));
    auto* self = static_cast<Client*>(req->handle->data);
    if (self->closing_)
        return; // cancelled by close; the Client is still alive until its close callback
    if (status < 0) {
        MESHD_LOG(debug, "control.write_failed", "client=%llu error=%s",
                  static_cast<unsigned long long>(self->id_), uv_err_name(status));
        self->close_now();
        return;
    }
    self->drain(); // output may have been the thing holding requests back
}

// One error response, then close once it is flushed. Used for refused peers and oversized
// lines: the connection is not trusted to be in sync any more.
void Client::fail(std::string_view code, std::string_view message) {
    if (!write_line(error_line(code, message)))
        return;
    close_gracefully();
}

void Client::close_gracefully() {
    if (closing_ || shutting_down_)
        return;
    shutting_down_ = true;
    if (reading_) {
        uv_read_stop(as_stream(&pipe_));
        reading_ = false;
    }
    // uv_shutdown waits for queued writes, so the last response is not cut off.
    int rc = uv_shutdown(&shutdown_req_, as_stream(&pipe_), on_shutdown);
    if (rc != 0)
        close_now();
}

void Client::on_shutdown(uv_shutdown_t* req, int) noexcept {
    auto* self = static_cast<Client*>(req->data);
    if (!self->closing_)
        self->close_now();
}

void Client::close_now() {
    if (closing_ || server_ == nullptr)
        return;
    server_->close_client(this);
}

// ---- ControlServerImpl ----

void ControlServerImpl::close_client(Client* client) {
    auto it = clients_.find(client);
    if (it == clients_.end())
        return;
    std::unique_ptr<Client> owned = std::move(it->second);
    clients_.erase(it);
    MESHD_LOG(debug, "control.close", "client=%llu", static_cast<unsigned long long>(owned->id()));
    owned->mark_closing();
    Client* raw = owned.release(); // libuv owns it until the close callback (invariant 2)
    uv_close(as_handle(raw->pipe()), [](uv_handle_t* h) noexcept {
        std::unique_ptr<Client> freed(static_cast<Client*>(h->data));
    });
}

core::Result<void> ControlServerImpl::listen() {
    core::Result<PathState> state = probe_socket_path(path_);
    if (!state)
        return state.error();
    if (state.value() == PathState::stale_socket) {
        if (::unlink(path_.c_str()) != 0 && errno != ENOENT)
            return core::make_error("unavailable", "cannot remove stale control socket " + path_ +
                                                       ": " + errno_text(errno));
        MESHD_LOG(info, "control.stale_socket", "path=%s action=replaced",
                  core::log_value(path_).c_str());
    }

    // We bind the socket ourselves and hand libuv the fd: libuv's own bind truncates long
    // paths silently and its close unlinks the path whoever owns the file by then.
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return core::make_error("internal", "socket(): " + errno_text(errno));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
    // bind() creates the file; under this umask it never exists with a wider mode than 0660,
    // not even between bind() and chmod(). umask is per process: this runs at start, before
    // the daemon starts threads that create files.
    mode_t old_umask = ::umask(0117);
    int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    int bind_errno = errno;
    ::umask(old_umask);
    if (rc != 0) {
        ::close(fd);
        return core::make_error("unavailable", "cannot bind control socket " + path_ + ": " +
                                                   errno_text(bind_errno));
    }
    // From here on failures must remove the file we created.
    auto fail_bound = [&](std::string code, std::string message) {
        ::unlink(path_.c_str());
        return core::make_error(std::move(code), std::move(message));
    };
    struct stat st {};
    if (::chmod(path_.c_str(), kSocketMode) != 0 || ::stat(path_.c_str(), &st) != 0) {
        int err = errno;
        ::close(fd);
        return fail_bound("internal", "cannot set mode 0660 on control socket " + path_ + ": " +
                                          errno_text(err));
    }
    socket_dev_ = st.st_dev;
    socket_ino_ = st.st_ino;
    socket_gid_ = st.st_gid;
    socket_group_ = core::group_name(st.st_gid);

    auto pipe = std::make_unique<uv_pipe_t>();
    rc = uv_pipe_init(loop_, pipe.get(), 0);
    if (rc != 0) {
        ::close(fd);
        return fail_bound("internal", std::string("uv_pipe_init: ") + uv_strerror(rc));
    }
    listener_.reset(pipe.release());
    listener_->data = this;
    rc = uv_pipe_open(listener_.get(), fd);
    if (rc != 0) {
        ::close(fd);
        listener_.reset();
        return fail_bound("internal", std::string("uv_pipe_open: ") + uv_strerror(rc));
    }
    rc = uv_listen(as_stream(listener_.get()), kListenBacklog, on_connection);
    if (rc != 0) {
        listener_.reset(); // closes fd
        return fail_bound("unavailable",
                          "cannot listen on control socket " + path_ + ": " + uv_strerror(rc));
    }
    MESHD_LOG(info, "control.listen", "path=%s mode=0660 group=%s", core::log_value(path_).c_str(),
              core::log_value(socket_group_).c_str());
    return {};
}

void ControlServerImpl::on_connection(uv_stream_t* server, int status) noexcept {
    auto* self = static_cast<ControlServerImpl*>(server->data);
    if (status < 0) {
        MESHD_LOG(warn, "control.accept_failed", "error=%s", uv_err_name(status));
        return;
    }
    self->accept_one();
}

void ControlServerImpl::accept_one() {
    auto client = std::make_unique<Client>(this, next_client_id_++);
    Client* raw = client.get();
    int rc = uv_pipe_init(loop_, raw->pipe(), 0);
    if (rc != 0) {
        MESHD_LOG(warn, "control.accept_failed", "error=%s", uv_err_name(rc));
        return; // never initialised: nothing to close
    }
    clients_.emplace(raw, std::move(client));
    rc = uv_accept(as_stream(listener_.get()), as_stream(raw->pipe()));
    if (rc != 0) {
        MESHD_LOG(warn, "control.accept_failed", "error=%s", uv_err_name(rc));
        close_client(raw);
        return;
    }
    raw->check_peer_and_start(::geteuid(), socket_gid_, path_, socket_group_);
}

void ControlServerImpl::stop() {
    while (!clients_.empty())
        close_client(clients_.begin()->first);
    if (!listener_)
        return;
    // Unlink only the file we bound: if it was replaced meanwhile, it is someone else's.
    struct stat st {};
    if (::lstat(path_.c_str(), &st) == 0 && st.st_dev == socket_dev_ && st.st_ino == socket_ino_)
        ::unlink(path_.c_str());
    listener_.reset();
    MESHD_LOG(info, "control.stopped", "path=%s", core::log_value(path_).c_str());
}

} // namespace

core::Result<std::unique_ptr<ControlServer>>
ControlServer::start(uv_loop_t* loop, const std::string& path, Handler handler) {
    auto server = std::make_unique<ControlServerImpl>(loop, path, std::move(handler));
    core::Result<void> listening = server->listen();
    if (!listening)
        return listening.error();
    return std::unique_ptr<ControlServer>(std::move(server));
}

} // namespace meshd::control
