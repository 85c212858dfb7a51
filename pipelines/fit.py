"""The fit pipeline: sample features with Beam, fit k-means and the MuLan RVQ, write a bundle.

Steps (Beam)::

    sources -> Decode (clips as in tokenize)            (dead letter: logged, skipped)
      -> RunInference(FeaturesHandler)  -> rows [T, F] -> reservoir sample (fixed size)
      -> RunInference(EmbeddingHandler) -> [D]         -> reservoir sample (fixed size)
    (clips a model could not take are logged and skipped, as in tokenize one by one)

The two samples (at most ``semantic_sample_frames`` feature rows and
``mulan_sample_clips`` embeddings, whatever the dataset's size) are written to a work
directory; the launcher then fits the semantic centroids
(:func:`musiclm.tokenizers.kmeans.fit_kmeans`, ``spec.semantic_vocab`` clusters) and the
MuLan RVQ codebooks (:func:`musiclm.tokenizers.mulan.fit_codebooks`), installs them in
the components and writes the bundle: ``codec/``, ``semantic/``, ``mulan/`` (each
component's own ``save``) and ``bundle.json``
(:func:`musiclm.tokenizers.bundle.write_bundle_manifest`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import RunInference
from musiclm.pipelines.clips import Clip, ClipConfig
from musiclm.pipelines.decode import DecodeClips, decode_failure
from musiclm.pipelines.model_handlers import EmbeddingHandler, FeaturesHandler
from musiclm.pipelines.runner import clip_failure, pipeline_options
from musiclm.pipelines.shards import join, read_bytes, write_bytes
from musiclm.tokenizers.audio import DEFAULT_MAX_MISSING_SECONDS
from musiclm.tokenizers.bundle import (
    COMPONENT_BASES,
    COMPONENTS,
    load_component,
    write_bundle_manifest,
)
from musiclm.tokenizers.codec import Codec
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.dataset_layouts import read_sources
from musiclm.tokenizers.kmeans import FeatureReservoir, fit_kmeans
from musiclm.tokenizers.mulan import fit_codebooks
from musiclm.tokenizers.source_records import SourceRecord

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FitConfig:
    """Options of the fit pipeline (YAML: ``configs/pipelines/fit/<size>.yaml``)."""

    clip_seconds: float = 30.0
    min_seconds: float = 3.0
    max_missing_seconds: float = DEFAULT_MAX_MISSING_SECONDS  # as in TokenizeConfig
    semantic_sample_frames: int = 100_000  # feature rows kept for k-means
    mulan_sample_clips: int = 100_000  # clip embeddings kept for the RVQ
    kmeans_niter: int = 10
    rvq_min_points_per_code: int = 4
    seed: int = 0
    features_batch_size: int = 8
    mulan_batch_size: int = 8
    threads: int | None = None
    workers: int | None = None
    source_kind: str | None = None


class ReservoirCombineFn(beam.CombineFn):
    """Uniform fixed-size sample of the rows of many [n, D] arrays (FeatureReservoir per bundle).

    Memory per accumulator is ``capacity x D`` float32, whatever the input's size.
    """

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity, self.seed = capacity, seed

    def create_accumulator(self) -> FeatureReservoir | None:
        return None

    def add_input(self, acc: FeatureReservoir | None, rows: np.ndarray) -> FeatureReservoir:
        rows = np.asarray(rows, np.float32).reshape(-1, np.shape(rows)[-1])
        if acc is None:
            acc = FeatureReservoir(self.capacity, rows.shape[1], seed=self.seed)
        acc.add(rows)
        return acc

    def merge_accumulators(self, accs: Any) -> FeatureReservoir | None:
        merged = None
        for acc in accs:
            if acc is not None:
                merged = acc if merged is None else merged.merge(acc)
        return merged

    def extract_output(self, acc: FeatureReservoir | None) -> np.ndarray:
        return np.zeros((0, 0), np.float32) if acc is None else acc.sample()


def save_array(array: np.ndarray, path: str) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes(path, buffer.getvalue())


def load_array(path: str) -> np.ndarray:
    return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)


def sample_pipeline(
    pipeline: beam.Pipeline,
    sources: str,
    semantic_dir: str,
    mulan_dir: str,
    spec: TokenSpec,
    config: FitConfig,
    work: str,
) -> None:
    """Add the sampling steps; writes features.npy, embeddings.npy and failures.jsonl to ``work``."""
    clip_config = ClipConfig(
        config.clip_seconds,
        None,
        config.min_seconds,
        max_missing_seconds=config.max_missing_seconds,
    )
    records = (
        pipeline
        | "ReadSources" >> beam.io.ReadFromText(sources)
        | "ParseSources" >> beam.Map(lambda line: SourceRecord.from_dict(json.loads(line)))
        | "Spread" >> beam.Reshuffle()
    )
    clips, bad = records | "Decode" >> beam.ParDo(
        DecodeClips(spec, clip_config)
    ).with_exception_handling(partial=True)
    failures = [bad | "DecodeFailures" >> beam.Map(decode_failure)]
    branches = (
        (
            "features",
            FeaturesHandler(semantic_dir, config.features_batch_size, config.threads),
            config.semantic_sample_frames,
            config.seed,
        ),
        (
            "mulan_emb",
            EmbeddingHandler(mulan_dir, config.mulan_batch_size, config.threads),
            config.mulan_sample_clips,
            config.seed + 1,
        ),
    )
    for name, handler, capacity, seed in branches:
        done, failed = (
            clips
            | f"Run_{name}" >> RunInference(handler)
            | f"Split_{name}" >> beam.Partition(lambda c, _: int(bool(c.error)), 2)
        )
        failures.append(failed | f"Failed_{name}" >> beam.Map(clip_failure, handler.step))
        _ = (
            done
            | f"Rows_{name}" >> beam.Map(_rows, name)
            | f"Sample_{name}" >> beam.CombineGlobally(ReservoirCombineFn(capacity, seed))
            | f"Save_{name}" >> beam.Map(save_array, join(work, f"{name}.npy"))
        )
    _ = (
        failures
        | "AllFailures" >> beam.Flatten()
        | "FailureLines" >> beam.Map(json.dumps)
        | "WriteFailures"
        >> beam.io.WriteToText(join(work, "failures"), ".jsonl", shard_name_template="")
    )


def _rows(clip: Clip, name: str) -> np.ndarray:
    """The sampled rows of a clip: feature frames [T, F] or its embedding as [1, D]."""
    value = clip.tokens[name]
    return value.reshape(-1, value.shape[-1])


def bundle_spec(codec: Codec, semantic: Any, mulan: Any) -> TokenSpec:
    """The bundle's token spec, each field from the component that owns it.

    Acoustic fields (hop, levels, codebook size) come from the codec, ``semantic_rate`` and
    ``semantic_vocab`` from the semantic tokenizer, the MuLan fields and ``coarse_levels``
    from MuLan; the three must share a sample rate. So a pretrained codec of another hop
    (EnCodec: 320) or a CLAP of another width (512) combines with tokenizers trained at the
    paper's spec. A plain error names what disagrees or what does not fit together.
    """
    rates = {
        "codec": codec.sample_rate,
        "semantic tokenizer": semantic.spec.sample_rate,
        "MuLan": mulan.spec.sample_rate,
    }
    if len(set(rates.values())) > 1:
        raise ValueError(
            "the three tokenizers were built for different token specs: sample rates "
            + ", ".join(f"{name} {rate} Hz" for name, rate in rates.items())
            + ". Train them with configs of one size."
        )
    try:
        return dataclasses.replace(
            mulan.spec,
            acoustic_hop=codec.hop,
            acoustic_levels=codec.num_levels,
            acoustic_codebook_size=codec.codebook_size,
            semantic_rate=semantic.spec.semantic_rate,
            semantic_vocab=semantic.spec.semantic_vocab,
        )
    except ValueError as error:
        raise ValueError(f"the three tokenizers do not make one token spec: {error}") from error


def fit_bundle(
    dataset: str,
    components: dict[str, str],
    out: str,
    config: FitConfig | None = None,
    beam_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Sample, fit and write the bundle at ``out`` (local directory); return bundle.json's dict.

    ``components`` maps ``codec``/``semantic``/``mulan`` to saved component directories.
    """
    config = config or FitConfig()
    started = time.monotonic()
    models = {c: load_component(components[c], base=COMPONENT_BASES.get(c)) for c in COMPONENTS}
    spec = bundle_spec(models["codec"], models["semantic"], models["mulan"])
    records = list(read_sources(dataset, kind=config.source_kind))
    if not records:
        raise ValueError(f"{dataset} holds no audio sources to fit the tokenizers on")

    work = out.rstrip("/") + ".work"
    sources = join(work, "sources.jsonl")
    write_bytes(sources, "".join(json.dumps(r.to_dict()) + "\n" for r in records).encode())
    pipeline = beam.Pipeline(options=pipeline_options(beam_args, config.workers))
    sample_pipeline(
        pipeline, sources, components["semantic"], components["mulan"], spec, config, work
    )
    pipeline.run().wait_until_finish()

    failures = _read_failures(join(work, "failures.jsonl"))
    for row in failures[:20]:
        log.warning("skipped while fitting: %s", row["error"])
    features_path, emb_path = join(work, "features.npy"), join(work, "mulan_emb.npy")
    if not FileSystems.exists(features_path) or not FileSystems.exists(emb_path):
        raise ValueError(
            f"no clip of {dataset} could be decoded ({len(failures)} failures), nothing to fit"
        )
    features, embeddings = sorted_rows(load_array(features_path)), sorted_rows(load_array(emb_path))
    log.info(
        "fitting %d semantic centroids on %d x %d features, MuLan RVQ %d x %d on %d embeddings",
        spec.semantic_vocab,
        *features.shape,
        spec.mulan_levels,
        spec.mulan_codebook_size,
        len(embeddings),
    )
    centroids = fit_kmeans(
        features, spec.semantic_vocab, seed=config.seed, niter=config.kmeans_niter
    )
    books = fit_codebooks(
        embeddings,
        spec.mulan_levels,
        spec.mulan_codebook_size,
        min_points_per_code=config.rvq_min_points_per_code,
        seed=config.seed,
    )
    models["semantic"].set_centroids(centroids)
    models["mulan"].set_codebooks(books)
    for name in ("semantic", "mulan"):  # saved with the spec of the bundle they are part of
        models[name].spec = spec

    root = Path(out)
    for name in COMPONENTS:
        if (root / name).exists():
            shutil.rmtree(root / name)
        models[name].save(root / name)
    configs = {"fit": dataclasses.asdict(config)}
    fingerprint = write_bundle_manifest(root, spec, configs)
    _remove_work(work)
    summary = {
        "fingerprint": fingerprint,
        "inputs": len(records),
        "failed": len({row["source"] for row in failures}),
        "feature_rows": int(features.shape[0]),
        "embeddings": len(embeddings),
        "wall_seconds": round(time.monotonic() - started, 2),
    }
    log.info("bundle %s written to %s: %s", fingerprint, out, summary)
    return summary


