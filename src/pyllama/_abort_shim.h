// Turn ggml/llama.cpp aborts (GGML_ABORT, GGML_ASSERT) into C++ exceptions where they can be
// caught: llama.cpp catches exceptions in llama_init_from_model, llama_model_load_from_file and the
// state functions, and pyllama declares decode/encode `except +`, so a failed assertion on the
// calling thread becomes a Python exception instead of killing the process.
// An abort on a compute worker thread (inside an OpenMP region) still ends the process.
#pragma once

namespace pyllama {
void install_abort_handler();
// raises GGML_ABORT on purpose (tests check the handler)
void ggml_abort_for_test(const char * message);
}  // namespace pyllama
