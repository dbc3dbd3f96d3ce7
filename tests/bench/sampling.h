// tests/bench/sampling: what both load generators measure besides messages: CPU time (ours
// and the broker's), /proc status fields, kernel TCP memory, and latency percentiles.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <sys/resource.h>
#include <unistd.h>
#include <vector>

namespace meshd::bench {

inline double self_cpu_s() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

inline std::optional<double> proc_cpu_s(int pid) {
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
    std::ifstream in(path);
    std::string stat;
    if (!in || !std::getline(in, stat))
        return std::nullopt;
    // Fields after "(comm)": state is field 3; utime and stime are fields 14 and 15.
    const size_t paren = stat.rfind(')');
    if (paren == std::string::npos)
        return std::nullopt;
    const char* p = stat.c_str() + paren + 2;
    unsigned long long utime = 0, stime = 0;
    if (std::sscanf(p, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) !=
        2) {
        return std::nullopt;
    }
    return double(utime + stime) / double(sysconf(_SC_CLK_TCK));
}

inline std::optional<int64_t> proc_status_kb(int pid, std::string_view field) {
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/status", pid);
    std::ifstream in(path);
    std::string line;
    while (in && std::getline(in, line)) {
        if (line.size() > field.size() && line.compare(0, field.size(), field) == 0 &&
            line[field.size()] == ':') {
            return std::strtoll(line.c_str() + field.size() + 1, nullptr, 10);
        }
    }
    return std::nullopt;
}

// /proc/net/sockstat "TCP: inuse I orphan O tw T alloc A mem M": M is in pages, both ends of
// every loopback connection.
inline std::optional<int64_t> tcp_mem_pages() {
    std::ifstream in("/proc/net/sockstat");
    std::string line;
    while (in && std::getline(in, line)) {
        if (line.rfind("TCP:", 0) != 0)
            continue;
        const size_t at = line.find(" mem ");
        if (at != std::string::npos)
            return std::strtoll(line.c_str() + at + 5, nullptr, 10);
    }
    return std::nullopt;
}

// Nearest-rank percentile in microseconds; NaN when there are no samples.
inline double percentile_us(std::vector<int64_t>& samples, double p) {
    if (samples.empty())
        return std::nan("");
    size_t rank = size_t(std::ceil(p * double(samples.size())));
    rank = std::clamp<size_t>(rank, 1, samples.size()) - 1;
    std::nth_element(samples.begin(), samples.begin() + ptrdiff_t(rank), samples.end());
    return double(samples[rank]) / 1e3;
}

} // namespace meshd::bench
