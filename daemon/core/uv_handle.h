// core/uv_handle: move-only owners for the uv handles the daemon creates itself.
//
// uv_close() is asynchronous: libuv still uses the handle until its close callback runs, so
// the owner hands the memory to that callback instead of freeing it (STYLE.md §3). Callbacks
// are std::function members of a heap block that lives exactly as long as the handle.
#pragma once

#include <functional>
#include <memory>
#include <utility>
#include <uv.h>

namespace meshd::core {

template <class H> class UvHandle {
  public:
    using Callback = std::function<void()>;

    UvHandle() = default;
    UvHandle(UvHandle&& other) noexcept : block_(std::exchange(other.block_, nullptr)) {}
    UvHandle& operator=(UvHandle&& other) noexcept {
        if (this != &other) {
            close();
            block_ = std::exchange(other.block_, nullptr);
        }
        return *this;
    }
    UvHandle(const UvHandle&) = delete;
    UvHandle& operator=(const UvHandle&) = delete;
    ~UvHandle() { close(); }

    H* get() { return block_ ? &block_->handle : nullptr; }
    explicit operator bool() const { return block_ != nullptr; }

    // Starts the close; the memory is released in the close callback.
    void close() {
        if (!block_)
            return;
        Block* raw = std::exchange(block_, nullptr);
        raw->callback = nullptr;
        uv_close(reinterpret_cast<uv_handle_t*>(&raw->handle), [](uv_handle_t* h) {
            std::unique_ptr<Block> owned(static_cast<Block*>(h->data));
        });
    }

  protected:
    struct Block {
        H handle{};
        Callback callback;
    };
    Block* block_ = nullptr;

    // Allocates the block; init() must have succeeded for the handle before close() is legal.
    Block* make_block(Callback cb) {
        auto block = std::make_unique<Block>();
        block->callback = std::move(cb);
        block->handle.data = block.get();
        return block.release();
    }
    static void fire(H* h) {
        auto* block = static_cast<Block*>(h->data);
        if (block->callback)
            block->callback();
    }
};

class UvTimer : public UvHandle<uv_timer_t> {
  public:
    static UvTimer create(uv_loop_t* loop, Callback cb) {
        UvTimer t;
        t.block_ = t.make_block(std::move(cb));
        uv_timer_init(loop, &t.block_->handle);
        return t;
    }
    void start(uint64_t timeout_ms, uint64_t repeat_ms) {
        uv_timer_start(
            get(), [](uv_timer_t* h) { fire(h); }, timeout_ms, repeat_ms);
    }
    void stop() {
        if (block_)
            uv_timer_stop(get());
    }
    void unref() { uv_unref(reinterpret_cast<uv_handle_t*>(get())); }
};

class UvCheck : public UvHandle<uv_check_t> {
  public:
    static UvCheck create(uv_loop_t* loop, Callback cb) {
        UvCheck c;
        c.block_ = c.make_block(std::move(cb));
        uv_check_init(loop, &c.block_->handle);
        uv_check_start(&c.block_->handle, [](uv_check_t* h) { fire(h); });
        return c;
    }
};

class UvSignal : public UvHandle<uv_signal_t> {
  public:
    static UvSignal create(uv_loop_t* loop, int signum, Callback cb) {
        UvSignal s;
        s.block_ = s.make_block(std::move(cb));
        uv_signal_init(loop, &s.block_->handle);
        uv_signal_start(
            &s.block_->handle, [](uv_signal_t* h, int) { fire(h); }, signum);
        return s;
    }
};

class UvAsync : public UvHandle<uv_async_t> {
  public:
    static UvAsync create(uv_loop_t* loop, Callback cb) {
        UvAsync a;
        a.block_ = a.make_block(std::move(cb));
        uv_async_init(loop, &a.block_->handle, [](uv_async_t* h) { fire(h); });
        return a;
    }
    // Thread-safe; sends coalesce, so the callback drains everything queued.
    void send() { uv_async_send(get()); }
    void unref() { uv_unref(reinterpret_cast<uv_handle_t*>(get())); }
};

// Monotonic milliseconds from the loop's cached clock.
inline uint64_t loop_ms(uv_loop_t* loop) {
    return uv_now(loop);
}

} // namespace meshd::core
