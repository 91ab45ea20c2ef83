#include "_abort_shim.h"

#include <stdexcept>
#include <string>

#include "ggml.h"

namespace pyllama {

namespace {
[[noreturn]] void throw_abort(const char * message) {
    throw std::runtime_error(std::string("llama.cpp aborted: ") + (message ? message : "(no message)"));
}
}  // namespace

void install_abort_handler() {
    ggml_set_abort_callback([](const char * message) { throw_abort(message); });
}

void ggml_abort_for_test(const char * message) {
    GGML_ABORT("%s", message);
}

}  // namespace pyllama
