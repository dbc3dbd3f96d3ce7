// tests/unit/control_request_test: parse_request (daemon/control/request.cc), the control
// request line -> command and arguments step that handle_command and the control fuzz target
// share. Table-driven: each row is a line and the exact result or error it must give.
#include "control/request.h"

#include <gtest/gtest.h>
#include <string>
#include <string_view>
#include <vector>

namespace meshd::control {
namespace {

TEST(ParseRequest, Errors) {
    struct Row {
        const char* name;
        std::string line;
        std::string message;
    };
    const std::string not_object = "a request is one JSON object per line";
    const std::string no_cmd = "the request has no string \"cmd\"";
    const Row rows[] = {
        {"empty line", "", not_object},
        {"not JSON", "user add bob", not_object},
        {"array", R"(["status"])", not_object},
        {"string", R"("status")", not_object},
        {"truncated object", R"({"cmd":"status")", not_object},
        {"trailing garbage", R"({"cmd":"status"} x)", not_object},
        {"bad UTF-8 in a string", "{\"cmd\":\"st\xff\"}", not_object},
        {"two objects", R"({"cmd":"status"}{"cmd":"status"})", not_object},
        {"no cmd", R"({"name":"bob"})", no_cmd},
        {"empty object", "{}", no_cmd},
        {"cmd is a number", R"({"cmd":1})", no_cmd},
        {"cmd is null", R"({"cmd":null})", no_cmd},
        {"cmd is an array", R"({"cmd":["status"]})", no_cmd},
        {"first cmd is not a string", R"({"cmd":1,"cmd":"status"})", no_cmd},
        {"cmd differs in case", R"({"CMD":"status"})", no_cmd},
    };
    for (const Row& row : rows) {
        SCOPED_TRACE(row.name);
        core::Result<Request> got = parse_request(row.line);
        ASSERT_FALSE(got.ok());
        EXPECT_EQ(got.error().code, "bad_request");
        EXPECT_EQ(got.error().message, row.message);
    }
}

TEST(ParseRequest, CommandAndArguments) {
    struct Row {
        const char* name;
        std::string line;
        std::string cmd;
        std::string key;
        std::string arg;                // Request::arg(key)
        std::vector<std::string> array; // Request::string_array(key)
    };
    const Row rows[] = {
        {"bare command", R"({"cmd":"status"})", "status", "name", "", {}},
        {"empty command is parsed; dispatch rejects it", R"({"cmd":""})", "", "name", "", {}},
        {"string argument",
         R"({"cmd":"user.add","name":"bob","kind":"agent"})",
         "user.add",
         "kind",
         "agent",
         {}},
        {"whitespace around members",
         " { \"cmd\" : \"user.del\" ,\t\"name\" : \"bob\" } ",
         "user.del",
         "name",
         "bob",
         {}},
        {"escapes are decoded",
         R"({"cmd":"user.add","name":"b\u006fb\n"})",
         "user.add",
         "name",
         "bob\n",
         {}},
        {"escaped key", R"({"c\u006dd":"status","n\u0061me":"x"})", "status", "name", "x", {}},
        {"first of a repeated key wins",
         R"({"cmd":"user.del","name":"a","name":"b"})",
         "user.del",
         "name",
         "a",
         {}},
        {"first of a repeated cmd wins",
         R"({"cmd":"status","cmd":"reload"})",
         "status",
         "name",
         "",
         {}},
        {"argument that is not a string",
         R"({"cmd":"user.del","name":5})",
         "user.del",
         "name",
         "",
         {}},
        {"absent argument", R"({"cmd":"user.del"})", "user.del", "name", "", {}},
        {"string array",
         R"({"cmd":"group.add","group":"ops","members":["a","b"]})",
         "group.add",
         "members",
         "",
         {"a", "b"}},
        {"array keeps only its strings",
         R"({"cmd":"group.add","members":["a",1,null,["b"],"c"]})",
         "group.add",
         "members",
         "",
         {"a", "c"}},
        {"empty array", R"({"cmd":"group.add","members":[]})", "group.add", "members", "", {}},
        {"string is not an array",
         R"({"cmd":"group.add","members":"a"})",
         "group.add",
         "members",
         "a",
         {}},
        {"nested objects are allowed and ignored",
         R"({"cmd":"status","x":{"y":[{}]}})",
         "status",
         "x",
         "",
         {}},
        {"UTF-8 argument",
         "{\"cmd\":\"user.add\",\"name\":\"b\xc3\xb6\"}",
         "user.add",
         "name",
         "b\xc3\xb6",
         {}},
    };
    for (const Row& row : rows) {
        SCOPED_TRACE(row.name);
        core::Result<Request> got = parse_request(row.line);
        ASSERT_TRUE(got.ok()) << got.error().message;
        EXPECT_EQ(got->cmd, row.cmd);
        EXPECT_EQ(got->arg(row.key), row.arg);
        std::vector<std::string_view> array = got->string_array(row.key);
        EXPECT_EQ(std::vector<std::string>(array.begin(), array.end()), row.array);
    }
}

TEST(ParseRequest, Flags) {
    struct Row {
        std::string line;
        bool flag; // Request::flag("online")
    };
    const Row rows[] = {
        {R"({"cmd":"who","online":true})", true},
        {R"({"cmd":"who","online":false})", false},
        {R"({"cmd":"who"})", false},
        {R"({"cmd":"who","online":"true"})", false},
        {R"({"cmd":"who","online":1})", false},
        {R"({"cmd":"who","online":null})", false},
        {R"({"cmd":"who","online":[true]})", false},
        {R"({"cmd":"who","online":false,"online":true})", false}, // the first one wins
    };
    for (const Row& row : rows) {
        SCOPED_TRACE(row.line);
        core::Result<Request> got = parse_request(row.line);
        ASSERT_TRUE(got.ok()) << got.error().message;
        EXPECT_EQ(got->flag("online"), row.flag);
    }
}

} // namespace
} // namespace meshd::control
