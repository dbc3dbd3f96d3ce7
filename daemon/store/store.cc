// store/store: SQLite schema, migrations, group commit, the checkpoint helper thread.
#include "store/store.h"

#include "store/wal_vfs.h"

#include "core/clock.h"
#include "core/json.h"
#include "core/log.h"
#include "store/sqlite_util.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fcntl.h>
#include <mutex>
#include <sodium.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <thread>
#include <tuple>
#include <unistd.h>

namespace meshd::store {

std::string_view to_string(Kind k) {
    return k == Kind::agent ? "agent" : "user";
}

using detail::bind_text;
using detail::column_text;
using detail::sqlite_message;
using detail::StmtGuard;

namespace {
constexpr std::string_view status_names[] = {"available", "busy", "away", "dnd"};
static_assert(static_cast<size_t>(Status::dnd) == 3);
} // namespace

std::string_view to_string(Status s) {
    return status_names[static_cast<size_t>(s)];
}

std::optional<Status> parse_status(std::string_view name) {
    for (size_t i = 0; i < std::size(status_names); ++i)
        if (status_names[i] == name)
            return static_cast<Status>(i);
    return std::nullopt;
}

namespace {

constexpr int known_schema_version = 8;

// Numbered migrations; migration N brings user_version from N-1 to N. Each runs inside the
// transaction that also sets user_version, so a crash leaves the old or the new schema.
const char* const migrations[] = {
    // 1: the first schema.
    R"sql(
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE principals(
    pid INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    deleted_ms INTEGER);
CREATE UNIQUE INDEX principals_live_name ON principals(name) WHERE deleted_ms IS NULL;
CREATE TABLE tokens(
    hash BLOB PRIMARY KEY,
    pid INTEGER NOT NULL,
    created_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX tokens_pid ON tokens(pid);
CREATE TABLE messages(
    mid INTEGER PRIMARY KEY,
    sender INTEGER NOT NULL,
    to_text TEXT NOT NULL,
    ts INTEGER NOT NULL,
    body TEXT NOT NULL,
    client_id TEXT,
    fingerprint BLOB,
    sender_seq INTEGER NOT NULL);
CREATE UNIQUE INDEX messages_client_id ON messages(sender, client_id)
    WHERE client_id IS NOT NULL;
CREATE TABLE log(
    pid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    mid INTEGER NOT NULL,
    PRIMARY KEY(pid, seq)) WITHOUT ROWID;
CREATE TABLE cursors(
    pid INTEGER NOT NULL,
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY(pid, device)) WITHOUT ROWID;
)sql",
    // 2: groups. A group is stored once; a message to it is one entry per member's log.
    R"sql(
CREATE TABLE groups(
    gid INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL);
CREATE TABLE group_members(
    gid INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    PRIMARY KEY(gid, pid)) WITHOUT ROWID;
CREATE INDEX group_members_pid ON group_members(pid);
)sql",
    // 3: ed25519 public keys (meshctl key add). The key is the primary key: one key belongs to
    // one principal. Keys are deleted with their principal, so a re-added name has none.
    R"sql(
CREATE TABLE keys(
    pubkey BLOB PRIMARY KEY,
    pid INTEGER NOT NULL,
    added_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX keys_pid ON keys(pid);
)sql",
    // 4: retention. Which logs still reference a message, so that its body is deleted with
    // the last reference. mids only grow, so new rows land on the index's last page. (8
    // replaced it.)
    R"sql(
CREATE INDEX log_mid ON log(mid);
)sql",
    // 5: the directory. One row per principal that set a status, published a profile, was
    // hidden or was ever connected; deleted with the principal. skills repeats the profile's
    // skill names, space-separated, so that loading needs no JSON parser.
    R"sql(
CREATE TABLE profiles(
    pid INTEGER PRIMARY KEY,
    status TEXT NOT NULL DEFAULT 'available',
    note TEXT NOT NULL DEFAULT '',
    profile TEXT,
    skills TEXT NOT NULL DEFAULT '',
    hidden INTEGER NOT NULL DEFAULT 0,
    last_seen_ms INTEGER);
)sql",
    // 6: conversations. The explicit read marker per principal (frame `read`) and
    // per-principal settings (read_receipts). (The receipts query's group counts used
    // log_mid, from 4; since 8, messages.copies.)
    R"sql(
CREATE TABLE read_markers(
    pid INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL);
CREATE TABLE principal_settings(
    pid INTEGER NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY(pid, name)) WITHOUT ROWID;
)sql",
    // 7: work dispatch (skill:NAME). messages.task: the task member of a dispatched message,
    // as JSON text ({"id":17,...}; NULL for others). tasks: one row per send to a skill, its
    // state (0 queued, 1 assigned, 2 working, 3 done, 4 failed, 5 expired, 6 canceled) and
    // holder (former: earlier holders' pids, space-separated). Unfinished rows are loaded at start; a message a queued task still needs is
    // kept by retention (tasks_queued_mid).
    R"sql(
ALTER TABLE messages ADD COLUMN task TEXT;
CREATE TABLE tasks(
    tid INTEGER PRIMARY KEY,
    sender INTEGER NOT NULL,
    sender_seq INTEGER NOT NULL,
    mid INTEGER NOT NULL,
    skill TEXT NOT NULL,
    tracked INTEGER NOT NULL,
    state INTEGER NOT NULL,
    agent INTEGER,
    agent_seq INTEGER,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    queued_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL DEFAULT 0,
    lease_until_ms INTEGER NOT NULL DEFAULT 0,
    former TEXT NOT NULL DEFAULT '');
CREATE UNIQUE INDEX tasks_send ON tasks(sender, sender_seq);
CREATE INDEX tasks_open ON tasks(state) WHERE state <= 2;
CREATE INDEX tasks_queued_mid ON tasks(mid) WHERE state = 0;
)sql",
    // 8: what log(mid) (from 4) answered, kept on the message row instead: refs, how many
    // log entries reference it (retention deletes the message with the last one), and copies,
    // the entries other than the sender's as "pid:seq" separated by spaces (receipts, and
    // history with a peer). Maintaining log(mid) was a B-tree insert per recipient, a quarter
    // of the cost of a message to a group of 100.
    R"sql(
ALTER TABLE messages ADD COLUMN refs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN copies TEXT;
UPDATE messages SET
    refs = (SELECT count(*) FROM log WHERE log.mid = messages.mid),
    copies = (SELECT group_concat(pid || ':' || seq, ' ') FROM log
              WHERE log.mid = messages.mid AND log.pid <> messages.sender);
DROP INDEX log_mid;
)sql",
};
static_assert(sizeof migrations / sizeof migrations[0] == known_schema_version);

enum Stmt {
    s_begin,
    s_commit,
    s_rollback,
    s_insert_msg,
    s_insert_log,
    s_find_dedupe,
    s_clear_dedupe,
    s_upsert_cursor,
    s_read_page,
    s_insert_principal,
    s_delete_principal,
    s_delete_log_of,
    s_delete_cursors_of,
    s_delete_cursor,
    s_delete_tokens_of,
    s_insert_token,
    s_find_token,
    s_insert_group,
    s_delete_group,
    s_insert_member,
    s_delete_member,
    s_delete_members_of_group,
    s_delete_memberships_of,
    s_insert_key,
    s_delete_key,
    s_delete_keys_of,
    s_retention_scan,
    s_retention_mids,
    s_retention_delete_log,
    s_drop_refs,
    s_upsert_status,
    s_upsert_profile,
    s_upsert_hidden,
    s_upsert_last_seen,
    s_delete_profile_of,
    s_upsert_read_marker,
    s_upsert_setting,
    s_delete_read_marker_of,
    s_delete_settings_of,
    s_delete_unreferenced,
    s_mids_of,
    s_count
};

