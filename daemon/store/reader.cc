// store/reader: the reader threads, their connections and the queries they run.
#include "store/reader.h"

#include "core/log.h"
#include "store/sqlite_util.h"

#include <algorithm>
#include <sqlite3.h>

namespace meshd::store {

using detail::bind_text;
using detail::column_text;
using detail::sqlite_message;
using detail::StmtGuard;

namespace {

enum ReadStmt { r_history_desc, r_history_asc, r_sent_one, r_direct_senders, r_count };

// History: ?1 pid, ?2..?3 the seq window (inclusive), ?4 filter (0 none, 1 peer, 2 group),
// ?5 peer pid, ?6 own name, ?7 own pid, ?8 peer name or group address, ?9 row limit.
// A direct message "to bob" is one with the peer only if bob's log holds it too: names are
// reused after a delete, principals (pids) are not.
#define MESHD_HISTORY_SQL(order)                                                                \
    "SELECT l.seq, p.name, m.to_text, m.ts, m.body, m.client_id, m.sender, m.sender_seq, "     \
    "m.task "                                                                                   \
    "FROM log l JOIN messages m ON m.mid = l.mid JOIN principals p ON p.pid = m.sender "        \
    "WHERE l.pid = ?1 AND l.seq >= ?2 AND l.seq <= ?3 AND (?4 = 0 "                            \
    "OR (?4 = 1 AND ((m.sender = ?5 AND m.to_text = ?6) OR (m.sender = ?7 AND m.to_text = ?8 " \
    "AND meshd_has_copy(m.copies, ?5)))) "                                                     \
    "OR (?4 = 2 AND m.to_text = ?8)) "                                                         \
    "ORDER BY l.seq " order " LIMIT ?9"

const char* const read_sql[r_count] = {
    MESHD_HISTORY_SQL("DESC"),
    MESHD_HISTORY_SQL("ASC"),
    "SELECT m.mid, m.sender, m.to_text, m.copies FROM log l JOIN messages m ON m.mid = l.mid "
    "WHERE l.pid = ?1 AND l.seq = ?2",
    "SELECT m.sender, MAX(m.sender_seq) FROM log l JOIN messages m ON m.mid = l.mid "
    "WHERE l.pid = ?1 AND l.seq >= ?2 AND l.seq <= ?3 AND m.to_text = ?4 AND m.sender <> ?1 "
    "GROUP BY m.sender",
};

#undef MESHD_HISTORY_SQL

// meshd_has_copy(copies, pid): does messages.copies ("pid:seq" pairs separated by spaces, or
// NULL) list an entry in pid's log?
void has_copy(sqlite3_context* ctx, int, sqlite3_value** argv) {
    const auto* text = reinterpret_cast<const char*>(sqlite3_value_text(argv[0]));
    int64_t pid = sqlite3_value_int64(argv[1]);
    bool found = false;
    if (text)
        for_each_copy(std::string_view(text, static_cast<size_t>(sqlite3_value_bytes(argv[0]))),
                      [&](int64_t p, int64_t) { found = found || p == pid; });
    sqlite3_result_int(ctx, found ? 1 : 0);
}

} // namespace

// ---- ReadConn ---------------------------------------------------------------------------

ReadConn::~ReadConn() {
    for (sqlite3_stmt* s : stmts_)
        sqlite3_finalize(s);
    sqlite3_close_v2(db_);
}

core::Result<void> ReadConn::prepare() {
    stmts_.assign(r_count, nullptr);
    for (int i = 0; i < r_count; ++i)
        if (sqlite3_prepare_v3(db_, read_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &stmts_[i],
                               nullptr) != SQLITE_OK)
            return core::make_error("internal", std::string("cannot prepare a reader statement: ") +
                                                    sqlite_message(db_));
    return {};
}

core::Error ReadConn::read_error(const char* what) const {
    if (stopping_.load(std::memory_order_relaxed))
        return core::Error{"unavailable", "the server is shutting down"};
    return core::Error{"unavailable", std::string("cannot read ") + what + ": " +
                                          sqlite_message(db_) + "; retry later"};
}

core::Result<HistoryPage> ReadConn::history(const HistoryQuery& q) {
    HistoryPage page;
    sqlite3_stmt* s = stmts_[q.ascending ? r_history_asc : r_history_desc];
    int filter = q.filter == HistoryQuery::Filter::peer    ? 1
                 : q.filter == HistoryQuery::Filter::group ? 2
                                                           : 0;
    size_t bytes = 0;
    bool full = q.limit == 0; // the page is complete: only looking for one more entry
    // Windows of scan_window seqs, walking away from `bound`, each one statement.
    int64_t lo, hi;
    if (q.ascending) {
        lo = q.bound + 1;
        hi = std::min(q.head, lo + Reader::scan_window - 1);
    } else {
        hi = std::min(q.bound - 1, q.head);
        lo = std::max<int64_t>(1, hi - Reader::scan_window + 1);
    }
    while (lo <= hi && !page.more) {
        if (stopping_.load(std::memory_order_relaxed))
            return read_error("the log");
        StmtGuard g(s);
        sqlite3_bind_int64(s, 1, q.pid);
        sqlite3_bind_int64(s, 2, lo);
        sqlite3_bind_int64(s, 3, hi);
        sqlite3_bind_int(s, 4, filter);
        sqlite3_bind_int64(s, 5, q.peer_pid);
        bind_text(s, 6, q.self_name);
        sqlite3_bind_int64(s, 7, q.self_pid);
        bind_text(s, 8, q.filter == HistoryQuery::Filter::group ? q.group : q.peer_name);
        int64_t want = full ? 1 : static_cast<int64_t>(q.limit - page.entries.size()) + 1;
        sqlite3_bind_int64(s, 9, want);
        int rc;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
            if (full) {
                page.more = true;
                break;
            }
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
            page.entries.push_back({sqlite3_column_int64(s, 0), std::move(msg)});
            full = page.entries.size() >= q.limit || bytes >= q.max_bytes;
        }
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            return read_error("the log");
        if (q.ascending) {
            lo = hi + 1;
            hi = std::min(q.head, lo + Reader::scan_window - 1);
        } else {
            hi = lo - 1;
            lo = std::max<int64_t>(1, hi - Reader::scan_window + 1);
        }
    }
    if (!q.ascending)
        std::reverse(page.entries.begin(), page.entries.end());
    return page;
}