def sorted_rows(rows: np.ndarray) -> np.ndarray:
    """The rows of ``rows`` [n, D] in byte order: the fit sees the same array whatever order
    the runner delivered them in (DirectRunner, PortableRunner, any number of workers).

    When the dataset's rows all fit in the reservoirs, the bundle is then identical on every
    runner; beyond that, which rows a reservoir keeps depends on the arrival order too.
    """
    rows = np.ascontiguousarray(rows)
    as_bytes = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    return rows[np.argsort(as_bytes, kind="stable")]


def _remove_work(work: str) -> None:
    if "://" not in work:
        shutil.rmtree(work, ignore_errors=True)
        return
    found = FileSystems.match([work.rstrip("/") + "/**"])[0].metadata_list
    if found:
        FileSystems.delete([m.path for m in found])


def _read_failures(path: str) -> list[dict[str, str]]:
    if not FileSystems.exists(path):
        return []
    return [json.loads(line) for line in read_bytes(path).decode().splitlines() if line]


def iter_component_dirs(
    runs: str, codec: str | None, semantic: str | None, mulan: str | None
) -> Iterator[tuple[str, str]]:
    """``(component, directory)``: explicit dirs, else RUNS/<soundstream|semantic|mulan>/model."""
    defaults = {"codec": "soundstream", "semantic": "semantic", "mulan": "mulan"}
    given = {"codec": codec, "semantic": semantic, "mulan": mulan}
    for name in COMPONENTS:
        yield name, given[name] or str(Path(runs) / defaults[name] / "model")
