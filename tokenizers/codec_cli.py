"""``musiclm-codec``: round-trip audio through a saved acoustic codec (SoundStream or EnCodec).

::

    musiclm-codec encode --codec runs/soundstream/model --input song.wav --output song.npy --levels 4
    musiclm-codec decode --codec runs/soundstream/model --input song.npy --output song-q4.wav

``encode`` reads any audio file (resampled to the codec's rate, mixed to mono) and writes
the codes as int16 ``[levels, frames]`` (the shard format of ``acoustic.npy``) plus a
sidecar ``<output>.json`` with the sample rate, hop and input length. ``decode`` turns the
codes (optionally only their first ``--levels``) back into a wav, trimmed to the input's
length when the sidecar is there. ``--codec`` is a saved codec directory (its
``config.json`` names the kind) or a tokenizer bundle (its ``codec/`` is used).

Long files are coded in windows of ``--window-seconds`` (default 30 s, a whole number of
frames), each with 1 s of context before it (:meth:`Codec.encode_windowed
<musiclm.tokenizers.codec.Codec.encode_windowed>`), so memory stays flat and SoundStream's
codes and audio equal those of coding the whole file at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from musiclm.tokenizers.audio import AudioError, load_audio
from musiclm.tokenizers.bundle import BundleError, load_codec
from musiclm.tokenizers.contract import TOKEN_DTYPE


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _encode(args: argparse.Namespace) -> None:
    codec = load_codec(args.codec, args.device)
    wav = load_audio(args.input, codec.sample_rate)
    codes = codec.encode_windowed(wav[None, None], args.levels, args.window_seconds)[0].numpy()
    if codes.max(initial=0) > np.iinfo(TOKEN_DTYPE).max:
        raise ValueError(f"codes do not fit {np.dtype(TOKEN_DTYPE)}")
    codes = codes.astype(TOKEN_DTYPE)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    np.save(output, codes, allow_pickle=False)
    meta = {
        "input": str(args.input),
        "sample_rate": codec.sample_rate,
        "hop": codec.hop,
        "samples": wav.numel(),
        "levels": int(codes.shape[0]),
        "frames": int(codes.shape[1]),
    }
    _sidecar(output).write_text(json.dumps(meta, indent=2))
    print(f"wrote {output}: {codes.shape[0]} levels x {codes.shape[1]} frames")


def _decode(args: argparse.Namespace) -> None:
    codec = load_codec(args.codec, args.device)
    source = Path(args.input)
    try:
        codes = np.load(source, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{source} is not a .npy codes file ({err})") from err
    if codes.ndim == 2 and codes.size and (codes.min() < 0 or codes.max() >= codec.codebook_size):
        raise ValueError(
            f"{source} has codes outside [0, {codec.codebook_size}): made by another codec?"
        )
    if codes.ndim != 2:
        raise ValueError(f"{source} holds codes of shape {codes.shape}, not [levels, frames]")
    if args.levels is not None:
        if not 1 <= args.levels <= codes.shape[0]:
            raise ValueError(f"--levels must be in 1..{codes.shape[0]} for these codes")
        codes = codes[: args.levels]
    tensor = torch.from_numpy(codes.astype(np.int64))[None]
    wav = codec.decode_windowed(tensor, args.window_seconds)[0, 0].numpy()
    sidecar = _sidecar(source)
    if sidecar.is_file():
        wav = wav[: json.loads(sidecar.read_text())["samples"]]
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sf.write(output, wav, codec.sample_rate, subtype="FLOAT")
    print(f"wrote {output}: {wav.size / codec.sample_rate:.2f} s at {codec.sample_rate} Hz")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musiclm-codec", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("encode", "audio file -> int16 codes [levels, frames] (.npy)"),
        ("decode", "codes (.npy) -> wav file"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--codec", required=True, help="saved codec directory or bundle root")
        sub.add_argument("--input", required=True)
        sub.add_argument("--output", required=True)
        sub.add_argument("--levels", type=int, default=None, help="RVQ levels (default: all)")
        sub.add_argument("--window-seconds", type=float, default=30.0)
        sub.add_argument("--device", default="cpu")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        (_encode if args.command == "encode" else _decode)(args)
    except (FileNotFoundError, ValueError, AudioError, BundleError) as err:
        sys.exit(f"musiclm-codec {args.command}: {err}")


if __name__ == "__main__":
    main()
