// store/store: the SQLite store — principals, tokens, ed25519 keys, messages, per-principal
// logs, cursors, and the directory (status, profiles, hidden, last seen).
//
// DESIGN
// - One writer: the loop thread's own connection (wal_autocheckpoint=0, busy_timeout=0: the
//   loop never sleeps in SQLite). A helper thread with its own connection runs PASSIVE
//   checkpoints about once a second.
// - Group commit: the first write of a loop turn opens a transaction (BEGIN IMMEDIATE);
//   every later write of the turn joins it; commit() ends it. Nothing written in a batch may
//   be acknowledged to anyone before commit() returns ok.
// - A message is stored once (messages) and referenced from the log of every recipient and
//   of the sender (log: principal, seq -> message).
// - Invariant: per principal, seq strictly increases and is never reused. Within one
//   principal's log, the message id (mid) increases with seq too, except for work sent to a
//   skill (the agent's entry, appended at assignment, refers to the send's earlier message;
//   its `to` is "skill:NAME", never a principal's name): messages are inserted one
//   at a time and appended to every log at once, so two principals' logs hold the messages
//   they share in the same order (receipts rely on it: see reader.h). Seqs are assigned
//   from an in-memory head; a failed batch restores every head it moved (and rolls back), so
//   a seq handed out in a failed batch was never visible to anyone.
// - A failed statement or commit (BUSY, FULL, IOERR, READONLY) fails the whole batch; the
//   store then reports "degraded" until a later commit succeeds.
#pragma once

#include "core/config.h"
#include "core/metrics.h"
#include "core/result.h"
#include "core/uv_handle.h"

#include <charconv>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

struct sqlite3;
struct sqlite3_stmt;

namespace meshd::store {

enum class Kind { user, agent };
std::string_view to_string(Kind);

// The status a principal sets for itself (meshd-protocol(7), "status"). Automatic away is
// not a status: the session layer works it out from activity and never stores it.
enum class Status { available, busy, away, dnd };
std::string_view to_string(Status);
std::optional<Status> parse_status(std::string_view);

// A published directory profile (meshd-protocol(7), "profile"); immutable once built.
struct Profile {
    // As served by who: {"display_name":..,"description":..,"skills":[..],"metadata":{..}}
    std::string json;
    std::vector<std::string> skills; // canonical skill names, in the order published
};
using ProfileRef = std::shared_ptr<const Profile>;

// One stored message; shared (immutable once built) between every log that references it.
struct MessageData {
    std::string from;      // sender's name
    std::string to;        // the address as stored: a principal name or "#group"
    std::string client_id; // the sender's id, or empty
    int64_t ts = 0;        // server receive time, ms since the epoch
    std::string body;      // the body's JSON text, exactly as received
    int64_t sender_pid = 0; // the sender's internal id
    int64_t sender_seq = 0; // the message's seq in the sender's log
    // A dispatched message's task member ({"id":17,...}), or empty. For a task event (to is
    // "task:<id>"), body is the event object and this is empty.
    std::string task;
    bool is_task_event() const { return to.starts_with("task:"); }
};
using MessageRef = std::shared_ptr<const MessageData>;

struct LogEntry {
    int64_t seq = 0;
    MessageRef msg;
};

struct Principal {
    int64_t pid = 0; // internal id, never reused
    std::string name;
    Kind kind = Kind::user;
    int64_t created_ms = 0;
    int64_t head = 0;           // highest seq handed out (may be in the open batch)
    int64_t committed_head = 0; // highest seq known committed
    // Every seq below this was deleted by retention (storage.retention_days,
    // storage.max_log_entries); the log's newest entry is never deleted (it keeps the head).
    int64_t oldest = 1;
    // The newest log entries (committed and pending), contiguous in seq: a cache in front of
    // the log, at most tail_limit entries, and within the store's cache_bytes over all
    // principals (the least recently appended lose theirs first). Only the store changes it.
    std::deque<LogEntry> tail;
    size_t tail_bytes = 0;            // what tail is charged against cache_bytes
    Principal* lru_newer = nullptr;   // the store's list of principals with a tail,
    Principal* lru_older = nullptr;   // most recently appended first
    bool in_batch = false;            // the open batch has moved head (store's undo list)
    uint64_t append_mark = 0;         // the store's append that last listed it (duplicates)
    // device -> highest seq the device acknowledged ("ack upto").
    std::unordered_map<std::string, int64_t> cursors;

