# pyllama_configure_amx(): decide whether a native (-march=native) build may use
# AMX. GCC turns AMX on for -march=native wherever the CPU reports it, but on some
# machines (for example VMs that do not grant the tile state) the kernels fault:
# ggml_backend_amx_mul_mat segfaults on Q8_0 and Q4_0 dies with SIGILL. An
# explicit -mno-amx-* wins over -march=native whatever the order, so we add it
# unless a probe shows that AMX tiles can be configured and used here.

function(pyllama_configure_amx)
    if (NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$" OR MSVC)
        return()
    endif()
    if (DEFINED GGML_NATIVE AND NOT GGML_NATIVE)
        message(STATUS "pyllama: AMX follows GGML_AMX_* (not a native build)")
        return()
    endif()
    set(_disable FALSE)
    if (PYLLAMA_AMX STREQUAL "OFF")
        set(_disable TRUE)
        set(_why "PYLLAMA_AMX=OFF")
    elseif (PYLLAMA_AMX STREQUAL "AUTO")
        if (CMAKE_CROSSCOMPILING)
            set(_disable TRUE)
            set(_why "cross compiling, cannot probe")
        else()
            try_run(_run_rc _compile_ok
                SOURCES "${CMAKE_CURRENT_SOURCE_DIR}/cmake/amx_probe.c"
                COMPILE_DEFINITIONS -mamx-tile -mamx-int8
                COMPILE_OUTPUT_VARIABLE _cout
                RUN_OUTPUT_VARIABLE _rout)
            if (NOT _compile_ok)
                set(_disable TRUE)
                set(_why "the compiler cannot build AMX code")
            elseif (NOT _run_rc STREQUAL "0")
                set(_disable TRUE)
                set(_why "AMX instructions do not run on this machine (probe exit: ${_run_rc} ${_rout})")
            endif()
        endif()
    endif()
    if (_disable)
        message(STATUS "pyllama: AMX disabled: ${_why}")
        set(_flags "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")
        set(CMAKE_C_FLAGS "${CMAKE_C_FLAGS} ${_flags}" PARENT_SCOPE)
        set(CMAKE_CXX_FLAGS "${CMAKE_CXX_FLAGS} ${_flags}" PARENT_SCOPE)
    else()
        message(STATUS "pyllama: AMX allowed (PYLLAMA_AMX=${PYLLAMA_AMX})")
    endif()
endfunction()
