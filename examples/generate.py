"""Generate text from a small model that this script makes itself (random weights, real vocab).

    python examples/generate.py                  # makes /tmp/pyllama-example.gguf, then generates
    python examples/generate.py path/to/model.gguf
"""
import sys
from pathlib import Path

import pyllama

if len(sys.argv) > 1:
    path = Path(sys.argv[1])
else:
    from pyllama.testing import write_random_model  # needs the `gguf` package
    path = write_random_model("/tmp/pyllama-example.gguf", vocab="llama-spm", n_embd=128, n_layer=2,
                              n_head=4, seed=0)

with pyllama.Llama(path, n_ctx=512) as llm:
    print(f"model: {llm.model.description}, {llm.model.n_params:,} parameters")
    for chunk in llm("Once upon a time", max_tokens=32, temperature=0.8, seed=1, stream=True):
        print(chunk["choices"][0]["text"], end="", flush=True)
    print()