    // Directory (schema 5), written through with the batch and deleted with the principal.
    Status status = Status::available; // set by the principal
    std::string note;                  // set with the status; at most max_note_bytes
    ProfileRef profile;                // null: never published
    bool hidden = false;               // set by the admin: not listed by who
    int64_t last_seen_ms = 0;          // wall time a device was last connected; 0: never
    // The highest of the cursors: every entry up to it reached at least one device.
    int64_t delivered_upto = 0;
    // The explicit read marker (frame `read`): monotonic, stored in read_markers.
    int64_t read_upto = 0;
    // Setting read_receipts: whether senders learn about read_upto (stored in
    // principal_settings; on unless turned off).
    bool read_receipts = true;
};

// Limits of the directory data that are part of the protocol, not configuration.
inline constexpr size_t max_note_bytes = 200;
inline constexpr size_t max_skills = 64;

// A named set of principals. A send to "#name" goes to every member (route_groups).
struct Group {
    int64_t gid = 0; // internal id, never reused
    std::string name;
    std::vector<Principal*> members; // in pid order
};

// An ed25519 public key registered for a principal (meshctl key add). A key belongs to at
// most one live principal; a deleted principal's keys are deleted with it.
struct StoredKey {
    Principal* principal = nullptr;
    std::string pubkey; // the 32 raw bytes
    int64_t added_ms = 0;
};
inline constexpr size_t ed25519_key_bytes = 32;

struct StoreOptions {
    uv_loop_t* loop = nullptr; // needed for sync = full (durability notices)
    std::string data_dir;
    core::SyncMode sync = core::SyncMode::normal;
    int64_t dedupe_window_s = 86400;
    int64_t checkpoint_wal_bytes = 256 << 20;
    size_t tail_limit = 256;
    // Budget of every principal's tail together: bodies and names of cached messages (a
    // message cached in several tails counts in each) plus a fixed cost per entry.
    size_t cache_bytes = 64 << 20;
    // Retention: 0 = keep.
    int64_t retention_days = 0;
    int64_t max_log_entries = 0;
};

// messages.copies (schema 8): the log entries of a message other than its sender's, as
// "pid:seq" pairs separated by single spaces. Calls fn(pid, seq) for each pair in order and
// stops at the first one that is not well formed.
template <class F> void for_each_copy(std::string_view text, F&& fn) {
    const char* p = text.data();
    const char* end = p + text.size();
    while (p < end) {
        int64_t pid = 0, seq = 0;
        auto a = std::from_chars(p, end, pid);
        if (a.ec != std::errc() || a.ptr == end || *a.ptr != ':')
            return;
        auto b = std::from_chars(a.ptr + 1, end, seq);
        if (b.ec != std::errc())
            return;
        fn(pid, seq);
        if (b.ptr == end || *b.ptr != ' ')
            return;
        p = b.ptr + 1;
    }
}

struct AppendResult {
    int64_t sender_seq = 0; // the message's seq in the sender's log
    bool dup = false;       // an earlier send with the same id was found
    int64_t mid = 0;        // the stored message (0 for a dup)
};

// What a few appends need beyond a plain send.
struct AppendExtra {
    std::string_view task; // messages.task: the task member, JSON text
};

// ---- work dispatch (meshd-protocol(7), WORK DISPATCH) -----------------------------------
// States as stored (tasks.state) and as named in frames.
enum class TaskState { queued, assigned, working, done, failed, expired, canceled };
std::string_view to_string(TaskState);
std::optional<TaskState> parse_task_state(std::string_view);
inline bool is_finished(TaskState s) { return s >= TaskState::done; }

// A send to "skill:NAME" and what became of it. Unfinished ones live in memory (the store's
// open tasks); finished ones only in the tasks table.
struct Task {
    int64_t id = 0;
    int64_t sender_pid = 0;
    int64_t sender_seq = 0; // the send in the sender's log
    int64_t mid = 0;        // the send's message (its body)
    std::string skill;      // canonical
    bool tracked = false;   // the send carried "task"; untracked ones finish when assigned
    TaskState state = TaskState::queued;
    int64_t agent_pid = 0;  // the holder while assigned or working, else 0
    int64_t agent_seq = 0;  // the holder's copy in its log
    int64_t created_ms = 0;
    int64_t updated_ms = 0;
    int64_t queued_ms = 0;      // when it last entered the queue
    int64_t deadline_ms = 0;    // 0: none
    int64_t lease_until_ms = 0; // 0: not leased (its holder is connected, or none)
    std::string former;         // pids of earlier holders (leases ran out), space-separated
    bool held_before_by(int64_t pid) const;
};

// A task as listed (meshctl tasks) or looked up once finished.
struct TaskRow {
    Task task;
    std::string sender; // names; a deleted principal's last name
    std::string agent;  // the holder, or the last one; empty if never assigned
};

struct TaskFilter {
    std::optional<TaskState> state;
    std::string skill; // empty: any
    size_t limit = 1000;
};

struct SkillSendResult {
    AppendResult append;
    Task task; // a copy, as it stands after the send (for a dup: the first send's task)
};

struct StoreStatus {
    bool degraded = false;
    std::string message; // why, when degraded
    int64_t db_bytes = 0;
};

class Checkpointer;
class WalSyncer;

class Store {
  public:
    // Opens (creating if needed) data_dir/meshd.db, applies migrations, loads principals.
    // Errors name the file and say what to do.
    static core::Result<std::unique_ptr<Store>> open(const StoreOptions& options);
    ~Store();
    Store(const Store&) = delete;
    Store& operator=(const Store&) = delete;

