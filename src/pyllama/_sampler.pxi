# Sampler: a llama_sampler chain built from SamplingParams, plus an optional grammar.

cdef extern from "llama.h":
    # the grammar sampler may throw (e.g. on a token it cannot accept): let Cython catch it
    void _sampler_accept_cpp "llama_sampler_accept"(llama_sampler * smpl, llama_token token) except + nogil
    void _sampler_apply_cpp "llama_sampler_apply"(llama_sampler * smpl, llama_token_data_array * cur_p) except + nogil

_SAMPLER_ALIASES = {"typical_p": "typ_p"}
# llama_token_data, as numpy reads a candidate array (post_sampling_probs)
_TOKEN_DATA_DTYPE = _np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
assert _TOKEN_DATA_DTYPE.itemsize == sizeof(llama_token_data)

_BUDGET_STATES = {REASONING_BUDGET_IDLE: "idle", REASONING_BUDGET_COUNTING: "counting",
                  REASONING_BUDGET_FORCING: "forcing", REASONING_BUDGET_WAITING_UTF8: "waiting_utf8",
                  REASONING_BUDGET_DONE: "done"}


cdef class Sampler:
    """Samples one token from a context's logits row.

    ``Sampler(model, SamplingParams(...))``. The chain follows llama-server's order
    (logit bias, penalties, dry, top_n_sigma, top_k, typical, top_p, min_p, xtc, temperature,
    then dist(seed)); temperature <= 0 is greedy. A grammar is checked against the chosen token
    first and applied to all candidates only when it rejects it (as llama.cpp's common sampler does).

    A reasoning budget (``reasoning_budget_*`` fields) adds llama.cpp's budget sampler, run before
    everything else as common_sampler runs it: it counts the tokens generated between a start and
    an end sequence and, when the budget is spent, forces the message and the first end sequence.
    It is created when the start and end sequences are known and the budget is limited, reasoning
    control is on, or the grammar is lazy (a lazy grammar is not applied inside the reasoning).
    """
    cdef llama_sampler * chain
    cdef llama_sampler * grmr
    cdef llama_sampler * rbudget
    cdef bint grammar_lazy
    cdef vector[llama_token_data] cur
    cdef llama_token_data_array cur_p
    cdef readonly Model model
    cdef readonly object params
    cdef int32_t n_vocab
    cdef int32_t n_ctx

    def __cinit__(self):
        self.chain = NULL
        self.grmr = NULL
        self.rbudget = NULL

    def __init__(self, Model model not None, params=None, int32_t n_ctx=0):
        """``n_ctx``: the longest sequence the sampler will see (0: the model's training context). The
        penalty and DRY windows (-1: all of it) are cut to it: a longer window sees the same tokens,
        and its buffers would be allocated whole (2**31 tokens asks for 8 GiB per sampler)."""
        model._check()
        if params is None:
            params = SamplingParams()
        elif isinstance(params, dict):
            params = SamplingParams.from_dict(params)
        elif not isinstance(params, SamplingParams):
            raise TypeError("params must be a SamplingParams")
        self.model = model
        self.params = params
        self.n_ctx = n_ctx if n_ctx > 0 else model.n_ctx_train
        self.n_vocab = model.vocab.n_vocab
        self.cur.resize(self.n_vocab)
        self.grammar_lazy = bool(params.grammar) and bool(params.grammar_lazy)
        self._build_grammar(params)
        self._build_budget(params)
        self._build_chain(params)

    cdef _build_grammar(self, p):
        if not p.grammar:
            return
        cdef bytes g = p.grammar.encode()
        cdef vector[string] pats
        cdef vector[const char *] cpats
        cdef vector[llama_token] ttoks
        cdef size_t i
        cdef const llama_vocab * v = self.model.vptr
        cdef const char * cg = g
        cdef llama_sampler * grmr = NULL
        if p.grammar_lazy:
            for s in p.grammar_trigger_patterns:
                pats.push_back(s.encode())
            for i in range(pats.size()):
                cpats.push_back(pats[i].c_str())
            for t in p.grammar_trigger_tokens:
                if t < 0 or t >= self.n_vocab:
                    raise GrammarError(f"grammar trigger token {t} out of range")
                ttoks.push_back(t)
            with nogil:     # parsing a large grammar takes a while: other threads go on
                grmr = llama_sampler_init_grammar_lazy_patterns(v, cg, b"root", cpats.data(), cpats.size(),
                                                                ttoks.data(), ttoks.size())
        else:
            with nogil:
                grmr = llama_sampler_init_grammar(v, cg, b"root")
        self.grmr = grmr
        if self.grmr == NULL:
            raise GrammarError("failed to parse the grammar (see the pyllama.llama_cpp log for where)")
        for t in p.grammar_prefill:
            if t < 0 or t >= self.n_vocab:
                raise GrammarError(f"grammar prefill token {t} out of range")
            try:
                _sampler_accept_cpp(self.grmr, t)
            except Exception as e:
                raise GrammarError(f"the grammar rejects the generation prompt: {e}") from None

    cdef _build_budget(self, p):
        # common_sampler_init: only with both tags, and only when something needs it
        if not p.reasoning_budget_start or not p.reasoning_budget_end:
            return
        if not (self.grammar_lazy or p.reasoning_budget_tokens >= 0 or p.reasoning_control):
            return
        cdef vector[vector[llama_token]] starts
        cdef vector[vector[llama_token]] ends
        cdef vector[llama_token] seq
        cdef vector[llama_token] forced
        for t in p.reasoning_budget_start:
            seq.push_back(self._token(t, "reasoning budget start"))
        starts.push_back(seq)
        for e in p.reasoning_budget_end:
            seq.clear()
            for t in e:
                seq.push_back(self._token(t, "reasoning budget end"))
            ends.push_back(seq)
        # forced on expiry: the message, then the first end tag (llama-server's reasoning_budget_message)
        if p.reasoning_budget_message:
            for t in self.model.vocab.tokenize(p.reasoning_budget_message, add_special=False, parse_special=True):
                forced.push_back(t)
        for t in p.reasoning_budget_end[0]:
            forced.push_back(t)
        cdef int32_t budget = p.reasoning_budget_tokens if p.reasoning_budget_tokens >= 0 else INT32_MAX
        self.rbudget = common_reasoning_budget_init(self.model.vptr, starts, ends, forced, budget,
                                                    REASONING_BUDGET_IDLE)
        if self.rbudget == NULL:
            raise RuntimeError("could not create the reasoning budget sampler")
        # the generation prompt's tokens decide the initial state (e.g. it opens <think>: counting)
        for t in p.reasoning_budget_prefill:
            _sampler_accept_cpp(self.rbudget, self._token(t, "reasoning budget prefill"))

    cdef llama_token _token(self, t, what) except -1:
        if t < 0 or t >= self.n_vocab:
            raise ValueError(f"{what} token {t} out of range [0, {self.n_vocab})")
        return t

    cdef _build_chain(self, p):
        cdef llama_sampler_chain_params cp = llama_sampler_chain_default_params()
        cp.no_perf = True
        self.chain = llama_sampler_chain_init(cp)
        cdef const llama_vocab * v = self.model.vptr
        cdef vector[llama_logit_bias] bias
        cdef llama_logit_bias lb
        cdef int32_t n_sup = 0, i
        cdef const llama_token * sup = llama_vocab_get_suppress_tokens(v, &n_sup)
        cdef vector[string] brk
        cdef vector[const char *] cbrk
        cdef llama_sampler * smpl
        cdef float dry_mult, dry_base
        cdef int32_t dry_len, dry_last
        for tok, val in p.logit_bias:
            if tok < 0 or tok >= self.n_vocab:
                raise ValueError(f"logit_bias token {tok} out of range [0, {self.n_vocab})")
            lb.token = tok
            lb.bias = val
            bias.push_back(lb)
        for i in range(n_sup):
            lb.token = sup[i]
            lb.bias = -INFINITY
            bias.push_back(lb)
        if bias.size():
            self._add(llama_sampler_init_logit_bias(self.n_vocab, <int32_t>bias.size(), bias.data()))

        penalties_on = p.repeat_last_n != 0 and (p.repeat_penalty != 1.0 or p.presence_penalty != 0.0
                                                  or p.frequency_penalty != 0.0)
        last_n = min(p.repeat_last_n, self.n_ctx) if p.repeat_last_n >= 0 else self.n_ctx
        dry_on = p.dry_multiplier > 0.0
        if p.mirostat == 0:
            for name in p.samplers:
                name = _SAMPLER_ALIASES.get(name, name)
                if name == "penalties":
                    if penalties_on:
                        self._add(llama_sampler_init_penalties(self.n_vocab, last_n, p.repeat_penalty,
                                                               p.frequency_penalty, p.presence_penalty))
                elif name == "dry":
                    if dry_on:
                        for s in p.dry_sequence_breakers:
                            brk.push_back(s.encode())
                        for i in range(<int32_t>brk.size()):
                            cbrk.push_back(brk[i].c_str())
                        # the DRY sampler tokenizes every breaker against the whole vocabulary: without the GIL
                        dry_mult, dry_base, dry_len = p.dry_multiplier, p.dry_base, p.dry_allowed_length
                        dry_last = min(p.dry_penalty_last_n, self.n_ctx) if p.dry_penalty_last_n >= 0 else self.n_ctx
                        with nogil:
                            smpl = llama_sampler_init_dry(v, dry_mult, dry_base, dry_len, dry_last,
                                                          cbrk.data(), cbrk.size())
                        self._add(smpl)
                elif p.greedy:
                    continue  # greedy: only the logit-shaping samplers above matter
                elif name == "top_k":
                    if p.top_k > 0:
                        self._add(llama_sampler_init_top_k(p.top_k))
                elif name == "top_p":
                    if p.top_p < 1.0:
                        self._add(llama_sampler_init_top_p(p.top_p, p.min_keep))
                elif name == "min_p":
                    if p.min_p > 0.0:
                        self._add(llama_sampler_init_min_p(p.min_p, p.min_keep))
                elif name == "typ_p":
                    if p.typical_p < 1.0:
                        self._add(llama_sampler_init_typical(p.typical_p, p.min_keep))
                elif name == "top_n_sigma":
                    if p.top_n_sigma > 0.0:
                        self._add(llama_sampler_init_top_n_sigma(p.top_n_sigma))
                elif name == "xtc":
                    if p.xtc_probability > 0.0:
                        self._add(llama_sampler_init_xtc(p.xtc_probability, p.xtc_threshold, p.min_keep, p.seed))
                elif name == "temperature":
                    self._add(llama_sampler_init_temp_ext(p.temperature, p.dynatemp_range, p.dynatemp_exponent))
                elif name == "infill":
                    self._add(llama_sampler_init_infill(v))
            if p.greedy:
                self._add(llama_sampler_init_greedy())
            else:
                self._add(llama_sampler_init_dist(p.seed))
        else:
            if penalties_on:
                self._add(llama_sampler_init_penalties(self.n_vocab, last_n, p.repeat_penalty,
                                                       p.frequency_penalty, p.presence_penalty))
            self._add(llama_sampler_init_temp(p.temperature))
            if p.mirostat == 1:
                self._add(llama_sampler_init_mirostat(self.n_vocab, p.seed, p.mirostat_tau, p.mirostat_eta, 100))
            else:
                self._add(llama_sampler_init_mirostat_v2(p.seed, p.mirostat_tau, p.mirostat_eta))

    cdef inline void _add(self, llama_sampler * s):
        llama_sampler_chain_add(self.chain, s)

    def __dealloc__(self):
        self._free()

    cdef void _free(self) noexcept:
        if self.chain != NULL:
            llama_sampler_free(self.chain)
            self.chain = NULL
        if self.grmr != NULL:
            llama_sampler_free(self.grmr)
            self.grmr = NULL
        if self.rbudget != NULL:
            llama_sampler_free(self.rbudget)
            self.rbudget = NULL

    def close(self):
        self._free()

    @property
    def closed(self):
        return self.chain == NULL

    @property
    def names(self):
        """The names of the samplers in the chain, in order."""
        if self.chain == NULL:
            raise ClosedError("the sampler is closed")
        out = [llama_sampler_name(llama_sampler_chain_get(self.chain, i)).decode()
               for i in range(llama_sampler_chain_n(self.chain))]
        return ((["reasoning-budget"] if self.rbudget != NULL else []) + (["grammar"] if self.grmr != NULL else [])
                + out)

    @property
    def reasoning_budget_state(self):
        """The budget sampler's state: "idle", "counting", "forcing", "waiting_utf8", "done"; None without one."""
        if self.rbudget == NULL:
            return None
        return _BUDGET_STATES.get(common_reasoning_budget_get_state(self.rbudget), "unknown")

    def force_reasoning_end(self):
        """End the reasoning now: force the message and end tag from the next token on (llama-server's
        reasoning control). True if the budget sampler was counting; False otherwise (no budget
        sampler, not inside a reasoning block, or already ending)."""
        if self.chain == NULL:
            raise ClosedError("the sampler is closed")
        if self.rbudget == NULL:
            return False
        return bool(common_reasoning_budget_force(self.rbudget))

    cdef inline bint _grammar_should_apply(self) noexcept:
        # common/sampling.cpp grammar_should_apply: a lazy grammar waits while the budget sampler is
        # inside a reasoning block
        if self.grmr == NULL:
            return False
        if self.rbudget == NULL or not self.grammar_lazy:
            return True
        cdef common_reasoning_budget_state state = common_reasoning_budget_get_state(self.rbudget)
        return state == REASONING_BUDGET_IDLE or state == REASONING_BUDGET_DONE

    cdef inline void _fill(self, const float * logits) noexcept nogil:
        cdef int32_t i
        cdef llama_token_data * d = self.cur.data()
        for i in range(self.n_vocab):
            d[i].id = i
            d[i].logit = logits[i]
            d[i].p = 0.0
        self.cur_p.data = d
        self.cur_p.size = self.n_vocab
        self.cur_p.selected = -1
        self.cur_p.sorted = False

    cpdef llama_token sample(self, Context ctx, int32_t idx=-1) except -1:
        """Sample a token from row ``idx`` of ctx's last batch and accept it."""
        cdef llama_token tok = self.sample_only(ctx, idx)
        self.accept(tok)
        return tok

    cpdef llama_token sample_only(self, Context ctx, int32_t idx=-1) except -1:
        """Sample without accepting (call accept() yourself)."""
        if self.chain == NULL:
            raise ClosedError("the sampler is closed")
        ctx._check()
        if ctx.model is not self.model and ctx.model.ptr != self.model.ptr:
            raise ValueError("the sampler and the context belong to different models")
        cdef const float * logits = llama_get_logits_ith(ctx.ptr, idx)
        if logits == NULL:
            raise IndexError(f"no logits for batch row {idx}")
        cdef llama_token_data single
        cdef llama_token_data_array one
        cdef llama_token tok
        with nogil:
            self._fill(logits)
        if self.rbudget != NULL:    # first, as common_sampler_sample: forcing leaves one token
            _sampler_apply_cpp(self.rbudget, &self.cur_p)
        _sampler_apply_cpp(self.chain, &self.cur_p)
        if self.cur_p.selected < 0 or <size_t>self.cur_p.selected >= self.cur_p.size:
            raise RuntimeError("the sampler chain selected no token")
        tok = self.cur_p.data[self.cur_p.selected].id
        if self._grammar_should_apply():
            single.id = tok
            single.logit = 1.0
            single.p = 0.0
            one.data = &single
            one.size = 1
            one.selected = -1
            one.sorted = False
            _sampler_apply_cpp(self.grmr, &one)
            if single.logit == -INFINITY:
                # rejected: constrain all candidates, then sample again
                with nogil:
                    self._fill(logits)
                if self.rbudget != NULL:
                    _sampler_apply_cpp(self.rbudget, &self.cur_p)
                _sampler_apply_cpp(self.grmr, &self.cur_p)
                _sampler_apply_cpp(self.chain, &self.cur_p)
                if self.cur_p.selected < 0 or self.cur_p.data[self.cur_p.selected].logit == -INFINITY:
                    raise GrammarError("the grammar allows no token here")
                tok = self.cur_p.data[self.cur_p.selected].id
        return tok

    cpdef accept(self, llama_token token):
        """Tell the samplers (penalties, grammar...) that ``token`` was generated."""
        if self.chain == NULL:
            raise ClosedError("the sampler is closed")
        if token < 0 or token >= self.n_vocab:
            raise TokenizeError(f"token id {token} out of range")
        # common_sampler_accept: whether the grammar takes this token is decided before the budget
        # sampler moves on; a lazy grammar that sat out the reasoning is replayed its end sequence
        cdef bint accept_grammar = self._grammar_should_apply()
        cdef const vector[llama_token] * end_seq
        cdef size_t i
        if self.rbudget != NULL:
            _sampler_accept_cpp(self.rbudget, token)
            if (self.grmr != NULL and not accept_grammar
                    and common_reasoning_budget_get_state(self.rbudget) == REASONING_BUDGET_DONE):
                end_seq = common_reasoning_budget_get_end_match(self.rbudget)
                if end_seq != NULL:
                    for i in range(end_seq.size()):
                        self._grammar_accept(end_seq[0][i])
        if accept_grammar:
            self._grammar_accept(token)
        _sampler_accept_cpp(self.chain, token)

    cdef _grammar_accept(self, llama_token token):
        try:
            _sampler_accept_cpp(self.grmr, token)
        except Exception as e:
            raise GrammarError(f"the grammar cannot accept token {token}: {e}") from None

    def reset(self):
        if self.chain == NULL:
            raise ClosedError("the sampler is closed")
        llama_sampler_reset(self.chain)
        if self.grmr != NULL:
            llama_sampler_reset(self.grmr)
        if self.rbudget != NULL:    # back to the state the generation prompt gives
            llama_sampler_reset(self.rbudget)
            for t in self.params.reasoning_budget_prefill:
                _sampler_accept_cpp(self.rbudget, t)

    def candidates(self, int n):
        """After sample(): the ``n`` most probable candidates the chain left, as (token, p)."""
        cdef size_t i
        cdef llama_token_data * d = self.cur_p.data
        if d == NULL or n <= 0:
            return []
        items = [(d[i].id, d[i].p, d[i].logit) for i in range(self.cur_p.size) if d[i].logit != -INFINITY]
        if items and all(x[1] == 0.0 for x in items):
            # the last sampler did not compute probabilities (greedy): softmax of the logits
            m = max(x[2] for x in items)
            z = sum(_np.exp(x[2] - m) for x in items)
            items = [(t, float(_np.exp(l - m) / z), l) for t, _, l in items]
        items.sort(key=lambda x: -x[1])
        return [(t, float(p)) for t, p, _ in items[:n]]

    def post_sampling_probs(self, int n):
        """After sample(): the distribution the sampling chain left for the row it just sampled.

        As llama-server's ``post_sampling_probs``: returns ``(p, top)`` where ``p`` is the sampled
        token's probability among the chain's candidates and ``top`` the (at most ``n``) most probable
        candidates as ``(token, p)``, in decreasing probability, without zero-probability ones.
        A greedy chain (temperature <= 0) leaves one candidate, the sampled token, with p = 1.0
        (what llama.cpp's temperature sampler at 0 followed by dist gives)."""
        cdef llama_token_data * d = self.cur_p.data
        cdef size_t size = self.cur_p.size
        cdef int64_t sel = self.cur_p.selected
        if self.chain == NULL:
            raise ClosedError("the sampler is closed")
        if d == NULL or size == 0 or sel < 0 or <size_t>sel >= size:
            raise RuntimeError("post_sampling_probs() needs a sampled row: call sample() first")
        cdef llama_token tok = d[sel].id
        if self.params.greedy:
            return 1.0, ([(int(tok), 1.0)] if n > 0 else [])
        raw = PyBytes_FromStringAndSize(<char *>d, <Py_ssize_t>(size * sizeof(llama_token_data)))
        a = _np.frombuffer(raw, dtype=_TOKEN_DATA_DTYPE)
        p = a["p"]
        p_sel = float(p[sel])
        if float(p.sum()) <= 0.0:   # the last sampler computed no probabilities: it picked one token
            return 1.0, ([(int(tok), 1.0)] if n > 0 else [])
        keep = _np.flatnonzero(p > 0.0)
        n = min(n, keep.size)
        if n <= 0:
            return p_sel, []
        if n < keep.size:
            keep = keep[_np.argpartition(-p[keep], n - 1)[:n]]
        keep = keep[_np.argsort(-p[keep], kind="stable")]
        ids = a["id"]
        return p_sel, [(int(ids[i]), float(p[i])) for i in keep]
