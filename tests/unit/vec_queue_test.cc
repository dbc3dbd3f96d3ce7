// tests/unit/vec_queue_test: the per-connection FIFO keeps order through pushes, pops,
// sorted inserts and range erases, across its compaction, and holds no memory when empty.
#include "core/vec_queue.h"

#include <algorithm>
#include <deque>
#include <gtest/gtest.h>
#include <random>
#include <string>
#include <vector>

namespace meshd::core {
namespace {

template <class Q> std::vector<int> items(Q& q) { return std::vector<int>(q.begin(), q.end()); }

TEST(VecQueue, FifoOrderAcrossCompaction) {
    VecQueue<int> q;
    EXPECT_TRUE(q.empty());
    for (int i = 0; i < 100; ++i)
        q.push_back(i);
    for (int i = 0; i < 70; ++i) { // passes the compaction point (32, then half)
        ASSERT_EQ(q.front(), i);
        q.pop_front();
    }
    EXPECT_EQ(q.size(), 30u);
    for (int i = 100; i < 110; ++i)
        q.push_back(i);
    std::vector<int> want;
    for (int i = 70; i < 110; ++i)
        want.push_back(i);
    EXPECT_EQ(items(q), want);
}

TEST(VecQueue, SortedInsertAndEraseTailLikeTheAckQueue) {
    VecQueue<int> q;
    for (int v : {10, 20, 30, 40})
        q.push_back(v);
    q.pop_front(); // 20 30 40
    q.insert(std::upper_bound(q.begin(), q.end(), 25), 25);
    EXPECT_EQ(items(q), (std::vector<int>{20, 25, 30, 40}));
    q.erase(std::upper_bound(q.begin(), q.end(), 25), q.end());
    EXPECT_EQ(items(q), (std::vector<int>{20, 25}));
    q.erase(q.begin(), q.end());
    EXPECT_TRUE(q.empty());
    q.push_back(7);
    EXPECT_EQ(q.front(), 7);
}

// Against std::deque on random operations: same contents after every step.
TEST(VecQueue, MatchesDequeOnRandomOperations) {
    std::mt19937 rng(12345);
    VecQueue<std::string> q;
    std::deque<std::string> d;
    for (int step = 0; step < 20000; ++step) {
        int op = static_cast<int>(rng() % 10);
        if (op < 5) {
            std::string s = std::to_string(step);
            q.push_back(s);
            d.push_back(s);
        } else if (op < 9) {
            if (!d.empty()) {
                ASSERT_EQ(q.front(), d.front());
                q.pop_front();
                d.pop_front();
            }
        } else if (rng() % 50 == 0) {
            q.clear();
            d.clear();
        }
        ASSERT_EQ(q.size(), d.size());
        ASSERT_EQ(q.empty(), d.empty());
    }
    EXPECT_TRUE(std::equal(q.begin(), q.end(), d.begin(), d.end()));
}

} // namespace
} // namespace meshd::core
