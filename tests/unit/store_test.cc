// tests/unit/store_test: the SQLite store (daemon/store/store.cc) on a real database in a
// fresh temp dir per test. Failures are injected from a second, raw sqlite3 connection on the
// same file: one holding BEGIN IMMEDIATE (the store's BEGIN gets SQLITE_BUSY), or a trigger
// that aborts inserts into one principal's log (a statement fails in the middle of a batch).
#include "store/reader.h"
#include "store/store.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <initializer_list>
#include <memory>
#include <sqlite3.h>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <utility>
#include <uv.h>
#include <vector>

namespace meshd::store {
namespace {

constexpr int64_t kNow = 1732300000000;

// ---- helpers ------------------------------------------------------------------------------

class TempDir {
  public:
    TempDir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "store_test.XXXXXX").string();
        if (::mkdtemp(tmpl.data()) != nullptr)
            path_ = tmpl;
    }
    ~TempDir() {
        if (!path_.empty()) {
            std::error_code ec;
            std::filesystem::remove_all(path_, ec);
        }
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const { return path_; }

  private:
    std::string path_;
};

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void write_file(const std::string& path, const std::string& data) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << data;
}

// A raw connection on the store's database file, as another process would have.
class RawDb {
  public:
    explicit RawDb(const std::string& path) {
        if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                            nullptr) != SQLITE_OK)
            error_ = db_ ? sqlite3_errmsg(db_) : "out of memory";
    }
    ~RawDb() { sqlite3_close_v2(db_); }
    RawDb(const RawDb&) = delete;
    RawDb& operator=(const RawDb&) = delete;

    // Runs sql; returns "" on success, else the error message.
    std::string exec(const std::string& sql) {
        if (!error_.empty())
            return error_;
        char* err = nullptr;
        int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
        std::string msg = rc == SQLITE_OK ? "" : (err ? err : sqlite3_errstr(rc));
        sqlite3_free(err);
        return msg;
    }
    // The single integer a query returns, or -1.
    int64_t scalar(const std::string& sql) {
        sqlite3_stmt* s = nullptr;
        int64_t v = -1;
        if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &s, nullptr) == SQLITE_OK &&
            sqlite3_step(s) == SQLITE_ROW)
            v = sqlite3_column_int64(s, 0);
        sqlite3_finalize(s);
        return v;
    }
    // The single text a query returns, or "(none)".
    std::string text(const std::string& sql) {
        sqlite3_stmt* s = nullptr;
        std::string v = "(none)";
        if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &s, nullptr) == SQLITE_OK &&
            sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 0))
            v = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
        sqlite3_finalize(s);
        return v;
    }

  private:
    sqlite3* db_ = nullptr;
    std::string error_;
};

std::string body_n(int n) {
    return "{\"n\":\"" + std::to_string(n + 100).substr(1) + "\"}";
}

std::vector<int64_t> seqs_of(const std::vector<LogEntry>& entries) {
    std::vector<int64_t> out;
    for (const LogEntry& e : entries)
        out.push_back(e.seq);
    return out;
}

std::vector<int64_t> tail_seqs(const Principal& p) {
    std::vector<int64_t> out;
    for (const LogEntry& e : p.tail)
        out.push_back(e.seq);
    return out;
}

std::vector<std::string> names_of(const std::vector<Principal*>& ps) {
    std::vector<std::string> out;
    for (const Principal* p : ps)
        out.push_back(p->name);
    std::sort(out.begin(), out.end());
    return out;
}

// What migrations 4 to 8 (retention's log by message, the directory, read markers and
// settings, tasks, references on the message row) left: dropped to fake an older store.
constexpr const char* kDropNewerSchemas =
    "ALTER TABLE messages DROP COLUMN refs; ALTER TABLE messages DROP COLUMN copies; "
    "DROP TABLE tasks; ALTER TABLE messages DROP COLUMN task; DROP TABLE read_markers; "
    "DROP TABLE principal_settings; DROP TABLE profiles; ";

const std::string kBusyMessage =
    "storage cannot take the write now (begin: database is locked); nothing was stored, "
    "retry later";

class StoreTest : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_FALSE(tmp_.path().empty()) << "mkdtemp failed";
        options_.data_dir = tmp_.path() + "/data";
    }
    void TearDown() override { store_.reset(); }

    std::string data_dir() const { return options_.data_dir; }
    std::string db_file() const { return options_.data_dir + "/meshd.db"; }

    void open() {
        auto r = Store::open(options_);
        ASSERT_TRUE(r.ok()) << r.error().code << ": " << r.error().message;
        store_ = std::move(r.value());
    }
    void reopen() {
        store_.reset();
        open();
    }
    // Opening must fail: returns the error.
    core::Error open_error() {
        auto r = Store::open(options_);
        if (r.ok())
            return core::Error{"", "open succeeded"};
        return r.error();
    }

    Principal* add(const std::string& name, Kind kind = Kind::user) {
        auto r = store_->add_principal(name, kind, kNow);
        EXPECT_TRUE(r.ok()) << name << ": " << r.error().message;
        return r.ok() ? r.value() : nullptr;
    }
    // Adds the names and commits them.
    void add_all(std::initializer_list<const char*> names) {
        for (const char* n : names)
            ASSERT_NE(add(n), nullptr);
        commit_ok();
    }
    Principal* p(const std::string& name) {
        Principal* found = store_->find(name);
        EXPECT_NE(found, nullptr) << name;
        return found;
    }
    std::vector<Principal*> commit_ok() {
        std::vector<Principal*> touched;
        auto r = store_->commit(touched);
        EXPECT_TRUE(r.ok()) << r.error().code << ": " << r.error().message;
        return touched;
    }
    core::Error commit_error() {
        std::vector<Principal*> touched;
        auto r = store_->commit(touched);
        EXPECT_TRUE(touched.empty());
        if (r.ok())
            return core::Error{"", "commit succeeded"};
        return r.error();
    }
    AppendResult send(Principal* from, Principal* to, const std::string& body,
                      const std::string& id = "", int64_t ts = kNow) {
        Principal* rcpt[] = {to};
        auto r = store_->append(from, to->name, rcpt, body, id, ts);
        EXPECT_TRUE(r.ok()) << r.error().code << ": " << r.error().message;
        return r.ok() ? r.value() : AppendResult{-1, false};
    }
    core::Error send_error(Principal* from, Principal* to, const std::string& body,
                           const std::string& id = "", int64_t ts = kNow) {
        Principal* rcpt[] = {to};
        auto r = store_->append(from, to->name, rcpt, body, id, ts);
        if (r.ok())
            return core::Error{"", "append succeeded"};
        return r.error();
    }
    std::vector<LogEntry> page(const Principal& who, int64_t from_seq = 1, size_t max_rows = 1000,
                               size_t max_bytes = 1 << 20) {
        std::vector<LogEntry> out;
        auto r = store_->read_page(who, from_seq, max_rows, max_bytes, out);
        EXPECT_TRUE(r.ok()) << r.error().message;
        return out;
    }
    void expect_heads(const std::string& name, int64_t head, int64_t committed) {
        Principal* x = p(name);
        ASSERT_NE(x, nullptr);
        EXPECT_EQ(x->head, head) << name;
        EXPECT_EQ(x->committed_head, committed) << name;
    }

    TempDir tmp_;
    StoreOptions options_;
    std::unique_ptr<Store> store_;
};

// ---- open ---------------------------------------------------------------------------------

