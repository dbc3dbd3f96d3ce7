// tests/unit/control_server_test: ControlServer on a real uv loop and a real socket file,
// driven by a raw AF_UNIX client. The loop and the client share this thread: the client is
// non-blocking and every wait pumps the loop (pump_until).
#include "control/control_server.h"
#include "core/json.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <functional>
#include <grp.h>
#include <gtest/gtest.h>
#include <map>
#include <optional>
#include <poll.h>
#include <stdexcept>
#include <string>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <system_error>
#include <unistd.h>
#include <utility>
#include <vector>

namespace {

using meshd::control::ControlServer;
using meshd::control::Handler;
using meshd::control::Reply;

constexpr size_t kMaxLine = size_t{64} * 1024;

std::string errno_text() {
    return std::error_code(errno, std::generic_category()).message();
}

std::string echo_response(std::string_view request) {
    std::string out = R"({"ok":true,"result":{"echo":)";
    meshd::core::json_append_string(out, request);
    out += "}}";
    return out;
}

struct Pending {
    std::string request;
    Reply reply;
};

class ControlServerTest : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_EQ(uv_loop_init(&loop_), 0);
        char tmpl[] = "/tmp/meshd-control-test-XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr) << errno_text();
        dir_ = tmpl;
        path_ = dir_ + "/control.sock";
    }

    void TearDown() override {
        server_.reset();
        pending_.clear(); // Replies are inert now; dropping them must not touch freed memory
        uv_run(&loop_, UV_RUN_DEFAULT);
        EXPECT_EQ(uv_loop_close(&loop_), 0) << "a uv handle was left open";
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
        EXPECT_FALSE(ec) << ec.message();
    }

    // Runs the loop until `done` holds; fails the test after 5 s.
    bool pump_until(const std::function<bool()>& done) {
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (!done()) {
            if (std::chrono::steady_clock::now() > deadline)
                return false;
            uv_run(&loop_, UV_RUN_NOWAIT);
            ::poll(nullptr, 0, 1);
        }
        return true;
    }

    void start_echo() {
        auto started =
            ControlServer::start(&loop_, path_, [this](std::string_view req, const Reply& r) {
                requests_.emplace_back(req);
                r(echo_response(req));
            });
        ASSERT_TRUE(started.ok()) << started.error().message;
        server_ = std::move(started.value());
    }

    // The handler keeps every request and its Reply for the test to answer later.
    void start_deferred() {
        auto started =
            ControlServer::start(&loop_, path_, [this](std::string_view req, const Reply& r) {
                requests_.emplace_back(req);
                pending_.push_back(Pending{std::string(req), r});
            });
        ASSERT_TRUE(started.ok()) << started.error().message;
        server_ = std::move(started.value());
    }

    int connect_client() {
        int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        EXPECT_GE(fd, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
        EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0)
            << errno_text();
        ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
        return fd;
    }

    bool send_all(int fd, std::string_view data) {
        size_t sent = 0;
        return pump_until([&] {
                   ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
                   if (n > 0)
                       sent += static_cast<size_t>(n);
                   return sent == data.size() || (n < 0 && errno != EAGAIN);
               }) &&
               sent == data.size();
    }

    // One response line (without '\n'), or nullopt on EOF / error / timeout.
    std::optional<std::string> read_line(int fd) {
        std::string& buf = client_input_[fd];
        bool closed = false;
        pump_until([&] {
            if (buf.find('\n') != std::string::npos)
                return true;
            char chunk[4096];
            ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
            if (n > 0)
                buf.append(chunk, static_cast<size_t>(n));
            else if (n == 0 || errno != EAGAIN)
                closed = true;
            return closed || buf.find('\n') != std::string::npos;
        });
        size_t nl = buf.find('\n');
        if (nl == std::string::npos)
            return std::nullopt;
        std::string line = buf.substr(0, nl);
        buf.erase(0, nl + 1);
        return line;
    }

    // True once the server closed the connection (EOF, or ECONNRESET when it left unread
    // bytes behind).
    bool wait_closed(int fd) {
        return pump_until([&] {
            char chunk[4096];
            ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
            return n == 0 || (n < 0 && errno != EAGAIN);
        });
    }

    uv_loop_t loop_{};
    std::string dir_;
    std::string path_;
    std::unique_ptr<ControlServer> server_;
    std::vector<std::string> requests_;
    std::vector<Pending> pending_;
    std::map<int, std::string> client_input_;
};

