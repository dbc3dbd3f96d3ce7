// core/vec_queue: a FIFO on one vector, for per-connection queues that are usually empty.
//
// std::deque allocates a map and a 512-byte node as soon as it is constructed, so two empty
// deques cost an idle connection over a kilobyte. VecQueue allocates nothing until the first
// push, pops by moving a head index (compacting once the dead prefix is half the vector), and
// gives its memory back when it runs empty after holding many items. Iterators (begin()..end(),
// the live items in order) are invalidated by every change, as with a vector.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace meshd::core {

template <class T> class VecQueue {
  public:
    using iterator = typename std::vector<T>::iterator;

    bool empty() const { return head_ == items_.size(); }
    size_t size() const { return items_.size() - head_; }
    T& front() { return items_[head_]; }
    const T& front() const { return items_[head_]; }
    iterator begin() { return items_.begin() + static_cast<std::ptrdiff_t>(head_); }
    iterator end() { return items_.end(); }

    void push_back(T item) { items_.push_back(std::move(item)); }
    iterator insert(iterator pos, T item) { return items_.insert(pos, std::move(item)); }
    void erase(iterator first, iterator last) {
        items_.erase(first, last);
        if (empty())
            clear();
    }
    void pop_front() {
        items_[head_] = T(); // release what the item holds now
        ++head_;
        if (empty())
            clear();
        else if (head_ >= compact_after && head_ * 2 >= items_.size()) {
            items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
            head_ = 0;
        }
    }
    void clear() {
        items_.clear();
        head_ = 0;
        if (items_.capacity() > keep_capacity)
            std::vector<T>().swap(items_);
    }

  private:
    static constexpr size_t compact_after = 32;
    static constexpr size_t keep_capacity = 8;
    std::vector<T> items_;
    size_t head_ = 0;
};

} // namespace meshd::core
