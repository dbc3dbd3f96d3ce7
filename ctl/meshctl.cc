// ctl/meshctl: the admin command line. Owns argument parsing, finding the control socket
// (--socket, else [control] socket of the config file, else the built-in default), one
// request/response exchange over it (JSON lines, see design.md "Control socket protocol"),
// and rendering the result as text for people or as one JSON document for scripts.
//
// Exit status: 0 success, 1 the command failed (daemon error, cannot connect, timeout,
// unreadable config), 2 usage error. Errors are one line on stderr, `meshctl: <message>`;
// with --json the error is also printed on stdout as {"error":{"code":..,"message":..}}.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <grp.h>
#include <optional>
#include <poll.h>
#include <simdjson.h>
#include <sstream>
#include <string>
#include <string_view>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <toml++/toml.h>
#include <unistd.h>
#include <utility>
#include <vector>

#if __has_include("meshd_build.h")
#include "core/json.h"
#include "core/names.h"
#include "meshd_build.h"
#endif
#ifndef MESHD_VERSION
#define MESHD_VERSION "unknown"
#endif
#ifndef MESHD_DEFAULT_CONFIG
#define MESHD_DEFAULT_CONFIG "/etc/meshd/meshd.toml"
#endif

namespace {

constexpr const char* kDefaultSocket = "/run/meshd/control.sock";
constexpr int kTimeoutS = 30;
// A response bigger than this is not one meshd would send.
constexpr size_t kMaxResponse = size_t{64} * 1024 * 1024;

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

constexpr const char* kUsage =
    R"(Usage: meshctl [--socket PATH] [--config FILE] [--json] COMMAND [ARGS]

Administer a running meshd through its control socket.

Commands:
  status                   version, listeners, modules, connections, tasks, store state
  user add NAME [--agent]  add a user (or an agent) and print its token, shown only once
  user list                list users and agents
  user del NAME            delete NAME and close its sessions
  user token NAME          issue a new token for NAME; the old one stops working
  device list NAME         list NAME's devices: cursor, lag, connected or not
  device forget NAME DEVICE
                           close DEVICE of NAME, delete its cursor and free its slot
                           (limits.max_devices); it next starts from the whole log
  key add NAME PUBKEY      register an ed25519 public key (standard base64) for NAME;
                           a principal may have several, one per device
  key list [NAME]          list the registered keys (of NAME) and the sessions using them
  key revoke NAME PUBKEY   remove a key of NAME and close the sessions it opened
  group add GROUP MEMBER...
                           create GROUP ("team" or "#team") or add members to it
  group list               list groups and their members
  group del GROUP          delete GROUP
  group remove GROUP MEMBER...
                           remove members from GROUP; an emptied group stays until del
  sessions                 list connected devices with their lag (head - cursor)
  who [--skill S] [--kind user|agent] [--online]
                           list the directory: kind, online, status, last seen, skills;
                           hidden principals too, marked (hidden)
  hide NAME                leave NAME out of the directory clients see (who); it can still
                           be sent to and watched
  unhide NAME              list NAME in the directory again
  tasks [--state S] [--skill K]
                           list tracked tasks (work sent to skill:K with "task"), newest
                           first: state, skill, sender, agent, age, deadline
  reload                   re-read the config file, apply what can change live
  help                     show this help

Options (before or after the command):
  --socket PATH   control socket to use
  --config FILE   take the socket from [control] socket in FILE
                  (default: $MESHD_CONFIG, else )" MESHD_DEFAULT_CONFIG R"(,
                  else the socket is /run/meshd/control.sock)
  --json          print exactly one JSON document on stdout, errors included
  -h, --help      show this help
  --version       show the version

Exit status: 0 success, 1 the command failed, 2 usage error. See meshctl(8).
)";

// ---- small helpers ----

std::string errno_text(int err) {
    return std::strerror(err); // NOLINT(concurrency-mt-unsafe): strerror_r's GNU/XSI split
}

using meshd::core::json_append_string;

// Text from the daemon printed for people: no control characters reach the terminal.
std::string printable(std::string_view s) {
    std::string out(s);
    for (char& c : out)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
            c = '?';
    return out;
}

// Errors are one line: a multi-line message (config errors) is joined with "; ".
std::string one_line(std::string_view s) {
    std::string out;
    while (!s.empty()) {
        size_t newline = s.find('\n');
        std::string_view part = s.substr(0, newline);
        s = newline == std::string_view::npos ? std::string_view() : s.substr(newline + 1);
        while (!part.empty() && (part.back() == ' ' || part.back() == '\r'))
            part.remove_suffix(1);
        if (part.empty())
            continue;
        if (!out.empty())
            out += "; ";
        out += part;
    }
    for (char& c : out)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
            c = ' ';
    return out;
}

std::string plural(int64_t n, const char* one, const char* many) {
    return std::to_string(n) + " " + (n == 1 ? one : many);
}

std::string format_duration_s(int64_t s) {
    if (s < 0)
        s = 0;
    int64_t d = s / 86400, h = s % 86400 / 3600, m = s % 3600 / 60, sec = s % 60;
    if (d > 0)
        return std::to_string(d) + "d " + std::to_string(h) + "h";
    if (h > 0)
        return std::to_string(h) + "h " + std::to_string(m) + "m";
    if (m > 0)
        return std::to_string(m) + "m " + std::to_string(sec) + "s";
    return std::to_string(sec) + "s";
}

std::string format_bytes(int64_t n) {
    static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
    if (n < 1024)
        return std::to_string(n) + " B";
    double v = static_cast<double>(n);
    size_t unit = 0;
    v /= 1024;
    while (v >= 1024 && unit + 1 < std::size(kUnits)) {
        v /= 1024;
        ++unit;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[unit]);
    return buf;
}

