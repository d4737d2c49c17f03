"""Movie-review sentences with human sentiment ratings, from the vaderSentiment 3.3.2 source archive.

The data are Hutto & Gilbert's ground truth for *VADER: A Parsimonious Rule-based Model for Sentiment
Analysis of Social Media Text* (ICWSM 2014): 10,605 movie-review snippets (from Pang & Lee's
rotten-tomatoes sentences), each rated by about 20 people on a -4 (extremely negative) .. +4 (extremely
positive) scale. ``movieReviewSnippets_GroundTruth.txt`` holds ``id<TAB>mean rating<TAB>sentence``.

Source: PyPI sdist ``vaderSentiment==3.3.2``, file ``additional_resources/hutto_ICWSM_2014.tar.gz``
(an archive inside the archive), read straight from the downloaded tar.gz; nothing is extracted.
Licence: MIT, Copyright (c) 2016 C.J. Hutto (``LICENSE.txt`` in the same archive).
"""

from __future__ import annotations

import io
import tarfile
from functools import lru_cache

from ina.embedded import fetch_package_file

#: The name `ina glue --dataset_name` gives this data (the offline default of `ina glue` and `ina sweep`).
DATASET_NAME = "vader-movie-reviews"
REQUIREMENT = "vaderSentiment==3.3.2"
INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
MOVIE_FILE = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"


def movie_review_sentences() -> list[tuple[str, float]]:
    """All movie-review snippets with their mean human rating in [-4, 4], in the file's order.

    Downloads the vaderSentiment 3.3.2 sdist from PyPI on first use (cached; offline afterwards).
    Each call returns a fresh list, so callers may shuffle or filter it.
    """
    return list(_read_movie_reviews())


@lru_cache(maxsize=1)
def _read_movie_reviews() -> tuple[tuple[str, float], ...]:
    archive = fetch_package_file(REQUIREMENT)
    with tarfile.open(archive, "r:gz") as outer:
        member = outer.extractfile(INNER_ARCHIVE)
        if member is None:
            raise RuntimeError(f"{archive} has no file {INNER_ARCHIVE}; is it really {REQUIREMENT}?")
        inner_bytes = member.read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        member = inner.extractfile(MOVIE_FILE)
        if member is None:
            raise RuntimeError(f"{INNER_ARCHIVE} in {archive} has no file {MOVIE_FILE}")
        text = member.read().decode("utf-8")
    rows: list[tuple[str, float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise RuntimeError(f"{MOVIE_FILE} line {number}: expected id, rating, sentence; got {line!r}")
        rows.append((fields[2].strip(), float(fields[1])))
    return tuple(rows)