TEST_F(StoreTest, OpenCreatesDatabaseSecretAndEpoch) {
    open();
    EXPECT_EQ(store_->db_path(), db_file());
    EXPECT_TRUE(std::filesystem::is_regular_file(db_file()));

    std::string key_path = data_dir() + "/secret.key";
    struct stat st {};
    ASSERT_EQ(::stat(key_path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    EXPECT_EQ(st.st_size, 32);
    std::string key = read_file(key_path);

    std::string epoch = store_->epoch();
    EXPECT_EQ(epoch.size(), 16u) << epoch;
    EXPECT_EQ(epoch.find_first_not_of("0123456789abcdef"), std::string::npos) << epoch;
    EXPECT_EQ(store_->principal_count(), 0u);
    EXPECT_FALSE(store_->batch_open());
    EXPECT_FALSE(store_->status().degraded);
    EXPECT_EQ(store_->status().message, "");
    EXPECT_GT(store_->status().db_bytes, 0);

    reopen();
    EXPECT_EQ(store_->epoch(), epoch);
    EXPECT_EQ(read_file(key_path), key);
}

// A group message dirties one log page per member: small pages keep the WAL bytes per commit
// down (4 KiB pages wrote 400 KB per commit for a 100-member group). A database made with
// bigger pages keeps them and works as before.
TEST_F(StoreTest, NewDatabasesUseSmallPagesOldOnesKeepTheirs) {
    open();
    add_all({"alice", "bob"});
    send(p("alice"), p("bob"), "\"one\"");
    commit_ok();
    store_.reset();
    {
        RawDb raw(db_file());
        EXPECT_EQ(raw.scalar("PRAGMA page_size"), Store::page_bytes());
        ASSERT_EQ(raw.exec("PRAGMA journal_mode=DELETE; PRAGMA page_size=4096; VACUUM; "
                           "PRAGMA journal_mode=WAL"),
                  "");
        ASSERT_EQ(raw.scalar("PRAGMA page_size"), 4096);
    }
    open();
    send(p("alice"), p("bob"), "\"two\"");
    commit_ok();
    reopen();
    EXPECT_EQ(page(*p("bob")).size(), 2u);
    store_.reset();
    RawDb raw(db_file());
    EXPECT_EQ(raw.scalar("PRAGMA page_size"), 4096);
}

TEST_F(StoreTest, EpochDiffersBetweenStores) {
    open();
    std::string first = store_->epoch();
    store_.reset();
    TempDir other;
    options_.data_dir = other.path() + "/data";
    open();
    EXPECT_NE(store_->epoch(), first);
    store_.reset();
}

TEST_F(StoreTest, SecondOpenOfSameDataDirFails) {
    open();
    core::Error e = open_error();
    EXPECT_EQ(e.code, "internal");
    EXPECT_EQ(e.message, data_dir() + ": another meshd is using this data_dir");
    // The failed attempt does not release the first store's lock.
    e = open_error();
    EXPECT_EQ(e.code, "internal");
    EXPECT_EQ(e.message, data_dir() + ": another meshd is using this data_dir");
    // The first store is unaffected, and the lock goes with it.
    add_all({"alice"});
    store_.reset();
    open();
    EXPECT_NE(store_->find("alice"), nullptr);
}

TEST_F(StoreTest, DataDirThatCannotBeCreated) {
    options_.data_dir = tmp_.path() + "/missing/data";
    core::Error e = open_error();
    EXPECT_EQ(e.code, "internal");
    EXPECT_EQ(e.message, options_.data_dir +
                             ": cannot create data_dir: No such file or directory (create it, "
                             "owned by the meshd user)");
}

TEST_F(StoreTest, SecretKeyOfWrongSize) {
    ASSERT_EQ(::mkdir(data_dir().c_str(), 0750), 0);
    std::string key_path = data_dir() + "/secret.key";
    write_file(key_path, std::string(16, 'k'));
    core::Error e = open_error();
    EXPECT_EQ(e.code, "internal");
    EXPECT_EQ(e.message, key_path + ": must hold 32 bytes; restore it from a backup (tokens are "
                                    "hashed with it)");
}

TEST_F(StoreTest, SchemaNewerThanKnownFails) {
    ASSERT_EQ(::mkdir(data_dir().c_str(), 0750), 0);
    {
        RawDb raw(db_file());
        ASSERT_EQ(raw.exec("PRAGMA user_version=99"), "");
    }
    core::Error e = open_error();
    EXPECT_EQ(e.code, "internal");
    EXPECT_EQ(e.message, db_file() +
                             ": database schema version 99 is newer than this meshd "
                             "knows (" +
                             std::to_string(Store::schema_version()) +
                             "); run the meshd that wrote it, or a newer one");
    EXPECT_NE(e.message.find("newer"), std::string::npos);
}

TEST_F(StoreTest, SchemaNewerThanKnownOnExistingStoreFails) {
    open();
    add_all({"alice"});
    store_.reset();
    {
        RawDb raw(db_file());
        ASSERT_EQ(raw.exec("PRAGMA user_version=" + std::to_string(Store::schema_version() + 1)),
                  "");
    }
    core::Error e = open_error();
    EXPECT_EQ(e.code, "internal");
    int next = Store::schema_version() + 1;
    EXPECT_EQ(e.message, db_file() + ": database schema version " + std::to_string(next) +
                             " is newer than this meshd knows (" + std::to_string(next - 1) +
                             "); run the meshd that wrote it, or a newer one");
}

TEST_F(StoreTest, FileThatIsNotADatabaseFails) {
    struct Row {
        const char* name;
        std::string content;
    };
    const Row rows[] = {
        {"short text", "hello, not a database\n"},
        {"one page of garbage", std::string(4096, 'x')},
        {"sqlite magic missing", std::string(100, '\0') + std::string(8092, 'y')},
    };
    for (const Row& row : rows) {
        SCOPED_TRACE(row.name);
        TempDir dir;
        options_.data_dir = dir.path();
        write_file(db_file(), row.content);
        core::Error e = open_error();
        EXPECT_EQ(e.code, "internal");
        EXPECT_EQ(e.message, db_file() +
                                 ": not a meshd database or corrupt (file is not a database); "
                                 "restore it from a backup or move it away to start empty");
        // The file is left as it was.
        EXPECT_EQ(read_file(db_file()), row.content);
    }
}

// ---- principals and tokens ----------------------------------------------------------------

TEST_F(StoreTest, AddFindAndDuplicatePrincipal) {
    open();
    Principal* alice = add("alice");
    Principal* bot = add("bot", Kind::agent);
    ASSERT_NE(alice, nullptr);
    ASSERT_NE(bot, nullptr);
    EXPECT_TRUE(store_->batch_open());
    EXPECT_EQ(names_of(commit_ok()), std::vector<std::string>{});
    EXPECT_FALSE(store_->batch_open());

    EXPECT_EQ(store_->find("alice"), alice);
    EXPECT_EQ(store_->find("bot"), bot);
    EXPECT_EQ(store_->find("carol"), nullptr);
    EXPECT_EQ(store_->find("Alice"), nullptr);
    EXPECT_EQ(store_->principal_count(), 2u);
    EXPECT_GT(alice->pid, 0);
    EXPECT_NE(alice->pid, bot->pid);
    EXPECT_EQ(alice->name, "alice");
    EXPECT_EQ(alice->kind, Kind::user);
    EXPECT_EQ(bot->kind, Kind::agent);
    EXPECT_EQ(alice->created_ms, kNow);
    EXPECT_EQ(alice->head, 0);
    EXPECT_EQ(alice->committed_head, 0);
    EXPECT_TRUE(alice->tail.empty());
    EXPECT_TRUE(alice->cursors.empty());
    EXPECT_EQ(to_string(Kind::user), "user");
    EXPECT_EQ(to_string(Kind::agent), "agent");

    auto dup = store_->add_principal("alice", Kind::agent, kNow + 1);
    ASSERT_FALSE(dup.ok());
    EXPECT_EQ(dup.error().code, "exists");
    EXPECT_EQ(dup.error().message, "a principal named 'alice' already exists");
    EXPECT_FALSE(store_->batch_open());
    EXPECT_EQ(store_->principal_count(), 2u);
    EXPECT_EQ(store_->find("alice"), alice);

    std::vector<std::string> seen;
    store_->for_each_principal([&](Principal& x) { seen.push_back(x.name); });
    std::sort(seen.begin(), seen.end());
    EXPECT_EQ(seen, (std::vector<std::string>{"alice", "bot"}));

    int64_t alice_pid = alice->pid;
    reopen();
    ASSERT_NE(p("alice"), nullptr);
    ASSERT_NE(p("bot"), nullptr);
    EXPECT_EQ(p("alice")->pid, alice_pid);
    EXPECT_EQ(p("alice")->kind, Kind::user);
    EXPECT_EQ(p("bot")->kind, Kind::agent);
    EXPECT_EQ(p("alice")->created_ms, kNow);
    EXPECT_EQ(store_->principal_count(), 2u);
}

TEST_F(StoreTest, AddedPrincipalIsGoneWithoutCommit) {
    open();
    ASSERT_NE(add("alice"), nullptr);
    reopen(); // the destructor rolls the open batch back
    EXPECT_EQ(store_->find("alice"), nullptr);
    EXPECT_EQ(store_->principal_count(), 0u);
}

TEST_F(StoreTest, TokensVerifyRotateAndSurviveReopen) {
    open();
    add_all({"alice", "bob"});
    ASSERT_TRUE(store_->set_token(p("alice"), "tok-alice-1", kNow).ok());
    ASSERT_TRUE(store_->set_token(p("bob"), "tok-bob-1", kNow).ok());
    commit_ok();

    struct Row {
        const char* token;
        const char* principal; // null: must not verify
    };
    const Row before[] = {
        {"tok-alice-1", "alice"}, {"tok-bob-1", "bob"},      {"tok-alice-2", nullptr},
        {"tok-alice-", nullptr},  {"tok-alice-1 ", nullptr}, {"", nullptr},
        {"TOK-ALICE-1", nullptr},
    };
    for (const Row& row : before) {
        SCOPED_TRACE(row.token);
        Principal* got = store_->verify_token(row.token);
        EXPECT_EQ(got, row.principal ? p(row.principal) : nullptr);
    }

    // Rotation replaces the old token.
    ASSERT_TRUE(store_->set_token(p("alice"), "tok-alice-2", kNow).ok());
    commit_ok();
    const Row after[] = {
        {"tok-alice-1", nullptr},
        {"tok-alice-2", "alice"},
        {"tok-bob-1", "bob"},
    };
    for (const Row& row : after) {
        SCOPED_TRACE(row.token);
        EXPECT_EQ(store_->verify_token(row.token), row.principal ? p(row.principal) : nullptr);
    }

    // The keyed hash uses the persisted secret: the same tokens verify after a reopen.
    reopen();
    for (const Row& row : after) {
        SCOPED_TRACE(std::string("after reopen: ") + row.token);
        EXPECT_EQ(store_->verify_token(row.token), row.principal ? p(row.principal) : nullptr);
    }
}

TEST_F(StoreTest, TokensAreStoredAsKeyedHashes) {
    open();
    add_all({"alice"});
    ASSERT_TRUE(store_->set_token(p("alice"), "tok-secret-value", kNow).ok());
    commit_ok();
    RawDb raw(db_file());
    EXPECT_EQ(raw.scalar("SELECT count(*) FROM tokens"), 1);
    EXPECT_EQ(raw.scalar("SELECT length(hash) FROM tokens"), 32);
    EXPECT_EQ(raw.scalar("SELECT count(*) FROM tokens WHERE hash = 'tok-secret-value' OR "
                         "instr(hash, 'tok-secret') > 0"),
              0);
}

// ---- append, heads, tails -----------------------------------------------------------------

TEST_F(StoreTest, AppendGivesSenderAndRecipientTheNextSeq) {
    open();
    add_all({"alice", "bob", "carol"});
    Principal* alice = p("alice");
    Principal* bob = p("bob");
    Principal* carol = p("carol");

    AppendResult r = send(alice, bob, "{\"a\": 1}", "", kNow + 5);
    EXPECT_EQ(r.sender_seq, 1);
    EXPECT_FALSE(r.dup);
    // Heads move at once; committed heads only on commit.
    expect_heads("alice", 1, 0);
    expect_heads("bob", 1, 0);
    expect_heads("carol", 0, 0);
    EXPECT_TRUE(store_->batch_open());
    ASSERT_EQ(tail_seqs(*alice), std::vector<int64_t>{1});
    ASSERT_EQ(tail_seqs(*bob), std::vector<int64_t>{1});
    EXPECT_EQ(alice->tail[0].msg, bob->tail[0].msg); // stored once, shared
    const MessageData& m = *bob->tail[0].msg;
    EXPECT_EQ(m.from, "alice");
    EXPECT_EQ(m.to, "bob");
    EXPECT_EQ(m.client_id, "");
    EXPECT_EQ(m.ts, kNow + 5);
    EXPECT_EQ(m.body, "{\"a\": 1}");

    EXPECT_EQ(names_of(commit_ok()), (std::vector<std::string>{"alice", "bob"}));
    expect_heads("alice", 1, 1);
    expect_heads("bob", 1, 1);
    expect_heads("carol", 0, 0);
    EXPECT_FALSE(store_->batch_open());

    // Each log counts on its own.
    r = send(bob, alice, "\"re\"");
    EXPECT_EQ(r.sender_seq, 2);
    r = send(carol, alice, "3");
    EXPECT_EQ(r.sender_seq, 1);
    EXPECT_EQ(names_of(commit_ok()), (std::vector<std::string>{"alice", "bob", "carol"}));
    expect_heads("alice", 3, 3);
    expect_heads("bob", 2, 2);
    expect_heads("carol", 1, 1);
    EXPECT_EQ(tail_seqs(*alice), (std::vector<int64_t>{1, 2, 3}));
    EXPECT_EQ(alice->tail[1].msg->from, "bob");
    EXPECT_EQ(alice->tail[1].msg->body, "\"re\"");
    EXPECT_EQ(alice->tail[2].msg->from, "carol");
    EXPECT_EQ(tail_seqs(*bob), (std::vector<int64_t>{1, 2}));
    EXPECT_EQ(tail_seqs(*carol), (std::vector<int64_t>{1}));
}

TEST_F(StoreTest, AppendToSelfAndToGroup) {
    open();
    add_all({"alice", "bob", "carol"});
    Principal* alice = p("alice");
    Principal* bob = p("bob");
    Principal* carol = p("carol");

    // To itself: one entry only.
    Principal* self[] = {alice};
    auto r = store_->append(alice, "alice", self, "\"note\"", "", kNow);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->sender_seq, 1);
    // A group including the sender: one entry in each member's log.
    Principal* group[] = {alice, bob, carol};
    r = store_->append(alice, "#team", group, "\"hi team\"", "", kNow);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->sender_seq, 2);
    commit_ok();
    expect_heads("alice", 2, 2);
    expect_heads("bob", 1, 1);
    expect_heads("carol", 1, 1);

    auto got = page(*carol);
    ASSERT_EQ(seqs_of(got), std::vector<int64_t>{1});
    EXPECT_EQ(got[0].msg->from, "alice");
    EXPECT_EQ(got[0].msg->to, "#team");
    EXPECT_EQ(got[0].msg->body, "\"hi team\"");
    got = page(*alice);
    ASSERT_EQ(seqs_of(got), (std::vector<int64_t>{1, 2}));
    EXPECT_EQ(got[0].msg->to, "alice");
    EXPECT_EQ(got[1].msg->to, "#team");
}

TEST_F(StoreTest, SeveralAppendsInOneBatchCommitTogether) {
    open();
    add_all({"alice", "bob"});
    Principal* alice = p("alice");
    Principal* bob = p("bob");
    for (int i = 1; i <= 3; ++i)
        EXPECT_EQ(send(alice, bob, body_n(i)).sender_seq, i);
    expect_heads("alice", 3, 0);
    expect_heads("bob", 3, 0);
    EXPECT_EQ(tail_seqs(*bob), (std::vector<int64_t>{1, 2, 3}));
    EXPECT_EQ(seqs_of(page(*bob)), std::vector<int64_t>{});
    {
        RawDb raw(db_file());
        EXPECT_EQ(raw.scalar("SELECT count(*) FROM log"), 0); // nothing visible outside yet
    }

    EXPECT_EQ(names_of(commit_ok()), (std::vector<std::string>{"alice", "bob"}));
    expect_heads("alice", 3, 3);
    expect_heads("bob", 3, 3);
    EXPECT_EQ(seqs_of(page(*bob)), (std::vector<int64_t>{1, 2, 3}));
    RawDb raw(db_file());
    EXPECT_EQ(raw.scalar("SELECT count(*) FROM log"), 6);
    EXPECT_EQ(raw.scalar("SELECT count(*) FROM messages"), 3);
}

TEST_F(StoreTest, TailKeepsTheNewestEntries) {
    options_.tail_limit = 3;
    open();
    add_all({"alice", "bob"});
    for (int i = 1; i <= 5; ++i)
        send(p("alice"), p("bob"), body_n(i));
    EXPECT_EQ(tail_seqs(*p("bob")), (std::vector<int64_t>{3, 4, 5}));
    commit_ok();
    EXPECT_EQ(tail_seqs(*p("bob")), (std::vector<int64_t>{3, 4, 5}));
    EXPECT_EQ(p("bob")->tail.back().msg->body, body_n(5));
    EXPECT_EQ(seqs_of(page(*p("bob"))), (std::vector<int64_t>{1, 2, 3, 4, 5}));
}

// The cache of tails has one byte budget over all principals: whoever received least
// recently loses entries first, the accounting returns to zero when everything is gone, and a
// reload to a lower budget evicts at once. What was evicted is still read from the database.
TEST_F(StoreTest, TailCacheStaysWithinItsByteBudget) {
    const std::string big = "\"" + std::string(10000, 'x') + "\"";
    options_.cache_bytes = 50000; // room for about four big entries in all
    open();
    add_all({"alice", "bob", "carol"});
    send(p("alice"), p("carol"), "1");
    commit_ok();
    EXPECT_EQ(tail_seqs(*p("carol")), std::vector<int64_t>{1});
    for (int i = 0; i < 10; ++i)
        send(p("alice"), p("bob"), big);
    commit_ok();
    EXPECT_LE(store_->cache_bytes_used(), 50000u);
    EXPECT_GT(store_->cache_bytes_used(), 20000u);
    // carol received least recently: her entry went first; bob keeps his newest entries,
    // contiguous and ending at the head.
    EXPECT_EQ(tail_seqs(*p("carol")), std::vector<int64_t>{});
    auto bob = tail_seqs(*p("bob"));
    ASSERT_FALSE(bob.empty());
    EXPECT_EQ(bob.back(), 10);
    for (size_t i = 1; i < bob.size(); ++i)
        EXPECT_EQ(bob[i], bob[i - 1] + 1);
    EXPECT_EQ(seqs_of(page(*p("bob"))).size(), 10u);
    EXPECT_EQ(seqs_of(page(*p("carol"))), std::vector<int64_t>{1});

    // A message bigger than the whole budget is not cached at all.
    send(p("carol"), p("bob"), "\"" + std::string(60000, 'y') + "\"");
    commit_ok();
    EXPECT_EQ(store_->cache_bytes_used(), 0u);
    EXPECT_EQ(tail_seqs(*p("bob")), std::vector<int64_t>{});
    auto got = page(*p("bob"));
    ASSERT_EQ(seqs_of(got).size(), 11u);
    EXPECT_EQ(got.back().msg->body.size(), 60002u);

    store_->set_cache_bytes(1 << 20);
    send(p("alice"), p("bob"), "2");
    send(p("alice"), p("carol"), "3");
    commit_ok();
    EXPECT_EQ(tail_seqs(*p("carol")), std::vector<int64_t>{3});
    EXPECT_GT(store_->cache_bytes_used(), 0u);
    store_->set_cache_bytes(0); // reload to nothing
    EXPECT_EQ(store_->cache_bytes_used(), 0u);
    EXPECT_EQ(tail_seqs(*p("alice")), std::vector<int64_t>{});
}