const char* const stmt_sql[s_count] = {
    "BEGIN IMMEDIATE",
    "COMMIT",
    "ROLLBACK",
    "INSERT INTO messages(sender, to_text, ts, body, client_id, fingerprint, sender_seq, task, "
    "refs, copies) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    "INSERT INTO log(pid, seq, mid) VALUES(?1, ?2, ?3)",
    "SELECT mid, ts, fingerprint, sender_seq FROM messages WHERE sender = ?1 AND client_id = ?2",
    "UPDATE messages SET client_id = NULL WHERE mid = ?1",
    "INSERT INTO cursors(pid, device, seq, updated_ms) VALUES(?1, ?2, ?3, ?4) "
    "ON CONFLICT(pid, device) DO UPDATE SET seq = excluded.seq, updated_ms = excluded.updated_ms",
    "SELECT l.seq, p.name, m.to_text, m.ts, m.body, m.client_id, m.sender, m.sender_seq, m.task "
    "FROM log l "
    "JOIN messages m ON m.mid = l.mid JOIN principals p ON p.pid = m.sender "
    "WHERE l.pid = ?1 AND l.seq >= ?2 AND l.seq <= ?3 ORDER BY l.seq LIMIT ?4",
    "INSERT INTO principals(name, kind, created_ms) VALUES(?1, ?2, ?3)",
    "UPDATE principals SET deleted_ms = ?2 WHERE pid = ?1",
    "DELETE FROM log WHERE pid = ?1",
    "DELETE FROM cursors WHERE pid = ?1",
    "DELETE FROM cursors WHERE pid = ?1 AND device = ?2",
    "DELETE FROM tokens WHERE pid = ?1",
    "INSERT INTO tokens(hash, pid, created_ms) VALUES(?1, ?2, ?3)",
    "SELECT pid FROM tokens WHERE hash = ?1",
    "INSERT INTO groups(name, created_ms) VALUES(?1, ?2)",
    "DELETE FROM groups WHERE gid = ?1",
    "INSERT OR IGNORE INTO group_members(gid, pid) VALUES(?1, ?2)",
    "DELETE FROM group_members WHERE gid = ?1 AND pid = ?2",
    "DELETE FROM group_members WHERE gid = ?1",
    "DELETE FROM group_members WHERE pid = ?1",
    "INSERT INTO keys(pubkey, pid, added_ms) VALUES(?1, ?2, ?3)",
    "DELETE FROM keys WHERE pubkey = ?1 AND pid = ?2",
    "DELETE FROM keys WHERE pid = ?1",
    "SELECT l.seq, m.ts FROM log l JOIN messages m ON m.mid = l.mid "
    "WHERE l.pid = ?1 AND l.seq >= ?2 AND l.seq <= ?3 ORDER BY l.seq",
    "SELECT mid FROM log WHERE pid = ?1 AND seq >= ?2 AND seq <= ?3",
    "DELETE FROM log WHERE pid = ?1 AND seq >= ?2 AND seq <= ?3",
    "UPDATE messages SET refs = refs - ?2 WHERE mid = ?1",
    "INSERT INTO profiles(pid, status, note) VALUES(?1, ?2, ?3) ON CONFLICT(pid) DO UPDATE "
    "SET status = excluded.status, note = excluded.note",
    "INSERT INTO profiles(pid, profile, skills) VALUES(?1, ?2, ?3) ON CONFLICT(pid) DO UPDATE "
    "SET profile = excluded.profile, skills = excluded.skills",
    "INSERT INTO profiles(pid, hidden) VALUES(?1, ?2) ON CONFLICT(pid) DO UPDATE "
    "SET hidden = excluded.hidden",
    "INSERT INTO profiles(pid, last_seen_ms) VALUES(?1, ?2) ON CONFLICT(pid) DO UPDATE "
    "SET last_seen_ms = excluded.last_seen_ms",
    "DELETE FROM profiles WHERE pid = ?1",
    "INSERT INTO read_markers(pid, seq, updated_ms) VALUES(?1, ?2, ?3) "
    "ON CONFLICT(pid) DO UPDATE SET seq = excluded.seq, updated_ms = excluded.updated_ms",
    "INSERT INTO principal_settings(pid, name, value) VALUES(?1, ?2, ?3) "
    "ON CONFLICT(pid, name) DO UPDATE SET value = excluded.value",
    "DELETE FROM read_markers WHERE pid = ?1",
    "DELETE FROM principal_settings WHERE pid = ?1",
    "DELETE FROM messages WHERE mid = ?1 AND refs <= 0 "
    "AND NOT EXISTS (SELECT 1 FROM tasks WHERE mid = ?1 AND state = 0)",
    "SELECT mid FROM log WHERE pid = ?1",
};

// Creates `path` with 32 random bytes (mode 0600) if missing, then reads it.
core::Result<void> load_secret(const std::string& path, unsigned char out[32]) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        unsigned char fresh[32];
        randombytes_buf(fresh, sizeof fresh);
        fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
            return core::make_error("internal", path + ": cannot create: " + std::strerror(errno));
        bool ok = ::write(fd, fresh, sizeof fresh) == sizeof fresh && ::fsync(fd) == 0;
        ::close(fd);
        sodium_memzero(fresh, sizeof fresh);
        if (!ok)
            return core::make_error("internal", path + ": cannot write: " + std::strerror(errno));
        fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0)
        return core::make_error("internal", path + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    ::fstat(fd, &st);
    ssize_t n = ::read(fd, out, 32);
    ::close(fd);
    if (n != 32)
        return core::make_error("internal", path + ": must hold 32 bytes; restore it from a "
                                                   "backup (tokens are hashed with it)");
    if ((st.st_mode & 077) != 0)
        MESHD_LOG(warn, "store.secret_mode", "file=%s mode=%o message=\"should be 0600\"",
                  path.c_str(), static_cast<unsigned>(st.st_mode & 0777));
    return {};
}

} // namespace

// Runs a PASSIVE checkpoint on its own connection once a second, so that the loop seldom
// checkpoints (wal_autocheckpoint=0; a PASSIVE checkpoint never blocks the writer, a RESTART
// one would make the loop's BEGIN fail). Under writes without pause its passes never catch up
// completely, so the WAL could not restart: Store::wal_catch_up() asks for a catch-up, and
// then finishes the job on the loop. A catch-up is passes back to back, each copying what
// the loop committed during the one before, until one copies at most kTailFrames: the loop
// is left a tail of about that size to copy. (Passes back to back without end made the WAL
// grow instead: a pass reads the WAL, and a WAL being read cannot restart.)
class Checkpointer {
  public:
    static constexpr int kTailFrames = 256; // 256 KiB of 1 KiB pages
    static constexpr int kMaxRounds = 8;    // the loop writes faster than a pass copies