    // The newest schema (migration number) this build knows.
    static int schema_version();
    // The page size of a database this store creates (an existing one keeps its own).
    static constexpr int page_bytes() { return 1024; }
    const std::string& epoch() const { return epoch_; }
    const std::string& db_path() const { return db_path_; }
    void set_dedupe_window_s(int64_t s) { options_.dedupe_window_s = s; }

    // ---- principals -------------------------------------------------------------------
    Principal* find(std::string_view name) const;
    // A live principal by internal id, or null (also for one deleted in the open batch).
    Principal* find_pid(int64_t pid) const;
    size_t principal_count() const { return by_name_.size(); }
    void for_each_principal(const std::function<void(Principal&)>& fn) const;
    // Joins the batch. Errors: exists, unavailable.
    core::Result<Principal*> add_principal(std::string_view name, Kind kind, int64_t now_ms);
    // Joins the batch; removes its log, cursors and tokens. After a successful commit the
    // Principal object stays valid (but unlisted) until drop_retired(), so that callers can
    // still close its sessions.
    core::Result<void> delete_principal(Principal* p);
    // Replaces every token of p with one whose keyed hash is computed here. Joins the batch.
    core::Result<void> set_token(Principal* p, std::string_view token, int64_t now_ms);
    // The principal a token belongs to, or null. Constant-time hash comparison is implied by
    // the lookup being by keyed hash (the secret never meets a comparison).
    Principal* verify_token(std::string_view token);

    // ---- ed25519 keys ----------------------------------------------------------------
    // Registers a 32-byte public key for p. Joins the batch. Errors: bad_key (not 32 bytes),
    // exists (already p's), conflict (registered to another principal), unavailable.
    core::Result<void> add_key(Principal* p, std::string_view pubkey, int64_t now_ms);
    // Removes one of p's keys. Joins the batch. Errors: not_found (not p's), unavailable.
    core::Result<void> revoke_key(Principal* p, std::string_view pubkey);
    // p's keys (every live principal's when p is null), by principal name, then added time.
    std::vector<StoredKey> keys(const Principal* p = nullptr) const;
    // O(1): is pubkey (32 raw bytes) registered for p?
    bool key_registered(const Principal& p, std::string_view pubkey) const;

    // ---- directory ----------------------------------------------------------------------
    using ByName = std::map<std::string_view, Principal*, std::less<>>;
    // Live principals ordered by name (who pages through it).
    const ByName& principals_by_name() const { return sorted_; }
    // Live principals whose profile lists `skill` (canonical), ordered by name; null if none.
    // Kept for who and for routing to skills.
    const ByName* principals_with_skill(std::string_view skill) const;
    // Each joins the batch; memory changes at once and is restored if the batch fails.
    core::Result<void> set_status(Principal& p, Status status, std::string_view note);
    core::Result<void> set_profile(Principal& p, ProfileRef profile);
    core::Result<void> set_hidden(Principal& p, bool hidden);
    // Records when a device of p was last connected. Joins the batch when one can be opened;
    // a failed write only leaves the stored time older. Ignored for a deleted principal.
    void set_last_seen(Principal& p, int64_t wall_ms);

