// store/sqlite_util: small helpers shared by the store's SQLite users (the loop's writer
// connection in store.cc, the reader threads in reader.cc). Internal to the store layer.
#pragma once

#include "core/result.h"

#include <sqlite3.h>
#include <string>
#include <string_view>

namespace meshd::store::detail {

// Resets and clears a statement when the scope ends, so it never pins a read transaction
// (an un-reset statement keeps its snapshot and stalls WAL checkpoints).
class StmtGuard {
  public:
    explicit StmtGuard(sqlite3_stmt* s) : s_(s) {}
    ~StmtGuard() {
        sqlite3_reset(s_);
        sqlite3_clear_bindings(s_);
    }
    StmtGuard(const StmtGuard&) = delete;
    StmtGuard& operator=(const StmtGuard&) = delete;

  private:
    sqlite3_stmt* s_;
};

// An empty view may have no data pointer, which SQLite would bind as NULL: bind '' instead.
inline void bind_text(sqlite3_stmt* s, int i, std::string_view v) {
    sqlite3_bind_text(s, i, v.empty() ? "" : v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
}

inline std::string_view column_text(sqlite3_stmt* s, int i) {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s, i));
    return p ? std::string_view(p, static_cast<size_t>(sqlite3_column_bytes(s, i)))
             : std::string_view();
}

inline std::string sqlite_message(sqlite3* db) {
    return db ? sqlite3_errmsg(db) : "out of memory";
}

// Runs `sql` once (prepared, stepped, finalized), calling row(stmt) for each row. Errors
// name `path`.
template <class Row>
core::Result<void> for_each_row(sqlite3* db, const std::string& path, const char* sql, Row&& row) {
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) != SQLITE_OK)
        return core::make_error("internal", path + ": " + sqlite_message(db));
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW)
        row(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE)
        return core::make_error("internal", path + ": " + sqlite_message(db));
    return {};
}

} // namespace meshd::store::detail