    explicit Checkpointer(std::string path) : path_(std::move(path)) {
        thread_ = std::thread([this] { run(); });
    }
    ~Checkpointer() {
        {
            std::lock_guard lock(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }
    Checkpointer(const Checkpointer&) = delete;
    Checkpointer& operator=(const Checkpointer&) = delete;

    // Asks for a catch-up now (instead of a pass at the next second); catch_ups() counts the
    // finished ones.
    void request() {
        {
            std::lock_guard lock(mu_);
            requested_ = true;
        }
        cv_.notify_all();
    }
    uint64_t catch_ups() const { return catch_ups_.load(std::memory_order_acquire); }

  private:
    void run() {
        sqlite3* db = nullptr;
        if (sqlite3_open_v2(path_.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                            nullptr) != SQLITE_OK ||
            sqlite3_exec(db, "PRAGMA synchronous=FULL", nullptr, nullptr, nullptr) != SQLITE_OK) {
            MESHD_LOG(error, "store.checkpointer", "file=%s message=%s", path_.c_str(),
                      core::log_value(sqlite_message(db)).c_str());
            sqlite3_close_v2(db);
            return;
        }
        std::unique_lock lock(mu_);
        while (!stop_) {
            cv_.wait_for(lock, std::chrono::seconds(1), [this] { return stop_ || requested_; });
            if (stop_)
                break;
            bool catch_up = requested_;
            requested_ = false;
            lock.unlock();
            int rounds = catch_up ? kMaxRounds : 1;
            int before = -1; // frames backfilled before this pass, -1: unknown
            for (int i = 0; i < rounds; ++i) {
                int frames = 0, backfilled = 0;
                int rc = sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_PASSIVE,
                                                   &frames, &backfilled);
                if (rc != SQLITE_OK) {
                    if (rc != SQLITE_BUSY)
                        MESHD_LOG(warn, "store.checkpoint_failed", "message=%s",
                                  core::log_value(sqlite3_errmsg(db)).c_str());
                    break;
                }
                // Fewer backfilled frames than before: the WAL restarted in between.
                int copied = before < 0 ? kTailFrames + 1
                             : backfilled < before ? backfilled
                                                   : backfilled - before;
                before = backfilled;
                if (catch_up)
                    MESHD_LOG(debug, "store.catch_up_pass", "round=%d frames=%d copied=%d", i,
                              frames, copied);
                if (copied <= kTailFrames)
                    break;
            }
            if (catch_up)
                catch_ups_.fetch_add(1, std::memory_order_release);
            lock.lock();
        }
        lock.unlock();
        sqlite3_close_v2(db);
    }

    std::string path_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool stop_ = false;
    bool requested_ = false;
    std::atomic<uint64_t> catch_ups_{0};
    std::thread thread_;
};

// sync = full: fdatasyncs the WAL after commits, off the loop, and publishes the newest
// batch number that is on the disk. Batches coalesce: one fdatasync covers every batch
// committed before it started.
class WalSyncer {
  public:
    // fd: the open -wal file (owned from here on); never changes while the thread runs.
    WalSyncer(std::string wal_path, int fd, std::function<void()> notify)
        : wal_path_(std::move(wal_path)), notify_(std::move(notify)), fd_(fd) {
        thread_ = std::thread([this] { run(); });
    }
    ~WalSyncer() {
        {
            std::lock_guard lock(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        thread_.join();
        ::close(fd_);
    }
    WalSyncer(const WalSyncer&) = delete;
    WalSyncer& operator=(const WalSyncer&) = delete;

    void request(uint64_t batch) {
        {
            std::lock_guard lock(mu_);
            requested_ = batch;
        }
        cv_.notify_one();
    }
    uint64_t durable() {
        std::lock_guard lock(mu_);
        return durable_;
    }
    // On the loop thread, for shutdown: waits for the thread to be idle by doing the work.
    bool sync_now(uint64_t batch) {
        std::lock_guard lock(mu_);
        if (!sync_locked())
            return false;
        durable_ = std::max(durable_, batch);
        return true;
    }

  private:
    bool sync_locked() {
        if (::fdatasync(fd_) != 0) {
            MESHD_LOG(error, "store.fsync_failed", "file=%s message=%s", wal_path_.c_str(),
                      core::log_value(std::strerror(errno)).c_str());
            return false;
        }
        return true;
    }
    void run() {
        std::unique_lock lock(mu_);
        while (!stop_) {
            cv_.wait(lock, [this] { return stop_ || requested_ > durable_; });
            if (stop_)
                break;
            uint64_t target = requested_;
            // fdatasync outside the lock: later batches commit meanwhile.
            lock.unlock();
            bool ok = ::fdatasync(fd_) == 0;
            int err = errno;
            lock.lock();
            if (!ok) {
                MESHD_LOG(error, "store.fsync_failed", "file=%s message=%s", wal_path_.c_str(),
                          core::log_value(std::strerror(err)).c_str());
                // Nothing after this point is acked; retry on the next request.
                cv_.wait_for(lock, std::chrono::seconds(1));
                continue;
            }
            durable_ = std::max(durable_, target);
            lock.unlock();
            notify_();
            lock.lock();
        }
    }

    std::string wal_path_;
    std::function<void()> notify_;
    const int fd_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool stop_ = false;
    uint64_t requested_ = 0;
    uint64_t durable_ = 0;
    std::thread thread_;
};

int Store::schema_version() {
    return known_schema_version;
}

Store::Store(StoreOptions options) : options_(std::move(options)) {}

Store::~Store() {
    syncer_.reset();
    durable_notice_.close();
    checkpointer_.reset();
    if (in_txn_)
        sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    for (sqlite3_stmt* s : stmts_)
        sqlite3_finalize(s);
    for (sqlite3_stmt* s : task_stmts_)
        sqlite3_finalize(s);
    if (db_)
        sqlite3_close_v2(db_);
    if (lock_fd_ >= 0)
        ::close(lock_fd_);
    sodium_memzero(secret_, sizeof secret_);
}

core::Result<std::unique_ptr<Store>> Store::open(const StoreOptions& options) {
    if (sodium_init() < 0)
        return core::make_error("internal", "libsodium failed to initialise");
    std::unique_ptr<Store> store(new Store(options));
    const std::string& dir = options.data_dir;
    if (::mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST)
        return core::make_error("internal",
                                dir + ": cannot create data_dir: " + std::strerror(errno) +
                                    " (create it, owned by the meshd user)");
    std::string lock_path = dir + "/meshd.lock";
    store->lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (store->lock_fd_ < 0)
        return core::make_error("internal", lock_path + ": cannot open: " + std::strerror(errno) +
                                                " (is data_dir writable by meshd?)");
    if (::flock(store->lock_fd_, LOCK_EX | LOCK_NB) != 0)
        return core::make_error("internal", dir + ": another meshd is using this data_dir");
    if (auto r = load_secret(dir + "/secret.key", store->secret_); !r)
        return r.error();
    store->db_path_ = dir + "/meshd.db";
    if (auto r = store->open_db(); !r)
        return r.error();
    if (auto r = store->migrate(); !r)
        return r.error();
    if (auto r = store->prepare_all(); !r)
        return r.error();
    if (auto r = store->load(); !r)
        return r.error();
    if (auto r = store->load_tasks(); !r)
        return r.error();
    store->checkpointer_ =
        std::make_unique<Checkpointer>(store->db_path_);
    if (options.sync == core::SyncMode::full) {
        if (!options.loop)
            return core::make_error("internal", "sync = full needs the loop for notices");
        Store* raw = store.get();
        store->durable_notice_ = core::UvAsync::create(options.loop, [raw] {
            if (raw->on_durable_)
                raw->on_durable_();
        });
        store->durable_notice_.unref(); // must not keep the loop alive at shutdown
        std::string wal = store->db_path_ + "-wal";
        int fd = ::open(wal.c_str(), O_RDWR | O_CLOEXEC);
        if (fd < 0)
            return core::make_error(
                "internal", wal + ": cannot open for storage.sync = full: " + std::strerror(errno));
        store->syncer_ =
            std::make_unique<WalSyncer>(wal, fd, [raw] { raw->durable_notice_.send(); });
    }
    store->register_metrics();
    return store;
}

namespace {

int64_t file_size(const std::string& path) {
    struct stat sb {};
    return ::stat(path.c_str(), &sb) == 0 ? static_cast<int64_t>(sb.st_size) : 0;
}

// Messages per commit: group commit should put many in one transaction under load.
constexpr double batch_message_buckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
// Seconds a commit takes, from the turn's cursor writes to COMMIT returning.
constexpr double commit_second_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                            0.025,  0.05,    0.1,    0.25,  0.5,    1};

} // namespace

void Store::register_metrics() {
    metrics_.messages_stored = core::core_counter(
        "meshd_messages_stored_total", "Messages committed to the store (each stored once).");
    wal_catch_ups_ = core::core_counter(
        "meshd_wal_catch_up_checkpoints_total",
        "Checkpoints the loop ran itself to let an oversized WAL restart "
        "(storage.checkpoint_wal_bytes).");
    metrics_.retention_deleted = core::core_counter(
        "meshd_retention_deleted_total",
        "Log entries deleted by retention (storage.retention_days, storage.max_log_entries).");
    metrics_.commit_failures = core::core_counter(
        "meshd_commit_failures_total",
        "Batches the database refused (busy, full, I/O error); their sends got unavailable.");
    metrics_.batch_messages = core::core_histogram(
        "meshd_commit_batch_messages",
        "Messages per committed transaction (group commit), for commits that stored any.",
        batch_message_buckets);
    metrics_.commit_seconds = core::core_histogram(
        "meshd_commit_duration_seconds",
        "Time a commit takes on the loop: the turn's cursor writes and COMMIT.",
        commit_second_buckets);
    core::Gauge db = core::core_gauge("meshd_database_size_bytes",
                                      "Size of the database files, by file.", "file=\"db\"");
    core::Gauge wal = core::core_gauge("meshd_database_size_bytes",
                                       "Size of the database files, by file.", "file=\"wal\"");
    core::Gauge degraded = core::core_gauge(
        "meshd_store_degraded", "1 while the store refuses writes (see meshctl status), else 0.");
    core::Gauge principals =
        core::core_gauge("meshd_principals", "Users and agents that exist (not deleted).");
    core::Gauge cache = core::core_gauge(
        "meshd_log_cache_bytes",
        "Memory charged to the cache of the newest log entries (storage.cache_bytes).");
    collector_ = core::metrics().add_collector([this, db, wal, degraded, principals,
                                                cache]() mutable {
        cache.set(static_cast<double>(cache_used_));
        db.set(static_cast<double>(file_size(db_path_)));
        wal.set(static_cast<double>(file_size(db_path_ + "-wal")));
        degraded.set(degraded_ ? 1 : 0);
        principals.set(static_cast<double>(by_name_.size()));
    });
}

core::Result<void> Store::open_db() {
    int rc =
        sqlite3_open_v2(db_path_.c_str(), &db_,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        wal_batching_vfs()); // a commit's WAL frames in one write
    if (rc != SQLITE_OK)
        return core::make_error("internal",
                                db_path_ + ": cannot open database: " + sqlite_message(db_));
    sqlite3_extended_result_codes(db_, 1);
    // journal_size_limit: when the writer restarts the WAL it truncates the file to this.
    // page_size: only a new database takes it (before its first write). A commit rewrites
    // every page it touches, and a group message touches one log page per member: 1 KiB
    // pages cut the WAL bytes per commit by 4 against SQLite's 4 KiB (README, Performance).
    std::string pragmas = "PRAGMA page_size=" + std::to_string(page_bytes()) +
                          "; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; "
                          "PRAGMA temp_store=MEMORY; PRAGMA cache_size=-16384; "
                          "PRAGMA journal_size_limit=" +
                          std::to_string(options_.checkpoint_wal_bytes) + "; PRAGMA synchronous=";
    // sync = full does not make SQLite sync on the loop: the WalSyncer fdatasyncs the WAL
    // off the loop and acks wait for it. The checkpointer syncs its own work (FULL).
    pragmas += "NORMAL;";
    char* err = nullptr;
    rc = sqlite3_exec(db_, pragmas.c_str(), nullptr, nullptr, &err);
    if (rc != SQLITE_OK) {
        std::string msg = err ? err : sqlite3_errstr(rc);
        sqlite3_free(err);
        if ((rc & 0xff) == SQLITE_NOTADB || (rc & 0xff) == SQLITE_CORRUPT)
            return core::make_error("internal",
                                    db_path_ + ": not a meshd database or corrupt (" + msg +
                                        "); restore it from a backup or move it away to start "
                                        "empty");
        return core::make_error("internal", db_path_ + ": cannot set up database: " + msg);
    }
    return {};
}

core::Result<void> Store::migrate() {
    sqlite3_stmt* s = nullptr;
    int version = 0;
    int rc = sqlite3_prepare_v2(db_, "PRAGMA user_version", -1, &s, nullptr);
    if (rc == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
        version = sqlite3_column_int(s, 0);
    else
        rc = sqlite3_errcode(db_);
    sqlite3_finalize(s);
    if (rc != SQLITE_OK && rc != SQLITE_ROW)
        return core::make_error("internal", db_path_ + ": not a meshd database or corrupt (" +
                                                sqlite_message(db_) +
                                                "); restore it from a backup or move it away");
    if (version > known_schema_version)
        return core::make_error("internal", db_path_ + ": database schema version " +
                                                std::to_string(version) +
                                                " is newer than this meshd knows (" +
                                                std::to_string(known_schema_version) +
                                                "); run the meshd that wrote it, or a newer one");
    for (int v = version; v < known_schema_version; ++v) {
        std::string sql = "BEGIN IMMEDIATE;";
        sql += migrations[v];
        if (v == 0) {
            unsigned char raw[8];
            randombytes_buf(raw, sizeof raw);
            char hex[17];
            sodium_bin2hex(hex, sizeof hex, raw, sizeof raw);
            sql += "INSERT INTO meta(key, value) VALUES('epoch', '";
            sql += hex;
            sql += "');";
        }
        sql += "PRAGMA user_version=" + std::to_string(v + 1) + "; COMMIT;";
        char* err = nullptr;
        if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
            std::string msg = err ? err : "unknown error";
            sqlite3_free(err);
            sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
            return core::make_error("internal", db_path_ + ": migration " + std::to_string(v + 1) +
                                                    " failed: " + msg);
        }
        MESHD_LOG(info, "store.migrated", "file=%s version=%d", db_path_.c_str(), v + 1);
    }
    return {};
}

core::Result<void> Store::prepare_all() {
    stmts_.assign(s_count, nullptr);
    for (int i = 0; i < s_count; ++i) {
        if (sqlite3_prepare_v3(db_, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &stmts_[i],
                               nullptr) != SQLITE_OK)
            return core::make_error(
                "internal", db_path_ + ": cannot prepare statement: " + sqlite_message(db_));
    }
    return prepare_tasks();
}

core::Result<void> Store::load() {
    auto query = [&](const char* sql, auto&& row) {
        return detail::for_each_row(db_, db_path_, sql, row);
    };
    if (auto r = query("SELECT value FROM meta WHERE key = 'epoch'",
                       [&](sqlite3_stmt* s) { epoch_ = std::string(column_text(s, 0)); });
        !r)
        return r;
    if (epoch_.empty())
        return core::make_error("internal", db_path_ + ": has no epoch; not a meshd database?");
    if (auto r = query("SELECT pid, name, kind, created_ms, deleted_ms FROM principals",
                       [&](sqlite3_stmt* s) {
                           int64_t pid = sqlite3_column_int64(s, 0);
                           std::string name(column_text(s, 1));
                           if (sqlite3_column_type(s, 4) != SQLITE_NULL) {
                               dead_names_[pid] = std::move(name);
                               return;
                           }
                           auto p = std::make_unique<Principal>();
                           p->pid = pid;
                           p->name = std::move(name);
                           p->kind = sqlite3_column_int(s, 2) == 1 ? Kind::agent : Kind::user;
                           p->created_ms = sqlite3_column_int64(s, 3);
                           by_name_[p->name] = p.get();
                           sorted_[p->name] = p.get();
                           by_pid_[pid] = std::move(p);
                       });
        !r)
        return r;
    if (auto r = query("SELECT pid, status, note, profile, skills, hidden, last_seen_ms "
                       "FROM profiles",
                       [&](sqlite3_stmt* s) {
                           auto it = by_pid_.find(sqlite3_column_int64(s, 0));
                           if (it == by_pid_.end())
                               return;
                           Principal* p = it->second.get();
                           p->status = parse_status(column_text(s, 1)).value_or(Status::available);
                           p->note = std::string(column_text(s, 2));
                           if (sqlite3_column_type(s, 3) != SQLITE_NULL) {
                               auto profile = std::make_shared<Profile>();
                               profile->json = std::string(column_text(s, 3));
                               std::string_view skills = column_text(s, 4);
                               while (!skills.empty()) {
                                   size_t space = skills.find(' ');
                                   if (space != 0)
                                       profile->skills.emplace_back(skills.substr(0, space));
                                   if (space == std::string_view::npos)
                                       break;
                                   skills.remove_prefix(space + 1);
                               }
                               p->profile = std::move(profile);
                               index_skills(p, nullptr, p->profile.get());
                           }
                           p->hidden = sqlite3_column_int(s, 5) != 0;
                           p->last_seen_ms = sqlite3_column_int64(s, 6);
                       });
        !r)
        return r;
    if (auto r = query("SELECT pid, MIN(seq), MAX(seq) FROM log GROUP BY pid",
                       [&](sqlite3_stmt* s) {
                           auto it = by_pid_.find(sqlite3_column_int64(s, 0));
                           if (it == by_pid_.end())
                               return;
                           it->second->oldest = sqlite3_column_int64(s, 1);
                           it->second->head = it->second->committed_head =
                               sqlite3_column_int64(s, 2);
                       });
        !r)
        return r;
    if (auto r = query("SELECT pid, device, seq FROM cursors",
                       [&](sqlite3_stmt* s) {
                           auto it = by_pid_.find(sqlite3_column_int64(s, 0));
                           if (it == by_pid_.end())
                               return;
                           int64_t seq = sqlite3_column_int64(s, 2);
                           it->second->cursors[std::string(column_text(s, 1))] = seq;
                           it->second->delivered_upto =
                               std::max(it->second->delivered_upto, seq);
                       });
        !r)
        return r;
    if (auto r = query("SELECT pid, seq FROM read_markers",
                       [&](sqlite3_stmt* s) {
                           auto it = by_pid_.find(sqlite3_column_int64(s, 0));
                           if (it != by_pid_.end())
                               it->second->read_upto = sqlite3_column_int64(s, 1);
                       });
        !r)
        return r;
    if (auto r = query("SELECT pid, value FROM principal_settings WHERE name = 'read_receipts'",
                       [&](sqlite3_stmt* s) {
                           auto it = by_pid_.find(sqlite3_column_int64(s, 0));
                           if (it != by_pid_.end())
                               it->second->read_receipts = column_text(s, 1) != "off";
                       });
        !r)
        return r;
    if (auto r = query("SELECT pubkey, pid, added_ms FROM keys",
                       [&](sqlite3_stmt* s) {
                           int64_t pid = sqlite3_column_int64(s, 1);
                           const void* blob = sqlite3_column_blob(s, 0);
                           auto len = static_cast<size_t>(sqlite3_column_bytes(s, 0));
                           if (!blob || len != ed25519_key_bytes || !by_pid_.contains(pid))
                               return;
                           keys_[std::string(static_cast<const char*>(blob), len)] =
                               KeyEntry{pid, sqlite3_column_int64(s, 2)};
                       });
        !r)
        return r;
    std::unordered_map<int64_t, Group*> by_gid;
    if (auto r = query("SELECT gid, name FROM groups",
                       [&](sqlite3_stmt* s) {
                           Group g;
                           g.gid = sqlite3_column_int64(s, 0);
                           g.name = std::string(column_text(s, 1));
                           std::string name = g.name;
                           by_gid[g.gid] = &(groups_[name] = std::move(g));
                       });
        !r)
        return r;
    // Members in pid order; the map above stays valid (no insertion into groups_ below).
    return query("SELECT gid, pid FROM group_members ORDER BY gid, pid", [&](sqlite3_stmt* s) {
        auto g = by_gid.find(sqlite3_column_int64(s, 0));
        auto p = by_pid_.find(sqlite3_column_int64(s, 1));
        if (g != by_gid.end() && p != by_pid_.end())
            g->second->members.push_back(p->second.get());
    });
}

Principal* Store::find(std::string_view name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : it->second;
}

Principal* Store::find_pid(int64_t pid) const {
    auto it = by_pid_.find(pid);
    if (it == by_pid_.end() || find(it->second->name) != it->second.get())
        return nullptr;
    return it->second.get();
}

void Store::for_each_principal(const std::function<void(Principal&)>& fn) const {
    for (const auto& [pid, p] : by_pid_)
        fn(*p);
}

core::Result<void> Store::begin_if_needed() {
    if (batch_failed_)
        return core::make_error("unavailable", batch_error_);
    if (in_txn_)
        return {};
    last_write_errno(); // a failure of this batch is told with its own errno
    sqlite3_stmt* s = stmt(s_begin);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE)
        return fail_batch("begin");
    in_txn_ = true;
    return {};
}

core::Error Store::fail_batch(const char* what) {
    if (!batch_failed_) {
        batch_failed_ = true;
        std::string why = sqlite_message(db_);
        int err = last_write_errno();
        if (err != 0 && err != ENOSPC && (sqlite3_errcode(db_) & 0xff) == SQLITE_IOERR)
            why += std::string(" (") + std::strerror(err) + ")"; // ENOSPC: SQLite says "full"
        batch_error_ = std::string("storage cannot take the write now (") + what + ": " +
                       why + "); nothing was stored, retry later";
    }
    return core::make_error("unavailable", batch_error_);
}

void Store::touch(Principal* p) {
    if (p->in_batch)
        return;
    p->in_batch = true;
    head_undo_.push_back({p, p->head});
    touched_.push_back(p);
}

void Store::token_hash(std::string_view token, unsigned char out[32]) const {
    crypto_generichash(out, 32, reinterpret_cast<const unsigned char*>(token.data()), token.size(),
                       secret_, sizeof secret_);
}

core::Result<Principal*> Store::add_principal(std::string_view name, Kind kind, int64_t now_ms) {
    if (find(name))
        return core::make_error("exists",
                                "a principal named '" + std::string(name) + "' already exists");
    if (auto r = begin_if_needed(); !r)
        return r.error();
    sqlite3_stmt* s = stmt(s_insert_principal);
    StmtGuard g(s);
    bind_text(s, 1, name);
    sqlite3_bind_int(s, 2, kind == Kind::agent ? 1 : 0);
    sqlite3_bind_int64(s, 3, now_ms);
    if (sqlite3_step(s) != SQLITE_DONE)
        return fail_batch("add principal");
    auto p = std::make_unique<Principal>();
    p->pid = sqlite3_last_insert_rowid(db_);
    p->name = std::string(name);
    p->kind = kind;
    p->created_ms = now_ms;
    Principal* raw = p.get();
    by_name_[raw->name] = raw;
    sorted_[raw->name] = raw;
    by_pid_[raw->pid] = std::move(p);
    int64_t pid = raw->pid;
    undo_.push_back([this, pid] {
        auto it = by_pid_.find(pid);
        if (it == by_pid_.end())
            return;
        Principal* gone = it->second.get();
        std::erase_if(dirty_cursors_, [gone](const auto& d) { return d.first == gone; });
        tail_drop(gone);
        index_skills(gone, gone->profile.get(), nullptr);
        by_name_.erase(gone->name);
        sorted_.erase(gone->name);
        by_pid_.erase(it);
    });
    return raw;
}

core::Result<void> Store::delete_principal(Principal* p) {
    if (auto r = begin_if_needed(); !r)
        return r;
    int64_t now = core::wall_ms();
    {
        sqlite3_stmt* s = stmt(s_delete_principal);
        StmtGuard g(s);
        sqlite3_bind_int64(s, 1, p->pid);
        sqlite3_bind_int64(s, 2, now);
        if (sqlite3_step(s) != SQLITE_DONE)
            return fail_batch("delete principal");
    }
    // The messages in its log lose those references; the ones no other log holds go too.
    {
        std::unordered_map<int64_t, int64_t> refs;
        sqlite3_stmt* s = stmt(s_mids_of);
        StmtGuard g(s);
        sqlite3_bind_int64(s, 1, p->pid);
        int rc;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW)
            ++refs[sqlite3_column_int64(s, 0)];
        if (rc != SQLITE_DONE)
            return fail_batch("delete principal");
        for (const auto& [mid, count] : refs)
            if (auto r = drop_reference(mid, count, "delete principal"); !r)
                return r.error();
    }
    for (int which : {s_delete_log_of, s_delete_cursors_of, s_delete_tokens_of,
                      s_delete_memberships_of, s_delete_keys_of, s_delete_profile_of,
                      s_delete_read_marker_of, s_delete_settings_of}) {
        sqlite3_stmt* s = stmt(which);
        StmtGuard g(s);
        sqlite3_bind_int64(s, 1, p->pid);
        if (sqlite3_step(s) != SQLITE_DONE)
            return fail_batch("delete principal");
    }
    // Its pending cursors go with it, and come back if the batch fails (they are acks).
    std::vector<std::pair<Principal*, std::string>> cursors;
    for (auto& d : dirty_cursors_)
        if (d.first == p)
            cursors.push_back(std::move(d));
    std::erase_if(dirty_cursors_, [p](const auto& d) { return d.first == p; });
    // Out of every group, in memory too (restored if the batch fails).
    std::vector<std::string> left;
    for (auto& [name, g] : groups_)
        if (std::erase(g.members, p) > 0)
            left.push_back(name);
    if (!left.empty())
        undo_.push_back([this, p, left] {
            for (const auto& name : left)
                if (auto it = groups_.find(name); it != groups_.end())
                    insert_member(it->second, p);
        });
    // Its keys stop working at once (restored if the batch fails).
    std::vector<std::pair<std::string, KeyEntry>> keys;
    for (auto it = keys_.begin(); it != keys_.end();) {
        if (it->second.pid == p->pid) {
            keys.emplace_back(it->first, it->second);
            it = keys_.erase(it);
        } else {
            ++it;
        }
    }
    if (!keys.empty())
        undo_.push_back([this, keys = std::move(keys)] {
            for (const auto& [pubkey, entry] : keys)
                keys_.insert_or_assign(pubkey, entry);
        });
    // The name is free for a new principal at once; the object lives until the batch ends
    // so that callers holding it in this turn stay safe.
    // It leaves the directory at once too (who, skills).
    index_skills(p, p->profile.get(), nullptr);
    by_name_.erase(p->name);
    sorted_.erase(p->name);
    int64_t pid = p->pid;
    undo_.push_back([this, pid, cursors = std::move(cursors)]() mutable {
        auto it = by_pid_.find(pid);
        if (it == by_pid_.end())
            return;
        Principal* back = it->second.get();
        by_name_[back->name] = back;
        sorted_[back->name] = back;
        index_skills(back, nullptr, back->profile.get());
        for (auto& d : cursors)
            dirty_cursors_.push_back(std::move(d));
    });
    on_ok_.push_back([this, pid] {
        auto it = by_pid_.find(pid);
        if (it == by_pid_.end())
            return;
        dead_names_[pid] = it->second->name;
        std::erase(touched_, it->second.get());
        tail_drop(it->second.get());
        retired_.push_back(std::move(it->second));
        by_pid_.erase(it);
    });
    return {};
}

