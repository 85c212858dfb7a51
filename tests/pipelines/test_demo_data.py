"""The demo music: decodable, captioned, split by piece, and captions that tell the truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from musiclm.pipelines import demo_data, demo_pieces, demo_sources
from musiclm.pipelines.demo_data import Settings, build_demo
from musiclm.pipelines.demo_sources import INSTRUMENTS, STRING_PROGRAMS
from musiclm.pipelines.midi_render import DRUM_CHANNEL, arrange_midi, midi_programs
from musiclm.tokenizers.audio import load_audio
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.dataset_layouts import read_sources


def _sidecars(root: Path) -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text())) for p in sorted(root.glob("*/*/*.json"))]


def test_every_file_decodes_and_has_a_caption(demo_music: Path) -> None:
    records = list(read_sources(demo_music))
    sources = {json.loads(Path(r.path).with_suffix(".json").read_text())["source"] for r in records}
    assert sources == set(demo_sources.SOURCES)
    assert len(records) == 3 * len(demo_sources.SOURCES)
    rate = TokenSpec().sample_rate
    for record in records:
        wav = load_audio(record.path, rate)
        assert wav.numel() > 5 * rate, record.path
        assert wav.abs().max() > 0.01, f"{record.path} is silent"
        assert record.caption.strip(), record.path
    # the files keep several formats and rates, so the pipeline must cope with them
    infos = [sf.info(r.path) for r in records]
    assert len({i.format for i in infos}) >= 2 and len({i.samplerate for i in infos}) >= 2


def test_split_by_piece(demo_music: Path) -> None:
    pieces = {"train": set(), "heldout": set()}
    for path, side in _sidecars(demo_music):
        split = path.relative_to(demo_music).parts[0]
        assert side["split"] == split
        pieces[split].add(side["piece"])
    assert pieces["train"] and pieces["heldout"]
    assert not pieces["train"] & pieces["heldout"]
    stamp = json.loads((demo_music / demo_data.STAMP).read_text())
    for source, splits in stamp["summary"]["sources"].items():
        assert splits["train"]["pieces"] >= 1 and splits["heldout"]["pieces"] >= 1, source


def test_captions_name_what_was_rendered(demo_music: Path) -> None:
    rendered = 0
    for path, side in _sidecars(demo_music):
        caption = side["caption"]
        if side["source"] in ("wesnoth", "singularity"):
            tags = sf.SoundFile(side["origin"]).copy_metadata()
            assert f"'{tags['title']}'" in caption and tags["artist"] in caption
            continue
        rendered += 1
        programs = midi_programs(path.with_suffix(".mid"))
        melodic = set().union(*(v for ch, v in programs.items() if ch != DRUM_CHANNEL))
        assert melodic == set(side["gm_programs"]), path
        if side["instrument"] == demo_sources.STRING_QUARTET:
            assert melodic <= set(STRING_PROGRAMS) and "string quartet (violin" in caption
        else:
            program, phrase = INSTRUMENTS[side["instrument"]]
            assert (melodic == {program} and f"played on {phrase}" in caption) or (
                f"arranged for {phrase}" in caption
            )
        assert caption.startswith(f"a {demo_pieces.tempo_word(side['bpm'])} ")
        if side["key"]:
            assert caption.split(" (")[0].endswith(f" in {side['key']}")
    assert rendered == 12


def test_arrange_midi_sets_instrument_tempo_and_length(tmp_path: Path) -> None:
    source = sorted(demo_sources.OPENMSX_DIR.glob("*.mid"))[0]
    original = arrange_midi(source, tmp_path / "same.mid")
    facts = arrange_midi(source, tmp_path / "x.mid", [73], tempo_factor=1.5, max_seconds=10)
    assert set(facts.programs.values()) == {73}
    assert facts.bpm == pytest.approx(original.bpm * 1.5, rel=1e-3)
    assert 9 < facts.seconds < 12 < original.seconds
    found = midi_programs(tmp_path / "x.mid")
    assert all(v == {73} for ch, v in found.items() if ch != DRUM_CHANNEL)
    slow = arrange_midi(source, tmp_path / "y.mid", [0], bpm=60.0)
    assert slow.bpm == pytest.approx(60.0, rel=1e-3)


@pytest.mark.slow
def test_build_is_reproducible_and_reused(tmp_path: Path) -> None:
    settings = Settings(max_pieces=2, max_piece_seconds=4.0, sources=("openmsx", "wesnoth"))
    first = build_demo(tmp_path / "a", settings)
    second = build_demo(tmp_path / "b", settings)
    assert [p["caption"] for p in first["pieces"]] == [p["caption"] for p in second["pieces"]]
    for piece in first["pieces"]:  # same samples (Ogg streams differ in their serial number)
        a, b = (sf.read(tmp_path / d / piece["file"])[0] for d in ("a", "b"))
        assert np.array_equal(a, b), piece["file"]
    stamp = (tmp_path / "a" / demo_data.STAMP).stat().st_mtime_ns
    build_demo(tmp_path / "a", settings)  # same settings: reused, not rebuilt
    assert (tmp_path / "a" / demo_data.STAMP).stat().st_mtime_ns == stamp
    other = build_demo(
        tmp_path / "a", Settings(max_pieces=1, max_piece_seconds=3.0, sources=("wesnoth",))
    )
    assert {p["source"] for p in other["pieces"]} == {"wesnoth"}  # other settings: rebuilt
    assert not (tmp_path / "a" / "train" / "openmsx").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("not a demo")
    with pytest.raises(SystemExit, match="not a demo dataset"):
        build_demo(tmp_path / "mine", settings)


def test_missing_packages_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(
        demo_sources.REQUIREMENTS, "wesnoth", [("wesnoth-1.16-music", tmp_path / "absent")]
    )
    with pytest.raises(SystemExit, match=r"apt-get install wesnoth-1\.16-music"):
        build_demo(tmp_path / "out", Settings(max_pieces=1, sources=("wesnoth",)))


@pytest.mark.slow
def test_key_in_caption_agrees_with_music21_on_the_score(tmp_path: Path) -> None:
    from music21 import corpus

    for name in ("mozart/k80/movement3", "bach/bwv10.7"):
        score = corpus.parse(name)
        score.write("midi", fp=str(tmp_path / "score.mid"))
        facts = arrange_midi(tmp_path / "score.mid", tmp_path / "cut.mid", [0], max_seconds=8)
        expected = score.analyze("key")
        key, confidence = demo_pieces.estimate_key(facts.pitch_weights)
        assert key.lower() == f"{expected.tonic.name} {expected.mode}".lower(), name
        assert confidence == pytest.approx(expected.correlationCoefficient, abs=0.05)


def test_every_note_ends_so_fluidsynth_finishes(tmp_path: Path) -> None:
    # music21 writes this movement's zero-length grace notes as off-then-on at one tick,
    # which leaves notes on forever; fluidsynth then renders silence without end
    from music21 import corpus
    from musiclm.pipelines.midi_render import render_midi

    corpus.parse("mozart/k155/movement2").write("midi", fp=str(tmp_path / "raw.mid"))
    arrange_midi(tmp_path / "raw.mid", tmp_path / "fixed.mid")
    assert _notes_left_on(tmp_path / "raw.mid") > 0
    assert _notes_left_on(tmp_path / "fixed.mid") == 0
    arrange_midi(tmp_path / "raw.mid", tmp_path / "cut.mid", max_seconds=6)
    render_midi(
        tmp_path / "cut.mid", tmp_path / "cut.wav", demo_sources.SOUNDFONT, 16000, timeout=60
    )
    assert 6 <= sf.info(str(tmp_path / "cut.wav")).duration < 20


def _notes_left_on(path: Path) -> int:
    """Notes still sounding at the end when a synthesizer plays ``path`` in order."""
    from music21 import midi

    mf = midi.MidiFile()
    mf.open(str(path))
    mf.read()
    mf.close()
    left = 0
    for track in mf.tracks:
        on: dict[tuple[int, int], int] = {}
        for event in track.events:
            if event.isNoteOn():
                on[(event.channel, event.pitch)] = on.get((event.channel, event.pitch), 0) + 1
            elif event.isNoteOff() and on.get((event.channel, event.pitch)):
                on[(event.channel, event.pitch)] -= 1
        left += sum(on.values())
    return left