// Deleting a principal releases what its tail was charged.
TEST_F(StoreTest, TailCacheChargeLeavesWithADeletedPrincipal) {
    open();
    add_all({"alice", "bob"});
    send(p("alice"), p("bob"), "\"" + std::string(1000, 'x') + "\"");
    commit_ok();
    size_t both = store_->cache_bytes_used();
    ASSERT_TRUE(store_->delete_principal(p("bob")).ok());
    commit_ok();
    EXPECT_LT(store_->cache_bytes_used(), both);
    EXPECT_GT(store_->cache_bytes_used(), 1000u); // alice's copy
    ASSERT_TRUE(store_->delete_principal(p("alice")).ok());
    commit_ok();
    EXPECT_EQ(store_->cache_bytes_used(), 0u);
}

// The store's connection writes WAL frames through the batching VFS shim (store/wal_vfs): a
// transaction far bigger than one write of the unix VFS (128 KiB) and than the shim's buffer
// (4 MiB) must reach the file whole, be read back by the same connection and by another one,
// and pass SQLite's integrity check. (Writes over 128 KiB in one call came back as "disk
// full" before they were split.)
TEST_F(StoreTest, BigTransactionsGoThroughTheWalShimWhole) {
    open();
    add_all({"alice", "bob"});
    std::vector<std::string> bodies;
    for (char c : {'a', 'b', 'c'})
        bodies.push_back("\"" + std::string(2 << 20, c) + "\"");
    for (const auto& b : bodies)
        send(p("alice"), p("bob"), b);
    commit_ok();
    send(p("alice"), p("bob"), "\"small\"");
    commit_ok();
    auto got = page(*p("bob"), 1, 1000, 64 << 20);
    ASSERT_EQ(seqs_of(got), (std::vector<int64_t>{1, 2, 3, 4}));
    for (size_t i = 0; i < bodies.size(); ++i)
        EXPECT_TRUE(got[i].msg->body == bodies[i]) << "body " << i;
    {
        RawDb raw(db_file()); // another connection, through the default VFS
        EXPECT_EQ(raw.scalar("SELECT count(*) FROM messages WHERE length(body) > 2000000"), 3);
        EXPECT_EQ(raw.exec("PRAGMA integrity_check"), "");
    }
    reopen();
    got = page(*p("bob"), 1, 1000, 64 << 20);
    ASSERT_EQ(seqs_of(got), (std::vector<int64_t>{1, 2, 3, 4}));
    EXPECT_TRUE(got[2].msg->body == bodies[2]);
    EXPECT_EQ(got[3].msg->body, "\"small\"");
}

// ---- retention ------------------------------------------------------------------------

// max_log_entries keeps the newest N entries of each log; the steps respect their budget; a
// message's body goes with its last reference; `oldest` survives a reopen; the cached tail
// never holds a deleted entry.
TEST_F(StoreTest, RetentionByCountInBudgetedSteps) {
    options_.max_log_entries = 3;
    open();
    add_all({"alice", "bob", "carol"});
    for (int i = 1; i <= 10; ++i)
        send(p("alice"), p("bob"), body_n(i));
    send(p("carol"), p("bob"), "\"last\"");
    commit_ok();
    // bob: 11 entries, keeps 9..11; alice: 10, keeps 8..10; carol: 1, keeps it.
    auto step = store_->retention_step(kNow, 4);
    ASSERT_TRUE(step.ok());
    EXPECT_EQ(*step, 4u);
    commit_ok();
    step = store_->retention_step(kNow, 100);
    ASSERT_TRUE(step.ok());
    EXPECT_EQ(*step, 7u + 4u); // the rest of alice (3 more), then bob's 8
    commit_ok();
    EXPECT_EQ(p("alice")->oldest, 8);
    EXPECT_EQ(p("bob")->oldest, 9);
    EXPECT_EQ(p("carol")->oldest, 1);
    EXPECT_EQ(seqs_of(page(*p("bob"))), (std::vector<int64_t>{9, 10, 11}));
    EXPECT_EQ(tail_seqs(*p("bob")), (std::vector<int64_t>{9, 10, 11}));
    EXPECT_EQ(*store_->retention_step(kNow, 100), 0u); // nothing left to do
    {
        // Bodies referenced by no log any more are gone: messages 1..7 were in alice's and
        // bob's logs only; 8 is still in alice's.
        RawDb raw(db_file());
        EXPECT_EQ(raw.scalar("SELECT COUNT(*) FROM messages"), 4);
        EXPECT_EQ(raw.scalar("SELECT COUNT(*) FROM log"), 3 + 3 + 1);
    }
    reopen();
    EXPECT_EQ(p("bob")->oldest, 9);
    EXPECT_EQ(p("bob")->committed_head, 11);
}

// retention_days deletes by the server's receive time, never the newest entry (it carries
// the head: seqs must not be reused after a restart).
TEST_F(StoreTest, RetentionByAgeKeepsTheNewestEntry) {
    options_.retention_days = 2;
    open();
    add_all({"alice", "bob"});
    const int64_t day = 86400 * 1000;
    send(p("alice"), p("bob"), body_n(1), "", kNow - 5 * day);
    send(p("alice"), p("bob"), body_n(2), "", kNow - 3 * day);
    send(p("alice"), p("bob"), body_n(3), "", kNow - 1 * day);
    commit_ok();
    ASSERT_TRUE(store_->retention_step(kNow, 100).ok());
    commit_ok();
    EXPECT_EQ(seqs_of(page(*p("bob"))), (std::vector<int64_t>{3}));
    ASSERT_TRUE(store_->retention_step(kNow + 10 * day, 100).ok()); // all old now
    commit_ok();
    EXPECT_EQ(seqs_of(page(*p("bob"))), (std::vector<int64_t>{3}));
    EXPECT_EQ(p("bob")->oldest, 3);
    reopen();
    EXPECT_EQ(p("bob")->committed_head, 3);
    send(p("alice"), p("bob"), body_n(4));
    commit_ok();
    EXPECT_EQ(seqs_of(page(*p("bob"))), (std::vector<int64_t>{3, 4}));
}

// ---- read_page ----------------------------------------------------------------------------

TEST_F(StoreTest, ReadPage) {
    open();
    add_all({"alice", "bob"});
    for (int i = 1; i <= 5; ++i) // bodies of 10 bytes each
        send(p("alice"), p("bob"), body_n(i), "", kNow + i);
    commit_ok();
    ASSERT_EQ(body_n(1), "{\"n\":\"01\"}");

    // max_bytes: rows are added until their bodies reach max_bytes; the first row always.
    struct Row {
        int64_t from_seq;
        size_t max_rows;
        size_t max_bytes;
        std::vector<int64_t> want;
    };
    const Row rows[] = {
        {1, 100, 1 << 20, {1, 2, 3, 4, 5}},
        {0, 100, 1 << 20, {1, 2, 3, 4, 5}},
        {-7, 100, 1 << 20, {1, 2, 3, 4, 5}},
        {3, 100, 1 << 20, {3, 4, 5}},
        {5, 100, 1 << 20, {5}},
        {6, 100, 1 << 20, {}},
        {1000, 100, 1 << 20, {}},
        {1, 2, 1 << 20, {1, 2}},
        {2, 1, 1 << 20, {2}},
        {4, 5, 1 << 20, {4, 5}},
        {1, 0, 1 << 20, {}},
        {1, 100, 0, {1}},
        {1, 100, 1, {1}},
        {3, 100, 1, {3}},
        {1, 100, 10, {1}},
        {1, 100, 11, {1, 2}},
        {1, 100, 20, {1, 2}},
        {1, 100, 21, {1, 2, 3}},
        {2, 100, 30, {2, 3, 4}},
        {2, 2, 30, {2, 3}},
        {1, 100, 50, {1, 2, 3, 4, 5}},
    };
    for (const Row& row : rows) {
        SCOPED_TRACE("from_seq=" + std::to_string(row.from_seq) + " max_rows=" +
                     std::to_string(row.max_rows) + " max_bytes=" + std::to_string(row.max_bytes));
        std::vector<LogEntry> out{{99, nullptr}}; // cleared by read_page
        auto r = store_->read_page(*p("bob"), row.from_seq, row.max_rows, row.max_bytes, out);
        ASSERT_TRUE(r.ok()) << r.error().message;
        EXPECT_EQ(seqs_of(out), row.want);
        for (const LogEntry& e : out) {
            ASSERT_NE(e.msg, nullptr);
            EXPECT_EQ(e.msg->body, body_n(static_cast<int>(e.seq)));
            EXPECT_EQ(e.msg->ts, kNow + e.seq);
        }
    }

    // Entries carry every field; the sender's log holds its own sends.
    auto got = page(*p("alice"), 2, 1);
    ASSERT_EQ(seqs_of(got), std::vector<int64_t>{2});
    EXPECT_EQ(got[0].msg->from, "alice");
    EXPECT_EQ(got[0].msg->to, "bob");
    EXPECT_EQ(got[0].msg->client_id, "");
    EXPECT_EQ(got[0].msg->ts, kNow + 2);
    EXPECT_EQ(got[0].msg->body, body_n(2));
}

TEST_F(StoreTest, ReadPageNeverReturnsUncommittedRows) {
    open();
    add_all({"alice", "bob"});
    send(p("alice"), p("bob"), body_n(1));
    send(p("alice"), p("bob"), body_n(2));
    commit_ok();
    send(p("alice"), p("bob"), body_n(3));
    expect_heads("bob", 3, 2);
    EXPECT_EQ(seqs_of(page(*p("bob"), 1)), (std::vector<int64_t>{1, 2}));
    EXPECT_EQ(seqs_of(page(*p("bob"), 3)), std::vector<int64_t>{});
    EXPECT_EQ(seqs_of(page(*p("alice"), 1)), (std::vector<int64_t>{1, 2}));
    commit_ok();
    EXPECT_EQ(seqs_of(page(*p("bob"), 1)), (std::vector<int64_t>{1, 2, 3}));
    EXPECT_EQ(seqs_of(page(*p("bob"), 3)), std::vector<int64_t>{3});
}

// ---- dedupe -------------------------------------------------------------------------------

TEST_F(StoreTest, DedupeSameIdSameMessageIsADuplicate) {
    open();
    add_all({"alice", "bob", "carol"});
    Principal* alice = p("alice");
    Principal* bob = p("bob");
    Principal* carol = p("carol");
    send(alice, carol, "\"first\""); // alice's seq 1
    AppendResult first = send(alice, bob, "{\"x\": 1}", "id-1");
    EXPECT_EQ(first.sender_seq, 2);
    EXPECT_FALSE(first.dup);
    commit_ok();

    // A repeat in a later batch.
    AppendResult again = send(alice, bob, "{\"x\": 1}", "id-1", kNow + 1000);
    EXPECT_EQ(again.sender_seq, 2);
    EXPECT_TRUE(again.dup);
    expect_heads("alice", 2, 2);
    expect_heads("bob", 1, 1);
    EXPECT_EQ(names_of(commit_ok()), std::vector<std::string>{});
    expect_heads("alice", 2, 2);
    expect_heads("bob", 1, 1);
    auto got = page(*bob);
    ASSERT_EQ(seqs_of(got), std::vector<int64_t>{1});
    EXPECT_EQ(got[0].msg->client_id, "id-1");
    EXPECT_EQ(got[0].msg->ts, kNow);

    // A repeat within the same batch as the first.
    AppendResult a = send(alice, bob, "[2]", "id-2");
    AppendResult b = send(alice, bob, "[2]", "id-2");
    EXPECT_EQ(a.sender_seq, 3);
    EXPECT_FALSE(a.dup);
    EXPECT_EQ(b.sender_seq, 3);
    EXPECT_TRUE(b.dup);
    commit_ok();
    expect_heads("alice", 3, 3);
    expect_heads("bob", 2, 2);

    // The ids survive a reopen.
    reopen();
    Principal* bob2 = p("bob");
    Principal* target[] = {bob2};
    auto r = store_->append(p("alice"), "bob", target, "{\"x\": 1}", "id-1", kNow + 2000);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->sender_seq, 2);
    EXPECT_TRUE(r->dup);
    commit_ok();
    expect_heads("bob", 2, 2);
    RawDb raw(db_file());
    EXPECT_EQ(raw.scalar("SELECT count(*) FROM messages"), 3);
}

TEST_F(StoreTest, DedupeSameIdDifferentMessageIsAConflict) {
    open();
    add_all({"alice", "bob", "carol"});
    Principal* alice = p("alice");
    Principal* bob = p("bob");
    Principal* carol = p("carol");
    ASSERT_EQ(send(alice, bob, "{\"x\": 1}", "id-1").sender_seq, 1);
    commit_ok();

    const std::string conflict =
        "id 'id-1' was already used for a different message; use a new id for a new message";
    struct Row {
        const char* name;
        Principal* to;
        std::string body;
    };
    const Row rows[] = {
        {"other body", bob, "{\"x\": 2}"},
        {"same body other whitespace", bob, "{\"x\":1}"},
        {"other recipient", carol, "{\"x\": 1}"},
    };
    for (const Row& row : rows) {
        SCOPED_TRACE(row.name);
        core::Error e = send_error(alice, row.to, row.body, "id-1");
        EXPECT_EQ(e.code, "conflict");
        EXPECT_EQ(e.message, conflict);
    }
    // A conflict stores nothing and does not fail the batch.
    expect_heads("alice", 1, 1);
    expect_heads("bob", 1, 1);
    expect_heads("carol", 0, 0);
    EXPECT_EQ(send(alice, carol, "\"ok\"", "id-2").sender_seq, 2);
    commit_ok();
    EXPECT_FALSE(store_->status().degraded);
    expect_heads("alice", 2, 2);
    expect_heads("carol", 1, 1);
}

