"""Small real-corpus stand-ins, built offline: prepared TFDS directories under the real
builder names, versions and features (c4/en 3.1.0, wikitext103 1.0.0, lm1b 1.1.0), and a
SentencePiece model trained on their text by `t5x-like vocab` (not a conftest: import what
you use; the session fixture `real_corpora` in tests/conftest.py builds them once)."""
from __future__ import annotations

import dataclasses
import os
import zlib

import numpy as np

# (TFDS name, config, version, features besides "text", our split -> number of documents)
CORPORA = {
    "c4": ("c4", "en", "3.1.0", ("timestamp", "url"), {"train": 240, "validation": 40}),
    "wikitext103": ("wikitext103", None, "1.0.0", (), {"train": 160, "validation": 30, "test": 30}),
    "lm1b": ("lm1b", None, "1.1.0", (), {"train": 60, "test": 20}),
}
SENTENCEPIECE_SIZE = 400  # pieces; + 125 extra ids = 525 ids, embedding_rows 640


@dataclasses.dataclass(frozen=True)
class RealCorpora:
    data_dir: str                       # TFDS_DATA_DIR holding c4/en/3.1.0, wikitext103/1.0.0, lm1b/1.1.0
    sentencepiece_model: str            # trained by `t5x-like vocab` on c4 + wikitext103 train text
    documents: dict[str, dict[str, list[str]]]  # corpus -> split -> documents, in file order


def _words(seed: int, count: int = 300) -> list[str]:
    rng = np.random.RandomState(seed)
    syllables = ["ka", "to", "ri", "mu", "sen", "lo", "va", "the", "qu", "ex", "an", "or", "pe", "di", "ño"]
    return ["".join(rng.choice(syllables, size=rng.randint(1, 4))) for _ in range(count)]


def documents(corpus: str, split: str, count: int) -> list[str]:
    """Reproducible documents of 40-160 words (Zipf-ish word choice), distinct by a number."""
    rng = np.random.RandomState(zlib.crc32(f"{corpus}/{split}".encode()))
    words = _words(zlib.crc32(corpus.encode()))
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    out = []
    for i in range(count):
        body = " ".join(rng.choice(words, size=rng.randint(40, 161), p=weights))
        out.append(f"{corpus} {split} document {i}: {body}.")
    return out


def write_tfds_dataset(data_dir: str, name: str, config: str | None, version: str, extra_features: tuple,
                       splits: dict[str, list[str]], examples_per_shard: int = 40) -> str:
    """A prepared TFDS dataset directory (dataset_info.json, features.json, TFRecord shards),
    as `tfds build` leaves it; returns its path (DATA_DIR/name[/config]/version)."""
    import tensorflow_datasets as tfds
    path = os.path.join(data_dir, name, *([config] if config else []), version)
    os.makedirs(path, exist_ok=True)
    features = tfds.features.FeaturesDict({k: tfds.features.Text() for k in ("text", *extra_features)})
    identity = tfds.core.DatasetIdentity(name=name, version=tfds.core.Version(version), config_name=config,
                                         data_dir=path, module_name="tests.corpus_fixtures")
    writer = tfds.core.SequentialWriter(ds_info=tfds.core.DatasetInfo(builder=identity, features=features),
                                        max_examples_per_shard=examples_per_shard)
    writer.initialize_splits(list(splits))
    writer.add_examples({split: [{"text": t, **{k: f"{k} {i}" for k in extra_features}} for i, t in enumerate(texts)]
                         for split, texts in splits.items()})
    writer.close_all()
    return path


def build_real_corpora(root: str) -> RealCorpora:
    """Writes every corpus of CORPORA under root/tfds and trains the SentencePiece model."""
    from t5x_like.cli import vocab as vocab_cli
    from t5x_like.data import tasks
    data_dir = os.path.join(root, "tfds")
    docs = {}
    for corpus, (name, config, version, extra, sizes) in CORPORA.items():
        docs[corpus] = {split: documents(corpus, split, n) for split, n in sizes.items()}
        write_tfds_dataset(data_dir, name, config, version, extra, docs[corpus])
    tasks.configure(tfds_data_dir=data_dir)
    try:
        task = "c4_causal_lm,wikitext103_causal_lm"
        assert vocab_cli.main(["--task", task, "--size", str(SENTENCEPIECE_SIZE), "--out", os.path.join(root, "vocab")]) == 0
    finally:
        tasks.configure()
    from t5x_like.data.vocab_training import model_path
    return RealCorpora(data_dir, model_path(os.path.join(root, "vocab"), task, SENTENCEPIECE_SIZE), docs)
