// store/tasks: work sent to skill:NAME — the tasks table, the open tasks in memory, and the
// task events appended to logs. See store.h (work dispatch) and meshd-protocol(7).
//
// Memory mirrors the unfinished rows of the tasks table: open_tasks_ (by id), one FIFO per
// skill of the queued ones (ids only grow, so a std::set of ids is the queue order, and a
// task put back keeps its place ahead of younger work), and per agent how many tracked tasks
// it holds (the dispatch policy's "fewest unfinished tasks"). Every change writes the row in
// the open batch and leaves an undo entry that restores memory if the batch fails.
#include "core/json.h"
#include "store/sqlite_util.h"
#include "store/store.h"

namespace meshd::store {

using detail::bind_text;
using detail::column_text;
using detail::sqlite_message;
using detail::StmtGuard;

namespace {

enum TaskStmt {
    t_insert,
    t_update,
    t_by_send,
    t_by_id,
    t_message,
    t_insert_log,
    t_add_copy,
    t_count
};

constexpr const char* task_columns =
    "t.tid, t.sender, t.sender_seq, t.mid, t.skill, t.tracked, t.state, t.agent, t.agent_seq, "
    "t.created_ms, t.updated_ms, t.queued_ms, t.deadline_ms, t.lease_until_ms, t.former";

const char* const task_sql[t_count] = {
    "INSERT INTO tasks(tid, sender, sender_seq, mid, skill, tracked, state, agent, agent_seq, "
    "created_ms, updated_ms, queued_ms, deadline_ms, lease_until_ms) "
    "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    "UPDATE tasks SET state = ?2, agent = ?3, agent_seq = ?4, updated_ms = ?5, queued_ms = ?6, "
    "lease_until_ms = ?7, former = ?8 WHERE tid = ?1",
    "SELECT t.tid, t.sender, t.sender_seq, t.mid, t.skill, t.tracked, t.state, t.agent, "
    "t.agent_seq, t.created_ms, t.updated_ms, t.queued_ms, t.deadline_ms, t.lease_until_ms, "
    "t.former FROM tasks t WHERE t.sender = ?1 AND t.sender_seq = ?2",
    "SELECT t.tid, t.sender, t.sender_seq, t.mid, t.skill, t.tracked, t.state, t.agent, "
    "t.agent_seq, t.created_ms, t.updated_ms, t.queued_ms, t.deadline_ms, t.lease_until_ms, "
    "t.former FROM tasks t WHERE t.tid = ?1",
    "SELECT to_text, ts, body, client_id, sender_seq, task FROM messages WHERE mid = ?1",
    "INSERT INTO log(pid, seq, mid) VALUES(?1, ?2, ?3)",
    "UPDATE messages SET refs = refs + 1, "
    "copies = CASE WHEN copies IS NULL THEN ?2 ELSE copies || ' ' || ?2 END WHERE mid = ?1",
};

Task task_from_row(sqlite3_stmt* s) {
    Task t;
    t.id = sqlite3_column_int64(s, 0);
    t.sender_pid = sqlite3_column_int64(s, 1);
    t.sender_seq = sqlite3_column_int64(s, 2);
    t.mid = sqlite3_column_int64(s, 3);
    t.skill = std::string(column_text(s, 4));
    t.tracked = sqlite3_column_int(s, 5) != 0;
    int state = sqlite3_column_int(s, 6);
    t.state = state >= 0 && state <= static_cast<int>(TaskState::canceled)
                  ? static_cast<TaskState>(state)
                  : TaskState::canceled;
    t.agent_pid = sqlite3_column_int64(s, 7);
    t.agent_seq = sqlite3_column_int64(s, 8);
    t.created_ms = sqlite3_column_int64(s, 9);
    t.updated_ms = sqlite3_column_int64(s, 10);
    t.queued_ms = sqlite3_column_int64(s, 11);
    t.deadline_ms = sqlite3_column_int64(s, 12);
    t.lease_until_ms = sqlite3_column_int64(s, 13);
    t.former = std::string(column_text(s, 14));
    return t;
}

constexpr std::string_view state_names[] = {"queued", "assigned", "working", "done",
                                            "failed", "expired",  "canceled"};

// The task member of a dispatched message: {"id":17} or {"id":17,"deadline":...}.
std::string task_member(const Task& t) {
    if (!t.tracked)
        return {};
    std::string out = R"({"id":)";
    core::json_append_int(out, t.id);
    if (t.deadline_ms > 0) {
        out += R"(,"deadline":)";
        core::json_append_int(out, t.deadline_ms);
    }
    out += '}';
    return out;
}

} // namespace

bool Task::held_before_by(int64_t pid) const {
    std::string_view rest = former;
    std::string want = std::to_string(pid);
    while (!rest.empty()) {
        size_t sp = rest.find(' ');
        if (rest.substr(0, sp) == want)
            return true;
        rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp + 1);
    }
    return false;
}