TEST_F(StoreTest, DedupeIdsArePerSender) {
    open();
    add_all({"alice", "bob"});
    Principal* alice = p("alice");
    Principal* bob = p("bob");
    AppendResult a = send(alice, bob, "\"same\"", "shared-id");
    AppendResult b = send(bob, alice, "\"same\"", "shared-id");
    // bob's log: alice's message is 1, bob's own send is 2.
    EXPECT_EQ(a.sender_seq, 1);
    EXPECT_FALSE(a.dup);
    EXPECT_EQ(b.sender_seq, 2);
    EXPECT_FALSE(b.dup);
    commit_ok();
    expect_heads("alice", 2, 2);
    expect_heads("bob", 2, 2);
    // A different body under bob's id is bob's conflict only.
    EXPECT_EQ(send_error(bob, alice, "\"other\"", "shared-id").code, "conflict");
    AppendResult dup = send(alice, bob, "\"same\"", "shared-id");
    EXPECT_EQ(dup.sender_seq, 1);
    EXPECT_TRUE(dup.dup);
    commit_ok();
}

TEST_F(StoreTest, DedupeWindow) {
    open();
    store_->set_dedupe_window_s(1);
    add_all({"alice", "bob"});
    Principal* alice = p("alice");
    Principal* bob = p("bob");
    const int64_t t0 = kNow;
    ASSERT_EQ(send(alice, bob, "\"m\"", "k", t0).sender_seq, 1);
    commit_ok();

    AppendResult r = send(alice, bob, "\"m\"", "k", t0 + 500);
    EXPECT_EQ(r.sender_seq, 1);
    EXPECT_TRUE(r.dup);
    EXPECT_EQ(send_error(alice, bob, "\"other\"", "k", t0 + 500).code, "conflict");

    // Far enough later, the same id is a new message...
    r = send(alice, bob, "\"m\"", "k", t0 + 2000);
    EXPECT_EQ(r.sender_seq, 2);
    EXPECT_FALSE(r.dup);
    commit_ok();
    expect_heads("bob", 2, 2);
    // ...and the window now runs from the new one.
    r = send(alice, bob, "\"m\"", "k", t0 + 2500);
    EXPECT_EQ(r.sender_seq, 2);
    EXPECT_TRUE(r.dup);
    EXPECT_EQ(send_error(alice, bob, "\"other\"", "k", t0 + 2500).code, "conflict");
    // Outside the window a different body under the old id is fine too.
    r = send(alice, bob, "\"other\"", "k", t0 + 5000);
    EXPECT_EQ(r.sender_seq, 3);
    EXPECT_FALSE(r.dup);
    commit_ok();

    // The older messages keep their data but no longer their id.
    auto got = page(*bob);
    ASSERT_EQ(seqs_of(got), (std::vector<int64_t>{1, 2, 3}));
    EXPECT_EQ(got[0].msg->client_id, "");
    EXPECT_EQ(got[0].msg->body, "\"m\"");
    EXPECT_EQ(got[1].msg->client_id, "");
    EXPECT_EQ(got[1].msg->body, "\"m\"");
    EXPECT_EQ(got[2].msg->client_id, "k");
    EXPECT_EQ(got[2].msg->body, "\"other\"");
}

// ---- cursors ------------------------------------------------------------------------------

TEST_F(StoreTest, CursorsAreMonotonicAndPersisted) {
    open();
    add_all({"alice", "bob"});
    Principal* alice = p("alice");
    EXPECT_EQ(store_->cursor(*alice, "laptop"), 0);

    struct Row {
        const char* device;
        int64_t set;
        int64_t want;
    };
    const Row rows[] = {
        {"laptop", 5, 5}, {"laptop", 3, 5}, {"laptop", 5, 5}, {"laptop", 0, 5},
        {"laptop", 7, 7}, {"phone", 2, 2},  {"phone", 1, 2},
    };
    for (const Row& row : rows) {
        SCOPED_TRACE(std::string(row.device) + " set " + std::to_string(row.set));
        store_->set_cursor(*alice, row.device, row.set);
        EXPECT_EQ(store_->cursor(*alice, row.device), row.want);
    }
    EXPECT_TRUE(store_->batch_open()); // cursors are written with the next batch
    EXPECT_EQ(store_->cursor(*p("bob"), "laptop"), 0);
    EXPECT_EQ(names_of(commit_ok()), std::vector<std::string>{});
    EXPECT_FALSE(store_->batch_open());

    // Not committed: lost on reopen.
    store_->set_cursor(*alice, "laptop", 9);
    EXPECT_EQ(store_->cursor(*alice, "laptop"), 9);
    reopen();
    alice = p("alice");
    EXPECT_EQ(store_->cursor(*alice, "laptop"), 7);
    EXPECT_EQ(store_->cursor(*alice, "phone"), 2);
    EXPECT_EQ(store_->cursor(*alice, "tablet"), 0);
    EXPECT_EQ(store_->cursor(*p("bob"), "laptop"), 0);

    // After a reopen, lower values are still ignored.
    store_->set_cursor(*alice, "laptop", 6);
    EXPECT_EQ(store_->cursor(*alice, "laptop"), 7);
    store_->set_cursor(*alice, "laptop", 11);
    commit_ok();
    reopen();
    EXPECT_EQ(store_->cursor(*p("alice"), "laptop"), 11);
    EXPECT_EQ(store_->cursor(*p("alice"), "phone"), 2);
}

// ---- delete -------------------------------------------------------------------------------

TEST_F(StoreTest, DeletePrincipalFreesTheName) {
    open();
    add_all({"alice", "bob"});
    Principal* alice = p("alice");
    Principal* bob = p("bob");
    ASSERT_TRUE(store_->set_token(bob, "tok-bob", kNow).ok());
    send(alice, bob, "\"one\"");
    send(bob, alice, "\"two\"");
    store_->set_cursor(*bob, "laptop", 2);
    commit_ok();
    const int64_t old_pid = bob->pid;
    ASSERT_EQ(store_->verify_token("tok-bob"), bob);

    ASSERT_TRUE(store_->delete_principal(bob).ok());
    EXPECT_EQ(store_->find("bob"), nullptr); // the name is free at once
    EXPECT_EQ(store_->verify_token("tok-bob"), nullptr);
    commit_ok();
    EXPECT_EQ(store_->find("bob"), nullptr);
    EXPECT_EQ(store_->principal_count(), 1u);
    EXPECT_EQ(store_->verify_token("tok-bob"), nullptr);
    EXPECT_EQ(bob->name, "bob"); // still valid until drop_retired()
    EXPECT_EQ(bob->pid, old_pid);
    store_->drop_retired();
    bob = nullptr;

    // Re-adding the name gives a new principal with an empty log.
    Principal* bob2 = add("bob");
    ASSERT_NE(bob2, nullptr);
    commit_ok();
    EXPECT_NE(bob2->pid, old_pid);
    EXPECT_EQ(store_->find("bob"), bob2);
    EXPECT_EQ(bob2->head, 0);
    EXPECT_EQ(bob2->committed_head, 0);
    EXPECT_TRUE(bob2->tail.empty());
    EXPECT_TRUE(bob2->cursors.empty());
    EXPECT_EQ(store_->cursor(*bob2, "laptop"), 0);
    EXPECT_EQ(seqs_of(page(*bob2)), std::vector<int64_t>{});
    EXPECT_EQ(store_->verify_token("tok-bob"), nullptr);
    EXPECT_EQ(store_->principal_count(), 2u);

    // alice keeps both entries, including the one the deleted bob sent.
    auto got = page(*alice);
    ASSERT_EQ(seqs_of(got), (std::vector<int64_t>{1, 2}));
    EXPECT_EQ(got[1].msg->from, "bob");
    EXPECT_EQ(got[1].msg->body, "\"two\"");

    // The new bob starts at seq 1 and has its own token.
    EXPECT_EQ(send(alice, bob2, "\"three\"").sender_seq, 3);
    ASSERT_TRUE(store_->set_token(bob2, "tok-bob-new", kNow).ok());
    commit_ok();
    expect_heads("bob", 1, 1);
    EXPECT_EQ(store_->verify_token("tok-bob-new"), bob2);

    reopen();
    EXPECT_EQ(store_->principal_count(), 2u);
    ASSERT_NE(p("bob"), nullptr);
    EXPECT_NE(p("bob")->pid, old_pid);
    expect_heads("bob", 1, 1);
    expect_heads("alice", 3, 3);
    EXPECT_EQ(store_->cursor(*p("bob"), "laptop"), 0);
    EXPECT_EQ(store_->verify_token("tok-bob"), nullptr);
    EXPECT_EQ(store_->verify_token("tok-bob-new"), p("bob"));
    EXPECT_EQ(seqs_of(page(*p("bob"))), std::vector<int64_t>{1});
    RawDb raw(db_file());
    EXPECT_EQ(raw.scalar("SELECT count(*) FROM log WHERE pid = " + std::to_string(old_pid)), 0);
    EXPECT_EQ(raw.scalar("SELECT count(*) FROM cursors WHERE pid = " + std::to_string(old_pid)), 0);
    EXPECT_EQ(raw.scalar("SELECT count(*) FROM tokens WHERE pid = " + std::to_string(old_pid)), 0);
}

TEST_F(StoreTest, DeleteAndReAddInOneBatch) {
    open();
    add_all({"alice", "bob"});
    send(p("alice"), p("bob"), "\"one\"");
    commit_ok();
    Principal* old_bob = p("bob");
    const int64_t old_pid = old_bob->pid;
    ASSERT_TRUE(store_->delete_principal(old_bob).ok());
    Principal* bob2 = add("bob");
    ASSERT_NE(bob2, nullptr);
    commit_ok();
    store_->drop_retired();
    EXPECT_EQ(store_->find("bob"), bob2);
    EXPECT_NE(bob2->pid, old_pid);
    expect_heads("bob", 0, 0);
    reopen();
    EXPECT_EQ(store_->principal_count(), 2u);
    expect_heads("bob", 0, 0);
    EXPECT_EQ(seqs_of(page(*p("bob"))), std::vector<int64_t>{});
}

// ---- reopen -------------------------------------------------------------------------------

// A message row counts the log entries that reference it and lists the ones other than the
// sender's (schema 8); a recipient listed twice gets one entry.
TEST_F(StoreTest, MessageRowCountsItsReferencesAndListsItsCopies) {
    open();
    add_all({"alice", "bob", "carol"});
    Principal* alice = p("alice");
    Principal* bob = p("bob");
    Principal* carol = p("carol");
    send(carol, bob, body_n(1)); // seq 1 in both logs
    Principal* team[] = {alice, bob, carol, bob};
    auto r = store_->append(alice, "#team", team, body_n(2), "", kNow);
    ASSERT_TRUE(r.ok()) << r.error().message;
    send(alice, alice, body_n(3)); // to oneself: one entry, no copies
    commit_ok();
    expect_heads("bob", 2, 2);
    RawDb raw(db_file());
    EXPECT_EQ(raw.scalar("SELECT refs FROM messages WHERE mid = 2"), 3);
    EXPECT_EQ(raw.text("SELECT copies FROM messages WHERE mid = 2"),
              std::to_string(bob->pid) + ":2 " + std::to_string(carol->pid) + ":2");
    EXPECT_EQ(raw.scalar("SELECT refs FROM messages WHERE mid = 3"), 1);
    EXPECT_EQ(raw.scalar("SELECT copies IS NULL FROM messages WHERE mid = 3"), 1);
}

TEST(CopiesFormat, PairsUpToTheFirstMalformedOne) {
    auto pairs = [](std::string_view text) {
        std::vector<std::pair<int64_t, int64_t>> out;
        for_each_copy(text, [&](int64_t pid, int64_t seq) { out.emplace_back(pid, seq); });
        return out;
    };
    using Pairs = std::vector<std::pair<int64_t, int64_t>>;
    EXPECT_EQ(pairs(""), Pairs{});
    EXPECT_EQ(pairs("3:17"), (Pairs{{3, 17}}));
    EXPECT_EQ(pairs("3:17 4:1"), (Pairs{{3, 17}, {4, 1}}));
    EXPECT_EQ(pairs("3:17 x 4:1"), (Pairs{{3, 17}}));
    EXPECT_EQ(pairs("3:"), Pairs{});
    EXPECT_EQ(pairs("3"), Pairs{});
    EXPECT_EQ(pairs("3:17,"), (Pairs{{3, 17}}));
    EXPECT_EQ(pairs("99999999999999999999:1"), Pairs{});
}

// Deleting a principal takes its entries' references off the messages; a message no log
// holds any more goes with the last of them.
TEST_F(StoreTest, DeletingPrincipalsDropsTheirReferences) {
    open();
    add_all({"alice", "bob"});
    send(p("alice"), p("bob"), body_n(1));
    commit_ok();
    ASSERT_TRUE(store_->delete_principal(p("alice")).ok());
    commit_ok();
    {
        RawDb raw(db_file());
        EXPECT_EQ(raw.scalar("SELECT refs FROM messages WHERE mid = 1"), 1); // bob's copy
    }
    EXPECT_EQ(seqs_of(page(*p("bob"))), std::vector<int64_t>{1});
    ASSERT_TRUE(store_->delete_principal(p("bob")).ok());
    commit_ok();
    RawDb raw(db_file());
    EXPECT_EQ(raw.scalar("SELECT count(*) FROM messages"), 0);
}