// Milliseconds since the epoch as UTC, "2024-11-22T18:26:40Z".
std::string format_utc(int64_t ms) {
    std::time_t t = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    if (gmtime_r(&t, &tm) == nullptr)
        return "?";
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// Columns padded to their widest cell; `right` marks numeric columns.
std::string render_table(const std::vector<std::string>& header, const std::vector<bool>& right,
                         const std::vector<std::vector<std::string>>& rows) {
    std::vector<size_t> width(header.size());
    for (size_t i = 0; i < header.size(); ++i)
        width[i] = header[i].size();
    for (const auto& row : rows)
        for (size_t i = 0; i < row.size() && i < width.size(); ++i)
            width[i] = std::max(width[i], row[i].size());
    std::string out;
    auto add_row = [&](const std::vector<std::string>& row) {
        std::string line;
        for (size_t i = 0; i < row.size(); ++i) {
            size_t pad = width[i] - row[i].size();
            bool last = i + 1 == row.size();
            if (right[i])
                line.append(pad, ' ');
            line += row[i];
            if (!right[i] && !last)
                line.append(pad, ' ');
            if (!last)
                line += "  ";
        }
        while (!line.empty() && line.back() == ' ')
            line.pop_back();
        out += line;
        out += '\n';
    };
    add_row(header);
    for (const auto& row : rows)
        add_row(row);
    return out;
}

// ---- failures ----

struct Failure {
    std::string code;    // contract code from the daemon, or meshctl's own (see meshctl.8)
    std::string message; // one line after one_line()
    int exit_status = kExitFailed;
    std::string error_json; // the daemon's error object as received, when there was one
};

Failure usage_error(std::string message) {
    return Failure{"usage", std::move(message) + " (see meshctl --help)", kExitUsage, {}};
}

// ---- command line ----

struct Options {
    std::optional<std::string> socket;
    std::optional<std::string> config;
    bool json = false;
    bool agent = false;
    bool online = false;
    std::optional<std::string> skill; // who --skill
    std::optional<std::string> kind;  // who --kind
    std::optional<std::string> state; // tasks --state
    bool help = false;
    bool version = false;
    std::vector<std::string> words;
    std::optional<Failure> error; // first usage error
};

Options parse_args(int argc, char** argv) {
    Options opt;
    auto fail = [&](std::string message) {
        if (!opt.error)
            opt.error = usage_error(std::move(message));
    };
    bool only_words = false;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (only_words || arg.empty() || arg[0] != '-' || arg == "-") {
            opt.words.emplace_back(arg);
            continue;
        }
        if (arg == "--") {
            only_words = true;
            continue;
        }
        // --socket PATH, --socket=PATH, and the same for --config.
        auto take_value = [&](std::string_view name, std::optional<std::string>& into) {
            if (arg == name) {
                if (i + 1 >= argc) {
                    fail(std::string(name) + " needs a value");
                    return true;
                }
                into = argv[++i];
            } else if (arg.size() > name.size() && arg.substr(0, name.size()) == name &&
                       arg[name.size()] == '=') {
                into = std::string(arg.substr(name.size() + 1));
            } else {
                return false;
            }
            if (into->empty())
                fail(std::string(name) + " needs a non-empty value");
            return true;
        };
        if (take_value("--socket", opt.socket) || take_value("--config", opt.config) ||
            take_value("--skill", opt.skill) || take_value("--kind", opt.kind) ||
            take_value("--state", opt.state))
            continue;
        if (arg == "--json")
            opt.json = true;
        else if (arg == "--agent")
            opt.agent = true;
        else if (arg == "--online")
            opt.online = true;
        else if (arg == "-h" || arg == "--help")
            opt.help = true;
        else if (arg == "--version")
            opt.version = true;
        else
            fail("unknown option " + std::string(arg));
    }
    return opt;
}

// What the words ask for: the request to send and how to show its result.
enum class Command {
    status,
    user_add,
    user_list,
    user_del,
    user_token,
    device_list,
    device_forget,
    key_add,
    key_list,
    key_revoke,
    group_add,
    group_list,
    group_del,
    group_remove,
    sessions,
    who,
    tasks,
    hide,
    unhide,
    reload,
    help
};

struct Invocation {
    Command command = Command::help;
    std::string name;                 // NAME for the user and device commands
    std::string device;               // DEVICE for device forget
    std::string pubkey;               // PUBKEY of key add and key revoke
    std::string group;                // GROUP of the group commands, without its '#'
    std::vector<std::string> members; // MEMBER... of group add and group remove
};

// "#team" and "team" name the same group; the daemon checks (and case-folds) the rest.
std::string group_word(const std::string& word) {
    return !word.empty() && word[0] == '#' ? word.substr(1) : word;
}

