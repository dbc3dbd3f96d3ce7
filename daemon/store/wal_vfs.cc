// store/wal_vfs: the WAL write-batching VFS shim (see wal_vfs.h).
#include "store/wal_vfs.h"

#include "core/log.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <sqlite3.h>
#include <string>

namespace meshd::store {
namespace {

constexpr size_t flush_above_bytes = 4 << 20; // a huge transaction still goes out in pieces
constexpr size_t max_write_bytes = 124 << 10;
constexpr int frame_header_bytes = 24;

struct WalBuffer {
    std::string bytes;
    sqlite3_int64 offset = 0;         // file offset of bytes[0]
    bool flush_after_next = false;    // the commit frame's header is in: its page comes next
};

// What SQLite allocates for each open file: our part, then the real file (szOsFile bytes).
struct ShimFile {
    sqlite3_file base;
    sqlite3_file* real;
    WalBuffer* wal; // only for WAL files
};

sqlite3_vfs* real_vfs = nullptr;
sqlite3_vfs shim_vfs{};

// The one file of this thread with buffered bytes. Connections are used by one thread at a
// time, so every operation that could observe those bytes runs on this thread after them.
thread_local ShimFile* pending = nullptr;

// errno of this thread's last failed write, sync or truncate (see last_write_errno()).
thread_local int failed_errno = 0;

int noted(int rc) {
    if (rc != SQLITE_OK)
        failed_errno = errno;
    return rc;
}

int flush(ShimFile* f) {
    WalBuffer& b = *f->wal;
    if (pending == f)
        pending = nullptr;
    b.flush_after_next = false;
    if (b.bytes.empty())
        return SQLITE_OK;
    // The unix VFS writes at most 128 KiB - 1 per call (it masks the length): go in pieces.
    int rc = SQLITE_OK;
    for (size_t done = 0; done < b.bytes.size() && rc == SQLITE_OK;) {
        size_t n = std::min(b.bytes.size() - done, max_write_bytes);
        rc = noted(f->real->pMethods->xWrite(f->real, b.bytes.data() + done,
                                             static_cast<int>(n),
                                             b.offset + static_cast<sqlite3_int64>(done)));
        done += n;
    }
    b.bytes.clear();
    if (b.bytes.capacity() > flush_above_bytes)
        std::string().swap(b.bytes);
    return rc;
}

int flush_pending() { return pending ? flush(pending) : SQLITE_OK; }

ShimFile* shim(sqlite3_file* f) { return reinterpret_cast<ShimFile*>(f); }
sqlite3_file* real(sqlite3_file* f) { return shim(f)->real; }

// ---- io methods: flush what this thread buffered, then do the real thing ----------------

int x_close(sqlite3_file* file) {
    ShimFile* f = shim(file);
    int rc = flush_pending();
    int rc2 = f->real->pMethods->xClose(f->real);
    delete f->wal;
    f->wal = nullptr;
    return rc != SQLITE_OK ? rc : rc2;
}

int x_read(sqlite3_file* f, void* out, int amt, sqlite3_int64 off) {
    if (int rc = flush_pending(); rc != SQLITE_OK)
        return rc;
    return real(f)->pMethods->xRead(real(f), out, amt, off);
}

int x_write(sqlite3_file* file, const void* data, int amt, sqlite3_int64 off) {
    ShimFile* f = shim(file);
    if (pending && pending != f)
        if (int rc = flush_pending(); rc != SQLITE_OK)
            return rc;
    if (!f->wal)
        return noted(f->real->pMethods->xWrite(f->real, data, amt, off));
    WalBuffer& b = *f->wal;
    if (!b.bytes.empty() && off != b.offset + static_cast<sqlite3_int64>(b.bytes.size()))
        if (int rc = flush(f); rc != SQLITE_OK)
            return rc;
    if (b.bytes.empty())
        b.offset = off;
    const bool last = b.flush_after_next;
    b.bytes.append(static_cast<const char*>(data), static_cast<size_t>(amt));
    pending = f;
    // A frame header is 24 bytes; bytes 4..7 hold the database size after a commit frame and
    // are zero in every other frame. The commit frame's page is the transaction's last write.
    if (amt == frame_header_bytes) {
        const auto* h = static_cast<const unsigned char*>(data);
        b.flush_after_next = (h[4] | h[5] | h[6] | h[7]) != 0;
    } else if (last || b.bytes.size() >= flush_above_bytes) {
        return flush(f);
    }
    return SQLITE_OK;
}

int x_truncate(sqlite3_file* f, sqlite3_int64 size) {
    if (int rc = flush_pending(); rc != SQLITE_OK)
        return rc;
    return noted(real(f)->pMethods->xTruncate(real(f), size));
}

int x_sync(sqlite3_file* f, int flags) {
    if (int rc = flush_pending(); rc != SQLITE_OK)
        return rc;
    return noted(real(f)->pMethods->xSync(real(f), flags));
}

int x_file_size(sqlite3_file* f, sqlite3_int64* size) {
    if (int rc = flush_pending(); rc != SQLITE_OK)
        return rc;
    return real(f)->pMethods->xFileSize(real(f), size);
}

int x_lock(sqlite3_file* f, int level) {
    if (int rc = flush_pending(); rc != SQLITE_OK)
        return rc;
    return real(f)->pMethods->xLock(real(f), level);
}

int x_unlock(sqlite3_file* f, int level) {
    if (int rc = flush_pending(); rc != SQLITE_OK)
        return rc;
    return real(f)->pMethods->xUnlock(real(f), level);
}

int x_check_reserved_lock(sqlite3_file* f, int* out) {
    if (int rc = flush_pending(); rc != SQLITE_OK)
        return rc;
    return real(f)->pMethods->xCheckReservedLock(real(f), out);
}

int x_file_control(sqlite3_file* f, int op, void* arg) {
    if (int rc = flush_pending(); rc != SQLITE_OK)
        return rc;
    return real(f)->pMethods->xFileControl(real(f), op, arg);
}

int x_sector_size(sqlite3_file* f) { return real(f)->pMethods->xSectorSize(real(f)); }

int x_device_characteristics(sqlite3_file* f) {
    return real(f)->pMethods->xDeviceCharacteristics(real(f));
}

int x_shm_map(sqlite3_file* f, int page, int page_size, int extend, void volatile** out) {
    if (int rc = flush_pending(); rc != SQLITE_OK)
        return rc;
    return real(f)->pMethods->xShmMap(real(f), page, page_size, extend, out);
}

int x_shm_lock(sqlite3_file* f, int offset, int n, int flags) {
    if (int rc = flush_pending(); rc != SQLITE_OK)
        return rc;
    return real(f)->pMethods->xShmLock(real(f), offset, n, flags);
}

// Before the WAL index header is published. The commit frame's write has flushed already;
// this only catches a sequence that did not end with a commit frame.
void x_shm_barrier(sqlite3_file* f) {
    if (int rc = flush_pending(); rc != SQLITE_OK)
        MESHD_LOG(error, "store.wal_write_failed", "code=%d", rc);
    real(f)->pMethods->xShmBarrier(real(f));
}

int x_shm_unmap(sqlite3_file* f, int delete_flag) {
    if (int rc = flush_pending(); rc != SQLITE_OK)
        return rc;
    return real(f)->pMethods->xShmUnmap(real(f), delete_flag);
}

int x_fetch(sqlite3_file* f, sqlite3_int64 off, int amt, void** out) {
    if (int rc = flush_pending(); rc != SQLITE_OK)
        return rc;
    return real(f)->pMethods->xFetch(real(f), off, amt, out);
}

int x_unfetch(sqlite3_file* f, sqlite3_int64 off, void* p) {
    return real(f)->pMethods->xUnfetch(real(f), off, p);
}

const sqlite3_io_methods shim_methods = {
    3,           x_close,         x_read,      x_write,      x_truncate,
    x_sync,      x_file_size,     x_lock,      x_unlock,     x_check_reserved_lock,
    x_file_control, x_sector_size, x_device_characteristics, x_shm_map, x_shm_lock,
    x_shm_barrier, x_shm_unmap,   x_fetch,     x_unfetch,
};

// ---- vfs methods ----------------------------------------------------------------------

int v_open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* file, int flags, int* out_flags) {
    if (int rc = flush_pending(); rc != SQLITE_OK)
        return rc;
    ShimFile* f = shim(file);
    f->base.pMethods = nullptr;
    f->real = reinterpret_cast<sqlite3_file*>(f + 1);
    f->wal = nullptr;
    int rc = real_vfs->xOpen(real_vfs, name, f->real, flags, out_flags);
    if (rc != SQLITE_OK || !f->real->pMethods)
        return rc;
    // The real file's methods must offer what ours forward (the unix VFS gives version 3).
    if (f->real->pMethods->iVersion < 3) {
        f->real->pMethods->xClose(f->real);
        return SQLITE_CANTOPEN;
    }
    if (flags & SQLITE_OPEN_WAL)
        f->wal = new WalBuffer;
    f->base.pMethods = &shim_methods;
    return SQLITE_OK;
}

int v_delete(sqlite3_vfs*, const char* name, int sync_dir) {
    if (int rc = flush_pending(); rc != SQLITE_OK)
        return rc;
    return real_vfs->xDelete(real_vfs, name, sync_dir);
}
int v_access(sqlite3_vfs*, const char* name, int flags, int* out) {
    return real_vfs->xAccess(real_vfs, name, flags, out);
}
int v_full_pathname(sqlite3_vfs*, const char* name, int n, char* out) {
    return real_vfs->xFullPathname(real_vfs, name, n, out);
}
void* v_dl_open(sqlite3_vfs*, const char* name) { return real_vfs->xDlOpen(real_vfs, name); }
void v_dl_error(sqlite3_vfs*, int n, char* out) { real_vfs->xDlError(real_vfs, n, out); }
void (*v_dl_sym(sqlite3_vfs*, void* h, const char* sym))(void) {
    return real_vfs->xDlSym(real_vfs, h, sym);
}
void v_dl_close(sqlite3_vfs*, void* h) { real_vfs->xDlClose(real_vfs, h); }
int v_randomness(sqlite3_vfs*, int n, char* out) { return real_vfs->xRandomness(real_vfs, n, out); }
int v_sleep(sqlite3_vfs*, int us) { return real_vfs->xSleep(real_vfs, us); }
int v_current_time(sqlite3_vfs*, double* out) { return real_vfs->xCurrentTime(real_vfs, out); }
int v_get_last_error(sqlite3_vfs*, int n, char* out) {
    return real_vfs->xGetLastError(real_vfs, n, out);
}
int v_current_time_int64(sqlite3_vfs*, sqlite3_int64* out) {
    return real_vfs->xCurrentTimeInt64(real_vfs, out);
}

} // namespace

