// tests/unit/token_bucket_test: the ratelimit module's pure parts, which the e2e tests cannot
// reach: the bucket arithmetic and step-proof clock (token_bucket.h: clock steps, rounding of
// retry_after_ms, clamping on reload) and what one source IP is (source_key.h: IPv6 /64s).
#include "source_key.h"
#include "token_bucket.h"

#include <cstdint>
#include <gtest/gtest.h>
#include <limits>
#include <string_view>

namespace {

using meshd::ratelimit::Bucket;
using meshd::ratelimit::IpHash;
using meshd::ratelimit::IpKey;
using meshd::ratelimit::Limit;
using meshd::ratelimit::parse_ip;
using meshd::ratelimit::SteadyMs;

TEST(TokenBucket, BurstPassesThenRefusesWithTheWaitForOneToken) {
    Limit limit{2, 3}; // 2 per second, 3 at once
    Bucket b = Bucket::full(limit, 0);
    EXPECT_EQ(b.take(limit, 0), 0u);
    EXPECT_EQ(b.take(limit, 0), 0u);
    EXPECT_EQ(b.take(limit, 0), 0u);
    EXPECT_EQ(b.take(limit, 0), 500u); // one token every 500 ms
    EXPECT_EQ(b.take(limit, 200), 300u);
    EXPECT_EQ(b.take(limit, 499), 1u);
    EXPECT_EQ(b.take(limit, 500), 0u);
    EXPECT_EQ(b.take(limit, 500), 500u);
}

TEST(TokenBucket, RefusalsTakeNothing) {
    Limit limit{1, 1};
    Bucket b = Bucket::full(limit, 0);
    EXPECT_EQ(b.take(limit, 0), 0u);
    for (int i = 0; i < 100; ++i)
        EXPECT_GT(b.take(limit, 10 * i), 0u);
    EXPECT_EQ(b.take(limit, 1000), 0u);
}

TEST(TokenBucket, WaitRoundsUpAndIsAtLeastOne) {
    struct Case {
        double rate, tokens;
        uint32_t want;
    };
    const Case cases[] = {
        {3, 0, 334},                                      // 333.33 -> 334
        {1000, 0, 1},                                     // exactly 1 ms
        {1000000, 0, 1},                                  // 0.001 ms rounds up to 1
        {0.25, 0.5, 2000},                                // half a token at 1 per 4 s
        {1, 0.9999999999, 1},                             // a hair under 1: still at least 1
        {1e-12, 0, std::numeric_limits<uint32_t>::max()}, // clamped, never wraps
    };
    for (const Case& c : cases) {
        Bucket b{c.tokens, 0};
        EXPECT_EQ(b.wait_ms(Limit{c.rate, 10}), c.want)
            << "rate " << c.rate << " tokens " << c.tokens;
    }
}

TEST(TokenBucket, WaitingTheAdvertisedTimeAlwaysYieldsAToken) {
    for (double rate : {0.3, 1.0 / 3, 7.0, 13.7, 999.9, 12345.6}) {
        Limit limit{rate, 1};
        Bucket b = Bucket::full(limit, 1000);
        ASSERT_EQ(b.take(limit, 1000), 0u);
        uint32_t wait = b.take(limit, 1000);
        ASSERT_GT(wait, 0u);
        EXPECT_EQ(b.take(limit, 1000 + wait), 0u) << "rate " << rate << " wait " << wait;
    }
}

TEST(TokenBucket, RefillStopsAtBurstAndLowerBurstClamps) {
    Limit limit{10, 5};
    Bucket b{0, 0};
    b.refill(limit, 60000);
    EXPECT_DOUBLE_EQ(b.tokens, 5);
    EXPECT_TRUE(b.is_full(limit));
    Limit tighter{10, 2}; // as after a reload
    b.refill(tighter, 60000);
    EXPECT_DOUBLE_EQ(b.tokens, 2);
    Limit looser{10, 50}; // a larger burst does not add tokens by itself
    b.refill(looser, 60000);
    EXPECT_DOUBLE_EQ(b.tokens, 2);
    EXPECT_FALSE(b.is_full(looser));
}

TEST(TokenBucket, DrainNeverGoesBelowZero) {
    Limit limit{0.2, 2};
    Bucket b = Bucket::full(limit, 0);
    b.drain(limit, 0);
    b.drain(limit, 0);
    b.drain(limit, 0);
    EXPECT_DOUBLE_EQ(b.tokens, 0);
    EXPECT_FALSE(b.has_token());
    EXPECT_EQ(b.wait_ms(limit), 5000u);
}

TEST(SteadyMs, AddsOnlyForwardSteps) {
    SteadyMs clock;
    EXPECT_EQ(clock.advance(1'700'000'000'000), 0);
    EXPECT_EQ(clock.advance(1'700'000'000'250), 250);
    // The wall clock is stepped back an hour: time stands still for this reading...
    EXPECT_EQ(clock.advance(1'699'999'996'400), 250);
    // ...and then goes on from the new wall time, not from where the old one was.
    EXPECT_EQ(clock.advance(1'699'999'996'500), 350);
    EXPECT_EQ(clock.advance(1'699'999'996'500), 350);
    EXPECT_EQ(clock.now_ms(), 350);
}

TEST(SteadyMs, BucketsSurviveABackwardStep) {
    SteadyMs clock;
    Limit limit{1, 1};
    Bucket b = Bucket::full(limit, clock.advance(10'000'000));
    EXPECT_EQ(b.take(limit, clock.now_ms()), 0u);
    // Stepped back by a day: the wait must not grow by a day.
    int64_t now = clock.advance(10'000'000 - 86'400'000);
    EXPECT_EQ(b.take(limit, now), 1000u);
    now = clock.advance(10'000'000 - 86'400'000 + 1000);
    EXPECT_EQ(b.take(limit, now), 0u);
}

IpKey key_of(std::string_view text) {
    IpKey k;
    EXPECT_TRUE(parse_ip(text.data(), text.size(), k)) << text;
    return k;
}

TEST(SourceKey, OneSourcePerIpv4AddressAndIpv6Slash64) {
    struct Case {
        std::string_view a, b;
        bool same;
    };
    const Case cases[] = {
        {"127.0.0.1", "127.0.0.1", true},
        {"127.0.0.1", "127.0.0.2", false},
        {"10.1.2.3", "::ffff:10.1.2.3", true}, // a dual-stack listener's view of IPv4
        {"2001:db8:1:2::1", "2001:db8:1:2:ffff:eeee:dddd:cccc", true}, // same /64
        {"2001:db8:1:2::1", "2001:db8:1:3::1", false},                 // next /64
        {"fe80::1%eth0", "fe80::2", true},                             // zone ignored
        {"::1", "0.0.0.1", false}, // an IPv6 /64 never equals an IPv4 address
        {"1.2.3.4", "4.3.2.1", false},
    };
    for (const Case& c : cases)
        EXPECT_EQ(key_of(c.a) == key_of(c.b), c.same) << c.a << " vs " << c.b;
}

TEST(SourceKey, RefusesWhatIsNoAddress) {
    for (std::string_view text :
         {"", "localhost", "1.2.3", "1.2.3.4:80", "[::1]", "::1::2", "2001:db8::1/64",
          "0000000000000000000000000000000000000000000000000000000000000"
          "0000.1"}) {
        IpKey k;
        EXPECT_FALSE(parse_ip(text.data(), text.size(), k)) << text;
    }
    IpKey k;
    EXPECT_FALSE(parse_ip(nullptr, 0, k));
}

TEST(SourceKey, HashDependsOnTheSeed) {
    IpKey k = key_of("192.0.2.1");
    EXPECT_NE(IpHash{1}(k), IpHash{2}(k));
    EXPECT_EQ(IpHash{1}(k), IpHash{1}(key_of("::ffff:192.0.2.1")));
}

} // namespace