TEST_F(ControlServerTest, SocketIsCreatedWithMode0660AndUmaskIsRestored) {
    mode_t before = ::umask(022);
    start_echo();
    mode_t after = ::umask(before);
    EXPECT_EQ(after, 022);
    struct stat st {};
    ASSERT_EQ(::stat(path_.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 07777, 0660u);
}

TEST_F(ControlServerTest, PipelinedRequestsAreAnsweredInOrder) {
    start_echo();
    int fd = connect_client();
    ASSERT_TRUE(send_all(fd, "{\"cmd\":\"a\"}\n{\"cmd\":\"b\"}\n"));
    EXPECT_EQ(read_line(fd), echo_response(R"({"cmd":"a"})"));
    EXPECT_EQ(read_line(fd), echo_response(R"({"cmd":"b"})"));
    EXPECT_EQ(requests_.size(), 2u);
    EXPECT_EQ(server_->client_count(), 1u);
    ::close(fd);
    EXPECT_TRUE(pump_until([&] { return server_->client_count() == 0; }));
}

TEST_F(ControlServerTest, NextRequestWaitsForTheDeferredReply) {
    start_deferred();
    int fd = connect_client();
    ASSERT_TRUE(send_all(fd, "first\r\n\nsecond\n"));
    ASSERT_TRUE(pump_until([&] { return requests_.size() == 1; }));
    // Give the server a chance to (wrongly) hand out the second line.
    for (int i = 0; i < 20; ++i)
        uv_run(&loop_, UV_RUN_NOWAIT);
    ASSERT_EQ(requests_.size(), 1u);
    EXPECT_EQ(requests_[0], "first"); // '\r' stripped, empty line skipped

    pending_[0].reply(R"({"ok":true,"result":{"n":1}})");
    pending_[0].reply(R"({"ok":true,"result":{"n":"twice"}})"); // ignored: at most once
    EXPECT_EQ(read_line(fd), R"({"ok":true,"result":{"n":1}})");
    ASSERT_TRUE(pump_until([&] { return requests_.size() == 2; }));
    EXPECT_EQ(requests_[1], "second");
    pending_[1].reply(R"({"ok":true,"result":{"n":2}})");
    EXPECT_EQ(read_line(fd), R"({"ok":true,"result":{"n":2}})");
    ::close(fd);
}

TEST_F(ControlServerTest, ReplyAfterClientClosedIsANoOp) {
    start_deferred();
    int fd = connect_client();
    ASSERT_TRUE(send_all(fd, "{\"cmd\":\"status\"}\n"));
    ASSERT_TRUE(pump_until([&] { return pending_.size() == 1; }));
    ::close(fd);
    ASSERT_TRUE(pump_until([&] { return server_->client_count() == 0; }));
    uv_run(&loop_, UV_RUN_NOWAIT); // let the client's close callback free it
    pending_[0].reply(R"({"ok":true,"result":{}})");
    EXPECT_EQ(server_->client_count(), 0u);
}

TEST_F(ControlServerTest, ReplyAfterStopIsANoOp) {
    start_deferred();
    int fd = connect_client();
    ASSERT_TRUE(send_all(fd, "x\n"));
    ASSERT_TRUE(pump_until([&] { return pending_.size() == 1; }));
    server_->stop();
    server_->stop(); // idempotent
    EXPECT_EQ(server_->client_count(), 0u);
    EXPECT_NE(::access(path_.c_str(), F_OK), 0) << "stop() leaves the socket file";
    server_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);
    pending_[0].reply(R"({"ok":true,"result":{}})");
    EXPECT_TRUE(wait_closed(fd));
    ::close(fd);
}

TEST_F(ControlServerTest, HalfClosedClientGetsItsAnswersThenEof) {
    start_echo();
    int fd = connect_client();
    ASSERT_TRUE(send_all(fd, "one\ntwo")); // the last line has no newline
    ::shutdown(fd, SHUT_WR);
    EXPECT_EQ(read_line(fd), echo_response("one"));
    EXPECT_EQ(read_line(fd), echo_response("two"));
    EXPECT_TRUE(wait_closed(fd));
    ::close(fd);
    EXPECT_TRUE(pump_until([&] { return server_->client_count() == 0; }));
}

