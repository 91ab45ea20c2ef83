# cython: language_level=3
#
# Cython declarations for llama.cpp's common/reasoning-budget.h: the sampler that limits the
# tokens generated inside a reasoning block (<think> ... </think>) and then forces the end tag.
# It is a plain llama_sampler; pyllama's Sampler (_sampler.pxi) drives it the way common_sampler
# (common/sampling.cpp) does: applied before the chain, fed generated tokens only, prefilled with
# the generation prompt's tokens.

from libc.stdint cimport int32_t
from libcpp.vector cimport vector

from pyllama._llama cimport llama_sampler, llama_token, llama_vocab


cdef extern from "reasoning-budget.h" nogil:

    cdef enum common_reasoning_budget_state:
        REASONING_BUDGET_IDLE          # waiting for a start sequence
        REASONING_BUDGET_COUNTING      # counting down the budget, watching for an end sequence
        REASONING_BUDGET_FORCING       # forcing the message + end sequence, token by token
        REASONING_BUDGET_WAITING_UTF8  # budget spent, letting a UTF-8 sequence complete
        REASONING_BUDGET_DONE          # passthrough (re-armed by a new start sequence)

    # start_seqs / end_seqs: token sequences (any of them starts / ends the block);
    # forced_tokens: what is forced when the budget runs out (message + first end sequence)
    llama_sampler * common_reasoning_budget_init(
        const llama_vocab * vocab,
        const vector[vector[llama_token]] & start_seqs,
        const vector[vector[llama_token]] & end_seqs,
        const vector[llama_token] & forced_tokens,
        int32_t budget,
        common_reasoning_budget_state initial_state) except +

    common_reasoning_budget_state common_reasoning_budget_get_state(const llama_sampler * smpl)
    # the end sequence that moved the sampler to DONE, or NULL
    const vector[llama_token] * common_reasoning_budget_get_end_match(const llama_sampler * smpl)
    # COUNTING -> FORCING now (llama-server's reasoning control); False in any other state
    bint common_reasoning_budget_force(llama_sampler * smpl)