std::string_view to_string(TaskState s) {
    return state_names[static_cast<int>(s)];
}

std::optional<TaskState> parse_task_state(std::string_view name) {
    for (size_t i = 0; i < std::size(state_names); ++i)
        if (state_names[i] == name)
            return static_cast<TaskState>(i);
    return std::nullopt;
}

core::Result<void> Store::prepare_tasks() {
    task_stmts_.assign(t_count, nullptr);
    for (int i = 0; i < t_count; ++i)
        if (sqlite3_prepare_v3(db_, task_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &task_stmts_[i],
                               nullptr) != SQLITE_OK)
            return core::make_error(
                "internal", db_path_ + ": cannot prepare statement: " + sqlite_message(db_));
    return {};
}

core::Result<void> Store::load_tasks() {
    if (auto r = detail::for_each_row(
            db_, db_path_, "SELECT COALESCE(MAX(tid), 0) FROM tasks",
            [&](sqlite3_stmt* s) { next_task_id_ = sqlite3_column_int64(s, 0) + 1; });
        !r)
        return r;
    std::string open = std::string("SELECT ") + task_columns + " FROM tasks t WHERE t.state <= 2";
    return detail::for_each_row(db_, db_path_, open.c_str(),
                                [&](sqlite3_stmt* s) { put_task(task_from_row(s)); });
}

void Store::put_task(const Task& t) {
    if (is_finished(t.state))
        return;
    open_tasks_[t.id] = t;
    if (t.state == TaskState::queued)
        task_queues_[t.skill].insert(t.id);
    else if (t.tracked && t.agent_pid)
        ++held_tasks_[t.agent_pid];
}

void Store::drop_task(int64_t id) {
    auto it = open_tasks_.find(id);
    if (it == open_tasks_.end())
        return;
    const Task& t = it->second;
    if (t.state == TaskState::queued) {
        if (auto q = task_queues_.find(t.skill); q != task_queues_.end()) {
            q->second.erase(id);
            if (q->second.empty())
                task_queues_.erase(q);
        }
    } else if (t.tracked && t.agent_pid) {
        if (auto h = held_tasks_.find(t.agent_pid); h != held_tasks_.end() && --h->second == 0)
            held_tasks_.erase(h);
    }
    open_tasks_.erase(it);
}

void Store::remember_task(const Task& before, bool existed) {
    undo_.push_back([this, before, existed] {
        drop_task(before.id);
        if (existed)
            put_task(before);
    });
}

Task* Store::find_task(int64_t id) {
    auto it = open_tasks_.find(id);
    return it == open_tasks_.end() ? nullptr : &it->second;
}

const std::set<int64_t>* Store::task_queue(std::string_view skill) const {
    auto it = task_queues_.find(std::string(skill));
    return it == task_queues_.end() ? nullptr : &it->second;
}

size_t Store::held_tasks(int64_t pid) const {
    auto it = held_tasks_.find(pid);
    return it == held_tasks_.end() ? 0 : it->second;
}

