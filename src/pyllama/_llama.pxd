# cython: language_level=3
#
# Cython declarations for vendor/llama.cpp/include/llama.h (plus the ggml
# bits it depends on). Names are the C names, unchanged, except where noted:
#
#   * Cython has a single namespace for types and functions, so a function
#     that has the same name as an enum type gets a "_of" alias whose C
#     name is the real one:
#         llama_vocab_type_of(vocab)     -> C llama_vocab_type()
#         llama_pooling_type_of(ctx)     -> C llama_pooling_type()
#         ggml_backend_dev_type_of(dev)  -> C ggml_backend_dev_type()
#   * ggml_backend_dev_caps.async is spelled `async_` (Python keyword).
#   * C `bool` is `bint` for function arguments/returns and struct fields;
#     callback typedefs use C++ `bool` (cimported as `cppbool`), because a
#     Cython `bint` function is emitted as returning `int`, which does not
#     convert to a `bool (*)(...)` pointer in C++. Callbacks must therefore
#     be written as e.g.
#         cdef cppbool cb(float progress, void * ud) noexcept with gil: ...
#   * The anonymous union in llama_model_kv_override is flattened: its
#     members (val_i64, val_f64, val_bool, val_str) are declared as struct
#     members (valid in C++, where anonymous-union members are accessed as
#     members of the enclosing struct).
#   * Deprecated llama.h functions (DEPRECATED(...)) are not declared.
#
# This file must be compiled in C++ mode (--cplus).

from libc.stdint cimport int8_t, uint8_t, int32_t, uint32_t, int64_t, uint64_t
from libc.stdio cimport FILE
from libcpp cimport bool as cppbool


# ---------------------------------------------------------------------------
# ggml.h
# ---------------------------------------------------------------------------

cdef extern from "ggml.h" nogil:
    # opaque (for us) ggml objects
    cdef struct ggml_context
    cdef struct ggml_cgraph
    cdef struct ggml_tensor

    cdef enum ggml_type:
        GGML_TYPE_F32     = 0
        GGML_TYPE_F16     = 1
        GGML_TYPE_Q4_0    = 2
        GGML_TYPE_Q4_1    = 3
        GGML_TYPE_Q5_0    = 6
        GGML_TYPE_Q5_1    = 7
        GGML_TYPE_Q8_0    = 8
        GGML_TYPE_Q8_1    = 9
        GGML_TYPE_Q2_K    = 10
        GGML_TYPE_Q3_K    = 11
        GGML_TYPE_Q4_K    = 12
        GGML_TYPE_Q5_K    = 13
        GGML_TYPE_Q6_K    = 14
        GGML_TYPE_Q8_K    = 15
        GGML_TYPE_IQ2_XXS = 16
        GGML_TYPE_IQ2_XS  = 17
        GGML_TYPE_IQ3_XXS = 18
        GGML_TYPE_IQ1_S   = 19
        GGML_TYPE_IQ4_NL  = 20
        GGML_TYPE_IQ3_S   = 21
        GGML_TYPE_IQ2_S   = 22
        GGML_TYPE_IQ4_XS  = 23
        GGML_TYPE_I8      = 24
        GGML_TYPE_I16     = 25
        GGML_TYPE_I32     = 26
        GGML_TYPE_I64     = 27
        GGML_TYPE_F64     = 28
        GGML_TYPE_IQ1_M   = 29
        GGML_TYPE_BF16    = 30
        GGML_TYPE_TQ1_0   = 34
        GGML_TYPE_TQ2_0   = 35
        GGML_TYPE_MXFP4   = 39
        GGML_TYPE_NVFP4   = 40
        GGML_TYPE_Q1_0    = 41
        GGML_TYPE_Q2_0    = 42
        GGML_TYPE_COUNT   = 43

    cdef enum ggml_log_level:
        GGML_LOG_LEVEL_NONE  = 0
        GGML_LOG_LEVEL_DEBUG = 1
        GGML_LOG_LEVEL_INFO  = 2
        GGML_LOG_LEVEL_WARN  = 3
        GGML_LOG_LEVEL_ERROR = 4
        GGML_LOG_LEVEL_CONT  = 5   # continue previous log

    # rope type macros (used by enum llama_rope_type)
    const int GGML_ROPE_TYPE_NORMAL
    const int GGML_ROPE_TYPE_NEOX
    const int GGML_ROPE_TYPE_MROPE
    const int GGML_ROPE_TYPE_VISION
    const int GGML_ROPE_TYPE_IMROPE

    ctypedef cppbool (*ggml_abort_callback)(void * data) noexcept

    int64_t      ggml_blck_size(ggml_type type)
    size_t       ggml_type_size(ggml_type type)
    const char * ggml_type_name(ggml_type type)

    ctypedef void (*ggml_log_callback)(ggml_log_level level, const char * text, void * user_data) noexcept

    void ggml_log_get(ggml_log_callback * log_callback, void ** user_data)
    void ggml_log_set(ggml_log_callback log_callback, void * user_data)

    cdef struct ggml_threadpool
    ctypedef ggml_threadpool * ggml_threadpool_t


# ---------------------------------------------------------------------------
# ggml-backend.h
# ---------------------------------------------------------------------------