// Migration 8 fills refs and copies from the log and drops log(mid).
TEST_F(StoreTest, SchemaSevenGetsReferencesFromItsLog) {
    open();
    add_all({"alice", "bob", "carol"});
    Principal* team[] = {p("alice"), p("bob"), p("carol")};
    ASSERT_TRUE(store_->append(p("alice"), "#team", team, body_n(1), "", kNow).ok());
    send(p("bob"), p("alice"), body_n(2));
    commit_ok();
    const std::string bob = std::to_string(p("bob")->pid);
    const std::string carol = std::to_string(p("carol")->pid);
    store_.reset();
    {
        RawDb raw(db_file());
        ASSERT_EQ(raw.exec("ALTER TABLE messages DROP COLUMN refs; "
                           "ALTER TABLE messages DROP COLUMN copies; "
                           "CREATE INDEX log_mid ON log(mid); PRAGMA user_version=7"),
                  "");
    }
    open();
    RawDb raw(db_file());
    EXPECT_EQ(raw.scalar("PRAGMA user_version"), Store::schema_version());
    EXPECT_EQ(raw.scalar("SELECT refs FROM messages WHERE mid = 1"), 3);
    std::string copies = raw.text("SELECT copies FROM messages WHERE mid = 1");
    EXPECT_TRUE(copies == bob + ":1 " + carol + ":1" || copies == carol + ":1 " + bob + ":1")
        << copies;
    EXPECT_EQ(raw.scalar("SELECT refs FROM messages WHERE mid = 2"), 2);
    EXPECT_EQ(raw.scalar("SELECT count(*) FROM sqlite_schema WHERE name = 'log_mid'"), 0);
}

TEST_F(StoreTest, ReopenRestoresHeadsAndCursors) {
    open();
    add_all({"alice", "bob", "carol", "dave"});
    for (int i = 0; i < 4; ++i)
        send(p("alice"), p("bob"), body_n(i));
    send(p("bob"), p("carol"), "\"x\"");
    store_->set_cursor(*p("bob"), "laptop", 3);
    store_->set_cursor(*p("carol"), "phone", 1);
    commit_ok();
    send(p("carol"), p("alice"), "\"y\"");
    commit_ok();

    struct Row {
        const char* name;
        int64_t head;
    };
    const Row rows[] = {{"alice", 5}, {"bob", 5}, {"carol", 2}, {"dave", 0}};
    for (const Row& row : rows)
        expect_heads(row.name, row.head, row.head);

    reopen();
    for (const Row& row : rows) {
        SCOPED_TRACE(row.name);
        expect_heads(row.name, row.head, row.head);
        auto got = page(*p(row.name));
        EXPECT_EQ(got.size(), static_cast<size_t>(row.head));
        if (!got.empty()) {
            EXPECT_EQ(got.back().seq, row.head);
        }
    }
    EXPECT_EQ(store_->cursor(*p("bob"), "laptop"), 3);
    EXPECT_EQ(store_->cursor(*p("carol"), "phone"), 1);
    EXPECT_EQ(store_->cursor(*p("alice"), "laptop"), 0);

    // Seqs continue after the reopen; none is reused.
    EXPECT_EQ(send(p("bob"), p("dave"), "\"z\"").sender_seq, 6);
    commit_ok();
    expect_heads("bob", 6, 6);
    expect_heads("dave", 1, 1);
    EXPECT_EQ(seqs_of(page(*p("bob"), 5)), (std::vector<int64_t>{5, 6}));
}

// ---- batch failure ------------------------------------------------------------------------

TEST_F(StoreTest, BusyDatabaseFailsTheBatch) {
    open();
    add_all({"alice", "bob"});
    Principal* alice = p("alice");
    Principal* bob = p("bob");
    send(alice, bob, "\"one\"");
    commit_ok();

    RawDb blocker(db_file());
    ASSERT_EQ(blocker.exec("BEGIN IMMEDIATE"), "");

    core::Error e = send_error(alice, bob, "\"two\"");
    EXPECT_EQ(e.code, "unavailable");
    EXPECT_EQ(e.message, kBusyMessage);
    // Every later write of the failed batch fails the same way.
    e = send_error(alice, bob, "\"three\"");
    EXPECT_EQ(e.code, "unavailable");
    EXPECT_EQ(e.message, kBusyMessage);
    auto added = store_->add_principal("carol", Kind::user, kNow);
    ASSERT_FALSE(added.ok());
    EXPECT_EQ(added.error().code, "unavailable");
    EXPECT_EQ(store_->find("carol"), nullptr);
    auto tok = store_->set_token(alice, "tok", kNow);
    ASSERT_FALSE(tok.ok());
    EXPECT_EQ(tok.error().code, "unavailable");
    EXPECT_TRUE(store_->batch_open());

    e = commit_error();
    EXPECT_EQ(e.code, "unavailable");
    EXPECT_EQ(e.message, kBusyMessage);
    EXPECT_FALSE(store_->batch_open());
    expect_heads("alice", 1, 1);
    expect_heads("bob", 1, 1);
    EXPECT_EQ(tail_seqs(*bob), std::vector<int64_t>{1});
    StoreStatus st = store_->status();
    EXPECT_TRUE(st.degraded);
    EXPECT_EQ(st.message, kBusyMessage);

    // Still blocked: the next batch fails too.
    EXPECT_EQ(send_error(alice, bob, "\"four\"").code, "unavailable");
    EXPECT_EQ(commit_error().code, "unavailable");
    EXPECT_TRUE(store_->status().degraded);

    ASSERT_EQ(blocker.exec("ROLLBACK"), "");
    EXPECT_TRUE(store_->status().degraded); // until a batch commits
    AppendResult r = send(alice, bob, "\"five\"");
    EXPECT_EQ(r.sender_seq, 2);
    EXPECT_FALSE(r.dup);
    EXPECT_EQ(names_of(commit_ok()), (std::vector<std::string>{"alice", "bob"}));
    expect_heads("alice", 2, 2);
    expect_heads("bob", 2, 2);
    st = store_->status();
    EXPECT_FALSE(st.degraded);
    EXPECT_EQ(st.message, "");
    auto got = page(*bob);
    ASSERT_EQ(seqs_of(got), (std::vector<int64_t>{1, 2}));
    EXPECT_EQ(got[1].msg->body, "\"five\"");
    EXPECT_EQ(store_->verify_token("tok"), nullptr);
}

TEST_F(StoreTest, BusyDatabaseKeepsCursorsForTheNextBatch) {
    open();
    add_all({"alice"});
    RawDb blocker(db_file());
    ASSERT_EQ(blocker.exec("BEGIN IMMEDIATE"), "");
    store_->set_cursor(*p("alice"), "laptop", 4);
    core::Error e = commit_error();
    EXPECT_EQ(e.code, "unavailable");
    EXPECT_EQ(e.message,
              "storage cannot take the write now (begin: database is locked); nothing was "
              "stored, retry later");
    EXPECT_TRUE(store_->status().degraded);
    EXPECT_EQ(store_->cursor(*p("alice"), "laptop"), 4);
    EXPECT_TRUE(store_->batch_open());

    ASSERT_EQ(blocker.exec("ROLLBACK"), "");
    commit_ok(); // a cursor-only batch
    EXPECT_FALSE(store_->status().degraded);
    EXPECT_FALSE(store_->batch_open());
    reopen();
    EXPECT_EQ(store_->cursor(*p("alice"), "laptop"), 4);
}

// A trigger added from outside makes inserts into one principal's log fail, so that a batch
// fails after some of its writes succeeded.
class FailingLogTest : public StoreTest {
  protected:
    void arm(const Principal& victim) {
        RawDb raw(db_file());
        ASSERT_EQ(raw.exec("CREATE TRIGGER fail_log BEFORE INSERT ON log WHEN NEW.pid = " +
                           std::to_string(victim.pid) +
                           " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"),
                  "");
    }
    void disarm() {
        RawDb raw(db_file());
        ASSERT_EQ(raw.exec("DROP TRIGGER fail_log"), "");
    }
    const std::string fail_message_ = "storage cannot take the write now (append to log: "
                                      "injected failure); nothing was stored, retry later";
};

TEST_F(FailingLogTest, FailedBatchRestoresHeadsAndTails) {
    open();
    add_all({"alice", "bob", "carol"});
    Principal* alice = p("alice");
    Principal* bob = p("bob");
    Principal* carol = p("carol");
    ASSERT_TRUE(store_->set_token(alice, "tok-old", kNow).ok());
    send(alice, bob, "\"one\"");
    commit_ok();
    arm(*carol);

    // The batch: writes that succeed, then one that fails, then more.
    EXPECT_EQ(send(alice, bob, "\"two\"").sender_seq, 2);
    EXPECT_EQ(send(bob, alice, "\"three\"", "id-3").sender_seq, 3);
    ASSERT_TRUE(store_->set_token(alice, "tok-new", kNow).ok());
    Principal* dave = add("dave");
    ASSERT_NE(dave, nullptr);
    EXPECT_EQ(send(alice, dave, "\"four\"").sender_seq, 4);
    ASSERT_TRUE(store_->delete_principal(bob).ok());
    EXPECT_EQ(store_->find("bob"), nullptr);
    expect_heads("alice", 4, 1);
    EXPECT_EQ(tail_seqs(*alice), (std::vector<int64_t>{1, 2, 3, 4}));

    core::Error e = send_error(alice, carol, "\"five\"");
    EXPECT_EQ(e.code, "unavailable");
    EXPECT_EQ(e.message, fail_message_);
    e = send_error(alice, dave, "\"six\"");
    EXPECT_EQ(e.code, "unavailable");
    EXPECT_EQ(e.message, fail_message_);

    e = commit_error();
    EXPECT_EQ(e.code, "unavailable");
    EXPECT_EQ(e.message, fail_message_);
    EXPECT_FALSE(store_->batch_open());
    // Every head and tail is back where the last commit left it.
    EXPECT_EQ(store_->find("bob"), bob);      // the delete is undone
    EXPECT_EQ(store_->find("dave"), nullptr); // the add is undone
    EXPECT_EQ(store_->principal_count(), 3u);
    expect_heads("alice", 1, 1);
    expect_heads("bob", 1, 1);
    expect_heads("carol", 0, 0);
    EXPECT_EQ(tail_seqs(*alice), std::vector<int64_t>{1});
    EXPECT_EQ(tail_seqs(*bob), std::vector<int64_t>{1});
    EXPECT_EQ(tail_seqs(*carol), std::vector<int64_t>{});
    EXPECT_EQ(store_->verify_token("tok-old"), alice); // the rotation is undone
    EXPECT_EQ(store_->verify_token("tok-new"), nullptr);
    StoreStatus st = store_->status();
    EXPECT_TRUE(st.degraded);
    EXPECT_EQ(st.message, fail_message_);
    EXPECT_EQ(seqs_of(page(*alice)), std::vector<int64_t>{1});
    {
        RawDb raw(db_file());
        EXPECT_EQ(raw.scalar("SELECT count(*) FROM messages"), 1);
        EXPECT_EQ(raw.scalar("SELECT count(*) FROM log"), 2);
        EXPECT_EQ(raw.scalar("SELECT count(*) FROM principals"), 3);
    }

    // The id used in the failed batch was not stored: it is new again.
    disarm();
    AppendResult r = send(bob, alice, "\"three\"", "id-3");
    EXPECT_EQ(r.sender_seq, 2);
    EXPECT_FALSE(r.dup);
    EXPECT_EQ(send(alice, carol, "\"five\"").sender_seq, 3);
    EXPECT_EQ(names_of(commit_ok()), (std::vector<std::string>{"alice", "bob", "carol"}));
    st = store_->status();
    EXPECT_FALSE(st.degraded);
    EXPECT_EQ(st.message, "");
    expect_heads("alice", 3, 3);
    expect_heads("bob", 2, 2);
    expect_heads("carol", 1, 1);
    EXPECT_EQ(tail_seqs(*alice), (std::vector<int64_t>{1, 2, 3}));
    EXPECT_EQ(alice->tail[1].msg->body, "\"three\"");

    reopen();
    expect_heads("alice", 3, 3);
    expect_heads("bob", 2, 2);
    expect_heads("carol", 1, 1);
    EXPECT_EQ(store_->find("dave"), nullptr);
    EXPECT_EQ(store_->verify_token("tok-old"), p("alice"));
    EXPECT_EQ(store_->verify_token("tok-new"), nullptr);
    auto got = page(*p("alice"));
    ASSERT_EQ(seqs_of(got), (std::vector<int64_t>{1, 2, 3}));
    EXPECT_EQ(got[1].msg->from, "bob");
    EXPECT_EQ(got[1].msg->client_id, "id-3");
    EXPECT_EQ(got[2].msg->to, "carol");
}

TEST_F(FailingLogTest, FailedBatchKeepsTailContiguousAtTheLimit) {
    options_.tail_limit = 2;
    open();
    add_all({"alice", "bob", "carol"});
    for (int i = 1; i <= 3; ++i)
        send(p("alice"), p("bob"), body_n(i));
    commit_ok();
    EXPECT_EQ(tail_seqs(*p("bob")), (std::vector<int64_t>{2, 3}));
    arm(*p("carol"));
    send(p("alice"), p("bob"), body_n(4));
    send(p("alice"), p("bob"), body_n(5));
    EXPECT_EQ(tail_seqs(*p("bob")), (std::vector<int64_t>{4, 5}));
    EXPECT_EQ(send_error(p("alice"), p("carol"), "\"x\"").code, "unavailable");
    EXPECT_EQ(commit_error().code, "unavailable");
    expect_heads("bob", 3, 3);
    // The tail may have lost its older entries, but never holds one above the head.
    EXPECT_EQ(tail_seqs(*p("bob")), std::vector<int64_t>{});
    disarm();
    send(p("alice"), p("bob"), body_n(4));
    commit_ok();
    EXPECT_EQ(tail_seqs(*p("bob")), std::vector<int64_t>{4});
    EXPECT_EQ(seqs_of(page(*p("bob"))), (std::vector<int64_t>{1, 2, 3, 4}));
}