core::Result<void> Store::set_token(Principal* p, std::string_view token, int64_t now_ms) {
    if (auto r = begin_if_needed(); !r)
        return r;
    {
        sqlite3_stmt* s = stmt(s_delete_tokens_of);
        StmtGuard g(s);
        sqlite3_bind_int64(s, 1, p->pid);
        if (sqlite3_step(s) != SQLITE_DONE)
            return fail_batch("replace token");
    }
    unsigned char hash[32];
    token_hash(token, hash);
    sqlite3_stmt* s = stmt(s_insert_token);
    StmtGuard g(s);
    sqlite3_bind_blob(s, 1, hash, sizeof hash, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 2, p->pid);
    sqlite3_bind_int64(s, 3, now_ms);
    if (sqlite3_step(s) != SQLITE_DONE)
        return fail_batch("store token");
    return {};
}

Principal* Store::verify_token(std::string_view token) {
    unsigned char hash[32];
    token_hash(token, hash);
    sqlite3_stmt* s = stmt(s_find_token);
    StmtGuard g(s);
    sqlite3_bind_blob(s, 1, hash, sizeof hash, SQLITE_TRANSIENT);
    if (sqlite3_step(s) != SQLITE_ROW)
        return nullptr;
    auto it = by_pid_.find(sqlite3_column_int64(s, 0));
    if (it == by_pid_.end() || find(it->second->name) != it->second.get())
        return nullptr;
    return it->second.get();
}