cdef extern from "ggml-backend.h" nogil:
    cdef struct ggml_backend_buffer_type
    cdef struct ggml_backend_buffer
    cdef struct ggml_backend
    cdef struct ggml_backend_reg
    cdef struct ggml_backend_device

    ctypedef ggml_backend_buffer_type * ggml_backend_buffer_type_t
    ctypedef ggml_backend_buffer * ggml_backend_buffer_t
    ctypedef ggml_backend * ggml_backend_t
    ctypedef ggml_backend_reg * ggml_backend_reg_t
    ctypedef ggml_backend_device * ggml_backend_dev_t

    # Backend buffer type
    const char * ggml_backend_buft_name(ggml_backend_buffer_type_t buft)

    # Backend device
    cdef enum ggml_backend_dev_type:
        GGML_BACKEND_DEVICE_TYPE_CPU
        GGML_BACKEND_DEVICE_TYPE_GPU
        GGML_BACKEND_DEVICE_TYPE_IGPU
        GGML_BACKEND_DEVICE_TYPE_ACCEL
        GGML_BACKEND_DEVICE_TYPE_META

    cdef struct ggml_backend_dev_caps:
        bint async_ "async"        # `async` is a Python keyword
        bint host_buffer
        bint buffer_from_host_ptr
        bint events
        bint mmap_support

    cdef struct ggml_backend_dev_props:
        const char * name
        const char * description
        size_t memory_free
        size_t memory_total
        ggml_backend_dev_type type
        const char * device_id
        ggml_backend_dev_caps caps

    const char *               ggml_backend_dev_name(ggml_backend_dev_t device)
    const char *               ggml_backend_dev_description(ggml_backend_dev_t device)
    void                       ggml_backend_dev_memory(ggml_backend_dev_t device, size_t * free, size_t * total) except +
    # C name is ggml_backend_dev_type (clashes with the enum type name above)
    ggml_backend_dev_type      ggml_backend_dev_type_of "ggml_backend_dev_type"(ggml_backend_dev_t device)
    void                       ggml_backend_dev_get_props(ggml_backend_dev_t device, ggml_backend_dev_props * props)
    ggml_backend_reg_t         ggml_backend_dev_backend_reg(ggml_backend_dev_t device)
    ggml_backend_buffer_type_t ggml_backend_dev_buffer_type(ggml_backend_dev_t device)

    # Backend (reg)
    const char *       ggml_backend_reg_name(ggml_backend_reg_t reg)
    size_t             ggml_backend_reg_dev_count(ggml_backend_reg_t reg)
    ggml_backend_dev_t ggml_backend_reg_dev_get(ggml_backend_reg_t reg, size_t index)

    # Backend (reg) enumeration
    size_t             ggml_backend_reg_count()
    ggml_backend_reg_t ggml_backend_reg_get(size_t index)
    ggml_backend_reg_t ggml_backend_reg_by_name(const char * name)

    # Device enumeration
    size_t             ggml_backend_dev_count()
    ggml_backend_dev_t ggml_backend_dev_get(size_t index)
    ggml_backend_dev_t ggml_backend_dev_by_name(const char * name)
    ggml_backend_dev_t ggml_backend_dev_by_type(ggml_backend_dev_type type)

    # Dynamic backend loading
    ggml_backend_reg_t ggml_backend_load(const char * path)
    void               ggml_backend_load_all()
    void               ggml_backend_load_all_from_path(const char * dir_path)

    # scheduler eval callback (llama_context_params.cb_eval)
    ctypedef cppbool (*ggml_backend_sched_eval_callback)(ggml_tensor * t, cppbool ask, void * user_data) noexcept


# ---------------------------------------------------------------------------
# ggml-cpu.h
# ---------------------------------------------------------------------------

cdef extern from "ggml-cpu.h" nogil:
    cdef enum ggml_numa_strategy:
        GGML_NUMA_STRATEGY_DISABLED   = 0
        GGML_NUMA_STRATEGY_DISTRIBUTE = 1
        GGML_NUMA_STRATEGY_ISOLATE    = 2
        GGML_NUMA_STRATEGY_NUMACTL    = 3
        GGML_NUMA_STRATEGY_MIRROR     = 4
        GGML_NUMA_STRATEGY_COUNT


# ---------------------------------------------------------------------------
# ggml-opt.h (only what llama.h's training API refers to)
# ---------------------------------------------------------------------------

cdef extern from "ggml-opt.h" nogil:
    cdef struct ggml_opt_dataset
    cdef struct ggml_opt_context
    cdef struct ggml_opt_result

    ctypedef ggml_opt_dataset * ggml_opt_dataset_t
    ctypedef ggml_opt_context * ggml_opt_context_t
    ctypedef ggml_opt_result * ggml_opt_result_t

    cdef enum ggml_opt_optimizer_type:
        GGML_OPT_OPTIMIZER_TYPE_ADAMW
        GGML_OPT_OPTIMIZER_TYPE_SGD
        GGML_OPT_OPTIMIZER_TYPE_COUNT

    # the two members are anonymous structs in C; named here via decltype (C++ only)
    ctypedef struct ggml_opt_optimizer_params_adamw "decltype(ggml_opt_optimizer_params::adamw)":
        float alpha
        float beta1
        float beta2
        float eps
        float wd

    ctypedef struct ggml_opt_optimizer_params_sgd "decltype(ggml_opt_optimizer_params::sgd)":
        float alpha
        float wd

    cdef struct ggml_opt_optimizer_params:
        ggml_opt_optimizer_params_adamw adamw
        ggml_opt_optimizer_params_sgd sgd

    ctypedef ggml_opt_optimizer_params (*ggml_opt_get_optimizer_params)(void * userdata) noexcept

    ctypedef void (*ggml_opt_epoch_callback)(
        cppbool            train,
        ggml_opt_context_t opt_ctx,
        ggml_opt_dataset_t dataset,
        ggml_opt_result_t  result,
        int64_t            ibatch,
        int64_t            ibatch_max,
        int64_t            t_start_us) noexcept


# ---------------------------------------------------------------------------
# gguf.h
# ---------------------------------------------------------------------------

cdef extern from "gguf.h" nogil:
    cdef struct gguf_context


# ---------------------------------------------------------------------------
# llama.h
# ---------------------------------------------------------------------------