// A device's ack (set_cursor) that shares a batch with a delete_principal that fails must be
// retried with the next batch, like every other cursor of a failed batch.
// Fails on store.cc as of this writing: delete_principal() erases p's entries from
// dirty_cursors_ at once, and the undo of the failed batch restores the principal but not
// those entries, so the acked cursor stays in memory and is never written.
TEST_F(FailingLogTest, FailedDeleteKeepsPendingCursor) {
    open();
    add_all({"alice", "bob", "carol"});
    send(p("alice"), p("bob"), "\"one\"");
    commit_ok();
    arm(*p("carol"));
    Principal* bob = p("bob");
    store_->set_cursor(*bob, "laptop", 1);
    ASSERT_TRUE(store_->delete_principal(bob).ok());
    EXPECT_EQ(send_error(p("alice"), p("carol"), "\"x\"").code, "unavailable");
    EXPECT_EQ(commit_error().code, "unavailable");
    EXPECT_EQ(store_->find("bob"), bob);
    EXPECT_EQ(store_->cursor(*bob, "laptop"), 1);
    disarm();
    commit_ok();
    reopen();
    EXPECT_EQ(store_->cursor(*p("bob"), "laptop"), 1);
}

// ---- groups -------------------------------------------------------------------------------

namespace groups {

std::vector<std::string> members_of(const Store& store, const std::string& group) {
    const Group* g = store.find_group(group);
    return g ? names_of(g->members) : std::vector<std::string>{"<no group>"};
}

} // namespace groups

TEST_F(StoreTest, GroupsAddRemoveDeleteAndSurviveReopen) {
    open();
    add_all({"alice", "bob", "carol"});
    Principal* ab[] = {p("alice"), p("bob"), p("alice")};
    auto added = store_->group_add("team", ab, kNow);
    ASSERT_TRUE(added.ok()) << added.error().message;
    EXPECT_EQ(names_of(added.value()), (std::vector<std::string>{"alice", "bob"}));
    commit_ok();
    Principal* bc[] = {p("bob"), p("carol")};
    added = store_->group_add("team", bc, kNow);
    ASSERT_TRUE(added.ok());
    EXPECT_EQ(names_of(added.value()), (std::vector<std::string>{"carol"}));
    commit_ok();
    reopen();
    EXPECT_EQ(groups::members_of(*store_, "team"),
              (std::vector<std::string>{"alice", "bob", "carol"}));
    Principal* b[] = {p("bob")};
    auto removed = store_->group_remove("team", b);
    ASSERT_TRUE(removed.ok());
    EXPECT_EQ(names_of(removed.value()), (std::vector<std::string>{"bob"}));
    removed = store_->group_remove("team", b); // not a member any more
    ASSERT_TRUE(removed.ok());
    EXPECT_TRUE(removed.value().empty());
    commit_ok();
    reopen();
    EXPECT_EQ(groups::members_of(*store_, "team"), (std::vector<std::string>{"alice", "carol"}));
    ASSERT_TRUE(store_->group_delete("team").ok());
    commit_ok();
    reopen();
    EXPECT_EQ(store_->find_group("team"), nullptr);
    auto missing = store_->group_delete("team");
    ASSERT_FALSE(missing.ok());
    EXPECT_EQ(missing.error().code, "not_found");
    EXPECT_EQ(store_->group_remove("team", b).error().code, "not_found");
}

TEST_F(StoreTest, DeletedPrincipalLeavesEveryGroup) {
    open();
    add_all({"alice", "bob"});
    Principal* ab[] = {p("alice"), p("bob")};
    ASSERT_TRUE(store_->group_add("one", ab, kNow).ok());
    ASSERT_TRUE(store_->group_add("two", ab, kNow).ok());
    commit_ok();
    ASSERT_TRUE(store_->delete_principal(p("bob")).ok());
    commit_ok();
    EXPECT_EQ(groups::members_of(*store_, "one"), (std::vector<std::string>{"alice"}));
    reopen();
    EXPECT_EQ(groups::members_of(*store_, "two"), (std::vector<std::string>{"alice"}));
    add_all({"bob"}); // the name again: a new principal, in no group
    EXPECT_EQ(groups::members_of(*store_, "one"), (std::vector<std::string>{"alice"}));
}

TEST_F(StoreTest, GroupMessageIsOneEntryPerMemberInOneBatch) {
    open();
    add_all({"alice", "bob", "carol"});
    Principal* all[] = {p("alice"), p("bob"), p("carol")};
    ASSERT_TRUE(store_->group_add("team", all, kNow).ok());
    commit_ok();
    uint64_t batches = store_->last_batch();
    auto r = store_->append(p("alice"), "#team", all, "\"hi\"", "", kNow);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.value().sender_seq, 1);
    commit_ok();
    EXPECT_EQ(store_->last_batch(), batches + 1);
    for (const char* name : {"alice", "bob", "carol"}) {
        auto entries = page(*p(name));
        ASSERT_EQ(entries.size(), 1u) << name;
        EXPECT_EQ(entries[0].msg->to, "#team");
        EXPECT_EQ(entries[0].msg->from, "alice");
    }
}

TEST_F(FailingLogTest, FailedBatchRestoresGroups) {
    open();
    add_all({"alice", "bob", "carol"});
    Principal* ab[] = {p("alice"), p("bob")};
    ASSERT_TRUE(store_->group_add("team", ab, kNow).ok());
    commit_ok();
    arm(*p("carol"));
    Principal* c[] = {p("carol")};
    Principal* a[] = {p("alice")};
    ASSERT_TRUE(store_->group_add("team", c, kNow).ok());
    ASSERT_TRUE(store_->group_add("other", a, kNow).ok());
    ASSERT_TRUE(store_->group_remove("team", a).ok());
    (void)send_error(p("alice"), p("carol"), "\"x\""); // fails the batch
    EXPECT_EQ(commit_error().code, "unavailable");
    EXPECT_EQ(groups::members_of(*store_, "team"), (std::vector<std::string>{"alice", "bob"}));
    EXPECT_EQ(store_->find_group("other"), nullptr);
    disarm();
    reopen();
    EXPECT_EQ(groups::members_of(*store_, "team"), (std::vector<std::string>{"alice", "bob"}));
    EXPECT_EQ(store_->find_group("other"), nullptr);
}

} // namespace
} // namespace meshd::store

namespace meshd::store {
namespace {

TEST_F(StoreTest, SchemaOneIsMigratedKeepingItsData) {
    open();
    add_all({"alice", "bob"});
    send(p("alice"), p("bob"), "\"before\"");
    commit_ok();
    store_.reset();
    {
        // What a store written by schema 1 (meshd before groups) looks like.
        RawDb raw(db_file());
        ASSERT_EQ(raw.exec(std::string(kDropNewerSchemas) +
                           "DROP TABLE keys; DROP TABLE group_members; DROP TABLE groups; "
                           "PRAGMA user_version=1"),
                  "");
    }
    open();
    EXPECT_EQ(p("bob")->committed_head, 1);
    EXPECT_EQ(page(*p("bob")).size(), 1u);
    Principal* ab[] = {p("alice"), p("bob")};
    ASSERT_TRUE(store_->group_add("team", ab, kNow).ok());
    commit_ok();
    RawDb raw(db_file());
    EXPECT_EQ(raw.scalar("PRAGMA user_version"), Store::schema_version());
    EXPECT_EQ(raw.scalar("SELECT COUNT(*) FROM group_members"), 2);
}

} // namespace
} // namespace meshd::store

// ---- ed25519 keys -------------------------------------------------------------------------

namespace meshd::store {
namespace {

// A distinct 32-byte "public key" (the store does not check it is a curve point).
std::string key_n(int n) {
    return std::string(ed25519_key_bytes - 1, 'k') + static_cast<char>('A' + n);
}

// "alice:<last byte>" per key, in the order keys() gives them.
std::vector<std::string> key_rows(const std::vector<StoredKey>& keys) {
    std::vector<std::string> out;
    for (const StoredKey& k : keys)
        out.push_back(k.principal->name + ":" + k.pubkey.substr(ed25519_key_bytes - 1));
    return out;
}

TEST_F(StoreTest, KeysAddListRevokeAndSurviveReopen) {
    open();
    add_all({"alice", "bob"});
    EXPECT_TRUE(store_->keys().empty());
    // Two devices of alice, one of bob; listed by name, then by time added.
    ASSERT_TRUE(store_->add_key(p("alice"), key_n(1), kNow + 2).ok());
    ASSERT_TRUE(store_->add_key(p("bob"), key_n(0), kNow).ok());
    ASSERT_TRUE(store_->add_key(p("alice"), key_n(2), kNow + 1).ok());
    commit_ok();
    EXPECT_EQ(key_rows(store_->keys()), (std::vector<std::string>{"alice:C", "alice:B", "bob:A"}));
    EXPECT_EQ(key_rows(store_->keys(p("bob"))), (std::vector<std::string>{"bob:A"}));
    EXPECT_EQ(store_->keys(p("alice"))[0].added_ms, kNow + 1);

    struct Row {
        const char* who;
        int key;
        bool registered;
    };
    const Row rows[] = {{"alice", 1, true}, {"alice", 2, true}, {"alice", 0, false},
                        {"bob", 0, true},   {"bob", 1, false},  {"alice", 3, false}};
    auto check = [&](const char* when, std::initializer_list<Row> table) {
        for (const Row& r : table) {
            SCOPED_TRACE(std::string(when) + " " + r.who + " key " + std::to_string(r.key));
            EXPECT_EQ(store_->key_registered(*p(r.who), key_n(r.key)), r.registered);
        }
    };
    for (const Row& r : rows)
        check("before reopen", {r});
    EXPECT_FALSE(store_->key_registered(*p("alice"), key_n(1).substr(1)));
    EXPECT_FALSE(store_->key_registered(*p("alice"), ""));

    reopen();
    for (const Row& r : rows)
        check("after reopen", {r});
    EXPECT_EQ(store_->keys(p("alice"))[0].added_ms, kNow + 1);

    ASSERT_TRUE(store_->revoke_key(p("alice"), key_n(1)).ok());
    check("revoked, not committed", {{"alice", 1, false}, {"alice", 2, true}});
    commit_ok();
    reopen();
    check("revoked, reopened", {{"alice", 1, false}, {"alice", 2, true}, {"bob", 0, true}});
    EXPECT_EQ(key_rows(store_->keys()), (std::vector<std::string>{"alice:C", "bob:A"}));
}

TEST_F(StoreTest, KeyErrors) {
    open();
    add_all({"alice", "bob"});
    ASSERT_TRUE(store_->add_key(p("alice"), key_n(1), kNow).ok());
    commit_ok();
    struct Row {
        const char* who;
        std::string key;
        const char* code;
        std::string message;
    };
    const Row rows[] = {
        {"alice", key_n(1), "exists", "this key is already registered for alice"},
        {"bob", key_n(1), "conflict",
         "this key is already registered for alice; a key belongs to one principal: revoke it "
         "there first (meshctl key revoke alice PUBKEY)"},
        {"alice", key_n(2).substr(1), "bad_key", "an ed25519 public key is 32 bytes, got 31"},
        {"alice", key_n(2) + "x", "bad_key", "an ed25519 public key is 32 bytes, got 33"},
    };
    for (const Row& r : rows) {
        SCOPED_TRACE(r.who + std::string(" ") + r.code);
        auto res = store_->add_key(p(r.who), r.key, kNow);
        ASSERT_FALSE(res.ok());
        EXPECT_EQ(res.error().code, r.code);
        EXPECT_EQ(res.error().message, r.message);
    }
    EXPECT_FALSE(store_->batch_open()) << "a refused key must not open a batch";
    auto missing = store_->revoke_key(p("bob"), key_n(1));
    ASSERT_FALSE(missing.ok());
    EXPECT_EQ(missing.error().code, "not_found");
    EXPECT_EQ(missing.error().message, "bob has no such key (meshctl key list bob shows them)");
    EXPECT_TRUE(store_->key_registered(*p("alice"), key_n(1)));
}

TEST_F(StoreTest, DeletedPrincipalLosesItsKeys) {
    open();
    add_all({"alice", "bob"});
    ASSERT_TRUE(store_->add_key(p("alice"), key_n(1), kNow).ok());
    ASSERT_TRUE(store_->add_key(p("alice"), key_n(2), kNow).ok());
    ASSERT_TRUE(store_->add_key(p("bob"), key_n(3), kNow).ok());
    commit_ok();
    Principal* old_alice = p("alice");
    ASSERT_TRUE(store_->delete_principal(old_alice).ok());
    // At once, before the commit: a deleted principal's key opens nothing.
    EXPECT_FALSE(store_->key_registered(*old_alice, key_n(1)));
    EXPECT_EQ(key_rows(store_->keys()), (std::vector<std::string>{"bob:D"}));
    commit_ok();
    add_all({"alice"}); // the name again: a new principal, with no keys
    EXPECT_TRUE(store_->keys(p("alice")).empty());
    EXPECT_FALSE(store_->key_registered(*p("alice"), key_n(1)));
    reopen();
    EXPECT_FALSE(store_->key_registered(*p("alice"), key_n(1)));
    EXPECT_EQ(key_rows(store_->keys()), (std::vector<std::string>{"bob:D"}));
    // The freed key may be registered again, to anyone.
    ASSERT_TRUE(store_->add_key(p("bob"), key_n(1), kNow).ok());
    commit_ok();
    RawDb raw(db_file());
    EXPECT_EQ(raw.scalar("SELECT COUNT(*) FROM keys"), 2);
}

TEST_F(FailingLogTest, FailedBatchRestoresKeys) {
    open();
    add_all({"alice", "bob", "carol"});
    ASSERT_TRUE(store_->add_key(p("alice"), key_n(1), kNow).ok());
    ASSERT_TRUE(store_->add_key(p("bob"), key_n(2), kNow).ok());
    commit_ok();
    arm(*p("carol"));
    ASSERT_TRUE(store_->add_key(p("alice"), key_n(3), kNow).ok());
    ASSERT_TRUE(store_->revoke_key(p("alice"), key_n(1)).ok());
    ASSERT_TRUE(store_->delete_principal(p("bob")).ok());
    (void)send_error(p("alice"), p("carol"), "\"x\""); // fails the batch
    EXPECT_EQ(commit_error().code, "unavailable");
    EXPECT_EQ(key_rows(store_->keys()), (std::vector<std::string>{"alice:B", "bob:C"}));
    EXPECT_TRUE(store_->key_registered(*p("bob"), key_n(2)));
    disarm();
    reopen();
    EXPECT_EQ(key_rows(store_->keys()), (std::vector<std::string>{"alice:B", "bob:C"}));
}

TEST_F(StoreTest, SchemaTwoIsMigratedKeepingItsData) {
    open();
    add_all({"alice", "bob"});
    Principal* ab[] = {p("alice"), p("bob")};
    ASSERT_TRUE(store_->group_add("team", ab, kNow).ok());
    ASSERT_TRUE(store_->set_token(p("alice"), "tok-alice", kNow).ok());
    send(p("alice"), p("bob"), "\"before\"");
    commit_ok();
    store_.reset();
    {
        // What a store written by schema 2 (meshd before ed25519 keys) looks like.
        RawDb raw(db_file());
        ASSERT_EQ(raw.exec(std::string(kDropNewerSchemas) + "DROP TABLE keys; PRAGMA user_version=2"),
                  "");
    }
    open();
    EXPECT_EQ(p("bob")->committed_head, 1);
    EXPECT_EQ(store_->verify_token("tok-alice"), p("alice"));
    EXPECT_EQ(store_->find_group("team")->members.size(), 2u);
    EXPECT_TRUE(store_->keys().empty());
    ASSERT_TRUE(store_->add_key(p("alice"), key_n(1), kNow).ok());
    commit_ok();
    reopen();
    EXPECT_TRUE(store_->key_registered(*p("alice"), key_n(1)));
    RawDb raw(db_file());
    EXPECT_EQ(raw.scalar("PRAGMA user_version"), Store::schema_version());
}

} // namespace
} // namespace meshd::store

