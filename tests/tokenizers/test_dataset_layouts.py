"""Dataset readers: every layout yields records with resolved paths, captions and safe keys."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from musiclm.tokenizers.dataset_layouts import detect_kind, read_sources
from musiclm.tokenizers.source_records import SourceRecord, make_key


def _wav(path: Path, seconds: float = 0.5, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.1 * np.sin(2 * np.pi * 440 * t), sr, format="WAV")
    return path


def _check_keys(records: list[SourceRecord]) -> None:
    keys = [r.key for r in records]
    assert len(set(keys)) == len(keys), keys
    for key in keys:
        assert "." not in key and "/" not in key and not any(c.isspace() for c in key), key


def test_folder_with_sidecars_recursive(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav")
    (tmp_path / "a.txt").write_text("  a calm piano  piece \n")
    _wav(tmp_path / "sub" / "dir" / "b.flac")
    (tmp_path / "sub" / "dir" / "b.json").write_text(
        json.dumps({"genre": "rock", "moods": ["energetic"], "instrument": "guitar", "title": "B"})
    )
    _wav(tmp_path / "sub" / "c.wav")  # no sidecar: empty caption, still a record
    (tmp_path / "sub" / "broken.ogg").write_bytes(b"not audio at all")  # still a record
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "bad.json").write_text("{")  # a json without audio is ignored
    _wav(tmp_path / ".hidden" / "x.wav")

    records = list(read_sources(tmp_path))
    by_name = {Path(r.path).name: r for r in records}
    assert sorted(by_name) == ["a.wav", "b.flac", "broken.ogg", "c.wav"]
    assert by_name["a.wav"].caption == "a calm piano piece"
    b = by_name["b.flac"]
    assert b.caption == "rock music with guitar; energetic mood; 'B'"
    assert set(b.tags) == {"rock", "energetic", "guitar"}
    assert by_name["c.wav"].caption == ""
    assert all(Path(r.path).is_absolute() and Path(r.path).exists() for r in records)
    assert b.metadata["relative_path"] == "sub/dir/b.flac"
    _check_keys(records)
    # stable: a second read (and the same tree elsewhere) gives the same keys
    assert [r.key for r in read_sources(tmp_path)] == [r.key for r in records]


def test_keys_unique_for_colliding_names_and_unicode() -> None:
    names = ["a.b.wav", "a_b.wav", "x.wav", "x.flac", "dir/x.wav", "dir x.wav"]
    keys = [make_key(n) for n in names]
    assert len(set(keys)) == len(keys)
    # NFC and NFD spellings of the same name are the same file name on disk and one key
    assert make_key("caf\u00e9.wav") == make_key("cafe\u0301.wav")
    assert make_key("Péché mignon/чайка.wav").startswith("Péché_mignon-чайка-")
    assert make_key("a.wav", 10.0, 20.0) != make_key("a.wav")
    assert "." not in make_key("a.wav", 10.25, 20.5)


def test_unicode_file_in_folder(tmp_path: Path) -> None:
    _wav(tmp_path / "Ünïcode – 曲.wav")
    (record,) = read_sources(tmp_path)
    assert record.key.startswith("Ünïcode_–_曲-")


def test_explicit_file_with_wrong_extension(tmp_path: Path) -> None:
    audio = _wav(tmp_path / "song.bin")
    assert list(read_sources(tmp_path)) == []  # not listed in a folder walk
    (record,) = read_sources(audio)  # but taken as audio when named explicitly
    assert record.path == str(audio.resolve())


def test_jsonl_audiocraft_manifest(tmp_path: Path) -> None:
    _wav(tmp_path / "audio" / "one.wav")
    _wav(tmp_path / "audio" / "two.wav")
    (tmp_path / "audio" / "one.json").write_text(
        json.dumps(
            {"description": "an upbeat jazz trio", "genre": "jazz", "moods": ["happy"], "bpm": 120}
        )
    )
    (tmp_path / "audio" / "two.json").write_text(
        json.dumps({"genre": "ambient", "instrument": "synth pad", "keywords": "slow, dreamy"})
    )
    lines = [
        {"path": "audio/one.wav", "duration": 0.5, "sample_rate": 16000},
        {"path": str(tmp_path / "audio" / "two.wav"), "duration": 0.5, "sample_rate": 16000},
        {"path": "audio/one.wav", "duration": 0.5, "sample_rate": 16000, "start": 0.1, "end": 0.3},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    (tmp_path / "data.jsonl").write_text(text)
    with gzip.open(tmp_path / "copy.jsonl.gz", "wt") as handle:
        handle.write(text)

    records = list(read_sources(tmp_path))  # root with data.jsonl
    assert detect_kind(tmp_path)[0] == "jsonl"
    assert [r.caption for r in records] == [
        "an upbeat jazz trio",
        "ambient music with synth pad; slow, dreamy",
        "an upbeat jazz trio",
    ]
    assert records[0].metadata["bpm"] == 120 and records[0].metadata["sample_rate"] == 16000
    assert (records[2].start, records[2].end) == (0.1, 0.3)
    assert records[0].path == str((tmp_path / "audio" / "one.wav").resolve())
    _check_keys(records)
    gz = list(read_sources(tmp_path / "copy.jsonl.gz"))
    assert [r.key for r in gz] == [r.key for r in records]


def test_jsonl_bad_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text('{"path": "a.wav"}\n{"duration": 3}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl, line 2"):
        list(read_sources(tmp_path / "m.jsonl"))


MUSICCAPS = """ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,is_balanced_subset,is_audioset_eval
-0Gj8-vB1q4,30,40,"['/m/0140xf', '/m/02cjck']","['low quality', 'sustained strings melody', 'soft female vocal']","The low quality recording features a ballad song.",4,False,True
-0SdAVK79lg,30,40,"['/m/0155w']","['guitar song', 'piano backing']","This song features an electric guitar as the main instrument.",0,False,False
zzzMissing1,0,10,[],"['rock']","Missing audio.",1,False,False
"""


def test_musiccaps_csv(tmp_path: Path) -> None:
    (tmp_path / "musiccaps-public.csv").write_text(MUSICCAPS)
    _wav(tmp_path / "audio" / "-0Gj8-vB1q4.wav", seconds=10.0, sr=8000)  # already cut
    _wav(tmp_path / "audio" / "-0SdAVK79lg.wav", seconds=45.0, sr=8000)  # whole video audio
    records = list(read_sources(tmp_path))
    assert len(records) == 2  # the row without audio is skipped
    cut, whole = records
    assert cut.caption == "The low quality recording features a ballad song."
    assert cut.tags == ("low quality", "sustained strings melody", "soft female vocal")
    assert (cut.start, cut.end) == (None, None)
    assert (whole.start, whole.end) == (30.0, 40.0)
    assert whole.metadata["ytid"] == "-0SdAVK79lg"
    assert whole.metadata["audioset_labels"] == ["/m/0155w"]
    _check_keys(records)


# FMA's tracks.csv: two header rows (table, field), then the index-name row.
FMA_TRACKS = """,album,album,artist,set,set,track,track,track,track,track,track,track
,title,tracks,name,split,subset,duration,genre_top,genres,genres_all,license,tags,title
track_id,,,,,,,,,,,,
2,AWOL - A Way Of Life,7,AWOL,training,small,168,Hip-Hop,[21],[21],"Attribution-NonCommercial-ShareAlike 3.0 International","['lofi']",Food
3,AWOL - A Way Of Life,7,AWOL,training,medium,237,Hip-Hop,[21],[21],CC BY,[],Electric Ave
5,"Album, with comma",7,Kurt Vile,test,small,206,,"[76, 103]","[76, 103]",CC BY,[],"Thé, ""quoted"" song"
10,Missing,1,Nobody,training,small,100,Pop,[10],[10],CC BY,[],Not downloaded
"""
FMA_GENRES = """genre_id,#tracks,parent,title,top_level
10,13845,0,Pop,10
21,8389,0,Hip-Hop,21
76,1,38,Experimental Pop,38
103,1,0,Folk,103
"""


def _fma(tmp_path: Path) -> Path:
    meta = tmp_path / "fma_metadata"
    meta.mkdir()
    (meta / "tracks.csv").write_text(FMA_TRACKS)
    (meta / "genres.csv").write_text(FMA_GENRES)
    for tid in (2, 3, 5):
        _wav(tmp_path / "fma_small" / f"{tid:06d}"[:3] / f"{tid:06d}.mp3")  # wav bytes, mp3 name
    return tmp_path


def test_fma_tracks_csv(tmp_path: Path) -> None:
    root = _fma(tmp_path)
    records = list(read_sources(root))
    assert [r.metadata["track_id"] for r in records] == [2, 3, 5]
    food = records[0]
    assert food.path == str((root / "fma_small" / "000" / "000002.mp3").resolve())
    assert food.caption == "Hip-Hop music; 'Food' by AWOL"
    assert set(food.tags) == {"Hip-Hop", "lofi"}
    assert records[2].caption == "Experimental Pop, Folk music; 'Thé, \"quoted\" song' by Kurt Vile"
    assert records[2].metadata["album"] == "Album, with comma"
    _check_keys(records)
    small = list(read_sources(root / "fma_metadata" / "tracks.csv", kind="fma"))
    assert [r.key for r in small] == [r.key for r in records]


def test_fma_subset_filter(tmp_path: Path) -> None:
    from musiclm.tokenizers.dataset_layouts import read_fma

    root = _fma(tmp_path)
    ids = [
        r.metadata["track_id"]
        for r in read_fma(root / "fma_metadata" / "tracks.csv", subset="small")
    ]
    assert ids == [2, 5]


def test_record_round_trip_and_errors(tmp_path: Path) -> None:
    record = SourceRecord("k", "/x.wav", 1.0, 2.0, "c", ("a",), {"m": 1})
    assert SourceRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    with pytest.raises(FileNotFoundError, match="no such dataset"):
        read_sources(tmp_path / "nope")
    (tmp_path / "odd.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="unknown CSV layout"):
        read_sources(tmp_path / "odd.csv")