TEST_F(ControlServerTest, LineOfExactlyTheCapIsAccepted) {
    start_echo();
    int fd = connect_client();
    std::string line(kMaxLine, 'a');
    ASSERT_TRUE(send_all(fd, line + "\n"));
    EXPECT_EQ(read_line(fd), echo_response(line));
    ::close(fd);
}

TEST_F(ControlServerTest, OversizedLineGetsBadRequestAndClose) {
    start_echo();
    int fd = connect_client();
    ASSERT_TRUE(send_all(fd, "ok\n" + std::string(kMaxLine + 1, 'x') + "\nlater\n"));
    EXPECT_EQ(read_line(fd), echo_response("ok"));
    std::optional<std::string> line = read_line(fd);
    ASSERT_TRUE(line.has_value());
    EXPECT_EQ(*line, R"({"ok":false,"error":{"code":"bad_request","message":"request line )"
                     R"(longer than 65536 bytes; send one JSON request per line"}})");
    EXPECT_TRUE(wait_closed(fd));
    EXPECT_EQ(requests_.size(), 1u); // "later" never reached the handler
    ::close(fd);
    EXPECT_TRUE(pump_until([&] { return server_->client_count() == 0; }));
}

TEST_F(ControlServerTest, OversizedLineWithoutNewlineIsRefusedEarly) {
    start_echo();
    int fd = connect_client();
    ASSERT_TRUE(send_all(fd, std::string(kMaxLine + 10, 'x')));
    std::optional<std::string> line = read_line(fd);
    ASSERT_TRUE(line.has_value());
    EXPECT_NE(line->find(R"("code":"bad_request")"), std::string::npos) << *line;
    EXPECT_TRUE(wait_closed(fd));
    ::close(fd);
}

TEST_F(ControlServerTest, HandlerExceptionBecomesInternalError) {
    auto started = ControlServer::start(
        &loop_, path_, [](std::string_view, const Reply&) { throw std::runtime_error("boom"); });
    ASSERT_TRUE(started.ok());
    server_ = std::move(started.value());
    int fd = connect_client();
    ASSERT_TRUE(send_all(fd, "x\n"));
    EXPECT_EQ(read_line(fd),
              R"({"ok":false,"error":{"code":"internal","message":"internal error: boom"}})");
    ::close(fd);
}

