"""The CUDA cases, run by scripts/gpu_check.py on a machine with a GPU (skipped elsewhere): decoding
from the cache equals recomputation on the GPU in both forms, and CUDA-graph decoding equals eager
decoding token for token without recompiling."""
import pytest
import torch

from engine import KVCache, cache_forms
from test_model import CONFIGS, tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("name", ["baseline", "full", "gqa", "cla_lens", "attn_layer_1_full_mqa"])
def test_cuda_cached_decoding_equals_recomputation(name):
    model = tiny(**CONFIGS[name]).cuda().eval()
    idx = torch.randint(0, 61, (2, 32), device="cuda")
    with torch.no_grad():
        full, _ = model(idx, targets=idx)
        for form in cache_forms(model.config):
            cache = KVCache(model, 2, form=form)
            model(idx[:, :9], cache=cache)
            steps = [model(idx[:, t:t + 1], cache=cache)[0][:, -1] for t in range(9, 32)]
            assert torch.allclose(torch.stack(steps, 1), full[:, 9:], atol=1e-4, rtol=0), form


@pytest.mark.parametrize("name", ["baseline", "full"])
def test_cuda_graph_decoding_equals_eager(name):
    torch._dynamo.reset()
    model = tiny(**CONFIGS[name]).cuda().eval()
    prompt = torch.randint(0, 61, (2, 5), device="cuda")
    for form in cache_forms(model.config):
        eager = model.generate(prompt, 20, temperature=0, kv_cache=form)
        with torch._dynamo.config.patch(error_on_recompile=True):
            compiled = model.generate(prompt, 20, temperature=0, kv_cache=form, compile=True)
        assert torch.equal(compiled, eager), form
        torch._dynamo.reset()
