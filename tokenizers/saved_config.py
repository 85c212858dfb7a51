"""Reading a saved tokenizer component's ``config.json`` (every component directory has one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"


def read_saved_config(
    directory: str | Path, kind: str, what: str, hint: str = ""
) -> dict[str, Any]:
    """``directory/config.json`` as a dict, refused unless its ``"kind"`` is ``kind``.

    ``what`` names the component in the errors ("SoundStream codec"); ``hint`` (e.g. how
    to make one) is appended to them. Raises ``FileNotFoundError`` when the file is
    missing and ``ValueError`` when it belongs to another kind, both naming the path.
    """
    path = Path(directory) / CONFIG_FILE
    suffix = f" ({hint})" if hint else ""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} is not a saved {what}{suffix}")
    config: dict[str, Any] = json.loads(path.read_text())
    if config.get("kind") != kind:
        raise ValueError(
            f"{path} is of kind {config.get('kind')!r}, not {kind!r}: {directory} is not a "
            f"saved {what}{suffix}"
        )
    return config