std::optional<Failure> parse_command(const Options& opt, Invocation& inv) {
    const std::vector<std::string>& w = opt.words;
    auto no_more = [&](size_t used, const char* what) -> std::optional<Failure> {
        if (w.size() > used)
            return usage_error("unexpected argument \"" + printable(w[used]) + "\" after " + what);
        return std::nullopt;
    };
    if (w.empty())
        return usage_error("no command given");
    const std::string& first = w[0];
    if (first == "help") {
        inv.command = Command::help;
        return std::nullopt;
    }
    std::optional<Failure> err;
    if (first == "status") {
        inv.command = Command::status;
        err = no_more(1, "status");
    } else if (first == "sessions") {
        inv.command = Command::sessions;
        err = no_more(1, "sessions");
    } else if (first == "reload") {
        inv.command = Command::reload;
        err = no_more(1, "reload");
    } else if (first == "who") {
        inv.command = Command::who;
        err = no_more(1, "who");
    } else if (first == "tasks") {
        inv.command = Command::tasks;
        err = no_more(1, "tasks");
    } else if (first == "hide" || first == "unhide") {
        inv.command = first == "hide" ? Command::hide : Command::unhide;
        if (w.size() < 2)
            return usage_error(first + " needs a NAME: meshctl " + first + " NAME");
        inv.name = w[1];
        err = no_more(2, (first + " NAME").c_str());
    } else if (first == "user") {
        if (w.size() < 2)
            return usage_error("user needs a subcommand: add, list, del or token");
        const std::string& sub = w[1];
        if (sub == "list") {
            inv.command = Command::user_list;
            err = no_more(2, "user list");
        } else if (sub == "add" || sub == "del" || sub == "token") {
            inv.command = sub == "add"   ? Command::user_add
                          : sub == "del" ? Command::user_del
                                         : Command::user_token;
            if (w.size() < 3)
                return usage_error("user " + sub + " needs a NAME: meshctl user " + sub +
                                   (sub == "add" ? " NAME [--agent]" : " NAME"));
            inv.name = w[2];
            err = no_more(3, ("user " + sub + " NAME").c_str());
        } else {
            return usage_error("unknown subcommand \"user " + printable(sub) +
                               "\"; use user add, user list, user del or user token");
        }
    } else if (first == "device") {
        if (w.size() < 2)
            return usage_error("device needs a subcommand: list or forget");
        const std::string& sub = w[1];
        if (sub == "list") {
            inv.command = Command::device_list;
            if (w.size() < 3)
                return usage_error("device list needs a NAME: meshctl device list NAME");
            inv.name = w[2];
            err = no_more(3, "device list NAME");
        } else if (sub == "forget") {
            inv.command = Command::device_forget;
            if (w.size() < 4)
                return usage_error(std::string("device forget needs ") +
                                   (w.size() < 3 ? "a NAME and a DEVICE" : "a DEVICE") +
                                   ": meshctl device forget NAME DEVICE");
            inv.name = w[2];
            inv.device = w[3];
            err = no_more(4, "device forget NAME DEVICE");
        } else {
            return usage_error("unknown subcommand \"device " + printable(sub) +
                               "\"; use device list or device forget");
        }
    } else if (first == "key") {
        if (w.size() < 2)
            return usage_error("key needs a subcommand: add, list or revoke");
        const std::string& sub = w[1];
        if (sub == "list") {
            inv.command = Command::key_list;
            if (w.size() > 2)
                inv.name = w[2];
            err = no_more(3, "key list NAME");
        } else if (sub == "add" || sub == "revoke") {
            inv.command = sub == "add" ? Command::key_add : Command::key_revoke;
            if (w.size() < 4)
                return usage_error("key " + sub + " needs " +
                                   (w.size() < 3 ? "a NAME and a PUBKEY" : "a PUBKEY") +
                                   ": meshctl key " + sub + " NAME PUBKEY");
            inv.name = w[2];
            inv.pubkey = w[3];
            err = no_more(4, ("key " + sub + " NAME PUBKEY").c_str());
        } else {
            return usage_error("unknown subcommand \"key " + printable(sub) +
                               "\"; use key add, key list or key revoke");
        }
    } else if (first == "group") {
        if (w.size() < 2)
            return usage_error("group needs a subcommand: add, list, del or remove");
        const std::string& sub = w[1];
        if (sub == "list") {
            inv.command = Command::group_list;
            err = no_more(2, "group list");
        } else if (sub == "del") {
            inv.command = Command::group_del;
            if (w.size() < 3)
                return usage_error("group del needs a GROUP: meshctl group del GROUP");
            inv.group = group_word(w[2]);
            err = no_more(3, "group del GROUP");
        } else if (sub == "add" || sub == "remove") {
            inv.command = sub == "add" ? Command::group_add : Command::group_remove;
            if (w.size() < 4)
                return usage_error(
                    "group " + sub + " needs " +
                    (w.size() < 3 ? "a GROUP and at least one MEMBER" : "at least one MEMBER") +
                    ": meshctl group " + sub + " GROUP MEMBER...");
            inv.group = group_word(w[2]);
            inv.members.assign(w.begin() + 3, w.end());
        } else {
            return usage_error("unknown subcommand \"group " + printable(sub) +
                               "\"; use group add, group list, group del or group remove");
        }
    } else {
        return usage_error("unknown command \"" + printable(first) +
                           "\"; commands: status, user add|list|del|token, device list|forget, "
                           "key add|list|revoke, group add|list|del|remove, sessions, who, "
                           "hide, unhide, tasks, reload");
    }
    if (!err && opt.agent && inv.command != Command::user_add)
        err = usage_error("--agent only applies to user add");
    if (!err && opt.skill && inv.command != Command::who && inv.command != Command::tasks)
        err = usage_error("--skill only applies to who and tasks");
    if (!err && (opt.kind || opt.online) && inv.command != Command::who)
        err = usage_error(std::string(opt.kind ? "--kind" : "--online") + " only applies to who");
    if (!err && opt.state && inv.command != Command::tasks)
        err = usage_error("--state only applies to tasks");
    if (!err && opt.kind && *opt.kind != "user" && *opt.kind != "agent")
        err = usage_error("--kind must be user or agent, got \"" + printable(*opt.kind) + "\"");
    return err;
}