    // ---- groups -----------------------------------------------------------------------
    const Group* find_group(std::string_view name) const;
    void for_each_group(const std::function<void(const Group&)>& fn) const;
    size_t group_count() const { return groups_.size(); }
    // Creates the group if needed and adds the members it does not have yet; returns those.
    // Joins the batch.
    core::Result<std::vector<Principal*>>
    group_add(std::string_view name, std::span<Principal* const> members, int64_t now_ms);
    // Removes the given members; returns those that were in it. Error not_found: no group.
    core::Result<std::vector<Principal*>> group_remove(std::string_view name,
                                                       std::span<Principal* const> members);
    core::Result<void> group_delete(std::string_view name);

    // ---- messages ---------------------------------------------------------------------
    // Appends one message to the log of the sender and of every recipient (once each: the
    // sender first, then the recipients in the order given). Joins the batch.
    // With a client_id already used by this sender within the dedupe window: same to and
    // body -> {seq of the first, dup=true}; otherwise error "conflict".
    core::Result<AppendResult> append(Principal* sender, std::string_view to,
                                      std::span<Principal* const> recipients, std::string_view body,
                                      std::string_view client_id, int64_t ts);
    core::Result<AppendResult> append(Principal* sender, std::string_view to,
                                      std::span<Principal* const> recipients, std::string_view body,
                                      std::string_view client_id, int64_t ts,
                                      const AppendExtra& extra);
    // Reads committed entries of p's log with seq >= from_seq, in order, at most max_rows
    // rows and (after the first row) about max_bytes of body. The statement is reset before
    // returning, so no read transaction stays open.
    core::Result<void> read_page(const Principal& p, int64_t from_seq, size_t max_rows,
                                 size_t max_bytes, std::vector<LogEntry>& out);
    // ---- work dispatch (store/tasks.cc) -------------------------------------------------
    // Every change joins the batch, and memory is restored if the batch fails. Each
    // transition is also appended to the sender's log as a task event (to "task:<id>"), and
    // a cancel or expiry of a held task to the holder's log too.
    //
    // A send to skill:NAME: stored in the sender's log (to "skill:NAME") and queued as task
    // `next id`. A resend with the same client_id finds the first send's task (dup).
    core::Result<SkillSendResult> send_to_skill(Principal* sender, std::string_view skill,
                                                std::string_view body,
                                                std::string_view client_id, int64_t ts,
                                                bool tracked, int64_t deadline_ms);
    // These take a task from open_tasks() and leave that reference invalid: look it up again
    // by id. Gives the queued task t to agent: the send's message (stored once, as every
    // message) enters the agent's log. Error not_found when it is gone.
    core::Result<void> assign_task(Task& t, Principal& agent, int64_t ts);
    // working, done, failed, canceled, expired. `extra` is appended to the event object as
    // is (e.g. ,"result":{...}). Finished tasks leave memory.
    core::Result<void> set_task_state(Task& t, TaskState to, std::string_view extra, int64_t ts);
    // Back to the queue (its holder's lease ran out); the event names the previous holder.
    core::Result<void> requeue_task(Task& t, int64_t ts);
    // Starts (until > 0) or ends (0) the lease of a held task.
    core::Result<void> set_task_lease(Task& t, int64_t until_ms);
    // Unfinished tasks.
    Task* find_task(int64_t id);
    const std::map<int64_t, Task>& open_tasks() const { return open_tasks_; }
    // Ids of the skill's queued tasks, oldest first; null when none.
    const std::set<int64_t>* task_queue(std::string_view skill) const;
    // Unfinished tracked tasks held by pid.
    size_t held_tasks(int64_t pid) const;
    // A task by id from the table (finished or not); nothing when there is none.
    core::Result<std::optional<TaskRow>> stored_task(int64_t id);
    // Newest first.
    core::Result<std::vector<TaskRow>> list_tasks(const TaskFilter& filter);