// ---- directory: status, profiles, hidden, last seen (schema 5) -----------------------------

namespace meshd::store {
namespace {

ProfileRef profile_of(std::string json, std::vector<std::string> skills) {
    auto p = std::make_shared<Profile>();
    p->json = std::move(json);
    p->skills = std::move(skills);
    return p;
}

std::vector<std::string> names_of(const Store::ByName* m) {
    std::vector<std::string> out;
    if (m)
        for (const auto& [name, p] : *m)
            out.emplace_back(name);
    return out;
}

TEST(StoreStatus, NamesRoundTrip) {
    for (Status s : {Status::available, Status::busy, Status::away, Status::dnd})
        EXPECT_EQ(parse_status(to_string(s)), s);
    EXPECT_EQ(to_string(Status::dnd), "dnd");
    EXPECT_EQ(parse_status("Busy"), std::nullopt);
    EXPECT_EQ(parse_status(""), std::nullopt);
}

TEST_F(StoreTest, DirectorySurvivesReopen) {
    open();
    add_all({"carol", "alice", "bob"});
    ASSERT_TRUE(store_->set_status(*p("alice"), Status::dnd, "focus").ok());
    ASSERT_TRUE(store_
                    ->set_profile(*p("bob"), profile_of(R"({"skills":["translate","ocr"]})",
                                                        {"translate", "ocr"}))
                    .ok());
    ASSERT_TRUE(store_->set_hidden(*p("carol"), true).ok());
    store_->set_last_seen(*p("carol"), kNow + 5);
    commit_ok();
    reopen();
    EXPECT_EQ(p("alice")->status, Status::dnd);
    EXPECT_EQ(p("alice")->note, "focus");
    EXPECT_EQ(p("alice")->profile, nullptr);
    EXPECT_EQ(p("alice")->last_seen_ms, 0);
    ASSERT_NE(p("bob")->profile, nullptr);
    EXPECT_EQ(p("bob")->profile->json, R"({"skills":["translate","ocr"]})");
    EXPECT_EQ(p("bob")->profile->skills, (std::vector<std::string>{"translate", "ocr"}));
    EXPECT_EQ(p("bob")->status, Status::available);
    EXPECT_TRUE(p("carol")->hidden);
    EXPECT_FALSE(p("bob")->hidden);
    EXPECT_EQ(p("carol")->last_seen_ms, kNow + 5);
    EXPECT_EQ(names_of(&store_->principals_by_name()),
              (std::vector<std::string>{"alice", "bob", "carol"}));
    EXPECT_EQ(names_of(store_->principals_with_skill("ocr")), std::vector<std::string>{"bob"});
    EXPECT_EQ(store_->principals_with_skill("cook"), nullptr);
}

TEST_F(StoreTest, SkillIndexFollowsProfilesAndPrincipals) {
    open();
    add_all({"a", "b"});
    ASSERT_TRUE(store_->set_profile(*p("a"), profile_of("{}", {"x", "y"})).ok());
    ASSERT_TRUE(store_->set_profile(*p("b"), profile_of("{}", {"x"})).ok());
    commit_ok();
    EXPECT_EQ(names_of(store_->principals_with_skill("x")), (std::vector<std::string>{"a", "b"}));
    // A new profile replaces the old skills.
    ASSERT_TRUE(store_->set_profile(*p("a"), profile_of("{}", {"z"})).ok());
    commit_ok();
    EXPECT_EQ(names_of(store_->principals_with_skill("x")), std::vector<std::string>{"b"});
    EXPECT_EQ(store_->principals_with_skill("y"), nullptr);
    EXPECT_EQ(names_of(store_->principals_with_skill("z")), std::vector<std::string>{"a"});
    // A deleted principal leaves the directory, its row goes, and a new one of the same name
    // starts with nothing.
    ASSERT_TRUE(store_->set_status(*p("b"), Status::busy, "x").ok());
    ASSERT_TRUE(store_->delete_principal(p("b")).ok());
    EXPECT_EQ(store_->principals_with_skill("x"), nullptr);
    EXPECT_EQ(names_of(&store_->principals_by_name()), std::vector<std::string>{"a"});
    commit_ok();
    store_->drop_retired();
    {
        RawDb raw(db_file());
        EXPECT_EQ(raw.scalar("SELECT COUNT(*) FROM profiles"), 1);
    }
    Principal* again = add("b");
    commit_ok();
    ASSERT_NE(again, nullptr);
    EXPECT_EQ(again->status, Status::available);
    EXPECT_EQ(again->profile, nullptr);
    reopen();
    EXPECT_EQ(p("b")->status, Status::available);
    EXPECT_EQ(store_->principals_with_skill("x"), nullptr);
    EXPECT_EQ(names_of(store_->principals_with_skill("z")), std::vector<std::string>{"a"});
}

TEST_F(StoreTest, LastSeenOfADeletedPrincipalIsNotWritten) {
    open();
    add_all({"a"});
    Principal* a = p("a");
    ASSERT_TRUE(store_->delete_principal(a).ok());
    store_->set_last_seen(*a, kNow); // its sessions close after the delete
    commit_ok();
    store_->drop_retired();
    RawDb raw(db_file());
    EXPECT_EQ(raw.scalar("SELECT COUNT(*) FROM profiles"), 0);
}

TEST_F(FailingLogTest, FailedBatchRestoresTheDirectory) {
    open();
    add_all({"alice", "bob", "carol"});
    ASSERT_TRUE(store_->set_status(*p("alice"), Status::busy, "old").ok());
    ASSERT_TRUE(store_->set_profile(*p("alice"), profile_of("{}", {"old"})).ok());
    commit_ok();
    arm(*p("bob"));
    ASSERT_TRUE(store_->set_status(*p("alice"), Status::dnd, "new").ok());
    ASSERT_TRUE(store_->set_profile(*p("alice"), profile_of("{}", {"new"})).ok());
    ASSERT_TRUE(store_->set_hidden(*p("alice"), true).ok());
    ASSERT_TRUE(store_->set_profile(*p("carol"), profile_of("{}", {"old"})).ok());
    ASSERT_TRUE(store_->delete_principal(p("carol")).ok());
    EXPECT_EQ(send_error(p("alice"), p("bob"), "\"x\"").message, fail_message_);
    EXPECT_EQ(commit_error().message, fail_message_);
    Principal* alice = p("alice");
    EXPECT_EQ(alice->status, Status::busy);
    EXPECT_EQ(alice->note, "old");
    EXPECT_FALSE(alice->hidden);
    ASSERT_NE(alice->profile, nullptr);
    EXPECT_EQ(alice->profile->skills, std::vector<std::string>{"old"});
    EXPECT_EQ(names_of(store_->principals_with_skill("old")), std::vector<std::string>{"alice"});
    EXPECT_EQ(store_->principals_with_skill("new"), nullptr);
    EXPECT_EQ(names_of(&store_->principals_by_name()),
              (std::vector<std::string>{"alice", "bob", "carol"}));
    disarm();
    reopen();
    EXPECT_EQ(p("alice")->status, Status::busy);
    EXPECT_EQ(p("carol")->profile, nullptr);
}

} // namespace
} // namespace meshd::store

// ---- read markers, settings, delivered, the reader ----------------------------------------

namespace meshd::store {
namespace {

TEST_F(StoreTest, ReadMarkerIsMonotonicStoredAndDeletedWithThePrincipal) {
    open();
    add_all({"alice", "bob"});
    for (int i = 0; i < 3; ++i)
        send(p("alice"), p("bob"), body_n(i));
    commit_ok();
    ASSERT_TRUE(store_->set_read_marker(*p("bob"), 2, kNow).ok());
    ASSERT_TRUE(store_->set_read_marker(*p("bob"), 1, kNow).ok()); // lower: ignored
    EXPECT_EQ(p("bob")->read_upto, 2);
    commit_ok();
    reopen();
    EXPECT_EQ(p("bob")->read_upto, 2);
    EXPECT_EQ(p("alice")->read_upto, 0);
    ASSERT_TRUE(store_->delete_principal(p("bob")).ok());
    commit_ok();
    RawDb raw(db_file());
    EXPECT_EQ(raw.scalar("SELECT COUNT(*) FROM read_markers"), 0);
}

TEST_F(StoreTest, ReadMarkerAndSettingAreRestoredWhenTheBatchFails) {
    open();
    add_all({"alice", "bob"});
    send(p("alice"), p("bob"), body_n(1));
    send(p("alice"), p("bob"), body_n(2));
    commit_ok();
    ASSERT_TRUE(store_->set_read_marker(*p("bob"), 1, kNow).ok());
    commit_ok();
    {
        RawDb raw(db_file());
        ASSERT_EQ(raw.exec("CREATE TRIGGER no_settings BEFORE INSERT ON principal_settings "
                           "BEGIN SELECT RAISE(ABORT, 'injected'); END;"),
                  "");
    }
    ASSERT_TRUE(store_->set_read_marker(*p("bob"), 2, kNow).ok());
    EXPECT_EQ(p("bob")->read_upto, 2);
    EXPECT_FALSE(store_->set_read_receipts(*p("bob"), false).ok());
    EXPECT_EQ(commit_error().code, "unavailable");
    EXPECT_EQ(p("bob")->read_upto, 1);
    EXPECT_TRUE(p("bob")->read_receipts);
    {
        RawDb raw(db_file());
        ASSERT_EQ(raw.exec("DROP TRIGGER no_settings"), "");
    }
    ASSERT_TRUE(store_->set_read_receipts(*p("bob"), false).ok());
    commit_ok();
    reopen();
    EXPECT_FALSE(p("bob")->read_receipts);
    EXPECT_TRUE(p("alice")->read_receipts);
    EXPECT_EQ(p("bob")->read_upto, 1);
    ASSERT_TRUE(store_->set_read_receipts(*p("bob"), true).ok());
    commit_ok();
    reopen();
    EXPECT_TRUE(p("bob")->read_receipts);
}

TEST_F(StoreTest, DeliveredIsTheHighestCursorAndForgettingADeviceLowersIt) {
    open();
    add_all({"alice", "bob"});
    for (int i = 0; i < 5; ++i)
        send(p("alice"), p("bob"), body_n(i));
    commit_ok();
    Principal& bob = *p("bob");
    store_->set_cursor(bob, "desk", 3);
    store_->set_cursor(bob, "pad", 5);
    store_->set_cursor(bob, "desk", 4);
    EXPECT_EQ(bob.delivered_upto, 5);
    commit_ok();
    reopen();
    EXPECT_EQ(p("bob")->delivered_upto, 5);
    ASSERT_TRUE(store_->forget_device(*p("bob"), "pad").ok());
    EXPECT_EQ(p("bob")->delivered_upto, 4);
    commit_ok();
}

TEST_F(StoreTest, MessagesCarryTheirSenderAndItsSeqInTailAndPages) {
    open();
    add_all({"alice", "bob"});
    send(p("bob"), p("alice"), body_n(0));
    AppendResult r = send(p("alice"), p("bob"), body_n(1));
    commit_ok();
    ASSERT_EQ(r.sender_seq, 2);
    const LogEntry& e = p("bob")->tail.back();
    EXPECT_EQ(e.seq, 2);
    EXPECT_EQ(e.msg->sender_pid, p("alice")->pid);
    EXPECT_EQ(e.msg->sender_seq, 2);
    auto rows = page(*p("bob"), 2);
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows[0].msg->sender_pid, p("alice")->pid);
    EXPECT_EQ(rows[0].msg->sender_seq, 2);
    EXPECT_EQ(store_->find_pid(p("alice")->pid), p("alice"));
    EXPECT_EQ(store_->find_pid(12345), nullptr);
}

// Runs reader jobs on a loop of the test's own until their `done` ran.
class ReaderTest : public StoreTest {
  protected:
    void SetUp() override {
        StoreTest::SetUp();
        ASSERT_EQ(uv_loop_init(&loop_), 0);
        // The reader's uv_async does not keep a loop alive: this timer does while waiting.
        uv_timer_init(&loop_, &keepalive_);
    }
    void TearDown() override {
        if (reader_)
            reader_->shutdown();
        reader_.reset();
        uv_close(reinterpret_cast<uv_handle_t*>(&keepalive_), nullptr);
        uv_run(&loop_, UV_RUN_DEFAULT);
        EXPECT_EQ(uv_loop_close(&loop_), 0) << "a uv handle was left open";
        StoreTest::TearDown();
    }
    void start(size_t threads = 2) {
        auto r = Reader::open(&loop_, db_file(), threads);
        ASSERT_TRUE(r.ok()) << r.error().message;
        reader_ = std::move(r.value());
    }
    // Runs fn on a reader thread and waits (on the loop) for its done.
    void on_reader(std::function<void(ReadConn&)> fn) {
        bool done = false;
        reader_->submit(std::move(fn), [&] { done = true; });
        uv_timer_start(&keepalive_, [](uv_timer_t*) {}, 10, 10);
        while (!done)
            uv_run(&loop_, UV_RUN_ONCE);
        uv_timer_stop(&keepalive_);
        EXPECT_EQ(reader_->pending(), 0u);
    }
    HistoryPage history(const HistoryQuery& q) {
        HistoryPage out;
        on_reader([&](ReadConn& c) {
            auto r = c.history(q);
            EXPECT_TRUE(r.ok()) << r.error().message;
            if (r)
                out = std::move(r.value());
        });
        return out;
    }

