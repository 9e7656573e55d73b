"""Fetching the public datasets into the on-disk layouts the readers expect (`seg-download`)."""

from seg.download.cli import download_dataset, main
from seg.download.extract import unpack
from seg.download.fetch import DownloadError, fetch
from seg.download.registry import DATASETS, Source, siim_steps, sources

__all__ = [
    "DATASETS",
    "DownloadError",
    "Source",
    "download_dataset",
    "fetch",
    "main",
    "siim_steps",
    "sources",
    "unpack",
]
