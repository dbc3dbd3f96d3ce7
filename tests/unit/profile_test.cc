// tests/unit/profile_test: what a principal may publish in the directory (daemon/session/
// profile.cc): skill names, and the profile frame's checks and stored form. Table-driven: each
// row is a frame and the exact profile JSON or the exact error it must produce.
#include "session/profile.h"

#include <gtest/gtest.h>
#include <string>
#include <vector>

namespace meshd::session {
namespace {

TEST(CanonicalSkill, Table) {
    struct Row {
        std::string in;
        std::optional<std::string> out;
    };
    const Row rows[] = {
        {"translate", "translate"},
        {"Translate", "translate"},
        {"OCR.v2_fast-1", "ocr.v2_fast-1"},
        {"a", "a"},
        {std::string(64, 'x'), std::string(64, 'x')},
        {std::string(65, 'x'), std::nullopt},
        {"", std::nullopt},
        {"has space", std::nullopt},
        {"colon:x", std::nullopt},
        {"slash/x", std::nullopt},
        {"\xc3\xa9t\xc3\xa9", std::nullopt},
        {std::string("nul\0x", 5), std::nullopt},
    };
    for (const Row& row : rows) {
        SCOPED_TRACE(row.in);
        EXPECT_EQ(canonical_skill(row.in), row.out);
    }
}

TEST(ShownValue, PrintableAsciiQuotedAndCut) {
    EXPECT_EQ(shown_value("abc"), "\"abc\"");
    EXPECT_EQ(shown_value("a\nb\xc3\xa9"), "\"a?b??\"");
    EXPECT_EQ(shown_value(std::string(70, 'z')), "\"" + std::string(64, 'z') + "...\"");
}

struct Built {
    std::string json; // the profile, or "" on error
    std::vector<std::string> skills;
    std::string code; // error code, or ""
    std::string message;
};

Built build(const std::string& frame, size_t max_bytes = 8192) {
    simdjson::dom::parser parser;
    simdjson::dom::object obj;
    EXPECT_EQ(parser.parse(frame).get_object().get(obj), simdjson::SUCCESS) << frame;
    auto r = build_profile(obj, max_bytes);
    if (!r)
        return {"", {}, r.error().code, r.error().message};
    return {r.value()->json, r.value()->skills, "", ""};
}

TEST(BuildProfile, StoredForm) {
    struct Row {
        const char* name;
        std::string frame;
        std::string json;
        std::vector<std::string> skills;
    };
    const Row rows[] = {
        {"empty",
         R"({"type":"profile"})",
         R"({"display_name":"","description":"","skills":[],"metadata":{}})",
         {}},
        {"nulls count as absent",
         R"({"type":"profile","display_name":null,"description":null,"skills":null,)"
         R"("metadata":null})",
         R"({"display_name":"","description":"","skills":[],"metadata":{}})",
         {}},
        {"everything",
         R"({"type":"profile","ref":"p","display_name":"Trans \"T\"","description":"EN\nDE",)"
         R"("skills":["translate","summarize"],"metadata":{ "model" : "m-7", "n": [1, 2] },)"
         R"("other":1})",
         R"({"display_name":"Trans \"T\"","description":"EN\nDE","skills":["translate",)"
         R"("summarize"],"metadata":{"model":"m-7","n":[1,2]}})",
         {"translate", "summarize"}},
        {"skills folded, repeats dropped, order kept",
         R"({"type":"profile","skills":["B","a","b","A","c"]})",
         R"({"display_name":"","description":"","skills":["b","a","c"],"metadata":{}})",
         {"b", "a", "c"}},
        {"UTF-8 kept",
         R"({"type":"profile","display_name":"Übersetzer"})",
         R"({"display_name":"Übersetzer","description":"","skills":[],"metadata":{}})",
         {}},
    };
    for (const Row& row : rows) {
        SCOPED_TRACE(row.name);
        Built b = build(row.frame);
        EXPECT_EQ(b.code, "") << b.message;
        EXPECT_EQ(b.json, row.json);
        EXPECT_EQ(b.skills, row.skills);
    }
}

TEST(BuildProfile, Errors) {
    struct Row {
        const char* name;
        std::string frame;
        std::string code;
        std::string message;
    };
    const std::string skills_array = "\"skills\" must be an array of skill names, e.g. "
                                     "[\"translate\"]";
    const std::string metadata = "\"metadata\" must be a JSON object, e.g. {\"model\":\"...\"}";
    const Row rows[] = {
        {"display_name a number", R"({"display_name":1})", "bad_frame",
         "\"display_name\" must be a string"},
        {"display_name too long", R"({"display_name":")" + std::string(257, 'd') + R"("})",
         "bad_frame", "\"display_name\" is longer than 256 bytes"},
        {"description an object", R"({"description":{}})", "bad_frame",
         "\"description\" must be a string"},
        {"skills a string", R"({"skills":"translate"})", "bad_frame", skills_array},
        {"skills an object", R"({"skills":{"a":1}})", "bad_frame", skills_array},
        {"skill a number", R"({"skills":["a",5]})", "bad_frame", "\"skills\"[1] must be a string"},
        {"skill with a space", R"({"skills":["ok","Has Space"]})", "bad_frame",
         "\"skills\"[1] \"Has Space\" is not a skill name: use 1-64 of a-z 0-9 . _ -"},
        {"skill empty", R"({"skills":[""]})", "bad_frame",
         "\"skills\"[0] \"\" is not a skill name: use 1-64 of a-z 0-9 . _ -"},
        {"skill too long", R"({"skills":[")" + std::string(65, 's') + R"("]})", "bad_frame",
         "\"skills\"[0] \"" + std::string(64, 's') +
             "...\" is not a skill name: use 1-64 of a-z 0-9 . _ -"},
        {"skill not ASCII", R"({"skills":["caf\u00e9\n"]})", "bad_frame",
         "\"skills\"[0] \"caf???\" is not a skill name: use 1-64 of a-z 0-9 . _ -"},
        {"metadata an array", R"({"metadata":[1]})", "bad_frame", metadata},
        {"metadata a string", R"({"metadata":"m"})", "bad_frame", metadata},
    };
    for (const Row& row : rows) {
        SCOPED_TRACE(row.name);
        Built b = build(row.frame);
        EXPECT_EQ(b.code, row.code);
        EXPECT_EQ(b.message, row.message);
    }
}

TEST(BuildProfile, AtMost64Skills) {
    std::string skills;
    for (int i = 0; i < 64; ++i)
        skills += (i ? ",\"s" : "\"s") + std::to_string(i) + "\"";
    Built ok = build("{\"skills\":[" + skills + "]}");
    EXPECT_EQ(ok.code, "") << ok.message;
    EXPECT_EQ(ok.skills.size(), 64u);
    // Counted as given: repeats of the 64 still count.
    Built over = build("{\"skills\":[" + skills + ",\"s0\"]}");
    EXPECT_EQ(over.code, "bad_frame");
    EXPECT_EQ(over.message, "\"skills\" lists 65 skills, more than the 64 a profile may have");
}

TEST(BuildProfile, SizeOfTheStoredForm) {
    // {"display_name":"","description":"<n>","skills":[],"metadata":{}} is 64 + n bytes.
    const size_t base = std::string(R"({"display_name":"","description":"","skills":[],)"
                                    R"("metadata":{}})")
                            .size();
    std::string at = std::string(300 - base, 'd');
    Built fits = build(R"({"description":")" + at + R"("})", 300);
    EXPECT_EQ(fits.code, "") << fits.message;
    EXPECT_EQ(fits.json.size(), 300u);
    Built over = build(R"({"description":")" + at + R"(d"})", 300);
    EXPECT_EQ(over.code, "too_large");
    EXPECT_EQ(over.message, "the profile is 301 bytes as stored, over "
                            "directory.max_profile_bytes (300): shorten description or metadata");
    // Whitespace in metadata does not count: it is stored minified.
    Built spaced = build(R"({"description":")" + std::string(300 - base - 8, 'd') +
                             R"(","metadata":{   "a"  :   1   }})",
                         300);
    EXPECT_EQ(spaced.code, "") << spaced.message;
}

} // namespace
} // namespace meshd::session
