"""Tokenizer bundle: the codec, the semantic tokenizer and MuLan, saved together with a fingerprint.

Layout of a bundle directory::

    BUNDLE/
      bundle.json     {"fingerprint": ..., "spec": TokenSpec fields, "components": {...}}
      codec/          the acoustic codec's own ``save()`` output (config.json + weights)
      semantic/       the semantic feature model + k-means centroids
      mulan/          the MuLan towers + RVQ codebooks

Each component directory holds a ``config.json`` whose ``"kind"`` names the class that
loads it (see :data:`COMPONENT_KINDS`). The fingerprint is a content hash of every file
and of the spec (:func:`musiclm.tokenizers.contract.fingerprint_files`): shards and stage
checkpoints record it, and trainers and the sampler refuse a mismatch.

:func:`load_codec` opens an acoustic codec (:class:`~musiclm.tokenizers.codec.Codec`) from a
saved codec directory or from a bundle root (its ``codec/``), and refuses any other kind.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from musiclm.tokenizers.codec import Codec
from musiclm.tokenizers.contract import BUNDLE_FILE, TokenSpec, fingerprint_files
from musiclm.tokenizers.saved_config import CONFIG_FILE

COMPONENTS = ("codec", "semantic", "mulan")
# component -> the interface its class must implement (load_component's ``base``)
COMPONENT_BASES: dict[str, type] = {"codec": Codec}

# kind (config.json "kind") -> "module:Class" with a ``load(directory, device)`` classmethod.
COMPONENT_KINDS = {
    "soundstream": "musiclm.tokenizers.soundstream:SoundStream",
    "encodec": "musiclm.tokenizers.encodec_backend:EncodecCodec",
    "semantic": "musiclm.tokenizers.semantic:SemanticTokenizer",
    "mulan": "musiclm.tokenizers.mulan:MuLanTokenizer",
    "clap": "musiclm.tokenizers.clap_backend:ClapMuLan",
}


class BundleError(ValueError):
    """A bundle directory that is missing, incomplete or of another fingerprint."""


@dataclass
class TokenizerBundle:
    """The three loaded tokenizers, in eval mode, with the spec and fingerprint they share."""

    root: Path
    spec: TokenSpec
    fingerprint: str
    codec: Codec
    semantic: Any
    mulan: Any

    def check_fingerprint(self, other: str, what: str) -> None:
        """Raise :class:`BundleError` if ``other`` (the fingerprint of ``what``) differs."""
        if other != self.fingerprint:
            raise BundleError(
                f"{what} was made with tokenizer bundle {other}, but {self.root} is bundle "
                f"{self.fingerprint}. Use the bundle it was made with, or re-make it with this one."
            )


def component_class(kind: str) -> type:
    """The class registered for ``kind`` in :data:`COMPONENT_KINDS`."""
    if kind not in COMPONENT_KINDS:
        raise BundleError(f"unknown tokenizer kind {kind!r}; known: {sorted(COMPONENT_KINDS)}")
    module, name = COMPONENT_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def load_component(directory: str | Path, device: str = "cpu", base: type | None = None) -> Any:
    """Load one saved tokenizer component (its ``config.json`` names its kind).

    With ``base``, a component whose class is not a subclass of it is refused before loading.
    """
    directory = Path(directory)
    config = directory / CONFIG_FILE
    if not config.is_file():
        raise BundleError(f"{directory} has no config.json: it is not a saved tokenizer")
    kind = json.loads(config.read_text()).get("kind", "")
    cls = component_class(kind)
    if base is not None and not issubclass(cls, base):
        fits = sorted(k for k in COMPONENT_KINDS if issubclass(component_class(k), base))
        raise BundleError(
            f"{directory} holds a saved {kind!r} tokenizer, not a {base.__name__} "
            f"(kinds {fits}); point at the codec directory or a bundle root"
        )
    model = cls.load(directory, device=device)
    return model.eval() if hasattr(model, "eval") else model


def load_codec(path: str | Path, device: str = "cpu") -> Codec:
    """The acoustic codec saved at ``path``: a codec directory or a bundle root with ``codec/``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"codec directory {path} does not exist")
    if not (path / CONFIG_FILE).is_file() and (path / "codec" / CONFIG_FILE).is_file():
        path = path / "codec"
    return load_component(path, device=device, base=Codec)


def write_bundle_manifest(root: str | Path, spec: TokenSpec, configs: dict[str, Any]) -> str:
    """Write ``bundle.json`` for the components already saved under ``root``; return the fingerprint.

    ``configs`` (the configs the components were trained and fitted with) are stored and
    hashed into the fingerprint with the files.
    """
    root = Path(root)
    missing = [c for c in COMPONENTS if not (root / c / CONFIG_FILE).is_file()]
    if missing:
        raise BundleError(f"{root} lacks the saved components {missing}")
    extra = {"spec": spec.to_dict(), "configs": configs}
    fingerprint = fingerprint_files(root, extra=extra)
    kinds = {c: json.loads((root / c / CONFIG_FILE).read_text())["kind"] for c in COMPONENTS}
    manifest = {"fingerprint": fingerprint, "components": kinds, **extra}
    (root / BUNDLE_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return fingerprint


def read_bundle_manifest(root: str | Path) -> dict[str, Any]:
    """The parsed ``bundle.json`` of ``root``, with a plain error when there is none."""
    path = Path(root) / BUNDLE_FILE
    if not path.is_file():
        raise BundleError(
            f"{root} is not a tokenizer bundle (no {BUNDLE_FILE}); build one with `make tokenizers`"
        )
    return json.loads(path.read_text())


def verified_manifest(root: str | Path, name: str | None = None) -> dict[str, Any]:
    """``bundle.json`` of ``root`` after re-hashing its files against its fingerprint.

    ``name`` is how the error names the bundle (e.g. the ``gs://`` path ``root`` was
    copied from); default ``root``.
    """
    manifest = read_bundle_manifest(root)
    actual = fingerprint_files(
        root, extra={"spec": manifest["spec"], "configs": manifest["configs"]}
    )
    if actual != manifest["fingerprint"]:
        raise BundleError(
            f"the files of bundle {name or root} changed since it was written (fingerprint "
            f"{actual}, bundle.json says {manifest['fingerprint']}); rebuild it with "
            "`make tokenizers`"
        )
    return manifest


def load_bundle(root: str | Path, device: str = "cpu", verify: bool = True) -> TokenizerBundle:
    """Load the bundle at ``root``. With ``verify`` the files are re-hashed against bundle.json."""
    root = Path(root)
    manifest = verified_manifest(root) if verify else read_bundle_manifest(root)
    parts = {c: load_component(root / c, device, COMPONENT_BASES.get(c)) for c in COMPONENTS}
    return TokenizerBundle(
        root=root,
        spec=TokenSpec.from_dict(manifest["spec"]),
        fingerprint=manifest["fingerprint"],
        **parts,
    )
