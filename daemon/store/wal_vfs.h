// store/wal_vfs: a SQLite VFS shim that writes a transaction's WAL frames in one system call.
//
// SQLite appends each WAL frame with two pwrite calls (a 24-byte header, then the page). A
// commit of a loop turn dirties one log page per principal that sent or received, so a turn
// with 32 active principals cost about 70 pwrites — most of meshd's system time on a loaded
// point-to-point run. The shim collects consecutive appends to a WAL file in a buffer and
// writes them with one pwrite when the commit frame (a frame header with a non-zero "database
// size" field) has been added, and before any other operation on any file of the same thread
// (a read, a sync, a size, a lock, shared-memory access), so nothing ever observes the file
// without the buffered bytes: once a commit returns, its frames are in the kernel, as before.
// A failing write is reported by the xWrite that flushes, i.e. by the commit itself.
#pragma once

namespace meshd::store {

// Registers the shim over the default VFS once (thread-safe) and returns its name, to pass
// to sqlite3_open_v2; null if it cannot be registered (then use the default VFS).
const char* wal_batching_vfs();

// The errno of this thread's last failed write, sync or truncate through the shim, 0 if
// none since the last call; clears it. SQLite itself only says "disk I/O error", whether
// the disk failed or the kernel remounted the file system read-only.
int last_write_errno();

} // namespace meshd::store