// ---- ed25519 keys -----------------------------------------------------------------------

core::Result<void> Store::add_key(Principal* p, std::string_view pubkey, int64_t now_ms) {
    if (pubkey.size() != ed25519_key_bytes)
        return core::make_error("bad_key", "an ed25519 public key is 32 bytes, got " +
                                               std::to_string(pubkey.size()));
    std::string key(pubkey);
    if (auto it = keys_.find(key); it != keys_.end()) {
        if (it->second.pid == p->pid)
            return core::make_error("exists", "this key is already registered for " + p->name);
        auto owner = by_pid_.find(it->second.pid);
        std::string name = owner != by_pid_.end() ? owner->second->name : "another principal";
        return core::make_error("conflict", "this key is already registered for " + name +
                                                "; a key belongs to one principal: revoke it "
                                                "there first (meshctl key revoke " +
                                                name + " PUBKEY)");
    }
    if (auto r = begin_if_needed(); !r)
        return r;
    sqlite3_stmt* s = stmt(s_insert_key);
    StmtGuard g(s);
    sqlite3_bind_blob(s, 1, key.data(), static_cast<int>(key.size()), SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, p->pid);
    sqlite3_bind_int64(s, 3, now_ms);
    if (sqlite3_step(s) != SQLITE_DONE)
        return fail_batch("add key");
    keys_[key] = KeyEntry{p->pid, now_ms};
    undo_.push_back([this, key] { keys_.erase(key); });
    return {};
}

core::Result<void> Store::revoke_key(Principal* p, std::string_view pubkey) {
    std::string key(pubkey);
    auto it = keys_.find(key);
    if (it == keys_.end() || it->second.pid != p->pid)
        return core::make_error("not_found", p->name + " has no such key (meshctl key list " +
                                                 p->name + " shows them)");
    if (auto r = begin_if_needed(); !r)
        return r;
    sqlite3_stmt* s = stmt(s_delete_key);
    StmtGuard g(s);
    sqlite3_bind_blob(s, 1, key.data(), static_cast<int>(key.size()), SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, p->pid);
    if (sqlite3_step(s) != SQLITE_DONE)
        return fail_batch("revoke key");
    KeyEntry old = it->second;
    keys_.erase(it);
    undo_.push_back([this, key, old] { keys_.insert_or_assign(key, old); });
    return {};
}

std::vector<StoredKey> Store::keys(const Principal* p) const {
    std::vector<StoredKey> out;
    for (const auto& [pubkey, entry] : keys_) {
        if (p && entry.pid != p->pid)
            continue;
        auto owner = by_pid_.find(entry.pid);
        // Only live principals: a deleted one may wait in by_pid_ for its batch to end.
        if (owner == by_pid_.end() || find(owner->second->name) != owner->second.get())
            continue;
        out.push_back({owner->second.get(), pubkey, entry.added_ms});
    }
    std::sort(out.begin(), out.end(), [](const StoredKey& a, const StoredKey& b) {
        return std::tie(a.principal->name, a.added_ms, a.pubkey) <
               std::tie(b.principal->name, b.added_ms, b.pubkey);
    });
    return out;
}

bool Store::key_registered(const Principal& p, std::string_view pubkey) const {
    if (pubkey.size() != ed25519_key_bytes)
        return false;
    auto it = keys_.find(std::string(pubkey));
    return it != keys_.end() && it->second.pid == p.pid;
}

core::Result<AppendResult> Store::append(Principal* sender, std::string_view to,
                                         std::span<Principal* const> recipients,
                                         std::string_view body, std::string_view client_id,
                                         int64_t ts) {
    return append(sender, to, recipients, body, client_id, ts, AppendExtra{});
}