    // ---- cursors ----------------------------------------------------------------------
    int64_t cursor(const Principal& p, std::string_view device) const;
    // Monotonic: a lower value than stored is ignored. Written with the next batch.
    void set_cursor(Principal& p, std::string_view device, int64_t seq);
    // Deletes the device's cursor (meshctl device forget). Joins the batch.
    core::Result<void> forget_device(Principal& p, std::string_view device);

    // ---- read markers and settings -------------------------------------------------------
    // Moves p's read marker up to seq (a lower or equal value changes nothing). Joins the
    // batch; restored in memory if the batch fails.
    core::Result<void> set_read_marker(Principal& p, int64_t seq, int64_t now_ms);
    // Turns p's read receipts on or off. Joins the batch; restored if the batch fails.
    core::Result<void> set_read_receipts(Principal& p, bool on);

    // ---- batches ----------------------------------------------------------------------
    bool batch_failed() const { return batch_failed_; }
    bool batch_open() const { return in_txn_ || batch_failed_ || !dirty_cursors_.empty(); }
    // Commits the batch. With sync = normal the commit is durable against a process crash
    // when it returns: every principal whose log grew has its committed_head caught up and
    // is listed in touched_out (so the caller can wake its devices). With sync = full the
    // batch becomes visible only once a helper thread has fdatasync'ed the WAL: touched_out
    // stays empty and the on_durable callback later runs take_durable().
    // On failure the batch is rolled back, heads and tails are restored, and the error
    // (code "unavailable") says why; the caller fails every request of the batch.
    core::Result<void> commit(std::vector<Principal*>& touched_out);
    // Batches are numbered; last_batch() is the newest committed, durable_batch() the newest
    // whose seqs are visible (== last_batch() with sync = normal).
    uint64_t last_batch() const { return batch_no_; }
    uint64_t durable_batch() const;
    // sync = full: makes the batches the syncer has made durable visible; fills touched_out.
    void take_durable(std::vector<Principal*>& touched_out);
    // Runs on the loop thread whenever more batches became durable.
    void set_on_durable(std::function<void()> fn) { on_durable_ = std::move(fn); }
    // Shutdown: fdatasync now, on the calling thread, and mark every batch durable.
    void sync_now();
    StoreStatus status() const;
    // ---- retention ------------------------------------------------------------------
    void set_retention(int64_t retention_days, int64_t max_log_entries);
    bool retention_enabled() const {
        return options_.retention_days > 0 || options_.max_log_entries > 0;
    }
    // Deletes at most `budget` committed log entries that retention no longer keeps, oldest
    // first, going round the principals; a message's body goes with its last reference.
    // Joins the batch. Returns how many entries it deleted.
    core::Result<size_t> retention_step(int64_t now_ms, size_t budget);

    // The tail cache: bytes charged now, and changing the budget (evicts at once if lower).
    size_t cache_bytes_used() const { return cache_used_; }
    void set_cache_bytes(size_t bytes);
    // Frees the principals deleted by committed batches.
    void drop_retired() { retired_.clear(); }

