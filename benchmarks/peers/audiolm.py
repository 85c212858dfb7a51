"""The peer users would otherwise pick, audiolm-pytorch 2.4.0, built offline for side-by-side rows.

It is not a dependency of this project: ``benchmarks/train.py --peer DIR`` and
``benchmarks/sample.py --peer DIR`` time it only when given a directory that holds it.
Install it there once (the pip registry is all it needs; ``--no-deps`` keeps this
project's torch):

    pip install --no-deps --target DIR audiolm-pytorch==2.4.0 accelerate einops einx \\
        ema-pytorch encodec frozendict gateloop-transformer hyper-connections \\
        local-attention loguru platformdirs pytorch-warmup rotary-embedding-torch \\
        sentencepiece torch-einops-utils vector-quantize-pytorch

Three things keep it from constructing offline, and :func:`import_peer` works around them:
it imports ``fairseq`` unconditionally (which does not install on Python 3.11) and its
trainer imports ``wandb``: both get empty stand-in packages, since neither is used by the
transformers; and every stage calls ``get_encoded_dim(t5_name)``, which downloads the T5
config from the model hub, even without text conditioning: it is patched to T5-base's 768.

The model timed is its ``CoarseTransformer`` (relative position bias, its default) at our
peer size, d=512, 6 layers, 8 heads (its feed-forward is 4 x d, i.e. 2048, like ours),
trained through ``CoarseTransformerWrapper`` on 250 semantic and 500 x 4 coarse tokens
(10 s), and sampled with its ``generate`` and KV cache.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

# The size of the comparison: its CoarseTransformer and our stage at d=512, 6 layers, 8 heads.
WIDTH = {"dim": 512, "depth": 6, "heads": 8, "ff_dim": 2048}


def import_peer(path: str) -> Any:
    """Import ``audiolm_pytorch`` from ``path`` with the stand-ins above; return the package."""
    stubs = Path(tempfile.mkdtemp(prefix="peer-stubs-"))
    for name in ("fairseq", "wandb"):
        (stubs / name).mkdir()
        (stubs / name / "__init__.py").write_text(
            '"""Empty stand-in (see benchmarks/peers/audiolm.py)."""\n'
        )
    sys.path[:0] = [str(stubs), path]
    try:
        import audiolm_pytorch
        import audiolm_pytorch.audiolm_pytorch as core
    except ImportError as error:
        raise SystemExit(
            f"cannot import audiolm-pytorch from {path} ({error}); install it there as the "
            "docstring of benchmarks/peers/audiolm.py says"
        ) from error
    core.get_encoded_dim = lambda name: 768  # T5-base, instead of a model hub download
    return audiolm_pytorch


def coarse_wrapper(path: str, dim: int, depth: int, heads: int) -> Any:
    """The peer's coarse stage: ``CoarseTransformerWrapper`` around a ``CoarseTransformer``."""
    peer = import_peer(path)
    model = peer.CoarseTransformer(
        num_semantic_tokens=1024,
        codebook_size=1024,
        num_coarse_quantizers=4,
        dim=dim,
        depth=depth,
        heads=heads,
    )
    # The wrapper reads only the codec's rq_groups; the smallest SoundStream provides it.
    codec = peer.SoundStream(codebook_size=1024, rq_num_quantizers=12, channels=8)
    return peer.CoarseTransformerWrapper(transformer=model, codec=codec, unique_consecutive=False)


def time_training(path: str, width: dict, batch: int, frames: int, steps: int) -> dict:
    """s/step and tokens/s of the peer's coarse stage on ``frames`` semantic frames per row."""
    wrapper = coarse_wrapper(path, width["dim"], width["depth"], width["heads"])
    semantic = torch.randint(0, 1024, (batch, frames))
    coarse = torch.randint(0, 1024, (batch, 2 * frames, 4))
    optimizer = torch.optim.AdamW(wrapper.transformer.parameters(), lr=1e-4)

    def step() -> None:
        loss = wrapper(semantic_token_ids=semantic, coarse_token_ids=coarse, return_loss=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    cpu_seconds = (time.process_time() - cpu_start) / steps
    sequence = frames + 1 + 2 * frames * 4 + 1 + 2  # tokens, two eos, two start tokens
    return {
        "model": "audiolm-pytorch 2.4.0 CoarseTransformer (rel_pos_bias)",
        "params_million": round(sum(p.numel() for p in wrapper.transformer.parameters()) / 1e6, 2),
        "batch_size": batch,
        "sequence_tokens": sequence,
        "step_seconds": round(seconds, 3),
        "cpu_seconds_per_step": round(cpu_seconds, 3),
        "tokens_per_s": round(batch * sequence / seconds, 1),
    }


@torch.inference_mode()
def time_generation(path: str, width: dict, frames: int, time_steps: int) -> dict:
    """Cached ``generate`` of the peer's coarse stage: ``time_steps`` x 4 tokens, batch 1."""
    wrapper = coarse_wrapper(path, width["dim"], width["depth"], width["heads"]).eval()
    semantic = torch.randint(0, 1024, (1, frames))
    start, cpu_start = time.perf_counter(), time.process_time()
    wrapper.generate(semantic_token_ids=semantic, max_time_steps=time_steps, use_kv_cache=True)
    seconds = time.perf_counter() - start
    return {
        "model": "audiolm-pytorch 2.4.0 CoarseTransformerWrapper.generate (use_kv_cache)",
        "prompt_semantic_frames": frames,
        "generated_tokens": 4 * time_steps,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(time.process_time() - cpu_start, 2),
        "tokens_per_s": round(4 * time_steps / seconds, 1),
    }