std::string build_request(const Invocation& inv, const Options& opt) {
    bool agent = opt.agent;
    std::string req = R"({"cmd":)";
    switch (inv.command) {
    case Command::status:
        json_append_string(req, "status");
        break;
    case Command::user_add:
        json_append_string(req, "user.add");
        break;
    case Command::user_list:
        json_append_string(req, "user.list");
        break;
    case Command::user_del:
        json_append_string(req, "user.del");
        break;
    case Command::user_token:
        json_append_string(req, "user.token");
        break;
    case Command::device_list:
        json_append_string(req, "device.list");
        break;
    case Command::device_forget:
        json_append_string(req, "device.forget");
        break;
    case Command::key_add:
        json_append_string(req, "key.add");
        break;
    case Command::key_list:
        json_append_string(req, "key.list");
        break;
    case Command::key_revoke:
        json_append_string(req, "key.revoke");
        break;
    case Command::group_add:
        json_append_string(req, "group.add");
        break;
    case Command::group_list:
        json_append_string(req, "group.list");
        break;
    case Command::group_del:
        json_append_string(req, "group.del");
        break;
    case Command::group_remove:
        json_append_string(req, "group.remove");
        break;
    case Command::sessions:
        json_append_string(req, "sessions");
        break;
    case Command::reload:
        json_append_string(req, "reload");
        break;
    case Command::who:
        json_append_string(req, "who");
        if (opt.skill) {
            req += R"(,"skill":)";
            json_append_string(req, *opt.skill);
        }
        if (opt.kind) {
            req += R"(,"kind":)";
            json_append_string(req, *opt.kind);
        }
        if (opt.online)
            req += R"(,"online":true)";
        break;
    case Command::tasks:
        json_append_string(req, "tasks");
        if (opt.state) {
            req += R"(,"state":)";
            json_append_string(req, *opt.state);
        }
        if (opt.skill) {
            req += R"(,"skill":)";
            json_append_string(req, *opt.skill);
        }
        break;
    case Command::hide:
        json_append_string(req, "hide");
        break;
    case Command::unhide:
        json_append_string(req, "unhide");
        break;
    case Command::help:
        break;
    }
    if (inv.command == Command::user_add || inv.command == Command::user_del ||
        inv.command == Command::user_token || inv.command == Command::device_list ||
        inv.command == Command::device_forget || inv.command == Command::key_add ||
        inv.command == Command::key_revoke || inv.command == Command::hide ||
        inv.command == Command::unhide || (inv.command == Command::key_list && !inv.name.empty())) {
        req += R"(,"name":)";
        json_append_string(req, inv.name);
    }
    if (inv.command == Command::key_add || inv.command == Command::key_revoke) {
        req += R"(,"pubkey":)";
        json_append_string(req, inv.pubkey);
    }
    if (inv.command == Command::device_forget) {
        req += R"(,"device":)";
        json_append_string(req, inv.device);
    }
    if (inv.command == Command::user_add) {
        req += R"(,"kind":)";
        json_append_string(req, agent ? "agent" : "user");
    }
    if (inv.command == Command::group_add || inv.command == Command::group_del ||
        inv.command == Command::group_remove) {
        req += R"(,"group":)";
        json_append_string(req, inv.group);
    }
    if (inv.command == Command::group_add || inv.command == Command::group_remove) {
        req += R"(,"members":[)";
        for (size_t i = 0; i < inv.members.size(); ++i) {
            if (i > 0)
                req += ',';
            json_append_string(req, inv.members[i]);
        }
        req += ']';
    }
    req += "}\n";
    return req;
}

// ---- finding the socket ----

struct SocketChoice {
    std::string path;
    std::string origin; // where the path came from, for errors: "path from <origin>"; "" for
                        // the built-in default
};

std::optional<std::string> read_file(const std::string& path, int& err) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        err = errno != 0 ? errno : EIO;
        return std::nullopt;
    }
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) {
        err = EIO;
        return std::nullopt;
    }
    return text.str();
}

// Same anchoring as the daemon: relative to the config file's directory, which for a
// relative config path is taken from the current directory.
std::string resolve_against(const std::string& config_path, const std::string& socket) {
    std::filesystem::path p(socket);
    if (p.is_absolute())
        return socket;
    std::error_code ec;
    std::filesystem::path base(config_path);
    if (base.is_relative())
        base = std::filesystem::current_path(ec) / base;
    std::string out = (base.lexically_normal().parent_path() / p).lexically_normal().string();
    while (out.size() > 1 && out.back() == '/')
        out.pop_back();
    return out;
}

// [control] socket from `file`. `required`: a missing or unreadable file is an error (it was
// named on the command line or in $MESHD_CONFIG); otherwise it falls back to the default.
std::optional<Failure> socket_from_config(const std::string& file, const std::string& how,
                                          bool required, SocketChoice& choice) {
    int err = 0;
    std::optional<std::string> text = read_file(file, err);
    if (!text) {
        if (!required) {
            choice = {kDefaultSocket, err == ENOENT ? ""
                                                    : "the default, as " + file +
                                                          " is not readable: " + errno_text(err)};
            return std::nullopt;
        }
        return Failure{"bad_config",
                       "cannot read config " + file + " (" + how + "): " + errno_text(err) +
                           " — name another with --config, or the socket with --socket",
                       kExitFailed,
                       {}};
    }
    try {
        toml::table table = toml::parse(*text, file);
        toml::node_view<toml::node> node = table["control"]["socket"];
        if (!node) {
            choice = {kDefaultSocket, "the default, as " + file + " sets no [control] socket"};
            return std::nullopt;
        }
        const toml::value<std::string>* value = node.as_string();
        if (value == nullptr || value->get().empty()) {
            const toml::source_position pos = node.node()->source().begin;
            return Failure{"bad_config",
                           file + ":" + std::to_string(pos.line) + ":" +
                               std::to_string(pos.column) +
                               ": control.socket must be a non-empty path string — fix it, or "
                               "give the socket with --socket",
                           kExitFailed,
                           {}};
        }
        choice = {resolve_against(file, value->get()), "[control] socket in " + file};
        return std::nullopt;
    } catch (const toml::parse_error& e) {
        const toml::source_position pos = e.source().begin;
        return Failure{"bad_config",
                       file + ":" + std::to_string(pos.line) + ":" + std::to_string(pos.column) +
                           ": " + std::string(e.description()) +
                           " — fix the file, or give the socket with --socket",
                       kExitFailed,
                       {}};
    }
}

std::optional<Failure> choose_socket(const Options& opt, SocketChoice& choice) {
    if (opt.socket) {
        choice = {*opt.socket, "--socket"};
        return std::nullopt;
    }
    if (opt.config)
        return socket_from_config(*opt.config, "--config", true, choice);
    const char* env = std::getenv("MESHD_CONFIG"); // NOLINT(concurrency-mt-unsafe)
    if (env != nullptr && *env != '\0')
        return socket_from_config(env, "$MESHD_CONFIG", true, choice);
    return socket_from_config(MESHD_DEFAULT_CONFIG, "installed config", false, choice);
}

// ---- one exchange over the socket ----

using Clock = std::chrono::steady_clock;

std::string where_hint(const SocketChoice& choice) {
    if (choice.origin == "--socket")
        return "(path from --socket)";
    if (choice.origin.empty())
        return "(use --socket or --config to choose another)";
    return "(path from " + choice.origin + "; use --socket or --config to choose another)";
}