std::string Store::principal_name(int64_t pid) const {
    if (pid == 0)
        return {};
    if (auto it = by_pid_.find(pid); it != by_pid_.end())
        return it->second->name;
    if (auto it = dead_names_.find(pid); it != dead_names_.end())
        return it->second;
    return {};
}

core::Result<void> Store::write_task(const Task& t) {
    // Into the batch, never on its own: the event that goes with it may still fail.
    if (auto r = begin_if_needed(); !r)
        return r;
    sqlite3_stmt* s = task_stmts_[t_update];
    StmtGuard g(s);
    sqlite3_bind_int64(s, 1, t.id);
    sqlite3_bind_int(s, 2, static_cast<int>(t.state));
    if (t.agent_pid) {
        sqlite3_bind_int64(s, 3, t.agent_pid);
        sqlite3_bind_int64(s, 4, t.agent_seq);
    } else {
        sqlite3_bind_null(s, 3);
        sqlite3_bind_null(s, 4);
    }
    sqlite3_bind_int64(s, 5, t.updated_ms);
    sqlite3_bind_int64(s, 6, t.queued_ms);
    sqlite3_bind_int64(s, 7, t.lease_until_ms);
    bind_text(s, 8, t.former);
    if (sqlite3_step(s) != SQLITE_DONE)
        return fail_batch("update task");
    return {};
}

// {"id":17,"state":"assigned","skill":"translate","msg":58,"agent":"tr-1"<extra>} as a task
// event in owner's log.
core::Result<void> Store::task_event(Principal* owner, const Task& t, int64_t msg_seq,
                                     std::string_view state, std::string_view extra, int64_t ts) {
    if (!owner || !is_live(*owner))
        return {};
    std::string& b = task_buf_;
    b.clear();
    b += R"({"id":)";
    core::json_append_int(b, t.id);
    b += R"(,"state":)";
    core::json_append_string(b, state);
    b += R"(,"skill":)";
    core::json_append_string(b, t.skill);
    b += R"(,"msg":)";
    core::json_append_int(b, msg_seq);
    if (t.agent_pid) {
        b += R"(,"agent":)";
        core::json_append_string(b, principal_name(t.agent_pid));
    }
    b += extra;
    b += '}';
    std::string to = "task:" + std::to_string(t.id);
    std::string body = b; // task_buf_ may be reused by a nested call; append copies anyway
    auto r = append(owner, to, {}, body, {}, ts);
    if (!r)
        return r.error();
    return {};
}

// Stores `after` in place of `before` (row and event in the batch), then memory, with undo.
core::Result<void> Store::move_task(const Task& before, const Task& after, std::string_view state,
                                    std::string_view extra, bool tell_holder, int64_t ts) {
    if (auto r = write_task(after); !r)
        return r;
    if (auto r = task_event(find_pid(after.sender_pid), after, after.sender_seq, state, extra, ts);
        !r)
        return r;
    if (tell_holder && after.agent_pid)
        if (auto r =
                task_event(find_pid(after.agent_pid), after, after.agent_seq, state, extra, ts);
            !r)
            return r;
    remember_task(before, true);
    drop_task(before.id);
    put_task(after);
    return {};
}

