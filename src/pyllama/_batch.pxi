# Batch: a llama_batch of fixed capacity.

cdef class Batch:
    """Tokens to decode: ``Batch(capacity, n_seq_max=1)``; add(token, pos, seq_ids, logits)."""
    cdef llama_batch b
    cdef readonly int32_t capacity
    cdef readonly int32_t n_seq_max

    def __cinit__(self, int32_t capacity, int32_t n_seq_max=1):
        self.b.token = NULL
        if capacity < 1:
            raise BatchError(f"batch capacity must be >= 1, got {capacity}")
        if n_seq_max < 1:
            raise BatchError(f"n_seq_max must be >= 1, got {n_seq_max}")
        self.b = llama_batch_init(capacity, 0, n_seq_max)
        self.b.n_tokens = 0
        self.capacity = capacity
        self.n_seq_max = n_seq_max

    def __dealloc__(self):
        if self.b.token != NULL:
            llama_batch_free(self.b)
            self.b.token = NULL

    @property
    def n_tokens(self):
        return self.b.n_tokens

    def __len__(self):
        return self.b.n_tokens

    cpdef clear(self):
        self.b.n_tokens = 0

    cpdef int32_t add(self, llama_token token, llama_pos pos, seq_ids, bint logits=False) except -1:
        """Append one token; ``seq_ids`` is an int or a sequence of ints. Returns its row index."""
        cdef int32_t i = self.b.n_tokens
        if i >= self.capacity:
            raise BatchError(f"batch is full ({self.capacity} tokens)")
        if token < 0:
            raise BatchError(f"invalid token id {token}")
        if pos < 0:
            raise BatchError(f"invalid position {pos}")
        cdef int32_t k = 0
        if isinstance(seq_ids, int):
            if seq_ids < 0:
                raise BatchError(f"invalid seq_id {seq_ids}")
            self.b.seq_id[i][0] = seq_ids
            k = 1
        else:
            for s in seq_ids:
                if k >= self.n_seq_max:
                    raise BatchError(f"a token can belong to at most {self.n_seq_max} sequences")
                if s < 0:
                    raise BatchError(f"invalid seq_id {s}")
                self.b.seq_id[i][k] = s
                k += 1
            if k == 0:
                raise BatchError("a token needs at least one seq_id")
        self.b.token[i] = token
        self.b.pos[i] = pos
        self.b.n_seq_id[i] = k
        self.b.logits[i] = logits
        self.b.n_tokens = i + 1
        return i

    cpdef int32_t add_sequence(self, tokens, llama_pos pos0, llama_seq_id seq_id,
                               bint logits_last=True) except? -1:
        """Append a run of tokens of one sequence at positions pos0, pos0+1, ...

        Only the last gets logits when ``logits_last``. Returns the last row index (-1 if empty).
        """
        cdef Py_ssize_t n = len(tokens)
        cdef int32_t i = self.b.n_tokens
        cdef Py_ssize_t j
        if n == 0:
            return -1
        if i + n > self.capacity:
            raise BatchError(f"{n} tokens do not fit: {self.capacity - i} of {self.capacity} free")
        if pos0 < 0 or seq_id < 0:
            raise BatchError("positions and seq_ids must be >= 0")
        for j in range(n):
            t = tokens[j]
            if t < 0:
                raise BatchError(f"invalid token id {t}")
            self.b.token[i + j] = t
            self.b.pos[i + j] = pos0 + j
            self.b.n_seq_id[i + j] = 1
            self.b.seq_id[i + j][0] = seq_id
            self.b.logits[i + j] = 0
        if logits_last:
            self.b.logits[i + n - 1] = 1
        self.b.n_tokens = <int32_t>(i + n)
        return <int32_t>(i + n - 1)

    def set_logits(self, int32_t i, bint on=True):
        if i < 0 or i >= self.b.n_tokens:
            raise IndexError(f"row {i} out of range")
        self.b.logits[i] = on

    def token_at(self, int32_t i):
        if i < 0 or i >= self.b.n_tokens:
            raise IndexError(f"row {i} out of range")
        return self.b.token[i], self.b.pos[i], [self.b.seq_id[i][k] for k in range(self.b.n_seq_id[i])], bool(self.b.logits[i])