std::optional<Failure> exchange(const SocketChoice& choice, const std::string& request,
                                std::string& response) {
    const std::string& path = choice.path;
    auto unavailable = [](std::string message) {
        return Failure{"unavailable", std::move(message), kExitFailed, {}};
    };
    sockaddr_un addr{};
    if (path.size() >= sizeof addr.sun_path)
        return unavailable("socket path " + path + " is too long for a Unix socket (" +
                           std::to_string(path.size()) + " bytes, at most " +
                           std::to_string(sizeof addr.sun_path - 1) + ") " + where_hint(choice));
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);

    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return unavailable("cannot create a socket: " + errno_text(errno));
    struct FdCloser {
        int fd;
        ~FdCloser() { ::close(fd); }
    } closer{fd};

    // connect() waits when the daemon's backlog is full; bound it like the rest.
    timeval tv{kTimeoutS, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    Clock::time_point deadline = Clock::now() + std::chrono::seconds(kTimeoutS);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        int err = errno;
        std::string what = "cannot connect to " + path + ": " + errno_text(err);
        if (err == EACCES || err == EPERM) {
            struct stat st {};
            std::string group = ::stat(path.c_str(), &st) == 0
                                    ? "group " + meshd::core::group_name(st.st_gid)
                                    : "the socket's group";
            return unavailable(what + " — run meshctl as root or as a member of " + group);
        }
        if (err == EAGAIN || err == EINPROGRESS || err == ETIMEDOUT)
            return unavailable("no answer from meshd on " + path + " within " +
                               std::to_string(kTimeoutS) +
                               " s (connect timed out) — it may be overloaded or hung; check "
                               "its log");
        return unavailable(what + " — is meshd running? " + where_hint(choice));
    }

    // A send error is reported only if no response follows: a refused peer (forbidden) gets
    // its error line and a closed connection, possibly before our request went out.
    std::optional<std::string> send_error;
    size_t sent = 0;
    while (sent < request.size()) {
        ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            send_error = "cannot send the request to meshd on " + path + ": " + errno_text(errno) +
                         " — check the daemon's log";
            break;
        }
        sent += static_cast<size_t>(n);
    }

    response.clear();
    char buf[65536];
    while (response.find('\n') == std::string::npos) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0)
            return unavailable("no response from meshd on " + path + " within " +
                               std::to_string(kTimeoutS) +
                               " s — it may be overloaded or hung; check its log");
        pollfd pfd{fd, POLLIN, 0};
        int rc = ::poll(&pfd, 1, static_cast<int>(left.count()));
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0)
            return unavailable("waiting for meshd on " + path + ": " + errno_text(errno));
        if (rc == 0)
            continue; // the deadline check above reports it
        ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (!response.empty())
                break; // a last line without its newline
            if (send_error)
                return unavailable(*send_error);
            return unavailable("meshd closed the connection on " + path + " without answering" +
                               (n < 0 ? " (" + errno_text(errno) + ")" : std::string()) +
                               " — check the daemon's log");
        }
        response.append(buf, static_cast<size_t>(n));
        if (response.size() > kMaxResponse)
            return Failure{"bad_response",
                           "response from meshd on " + path + " is larger than " +
                               std::to_string(kMaxResponse) + " bytes; giving up",
                           kExitFailed,
                           {}};
    }
    size_t newline = response.find('\n');
    if (newline != std::string::npos)
        response.resize(newline);
    return std::nullopt;
}

// ---- rendering results ----

using simdjson::dom::element;

std::optional<std::string> get_string(element obj, const char* key) {
    std::string_view v;
    if (obj[key].get_string().get(v) != simdjson::SUCCESS)
        return std::nullopt;
    return std::string(v);
}

std::optional<int64_t> get_int(element obj, const char* key) {
    element v;
    if (obj[key].get(v) != simdjson::SUCCESS)
        return std::nullopt;
    int64_t i = 0;
    if (v.get_int64().get(i) == simdjson::SUCCESS)
        return i;
    uint64_t u = 0;
    if (v.get_uint64().get(u) == simdjson::SUCCESS)
        return static_cast<int64_t>(u > INT64_MAX ? INT64_MAX : u);
    double d = 0;
    if (v.get_double().get(d) == simdjson::SUCCESS)
        return static_cast<int64_t>(d);
    return std::nullopt;
}

std::string str_or(element obj, const char* key, const char* fallback = "?") {
    std::optional<std::string> s = get_string(obj, key);
    return s ? printable(*s) : fallback;
}

std::string int_or(element obj, const char* key, const char* fallback = "?") {
    std::optional<int64_t> i = get_int(obj, key);
    return i ? std::to_string(*i) : fallback;
}

std::vector<element> get_array(element obj, const char* key) {
    std::vector<element> out;
    simdjson::dom::array arr;
    if (obj[key].get_array().get(arr) == simdjson::SUCCESS)
        for (element e : arr)
            out.push_back(e);
    return out;
}

std::string join(const std::vector<std::string>& parts, const char* sep) {
    std::string out;
    for (const auto& p : parts) {
        if (!out.empty())
            out += sep;
        out += p;
    }
    return out;
}

