"""The sampler on the side-by-side model, for whichever align is first on the path: compares
two revisions in one run on one machine.

    git worktree add /tmp/before <revision>
    for tree in /tmp/before .; do
      PYTHONPATH=$tree python experiments/throughput/sampler_ab.py unrolled
    done
    ... sampler_ab.py unrolled 0.5    # the beta = 0.5 policy-reference mixture
    ... sampler_ab.py scan            # layers under a scan (model.scan_layers=True)

16 prompts x (64 + 128 new tokens), float32, LLaMA-style d_model 512, 8 layers, 8 heads, d_ff
1344, vocab 8000 (29M parameters); prints new tokens/s (the best of two timed calls).
"""
import sys, time, json
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
import align
from align import sampling
from align.models import transformer
scan = sys.argv[1] == "scan"; beta = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
cfg = transformer.TransformerConfig(vocab_size=8000, d_model=512, n_layers=8, n_heads=8, n_kv_heads=8, d_ff=1344, max_len=192, scan_layers=scan)
model = transformer.Transformer(cfg, rngs=nnx.Rngs(0))
ref = transformer.Transformer(cfg, rngs=nnx.Rngs(1)) if beta else None
B,P,N=16,64,128
prompts = jnp.asarray(np.random.default_rng(0).integers(3, 8000, (B,P)), jnp.int32); mask = jnp.ones((B,P), jnp.int32)
def call():
    return sampling.generate(model, prompts, mask, example_ids_B=jnp.arange(B), rng=jax.random.key(0), max_new_tokens=N, eos_id=-1, reference_model=ref, beta=beta)["tokens_BxN"]
jax.block_until_ready(call())
ts=[]
for _ in range(2):
    t=time.perf_counter(); jax.block_until_ready(call()); ts.append(time.perf_counter()-t)
print(json.dumps({"tree": align.__file__, "scan": scan, "beta": beta, "new_tokens_per_s": B*N/min(ts)}))