    uv_loop_t loop_{};
    uv_timer_t keepalive_{};
    std::unique_ptr<Reader> reader_;
};

TEST_F(ReaderTest, HistoryPagesBothWaysAcrossScanWindows) {
    open();
    add_all({"alice", "bob", "carol"});
    // bob's log: 10,000 entries; every 1000th from carol, the rest from alice.
    for (int i = 1; i <= 10000; ++i)
        send(i % 1000 == 0 ? p("carol") : p("alice"), p("bob"), body_n(i % 100));
    commit_ok();
    start();
    Principal& bob = *p("bob");
    HistoryQuery q;
    q.pid = bob.pid;
    q.head = bob.committed_head;
    q.bound = q.head + 1;
    q.limit = 3;
    HistoryPage page = history(q);
    EXPECT_EQ(seqs_of(page.entries), (std::vector<int64_t>{9998, 9999, 10000}));
    EXPECT_TRUE(page.more);
    q.ascending = true;
    q.bound = 9998;
    page = history(q);
    EXPECT_EQ(seqs_of(page.entries), (std::vector<int64_t>{9999, 10000}));
    EXPECT_FALSE(page.more);
    // A head below the log's end hides what is above it (not committed when asked).
    q.head = 9999;
    page = history(q);
    EXPECT_EQ(seqs_of(page.entries), (std::vector<int64_t>{9999}));
    EXPECT_FALSE(page.more);
    q.head = bob.committed_head;
    // One peer, sparse: the scan crosses many windows of Reader::scan_window seqs.
    q.filter = HistoryQuery::Filter::peer;
    q.self_pid = bob.pid;
    q.self_name = "bob";
    q.peer_pid = p("carol")->pid;
    q.peer_name = "carol";
    q.ascending = false;
    q.bound = 10001;
    q.limit = 4;
    page = history(q);
    EXPECT_EQ(seqs_of(page.entries), (std::vector<int64_t>{7000, 8000, 9000, 10000}));
    EXPECT_TRUE(page.more);
    q.bound = 7000;
    q.limit = 500;
    page = history(q);
    EXPECT_EQ(seqs_of(page.entries),
              (std::vector<int64_t>{1000, 2000, 3000, 4000, 5000, 6000}));
    EXPECT_FALSE(page.more);
    EXPECT_EQ(page.entries[0].msg->from, "carol");
    EXPECT_EQ(page.entries[0].msg->to, "bob");
    // The byte cap cuts a page short; more says there is the rest.
    q.filter = HistoryQuery::Filter::none;
    q.bound = 101;
    q.limit = 100;
    q.max_bytes = 30; // bodies are 10 bytes: three fit
    page = history(q);
    EXPECT_EQ(seqs_of(page.entries), (std::vector<int64_t>{98, 99, 100}));
    EXPECT_TRUE(page.more);
}

TEST_F(ReaderTest, SentMessagesWithTheirCopiesAndDirectSenders) {
    open();
    add_all({"alice", "bob", "carol"});
    Principal* abc[] = {p("alice"), p("bob"), p("carol")};
    ASSERT_TRUE(store_->group_add("team", abc, kNow).ok());
    send(p("carol"), p("bob"), body_n(0));                       // bob 1
    send(p("alice"), p("bob"), body_n(1));                       // alice 1, bob 2
    Principal* team[] = {p("alice"), p("bob"), p("carol")};
    ASSERT_TRUE(store_->append(p("alice"), "#team", team, "1", "", kNow).ok()); // a 2 b 3 c 2
    send(p("alice"), p("bob"), body_n(2));                       // alice 3, bob 4
    send(p("carol"), p("bob"), body_n(3));                       // bob 5
    commit_ok();
    start(1);
    int64_t alice = p("alice")->pid, bob = p("bob")->pid, carol = p("carol")->pid;
    on_reader([&](ReadConn& c) {
        std::vector<int64_t> seqs = {1, 2, 3, 9};
        auto r = c.sent(alice, 3, seqs);
        ASSERT_TRUE(r.ok()) << r.error().message;
        ASSERT_EQ(r->size(), 3u);
        EXPECT_EQ((*r)[0].to, "bob");
        ASSERT_EQ((*r)[0].copies.size(), 1u);
        EXPECT_EQ((*r)[0].copies[0].pid, bob);
        EXPECT_EQ((*r)[0].copies[0].seq, 2);
        EXPECT_EQ((*r)[1].to, "#team");
        EXPECT_EQ((*r)[1].copies.size(), 2u);
        EXPECT_EQ((*r)[2].seq, 3);
        // bob's log: entries he received are not his sends.
        auto none = c.sent(bob, 5, seqs);
        ASSERT_TRUE(none.ok());
        EXPECT_TRUE(none->empty());
        // Direct messages to bob in 1..5 by sender, as seqs of the sender's log: alice's
        // newest is her 3; carol's is her 3 too (1: her first send, 2: the #team copy).
        auto senders = c.direct_senders(bob, "bob", 0, 5);
        ASSERT_TRUE(senders.ok());
        std::sort(senders->begin(), senders->end(),
                  [](const SenderMax& a, const SenderMax& b) { return a.sender_pid < b.sender_pid; });
        ASSERT_EQ(senders->size(), 2u);
        EXPECT_EQ((*senders)[0].sender_pid, alice);
        EXPECT_EQ((*senders)[0].sender_seq, 3);
        EXPECT_EQ((*senders)[1].sender_pid, carol);
        EXPECT_EQ((*senders)[1].sender_seq, 3);
        auto early = c.direct_senders(bob, "bob", 0, 3);
        ASSERT_TRUE(early.ok());
        ASSERT_EQ(early->size(), 2u);
    });
}

TEST_F(ReaderTest, ShutdownDropsPendingJobsAndClosesItsHandle) {
    open();
    add_all({"alice"});
    start(1);
    bool ran_done = false;
    std::atomic<int> started{0};
    for (int i = 0; i < 50; ++i)
        reader_->submit([&](ReadConn&) { ++started; }, [&] { ran_done = true; });
    reader_->shutdown();
    reader_->submit([](ReadConn&) {}, [&] { ran_done = true; }); // after: dropped
    uv_run(&loop_, UV_RUN_NOWAIT);
    EXPECT_FALSE(ran_done);
    EXPECT_EQ(reader_->pending(), 0u);
}

} // namespace
} // namespace meshd::store

// ---- work dispatch: tasks ------------------------------------------------------------------

namespace meshd::store {
namespace {

TEST_F(StoreTest, TaskGoesFromQueueToAgentWithEventsAndSurvivesReopen) {
    open();
    add_all({"alice"});
    Principal* agent = add("tr-1", Kind::agent);
    commit_ok();
    auto sent = store_->send_to_skill(p("alice"), "translate", R"({"t":"hi"})", "job-1", kNow,
                                      true, kNow + 60000);
    ASSERT_TRUE(sent.ok()) << sent.error().message;
    int64_t id = sent->task.id;
    EXPECT_EQ(sent->append.sender_seq, 1);
    EXPECT_EQ(sent->task.state, TaskState::queued);
    ASSERT_NE(store_->task_queue("translate"), nullptr);
    EXPECT_EQ(*store_->task_queue("translate"), std::set<int64_t>{id});
    commit_ok();
    reopen(); // the queued task is loaded again
    agent = p("tr-1");
    Task* t = store_->find_task(id);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->deadline_ms, kNow + 60000);
    ASSERT_TRUE(store_->assign_task(*t, *agent, kNow + 1).ok());
    EXPECT_EQ(store_->task_queue("translate"), nullptr);
    EXPECT_EQ(store_->held_tasks(agent->pid), 1u);
    commit_ok();
    // The agent's entry is the send's message (body, id, task member); the sender got an
    // event.
    auto copy = page(*agent);
    ASSERT_EQ(copy.size(), 1u);
    EXPECT_EQ(copy[0].msg->body, R"({"t":"hi"})");
    EXPECT_EQ(copy[0].msg->to, "skill:translate");
    EXPECT_EQ(copy[0].msg->task,
              R"({"id":)" + std::to_string(id) + R"(,"deadline":)" +
                  std::to_string(kNow + 60000) + "}");
    EXPECT_EQ(copy[0].msg->sender_seq, 1);
    EXPECT_EQ(copy[0].msg->client_id, "job-1"); // the send's own message, id and all
    auto own = page(*p("alice"));
    ASSERT_EQ(own.size(), 2u);
    EXPECT_TRUE(own[1].msg->is_task_event());
    EXPECT_EQ(own[1].msg->body, R"({"id":)" + std::to_string(id) +
                                    R"(,"state":"assigned","skill":"translate","msg":1,)"
                                    R"("agent":"tr-1"})");
    // A resend with the same id finds the task as it is now.
    auto dup = store_->send_to_skill(p("alice"), "translate", R"({"t":"hi"})", "job-1", kNow + 2,
                                     true, kNow + 60000);
    ASSERT_TRUE(dup.ok());
    EXPECT_TRUE(dup->append.dup);
    EXPECT_EQ(dup->task.id, id);
    EXPECT_EQ(dup->task.state, TaskState::assigned);
    // Lease, back to the queue, with the previous holder remembered.
    ASSERT_TRUE(store_->set_task_lease(*store_->find_task(id), kNow + 5).ok());
    commit_ok();
    reopen();
    t = store_->find_task(id);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->lease_until_ms, kNow + 5);
    ASSERT_TRUE(store_->requeue_task(*t, kNow + 6).ok());
    commit_ok();
    t = store_->find_task(id);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->state, TaskState::queued);
    EXPECT_EQ(t->agent_pid, 0);
    EXPECT_TRUE(t->held_before_by(p("tr-1")->pid));
    EXPECT_EQ(store_->held_tasks(p("tr-1")->pid), 0u);
    ASSERT_TRUE(store_->set_task_state(*t, TaskState::canceled, "", kNow + 7).ok());
    commit_ok();
    EXPECT_EQ(store_->find_task(id), nullptr);
    auto row = store_->stored_task(id);
    ASSERT_TRUE(row.ok());
    ASSERT_TRUE(row->has_value());
    EXPECT_EQ((*row)->task.state, TaskState::canceled);
    EXPECT_EQ((*row)->sender, "alice");
    auto listed = store_->list_tasks(TaskFilter{TaskState::canceled, "translate", 10});
    ASSERT_TRUE(listed.ok());
    ASSERT_EQ(listed->size(), 1u);
    EXPECT_EQ((*listed)[0].task.id, id);
    EXPECT_TRUE(store_->list_tasks(TaskFilter{TaskState::done, "", 10})->empty());
}

TEST_F(FailingLogTest, FailedBatchLeavesTheTaskQueued) {
    open();
    add_all({"alice"});
    Principal* agent = add("tr-1", Kind::agent);
    commit_ok();
    auto sent = store_->send_to_skill(p("alice"), "translate", "1", "", kNow, true, 0);
    ASSERT_TRUE(sent.ok());
    int64_t id = sent->task.id;
    commit_ok();
    arm(*agent);
    EXPECT_FALSE(store_->assign_task(*store_->find_task(id), *agent, kNow).ok());
    EXPECT_EQ(commit_error().message, fail_message_);
    Task* t = store_->find_task(id);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->state, TaskState::queued);
    EXPECT_EQ(store_->held_tasks(agent->pid), 0u);
    EXPECT_EQ(*store_->task_queue("translate"), std::set<int64_t>{id});
    disarm();
    ASSERT_TRUE(store_->assign_task(*t, *agent, kNow).ok());
    commit_ok();
    EXPECT_EQ(store_->held_tasks(agent->pid), 1u);
    // A transition whose event cannot be stored leaves no trace: not in memory, and not in
    // the table either (the row's update is in the failed batch, not committed on its own).
    arm(*p("alice"));
    EXPECT_FALSE(
        store_->set_task_state(*store_->find_task(id), TaskState::done, "", kNow + 1).ok());
    EXPECT_EQ(commit_error().message, fail_message_);
    ASSERT_NE(store_->find_task(id), nullptr);
    EXPECT_EQ(store_->find_task(id)->state, TaskState::assigned);
    disarm();
    reopen();
    ASSERT_NE(store_->find_task(id), nullptr);
    EXPECT_EQ(store_->find_task(id)->state, TaskState::assigned);
    EXPECT_EQ(store_->held_tasks(p("tr-1")->pid), 1u);
}

} // namespace
} // namespace meshd::store
