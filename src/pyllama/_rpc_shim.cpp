#include "_rpc_shim.h"

#include <cstdio>
#include <mutex>
#include <stdexcept>

#include "ggml-backend.h"
#include "ggml-rpc.h"

namespace pyllama {

namespace {
void * rpc_proc(const char * name) {
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("RPC");
    if (reg == nullptr) {
        throw std::runtime_error("this build has no RPC backend (rebuild with CMAKE_ARGS=\"-DGGML_RPC=ON\")");
    }
    void * fn = ggml_backend_reg_get_proc_address(reg, name);
    if (fn == nullptr) {
        throw std::runtime_error(std::string("the RPC backend lacks ") + name);
    }
    return fn;
}
}  // namespace

std::vector<std::string> rpc_add_server(const std::string & endpoint) {
    static std::mutex mutex;
    std::lock_guard<std::mutex> lock(mutex);
    auto add_server = (decltype(ggml_backend_rpc_add_server) *) rpc_proc("ggml_backend_rpc_add_server");
    // a server that cannot be reached aborts inside; pyllama's abort handler makes that a throw
    ggml_backend_reg_t reg = add_server(endpoint.c_str());
    if (reg == nullptr) {
        throw std::runtime_error("RPC server " + endpoint + " has no devices");
    }
    // ggml_backend_rpc_add_server returns the same reg for an endpoint it knows: register once
    bool known = false;
    for (size_t i = 0; i < ggml_backend_reg_count(); i++) {
        known = known || ggml_backend_reg_get(i) == reg;
    }
    if (!known) {
        ggml_backend_register(reg);
    }
    std::vector<std::string> names;
    for (size_t i = 0; i < ggml_backend_reg_dev_count(reg); i++) {
        names.emplace_back(ggml_backend_dev_name(ggml_backend_reg_dev_get(reg, i)));
    }
    return names;
}

void rpc_start_server(const std::string & endpoint, const std::string & cache_dir, size_t n_threads,
                      const std::vector<std::string> & devices) {
    auto start_server = (decltype(ggml_backend_rpc_start_server) *) rpc_proc("ggml_backend_rpc_start_server");
    std::vector<ggml_backend_dev_t> devs;
    for (const auto & name : devices) {
        ggml_backend_dev_t dev = ggml_backend_dev_by_name(name.c_str());
        if (dev == nullptr) {
            throw std::runtime_error("no device named " + name);
        }
        devs.push_back(dev);
    }
    setvbuf(stdout, nullptr, _IOLBF, 0);  // its progress lines, as they happen, even into a pipe
    start_server(endpoint.c_str(), cache_dir.empty() ? nullptr : cache_dir.c_str(), n_threads,
                 devs.size(), devs.data());
}

}  // namespace pyllama
