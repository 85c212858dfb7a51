"""The project installs as `musiclm.*` and never shadows Hugging Face's libraries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_hugging_face_tokenizers_and_transformers_import_from_the_repository_root():
    script = (
        "import tokenizers, transformers, musiclm.tokenizers.contract as c; "
        "print(tokenizers.__file__); print(hasattr(tokenizers, 'Tokenizer')); print(c.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    hf_file, has_tokenizer_class, contract_file = out
    assert "site-packages" in hf_file and not hf_file.startswith(str(ROOT / "tokenizers"))
    assert has_tokenizer_class == "True"
    assert Path(contract_file) == ROOT / "tokenizers" / "contract.py"


def test_code_folders_are_namespace_subpackages():
    for folder in ("tokenizers", "pipelines", "training", "sampling"):
        assert not (ROOT / folder / "__init__.py").exists(), f"{folder}/__init__.py would shadow"