core::Result<std::vector<SentMessage>> ReadConn::sent(int64_t pid, int64_t head,
                                                      std::span<const int64_t> seqs) {
    std::vector<SentMessage> out;
    sqlite3_stmt* one = stmts_[r_sent_one];
    for (int64_t seq : seqs) {
        if (seq < 1 || seq > head)
            continue;
        if (stopping_.load(std::memory_order_relaxed))
            return read_error("the log");
        SentMessage m;
        m.seq = seq;
        StmtGuard g(one);
        sqlite3_bind_int64(one, 1, pid);
        sqlite3_bind_int64(one, 2, seq);
        int rc = sqlite3_step(one);
        if (rc == SQLITE_DONE)
            continue; // no such entry (any more)
        if (rc != SQLITE_ROW)
            return read_error("the log");
        if (sqlite3_column_int64(one, 1) != pid)
            continue; // received, not sent
        m.to = std::string(column_text(one, 2));
        for_each_copy(column_text(one, 3), [&](int64_t other, int64_t other_seq) {
            if (other != pid)
                m.copies.push_back({other, other_seq});
        });
        out.push_back(std::move(m));
    }
    return out;
}

core::Result<std::vector<SenderMax>> ReadConn::direct_senders(int64_t pid, std::string_view name,
                                                              int64_t after, int64_t upto) {
    std::vector<SenderMax> out;
    sqlite3_stmt* s = stmts_[r_direct_senders];
    for (int64_t lo = after + 1; lo <= upto; lo += Reader::scan_window) {
        if (stopping_.load(std::memory_order_relaxed))
            return read_error("the log");
        int64_t hi = std::min(upto, lo + Reader::scan_window - 1);
        StmtGuard g(s);
        sqlite3_bind_int64(s, 1, pid);
        sqlite3_bind_int64(s, 2, lo);
        sqlite3_bind_int64(s, 3, hi);
        bind_text(s, 4, name);
        int rc;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
            int64_t sender = sqlite3_column_int64(s, 0);
            int64_t seq = sqlite3_column_int64(s, 1);
            auto it = std::find_if(out.begin(), out.end(),
                                   [&](const SenderMax& m) { return m.sender_pid == sender; });
            if (it == out.end())
                out.push_back({sender, seq});
            else
                it->sender_seq = std::max(it->sender_seq, seq);
        }
        if (rc != SQLITE_DONE)
            return read_error("the log");
    }
    return out;
}

