"""Re-arrange a MIDI file (instruments, tempo, length) and render it with fluidsynth.

Used by the demo music builder so that a caption can state what was really rendered:
:func:`arrange_midi` sets General MIDI programs on every melodic channel, scales the
tempo map, cuts the score after a given number of seconds and reports the facts of the
result (programs per channel, starting tempo, length, pitch-class weights for key
estimation). :func:`render_midi` calls the ``fluidsynth`` command line.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from music21 import midi

DRUM_CHANNEL = 10
DEFAULT_TEMPO = 500_000  # microseconds per quarter note (120 bpm), MIDI's default
_ON = midi.ChannelVoiceMessages.NOTE_ON
_OFF = midi.ChannelVoiceMessages.NOTE_OFF
_PROGRAM = midi.ChannelVoiceMessages.PROGRAM_CHANGE
_TEMPO = midi.MetaEvents.SET_TEMPO
_END = midi.MetaEvents.END_OF_TRACK


@dataclass(frozen=True)
class MidiFacts:
    """What an arranged MIDI file plays.

    ``programs``: melodic channel -> GM program (0-based); ``drums``: channel 10 has notes;
    ``bpm``: starting tempo; ``seconds``: time of the last note-off;
    ``pitch_weights``: [12] seconds of sounding notes per pitch class in the whole piece
    (before any cut; drums excluded).
    """

    programs: dict[int, int]
    drums: bool
    bpm: float
    seconds: float
    pitch_weights: np.ndarray


def _timed(track: midi.MidiTrack) -> list[tuple[int, midi.MidiEvent]]:
    """(absolute tick, event) for every non-delta event of a track."""
    out, tick = [], 0
    for event in track.events:
        if isinstance(event, midi.DeltaTime):
            tick += event.time or 0
        else:
            out.append((tick, event))
    return out


def _is_on(event: midi.MidiEvent) -> bool:
    return event.type == _ON and bool(event.velocity)


def _is_off(event: midi.MidiEvent) -> bool:
    return event.type == _OFF or (event.type == _ON and not event.velocity)


def _pair_zero_length(timed: list[tuple[int, midi.MidiEvent]]) -> list[tuple[int, midi.MidiEvent]]:
    """Move a note-off that precedes its own note-on at the same tick after it.

    music21 writes zero-length (grace) notes as off-then-on; played in that order the note
    never ends. A note-off that ends a sounding note (a repeated pitch) stays where it is.
    """
    out: list[tuple[int, midi.MidiEvent]] = []
    sounding: dict[tuple[int, int], int] = {}
    waiting: dict[tuple[int, int], list[midi.MidiEvent]] = {}  # unmatched offs of this tick
    now = None
    for tick, event in timed:
        if tick != now:
            out += [(now, off) for offs in waiting.values() for off in offs]
            waiting, now = {}, tick
        if _is_on(event) or _is_off(event):
            note = (event.channel, event.pitch)
            if _is_on(event):
                out.append((tick, event))
                if waiting.get(note):
                    out.append((tick, waiting[note].pop()))  # its own, zero-length off
                else:
                    sounding[note] = sounding.get(note, 0) + 1
            elif sounding.get(note, 0) > 0:
                sounding[note] -= 1
                out.append((tick, event))
            else:
                waiting.setdefault(note, []).append(event)
            continue
        out.append((tick, event))
    out += [(now, off) for offs in waiting.values() for off in offs]
    return out


def _rebuild(track: midi.MidiTrack, timed: list[tuple[int, midi.MidiEvent]]) -> None:
    events, last = [], 0
    for tick, event in timed:
        delta = midi.DeltaTime(track, time=tick - last)
        events += [delta, event]
        last = tick
    track.events = events


class _TempoMap:
    """Ticks -> seconds through a list of (tick, microseconds per quarter)."""

    def __init__(self, changes: list[tuple[int, int]], ticks_per_quarter: int) -> None:
        changes = sorted(changes) or [(0, DEFAULT_TEMPO)]
        if changes[0][0] > 0:
            changes.insert(0, (0, DEFAULT_TEMPO))
        self.ticks = np.array([c[0] for c in changes], dtype=np.float64)
        self.tempos = np.array([c[1] for c in changes], dtype=np.float64)
        per_tick = self.tempos / 1e6 / ticks_per_quarter
        self.per_tick = per_tick
        self.starts = np.concatenate([[0.0], np.cumsum(np.diff(self.ticks) * per_tick[:-1])])

    def seconds(self, tick: float | np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.ticks, tick, side="right") - 1
        return self.starts[idx] + (tick - self.ticks[idx]) * self.per_tick[idx]

    def tick_at(self, seconds: float) -> int:
        idx = int(np.searchsorted(self.starts, seconds, side="right") - 1)
        return int(self.ticks[idx] + (seconds - self.starts[idx]) / self.per_tick[idx])


def arrange_midi(
    source: str | Path,
    target: str | Path,
    programs: Sequence[int] | None = None,
    tempo_factor: float = 1.0,
    bpm: float | None = None,
    max_seconds: float | None = None,
) -> MidiFacts:
    """Write ``source`` to ``target`` with new instruments, tempo and length.

    ``programs``: GM programs (0-based) given to the melodic channels in the order their
    first note sounds (cycled if there are more channels); ``None`` keeps the file's own.
    Channel 10 (drums) is never changed. ``tempo_factor`` multiplies every tempo (2 = twice
    as fast); ``bpm`` instead sets the starting tempo (later changes keep their ratio).
    ``max_seconds`` drops notes that start later (held notes still end).
    """
    mf = midi.MidiFile()
    mf.open(str(source))
    mf.read()
    mf.close()
    tracks = [_pair_zero_length(_timed(t)) for t in mf.tracks]
    tpq = mf.ticksPerQuarterNote

    # tempo
    if bpm is not None:
        first = min(
            (
                (tick, int.from_bytes(e.data, "big"))
                for timed in tracks
                for tick, e in timed
                if e.type == _TEMPO
            ),
            default=(0, DEFAULT_TEMPO),
        )[1]
        tempo_factor = bpm * first / 60e6
    changes = []
    for timed in tracks:
        for tick, event in timed:
            if event.type == _TEMPO:
                value = max(1, round(int.from_bytes(event.data, "big") / tempo_factor))
                event.data = value.to_bytes(3, "big")
                changes.append((tick, value))
    if not changes:
        event = midi.MidiEvent(mf.tracks[0], type=_TEMPO)
        event.data = round(DEFAULT_TEMPO / tempo_factor).to_bytes(3, "big")
        tracks[0].insert(0, (0, event))
        changes.append((0, round(DEFAULT_TEMPO / tempo_factor)))
    tempo = _TempoMap(changes, tpq)
    cutoff = None if max_seconds is None else tempo.tick_at(max_seconds)

    # channel order of first notes
    firsts: dict[int, int] = {}
    for timed in tracks:
        for tick, event in timed:
            if event.type == _ON and event.velocity and event.channel != DRUM_CHANNEL:
                firsts[event.channel] = min(tick, firsts.get(event.channel, tick))
    order = sorted(firsts, key=lambda ch: (firsts[ch], ch))
    assigned = {ch: programs[i % len(programs)] for i, ch in enumerate(order)} if programs else {}

    weights = _pitch_weights(tracks, tempo)  # of the whole piece: its key, not a cut's
    final: dict[int, int] = {}
    drums, last_tick = False, 0
    for index, timed in enumerate(tracks):
        sounding: dict[tuple[int, int], int] = {}  # notes started before the cutoff
        kept: list[tuple[int, midi.MidiEvent]] = []
        channels = set()
        for tick, event in timed:
            kind = event.type
            if kind == _PROGRAM and programs and event.channel != DRUM_CHANNEL:
                # silent channels too, so the file names no instrument that is not heard
                event.data = assigned.get(event.channel, programs[0])
            late = cutoff is not None and tick >= cutoff
            if kind == _ON and event.velocity:
                note = (event.channel, event.pitch)
                if late:
                    continue
                sounding[note] = sounding.get(note, 0) + 1
                channels.add(event.channel)
                drums |= event.channel == DRUM_CHANNEL
            elif kind in (_OFF, _ON):  # a note-off (or a note-on of velocity 0)
                note = (event.channel, event.pitch)
                if sounding.get(note, 0) > 0:
                    sounding[note] -= 1
                elif late:
                    continue  # ends a note that was cut (or none): would only add silence
                last_tick = max(last_tick, tick)
            elif late and tick > cutoff and kind not in (_END, _PROGRAM):
                continue
            if kind == _END:
                tick = max(tick if cutoff is None else min(tick, cutoff), last_tick)
            kept.append((tick, event))
        # a note still on at the end (a zero-length note's off sorted before its on) would
        # sound forever: fluidsynth's file renderer would never finish
        end = max((tick for tick, _ in kept), default=0)
        for (channel, pitch), count in sounding.items():
            for _ in range(count):
                off = midi.MidiEvent(mf.tracks[index], type=_OFF, channel=channel)
                off.pitch, off.velocity = pitch, 0
                kept.append((end, off))
        for channel in sorted(channels - {DRUM_CHANNEL} - set(assigned) - set(final)):
            final.setdefault(channel, _first_program(timed, channel))
        kept.sort(key=lambda item: (item[0], item[1].type == _END))
        track = mf.tracks[index]
        present = {e.channel for _, e in kept if e.type == _PROGRAM}
        for channel in sorted((channels & set(assigned)) - present):
            event = midi.MidiEvent(track, type=_PROGRAM, channel=channel)
            event.data = assigned[channel]
            kept.insert(0, (0, event))
        _rebuild(track, kept)
    final.update(assigned)
    mf.open(str(target), "wb")
    mf.write()
    mf.close()
    return MidiFacts(
        programs=dict(sorted(final.items())),
        drums=drums,
        bpm=60e6 / tempo.tempos[0],
        seconds=float(tempo.seconds(last_tick)),
        pitch_weights=weights,
    )


def _pitch_weights(tracks: list[list[tuple[int, midi.MidiEvent]]], tempo: _TempoMap) -> np.ndarray:
    """[12] seconds of sounding melodic notes per pitch class, over every track."""
    weights = np.zeros(12)
    for timed in tracks:
        held: dict[tuple[int, int], list[int]] = {}
        # note-ons before note-offs of the same tick: a zero-length (grace) note pairs with
        # its own off, a repeated note's off with the earlier on
        ordered = sorted(timed, key=lambda te: (te[0], not (te[1].type == _ON and te[1].velocity)))
        for tick, event in ordered:
            if event.channel == DRUM_CHANNEL or event.type not in (_ON, _OFF):
                continue
            note = (event.channel, event.pitch)
            if event.type == _ON and event.velocity:
                held.setdefault(note, []).append(tick)
            elif held.get(note):
                start = held[note].pop(0)
                weights[event.pitch % 12] += tempo.seconds(tick) - tempo.seconds(start)
    return weights


def _first_program(timed: list[tuple[int, midi.MidiEvent]], channel: int) -> int:
    for _, event in timed:
        if event.type == _PROGRAM and event.channel == channel:
            return int(event.data)
    return 0  # GM default: acoustic grand piano


def midi_programs(path: str | Path) -> dict[int, set[int]]:
    """Channel -> every GM program set on it in the file (to check an arrangement)."""
    mf = midi.MidiFile()
    mf.open(str(path))
    mf.read()
    mf.close()
    found: dict[int, set[int]] = {}
    for track in mf.tracks:
        for _, event in _timed(track):
            if event.type == _PROGRAM:
                found.setdefault(event.channel, set()).add(int(event.data))
    return found


def render_midi(
    midi_path: str | Path,
    wav_path: str | Path,
    soundfont: str | Path,
    rate: int,
    timeout: float = 300.0,
) -> None:
    """Render ``midi_path`` to a 16-bit stereo wav at ``rate`` Hz with the fluidsynth CLI.

    fluidsynth renders until every voice is silent; ``timeout`` seconds bound a file whose
    notes never end (raises ``RuntimeError``).
    """
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise FileNotFoundError("fluidsynth is not installed (Debian package 'fluidsynth')")
    cmd = [exe, "-ni", "-q", "-g", "0.6", "-F", str(wav_path), "-r", str(rate)]
    try:
        done = subprocess.run(
            [*cmd, str(soundfont), str(midi_path)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(
            f"fluidsynth did not finish {midi_path} in {timeout:.0f} s (a note that never ends?)"
        ) from err
    if done.returncode != 0 or not Path(wav_path).is_file():
        raise RuntimeError(f"fluidsynth failed on {midi_path}: {done.stderr.strip()[-500:]}")
