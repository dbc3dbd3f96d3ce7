// session/frame: parsing one client frame (a JSON text) into its envelope fields.
//
// The whole frame is validated by simdjson's DOM parser (JSON grammar, UTF-8, nesting depth).
// The envelope fields are read from the DOM; the `body` is taken as the exact JSON text the
// client sent (found by a scan of the validated text), so it is relayed without re-encoding.
#pragma once

#include <cstdint>
#include <simdjson.h>
#include <string>
#include <string_view>
#include <vector>

namespace meshd::session {

enum class FrameType {
    unknown, hello, auth, send, ack,
    watch, status, profile, who,              // presence and directory
    history, typing, read, receipts, settings, // conversations
    task                                        // work dispatch
};

// Protocol bounds of the conversation frames (meshd-protocol(7), CONVERSATIONS).
inline constexpr int64_t default_history_limit = 50;
inline constexpr int64_t max_history_limit = 500;
inline constexpr size_t max_receipt_seqs = 100;
// A task's failed or canceled reason.
inline constexpr size_t max_task_reason_bytes = 200;

struct Frame {
    FrameType type = FrameType::unknown;
    std::string_view type_name;
    std::string_view ref; // empty when absent
    bool has_ref = false;
    // The whole frame, for handlers that read more than these fields (profile).
    simdjson::dom::object object;
    // hello
    bool has_token = false;
    std::string_view token;
    bool has_device = false;
    std::string_view device;
    std::string_view claimed_id;
    std::string_view epoch;
    bool has_epoch = false;
    enum class Resume { none, seq, head } resume = Resume::none;
    int64_t resume_seq = 0;
    bool has_pubkey = false; // ed25519: the key to be challenged, base64 as sent
    std::string_view pubkey;
    // The events this device wants besides messages (hello "events"); unknown names ignored.
    bool wants_receipts = false;
    bool wants_typing = false;
    // auth (the answer to a challenge)
    bool has_sig = false;
    std::string_view sig;
    bool has_nonce = false; // optional: the nonce the client answers, as sent
    std::string_view nonce;
    // send
    std::string_view to;
    std::string_view body; // raw JSON text of the value
    bool has_id = false;
    std::string_view id;
    bool has_task = false;    // send: "task" (an object) opens a tracked task
    int64_t deadline_ms = 0;  // send: task.deadline; 0: none
    // task (the client's frame): id, state, result (raw JSON text; "null" when absent), reason
    int64_t task_id = 0;
    std::string_view task_state;
    std::string_view result;
    bool has_reason = false;
    std::string_view reason;
    // ack, read
    int64_t upto = 0;
    // watch: every item is a string
    simdjson::dom::array ids;
    // status
    std::string_view status;
    std::string_view note; // empty when absent
    // who (and history: limit)
    bool has_skill = false;
    std::string_view skill;
    bool has_kind = false;
    std::string_view kind;
    bool has_online = false;
    bool online = false;
    int64_t limit = default_history_limit; // who and history: both default to 50
    bool has_who_after = false;
    std::string_view who_after;
    // history
    bool has_with = false;
    std::string_view with;
    bool has_before = false;
    int64_t before = 0;
    bool has_after = false;
    int64_t after = 0;
    // typing (`to` as for send)
    bool typing_stop = false;
    // receipts
    std::vector<int64_t> seqs;
    // settings
    bool has_read_receipts = false;
    bool read_receipts = true;
};

// Limits of the who query (meshd-protocol(7), "who").
inline constexpr int64_t who_default_limit = 50;
inline constexpr int64_t who_max_limit = 500;

struct FrameError {
    const char* code = nullptr; // null: no error
    std::string message;
    explicit operator bool() const { return code != nullptr; }
};

class FrameParser {
  public:
    explicit FrameParser(size_t max_depth);
    void set_max_depth(size_t max_depth);
    // `text` must have at least simdjson::SIMDJSON_PADDING readable bytes after its end.
    // Views in `out` stay valid until the next parse or until `text` changes.
    FrameError parse(std::string_view text, Frame& out);

  private:
    simdjson::dom::parser parser_;
    std::string body_fallback_;
    size_t max_depth_;
};

// Finds the raw text of the value of the first top-level key `key` in a JSON object text that
// is already known to be valid. Returns false if the key is absent or a key before it uses
// escapes (then the caller must fall back to the DOM).
bool find_top_level_value(std::string_view json, std::string_view key, std::string_view& value);

} // namespace meshd::session
