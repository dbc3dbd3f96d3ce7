// store/reader: reads that may scan far — history pages, receipt look-ups — on helper
// threads, each with its own read-only SQLite connection, so that the loop never waits on a
// big log (WAL lets them read while the loop writes).
//
// DESIGN
// - The loop submits a job: `work` runs on a reader thread with that thread's ReadConn;
//   `done` then runs on the loop thread (a uv_async wakes it; notices coalesce, so the loop
//   drains every finished job). `work` must not touch loop state (principals, sessions):
//   it gets plain values and hands results to `done` through what both captured.
// - A job's `done` may find that what asked is gone (a session closed meanwhile): it looks
//   its session up by connection id, never through a pointer kept across threads.
// - Every statement is reset as soon as its rows are read, and long scans go in windows of
//   scan_window seqs, one statement each: no read transaction stays open across a big scan
//   (an open snapshot stalls the checkpointer and keeps the WAL growing).
// - Reads see only what the caller names as committed (a `head` taken on the loop), never
//   more, so with storage.sync = "full" nothing that is not yet durable is shown.
// - shutdown() interrupts running statements (sqlite3_interrupt), joins the threads and drops
//   jobs not yet done; their `done` never runs.
#pragma once

#include "core/result.h"
#include "core/uv_handle.h"
#include "store/store.h"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

struct sqlite3;
struct sqlite3_stmt;

namespace meshd::store {

// One page of a principal's own log, optionally only one conversation.
struct HistoryQuery {
    int64_t pid = 0;  // whose log
    int64_t head = 0; // the committed head when asked: nothing above it is read
    // ascending ("after"): the oldest entries with seq > bound; otherwise ("before") the
    // newest entries with seq < bound.
    bool ascending = false;
    int64_t bound = 0;
    size_t limit = 50;
    // Bodies in a page stop at about this many bytes (the first entry always fits).
    size_t max_bytes = 1 << 20;
    enum class Filter { none, peer, group } filter = Filter::none;
    // peer: direct messages between the log's owner and the peer, either way.
    int64_t self_pid = 0;
    std::string self_name;
    int64_t peer_pid = 0;
    std::string peer_name;
    // group: messages addressed to it ("#team").
    std::string group;
};

struct HistoryPage {
    std::vector<LogEntry> entries; // ascending seq
    bool more = false;             // entries beyond the page exist in the direction read
};

// A message the log's owner sent, with the logs of the others that hold it.
struct SentMessage {
    int64_t seq = 0; // in the owner's (the sender's) log
    std::string to;  // as stored: a principal's name or "#group"
    struct Copy {
        int64_t pid;
        int64_t seq;
    };
    std::vector<Copy> copies; // every other log holding it (for a group: the other members)
};

// The newest message of one sender among the direct messages of a log range.
struct SenderMax {
    int64_t sender_pid = 0;
    int64_t sender_seq = 0;
};

// One reader thread's connection and statements. Used by one thread at a time.
class ReadConn {
  public:
    ~ReadConn();
    ReadConn(const ReadConn&) = delete;
    ReadConn& operator=(const ReadConn&) = delete;

    core::Result<HistoryPage> history(const HistoryQuery& q);
    // The entries of `seqs` in pid's log that pid sent (others are left out), in the order
    // asked. Seqs above head are not read.
    core::Result<std::vector<SentMessage>> sent(int64_t pid, int64_t head,
                                                std::span<const int64_t> seqs);
    // For the direct messages to `name` (pid's own name) in pid's log with
    // after < seq <= upto, sent by others: each sender's newest, as a seq of its own log.
    core::Result<std::vector<SenderMax>> direct_senders(int64_t pid, std::string_view name,
                                                        int64_t after, int64_t upto);

  private:
    friend class Reader;
    ReadConn(sqlite3* db, const std::atomic<bool>& stopping) : db_(db), stopping_(stopping) {}
    core::Result<void> prepare();
    core::Error read_error(const char* what) const;

    sqlite3* db_;
    const std::atomic<bool>& stopping_;
    std::vector<sqlite3_stmt*> stmts_;
};

class Reader {
  public:
    using Work = std::function<void(ReadConn&)>;
    using Done = std::function<void()>;

    // Opens `threads` connections on db_path (the store must have migrated it) and starts
    // the threads. Errors name the file.
    static core::Result<std::unique_ptr<Reader>> open(uv_loop_t* loop, const std::string& db_path,
                                                      size_t threads);
    ~Reader();
    Reader(const Reader&) = delete;
    Reader& operator=(const Reader&) = delete;

    // Loop thread. After shutdown() the job is dropped.
    void submit(Work work, Done done);
    // Loop thread: interrupts, joins, drops pending jobs, closes the uv handle. Idempotent.
    void shutdown();
    // Jobs submitted whose `done` has not run yet.
    size_t pending() const { return pending_; }

    // Seqs per statement of a long scan.
    static constexpr int64_t scan_window = 4096;

  private:
    Reader() = default;
    struct Job {
        Work work;
        Done done;
    };
    void run(ReadConn& conn);
    void drain(); // loop thread: runs the `done` of finished jobs

    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<Job> queue_;
    std::vector<Job> finished_;
    std::atomic<bool> stopping_{false};
    bool stopped_ = false;
    std::vector<std::unique_ptr<ReadConn>> conns_;
    std::vector<std::thread> threads_;
    core::UvAsync notice_;
    size_t pending_ = 0;
};

} // namespace meshd::store
