// store/store: the SQLite store — principals, tokens, ed25519 keys, messages, per-principal
// logs, cursors.
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
//   principal's log, the message id (mid) increases with seq too: messages are inserted one
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

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
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

// One stored message; shared (immutable once built) between every log that references it.
struct MessageData {
    std::string from;      // sender's name
    std::string to;        // the address as stored: a principal name or "#group"
    std::string client_id; // the sender's id, or empty
    int64_t ts = 0;        // server receive time, ms since the epoch
    std::string body;      // the body's JSON text, exactly as received
    int64_t sender_pid = 0; // the sender's internal id
    int64_t sender_seq = 0; // the message's seq in the sender's log
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
    // The newest log entries (committed and pending), contiguous in seq, at most tail_limit.
    std::deque<LogEntry> tail;
    // device -> highest seq the device acknowledged ("ack upto").
    std::unordered_map<std::string, int64_t> cursors;
    // The highest of the cursors: every entry up to it reached at least one device.
    int64_t delivered_upto = 0;
    // The explicit read marker (frame `read`): monotonic, stored in read_markers.
    int64_t read_upto = 0;
    // Setting read_receipts: whether senders learn about read_upto (stored in
    // principal_settings; on unless turned off).
    bool read_receipts = true;
};

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
    int64_t checkpoint_wal_bytes = 64 << 20;
    size_t tail_limit = 256;
};

struct AppendResult {
    int64_t sender_seq = 0; // the message's seq in the sender's log
    bool dup = false;       // an earlier send with the same id was found
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
    // Reads committed entries of p's log with seq >= from_seq, in order, at most max_rows
    // rows and (after the first row) about max_bytes of body. The statement is reset before
    // returning, so no read transaction stays open.
    core::Result<void> read_page(const Principal& p, int64_t from_seq, size_t max_rows,
                                 size_t max_bytes, std::vector<LogEntry>& out);
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
    // Frees the principals deleted by committed batches.
    void drop_retired() { retired_.clear(); }

  private:
    explicit Store(StoreOptions options);
    core::Result<void> open_db();
    core::Result<void> migrate();
    core::Result<void> load();
    core::Result<void> prepare_all();
    core::Result<void> begin_if_needed();
    core::Error fail_batch(const char* what);
    void rollback_batch();
    void touch(Principal* p);
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
    std::unordered_map<int64_t, std::string> dead_names_;      // deleted pid -> name
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
        core::Histogram batch_messages;
        core::Histogram commit_seconds;
    };
    Metrics metrics_;
    size_t batch_messages_ = 0; // messages appended to the open batch
    core::CollectorHandle collector_;
    void register_metrics();
};

} // namespace meshd::store
