"""The token contract: rates, levels, vocabularies, dtypes, shapes and the bundle fingerprint.

Every module that makes, stores, reads or consumes tokens takes these values from here
(through a :class:`TokenSpec`), never from its own constants. A tokenizer bundle records
its spec in ``bundle.json``; shards record the bundle fingerprint; trainers and the
sampler refuse data or checkpoints whose fingerprint differs.

Shapes of one clip of ``seconds`` seconds (see ``../shared/DESIGN.md``)::

    semantic  int16 [T_s]          T_s = seconds * semantic_rate      (25 Hz)
    acoustic  int16 [Q, T_a]       T_a = 2 * T_s                      (50 Hz, Q = 12)
    mulan     int16 [L]            L = mulan_levels                   (12)
    mulan_emb float16 [D]          D = mulan_dim                      (128)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from musiclm.tokenizers.codec import Codec

TOKEN_DTYPE = np.int16
EMBEDDING_DTYPE = np.float16

# Names of the members of one webdataset sample (key = the part before the first dot).
SAMPLE_FIELDS = ("semantic.npy", "acoustic.npy", "mulan.npy", "mulan_emb.npy", "txt", "json")
BUNDLE_FILE = "bundle.json"
DATASET_FILE = "dataset.json"
MANIFEST_FILE = "manifest.parquet"
FAILURES_FILE = "failures.parquet"
SHARD_DIR = "shards"
SHARD_PATTERN = "shard-{index:06d}.tar"


@dataclasses.dataclass(frozen=True)
class TokenSpec:
    """Rates and sizes of the three token streams. Defaults are the paper's numbers."""

    sample_rate: int = 24_000
    acoustic_hop: int = 480
    acoustic_levels: int = 12
    acoustic_codebook_size: int = 1024
    coarse_levels: int = 4
    semantic_rate: int = 25
    semantic_vocab: int = 1024
    mulan_levels: int = 12
    mulan_codebook_size: int = 1024
    mulan_dim: int = 128
    mulan_window_seconds: float = 10.0
    mulan_stride_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.sample_rate % self.acoustic_hop:
            raise ValueError(
                f"acoustic_hop {self.acoustic_hop} must divide sample_rate {self.sample_rate}"
            )
        if self.acoustic_rate % self.semantic_rate:
            raise ValueError(
                f"semantic_rate {self.semantic_rate} must divide the acoustic rate "
                f"{self.acoustic_rate}"
            )
        if not 0 < self.coarse_levels < self.acoustic_levels:
            raise ValueError(
                f"coarse_levels must be in 1..{self.acoustic_levels - 1}, got {self.coarse_levels}"
            )
        for name in ("acoustic_codebook_size", "semantic_vocab", "mulan_codebook_size"):
            if not 1 < getattr(self, name) <= np.iinfo(TOKEN_DTYPE).max + 1:
                raise ValueError(f"{name} must fit in {TOKEN_DTYPE.__name__}")

    # ----- derived rates -----------------------------------------------------------------
    @property
    def acoustic_rate(self) -> int:
        """Acoustic frames per second (50 for the paper)."""
        return self.sample_rate // self.acoustic_hop

    @property
    def acoustic_per_semantic(self) -> int:
        """Acoustic frames per semantic frame (2 for the paper)."""
        return self.acoustic_rate // self.semantic_rate

    @property
    def samples_per_semantic(self) -> int:
        """Audio samples per semantic frame (960 at 24 kHz / 25 Hz)."""
        return self.sample_rate // self.semantic_rate

    @property
    def fine_levels(self) -> int:
        """RVQ levels modelled by the fine stage (levels 5-12 for the paper: 8)."""
        return self.acoustic_levels - self.coarse_levels

    # ----- shapes ------------------------------------------------------------------------
    def semantic_frames(self, num_samples: int) -> int:
        """Semantic frames for a clip of ``num_samples`` audio samples (partial frames dropped)."""
        return num_samples // self.samples_per_semantic

    def acoustic_frames(self, num_samples: int) -> int:
        """Acoustic frames for a clip of ``num_samples`` samples: always 2x the semantic frames."""
        return self.semantic_frames(num_samples) * self.acoustic_per_semantic

    def clip_samples(self, seconds: float) -> int:
        """Samples of a clip cut to a whole number of semantic frames."""
        return round(seconds * self.semantic_rate) * self.samples_per_semantic

    def check_sample(self, sample: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming the field if a decoded sample breaks the contract.

        ``sample`` maps ``semantic``/``acoustic``/``mulan``/``mulan_emb`` to arrays.
        """
        sem, ac = np.asarray(sample["semantic"]), np.asarray(sample["acoustic"])
        mulan, emb = np.asarray(sample["mulan"]), np.asarray(sample["mulan_emb"])
        problems = []
        for name, arr, dtype in (
            ("semantic", sem, TOKEN_DTYPE),
            ("acoustic", ac, TOKEN_DTYPE),
            ("mulan", mulan, TOKEN_DTYPE),
            ("mulan_emb", emb, EMBEDDING_DTYPE),
        ):
            if arr.dtype != dtype:
                problems.append(f"{name} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
        if sem.ndim != 1:
            problems.append(f"semantic must be [T_s], got shape {sem.shape}")
        if ac.ndim != 2 or ac.shape[0] != self.acoustic_levels:
            problems.append(f"acoustic must be [{self.acoustic_levels}, T_a], got {ac.shape}")
        elif sem.ndim == 1 and ac.shape[1] != self.acoustic_per_semantic * sem.shape[0]:
            problems.append(
                f"acoustic frames {ac.shape[1]} != {self.acoustic_per_semantic} x semantic "
                f"frames {sem.shape[0]}"
            )
        if mulan.shape != (self.mulan_levels,):
            problems.append(f"mulan must be [{self.mulan_levels}], got {mulan.shape}")
        if emb.shape != (self.mulan_dim,):
            problems.append(f"mulan_emb must be [{self.mulan_dim}], got {emb.shape}")
        for name, arr, size in (
            ("semantic", sem, self.semantic_vocab),
            ("acoustic", ac, self.acoustic_codebook_size),
            ("mulan", mulan, self.mulan_codebook_size),
        ):
            if arr.size and (arr.min() < 0 or arr.max() >= size):
                problems.append(f"{name} ids must be in [0, {size})")
        if problems:
            raise ValueError("sample breaks the token contract: " + "; ".join(problems))

    def codec_mismatches(self, codec: Codec) -> list[str]:
        """Each way an acoustic codec's ``sample_rate``, ``hop``, ``num_levels`` and
        ``codebook_size`` disagree with this spec."""
        pairs = (
            ("sample_rate", "sample_rate"),
            ("hop", "acoustic_hop"),
            ("num_levels", "acoustic_levels"),
            ("codebook_size", "acoustic_codebook_size"),
        )
        return [
            f"codec {mine}={getattr(codec, mine)} but spec {theirs}={getattr(self, theirs)}"
            for mine, theirs in pairs
            if getattr(codec, mine) != getattr(self, theirs)
        ]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TokenSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown token spec fields: {sorted(unknown)}")
        return cls(**values)


def fingerprint_files(
    root: str | Path,
    extra: Mapping[str, Any] | None = None,
    exclude: Iterable[str] = (BUNDLE_FILE,),
) -> str:
    """Content hash of every file under ``root`` (relative paths and bytes) plus ``extra``.

    Used for tokenizer bundles: two bundles share a fingerprint exactly when their files
    and configs are identical. Returns 16 hex digits.
    """
    root = Path(root)
    skip = set(exclude)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in skip:
            continue
        digest.update(rel.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    if extra:
        digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def shard_index(source_key: str, num_shards: int) -> int:
    """Shard a source belongs to: a stable hash of its key, the same on every machine and run."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    digest = hashlib.blake2b(source_key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


def shard_name(index: int) -> str:
    """File name of shard ``index`` inside ``OUT/shards``."""
    return SHARD_PATTERN.format(index=index)


def encode_sample(
    key: str,
    semantic: np.ndarray,
    acoustic: np.ndarray,
    mulan: np.ndarray,
    mulan_emb: np.ndarray,
    caption: str,
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """One webdataset sample in the shard format: ``{"__key__": key, "semantic.npy": bytes, ...}``.

    Arrays are cast to the contract's dtypes (int16 tokens, float16 embedding) and
    serialized with ``np.save``; ``meta`` becomes the ``json`` member.
    """
    if "." in key:
        raise ValueError(f"sample key {key!r} must not contain '.' (webdataset splits on it)")
    sample: dict[str, Any] = {"__key__": key}
    for name, arr, dtype in (
        ("semantic.npy", semantic, TOKEN_DTYPE),
        ("acoustic.npy", acoustic, TOKEN_DTYPE),
        ("mulan.npy", mulan, TOKEN_DTYPE),
        ("mulan_emb.npy", mulan_emb, EMBEDDING_DTYPE),
    ):
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(arr, dtype=dtype), allow_pickle=False)
        sample[name] = buffer.getvalue()
    sample["txt"] = caption.encode()
    sample["json"] = json.dumps(dict(meta), sort_keys=True).encode()
    return sample


def decode_sample(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`encode_sample` on the raw bytes webdataset yields.

    Returns ``{"key", "semantic" [T_s], "acoustic" [Q, T_a], "mulan" [L], "mulan_emb" [D],
    "caption", "meta"}``.
    """
    out: dict[str, Any] = {"key": raw["__key__"]}
    for name in ("semantic", "acoustic", "mulan", "mulan_emb"):
        out[name] = np.load(io.BytesIO(raw[f"{name}.npy"]), allow_pickle=False)
    out["caption"] = raw.get("txt", b"").decode()
    out["meta"] = json.loads(raw.get("json", b"{}").decode() or "{}")
    return out