TEST_F(ControlServerTest, StaleSocketFileIsReplaced) {
    // A socket file whose owner is gone: bound, never listened on, closed.
    int stale = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(::bind(stale, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ::close(stale);
    ASSERT_EQ(::access(path_.c_str(), F_OK), 0);

    start_echo();
    int fd = connect_client();
    ASSERT_TRUE(send_all(fd, "hi\n"));
    EXPECT_EQ(read_line(fd), echo_response("hi"));
    ::close(fd);
}

TEST_F(ControlServerTest, LiveSocketIsAnError) {
    start_echo();
    auto second = ControlServer::start(&loop_, path_, [](std::string_view, const Reply&) {});
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.error().message, "another meshd is listening on " + path_ +
                                          ": stop it, or set [control] socket to another path");
    // The first server is untouched.
    int fd = connect_client();
    ASSERT_TRUE(send_all(fd, "still\n"));
    EXPECT_EQ(read_line(fd), echo_response("still"));
    ::close(fd);
}

TEST_F(ControlServerTest, MissingDirectoryIsNamed) {
    std::string dir = dir_ + "/missing";
    auto started =
        ControlServer::start(&loop_, dir + "/control.sock", [](std::string_view, const Reply&) {});
    ASSERT_FALSE(started.ok());
    EXPECT_EQ(started.error().message,
              "directory " + dir + " for the control socket " + dir +
                  "/control.sock does not exist: create it (systemd's RuntimeDirectory=meshd "
                  "does) or set [control] socket");
}

TEST_F(ControlServerTest, RegularFileIsNotReplaced) {
    std::ofstream(path_) << "not a socket\n";
    auto started = ControlServer::start(&loop_, path_, [](std::string_view, const Reply&) {});
    ASSERT_FALSE(started.ok());
    EXPECT_EQ(started.error().message,
              path_ + " exists and is not a socket: remove it or set [control] socket to "
                      "another path");
    EXPECT_EQ(::access(path_.c_str(), F_OK), 0);
}

TEST_F(ControlServerTest, TooLongPathIsRefused) {
    std::string path = dir_ + "/" + std::string(120, 's');
    auto started = ControlServer::start(&loop_, path, [](std::string_view, const Reply&) {});
    ASSERT_FALSE(started.ok());
    EXPECT_NE(started.error().message.find("is too long"), std::string::npos);
}

TEST_F(ControlServerTest, StopClosesClientsAndUnlinks) {
    start_deferred();
    int a = connect_client();
    int b = connect_client();
    ASSERT_TRUE(send_all(a, "pending\n"));
    ASSERT_TRUE(pump_until([&] { return server_->client_count() == 2 && pending_.size() == 1; }));
    server_->stop();
    EXPECT_EQ(server_->client_count(), 0u);
    EXPECT_NE(::access(path_.c_str(), F_OK), 0);
    EXPECT_TRUE(wait_closed(a));
    EXPECT_TRUE(wait_closed(b));
    ::close(a);
    ::close(b);
    // TearDown runs the loop and asserts uv_loop_close() == 0.
}

// Runs `body` in a child that dropped to uid/gid 65534 with `groups` as supplementary
// groups; the child's exit status is body's return value. The parent pumps the loop meanwhile.
class ControlServerPeerTest : public ControlServerTest {
  protected:
    std::string response_as_nobody(const std::vector<gid_t>& groups) {
        int out[2];
        EXPECT_EQ(::pipe(out), 0);
        pid_t pid = ::fork();
        if (pid == 0) {
            ::close(out[0]);
            if (::setgroups(groups.size(), groups.data()) != 0 || ::setgid(65534) != 0 ||
                ::setuid(65534) != 0)
                ::_exit(3);
            int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
            sockaddr_un addr{};
            addr.sun_family = AF_UNIX;
            std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
            if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
                ::_exit(4);
            if (::write(fd, "hello\n", 6) != 6)
                ::_exit(5);
            char buf[1024];
            ssize_t n = 0;
            std::string got;
            while (got.find('\n') == std::string::npos && (n = ::read(fd, buf, sizeof buf)) > 0)
                got.append(buf, static_cast<size_t>(n));
            if (::write(out[1], got.data(), got.size()) < 0)
                ::_exit(6);
            ::_exit(0);
        }
        ::close(out[1]);
        int status = -1;
        EXPECT_TRUE(pump_until([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }));
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
        std::string got;
        char buf[1024];
        ssize_t n = 0;
        while ((n = ::read(out[0], buf, sizeof buf)) > 0)
            got.append(buf, static_cast<size_t>(n));
        ::close(out[0]);
        if (!got.empty() && got.back() == '\n')
            got.pop_back();
        return got;
    }
};

TEST_F(ControlServerPeerTest, OtherUsersAreRefusedGroupMembersAllowed) {
    if (::geteuid() != 0)
        GTEST_SKIP() << "needs root to act as another uid";
    start_echo();
    // Let the kernel pass everyone, so the SO_PEERCRED check is what decides.
    ASSERT_EQ(::chmod(dir_.c_str(), 0711), 0);
    ASSERT_EQ(::chmod(path_.c_str(), 0666), 0);
    struct stat st {};
    ASSERT_EQ(::stat(path_.c_str(), &st), 0);
    ASSERT_NE(st.st_gid, 65534u);

    std::string refused = response_as_nobody({});
    EXPECT_EQ(refused.rfind(R"({"ok":false,"error":{"code":"forbidden","message":"uid 65534 )", 0),
              0u)
        << refused;
    EXPECT_TRUE(requests_.empty());

    // Supplementary membership of the socket's group is enough.
    std::string allowed = response_as_nobody({st.st_gid});
    EXPECT_EQ(allowed, echo_response("hello"));
    EXPECT_TRUE(pump_until([&] { return server_->client_count() == 0; }));
}

} // namespace
