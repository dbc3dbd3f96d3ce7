// ratelimit/source_key: what "one source" is for the per-IP limits, and its hash. Pure and
// header-only, checked by tests/unit/token_bucket_test.cc.
//
// An IPv4 address is one source; an IPv4-mapped IPv6 address (::ffff:1.2.3.4, as a dual-stack
// listener reports IPv4 peers) is the same source as the IPv4 address; an IPv6 address counts
// by its /64 prefix, because one host or customer usually owns a whole /64 and could otherwise
// take a fresh address, and a fresh bucket, for every attempt.
#pragma once

#include <arpa/inet.h>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace meshd::ratelimit {

struct IpKey {
    uint64_t bits = 0; // the IPv4 address, or the IPv6 /64 prefix, in network order
    bool v6 = false;
    bool operator==(const IpKey&) const = default;
};

struct IpHash {
    uint64_t seed = 0; // random per process, so that sources cannot aim at one hash chain
    size_t operator()(const IpKey& k) const {
        uint64_t x = k.bits ^ seed ^ (k.v6 ? 0x9e3779b97f4a7c15ULL : 0);
        // splitmix64's finaliser
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
        return static_cast<size_t>(x ^ (x >> 31));
    }
};

// "1.2.3.4", "::ffff:1.2.3.4", "2001:db8::1" or "fe80::1%eth0" (text, len) -> out.
// false if it is no numeric address.
inline bool parse_ip(const char* text, size_t len, IpKey& out) {
    char buf[64];
    if (!text || len == 0 || len >= sizeof buf)
        return false;
    std::memcpy(buf, text, len);
    buf[len] = '\0';
    if (char* zone = std::strchr(buf, '%'))
        *zone = '\0';
    unsigned char raw[16];
    auto v4_bits = [](const unsigned char* b) {
        return (uint64_t{b[0]} << 24) | (uint64_t{b[1]} << 16) | (uint64_t{b[2]} << 8) | b[3];
    };
    if (inet_pton(AF_INET, buf, raw) == 1) {
        out = IpKey{v4_bits(raw), false};
        return true;
    }
    if (inet_pton(AF_INET6, buf, raw) != 1)
        return false;
    static const unsigned char v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(raw, v4_mapped, sizeof v4_mapped) == 0) {
        out = IpKey{v4_bits(raw + 12), false};
        return true;
    }
    uint64_t prefix = 0;
    for (int i = 0; i < 8; ++i)
        prefix = (prefix << 8) | raw[i];
    out = IpKey{prefix, true};
    return true;
}

} // namespace meshd::ratelimit