  private:
    explicit Store(StoreOptions options);
    // Work dispatch internals (store/tasks.cc).
    core::Result<void> load_tasks();
    core::Result<void> prepare_tasks();
    core::Result<void> write_task(const Task& t);
    core::Result<void> task_event(Principal* owner, const Task& t, int64_t msg_seq,
                                  std::string_view state, std::string_view extra, int64_t ts);
    std::string principal_name(int64_t pid) const;
    core::Result<void> move_task(const Task& before, const Task& after, std::string_view state,
                                 std::string_view extra, bool tell_holder, int64_t ts);
    void remember_task(const Task& before, bool existed); // undo entry for a changed task
    void put_task(const Task& t);                         // memory: open map, queue, held
    void drop_task(int64_t id);
    std::map<int64_t, Task> open_tasks_;
    std::unordered_map<std::string, std::set<int64_t>> task_queues_;
    std::unordered_map<int64_t, size_t> held_tasks_;
    int64_t next_task_id_ = 1;
    std::vector<sqlite3_stmt*> task_stmts_;
    std::string task_buf_;
    core::Result<void> open_db();
    core::Result<void> migrate();
    core::Result<void> load();
    core::Result<void> prepare_all();
    core::Result<void> begin_if_needed();
    core::Error fail_batch(const char* what);
    void rollback_batch();
    void touch(Principal* p);
    void wal_catch_up();
    std::chrono::steady_clock::time_point wal_checked_{};
    bool wal_helper_asked_ = false; // a catch-up waits for the helper's catch-up number ...
    uint64_t wal_helper_pass_ = 0;  // ... after this one
    core::Counter wal_catch_ups_;
    // Tail cache bookkeeping: every change to a Principal's tail goes through these.
    void tail_push(Principal* p, LogEntry entry);
    void tail_pop_front(Principal* p);
    void tail_truncate(Principal* p, int64_t head); // drops entries with seq > head
    void tail_drop(Principal* p);                   // all of it, and off the LRU list
    void tail_evict();                              // to cache_bytes, oldest principals first
    void lru_unlink(Principal* p);
    size_t cache_used_ = 0;
    std::vector<int64_t> retention_round_; // pids left to visit in this round, last first
    std::vector<int64_t> retention_mids_;
    // append(): its number, the recipients without duplicates, and messages.copies.
    uint64_t append_no_ = 0;
    std::vector<Principal*> unique_recipients_;
    std::string copies_buf_;
    // Takes `count` log entries' references off message mid and deletes the message when no
    // entry references it any more (unless a queued task still needs it). In the open batch;
    // `what` names the step when it fails.
    core::Result<void> drop_reference(int64_t mid, int64_t count, const char* what);
    Principal* lru_newest_ = nullptr;
    Principal* lru_oldest_ = nullptr;
    sqlite3_stmt* stmt(int which) const { return stmts_[which]; }
    void token_hash(std::string_view token, unsigned char out[32]) const;

    StoreOptions options_;
    std::string db_path_;
    std::string epoch_;
    sqlite3* db_ = nullptr;
    std::vector<sqlite3_stmt*> stmts_;
    unsigned char secret_[32] = {};
    int lock_fd_ = -1;

    std::unordered_map<int64_t, std::unique_ptr<Principal>> by_pid_;
    std::unordered_map<std::string_view, Principal*> by_name_; // live principals
    ByName sorted_;                                            // the same, in name order
    std::unordered_map<std::string, ByName> skills_;           // skill -> live principals
    void index_skills(Principal* p, const Profile* before, const Profile* after);
    bool is_live(const Principal& p) const { return find(p.name) == &p; }
    std::unordered_map<int64_t, std::string> dead_names_; // deleted pid -> name
    std::vector<std::unique_ptr<Principal>> retired_;
    std::unordered_map<std::string, Group> groups_;
    // pubkey (32 raw bytes) -> owner and time added; only keys of live principals.
    struct KeyEntry {
        int64_t pid = 0;
        int64_t added_ms = 0;
    };
    std::unordered_map<std::string, KeyEntry> keys_;
    void insert_member(Group& g, Principal* p);

    // Open batch state.
    bool in_txn_ = false;
    bool batch_failed_ = false;
    std::string batch_error_;
    struct HeadUndo {
        Principal* p;
        int64_t head;
    };
    std::vector<HeadUndo> head_undo_;
    std::vector<Principal*> touched_;
    std::vector<std::function<void()>> undo_;  // admin changes to undo on failure
    std::vector<std::function<void()>> on_ok_; // admin changes to finish on success
    std::vector<std::pair<Principal*, std::string>> dirty_cursors_;

    // Degraded state, for meshctl status.
    bool degraded_ = false;
    std::string degraded_message_;

    std::unique_ptr<Checkpointer> checkpointer_;

    // sync = full: committed batches waiting for their fdatasync, oldest first.
    struct UndurableBatch {
        uint64_t no;
        std::vector<std::pair<int64_t, int64_t>> heads; // pid, head after the batch
    };
    std::deque<UndurableBatch> undurable_;
    uint64_t batch_no_ = 0;
    uint64_t forced_durable_ = 0; // sync_now()
    std::unique_ptr<WalSyncer> syncer_;
    core::UvAsync durable_notice_;
    std::function<void()> on_durable_;

    // Metrics: counted once per commit; file sizes are read only when rendering.
    struct Metrics {
        core::Counter messages_stored;
        core::Counter commit_failures;
        core::Counter retention_deleted;
        core::Histogram batch_messages;
        core::Histogram commit_seconds;
    };
    Metrics metrics_;
    size_t batch_messages_ = 0; // messages appended to the open batch
    core::CollectorHandle collector_;
    void register_metrics();
};

} // namespace meshd::store
