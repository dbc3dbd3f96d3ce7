// core/metrics: registration checks, label canonicalisation and the text exposition format.
#include "core/metrics.h"

#include "core/log.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

namespace meshd::core {

namespace {

// More series than this is a label explosion (a module labelling by principal, say).
constexpr size_t max_series = 10000;

bool name_start(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool name_char(char c) {
    return name_start(c) || (c >= '0' && c <= '9');
}

bool valid_metric_name(std::string_view n) {
    if (n.empty() || !(name_start(n[0]) || n[0] == ':'))
        return false;
    return std::all_of(n.begin(), n.end(), [](char c) { return name_char(c) || c == ':'; });
}

bool valid_label_name(std::string_view n) {
    return !n.empty() && name_start(n[0]) && std::all_of(n.begin(), n.end(), name_char);
}

// Well-formed UTF-8 (no overlongs, no surrogates): the format requires it for label values.
bool valid_utf8(std::string_view s) {
    size_t i = 0;
    while (i < s.size()) {
        auto c = static_cast<unsigned char>(s[i]);
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            ++i;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 1;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + n >= s.size())
            return false;
        for (size_t k = 1; k <= n; ++k) {
            auto cc = static_cast<unsigned char>(s[i + k]);
            if ((cc & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (cc & 0x3f);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n + 1;
    }
    return true;
}

void append_escaped_label_value(std::string& out, std::string_view v) {
    for (char c : v) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '"')
            out += "\\\"";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
}

void append_escaped_help(std::string& out, std::string_view v) {
    for (char c : v) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
}

// Parses `a="x", b="y"` into raw (unescaped) pairs; returns the reason on failure.
Result<std::vector<std::pair<std::string, std::string>>> parse_labels(std::string_view text) {
    std::vector<std::pair<std::string, std::string>> out;
    size_t i = 0;
    auto skip_space = [&] {
        while (i < text.size() && (text[i] == ' ' || text[i] == '\t'))
            ++i;
    };
    auto bad = [&](const std::string& why) {
        return make_error("bad_metric", "labels '" + std::string(text) + "': " + why +
                                            "; write name=\"value\" pairs separated by commas");
    };
    skip_space();
    while (i < text.size()) {
        size_t start = i;
        while (i < text.size() && name_char(text[i]))
            ++i;
        std::string name(text.substr(start, i - start));
        if (!valid_label_name(name))
            return bad("a label name must match [a-zA-Z_][a-zA-Z0-9_]*");
        skip_space();
        if (i >= text.size() || text[i] != '=')
            return bad("'=' expected after label " + name);
        ++i;
        skip_space();
        if (i >= text.size() || text[i] != '"')
            return bad("the value of label " + name + " must be in double quotes");
        ++i;
        std::string value;
        bool closed = false;
        while (i < text.size()) {
            char c = text[i++];
            if (c == '"') {
                closed = true;
                break;
            }
            if (c != '\\') {
                value += c;
                continue;
            }
            if (i >= text.size())
                break;
            char e = text[i++];
            if (e == '\\' || e == '"')
                value += e;
            else if (e == 'n')
                value += '\n';
            else
                return bad("only \\\\, \\\" and \\n are escapes in a label value");
        }
        if (!closed)
            return bad("the value of label " + name + " has no closing quote");
        if (!valid_utf8(value))
            return bad("the value of label " + name + " is not UTF-8");
        out.emplace_back(std::move(name), std::move(value));
        skip_space();
        if (i < text.size()) {
            if (text[i] != ',')
                return bad("',' expected after the value of label " + out.back().first);
            ++i;
            skip_space();
        }
    }
    return out;
}

// The canonical label text: sorted by name, values escaped. Checks reserved and repeated names.
Result<std::string> canonical_labels(std::string_view text) {
    auto parsed = parse_labels(text);
    if (!parsed)
        return parsed.error();
    auto& pairs = parsed.value();
    std::sort(pairs.begin(), pairs.end());
    std::string out;
    for (size_t k = 0; k < pairs.size(); ++k) {
        const auto& [name, value] = pairs[k];
        if (name == "le" || name == "quantile" || name.starts_with("__"))
            return make_error("bad_metric", "label name '" + name +
                                                "' is reserved (le, quantile and names starting "
                                                "with __ belong to Prometheus)");
        if (k > 0 && pairs[k - 1].first == name)
            return make_error("bad_metric", "label '" + name + "' is given twice");
        if (!out.empty())
            out += ',';
        out += name;
        out += "=\"";
        append_escaped_label_value(out, value);
        out += '"';
    }
    return out;
}

// Integers print as integers; the rest in the shortest form that reads back the same.
void append_value(std::string& out, double v) {
    if (std::isnan(v)) {
        out += "NaN";
        return;
    }
    if (std::isinf(v)) {
        out += v > 0 ? "+Inf" : "-Inf";
        return;
    }
    char buf[64];
    std::to_chars_result r;
    if (v == std::trunc(v) && std::fabs(v) < 9007199254740992.0)
        r = std::to_chars(buf, buf + sizeof buf, static_cast<int64_t>(v));
    else
        r = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, r.ptr);
}

void append_uint(std::string& out, uint64_t v) {
    char buf[24];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, r.ptr);
}

void append_series_name(std::string& out, std::string_view name, std::string_view suffix,
                        std::string_view labels, std::string_view extra_label = {}) {
    out += name;
    out += suffix;
    if (labels.empty() && extra_label.empty())
        return;
    out += '{';
    out += labels;
    if (!labels.empty() && !extra_label.empty())
        out += ',';
    out += extra_label;
    out += '}';
}

constexpr std::string_view histogram_suffixes[] = {"_bucket", "_sum", "_count"};

} // namespace

HistogramData Histogram::sink_{{}, {0}, 0, 0};

std::string_view to_string(MetricType type) {
    switch (type) {
    case MetricType::counter:
        return "counter";
    case MetricType::gauge:
        return "gauge";
    case MetricType::histogram:
        return "histogram";
    }
    return "untyped";
}

void Histogram::observe(double v) {
    // Few buckets (about a dozen): a linear scan beats a binary search here.
    size_t i = 0;
    const size_t n = data_->bounds.size();
    while (i < n && v > data_->bounds[i])
        ++i;
    ++data_->counts[i];
    data_->sum += v;
    ++data_->count;
}

CollectorHandle& CollectorHandle::operator=(CollectorHandle&& other) noexcept {
    if (this != &other) {
        reset();
        registry_ = std::exchange(other.registry_, nullptr);
        id_ = other.id_;
    }
    return *this;
}

void CollectorHandle::reset() {
    if (registry_)
        std::exchange(registry_, nullptr)->remove_collector(id_);
}

std::string metric_labels(std::initializer_list<std::pair<std::string_view, std::string_view>> l) {
    std::string out;
    for (const auto& [name, value] : l) {
        if (!out.empty())
            out += ',';
        out += name;
        out += "=\"";
        append_escaped_label_value(out, value);
        out += '"';
    }
    return out;
}

MetricsRegistry::Family* MetricsRegistry::find_family(std::string_view name) {
    for (auto& f : families_)
        if (f->name == name)
            return f.get();
    return nullptr;
}

Result<MetricSeries*> MetricsRegistry::series(MetricType type, std::string_view name,
                                              std::string_view help, std::string_view labels,
                                              std::span<const double> bounds) {
    std::string quoted = "metric '" + std::string(name) + "'";
    if (!valid_metric_name(name) || name.starts_with("__"))
        return make_error("bad_metric",
                          quoted + ": a name must match [a-zA-Z_:][a-zA-Z0-9_:]* and not start "
                                   "with __");
    if (type == MetricType::histogram) {
        if (bounds.empty())
            return make_error("bad_metric", quoted + ": a histogram needs at least one bucket");
        for (size_t i = 0; i < bounds.size(); ++i)
            if (!std::isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
                return make_error("bad_metric", quoted + ": bucket bounds must be finite and "
                                                         "strictly increasing");
    }
    auto canonical = canonical_labels(labels);
    if (!canonical)
        return make_error("bad_metric", quoted + ": " + canonical.error().message);

    Family* family = find_family(name);
    if (family) {
        if (family->type != type)
            return make_error("bad_metric", quoted + " is already registered as a " +
                                                std::string(to_string(family->type)) + ", not a " +
                                                std::string(to_string(type)));
        if (type == MetricType::histogram &&
            !std::equal(bounds.begin(), bounds.end(), family->bounds.begin(), family->bounds.end()))
            return make_error("bad_metric",
                              quoted + " is already registered with other bucket bounds");
        for (auto& s : family->series)
            if (s->labels == canonical.value())
                return s.get();
    } else {
        // The series names a histogram renders must not be another family's name.
        for (auto& f : families_) {
            for (std::string_view suffix : histogram_suffixes) {
                bool clash =
                    (f->type == MetricType::histogram && name == f->name + std::string(suffix)) ||
                    (type == MetricType::histogram &&
                     f->name == std::string(name) + std::string(suffix));
                if (clash)
                    return make_error(
                        "bad_metric",
                        quoted + " clashes with the series of histogram '" +
                            (type == MetricType::histogram ? std::string(name) : f->name) + "'");
            }
        }
    }
    if (series_total_ >= max_series)
        return make_error("bad_metric", quoted + ": the registry already holds " +
                                            std::to_string(max_series) +
                                            " series; use fewer label values");
    if (!family) {
        auto f = std::make_unique<Family>();
        f->name = std::string(name);
        f->help = std::string(help);
        f->type = type;
        f->bounds.assign(bounds.begin(), bounds.end());
        family = f.get();
        families_.push_back(std::move(f));
    }
    auto s = std::make_unique<MetricSeries>();
    s->labels = std::move(canonical.value());
    if (type == MetricType::histogram) {
        s->histogram = std::make_unique<HistogramData>();
        s->histogram->bounds = family->bounds;
        s->histogram->counts.assign(family->bounds.size() + 1, 0);
    }
    family->series.push_back(std::move(s));
    ++series_total_;
    return family->series.back().get();
}

Result<Counter> MetricsRegistry::counter(std::string_view name, std::string_view help,
                                         std::string_view labels) {
    auto s = series(MetricType::counter, name, help, labels);
    if (!s)
        return s.error();
    return Counter(s.value());
}

Result<Gauge> MetricsRegistry::gauge(std::string_view name, std::string_view help,
                                     std::string_view labels) {
    auto s = series(MetricType::gauge, name, help, labels);
    if (!s)
        return s.error();
    return Gauge(s.value());
}

Result<Histogram> MetricsRegistry::histogram(std::string_view name, std::string_view help,
                                             std::span<const double> bounds,
                                             std::string_view labels) {
    auto s = series(MetricType::histogram, name, help, labels, bounds);
    if (!s)
        return s.error();
    return Histogram(s.value());
}

CollectorHandle MetricsRegistry::add_collector(std::function<void()> fn) {
    uint64_t id = next_collector_++;
    collectors_.emplace_back(id, std::move(fn));
    return CollectorHandle(this, id);
}

void MetricsRegistry::remove_collector(uint64_t id) {
    std::erase_if(collectors_, [id](const auto& c) { return c.first == id; });
}

void MetricsRegistry::render(std::string& out) {
    for (auto& [id, fn] : collectors_)
        fn();
    for (const auto& f : families_) {
        if (f->series.empty())
            continue;
        out += "# HELP ";
        out += f->name;
        out += ' ';
        append_escaped_help(out, f->help);
        out += "\n# TYPE ";
        out += f->name;
        out += ' ';
        out += to_string(f->type);
        out += '\n';
        for (const auto& s : f->series) {
            if (f->type != MetricType::histogram) {
                append_series_name(out, f->name, {}, s->labels);
                out += ' ';
                append_value(out, s->value);
                out += '\n';
                continue;
            }
            const HistogramData& h = *s->histogram;
            uint64_t cumulative = 0;
            std::string le;
            for (size_t i = 0; i <= h.bounds.size(); ++i) {
                cumulative += h.counts[i];
                le = "le=\"";
                if (i < h.bounds.size())
                    append_value(le, h.bounds[i]);
                else
                    le += "+Inf";
                le += '"';
                append_series_name(out, f->name, "_bucket", s->labels, le);
                out += ' ';
                append_uint(out, cumulative);
                out += '\n';
            }
            append_series_name(out, f->name, "_sum", s->labels);
            out += ' ';
            append_value(out, h.sum);
            out += '\n';
            append_series_name(out, f->name, "_count", s->labels);
            out += ' ';
            append_uint(out, h.count);
            out += '\n';
        }
    }
}

MetricsRegistry& metrics() {
    static MetricsRegistry registry;
    return registry;
}

namespace {

void log_register_failure(const Error& e) {
    MESHD_LOG(error, "metrics.register_failed", "message=%s", log_value(e.message).c_str());
}

} // namespace

Counter core_counter(std::string_view name, std::string_view help, std::string_view labels) {
    auto c = metrics().counter(name, help, labels);
    if (!c) {
        log_register_failure(c.error());
        return Counter();
    }
    return c.value();
}

Gauge core_gauge(std::string_view name, std::string_view help, std::string_view labels) {
    auto g = metrics().gauge(name, help, labels);
    if (!g) {
        log_register_failure(g.error());
        return Gauge();
    }
    return g.value();
}

Histogram core_histogram(std::string_view name, std::string_view help,
                         std::span<const double> bounds, std::string_view labels) {
    auto h = metrics().histogram(name, help, bounds, labels);
    if (!h) {
        log_register_failure(h.error());
        return Histogram();
    }
    return h.value();
}

} // namespace meshd::core
