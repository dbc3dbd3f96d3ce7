// core/metrics: the one metrics registry of meshd and its modules, rendered as Prometheus
// text exposition format 0.0.4.
//
// A family is a name, a type and a help text; a series is one label set of a family. Code
// resolves its instruments once (at start, or a module in its init) and keeps the handle:
// Counter and Gauge are a pointer to the series' value, so counting on the hot path is one
// add through a pointer, with no look-up and no allocation. A Histogram has fixed buckets.
// Values that cost something to read (file sizes, sums over connections, uptime) are not
// kept up to date on events: a collector callback sets them just before each render.
//
// Invariants: a family's name, type and (for histograms) buckets never change once
// registered; a series, once registered, lives as long as the registry (handles never
// dangle); registering the same name and label set again returns the same series.
// Loop thread only, like all of meshd's state: no locks.
#pragma once

#include "core/result.h"

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace meshd::core {

enum class MetricType { counter, gauge, histogram };
std::string_view to_string(MetricType type);

struct HistogramData {
    std::vector<double> bounds;   // upper bounds, strictly increasing; +Inf is implied
    std::vector<uint64_t> counts; // per bucket (not cumulative), bounds.size() + 1 entries
    double sum = 0;
    uint64_t count = 0;
};

// One label set of a family and its value.
struct MetricSeries {
    std::string labels; // canonical text between the braces: a="x",b="y" (sorted); may be ""
    double value = 0;   // counter and gauge
    std::unique_ptr<HistogramData> histogram;
};

// A counter handle. Default-constructed it counts into a private sink, so code that was not
// given a registry (unit tests of one layer) needs no branches.
class Counter {
  public:
    Counter() = default;
    explicit Counter(MetricSeries* s) : value_(&s->value) {}
    void inc() { *value_ += 1; }
    void add(double delta) { *value_ += delta; } // delta >= 0
    double value() const { return *value_; }

  private:
    static inline double sink_ = 0;
    double* value_ = &sink_;
};

class Gauge {
  public:
    Gauge() = default;
    explicit Gauge(MetricSeries* s) : value_(&s->value) {}
    void set(double v) { *value_ = v; }
    void add(double delta) { *value_ += delta; }
    double value() const { return *value_; }

  private:
    static inline double sink_ = 0;
    double* value_ = &sink_;
};

class Histogram {
  public:
    Histogram() = default;
    explicit Histogram(MetricSeries* s) : data_(s->histogram.get()) {}
    void observe(double v);
    const HistogramData* data() const { return data_; }

  private:
    static HistogramData sink_;
    HistogramData* data_ = &sink_;
};

class MetricsRegistry;

// Keeps a collector registered; removes it when destroyed (before what it reads goes away).
class CollectorHandle {
  public:
    CollectorHandle() = default;
    CollectorHandle(MetricsRegistry* registry, uint64_t id) : registry_(registry), id_(id) {}
    ~CollectorHandle() { reset(); }
    CollectorHandle(CollectorHandle&& other) noexcept
        : registry_(std::exchange(other.registry_, nullptr)), id_(other.id_) {}
    CollectorHandle& operator=(CollectorHandle&& other) noexcept;
    CollectorHandle(const CollectorHandle&) = delete;
    CollectorHandle& operator=(const CollectorHandle&) = delete;
    void reset();

  private:
    MetricsRegistry* registry_ = nullptr;
    uint64_t id_ = 0;
};

// Builds label text from raw values, escaping them: {{"code", "bad_frame"}} -> code="bad_frame".
std::string metric_labels(std::initializer_list<std::pair<std::string_view, std::string_view>> l);

class MetricsRegistry {
  public:
    MetricsRegistry() = default;
    MetricsRegistry(const MetricsRegistry&) = delete;
    MetricsRegistry& operator=(const MetricsRegistry&) = delete;

    // Registers name{labels} or returns the series already registered. labels is the text
    // between the braces (a="x",b="y"; any order, spaces after commas allowed) or empty.
    // Errors (code "bad_metric") say what is wrong: a name outside [a-zA-Z_:][a-zA-Z0-9_:]*,
    // bad label text, a reserved label (le, quantile, __*), or a name already registered
    // with another type or other buckets. For histograms, bounds must be finite and strictly
    // increasing (at least one).
    Result<MetricSeries*> series(MetricType type, std::string_view name, std::string_view help,
                                 std::string_view labels = {}, std::span<const double> bounds = {});
    Result<Counter> counter(std::string_view name, std::string_view help,
                            std::string_view labels = {});
    Result<Gauge> gauge(std::string_view name, std::string_view help, std::string_view labels = {});
    Result<Histogram> histogram(std::string_view name, std::string_view help,
                                std::span<const double> bounds, std::string_view labels = {});

    // fn runs before every render, to set gauges whose values are costly to keep current.
    [[nodiscard]] CollectorHandle add_collector(std::function<void()> fn);
    void remove_collector(uint64_t id);

    // Runs the collectors, then appends every family with at least one series, in the order
    // of registration: # HELP, # TYPE, then its series (histograms as _bucket with le,
    // cumulative and ending in +Inf, then _sum and _count).
    void render(std::string& out);

    size_t series_count() const { return series_total_; }

  private:
    struct Family {
        std::string name;
        std::string help;
        MetricType type;
        std::vector<double> bounds;
        std::vector<std::unique_ptr<MetricSeries>> series;
    };
    Family* find_family(std::string_view name);
    std::vector<std::unique_ptr<Family>> families_;
    std::vector<std::pair<uint64_t, std::function<void()>>> collectors_;
    uint64_t next_collector_ = 1;
    size_t series_total_ = 0;
};

// The registry of the meshd process: core instruments and every module's.
MetricsRegistry& metrics();

// Registration of a core instrument with a fixed, valid name: a failure is a programming
// error, so it is logged (event=metrics.register_failed) and a sink handle returned.
Counter core_counter(std::string_view name, std::string_view help, std::string_view labels = {});
Gauge core_gauge(std::string_view name, std::string_view help, std::string_view labels = {});
Histogram core_histogram(std::string_view name, std::string_view help,
                         std::span<const double> bounds, std::string_view labels = {});

} // namespace meshd::core
