// abi_future: a test module built for an ABI number no meshd hosts yet. meshd must refuse
// it at start with a message naming the file (tests/e2e/test_config.py).
#include "meshd/module.h"

namespace {
constexpr int future_abi = MESHD_MODULE_ABI + 1000;
meshd_module descriptor = {};
} // namespace

extern "C" MESHD_EXPORT int meshd_module_abi(const int*, int) {
    return future_abi;
}

extern "C" MESHD_EXPORT const meshd_module* meshd_module_get(int abi) {
    descriptor.abi = future_abi;
    descriptor.name = "abi_future";
    descriptor.version = "9.9.9";
    return abi == future_abi ? &descriptor : nullptr;
}