core::Result<AppendResult> Store::append(Principal* sender, std::string_view to,
                                         std::span<Principal* const> recipients,
                                         std::string_view body, std::string_view client_id,
                                         int64_t ts, const AppendExtra& extra) {
    if (auto r = begin_if_needed(); !r)
        return r.error();
    unsigned char fingerprint[16];
    if (!client_id.empty()) {
        crypto_generichash_state st;
        crypto_generichash_init(&st, nullptr, 0, sizeof fingerprint);
        crypto_generichash_update(&st, reinterpret_cast<const unsigned char*>(to.data()),
                                  to.size());
        const unsigned char zero = 0;
        crypto_generichash_update(&st, &zero, 1);
        crypto_generichash_update(&st, reinterpret_cast<const unsigned char*>(body.data()),
                                  body.size());
        crypto_generichash_final(&st, fingerprint, sizeof fingerprint);

        sqlite3_stmt* s = stmt(s_find_dedupe);
        StmtGuard g(s);
        sqlite3_bind_int64(s, 1, sender->pid);
        bind_text(s, 2, client_id);
        int rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) {
            int64_t mid = sqlite3_column_int64(s, 0);
            int64_t first_ts = sqlite3_column_int64(s, 1);
            bool same =
                sqlite3_column_bytes(s, 2) == sizeof fingerprint &&
                std::memcmp(sqlite3_column_blob(s, 2), fingerprint, sizeof fingerprint) == 0;
            int64_t seq = sqlite3_column_int64(s, 3);
            if (first_ts >= ts - options_.dedupe_window_s * 1000) {
                if (!same)
                    return core::make_error(
                        "conflict", "id '" + std::string(client_id) +
                                        "' was already used for a different message; use a new "
                                        "id for a new message");
                return AppendResult{seq, true};
            }
            // Outside the window: the old message keeps its data but no longer its id.
            sqlite3_reset(s);
            sqlite3_stmt* c = stmt(s_clear_dedupe);
            StmtGuard gc(c);
            sqlite3_bind_int64(c, 1, mid);
            if (sqlite3_step(c) != SQLITE_DONE)
                return fail_batch("dedupe");
        } else if (rc != SQLITE_DONE) {
            return fail_batch("dedupe lookup");
        }
    }

    touch(sender);
    int64_t sender_seq = sender->head + 1;
    // Each recipient once (a routing module may list one twice), the sender's own entry aside;
    // messages.copies lists the seqs their entries will get.
    ++append_no_;
    sender->append_mark = append_no_;
    unique_recipients_.clear();
    copies_buf_.clear();
    for (Principal* r : recipients) {
        if (r->append_mark == append_no_)
            continue;
        r->append_mark = append_no_;
        unique_recipients_.push_back(r);
        if (!copies_buf_.empty())
            copies_buf_ += ' ';
        core::json_append_int(copies_buf_, r->pid); // a JSON number is the decimal we want
        copies_buf_ += ':';
        core::json_append_int(copies_buf_, r->head + 1);
    }
    int64_t mid = 0;
    {
        sqlite3_stmt* s = stmt(s_insert_msg);
        StmtGuard g(s);
        sqlite3_bind_int64(s, 1, sender->pid);
        bind_text(s, 2, to);
        sqlite3_bind_int64(s, 3, ts);
        bind_text(s, 4, body);
        if (client_id.empty()) {
            sqlite3_bind_null(s, 5);
            sqlite3_bind_null(s, 6);
        } else {
            bind_text(s, 5, client_id);
            sqlite3_bind_blob(s, 6, fingerprint, sizeof fingerprint, SQLITE_STATIC);
        }
        sqlite3_bind_int64(s, 7, sender_seq);
        if (extra.task.empty())
            sqlite3_bind_null(s, 8);
        else
            bind_text(s, 8, extra.task);
        sqlite3_bind_int64(s, 9, static_cast<int64_t>(unique_recipients_.size()) + 1);
        if (copies_buf_.empty())
            sqlite3_bind_null(s, 10);
        else
            bind_text(s, 10, copies_buf_);
        if (sqlite3_step(s) != SQLITE_DONE)
            return fail_batch("insert message");
        mid = sqlite3_last_insert_rowid(db_);
    }

    auto msg = std::make_shared<MessageData>();
    msg->from = sender->name;
    msg->to = std::string(to);
    msg->client_id = std::string(client_id);
    msg->ts = ts;
    msg->body = std::string(body);
    msg->sender_pid = sender->pid;
    msg->sender_seq = sender_seq;
    msg->task = std::string(extra.task);
    MessageRef ref = std::move(msg);

    auto add_entry = [&](Principal* p) -> bool {
        touch(p);
        int64_t seq = ++p->head;
        sqlite3_stmt* s = stmt(s_insert_log);
        StmtGuard g(s);
        sqlite3_bind_int64(s, 1, p->pid);
        sqlite3_bind_int64(s, 2, seq);
        sqlite3_bind_int64(s, 3, mid);
        if (sqlite3_step(s) != SQLITE_DONE)
            return false;
        tail_push(p, {seq, ref});
        return true;
    };
    // The sender's own entry first: its seq was promised to the dedupe record above.
    if (!add_entry(sender))
        return fail_batch("append to log");
    for (Principal* r : unique_recipients_)
        if (!add_entry(r))
            return fail_batch("append to log");
    ++batch_messages_;
    tail_evict();
    return AppendResult{sender_seq, false, mid};
}

core::Result<void> Store::read_page(const Principal& p, int64_t from_seq, size_t max_rows,
                                    size_t max_bytes, std::vector<LogEntry>& out) {
    out.clear();
    sqlite3_stmt* s = stmt(s_read_page);
    StmtGuard g(s);
    sqlite3_bind_int64(s, 1, p.pid);
    sqlite3_bind_int64(s, 2, from_seq);
    sqlite3_bind_int64(s, 3, p.committed_head);
    sqlite3_bind_int64(s, 4, static_cast<int64_t>(max_rows));
    size_t bytes = 0;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        auto msg = std::make_shared<MessageData>();
        msg->from = std::string(column_text(s, 1));
        msg->to = std::string(column_text(s, 2));
        msg->ts = sqlite3_column_int64(s, 3);
        msg->body = std::string(column_text(s, 4));
        msg->client_id = std::string(column_text(s, 5));
        msg->sender_pid = sqlite3_column_int64(s, 6);
        msg->sender_seq = sqlite3_column_int64(s, 7);
        msg->task = std::string(column_text(s, 8));
        bytes += msg->body.size();
        out.push_back({sqlite3_column_int64(s, 0), std::move(msg)});
        if (bytes >= max_bytes)
            break;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return core::make_error("unavailable",
                                std::string("cannot read the log: ") + sqlite_message(db_));
    return {};
}

int64_t Store::cursor(const Principal& p, std::string_view device) const {
    auto it = p.cursors.find(std::string(device));
    return it == p.cursors.end() ? 0 : it->second;
}

void Store::set_cursor(Principal& p, std::string_view device, int64_t seq) {
    auto [it, inserted] = p.cursors.try_emplace(std::string(device), seq);
    if (!inserted) {
        if (seq <= it->second)
            return;
        it->second = seq;
    }
    p.delivered_upto = std::max(p.delivered_upto, seq);
    for (const auto& d : dirty_cursors_)
        if (d.first == &p && d.second == device)
            return;
    dirty_cursors_.emplace_back(&p, std::string(device));
}

core::Result<void> Store::forget_device(Principal& p, std::string_view device) {
    if (auto r = begin_if_needed(); !r)
        return r;
    sqlite3_stmt* s = stmt(s_delete_cursor);
    StmtGuard g(s);
    sqlite3_bind_int64(s, 1, p.pid);
    bind_text(s, 2, device);
    if (sqlite3_step(s) != SQLITE_DONE)
        return fail_batch("forget device");
    std::string name(device);
    std::erase_if(dirty_cursors_, [&](const auto& d) { return d.first == &p && d.second == name; });
    auto it = p.cursors.find(name);
    if (it == p.cursors.end())
        return {};
    int64_t old = it->second;
    p.cursors.erase(it);
    // What the forgotten device acknowledged no longer counts as delivered.
    auto recompute = [](Principal& q) {
        q.delivered_upto = 0;
        for (const auto& [d, seq] : q.cursors)
            q.delivered_upto = std::max(q.delivered_upto, seq);
    };
    recompute(p);
    int64_t pid = p.pid;
    undo_.push_back([this, pid, name, old, recompute] {
        auto pit = by_pid_.find(pid);
        if (pit == by_pid_.end())
            return;
        pit->second->cursors[name] = old;
        recompute(*pit->second);
    });
    return {};
}

core::Result<void> Store::set_read_marker(Principal& p, int64_t seq, int64_t now_ms) {
    if (seq <= p.read_upto)
        return {};
    if (auto r = begin_if_needed(); !r)
        return r;
    sqlite3_stmt* s = stmt(s_upsert_read_marker);
    StmtGuard g(s);
    sqlite3_bind_int64(s, 1, p.pid);
    sqlite3_bind_int64(s, 2, seq);
    sqlite3_bind_int64(s, 3, now_ms);
    if (sqlite3_step(s) != SQLITE_DONE)
        return fail_batch("store read marker");
    int64_t old = p.read_upto;
    p.read_upto = seq;
    int64_t pid = p.pid;
    undo_.push_back([this, pid, old] {
        auto it = by_pid_.find(pid);
        if (it != by_pid_.end())
            it->second->read_upto = std::min(it->second->read_upto, old);
    });
    return {};
}

core::Result<void> Store::set_read_receipts(Principal& p, bool on) {
    if (auto r = begin_if_needed(); !r)
        return r;
    sqlite3_stmt* s = stmt(s_upsert_setting);
    StmtGuard g(s);
    sqlite3_bind_int64(s, 1, p.pid);
    bind_text(s, 2, "read_receipts");
    bind_text(s, 3, on ? "on" : "off");
    if (sqlite3_step(s) != SQLITE_DONE)
        return fail_batch("store setting");
    bool old = p.read_receipts;
    p.read_receipts = on;
    int64_t pid = p.pid;
    undo_.push_back([this, pid, old] {
        auto it = by_pid_.find(pid);
        if (it != by_pid_.end())
            it->second->read_receipts = old;
    });
    return {};
}

// ---- directory ------------------------------------------------------------------------

void Store::index_skills(Principal* p, const Profile* before, const Profile* after) {
    if (before)
        for (const std::string& skill : before->skills) {
            auto it = skills_.find(skill);
            if (it == skills_.end())
                continue;
            it->second.erase(p->name);
            if (it->second.empty())
                skills_.erase(it);
        }
    if (after)
        for (const std::string& skill : after->skills)
            skills_[skill][p->name] = p;
}

const Store::ByName* Store::principals_with_skill(std::string_view skill) const {
    auto it = skills_.find(std::string(skill));
    return it == skills_.end() ? nullptr : &it->second;
}

core::Result<void> Store::set_status(Principal& p, Status status, std::string_view note) {
    if (auto r = begin_if_needed(); !r)
        return r;
    sqlite3_stmt* s = stmt(s_upsert_status);
    StmtGuard g(s);
    sqlite3_bind_int64(s, 1, p.pid);
    bind_text(s, 2, to_string(status));
    bind_text(s, 3, note);
    if (sqlite3_step(s) != SQLITE_DONE)
        return fail_batch("set status");
    undo_.push_back([this, pid = p.pid, status = p.status, note = p.note] {
        if (auto it = by_pid_.find(pid); it != by_pid_.end()) {
            it->second->status = status;
            it->second->note = note;
        }
    });
    p.status = status;
    p.note = std::string(note);
    return {};
}

core::Result<void> Store::set_profile(Principal& p, ProfileRef profile) {
    if (auto r = begin_if_needed(); !r)
        return r;
    std::string skills;
    if (profile)
        for (const std::string& skill : profile->skills) {
            if (!skills.empty())
                skills += ' ';
            skills += skill;
        }
    sqlite3_stmt* s = stmt(s_upsert_profile);
    StmtGuard g(s);
    sqlite3_bind_int64(s, 1, p.pid);
    if (profile)
        bind_text(s, 2, profile->json);
    else
        sqlite3_bind_null(s, 2);
    bind_text(s, 3, skills);
    if (sqlite3_step(s) != SQLITE_DONE)
        return fail_batch("set profile");
    index_skills(&p, p.profile.get(), profile.get());
    undo_.push_back([this, pid = p.pid, old = p.profile] {
        auto it = by_pid_.find(pid);
        if (it == by_pid_.end())
            return;
        Principal* q = it->second.get();
        if (is_live(*q))
            index_skills(q, q->profile.get(), old.get());
        q->profile = old;
    });
    p.profile = std::move(profile);
    return {};
}

