"""Where a task's text comes from: in-memory corpora and prepared TFDS directories (seqio sources).

Owns `InMemorySource` (rows from a Python function of the split: the embedded
corpora of `corpora.py`), `TfdsDirectorySource` (a prepared TFDS dataset on
disk, found under `tfds_data_dir()` when read; never downloaded) and the
sources of the embedded corpora. Which tasks read them is `tasks.py`'s.
"""
from __future__ import annotations

import glob as globlib
import os
import re
import zlib
from typing import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from t5x_like.data import corpora
from t5x_like.data import settings as data_settings


class InMemorySource(seqio.FunctionDataSource):
    """Rows from a Python function of the split; shuffling permutes all rows by seed.

    `salt` makes sources that share rows (the UL2 denoisers) visit them in
    different orders under the same seed.
    """

    def __init__(self, rows_fn: Callable[[str], Sequence], columns: Sequence[str],
                 splits: Sequence[str], salt: str = ""):
        self._rows_fn, self._columns = rows_fn, tuple(columns)
        self._salt = zlib.crc32(salt.encode("utf-8"))
        super().__init__(dataset_fn=self._dataset_fn, splits=tuple(splits))

    def _dataset_fn(self, split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        rows = list(self._rows_fn(split))
        if not rows:
            raise ValueError(f"split {split!r} of this source is empty")
        if shuffle_files:
            rng = np.random.RandomState(None if seed is None else [int(seed) % 2**32, self._salt])
            rows = [rows[i] for i in rng.permutation(len(rows))]
        if len(self._columns) == 1:
            return tf.data.Dataset.from_tensor_slices({self._columns[0]: [str(r) for r in rows]})
        columns = {c: [r[i] for r in rows] for i, c in enumerate(self._columns)}
        return tf.data.Dataset.from_tensor_slices(columns)

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, **unused) -> tf.data.Dataset:
        if shard_info and shard_info.num_shards > 1:
            raise ValueError("InMemorySource shards at the examples (seqio does this when "
                             "list_shards has fewer shards than requested)")
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; this source has {self.splits}")
        return self._dataset_fn(split, shuffle, seed)


class TfdsDataMissingError(FileNotFoundError):
    """A TFDS dataset is not prepared on disk; the message says where we looked and what to do."""


def tfds_data_dir() -> str:
    """Where prepared TFDS datasets live: the data settings' (`tasks.configure`), else
    $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return os.path.expanduser(data_settings.current().tfds_data_dir or os.environ.get("TFDS_DATA_DIR")
                              or "~/tensorflow_datasets")


_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def prepared_tfds_dir(dataset: str, data_dir: str) -> str:
    """Directory of a prepared TFDS dataset ("name[/config][:version]"), newest version first."""
    name, _, version = dataset.partition(":")
    base = os.path.join(data_dir, *name.split("/"))
    candidates = [os.path.join(base, version)] if version else sorted(
        (d for d in globlib.glob(os.path.join(base, "*")) if _VERSION.match(os.path.basename(d))),
        key=lambda d: tuple(int(x) for x in os.path.basename(d).split(".")), reverse=True)
    for candidate in candidates:
        if os.path.exists(os.path.join(candidate, "dataset_info.json")):
            return candidate
    raise TfdsDataMissingError(
        f"TFDS dataset {dataset!r} is not prepared under {data_dir} (looked for "
        f"{os.path.join(base, version or '<version>', 'dataset_info.json')}). This code never "
        f"downloads: prepare it where there is network access (`tfds build {name} --data_dir DIR`, "
        "or for local text tfds.dataset_builders.store_as_tfds_dataset; see docs/data.md), copy DIR "
        "here and set TFDS_DATA_DIR=DIR or --gin.t5x_like.data.tasks.tfds_data_dir.data_dir=DIR.")


class TfdsDirectorySource(seqio.DataSource):
    """Rows {"text": ...} from feature `text_key` of a prepared TFDS dataset, found under
    `tfds_data_dir()` when read (never downloaded; missing files are TfdsDataMissingError).

    Shards at the source: shard i of n reads `tfds.even_splits(split, n)[i]`, a contiguous
    1/n of the split's examples (TFDS opens only the files that hold them), so each host
    of a multi-host run reads its own part of C4 rather than all of it.
    """

    def __init__(self, dataset: str, text_key: str, splits: Mapping[str, str]):
        self.dataset, self.text_key, self._tfds_splits = dataset, text_key, dict(splits)
        super().__init__(splits=tuple(splits), caching_permitted=False)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [split]

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, **unused) -> tf.data.Dataset:
        import tensorflow_datasets as tfds  # heavy; only when a TFDS corpus is read

        path = prepared_tfds_dir(self.dataset, tfds_data_dir())
        builder = tfds.builder_from_directory(path)
        tfds_split = self._tfds_splits[split]
        if tfds_split not in builder.info.splits:
            raise TfdsDataMissingError(f"TFDS dataset at {path} has splits {list(builder.info.splits)}, "
                                       f"not {tfds_split!r}")
        if shard_info and shard_info.num_shards > 1:
            tfds_split = tfds.even_splits(tfds_split, n=shard_info.num_shards)[shard_info.index]
        ds = builder.as_dataset(split=tfds_split, shuffle_files=shuffle,
                                read_config=tfds.ReadConfig(shuffle_seed=seed))
        if self.text_key not in ds.element_spec:
            raise ValueError(f"TFDS dataset at {path} has no feature {self.text_key!r}: {list(ds.element_spec)}")
        return ds.map(lambda x: {"text": x[self.text_key]}, num_parallel_calls=tf.data.AUTOTUNE)


def tfds_text_source(dataset: str, text_key: str, splits: Mapping[str, str]) -> TfdsDirectorySource:
    """A source reading `text_key` of a prepared TFDS dataset ("name[/config][:version]");
    `splits` maps our split names to the dataset's."""
    return TfdsDirectorySource(dataset, text_key, splits)


def shakespeare_source(salt: str) -> InMemorySource:
    return InMemorySource(corpora.shakespeare_documents, ["text"], corpora.SPLITS, salt)


def bible_source(salt: str) -> InMemorySource:
    return InMemorySource(corpora.bible_documents, ["text"], corpora.SPLITS, salt)