core::Result<SkillSendResult> Store::send_to_skill(Principal* sender, std::string_view skill,
                                                   std::string_view body,
                                                   std::string_view client_id, int64_t ts,
                                                   bool tracked, int64_t deadline_ms) {
    Task t;
    t.id = next_task_id_++;
    t.sender_pid = sender->pid;
    t.skill = std::string(skill);
    t.tracked = tracked;
    t.deadline_ms = tracked ? deadline_ms : 0;
    t.created_ms = t.updated_ms = t.queued_ms = ts;
    std::string to = "skill:" + t.skill;
    std::string member = task_member(t);
    AppendExtra extra;
    extra.task = member;
    auto appended = append(sender, to, {}, body, client_id, ts, extra);
    if (!appended)
        return appended.error();
    SkillSendResult out;
    out.append = *appended;
    if (appended->dup) {
        // The first send's task: in memory while unfinished, else in the table.
        for (const auto& [id, open] : open_tasks_)
            if (open.sender_pid == sender->pid && open.sender_seq == appended->sender_seq) {
                out.task = open;
                return out;
            }
        sqlite3_stmt* s = task_stmts_[t_by_send];
        StmtGuard g(s);
        sqlite3_bind_int64(s, 1, sender->pid);
        sqlite3_bind_int64(s, 2, appended->sender_seq);
        int rc = sqlite3_step(s);
        if (rc == SQLITE_ROW)
            out.task = task_from_row(s);
        else if (rc != SQLITE_DONE)
            return fail_batch("find task");
        return out;
    }
    t.sender_seq = appended->sender_seq;
    t.mid = appended->mid;
    sqlite3_stmt* s = task_stmts_[t_insert];
    StmtGuard g(s);
    sqlite3_bind_int64(s, 1, t.id);
    sqlite3_bind_int64(s, 2, t.sender_pid);
    sqlite3_bind_int64(s, 3, t.sender_seq);
    sqlite3_bind_int64(s, 4, t.mid);
    bind_text(s, 5, t.skill);
    sqlite3_bind_int(s, 6, t.tracked ? 1 : 0);
    sqlite3_bind_int(s, 7, static_cast<int>(t.state));
    sqlite3_bind_null(s, 8);
    sqlite3_bind_null(s, 9);
    sqlite3_bind_int64(s, 10, t.created_ms);
    sqlite3_bind_int64(s, 11, t.updated_ms);
    sqlite3_bind_int64(s, 12, t.queued_ms);
    sqlite3_bind_int64(s, 13, t.deadline_ms);
    sqlite3_bind_int64(s, 14, 0);
    if (sqlite3_step(s) != SQLITE_DONE)
        return fail_batch("insert task");
    remember_task(t, false);
    put_task(t);
    out.task = t;
    return out;
}

core::Result<void> Store::assign_task(Task& t, Principal& agent, int64_t ts) {
    Principal* sender = find_pid(t.sender_pid);
    if (!sender)
        return core::make_error("not_found",
                                "the sender of task " + std::to_string(t.id) + " was deleted");
    if (auto r = begin_if_needed(); !r)
        return r;
    // The send's message, shared with the sender's log: from its memory tail while there,
    // else from the table.
    MessageRef msg;
    for (auto it = sender->tail.rbegin(); it != sender->tail.rend() && it->seq >= t.sender_seq;
         ++it)
        if (it->seq == t.sender_seq) {
            msg = it->msg;
            break;
        }
    if (!msg) {
        sqlite3_stmt* s = task_stmts_[t_message];
        StmtGuard g(s);
        sqlite3_bind_int64(s, 1, t.mid);
        int rc = sqlite3_step(s);
        if (rc == SQLITE_DONE)
            return core::make_error("not_found",
                                    "the message of task " + std::to_string(t.id) + " is gone");
        if (rc != SQLITE_ROW)
            return fail_batch("read task message");
        auto m = std::make_shared<MessageData>();
        m->from = sender->name;
        m->to = std::string(column_text(s, 0));
        m->ts = sqlite3_column_int64(s, 1);
        m->body = std::string(column_text(s, 2));
        m->client_id = std::string(column_text(s, 3));
        m->sender_pid = sender->pid;
        m->sender_seq = sqlite3_column_int64(s, 4);
        m->task = std::string(column_text(s, 5));
        msg = std::move(m);
    }
    Task before = t;
    touch(&agent);
    int64_t seq = agent.head + 1;
    {
        sqlite3_stmt* s = task_stmts_[t_insert_log];
        StmtGuard g(s);
        sqlite3_bind_int64(s, 1, agent.pid);
        sqlite3_bind_int64(s, 2, seq);
        sqlite3_bind_int64(s, 3, t.mid);
        if (sqlite3_step(s) != SQLITE_DONE)
            return fail_batch("append to log");
    }
    {
        const std::string copy = std::to_string(agent.pid) + ':' + std::to_string(seq);
        sqlite3_stmt* s = task_stmts_[t_add_copy];
        StmtGuard g(s);
        sqlite3_bind_int64(s, 1, t.mid);
        bind_text(s, 2, copy);
        if (sqlite3_step(s) != SQLITE_DONE)
            return fail_batch("append to log");
    }
    agent.head = seq;
    tail_push(&agent, {seq, std::move(msg)});
    tail_evict();
    Task after = t;
    after.state = t.tracked ? TaskState::assigned : TaskState::done; // untracked: delivered
    after.agent_pid = agent.pid;
    after.agent_seq = seq;
    after.updated_ms = ts;
    after.lease_until_ms = 0;
    return move_task(before, after, "assigned", {}, false, ts); // t is gone from here on
}