const char* wal_batching_vfs() {
    static std::once_flag once;
    static bool ok = false;
    std::call_once(once, [] {
        real_vfs = sqlite3_vfs_find(nullptr);
        if (!real_vfs || real_vfs->iVersion < 2)
            return;
        shim_vfs.iVersion = 2;
        shim_vfs.szOsFile = static_cast<int>(sizeof(ShimFile)) + real_vfs->szOsFile;
        shim_vfs.mxPathname = real_vfs->mxPathname;
        shim_vfs.zName = "meshd-wal-batch";
        shim_vfs.xOpen = v_open;
        shim_vfs.xDelete = v_delete;
        shim_vfs.xAccess = v_access;
        shim_vfs.xFullPathname = v_full_pathname;
        shim_vfs.xDlOpen = v_dl_open;
        shim_vfs.xDlError = v_dl_error;
        shim_vfs.xDlSym = v_dl_sym;
        shim_vfs.xDlClose = v_dl_close;
        shim_vfs.xRandomness = v_randomness;
        shim_vfs.xSleep = v_sleep;
        shim_vfs.xCurrentTime = v_current_time;
        shim_vfs.xGetLastError = v_get_last_error;
        shim_vfs.xCurrentTimeInt64 = v_current_time_int64;
        ok = sqlite3_vfs_register(&shim_vfs, 0) == SQLITE_OK;
    });
    return ok ? shim_vfs.zName : nullptr;
}

int last_write_errno() {
    int e = failed_errno;
    failed_errno = 0;
    return e;
}

} // namespace meshd::store