std::string render_status(element r) {
    std::string out = "meshd " + str_or(r, "version") + ", pid " + int_or(r, "pid");
    if (std::optional<int64_t> up = get_int(r, "uptime_s"))
        out += ", up " + format_duration_s(*up);
    out += '\n';
    std::vector<std::string> listeners;
    for (element e : get_array(r, "listeners")) {
        std::string_view s;
        if (e.get_string().get(s) == simdjson::SUCCESS)
            listeners.push_back(printable(s));
    }
    std::vector<std::string> modules;
    for (element e : get_array(r, "modules")) {
        std::string m = str_or(e, "name");
        if (std::optional<std::string> v = get_string(e, "version"))
            m += " " + printable(*v);
        modules.push_back(m);
    }
    out += "listening:    " + (listeners.empty() ? "(none)" : join(listeners, ", ")) + '\n';
    // Modules' own HTTP listeners (e.g. metrics), one URL each.
    std::vector<std::string> http;
    for (element e : get_array(r, "http_listeners"))
        http.push_back(str_or(e, "module") + " http://" + str_or(e, "listen") +
                       str_or(e, "path", ""));
    if (!http.empty())
        out += "http:         " + join(http, ", ") + '\n';
    out += "modules:      " + (modules.empty() ? "(none)" : join(modules, ", ")) + '\n';
    out += "connections:  " + int_or(r, "connections") + '\n';
    std::string sessions = int_or(r, "sessions");
    element by_kind;
    if (r["sessions_by_kind"].get(by_kind) == simdjson::SUCCESS)
        sessions +=
            " (" + int_or(by_kind, "user") + " user, " + int_or(by_kind, "agent") + " agent)";
    out += "sessions:     " + sessions + '\n';
    out += "principals:   " + int_or(r, "principals") + '\n';
    element tasks;
    if (r["tasks"].get(tasks) == simdjson::SUCCESS) {
        std::string line = int_or(tasks, "queued") + " queued";
        std::vector<std::string> skills;
        simdjson::dom::object by_skill;
        if (tasks["queued_by_skill"].get(by_skill) == simdjson::SUCCESS)
            for (auto [skill, n] : by_skill) {
                int64_t count = 0;
                if (n.get_int64().get(count) == simdjson::SUCCESS)
                    skills.push_back(printable(skill) + " " + std::to_string(count));
            }
        if (!skills.empty())
            line += " (" + join(skills, ", ") + ")";
        line += ", " + int_or(tasks, "assigned") + " assigned, " + int_or(tasks, "working") +
                " working";
        out += "tasks:        " + line + '\n';
    }
    element store;
    if (r["store"].get(store) == simdjson::SUCCESS) {
        std::string state = str_or(store, "state");
        std::string line = state == "ok" ? "ok" : state == "degraded" ? "DEGRADED" : state;
        line += ", " + str_or(store, "path");
        if (std::optional<int64_t> bytes = get_int(store, "bytes"))
            line += ", " + format_bytes(*bytes);
        std::optional<std::string> message = get_string(store, "message");
        if (message && !message->empty())
            line += " — " + printable(*message);
        out += "store:        " + line + '\n';
    }
    return out;
}

std::string token_note(const std::string& name) {
    return "This token is shown only once: store it now.\nIf it is lost, `meshctl user token " +
           name + "` issues a new one.\n";
}

std::string render_user_add(element r, const Invocation& inv) {
    std::string id = str_or(r, "id", inv.name.c_str());
    std::string out = "added " + str_or(r, "kind", "user") + " " + id + '\n';
    out += "token: " + str_or(r, "token") + '\n';
    out += token_note(id);
    return out;
}

std::string render_user_list(element r) {
    std::vector<std::vector<std::string>> rows;
    for (element u : get_array(r, "users")) {
        std::optional<int64_t> created = get_int(u, "created_ms");
        rows.push_back({str_or(u, "id"), str_or(u, "kind"), created ? format_utc(*created) : "?",
                        int_or(u, "seq"), int_or(u, "sessions")});
    }
    if (rows.empty())
        return "no users yet; add one with: meshctl user add NAME [--agent]\n";
    return render_table({"NAME", "KIND", "CREATED (UTC)", "SEQ", "SESSIONS"},
                        {false, false, false, true, true}, rows);
}

std::string render_user_del(element r, const Invocation& inv) {
    std::string out = "deleted " + str_or(r, "id", inv.name.c_str());
    if (std::optional<int64_t> closed = get_int(r, "closed_sessions"))
        out += "; closed " + plural(*closed, "session", "sessions");
    return out + '\n';
}

std::string render_user_token(element r, const Invocation& inv) {
    std::string id = str_or(r, "id", inv.name.c_str());
    std::string out = "new token for " + id + "; the old token no longer works";
    if (std::optional<int64_t> closed = get_int(r, "closed_sessions"))
        out += " (closed " + plural(*closed, "session", "sessions") + ")";
    out += "\ntoken: " + str_or(r, "token") + '\n';
    out += token_note(id);
    return out;
}

std::string render_sessions(element r) {
    std::vector<std::vector<std::string>> rows;
    int64_t now = now_ms();
    for (element s : get_array(r, "sessions")) {
        std::optional<int64_t> connected = get_int(s, "connected_ms");
        rows.push_back(
            {str_or(s, "id"), str_or(s, "device"), str_or(s, "remote"), str_or(s, "auth"),
             connected ? format_duration_s((now - *connected) / 1000) : "?", int_or(s, "cursor"),
             int_or(s, "sent_seq"), int_or(s, "head"), int_or(s, "lag"), str_or(s, "session")});
    }
    if (rows.empty())
        return "no sessions\n";
    return render_table({"NAME", "DEVICE", "REMOTE", "AUTH", "CONNECTED", "CURSOR", "SENT", "HEAD",
                         "LAG", "SESSION"},
                        {false, false, false, false, true, true, true, true, true, false}, rows);
}

// Devices with a stored cursor or a live connection, as the daemon sorted them.
std::string render_device_list(element r, const Invocation& inv) {
    std::vector<std::vector<std::string>> rows;
    for (element d : get_array(r, "devices")) {
        bool live = false;
        std::string live_text =
            d["live"].get_bool().get(live) == simdjson::SUCCESS ? (live ? "yes" : "no") : "?";
        rows.push_back({str_or(d, "device"), int_or(d, "cursor"), int_or(d, "lag"), live_text});
    }
    if (rows.empty())
        return str_or(r, "id", inv.name.c_str()) + " has no devices\n";
    return render_table({"DEVICE", "CURSOR", "LAG", "LIVE"}, {false, true, true, false}, rows);
}

