// tests/unit/base64_test: core/base64, the strict standard base64 of keys, nonces, signatures.
#include "core/base64.h"

#include <gtest/gtest.h>
#include <optional>
#include <string>

namespace meshd::core {
namespace {

TEST(Base64, EncodeKnownValues) {
    // RFC 4648 section 10.
    const std::pair<std::string, std::string> rows[] = {
        {"", ""},
        {"f", "Zg=="},
        {"fo", "Zm8="},
        {"foo", "Zm9v"},
        {"foob", "Zm9vYg=="},
        {"fooba", "Zm9vYmE="},
        {"foobar", "Zm9vYmFy"},
        {std::string("\xff\xfe\x00", 3), "//4A"},
    };
    for (const auto& [bytes, text] : rows) {
        SCOPED_TRACE(text);
        EXPECT_EQ(base64_encode(bytes), text);
        EXPECT_EQ(base64_decode(text), std::optional<std::string>(bytes));
    }
}

TEST(Base64, DecodeAcceptsMissingPadding) {
    EXPECT_EQ(base64_decode("Zg"), std::optional<std::string>("f"));
    EXPECT_EQ(base64_decode("Zm8"), std::optional<std::string>("fo"));
    EXPECT_EQ(base64_decode("Zm9vYmE"), std::optional<std::string>("fooba"));
    std::string key(32, '\x01');
    std::string text = base64_encode(key);
    EXPECT_EQ(text.size(), 44u);
    EXPECT_EQ(base64_decode(text.substr(0, 43)), std::optional<std::string>(key));
}

TEST(Base64, DecodeRefusesEverythingElse) {
    const char* rows[] = {
        "Z",        // a lone character holds no byte
        "Zm9vY",    // nor does one after a full group
        "Zg=",      // padding that does not complete a group
        "Zg===",    // too much padding
        "====",     // padding only
        "Z===",     // three padding characters
        "Zg==Zg==", // padding inside
        "Zm 9v",    // whitespace
        "Zm9v\n",   // a newline
        "Zm-_",     // the URL-safe alphabet
        "Zh==",     // bits set past the last byte ("f" is Zg==)
        "Zm9=",     // same, two bytes
        "Zm9v!",    // not base64 at all
    };
    for (const char* text : rows) {
        SCOPED_TRACE(text);
        EXPECT_EQ(base64_decode(text), std::nullopt);
    }
}

} // namespace
} // namespace meshd::core