core::Result<void> Store::set_task_state(Task& t, TaskState to, std::string_view extra,
                                         int64_t ts) {
    Task after = t;
    after.state = to;
    after.updated_ms = ts;
    after.lease_until_ms = 0;
    // The holder learns from its own log of what ended its work from elsewhere.
    bool tell_holder = to == TaskState::canceled || to == TaskState::expired;
    return move_task(t, after, to_string(to), extra, tell_holder, ts);
}

core::Result<void> Store::requeue_task(Task& t, int64_t ts) {
    Task before = t;
    Task after = t;
    after.state = TaskState::queued;
    if (!after.former.empty())
        after.former += ' ';
    after.former += std::to_string(t.agent_pid);
    after.agent_pid = 0;
    after.agent_seq = 0;
    after.updated_ms = after.queued_ms = ts;
    after.lease_until_ms = 0;
    std::string extra = R"(,"reason":"lease_expired","previous":)";
    core::json_append_string(extra, principal_name(before.agent_pid));
    return move_task(before, after, "queued", extra, false, ts);
}

core::Result<void> Store::set_task_lease(Task& t, int64_t until_ms) {
    if (t.lease_until_ms == until_ms)
        return {};
    Task after = t;
    after.lease_until_ms = until_ms;
    if (auto r = write_task(after); !r)
        return r;
    remember_task(t, true);
    t.lease_until_ms = until_ms; // in place: neither the queue nor the counts change
    return {};
}

core::Result<std::optional<TaskRow>> Store::stored_task(int64_t id) {
    sqlite3_stmt* s = task_stmts_[t_by_id];
    StmtGuard g(s);
    sqlite3_bind_int64(s, 1, id);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE)
        return std::optional<TaskRow>();
    if (rc != SQLITE_ROW)
        return core::make_error("unavailable",
                                std::string("cannot read the tasks: ") + sqlite_message(db_));
    TaskRow row;
    row.task = task_from_row(s);
    row.sender = principal_name(row.task.sender_pid);
    row.agent = principal_name(row.task.agent_pid);
    return std::optional<TaskRow>(std::move(row));
}

core::Result<std::vector<TaskRow>> Store::list_tasks(const TaskFilter& filter) {
    std::string sql = std::string("SELECT ") + task_columns +
                      " FROM tasks t WHERE t.tracked = 1 AND (?1 < 0 OR t.state = ?1) "
                      "AND (?2 = '' OR t.skill = ?2) ORDER BY t.tid DESC LIMIT ?3";
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &s, nullptr) != SQLITE_OK)
        return core::make_error("internal", "cannot list tasks: " + sqlite_message(db_));
    sqlite3_bind_int(s, 1, filter.state ? static_cast<int>(*filter.state) : -1);
    bind_text(s, 2, filter.skill);
    sqlite3_bind_int64(s, 3, static_cast<int64_t>(filter.limit));
    std::vector<TaskRow> out;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        TaskRow row;
        row.task = task_from_row(s);
        row.sender = principal_name(row.task.sender_pid);
        row.agent = principal_name(row.task.agent_pid);
        out.push_back(std::move(row));
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE)
        return core::make_error("unavailable", "cannot list tasks: " + sqlite_message(db_));
    return out;
}

} // namespace meshd::store