std::string render_device_forget(element r, const Invocation& inv) {
    std::string out = "forgot device " + str_or(r, "device", inv.device.c_str()) + " of " +
                      str_or(r, "id", inv.name.c_str());
    if (std::optional<int64_t> closed = get_int(r, "closed_sessions"))
        out += "; closed " + plural(*closed, "session", "sessions");
    return out + "\n";
}

std::string render_key_add(element r, const Invocation& inv) {
    return "added key " + str_or(r, "key", inv.pubkey.c_str()) + " for " +
           str_or(r, "id", inv.name.c_str()) + "\n";
}

// One row per key, as the daemon sorted them (by name, then time added).
std::string render_key_list(element r, const Invocation& inv) {
    std::vector<std::vector<std::string>> rows;
    for (element k : get_array(r, "keys")) {
        std::optional<int64_t> added = get_int(k, "added_ms");
        rows.push_back({str_or(k, "id"), str_or(k, "key"), added ? format_utc(*added) : "?",
                        int_or(k, "sessions")});
    }
    if (rows.empty())
        return (inv.name.empty() ? std::string("no keys") : printable(inv.name) + " has no keys") +
               "; add one with: meshctl key add NAME PUBKEY\n";
    return render_table({"NAME", "KEY", "ADDED (UTC)", "SESSIONS"}, {false, false, false, true},
                        rows);
}

std::string render_key_revoke(element r, const Invocation& inv) {
    std::string out = "revoked key " + str_or(r, "key", inv.pubkey.c_str()) + " of " +
                      str_or(r, "id", inv.name.c_str());
    if (std::optional<int64_t> closed = get_int(r, "closed_sessions"))
        out += "; closed " + plural(*closed, "session", "sessions");
    return out + "\n";
}

std::vector<std::string> string_array(element r, const char* key) {
    std::vector<std::string> out;
    for (element e : get_array(r, key)) {
        std::string_view s;
        if (e.get_string().get(s) == simdjson::SUCCESS)
            out.push_back(printable(s));
    }
    return out;
}

// "#team"; the daemon's name, else the one given.
std::string group_label(element r, const Invocation& inv) {
    return "#" + str_or(r, "group", inv.group.c_str());
}

std::string member_list(const std::vector<std::string>& members) {
    return members.empty() ? "no members" : join(members, ", ");
}

// group add and group remove: the members now, then what changed ("added"/"removed").
std::string render_group_change(element r, const Invocation& inv, const char* key) {
    std::vector<std::string> changed = string_array(r, key);
    std::string out =
        "group " + group_label(r, inv) + ": " + member_list(string_array(r, "members")) + " (";
    if (!changed.empty())
        out += std::string(key) + " " + join(changed, ", ");
    else if (inv.command == Command::group_add)
        out += "all were members already";
    else
        out += "none of them were members";
    return out + ")\n";
}

// One line per group, names padded to a column, in the daemon's (name) order.
std::string render_group_list(element r) {
    std::vector<std::pair<std::string, std::string>> lines;
    size_t width = 0;
    for (element g : get_array(r, "groups")) {
        lines.emplace_back("#" + str_or(g, "group"), member_list(string_array(g, "members")));
        width = std::max(width, lines.back().first.size());
    }
    if (lines.empty())
        return "no groups\n";
    std::string out;
    for (const auto& [group, members] : lines)
        out += group + std::string(width - group.size() + 2, ' ') + members + '\n';
    return out;
}

std::string render_group_del(element r, const Invocation& inv) {
    return "deleted group " + group_label(r, inv) + '\n';
}

std::string render_reload(element r) {
    std::vector<std::string> applied = string_array(r, "applied");
    std::vector<std::string> restart = string_array(r, "restart_required");
    if (applied.empty() && restart.empty())
        return "config reloaded: no changes\n";
    std::string out = "config reloaded\n";
    out += "applied:          " + (applied.empty() ? "(none)" : join(applied, ", ")) + '\n';
    if (!restart.empty())
        out += "restart required: " + join(restart, ", ") +
               " (changed in the file; they take effect when meshd restarts)\n";
    return out;
}

// The directory, one row per principal in name order; hidden ones are marked.
std::string render_who(element r) {
    std::vector<std::vector<std::string>> rows;
    for (element p : get_array(r, "principals")) {
        bool online = false, hidden = false;
        std::string online_text =
            p["online"].get_bool().get(online) == simdjson::SUCCESS ? (online ? "yes" : "no") : "?";
        std::string name = str_or(p, "id");
        if (p["hidden"].get_bool().get(hidden) == simdjson::SUCCESS && hidden)
            name += " (hidden)";
        std::string seen = "never";
        if (online)
            seen = "now";
        else if (std::optional<int64_t> ms = get_int(p, "last_seen"))
            seen = format_utc(*ms);
        element profile;
        std::vector<std::string> skills;
        if (p["profile"].get(profile) == simdjson::SUCCESS && profile.is_object())
            skills = string_array(profile, "skills");
        rows.push_back({name, str_or(p, "kind"), online_text, str_or(p, "status"), seen,
                        skills.empty() ? "-" : join(skills, ","), str_or(p, "note", "")});
    }
    if (rows.empty())
        return "no principals match\n";
    return render_table({"NAME", "KIND", "ONLINE", "STATUS", "LAST SEEN (UTC)", "SKILLS", "NOTE"},
                        {false, false, false, false, false, false, false}, rows);
}

// Tracked tasks, newest first, as the daemon listed them.
std::string render_tasks(element r) {
    std::vector<std::vector<std::string>> rows;
    int64_t now = now_ms();
    for (element t : get_array(r, "tasks")) {
        std::optional<int64_t> created = get_int(t, "created_ms");
        std::optional<int64_t> deadline = get_int(t, "deadline_ms");
        rows.push_back({int_or(t, "id"), str_or(t, "state"), str_or(t, "skill"), str_or(t, "from"),
                        str_or(t, "agent", "-"),
                        created ? format_duration_s((now - *created) / 1000) : "?",
                        deadline ? format_utc(*deadline) : "-"});
    }
    if (rows.empty())
        return "no tasks match\n";
    return render_table({"ID", "STATE", "SKILL", "FROM", "AGENT", "AGE", "DEADLINE (UTC)"},
                        {true, false, false, false, false, true, false}, rows);
}

