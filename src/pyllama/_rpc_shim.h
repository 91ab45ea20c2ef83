// ggml's RPC backend, looked up at run time through the backend registry (as llama.cpp's own
// --rpc and rpc-server do), so a build without GGML_RPC still links and says so when asked.
#pragma once

#include <string>
#include <vector>

namespace pyllama {
// Registers the RPC server at "host:port" (once per endpoint, like --rpc) and returns the names
// of its devices ("RPC0", ...). Throws std::runtime_error when the build has no RPC backend or the
// server cannot be reached.
std::vector<std::string> rpc_add_server(const std::string & endpoint);
// Serves ggml RPC on "host:port" with the named devices; blocks, and returns only when the
// server could not start or stopped accepting (the reason is on stderr).
void rpc_start_server(const std::string & endpoint, const std::string & cache_dir, size_t n_threads,
                      const std::vector<std::string> & devices);
}  // namespace pyllama