cdef extern from "llama.h" nogil:

    # -- macros ---------------------------------------------------------------

    const uint32_t LLAMA_DEFAULT_SEED
    const int32_t  LLAMA_TOKEN_NULL

    const uint32_t LLAMA_FILE_MAGIC_GGLA
    const uint32_t LLAMA_FILE_MAGIC_GGSN
    const uint32_t LLAMA_FILE_MAGIC_GGSQ

    const uint32_t LLAMA_SESSION_MAGIC
    const int      LLAMA_SESSION_VERSION

    const uint32_t LLAMA_STATE_SEQ_MAGIC
    const int      LLAMA_STATE_SEQ_VERSION

    # -- C interface: basic types -------------------------------------------

    cdef struct llama_vocab
    cdef struct llama_model
    cdef struct llama_context
    cdef struct llama_sampler   # defined below (struct llama_sampler { iface; ctx; })

    cdef struct llama_memory_i
    ctypedef llama_memory_i * llama_memory_t

    ctypedef int32_t llama_pos
    ctypedef int32_t llama_token
    ctypedef int32_t llama_seq_id

    cdef enum llama_vocab_type:
        LLAMA_VOCAB_TYPE_NONE   = 0   # For models without vocab
        LLAMA_VOCAB_TYPE_SPM    = 1   # LLaMA tokenizer based on byte-level BPE with byte fallback
        LLAMA_VOCAB_TYPE_BPE    = 2   # GPT-2 tokenizer based on byte-level BPE
        LLAMA_VOCAB_TYPE_WPM    = 3   # BERT tokenizer based on WordPiece
        LLAMA_VOCAB_TYPE_UGM    = 4   # T5 tokenizer based on Unigram
        LLAMA_VOCAB_TYPE_RWKV   = 5   # RWKV tokenizer based on greedy tokenization
        LLAMA_VOCAB_TYPE_PLAMO2 = 6   # PLaMo-2 tokenizer
        LLAMA_VOCAB_TYPE_TEST   = 7   # Dummy tokenizer for testing

    cdef enum llama_rope_type:
        LLAMA_ROPE_TYPE_NONE   = -1
        LLAMA_ROPE_TYPE_NORM   = 0
        LLAMA_ROPE_TYPE_NEOX           # = GGML_ROPE_TYPE_NEOX
        LLAMA_ROPE_TYPE_MROPE          # = GGML_ROPE_TYPE_MROPE
        LLAMA_ROPE_TYPE_IMROPE         # = GGML_ROPE_TYPE_IMROPE
        LLAMA_ROPE_TYPE_VISION         # = GGML_ROPE_TYPE_VISION

    cdef enum llama_token_type:
        LLAMA_TOKEN_TYPE_UNDEFINED    = 0
        LLAMA_TOKEN_TYPE_NORMAL       = 1
        LLAMA_TOKEN_TYPE_UNKNOWN      = 2
        LLAMA_TOKEN_TYPE_CONTROL      = 3
        LLAMA_TOKEN_TYPE_USER_DEFINED = 4
        LLAMA_TOKEN_TYPE_UNUSED       = 5
        LLAMA_TOKEN_TYPE_BYTE         = 6

    cdef enum llama_token_attr:
        LLAMA_TOKEN_ATTR_UNDEFINED    = 0
        LLAMA_TOKEN_ATTR_UNKNOWN      = 1 << 0
        LLAMA_TOKEN_ATTR_UNUSED       = 1 << 1
        LLAMA_TOKEN_ATTR_NORMAL       = 1 << 2
        LLAMA_TOKEN_ATTR_CONTROL      = 1 << 3
        LLAMA_TOKEN_ATTR_USER_DEFINED = 1 << 4
        LLAMA_TOKEN_ATTR_BYTE         = 1 << 5
        LLAMA_TOKEN_ATTR_NORMALIZED   = 1 << 6
        LLAMA_TOKEN_ATTR_LSTRIP       = 1 << 7
        LLAMA_TOKEN_ATTR_RSTRIP       = 1 << 8
        LLAMA_TOKEN_ATTR_SINGLE_WORD  = 1 << 9

    # model file types
    cdef enum llama_ftype:
        LLAMA_FTYPE_ALL_F32          = 0
        LLAMA_FTYPE_MOSTLY_F16       = 1
        LLAMA_FTYPE_MOSTLY_Q4_0      = 2
        LLAMA_FTYPE_MOSTLY_Q4_1      = 3
        LLAMA_FTYPE_MOSTLY_Q8_0      = 7
        LLAMA_FTYPE_MOSTLY_Q5_0      = 8
        LLAMA_FTYPE_MOSTLY_Q5_1      = 9
        LLAMA_FTYPE_MOSTLY_Q2_K      = 10
        LLAMA_FTYPE_MOSTLY_Q3_K_S    = 11
        LLAMA_FTYPE_MOSTLY_Q3_K_M    = 12
        LLAMA_FTYPE_MOSTLY_Q3_K_L    = 13
        LLAMA_FTYPE_MOSTLY_Q4_K_S    = 14
        LLAMA_FTYPE_MOSTLY_Q4_K_M    = 15
        LLAMA_FTYPE_MOSTLY_Q5_K_S    = 16
        LLAMA_FTYPE_MOSTLY_Q5_K_M    = 17
        LLAMA_FTYPE_MOSTLY_Q6_K      = 18
        LLAMA_FTYPE_MOSTLY_IQ2_XXS   = 19
        LLAMA_FTYPE_MOSTLY_IQ2_XS    = 20
        LLAMA_FTYPE_MOSTLY_Q2_K_S    = 21
        LLAMA_FTYPE_MOSTLY_IQ3_XS    = 22
        LLAMA_FTYPE_MOSTLY_IQ3_XXS   = 23
        LLAMA_FTYPE_MOSTLY_IQ1_S     = 24
        LLAMA_FTYPE_MOSTLY_IQ4_NL    = 25
        LLAMA_FTYPE_MOSTLY_IQ3_S     = 26
        LLAMA_FTYPE_MOSTLY_IQ3_M     = 27
        LLAMA_FTYPE_MOSTLY_IQ2_S     = 28
        LLAMA_FTYPE_MOSTLY_IQ2_M     = 29
        LLAMA_FTYPE_MOSTLY_IQ4_XS    = 30
        LLAMA_FTYPE_MOSTLY_IQ1_M     = 31
        LLAMA_FTYPE_MOSTLY_BF16      = 32
        LLAMA_FTYPE_MOSTLY_TQ1_0     = 36
        LLAMA_FTYPE_MOSTLY_TQ2_0     = 37
        LLAMA_FTYPE_MOSTLY_MXFP4_MOE = 38
        LLAMA_FTYPE_MOSTLY_NVFP4     = 39
        LLAMA_FTYPE_MOSTLY_Q1_0      = 40
        LLAMA_FTYPE_MOSTLY_Q2_0      = 41
        LLAMA_FTYPE_GUESSED          = 1024   # not specified in the model file

    # Get the model file type (quantization) as a string, e.g. "Q8_0" or "Q4_K - Medium"
    const char * llama_ftype_name(llama_ftype ftype)

    cdef enum llama_rope_scaling_type:
        LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED = -1
        LLAMA_ROPE_SCALING_TYPE_NONE        = 0
        LLAMA_ROPE_SCALING_TYPE_LINEAR      = 1
        LLAMA_ROPE_SCALING_TYPE_YARN        = 2
        LLAMA_ROPE_SCALING_TYPE_LONGROPE    = 3
        LLAMA_ROPE_SCALING_TYPE_MAX_VALUE   = 3   # = LLAMA_ROPE_SCALING_TYPE_LONGROPE

    cdef enum llama_pooling_type:
        LLAMA_POOLING_TYPE_UNSPECIFIED = -1
        LLAMA_POOLING_TYPE_NONE = 0
        LLAMA_POOLING_TYPE_MEAN = 1
        LLAMA_POOLING_TYPE_CLS  = 2
        LLAMA_POOLING_TYPE_LAST = 3
        LLAMA_POOLING_TYPE_RANK = 4

    cdef enum llama_attention_type:
        LLAMA_ATTENTION_TYPE_UNSPECIFIED = -1
        LLAMA_ATTENTION_TYPE_CAUSAL      = 0
        LLAMA_ATTENTION_TYPE_NON_CAUSAL  = 1

    cdef enum llama_flash_attn_type:
        LLAMA_FLASH_ATTN_TYPE_AUTO     = -1
        LLAMA_FLASH_ATTN_TYPE_DISABLED = 0
        LLAMA_FLASH_ATTN_TYPE_ENABLED  = 1

    const char * llama_flash_attn_type_name(llama_flash_attn_type flash_attn_type)

    cdef enum llama_split_mode:
        LLAMA_SPLIT_MODE_NONE   = 0   # single GPU
        LLAMA_SPLIT_MODE_LAYER  = 1   # split layers and KV across GPUs
        LLAMA_SPLIT_MODE_ROW    = 2   # split layers and KV across GPUs, use tensor parallelism if supported
        LLAMA_SPLIT_MODE_TENSOR = 3

    cdef enum llama_load_mode:
        LLAMA_LOAD_MODE_AUTO       = -1
        LLAMA_LOAD_MODE_NONE       = 0
        LLAMA_LOAD_MODE_MMAP       = 1
        LLAMA_LOAD_MODE_MLOCK      = 2
        LLAMA_LOAD_MODE_MMAP_MLOCK = 3
        LLAMA_LOAD_MODE_DIRECT_IO  = 4

    const char *    llama_load_mode_name(llama_load_mode load_mode)
    llama_load_mode llama_load_mode_from_str(const char * str)

    cdef enum llama_lazy_mode:
        LLAMA_LAZY_MODE_OFF  = 0
        LLAMA_LAZY_MODE_AUTO = 1
        LLAMA_LAZY_MODE_ON   = 2

    cdef enum llama_context_type:
        LLAMA_CONTEXT_TYPE_DEFAULT = 0
        LLAMA_CONTEXT_TYPE_MTP     = 1

    ctypedef struct llama_token_data:
        llama_token id   # token id
        float logit      # log-odds of the token
        float p          # probability of the token

    ctypedef struct llama_token_data_array:
        llama_token_data * data
        size_t size
        int64_t selected   # index in the data array (not the token id)
        bint sorted

    ctypedef cppbool (*llama_progress_callback)(float progress, void * user_data) noexcept

    # Input data for llama_encode/llama_decode
    ctypedef struct llama_batch:
        int32_t n_tokens
        llama_token  *  token
        float        *  embd
        llama_pos    *  pos
        int32_t      *  n_seq_id
        llama_seq_id ** seq_id
        int8_t       *  logits

    cdef enum llama_model_kv_override_type:
        LLAMA_KV_OVERRIDE_TYPE_INT
        LLAMA_KV_OVERRIDE_TYPE_FLOAT
        LLAMA_KV_OVERRIDE_TYPE_BOOL
        LLAMA_KV_OVERRIDE_TYPE_STR

    cdef enum llama_model_meta_key:
        LLAMA_MODEL_META_KEY_SAMPLING_SEQUENCE
        LLAMA_MODEL_META_KEY_SAMPLING_TOP_K
        LLAMA_MODEL_META_KEY_SAMPLING_TOP_P
        LLAMA_MODEL_META_KEY_SAMPLING_MIN_P
        LLAMA_MODEL_META_KEY_SAMPLING_XTC_PROBABILITY
        LLAMA_MODEL_META_KEY_SAMPLING_XTC_THRESHOLD
        LLAMA_MODEL_META_KEY_SAMPLING_TEMP
        LLAMA_MODEL_META_KEY_SAMPLING_PENALTY_LAST_N
        LLAMA_MODEL_META_KEY_SAMPLING_PENALTY_REPEAT
        LLAMA_MODEL_META_KEY_SAMPLING_MIROSTAT
        LLAMA_MODEL_META_KEY_SAMPLING_MIROSTAT_TAU
        LLAMA_MODEL_META_KEY_SAMPLING_MIROSTAT_ETA

    cdef enum llama_process_type:
        LLAMA_PROCESS_TYPE_ENCODE
        LLAMA_PROCESS_TYPE_DECODE

    cdef struct llama_model_kv_override:
        llama_model_kv_override_type tag
        char key[128]
        # anonymous union { ... } -- members accessed directly (C++)
        int64_t val_i64
        double  val_f64
        bint    val_bool
        char    val_str[128]

    cdef struct llama_model_tensor_buft_override:
        const char * pattern
        ggml_backend_buffer_type_t buft

    cdef struct llama_model_params:
        # NULL-terminated list of devices to use for offloading (NULL = all available)
        ggml_backend_dev_t * devices
        # NULL-terminated list of buffer types to use for tensors that match a pattern
        const llama_model_tensor_buft_override * tensor_buft_overrides
        int32_t n_gpu_layers          # number of layers to store in VRAM, negative = all
        llama_split_mode split_mode   # how to split the model across multiple GPUs
        llama_load_mode  load_mode    # how to load the model
        llama_lazy_mode  lazy_mode    # on-demand reading of tensors marked by the arch
        int32_t main_gpu              # GPU used for the entire model when split_mode is NONE
        const float * tensor_split    # size: llama_max_devices()
        llama_progress_callback progress_callback   # return false to abort loading
        void * progress_callback_user_data
        const llama_model_kv_override * kv_overrides
        bint vocab_only        # only load the vocabulary, no weights
        bint check_tensors     # validate model tensor data
        bint use_extra_bufts   # use extra buffer types (used for weight repacking)
        bint no_host           # bypass host buffer allowing extra buffers to be used
        bint no_alloc          # only load metadata and simulate memory allocations
        bint load_mtp          # whether to load MTP layers

    cdef struct llama_sampler_seq_config:
        llama_seq_id    seq_id
        llama_sampler * sampler

    cdef struct llama_context_params:
        uint32_t n_ctx                   # text context, 0 = from model
        uint32_t n_batch                 # logical maximum batch size for llama_decode
        uint32_t n_ubatch                # physical maximum batch size
        uint32_t n_seq_max               # max number of sequences
        uint32_t n_rs_seq                # recurrent-state snapshots per seq [EXPERIMENTAL]
        uint32_t n_outputs_max           # max outputs in a ubatch (0 = n_batch)
        uint32_t n_outputs_max_per_seq   # max outputs per sequence (0 = n_outputs_max)
        int32_t  n_threads               # threads for generation
        int32_t  n_threads_batch         # threads for batch processing

        llama_context_type      ctx_type
        llama_rope_scaling_type rope_scaling_type
        llama_pooling_type      pooling_type
        llama_attention_type    attention_type
        llama_flash_attn_type   flash_attn_type

        float    rope_freq_base
        float    rope_freq_scale
        float    yarn_ext_factor
        float    yarn_attn_factor
        float    yarn_beta_fast
        float    yarn_beta_slow
        uint32_t yarn_orig_ctx
        float    defrag_thold            # [DEPRECATED]

        ggml_backend_sched_eval_callback cb_eval
        void * cb_eval_user_data

        ggml_type type_k                 # data type for K cache [EXPERIMENTAL]
        ggml_type type_v                 # data type for V cache [EXPERIMENTAL]

        # if it returns true, execution of llama_decode() will be aborted
        ggml_abort_callback abort_callback
        void *              abort_callback_data

        bint embeddings    # extract embeddings (together with logits)
        bint offload_kqv   # offload the KQV ops (including the KV cache) to GPU
        bint no_perf       # measure performance timings
        bint op_offload    # offload host tensor operations to device
        bint swa_full      # use full-size SWA cache
        bint kv_unified    # unified KV buffer across sequences

        # [EXPERIMENTAL] backend sampler chains
        llama_sampler_seq_config * samplers
        size_t                     n_samplers

        llama_context * ctx_other

    cdef struct llama_model_tensor_override:
        const char * pattern
        ggml_type type

    cdef struct llama_model_imatrix_data:
        const char * name
        const float * data
        size_t size

    # model quantization parameters
    ctypedef struct llama_model_quantize_params:
        int32_t nthread
        llama_ftype ftype
        ggml_type output_tensor_type
        ggml_type token_embedding_type
        bint allow_requantize
        bint quantize_output_tensor
        bint only_copy
        bint pure
        bint keep_split
        bint dry_run
        const llama_model_imatrix_data * imatrix
        const llama_model_kv_override * kv_overrides
        const llama_model_tensor_override * tt_overrides
        const int32_t * prune_layers
        size_t max_buf_size

    ctypedef struct llama_logit_bias:
        llama_token token
        float bias

    ctypedef struct llama_sampler_chain_params:
        bint no_perf

    # used in chat template
    ctypedef struct llama_chat_message:
        const char * role
        const char * content

    # lora adapter
    cdef struct llama_adapter_lora

    const char * llama_version()

    # Helpers for getting default parameters
    llama_model_params          llama_model_default_params()
    llama_context_params        llama_context_default_params()
    llama_sampler_chain_params  llama_sampler_chain_default_params()
    llama_model_quantize_params llama_model_quantize_default_params()

    # Initialize / free the llama + ggml backend
    void llama_backend_init()
    void llama_backend_free()

    void llama_numa_init(ggml_numa_strategy numa)

    void llama_attach_threadpool(llama_context * ctx, ggml_threadpool_t threadpool, ggml_threadpool_t threadpool_batch)
    void llama_detach_threadpool(llama_context * ctx)

    ctypedef void (*llama_model_set_tensor_data_t)(ggml_tensor * tensor, void * userdata) noexcept

    llama_model * llama_model_init_from_user(
        gguf_context * metadata,
        llama_model_set_tensor_data_t set_tensor_data,
        void * set_tensor_data_ud,
        llama_model_params params)

    # Load a model from a file / FILE pointer / multiple splits
    llama_model * llama_model_load_from_file(const char * path_model, llama_model_params params)
    llama_model * llama_model_load_from_file_ptr(FILE * file, llama_model_params params)
    llama_model * llama_model_load_from_splits(const char ** paths, size_t n_paths, llama_model_params params)

    void llama_model_save_to_file(const llama_model * model, const char * path_model)

    void llama_model_free(llama_model * model)

    llama_context * llama_init_from_model(llama_model * model, llama_context_params params)

    # Frees all allocated memory
    void llama_free(llama_context * ctx)

    int64_t llama_time_us()

    size_t llama_max_devices()
    size_t llama_max_parallel_sequences()
    size_t llama_max_tensor_buft_overrides()

    bint llama_supports_mmap()
    bint llama_supports_mlock()
    bint llama_supports_gpu_offload()
    bint llama_supports_rpc()

    uint32_t llama_n_ctx(const llama_context * ctx)
    uint32_t llama_n_ctx_seq(const llama_context * ctx)
    uint32_t llama_n_batch(const llama_context * ctx)
    uint32_t llama_n_ubatch(const llama_context * ctx)
    uint32_t llama_n_seq_max(const llama_context * ctx)
    uint32_t llama_n_rs_seq(const llama_context * ctx)

    const llama_model * llama_get_model(const llama_context * ctx)
    llama_memory_t      llama_get_memory(const llama_context * ctx)
    # C name is llama_pooling_type (clashes with the enum type name)
    llama_pooling_type  llama_pooling_type_of "llama_pooling_type"(const llama_context * ctx)

    const llama_vocab * llama_model_get_vocab(const llama_model * model)
    llama_rope_type     llama_model_rope_type(const llama_model * model)

    int32_t llama_model_n_ctx_train(const llama_model * model)
    int32_t llama_model_n_embd(const llama_model * model)
    int32_t llama_model_n_embd_inp(const llama_model * model)
    int32_t llama_model_n_embd_out(const llama_model * model)
    int32_t llama_model_n_layer(const llama_model * model)
    int32_t llama_model_n_layer_nextn(const llama_model * model)
    int32_t llama_model_n_head(const llama_model * model)
    int32_t llama_model_n_head_kv(const llama_model * model)
    int32_t llama_model_n_swa(const llama_model * model)

    float llama_model_rope_freq_scale_train(const llama_model * model)

    uint32_t     llama_model_n_cls_out(const llama_model * model)
    const char * llama_model_cls_label(const llama_model * model, uint32_t i)

    # C name is llama_vocab_type (clashes with the enum type name)
    llama_vocab_type llama_vocab_type_of "llama_vocab_type"(const llama_vocab * vocab)

    int32_t llama_vocab_n_tokens(const llama_vocab * vocab)

    # GGUF metadata (return string length, or -1 on failure)
    int32_t      llama_model_meta_val_str(const llama_model * model, const char * key, char * buf, size_t buf_size)
    int32_t      llama_model_meta_count(const llama_model * model)
    const char * llama_model_meta_key_str(llama_model_meta_key key)
    int32_t      llama_model_meta_key_by_index(const llama_model * model, int32_t i, char * buf, size_t buf_size)
    int32_t      llama_model_meta_val_str_by_index(const llama_model * model, int32_t i, char * buf, size_t buf_size)
    int32_t      llama_model_desc(const llama_model * model, char * buf, size_t buf_size)

    llama_ftype  llama_model_ftype(const llama_model * model)
    uint64_t     llama_model_size(const llama_model * model)
    const char * llama_model_chat_template(const llama_model * model, const char * name)
    uint64_t     llama_model_n_params(const llama_model * model)
    bint         llama_model_has_encoder(const llama_model * model)
    bint         llama_model_has_decoder(const llama_model * model)
    llama_token  llama_model_decoder_start_token(const llama_model * model)
    bint         llama_model_is_recurrent(const llama_model * model)
    bint         llama_model_is_hybrid(const llama_model * model)
    bint         llama_model_is_diffusion(const llama_model * model)

    # Returns 0 on success
    uint32_t llama_model_quantize(const char * fname_inp, const char * fname_out, const llama_model_quantize_params * params)

    # -- Adapters -------------------------------------------------------------

    llama_adapter_lora * llama_adapter_lora_init(llama_model * model, const char * path_lora)
    llama_adapter_lora * llama_adapter_lora_init_from_file_ptr(llama_model * model, FILE * file)

    int32_t llama_adapter_meta_val_str(const llama_adapter_lora * adapter, const char * key, char * buf, size_t buf_size)
    int32_t llama_adapter_meta_count(const llama_adapter_lora * adapter)
    int32_t llama_adapter_meta_key_by_index(const llama_adapter_lora * adapter, int32_t i, char * buf, size_t buf_size)
    int32_t llama_adapter_meta_val_str_by_index(const llama_adapter_lora * adapter, int32_t i, char * buf, size_t buf_size)

    void llama_adapter_lora_free(llama_adapter_lora * adapter)

    uint64_t            llama_adapter_get_alora_n_invocation_tokens(const llama_adapter_lora * adapter)
    const llama_token * llama_adapter_get_alora_invocation_tokens(const llama_adapter_lora * adapter)

    int32_t llama_set_adapters_lora(llama_context * ctx, llama_adapter_lora ** adapters, size_t n_adapters, float * scales)

    int32_t llama_set_adapter_cvec(
        llama_context * ctx,
        const float * data,
        size_t len,
        int32_t n_embd,
        int32_t il_start,
        int32_t il_end)

    # -- Memory ---------------------------------------------------------------

    void      llama_memory_clear(llama_memory_t mem, bint data)
    bint      llama_memory_seq_rm(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1)
    void      llama_memory_seq_cp(llama_memory_t mem, llama_seq_id seq_id_src, llama_seq_id seq_id_dst, llama_pos p0, llama_pos p1)
    void      llama_memory_seq_keep(llama_memory_t mem, llama_seq_id seq_id)
    void      llama_memory_seq_add(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1, llama_pos delta)
    void      llama_memory_seq_div(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1, int d)
    llama_pos llama_memory_seq_pos_min(llama_memory_t mem, llama_seq_id seq_id)
    llama_pos llama_memory_seq_pos_max(llama_memory_t mem, llama_seq_id seq_id)
    bint      llama_memory_can_shift(llama_memory_t mem)

    # -- State / sessions -----------------------------------------------------

    size_t llama_state_get_size(llama_context * ctx)
    size_t llama_state_get_data(llama_context * ctx, uint8_t * dst, size_t size)
    size_t llama_state_set_data(llama_context * ctx, const uint8_t * src, size_t size)

    bint llama_state_load_file(
        llama_context * ctx,
        const char * path_session,
        llama_token * tokens_out,
        size_t n_token_capacity,
        size_t * n_token_count_out)

    bint llama_state_save_file(
        llama_context * ctx,
        const char * path_session,
        const llama_token * tokens,
        size_t n_token_count)

    size_t llama_state_seq_get_size(llama_context * ctx, llama_seq_id seq_id)
    size_t llama_state_seq_get_data(llama_context * ctx, uint8_t * dst, size_t size, llama_seq_id seq_id)
    size_t llama_state_seq_set_data(llama_context * ctx, const uint8_t * src, size_t size, llama_seq_id dest_seq_id)

    size_t llama_state_seq_save_file(
        llama_context * ctx,
        const char * filepath,
        llama_seq_id seq_id,
        const llama_token * tokens,
        size_t n_token_count)

    size_t llama_state_seq_load_file(
        llama_context * ctx,
        const char * filepath,
        llama_seq_id dest_seq_id,
        llama_token * tokens_out,
        size_t n_token_capacity,
        size_t * n_token_count_out)

    # (typedef moved above the LLAMA_STATE_SEQ_FLAGS_* macros that use it)
    ctypedef uint32_t llama_state_seq_flags

    const llama_state_seq_flags LLAMA_STATE_SEQ_FLAGS_NONE
    const llama_state_seq_flags LLAMA_STATE_SEQ_FLAGS_SWA_ONLY       # backwards-compat
    const llama_state_seq_flags LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY
    const llama_state_seq_flags LLAMA_STATE_SEQ_FLAGS_ON_DEVICE

    size_t llama_state_seq_get_size_ext(llama_context * ctx, llama_seq_id seq_id, llama_state_seq_flags flags)
    size_t llama_state_seq_get_data_ext(llama_context * ctx, uint8_t * dst, size_t size, llama_seq_id seq_id, llama_state_seq_flags flags)
    size_t llama_state_seq_set_data_ext(llama_context * ctx, const uint8_t * src, size_t size, llama_seq_id dest_seq_id, llama_state_seq_flags flags)

    # -- Decoding -------------------------------------------------------------

    llama_batch llama_batch_get_one(llama_token * tokens, int32_t n_tokens)
    llama_batch llama_batch_init(int32_t n_tokens, int32_t embd, int32_t n_seq_max)
    void        llama_batch_free(llama_batch batch)

    int32_t llama_encode(llama_context * ctx, llama_batch batch)
    int32_t llama_decode(llama_context * ctx, llama_batch batch)

    # -- Extended batch API ---------------------------------------------------

    cdef struct llama_batch_ext

    cdef struct llama_embd:
        const float * data
        size_t n_rows   # number of embedding rows in data
        size_t n_embd   # size of one row

    llama_batch_ext * llama_batch_ext_init(llama_context * ctx)
    void              llama_batch_ext_free(llama_batch_ext * batch)
    void              llama_batch_ext_clear(llama_batch_ext * batch)

    int32_t llama_batch_ext_add(llama_batch_ext * batch, llama_seq_id seq_id)
    int32_t llama_batch_ext_add_token(llama_batch_ext * batch, llama_seq_id seq_id, llama_token id)
    int32_t llama_batch_ext_add_embd(llama_batch_ext * batch, llama_seq_id seq_id, llama_embd embd)

    bint llama_batch_ext_add_seq(llama_batch_ext * batch, int32_t idx, llama_seq_id seq_id)
    bint llama_batch_ext_set_embd_token(llama_batch_ext * batch, int32_t idx, llama_embd embd)
    bint llama_batch_ext_set_embd_state(llama_batch_ext * batch, int32_t idx, llama_embd embd)
    bint llama_batch_ext_set_output_embd(llama_batch_ext * batch, int32_t idx, bint value)
    bint llama_batch_ext_set_output_logits(llama_batch_ext * batch, int32_t idx, bint value)
    bint llama_batch_ext_set_pos(llama_batch_ext * batch, int32_t idx, const llama_pos * pos)

    int32_t llama_process(llama_context * ctx, llama_process_type type, llama_batch_ext * batch)

    void    llama_set_n_threads(llama_context * ctx, int32_t n_threads, int32_t n_threads_batch)
    int32_t llama_n_threads(llama_context * ctx)
    int32_t llama_n_threads_batch(llama_context * ctx)

    void llama_set_embeddings(llama_context * ctx, bint embeddings)
    void llama_set_causal_attn(llama_context * ctx, bint causal_attn)
    bint llama_get_causal_attn(const llama_context * ctx)

    void llama_set_abort_callback(llama_context * ctx, ggml_abort_callback abort_callback, void * abort_callback_data)

    void llama_synchronize(llama_context * ctx)

    float * llama_get_logits(llama_context * ctx)
    float * llama_get_logits_ith(llama_context * ctx, int32_t i)
    float * llama_get_embeddings(llama_context * ctx)
    float * llama_get_embeddings_ith(llama_context * ctx, int32_t i)
    float * llama_get_embeddings_seq(llama_context * ctx, llama_seq_id seq_id)

    # -- backend sampling API [EXPERIMENTAL] ----------------------------------

    llama_token   llama_get_sampled_token_ith(llama_context * ctx, int32_t i)
    float *       llama_get_sampled_probs_ith(llama_context * ctx, int32_t i)
    uint32_t      llama_get_sampled_probs_count_ith(llama_context * ctx, int32_t i)
    float *       llama_get_sampled_logits_ith(llama_context * ctx, int32_t i)
    uint32_t      llama_get_sampled_logits_count_ith(llama_context * ctx, int32_t i)
    llama_token * llama_get_sampled_candidates_ith(llama_context * ctx, int32_t i)
    uint32_t      llama_get_sampled_candidates_count_ith(llama_context * ctx, int32_t i)

    # -- Vocab ----------------------------------------------------------------

    const char *     llama_vocab_get_text(const llama_vocab * vocab, llama_token token)
    float            llama_vocab_get_score(const llama_vocab * vocab, llama_token token)
    llama_token_attr llama_vocab_get_attr(const llama_vocab * vocab, llama_token token)

    bint llama_vocab_is_eog(const llama_vocab * vocab, llama_token token)
    bint llama_vocab_is_control(const llama_vocab * vocab, llama_token token)

    # Special tokens
    llama_token llama_vocab_bos(const llama_vocab * vocab)
    llama_token llama_vocab_eos(const llama_vocab * vocab)
    llama_token llama_vocab_eot(const llama_vocab * vocab)
    llama_token llama_vocab_sep(const llama_vocab * vocab)
    llama_token llama_vocab_nl(const llama_vocab * vocab)
    llama_token llama_vocab_pad(const llama_vocab * vocab)
    llama_token llama_vocab_mask(const llama_vocab * vocab)

    bint llama_vocab_get_add_bos(const llama_vocab * vocab)
    bint llama_vocab_get_add_eos(const llama_vocab * vocab)
    bint llama_vocab_get_add_sep(const llama_vocab * vocab)

    const llama_token * llama_vocab_get_suppress_tokens(const llama_vocab * vocab, int32_t * n_suppress_tokens)

    llama_token llama_vocab_fim_pre(const llama_vocab * vocab)
    llama_token llama_vocab_fim_suf(const llama_vocab * vocab)
    llama_token llama_vocab_fim_mid(const llama_vocab * vocab)
    llama_token llama_vocab_fim_pad(const llama_vocab * vocab)
    llama_token llama_vocab_fim_rep(const llama_vocab * vocab)
    llama_token llama_vocab_fim_sep(const llama_vocab * vocab)

    # -- Tokenization ---------------------------------------------------------

    int32_t llama_tokenize(
        const llama_vocab * vocab,
        const char * text,
        int32_t text_len,
        llama_token * tokens,
        int32_t n_tokens_max,
        bint add_special,
        bint parse_special)

    int32_t llama_token_to_piece(
        const llama_vocab * vocab,
        llama_token token,
        char * buf,
        int32_t length,
        int32_t lstrip,
        bint special)

    int32_t llama_detokenize(
        const llama_vocab * vocab,
        const llama_token * tokens,
        int32_t n_tokens,
        char * text,
        int32_t text_len_max,
        bint remove_special,
        bint unparse_special)

    # -- Chat templates -------------------------------------------------------

    int32_t llama_chat_apply_template(
        const char * tmpl,
        const llama_chat_message * chat,
        size_t n_msg,
        bint add_ass,
        char * buf,
        int32_t length)

    int32_t llama_chat_builtin_templates(const char ** output, size_t len)

    # -- Sampling API ---------------------------------------------------------

    ctypedef void * llama_sampler_context_t

    cdef struct llama_sampler_data:
        ggml_tensor * logits
        ggml_tensor * probs
        ggml_tensor * sampled
        ggml_tensor * candidates

    # user code can implement this interface to create a custom llama_sampler
    cdef struct llama_sampler_i:
        const char *    (*name)  (const llama_sampler * smpl) noexcept                                 # can be NULL
        void            (*accept)(llama_sampler * smpl, llama_token token) noexcept                    # can be NULL
        void            (*apply) (llama_sampler * smpl, llama_token_data_array * cur_p) noexcept       # required
        void            (*reset) (llama_sampler * smpl) noexcept                                       # can be NULL
        llama_sampler * (*clone) (const llama_sampler * smpl) noexcept                                 # can be NULL if ctx is NULL
        void            (*free)  (llama_sampler * smpl) noexcept                                       # can be NULL if ctx is NULL

        # [EXPERIMENTAL] backend sampling interface
        cppbool (*backend_init)(llama_sampler * smpl, ggml_backend_buffer_type_t buft, uint32_t n_outputs_max_per_seq) noexcept
        void (*backend_accept)(llama_sampler * smpl, ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * selected_token) noexcept
        void (*backend_apply)(llama_sampler * smpl, ggml_context * ctx, ggml_cgraph * gf, llama_sampler_data * data) noexcept
        void (*backend_set_input)(llama_sampler * smpl) noexcept
        void (*backend_reset)(llama_sampler * smpl) noexcept
        void (*copy_state)(const llama_sampler * src, llama_sampler * dst) noexcept

    cdef struct llama_sampler:
        llama_sampler_i * iface
        llama_sampler_context_t ctx

    # [EXPERIMENTAL] attach a sampler to the context
    bint llama_set_sampler(llama_context * ctx, llama_seq_id seq_id, llama_sampler * smpl)

    # mirror of llama_sampler_i:
    llama_sampler * llama_sampler_init(llama_sampler_i * iface, llama_sampler_context_t ctx)
    const char *    llama_sampler_name(const llama_sampler * smpl)
    void            llama_sampler_accept(llama_sampler * smpl, llama_token token)
    void            llama_sampler_apply(llama_sampler * smpl, llama_token_data_array * cur_p)
    void            llama_sampler_reset(llama_sampler * smpl)
    llama_sampler * llama_sampler_clone(const llama_sampler * smpl)
    void            llama_sampler_copy(const llama_sampler * src, llama_sampler * dst)
    # important: do not free if the sampler has been added to a chain
    void            llama_sampler_free(llama_sampler * smpl)

    # llama_sampler_chain
    llama_sampler * llama_sampler_chain_init(llama_sampler_chain_params params)
    # takes ownership of smpl
    void            llama_sampler_chain_add(llama_sampler * chain, llama_sampler * smpl)
    llama_sampler * llama_sampler_chain_get(llama_sampler * chain, int32_t i)
    int32_t         llama_sampler_chain_n(const llama_sampler * chain)
    # the chain no longer owns the removed sampler
    llama_sampler * llama_sampler_chain_remove(llama_sampler * chain, int32_t i)

    # available samplers:
    llama_sampler * llama_sampler_init_greedy()
    llama_sampler * llama_sampler_init_dist(uint32_t seed)
    llama_sampler * llama_sampler_init_top_k(int32_t k)
    llama_sampler * llama_sampler_init_top_p(float p, size_t min_keep)
    llama_sampler * llama_sampler_init_min_p(float p, size_t min_keep)
    llama_sampler * llama_sampler_init_typical(float p, size_t min_keep)
    llama_sampler * llama_sampler_init_temp(float t)
    llama_sampler * llama_sampler_init_temp_ext(float t, float delta, float exponent)
    llama_sampler * llama_sampler_init_xtc(float p, float t, size_t min_keep, uint32_t seed)
    llama_sampler * llama_sampler_init_top_n_sigma(float n)

    llama_sampler * llama_sampler_init_mirostat(int32_t n_vocab, uint32_t seed, float tau, float eta, int32_t m)
    llama_sampler * llama_sampler_init_mirostat_v2(uint32_t seed, float tau, float eta)

    llama_sampler * llama_sampler_init_grammar(
        const llama_vocab * vocab,
        const char * grammar_str,
        const char * grammar_root)

    llama_sampler * llama_sampler_init_grammar_lazy_patterns(
        const llama_vocab * vocab,
        const char * grammar_str,
        const char * grammar_root,
        const char ** trigger_patterns,
        size_t num_trigger_patterns,
        const llama_token * trigger_tokens,
        size_t num_trigger_tokens)

    llama_sampler * llama_sampler_init_penalties(
        int32_t n_vocab,
        int32_t penalty_last_n,
        float penalty_repeat,
        float penalty_freq,
        float penalty_present)

    llama_sampler * llama_sampler_init_dry(
        const llama_vocab * vocab,
        float dry_multiplier,
        float dry_base,
        int32_t dry_allowed_length,
        int32_t dry_penalty_last_n,
        const char ** seq_breakers,
        size_t num_breakers)

    llama_sampler * llama_sampler_init_adaptive_p(float target, float decay, uint32_t seed)

    llama_sampler * llama_sampler_init_logit_bias(
        int32_t n_vocab,
        int32_t n_logit_bias,
        const llama_logit_bias * logit_bias)

    llama_sampler * llama_sampler_init_infill(const llama_vocab * vocab)

    # Returns the seed used by the sampler if applicable, LLAMA_DEFAULT_SEED otherwise
    uint32_t llama_sampler_get_seed(const llama_sampler * smpl)

    # Sample and accept a token from the idx-th output of the last evaluation
    llama_token llama_sampler_sample(llama_sampler * smpl, llama_context * ctx, int32_t idx)

    # -- Model split ----------------------------------------------------------

    int32_t llama_split_path(char * split_path, size_t maxlen, const char * path_prefix, int32_t split_no, int32_t split_count)
    int32_t llama_split_prefix(char * split_prefix, size_t maxlen, const char * split_path, int32_t split_no, int32_t split_count)

    # Print system information
    const char * llama_print_system_info()

    # Logging (global, not thread safe)
    void llama_log_get(ggml_log_callback * log_callback, void ** user_data)
    void llama_log_set(ggml_log_callback log_callback, void * user_data)

    # -- Performance utils ----------------------------------------------------

    cdef struct llama_perf_context_data:
        double t_start_ms    # absolute start time
        double t_load_ms     # time needed for loading the model
        double t_p_eval_ms   # time needed for processing the prompt
        double t_eval_ms     # time needed for generating tokens
        int32_t n_p_eval     # number of prompt tokens
        int32_t n_eval       # number of generated tokens
        int32_t n_reused     # number of times a ggml compute graph had been reused

    cdef struct llama_perf_sampler_data:
        double t_sample_ms   # time needed for sampling in ms
        int32_t n_sample     # number of sampled tokens

    llama_perf_context_data llama_perf_context(const llama_context * ctx)
    void                    llama_perf_context_print(const llama_context * ctx)
    void                    llama_perf_context_reset(llama_context * ctx)

    # only for samplers constructed via llama_sampler_chain_init
    llama_perf_sampler_data llama_perf_sampler(const llama_sampler * chain)
    void                    llama_perf_sampler_print(const llama_sampler * chain)
    void                    llama_perf_sampler_reset(llama_sampler * chain)

    # -- training -------------------------------------------------------------

    ctypedef cppbool (*llama_opt_param_filter)(const ggml_tensor * tensor, void * userdata) noexcept

    # always returns true
    bint llama_opt_param_filter_all(const ggml_tensor * tensor, void * userdata)

    cdef struct llama_opt_params:
        uint32_t n_ctx_train
        llama_opt_param_filter param_filter
        void * param_filter_ud
        ggml_opt_get_optimizer_params get_opt_pars
        void * get_opt_pars_ud
        ggml_opt_optimizer_type optimizer_type

    void llama_opt_init(llama_context * lctx, llama_model * model, llama_opt_params lopt_params)

    void llama_opt_epoch(
        llama_context * lctx,
        ggml_opt_dataset_t dataset,
        ggml_opt_result_t result_train,
        ggml_opt_result_t result_eval,
        int64_t idata_split,
        ggml_opt_epoch_callback callback_train,
        ggml_opt_epoch_callback callback_eval)
