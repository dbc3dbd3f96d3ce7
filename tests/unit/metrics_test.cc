// tests/unit/metrics_test: the metrics registry (daemon/core/metrics.cc): what registration
// accepts and refuses (with the exact message), handle identity, and the exact Prometheus
// text it renders.
#include "core/metrics.h"

#include <gtest/gtest.h>
#include <string>
#include <vector>

namespace meshd::core {
namespace {

std::string render(MetricsRegistry& r) {
    std::string out;
    r.render(out);
    return out;
}

TEST(MetricsRegistry, RendersCountersAndGaugesInRegistrationOrder) {
    MetricsRegistry r;
    Counter frames = r.counter("x_frames_total", "Frames seen.").value();
    Gauge conns = r.gauge("x_connections", "Open connections.").value();
    Counter errs = r.counter("x_errors_total", "Errors by code.", "code=\"bad_frame\"").value();
    frames.inc();
    frames.add(41);
    conns.set(3);
    conns.add(-1);
    errs.inc();
    EXPECT_EQ(render(r), "# HELP x_frames_total Frames seen.\n"
                         "# TYPE x_frames_total counter\n"
                         "x_frames_total 42\n"
                         "# HELP x_connections Open connections.\n"
                         "# TYPE x_connections gauge\n"
                         "x_connections 2\n"
                         "# HELP x_errors_total Errors by code.\n"
                         "# TYPE x_errors_total counter\n"
                         "x_errors_total{code=\"bad_frame\"} 1\n");
}

TEST(MetricsRegistry, SameSeriesTwiceIsTheSameHandle) {
    MetricsRegistry r;
    auto a = r.series(MetricType::counter, "x_total", "h", "reason=\"send\"");
    auto b = r.series(MetricType::counter, "x_total", "other help", "reason = \"send\"");
    ASSERT_TRUE(a && b);
    EXPECT_EQ(a.value(), b.value());
    // Label order does not make another series.
    auto c = r.series(MetricType::gauge, "y", "h", "a=\"1\",b=\"2\"");
    auto d = r.series(MetricType::gauge, "y", "h", "b=\"2\", a=\"1\",");
    ASSERT_TRUE(c && d);
    EXPECT_EQ(c.value(), d.value());
    auto e = r.series(MetricType::counter, "x_total", "h", "reason=\"connect\"");
    ASSERT_TRUE(e);
    EXPECT_NE(a.value(), e.value());
    EXPECT_EQ(r.series_count(), 3u);
    // One HELP/TYPE per family, the first help text kept, labels canonical.
    EXPECT_EQ(render(r), "# HELP x_total h\n"
                         "# TYPE x_total counter\n"
                         "x_total{reason=\"send\"} 0\n"
                         "x_total{reason=\"connect\"} 0\n"
                         "# HELP y h\n"
                         "# TYPE y gauge\n"
                         "y{a=\"1\",b=\"2\"} 0\n");
}

TEST(MetricsRegistry, RefusesWithAClearMessage) {
    struct Row {
        MetricType type;
        std::string name;
        std::string labels;
        std::string message;
    };
    MetricsRegistry r;
    ASSERT_TRUE(r.counter("taken_total", "h"));
    const double b[] = {1, 2};
    ASSERT_TRUE(r.histogram("lat_seconds", "h", b));
    const std::vector<Row> rows = {
        {MetricType::counter, "", "",
         "metric '': a name must match [a-zA-Z_:][a-zA-Z0-9_:]* and not start with __"},
        {MetricType::counter, "9lives", "",
         "metric '9lives': a name must match [a-zA-Z_:][a-zA-Z0-9_:]* and not start with __"},
        {MetricType::counter, "a-b", "",
         "metric 'a-b': a name must match [a-zA-Z_:][a-zA-Z0-9_:]* and not start with __"},
        {MetricType::counter, "__x", "",
         "metric '__x': a name must match [a-zA-Z_:][a-zA-Z0-9_:]* and not start with __"},
        {MetricType::gauge, "taken_total", "",
         "metric 'taken_total' is already registered as a counter, not a gauge"},
        {MetricType::counter, "lat_seconds_count", "",
         "metric 'lat_seconds_count' clashes with the series of histogram 'lat_seconds'"},
        {MetricType::counter, "ok_total", "reason=send",
         "metric 'ok_total': labels 'reason=send': the value of label reason must be in double "
         "quotes; write name=\"value\" pairs separated by commas"},
        {MetricType::counter, "ok_total", "reason=\"send",
         "metric 'ok_total': labels 'reason=\"send': the value of label reason has no closing "
         "quote; write name=\"value\" pairs separated by commas"},
        {MetricType::counter, "ok_total", "9x=\"a\"",
         "metric 'ok_total': labels '9x=\"a\"': a label name must match [a-zA-Z_][a-zA-Z0-9_]*; "
         "write name=\"value\" pairs separated by commas"},
        {MetricType::counter, "ok_total", "a=\"1\" b=\"2\"",
         "metric 'ok_total': labels 'a=\"1\" b=\"2\"': ',' expected after the value of label a; "
         "write name=\"value\" pairs separated by commas"},
        {MetricType::counter, "ok_total", "a=\"\\t\"",
         "metric 'ok_total': labels 'a=\"\\t\"': only \\\\, \\\" and \\n are escapes in a label "
         "value; write name=\"value\" pairs separated by commas"},
        {MetricType::counter, "ok_total", "a=\"\xff\"",
         "metric 'ok_total': labels 'a=\"\xff\"': the value of label a is not UTF-8; write "
         "name=\"value\" pairs separated by commas"},
        {MetricType::counter, "ok_total", "le=\"1\"",
         "metric 'ok_total': label name 'le' is reserved (le, quantile and names starting with "
         "__ belong to Prometheus)"},
        {MetricType::counter, "ok_total", "__name__=\"x\"",
         "metric 'ok_total': label name '__name__' is reserved (le, quantile and names starting "
         "with __ belong to Prometheus)"},
        {MetricType::counter, "ok_total", "a=\"1\",a=\"2\"",
         "metric 'ok_total': label 'a' is given twice"},
    };
    for (const Row& row : rows) {
        auto s = r.series(row.type, row.name, "h", row.labels);
        ASSERT_FALSE(s) << row.name << " " << row.labels;
        EXPECT_EQ(s.error().code, "bad_metric");
        EXPECT_EQ(s.error().message, row.message) << row.name << " " << row.labels;
    }
    // Nothing of the refused registrations shows up.
    EXPECT_EQ(r.series_count(), 2u);
}

TEST(MetricsRegistry, HistogramBucketsAreChecked) {
    MetricsRegistry r;
    const double none[] = {1};
    EXPECT_EQ(r.histogram("h1", "h", std::span<const double>()).error().message,
              "metric 'h1': a histogram needs at least one bucket");
    const double down[] = {2, 1};
    EXPECT_EQ(r.histogram("h2", "h", down).error().message,
              "metric 'h2': bucket bounds must be finite and strictly increasing");
    ASSERT_TRUE(r.histogram("h3", "h", none));
    const double other[] = {1, 2};
    EXPECT_EQ(r.histogram("h3", "h", other).error().message,
              "metric 'h3' is already registered with other bucket bounds");
    const double b[] = {1};
    ASSERT_TRUE(r.histogram("taken", "h", b));
    EXPECT_EQ(r.counter("taken_bucket", "h").error().message,
              "metric 'taken_bucket' clashes with the series of histogram 'taken'");
    ASSERT_TRUE(r.counter("c", "h"));
    EXPECT_EQ(r.histogram("c", "h", b).error().message,
              "metric 'c' is already registered as a counter, not a histogram");
    ASSERT_TRUE(r.counter("d_sum", "h"));
    EXPECT_EQ(r.histogram("d", "h", b).error().message,
              "metric 'd' clashes with the series of histogram 'd'");
}

TEST(MetricsRegistry, RendersHistogramsCumulativeWithInf) {
    MetricsRegistry r;
    const double bounds[] = {0.001, 0.01, 0.1};
    Histogram h = r.histogram("x_commit_seconds", "Commit time.", bounds).value();
    h.observe(0.0005); // first bucket
    h.observe(0.001);  // le is inclusive: first bucket
    h.observe(0.05);   // third
    h.observe(3);      // only +Inf
    EXPECT_EQ(render(r), "# HELP x_commit_seconds Commit time.\n"
                         "# TYPE x_commit_seconds histogram\n"
                         "x_commit_seconds_bucket{le=\"0.001\"} 2\n"
                         "x_commit_seconds_bucket{le=\"0.01\"} 2\n"
                         "x_commit_seconds_bucket{le=\"0.1\"} 3\n"
                         "x_commit_seconds_bucket{le=\"+Inf\"} 4\n"
                         "x_commit_seconds_sum 3.0515\n"
                         "x_commit_seconds_count 4\n");
}

TEST(MetricsRegistry, HistogramWithLabelsPutsLeLast) {
    MetricsRegistry r;
    const double bounds[] = {1, 2.5};
    Histogram h = r.histogram("x_size", "Sizes.", bounds, "store=\"main\"").value();
    h.observe(2);
    EXPECT_EQ(render(r), "# HELP x_size Sizes.\n"
                         "# TYPE x_size histogram\n"
                         "x_size_bucket{store=\"main\",le=\"1\"} 0\n"
                         "x_size_bucket{store=\"main\",le=\"2.5\"} 1\n"
                         "x_size_bucket{store=\"main\",le=\"+Inf\"} 1\n"
                         "x_size_sum{store=\"main\"} 2\n"
                         "x_size_count{store=\"main\"} 1\n");
}

TEST(MetricsRegistry, EscapesHelpAndLabelValues) {
    MetricsRegistry r;
    std::string labels = metric_labels({{"code", "a\"b\\c\nd"}});
    EXPECT_EQ(labels, "code=\"a\\\"b\\\\c\\nd\"");
    Gauge g = r.gauge("x_info", "Line one\nback\\slash \"quoted\"", labels).value();
    g.set(1);
    EXPECT_EQ(render(r), "# HELP x_info Line one\\nback\\\\slash \"quoted\"\n"
                         "# TYPE x_info gauge\n"
                         "x_info{code=\"a\\\"b\\\\c\\nd\"} 1\n");
    // The escaped text registers the same series again.
    EXPECT_EQ(r.series(MetricType::gauge, "x_info", "h", labels).value()->value, 1);
}

TEST(MetricsRegistry, ValueFormats) {
    MetricsRegistry r;
    r.gauge("a", "h").value().set(0.25);
    r.gauge("b", "h").value().set(-3);
    r.gauge("c", "h").value().set(1e300);
    r.gauge("d", "h").value().set(std::numeric_limits<double>::infinity());
    r.gauge("e", "h").value().set(std::numeric_limits<double>::quiet_NaN());
    r.gauge("f", "h").value().set(123456789012.0);
    std::string out = render(r);
    for (const char* line : {"\na 0.25\n", "\nb -3\n", "\nc 1e+300\n", "\nd +Inf\n", "\ne NaN\n",
                             "\nf 123456789012\n"})
        EXPECT_NE(out.find(line), std::string::npos) << line << " in\n" << out;
}

TEST(MetricsRegistry, CollectorsRunBeforeRenderUntilRemoved) {
    MetricsRegistry r;
    Gauge g = r.gauge("x_size_bytes", "h").value();
    int runs = 0;
    {
        CollectorHandle c = r.add_collector([&] { g.set(++runs * 10.0); });
        EXPECT_NE(render(r).find("x_size_bytes 10\n"), std::string::npos);
        CollectorHandle moved = std::move(c);
        EXPECT_NE(render(r).find("x_size_bytes 20\n"), std::string::npos);
    }
    std::string out = render(r);
    EXPECT_EQ(runs, 2);
    EXPECT_NE(out.find("x_size_bytes 20\n"), std::string::npos);
}

TEST(MetricsRegistry, DefaultHandlesAreHarmlessSinks) {
    Counter c;
    Gauge g;
    Histogram h;
    c.inc();
    g.set(5);
    h.observe(1);
    EXPECT_GE(c.value(), 1);
    EXPECT_EQ(g.value(), 5);
}

TEST(MetricsRegistry, EmptyRegistryRendersNothing) {
    MetricsRegistry r;
    EXPECT_EQ(render(r), "");
}

} // namespace
} // namespace meshd::core