core::Result<void> Store::set_hidden(Principal& p, bool hidden) {
    if (auto r = begin_if_needed(); !r)
        return r;
    sqlite3_stmt* s = stmt(s_upsert_hidden);
    StmtGuard g(s);
    sqlite3_bind_int64(s, 1, p.pid);
    sqlite3_bind_int(s, 2, hidden ? 1 : 0);
    if (sqlite3_step(s) != SQLITE_DONE)
        return fail_batch("hide principal");
    undo_.push_back([this, pid = p.pid, old = p.hidden] {
        if (auto it = by_pid_.find(pid); it != by_pid_.end())
            it->second->hidden = old;
    });
    p.hidden = hidden;
    return {};
}

void Store::set_last_seen(Principal& p, int64_t wall_ms) {
    p.last_seen_ms = wall_ms;
    // A deleted principal's row is gone with it; writing now would bring it back.
    if (!is_live(p) || !begin_if_needed())
        return;
    sqlite3_stmt* s = stmt(s_upsert_last_seen);
    StmtGuard g(s);
    sqlite3_bind_int64(s, 1, p.pid);
    sqlite3_bind_int64(s, 2, wall_ms);
    if (sqlite3_step(s) != SQLITE_DONE)
        fail_batch("store last seen");
}

// ---- groups ---------------------------------------------------------------------------

void Store::insert_member(Group& g, Principal* p) {
    auto pos =
        std::lower_bound(g.members.begin(), g.members.end(), p,
                         [](const Principal* a, const Principal* b) { return a->pid < b->pid; });
    if (pos == g.members.end() || *pos != p)
        g.members.insert(pos, p);
}

const Group* Store::find_group(std::string_view name) const {
    auto it = groups_.find(std::string(name));
    return it == groups_.end() ? nullptr : &it->second;
}

void Store::for_each_group(const std::function<void(const Group&)>& fn) const {
    for (const auto& [name, g] : groups_)
        fn(g);
}

core::Result<std::vector<Principal*>>
Store::group_add(std::string_view name, std::span<Principal* const> members, int64_t now_ms) {
    if (auto r = begin_if_needed(); !r)
        return r.error();
    std::string key(name);
    auto it = groups_.find(key);
    if (it == groups_.end()) {
        sqlite3_stmt* s = stmt(s_insert_group);
        StmtGuard g(s);
        bind_text(s, 1, name);
        sqlite3_bind_int64(s, 2, now_ms);
        if (sqlite3_step(s) != SQLITE_DONE)
            return fail_batch("add group");
        Group fresh;
        fresh.gid = sqlite3_last_insert_rowid(db_);
        fresh.name = key;
        it = groups_.emplace(key, std::move(fresh)).first;
        undo_.push_back([this, key] { groups_.erase(key); });
    }
    Group& group = it->second;
    std::vector<Principal*> added;
    for (Principal* p : members) {
        if (std::find(group.members.begin(), group.members.end(), p) != group.members.end() ||
            std::find(added.begin(), added.end(), p) != added.end())
            continue;
        sqlite3_stmt* s = stmt(s_insert_member);
        StmtGuard g(s);
        sqlite3_bind_int64(s, 1, group.gid);
        sqlite3_bind_int64(s, 2, p->pid);
        if (sqlite3_step(s) != SQLITE_DONE)
            return fail_batch("add group member");
        added.push_back(p);
    }
    for (Principal* p : added)
        insert_member(group, p);
    if (!added.empty())
        undo_.push_back([this, key, added] {
            auto git = groups_.find(key);
            if (git != groups_.end())
                for (Principal* p : added)
                    std::erase(git->second.members, p);
        });
    return added;
}

core::Result<std::vector<Principal*>> Store::group_remove(std::string_view name,
                                                          std::span<Principal* const> members) {
    std::string key(name);
    auto it = groups_.find(key);
    if (it == groups_.end())
        return core::make_error("not_found", "no group named #" + key);
    if (auto r = begin_if_needed(); !r)
        return r.error();
    Group& group = it->second;
    std::vector<Principal*> removed;
    for (Principal* p : members) {
        if (std::find(group.members.begin(), group.members.end(), p) == group.members.end())
            continue;
        sqlite3_stmt* s = stmt(s_delete_member);
        StmtGuard g(s);
        sqlite3_bind_int64(s, 1, group.gid);
        sqlite3_bind_int64(s, 2, p->pid);
        if (sqlite3_step(s) != SQLITE_DONE)
            return fail_batch("remove group member");
        std::erase(group.members, p);
        removed.push_back(p);
    }
    if (!removed.empty())
        undo_.push_back([this, key, removed] {
            auto git = groups_.find(key);
            if (git != groups_.end())
                for (Principal* p : removed)
                    insert_member(git->second, p);
        });
    return removed;
}

core::Result<void> Store::group_delete(std::string_view name) {
    std::string key(name);
    auto it = groups_.find(key);
    if (it == groups_.end())
        return core::make_error("not_found", "no group named #" + key);
    if (auto r = begin_if_needed(); !r)
        return r;
    for (int which : {s_delete_members_of_group, s_delete_group}) {
        sqlite3_stmt* s = stmt(which);
        StmtGuard g(s);
        sqlite3_bind_int64(s, 1, it->second.gid);
        if (sqlite3_step(s) != SQLITE_DONE)
            return fail_batch("delete group");
    }
    Group old = std::move(it->second);
    groups_.erase(it);
    undo_.push_back(
        [this, key, old = std::move(old)]() mutable { groups_.emplace(key, std::move(old)); });
    return {};
}

void Store::rollback_batch() {
    if (in_txn_) {
        sqlite3_stmt* s = stmt(s_rollback);
        sqlite3_step(s);
        sqlite3_reset(s);
        // A failed COMMIT may already have ended the transaction; make sure it is gone.
        if (!sqlite3_get_autocommit(db_))
            sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    }
    for (const HeadUndo& u : head_undo_) {
        u.p->head = u.head;
        u.p->in_batch = false;
        tail_truncate(u.p, u.head);
    }
    head_undo_.clear();
    for (auto it = undo_.rbegin(); it != undo_.rend(); ++it)
        (*it)();
}

core::Result<void> Store::commit(std::vector<Principal*>& touched_out) {
    touched_out.clear();
    const auto started = std::chrono::steady_clock::now();
    // Cursors are written with the batch; a cursor-only turn opens its own transaction.
    if (!dirty_cursors_.empty() && !batch_failed_) {
        if (begin_if_needed()) {
            int64_t now = core::wall_ms();
            sqlite3_stmt* s = stmt(s_upsert_cursor);
            for (const auto& [p, device] : dirty_cursors_) {
                StmtGuard g(s);
                sqlite3_bind_int64(s, 1, p->pid);
                bind_text(s, 2, device);
                sqlite3_bind_int64(s, 3, p->cursors[device]);
                sqlite3_bind_int64(s, 4, now);
                if (sqlite3_step(s) != SQLITE_DONE) {
                    fail_batch("store cursor");
                    break;
                }
            }
        }
    }
    core::Result<void> result;
    if (!batch_failed_ && in_txn_) {
        sqlite3_stmt* s = stmt(s_commit);
        int rc = sqlite3_step(s);
        sqlite3_reset(s);
        if (rc != SQLITE_DONE)
            fail_batch("commit");
    }
    if (batch_failed_) {
        result = core::make_error("unavailable", batch_error_);
        metrics_.commit_failures.inc();
        rollback_batch();
        if (!degraded_)
            MESHD_LOG(error, "store.degraded", "message=%s", core::log_value(batch_error_).c_str());
        degraded_ = true;
        degraded_message_ = batch_error_;
        // Cursors stay in memory and are retried with the next batch.
    } else {
        if (in_txn_) {
            ++batch_no_;
            std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
            metrics_.commit_seconds.observe(took.count());
            if (batch_messages_ > 0) {
                metrics_.batch_messages.observe(static_cast<double>(batch_messages_));
                metrics_.messages_stored.add(static_cast<double>(batch_messages_));
            }
        }
        if (syncer_ && in_txn_) {
            UndurableBatch b{batch_no_, {}};
            b.heads.reserve(touched_.size());
            for (Principal* p : touched_)
                b.heads.emplace_back(p->pid, p->head);
            undurable_.push_back(std::move(b));
            syncer_->request(batch_no_);
        } else {
            for (Principal* p : touched_)
                p->committed_head = p->head;
            touched_out.swap(touched_);
        }
        for (const HeadUndo& u : head_undo_)
            u.p->in_batch = false;
        for (auto& fn : on_ok_)
            fn();
        if (in_txn_)
            wal_catch_up();
        dirty_cursors_.clear();
        if (degraded_ && in_txn_) {
            MESHD_LOG(info, "store.recovered", "file=%s", db_path_.c_str());
            degraded_ = false;
            degraded_message_.clear();
        }
    }
    in_txn_ = false;
    batch_failed_ = false;
    batch_messages_ = 0;
    batch_error_.clear();
    head_undo_.clear();
    touched_.clear();
    undo_.clear();
    on_ok_.clear();
    return result;
}

// ---- WAL size ----------------------------------------------------------------------------