std::string render_hide(element r, const Invocation& inv) {
    std::string id = str_or(r, "id", inv.name.c_str());
    if (inv.command == Command::hide)
        return "hid " + id + " from the directory; it can still be sent to and watched\n";
    return id + " is listed in the directory again\n";
}

// ---- output ----

bool write_stdout(const std::string& text) {
    if (!text.empty() && std::fwrite(text.data(), 1, text.size(), stdout) != text.size())
        return false;
    return std::fflush(stdout) == 0;
}

int report(const Options& opt, const Failure& f) {
    std::string message = one_line(f.message);
    if (opt.json) {
        std::string doc = R"({"error":)";
        if (!f.error_json.empty()) {
            doc += f.error_json;
        } else {
            doc += R"({"code":)";
            json_append_string(doc, f.code);
            doc += R"(,"message":)";
            json_append_string(doc, message);
            doc += '}';
        }
        doc += "}\n";
        write_stdout(doc);
    }
    std::fprintf(stderr, "meshctl: %s\n", message.c_str());
    return f.exit_status;
}

int finish(const std::string& text) {
    if (write_stdout(text))
        return kExitOk;
    std::fprintf(stderr, "meshctl: cannot write the output: %s\n", errno_text(errno).c_str());
    return kExitFailed;
}

// The daemon's answer to our request: the rendered result, or the failure it reports.
int handle_response(const Options& opt, const Invocation& inv, const SocketChoice& choice,
                    const std::string& line) {
    auto bad = [&](const std::string& why) {
        return report(opt, Failure{"bad_response",
                                   "meshd on " + choice.path +
                                       " sent a response meshctl does "
                                       "not understand (" +
                                       why + "); are meshd and meshctl the same version?",
                                   kExitFailed,
                                   {}});
    };
    simdjson::dom::parser parser;
    element doc;
    if (simdjson::error_code e = parser.parse(line).get(doc); e != simdjson::SUCCESS)
        return bad(simdjson::error_message(e));
    bool ok = false;
    if (doc["ok"].get_bool().get(ok) != simdjson::SUCCESS)
        return bad("no boolean \"ok\"");
    if (!ok) {
        element error;
        if (doc["error"].get(error) != simdjson::SUCCESS || !error.is_object())
            return bad("\"ok\":false without an \"error\" object");
        Failure f{get_string(error, "code").value_or("internal"),
                  get_string(error, "message").value_or(""), kExitFailed, simdjson::minify(error)};
        if (f.message.empty())
            f.message = "meshd reported " + f.code;
        if (f.code == "bad_config") {
            f.message = "config not reloaded: " + f.message;
        } else if (f.code == "not_found" && f.message.find("meshctl ") == std::string::npos) {
            // Say which command lists the names; the daemon's message may already do so.
            if (inv.command == Command::device_forget)
                f.message += " (see meshctl device list " + printable(inv.name) + ")";
            else if (inv.command == Command::group_del || inv.command == Command::group_remove)
                f.message += " (see meshctl group list)";
            else if (!inv.name.empty() || inv.command == Command::group_add)
                f.message += " (see meshctl user list)";
        }
        return report(opt, f);
    }
    element result;
    if (doc["result"].get(result) != simdjson::SUCCESS || !result.is_object())
        return bad("\"ok\":true without a \"result\" object");
    // A token is shown once only; a result without it must not look like a success.
    if ((inv.command == Command::user_add || inv.command == Command::user_token) &&
        !get_string(result, "token"))
        return bad("no \"token\" in the result");
    if (opt.json)
        return finish(simdjson::minify(result) + "\n");
    switch (inv.command) {
    case Command::status:
        return finish(render_status(result));
    case Command::user_add:
        return finish(render_user_add(result, inv));
    case Command::user_list:
        return finish(render_user_list(result));
    case Command::user_del:
        return finish(render_user_del(result, inv));
    case Command::user_token:
        return finish(render_user_token(result, inv));
    case Command::device_list:
        return finish(render_device_list(result, inv));
    case Command::device_forget:
        return finish(render_device_forget(result, inv));
    case Command::key_add:
        return finish(render_key_add(result, inv));
    case Command::key_list:
        return finish(render_key_list(result, inv));
    case Command::key_revoke:
        return finish(render_key_revoke(result, inv));
    case Command::group_add:
        return finish(render_group_change(result, inv, "added"));
    case Command::group_list:
        return finish(render_group_list(result));
    case Command::group_del:
        return finish(render_group_del(result, inv));
    case Command::group_remove:
        return finish(render_group_change(result, inv, "removed"));
    case Command::sessions:
        return finish(render_sessions(result));
    case Command::reload:
        return finish(render_reload(result));
    case Command::who:
        return finish(render_who(result));
    case Command::tasks:
        return finish(render_tasks(result));
    case Command::hide:
    case Command::unhide:
        return finish(render_hide(result, inv));
    case Command::help:
        break;
    }
    return kExitOk;
}

int run(int argc, char** argv) {
    Options opt = parse_args(argc, argv);
    if (opt.error)
        return report(opt, *opt.error);
    if (opt.help || (!opt.words.empty() && opt.words[0] == "help"))
        return finish(kUsage);
    if (opt.version) {
        if (opt.json)
            return finish(std::string(R"({"version":)") + "\"" MESHD_VERSION "\"}\n");
        return finish("meshctl " MESHD_VERSION "\n");
    }
    Invocation inv;
    if (std::optional<Failure> err = parse_command(opt, inv))
        return report(opt, *err);

    SocketChoice choice;
    if (std::optional<Failure> err = choose_socket(opt, choice))
        return report(opt, *err);
    std::string response;
    if (std::optional<Failure> err = exchange(choice, build_request(inv, opt), response))
        return report(opt, *err);
    return handle_response(opt, inv, choice, response);
}

} // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "meshctl: internal error: %s\n", e.what());
        return kExitFailed;
    }
}
