"""Arrows one way (shared/DESIGN.md, "Layout"), read from the import statements of every
module under the four code folders and ``benchmarks/``:

* ``tokenizers`` imports none of the other three; ``pipelines`` and ``training`` use
  ``tokenizers`` only (``training`` never imports ``pipelines``); ``sampling`` uses
  ``tokenizers`` and training's *model* modules (pure torch), never its Lightning modules;
* a model module of ``training`` imports neither Lightning nor another training module
  that is not a model module;
* no module but a CLI module (``cli.py``, ``*_cli.py``) imports a CLI module;
* the Beam pipelines (``fit``, ``tokenize``) do not import each other: what they share
  lives in the pipeline modules they both use.

Every ``import`` counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tokenizers", "pipelines", "training", "sampling")
USES = {
    "tokenizers": {"tokenizers"},
    "pipelines": {"pipelines", "tokenizers"},
    "training": {"training", "tokenizers"},
    "sampling": {"sampling", "tokenizers", "training"},
}
# training's Lightning-free side: what sampling may import (torch, yaml and tokenizers only;
# the rules below keep Lightning and the other training modules out of these)
MODEL_MODULES = {
    "attention",
    "checkpoints",
    "layout",
    "stage_configs",
    "stage_model",
    "stage_registry",
    "transformer",
}
PIPELINES = {"fit", "tokenize"}
LIGHTNING = ("pytorch_lightning", "lightning")
# Wrong-way arrows still in the tree, each with the move that removes it. The test fails
# when one of these is gone, so that the entry is deleted with the arrow.
KNOWN: set[tuple[str, str]] = set()


def is_cli(module: str) -> bool:
    """``musiclm.training.cli`` / ``musiclm.tokenizers.codec_cli``-style module names."""
    name = module.rsplit(".", 1)[-1]
    return name == "cli" or name.endswith("_cli")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from musiclm.x import y`` counts as
    ``musiclm.x.y`` when ``y`` is a module of ``musiclm.x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            if node.module in {f"musiclm.{p}" for p in PACKAGES}:
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def wrong_way(importer: str, module: str) -> str | None:
    """Why ``importer`` (a path like ``training/stages.py``) may not import ``module``,
    or None when the arrow goes the right way."""
    folder, name = importer.split("/")[0], Path(importer).stem
    parts = module.split(".")
    if folder in PACKAGES and folder == "training" and name in MODEL_MODULES:
        if parts[0] in LIGHTNING:
            return "a training model module imports Lightning"
        if parts[:2] == ["musiclm", "training"] and parts[2:3] and parts[2] not in MODEL_MODULES:
            return "a training model module imports a training module that is not a model module"
    if parts[0] != "musiclm" or len(parts) < 3:
        return None
    package, target = parts[1], parts[2]
    if is_cli(module) and not is_cli(name):
        return "a module that is not a CLI imports a CLI module"
    if folder in USES and package not in USES[folder]:
        return f"{folder} imports {package}"
    if folder == "sampling" and package == "training" and target not in MODEL_MODULES:
        return "sampling imports a training module that is not a model module"
    if folder == "pipelines" and name in PIPELINES and target in PIPELINES - {name}:
        return "a Beam pipeline imports another pipeline"
    return None


def arrows() -> dict[tuple[str, str], str]:
    """``{(importer, module): broken rule}`` over the tree."""
    broken = {}
    for folder in (*PACKAGES, "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            importer = path.relative_to(REPO).as_posix()
            for module in imports(path):
                rule = wrong_way(importer, module)
                if rule:
                    broken[(importer, module)] = rule
    return broken


def test_every_import_goes_the_right_way():
    broken = {k: v for k, v in arrows().items() if k not in KNOWN}
    assert not broken, "\n".join(f"{a} imports {m}: {rule}" for (a, m), rule in broken.items())


def test_the_known_exceptions_are_still_there():
    gone = KNOWN - set(arrows())
    assert not gone, f"delete these fixed arrows from KNOWN: {sorted(gone)}"


@pytest.mark.parametrize(
    ("importer", "module"),
    [
        ("tokenizers/bundle.py", "musiclm.training.layout"),
        ("tokenizers/audio.py", "musiclm.pipelines.sources"),
        ("training/audio_data.py", "musiclm.pipelines.sources"),
        ("training/stages.py", "musiclm.sampling.generate"),
        ("pipelines/shards.py", "musiclm.training.layout"),
        ("sampling/sampler.py", "musiclm.training.stages"),
        ("sampling/sampler.py", "musiclm.training.shard_data"),
        ("training/stage_eval.py", "musiclm.training.cli"),
        ("benchmarks/codec.py", "musiclm.tokenizers.codec_cli"),
        ("pipelines/fit.py", "musiclm.pipelines.tokenize"),
        ("training/stage_model.py", "pytorch_lightning"),
        ("training/layout.py", "musiclm.training.shard_data"),
    ],
)
def test_wrong_way_arrows_are_recognised(importer, module):
    assert wrong_way(importer, module)


@pytest.mark.parametrize(
    ("importer", "module"),
    [
        ("pipelines/fit.py", "musiclm.tokenizers.kmeans"),
        ("training/stages.py", "pytorch_lightning"),
        ("training/stages.py", "musiclm.training.layout"),
        ("sampling/sampler.py", "musiclm.training.stage_model"),
        ("sampling/cli.py", "musiclm.sampling.sampler"),
        ("tokenizers/codec_cli.py", "musiclm.tokenizers.codec"),
        ("benchmarks/train.py", "musiclm.training.stages"),
    ],
)
def test_right_way_arrows_pass(importer, module):
    assert wrong_way(importer, module) is None