// The WAL can only restart from its beginning after a checkpoint that backfilled every frame,
// and the Checkpointer's PASSIVE passes never finish while the loop keeps committing: under
// saturating writes the file grew by about 170 MB/s (16 senders x 8 in flight). So once the
// WAL is over storage.checkpoint_wal_bytes, in two steps: the helper is asked for a catch-up
// (passes that copy the bulk and sync the database file, off the loop, until the tail is
// small); when it is done, the loop runs one PASSIVE checkpoint itself, which only has that
// tail to copy. No frame is added meanwhile, so it completes and the next transaction
// restarts the WAL. Doing the whole copy on the loop cost a quarter of the p2p throughput.
void Store::wal_catch_up() {
    auto now = std::chrono::steady_clock::now();
    if (!wal_helper_asked_) {
        if (now - wal_checked_ < std::chrono::milliseconds(20))
            return; // a stat() at most every 20 ms
        wal_checked_ = now;
        if (file_size(db_path_ + "-wal") <= options_.checkpoint_wal_bytes)
            return;
        wal_helper_asked_ = true;
        wal_helper_pass_ = checkpointer_->catch_ups();
        checkpointer_->request();
        return;
    }
    if (checkpointer_->catch_ups() == wal_helper_pass_)
        return; // the helper's catch-up is still running
    wal_helper_asked_ = false;
    int wal_frames = 0, backfilled = 0;
    int rc = sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_PASSIVE, &wal_frames,
                                       &backfilled);
    if (rc == SQLITE_OK && wal_frames == backfilled)
        wal_catch_ups_.inc();
    std::chrono::duration<double, std::milli> took = std::chrono::steady_clock::now() - now;
    MESHD_LOG(debug, "store.wal_catch_up", "rc=%d frames=%d backfilled=%d ms=%.1f", rc,
              wal_frames, backfilled, took.count());
}

// ---- retention ---------------------------------------------------------------------------

void Store::set_retention(int64_t retention_days, int64_t max_log_entries) {
    options_.retention_days = retention_days;
    options_.max_log_entries = max_log_entries;
}

core::Result<void> Store::drop_reference(int64_t mid, int64_t count, const char* what) {
    for (int which : {s_drop_refs, s_delete_unreferenced}) {
        sqlite3_stmt* s = stmt(which);
        StmtGuard g(s);
        sqlite3_bind_int64(s, 1, mid);
        if (which == s_drop_refs)
            sqlite3_bind_int64(s, 2, count);
        if (sqlite3_step(s) != SQLITE_DONE)
            return fail_batch(what);
    }
    return {};
}

core::Result<size_t> Store::retention_step(int64_t now_ms, size_t budget) {
    if (!retention_enabled() || budget == 0 || batch_failed_)
        return size_t{0};
    const int64_t cutoff_ms = options_.retention_days > 0
                                  ? now_ms - options_.retention_days * 86400 * 1000
                                  : INT64_MIN;
    size_t deleted = 0;
    // Principals in pid order, a few per call; a round ends when every one was visited.
    if (retention_round_.empty()) {
        for (const auto& [pid, p] : by_pid_)
            retention_round_.push_back(pid);
        std::sort(retention_round_.begin(), retention_round_.end(), std::greater<>());
    }
    while (deleted < budget && !retention_round_.empty()) {
        int64_t pid = retention_round_.back();
        auto it = by_pid_.find(pid);
        if (it == by_pid_.end() || !by_name_.contains(it->second->name)) {
            retention_round_.pop_back();
            continue;
        }
        Principal* p = it->second.get();
        // The newest entry stays: it carries the head across a restart.
        const int64_t keep_from = p->committed_head;
        int64_t cut = p->oldest - 1; // delete seqs oldest..cut
        const int64_t room = static_cast<int64_t>(budget - deleted);
        if (options_.max_log_entries > 0)
            cut = std::max(cut, p->committed_head - options_.max_log_entries);
        cut = std::min({cut, keep_from - 1, p->oldest + room - 1});
        if (options_.retention_days > 0 && cut < std::min(keep_from - 1, p->oldest + room - 1)) {
            // By age: entries in seq order until the first one young enough to keep.
            sqlite3_stmt* s = stmt(s_retention_scan);
            StmtGuard g(s);
            sqlite3_bind_int64(s, 1, pid);
            sqlite3_bind_int64(s, 2, cut + 1);
            sqlite3_bind_int64(s, 3, std::min(keep_from - 1, p->oldest + room - 1));
            int rc;
            while ((rc = sqlite3_step(s)) == SQLITE_ROW && sqlite3_column_int64(s, 1) < cutoff_ms)
                cut = sqlite3_column_int64(s, 0);
            if (rc != SQLITE_ROW && rc != SQLITE_DONE)
                return fail_batch("retention");
        }
        if (cut < p->oldest) {
            retention_round_.pop_back(); // nothing (more) to delete here this round
            continue;
        }
        if (auto r = begin_if_needed(); !r)
            return r.error();
        retention_mids_.clear();
        {
            sqlite3_stmt* s = stmt(s_retention_mids);
            StmtGuard g(s);
            sqlite3_bind_int64(s, 1, pid);
            sqlite3_bind_int64(s, 2, p->oldest);
            sqlite3_bind_int64(s, 3, cut);
            int rc;
            while ((rc = sqlite3_step(s)) == SQLITE_ROW)
                retention_mids_.push_back(sqlite3_column_int64(s, 0));
            if (rc != SQLITE_DONE)
                return fail_batch("retention");
        }
        {
            sqlite3_stmt* s = stmt(s_retention_delete_log);
            StmtGuard g(s);
            sqlite3_bind_int64(s, 1, pid);
            sqlite3_bind_int64(s, 2, p->oldest);
            sqlite3_bind_int64(s, 3, cut);
            if (sqlite3_step(s) != SQLITE_DONE)
                return fail_batch("retention");
        }
        for (int64_t mid : retention_mids_)
            if (auto r = drop_reference(mid, 1, "retention"); !r)
                return r.error();
        deleted += static_cast<size_t>(cut - p->oldest + 1);
        metrics_.retention_deleted.add(static_cast<double>(cut - p->oldest + 1));
        int64_t was = p->oldest;
        p->oldest = cut + 1;
        undo_.push_back([this, pid, was] {
            if (auto it = by_pid_.find(pid); it != by_pid_.end())
                it->second->oldest = was;
        });
        while (!p->tail.empty() && p->tail.front().seq <= cut)
            tail_pop_front(p);
    }
    return deleted;
}

// ---- the tail cache ---------------------------------------------------------------------

namespace {
// What one cached entry is charged: the message's variable parts in every tail it is in, and
// a fixed part for the deque slot, the shared_ptr's control block and the strings' headers.
size_t entry_cost(const LogEntry& e) {
    const MessageData& m = *e.msg;
    return 128 + m.body.size() + m.from.size() + m.to.size() + m.client_id.size();
}
} // namespace

void Store::tail_push(Principal* p, LogEntry entry) {
    if (!p->tail.empty() && p->tail.back().seq != entry.seq - 1)
        tail_truncate(p, 0); // keep the tail contiguous
    size_t cost = entry_cost(entry);
    p->tail.push_back(std::move(entry));
    p->tail_bytes += cost;
    cache_used_ += cost;
    if (p->tail.size() > options_.tail_limit)
        tail_pop_front(p);
    // Most recently appended first.
    if (lru_newest_ == p)
        return;
    lru_unlink(p);
    p->lru_older = lru_newest_;
    if (lru_newest_)
        lru_newest_->lru_newer = p;
    lru_newest_ = p;
    if (!lru_oldest_)
        lru_oldest_ = p;
}

void Store::tail_pop_front(Principal* p) {
    size_t cost = entry_cost(p->tail.front());
    p->tail.pop_front();
    p->tail_bytes -= cost;
    cache_used_ -= cost;
}

void Store::tail_truncate(Principal* p, int64_t head) {
    while (!p->tail.empty() && p->tail.back().seq > head) {
        size_t cost = entry_cost(p->tail.back());
        p->tail.pop_back();
        p->tail_bytes -= cost;
        cache_used_ -= cost;
    }
}

void Store::tail_drop(Principal* p) {
    tail_truncate(p, 0);
    p->tail.shrink_to_fit();
    lru_unlink(p);
}

void Store::lru_unlink(Principal* p) {
    if (!p->lru_newer && !p->lru_older && lru_newest_ != p)
        return; // not listed
    (p->lru_newer ? p->lru_newer->lru_older : lru_newest_) = p->lru_older;
    (p->lru_older ? p->lru_older->lru_newer : lru_oldest_) = p->lru_newer;
    p->lru_newer = p->lru_older = nullptr;
}

void Store::tail_evict() {
    while (cache_used_ > options_.cache_bytes && lru_oldest_) {
        Principal* p = lru_oldest_;
        while (cache_used_ > options_.cache_bytes && !p->tail.empty())
            tail_pop_front(p);
        if (p->tail.empty())
            tail_drop(p);
    }
}

void Store::set_cache_bytes(size_t bytes) {
    options_.cache_bytes = bytes;
    tail_evict();
}

uint64_t Store::durable_batch() const {
    if (!syncer_)
        return batch_no_;
    return std::max(syncer_->durable(), forced_durable_);
}

void Store::take_durable(std::vector<Principal*>& touched_out) {
    touched_out.clear();
    uint64_t durable = durable_batch();
    while (!undurable_.empty() && undurable_.front().no <= durable) {
        for (const auto& [pid, head] : undurable_.front().heads) {
            auto it = by_pid_.find(pid);
            if (it == by_pid_.end())
                continue; // deleted meanwhile
            Principal* p = it->second.get();
            if (head > p->committed_head) {
                p->committed_head = head;
                if (std::find(touched_out.begin(), touched_out.end(), p) == touched_out.end())
                    touched_out.push_back(p);
            }
        }
        undurable_.pop_front();
    }
}

void Store::sync_now() {
    if (syncer_ && syncer_->sync_now(batch_no_))
        forced_durable_ = batch_no_;
}

StoreStatus Store::status() const {
    StoreStatus st;
    st.degraded = degraded_;
    st.message = degraded_message_;
    struct stat sb {};
    if (::stat(db_path_.c_str(), &sb) == 0)
        st.db_bytes = sb.st_size;
    if (::stat((db_path_ + "-wal").c_str(), &sb) == 0)
        st.db_bytes += sb.st_size;
    return st;
}

} // namespace meshd::store
