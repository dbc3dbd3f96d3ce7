// core/base64: standard base64 (RFC 4648 section 4: A-Z a-z 0-9 + /), as the protocol and
// meshctl carry ed25519 keys, nonces and signatures. Decoding accepts the text with or
// without its '=' padding and nothing else: no whitespace, no URL-safe alphabet, no bits
// set past the last byte.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace meshd::core {

std::string base64_encode(std::string_view bytes); // padded
std::optional<std::string> base64_decode(std::string_view text);

} // namespace meshd::core