// ---- Reader -------------------------------------------------------------------------------

core::Result<std::unique_ptr<Reader>> Reader::open(uv_loop_t* loop, const std::string& db_path,
                                                   size_t threads) {
    std::unique_ptr<Reader> r(new Reader());
    for (size_t i = 0; i < std::max<size_t>(threads, 1); ++i) {
        sqlite3* db = nullptr;
        int rc = sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                                 nullptr);
        // The reader never writes; a busy wait here happens off the loop (WAL recovery only).
        if (rc == SQLITE_OK)
            rc = sqlite3_exec(db, "PRAGMA query_only=1; PRAGMA busy_timeout=2000;", nullptr,
                              nullptr, nullptr);
        if (rc != SQLITE_OK) {
            std::string msg = sqlite_message(db);
            sqlite3_close_v2(db);
            return core::make_error("internal",
                                    db_path + ": cannot open a reader connection: " + msg);
        }
        if (rc == SQLITE_OK)
            rc = sqlite3_create_function(db, "meshd_has_copy", 2,
                                         SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_DIRECTONLY,
                                         nullptr, has_copy, nullptr, nullptr);
        if (rc != SQLITE_OK) {
            std::string msg = sqlite_message(db);
            sqlite3_close_v2(db);
            return core::make_error("internal",
                                    db_path + ": cannot open a reader connection: " + msg);
        }
        std::unique_ptr<ReadConn> conn(new ReadConn(db, r->stopping_));
        if (auto p = conn->prepare(); !p)
            return core::make_error("internal", db_path + ": " + p.error().message);
        r->conns_.push_back(std::move(conn));
    }
    Reader* raw = r.get();
    r->notice_ = core::UvAsync::create(loop, [raw] { raw->drain(); });
    r->notice_.unref(); // pending reads must not keep the loop alive at shutdown
    for (auto& conn : r->conns_) {
        ReadConn* c = conn.get();
        r->threads_.emplace_back([raw, c] { raw->run(*c); });
    }
    return r;
}

Reader::~Reader() {
    shutdown();
}

void Reader::submit(Work work, Done done) {
    if (stopped_)
        return;
    {
        std::lock_guard lock(mu_);
        queue_.push_back({std::move(work), std::move(done)});
    }
    ++pending_;
    cv_.notify_one();
}

void Reader::run(ReadConn& conn) {
    std::unique_lock lock(mu_);
    while (true) {
        cv_.wait(lock, [this] { return stopping_.load() || !queue_.empty(); });
        if (stopping_.load())
            return;
        Job job = std::move(queue_.front());
        queue_.pop_front();
        lock.unlock();
        job.work(conn);
        job.work = nullptr; // what it captured goes now, on this thread
        lock.lock();
        finished_.push_back(std::move(job));
        notice_.send(); // the handle outlives the threads (shutdown joins first)
    }
}

void Reader::drain() {
    std::vector<Job> done;
    {
        std::lock_guard lock(mu_);
        done.swap(finished_);
    }
    for (Job& job : done) {
        --pending_;
        if (job.done)
            job.done();
    }
}

void Reader::shutdown() {
    if (stopped_)
        return;
    stopped_ = true;
    {
        std::lock_guard lock(mu_);
        stopping_.store(true);
        for (auto& conn : conns_)
            sqlite3_interrupt(conn->db_); // a running scan ends at its next step
    }
    cv_.notify_all();
    for (std::thread& t : threads_)
        t.join();
    threads_.clear();
    notice_.close();
    queue_.clear();
    finished_.clear();
    pending_ = 0;
    conns_.clear();
}

} // namespace meshd::store
