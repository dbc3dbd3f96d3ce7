// ratelimit/token_bucket: the arithmetic of one token bucket, and the clock it is measured
// with. Pure and header-only, so tests/unit/token_bucket_test.cc checks it without a daemon.
//
// A bucket holds up to `burst` tokens and gains `rate` tokens per second. An action takes one
// token; with less than one token left it is refused, and the bucket says how long until a
// token is there. Refused actions take nothing, so hammering does not prolong the wait.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace meshd::ratelimit {

// Tokens per second and the bucket's capacity. rate 0: the limit is off.
struct Limit {
    double rate = 0;
    double burst = 1;
    bool active() const { return rate > 0; }
};

// Milliseconds that never go backwards, built from wall-clock readings (the host's clock is
// the Unix epoch): only the positive steps between readings are added up. A clock stepped
// back therefore pauses refills for one reading instead of freezing them until the wall clock
// catches up; a clock stepped forward refills early, which errs on the side of letting
// clients through.
class SteadyMs {
  public:
    int64_t advance(int64_t wall_ms) {
        if (started_ && wall_ms > last_wall_ms_)
            now_ms_ += wall_ms - last_wall_ms_;
        started_ = true;
        last_wall_ms_ = wall_ms;
        return now_ms_;
    }
    int64_t now_ms() const { return now_ms_; }

  private:
    bool started_ = false;
    int64_t last_wall_ms_ = 0;
    int64_t now_ms_ = 0;
};

// Floating-point slack: after waiting the advertised retry time a token must be there even
// if the sum came out a hair under 1.
constexpr double token_epsilon = 1e-9;

struct Bucket {
    double tokens = 0;
    int64_t stamp_ms = 0; // SteadyMs time of the last refill

    static Bucket full(const Limit& limit, int64_t now_ms) { return Bucket{limit.burst, now_ms}; }

    // Adds what accrued since the last refill, up to burst. Also clamps a bucket that holds
    // more than burst, as after a reload that lowered burst.
    void refill(const Limit& limit, int64_t now_ms) {
        if (now_ms > stamp_ms) {
            tokens += static_cast<double>(now_ms - stamp_ms) * limit.rate / 1000.0;
            stamp_ms = now_ms;
        }
        tokens = std::min(tokens, limit.burst);
    }

    bool has_token() const { return tokens >= 1.0 - token_epsilon; }
    bool is_full(const Limit& limit) const { return tokens >= limit.burst - token_epsilon; }

    // Milliseconds until one token is there: rounded up, at least 1, at most UINT32_MAX.
    uint32_t wait_ms(const Limit& limit) const {
        constexpr double most = std::numeric_limits<uint32_t>::max();
        if (!(limit.rate > 0))
            return std::numeric_limits<uint32_t>::max();
        // The factor undoes rounding noise (0.998 tokens at 2/s must give 1 ms, not 2); what
        // it shaves off is far below token_epsilon.
        double ms = std::ceil((1.0 - tokens) * 1000.0 / limit.rate * (1.0 - 1e-12));
        if (!(ms >= 1.0))
            return 1;
        return ms >= most ? std::numeric_limits<uint32_t>::max() : static_cast<uint32_t>(ms);
    }

    // Refills, then takes one token and returns 0; or, with less than one token, takes
    // nothing and returns wait_ms().
    uint32_t take(const Limit& limit, int64_t now_ms) {
        refill(limit, now_ms);
        if (!has_token())
            return wait_ms(limit);
        tokens = std::max(0.0, tokens - 1.0);
        return 0;
    }

    // Refills, then removes one token if there is any left (never goes below zero).
    void drain(const Limit& limit, int64_t now_ms) {
        refill(limit, now_ms);
        tokens = std::max(0.0, tokens - 1.0);
    }
};

} // namespace meshd::ratelimit
