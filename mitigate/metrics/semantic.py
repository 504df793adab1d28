"""Diversity among the correct answers of one prompt, for text tasks: embeddings -> three numbers.

    emb = make_embedder("tfidf")              # or make_embedder("minilm", path=".../all-MiniLM-L6-v2")
    answer_diversity(texts, emb)              # {"lexical_cosine_distance", "lexical_vendi", "lexical_clusters"}

- mean pairwise cosine distance: the average of 1 - cos(e_i, e_j) over pairs i < j;
- the Vendi score of order q: exp of the Renyi entropy (order q) of the eigenvalues of K / n,
  K the cosine-similarity matrix: the effective number of distinct answers (1 when all are the
  same, n when all are orthogonal);
- clusters: agglomerative clustering (cosine distance, average linkage) cut at a distance
  threshold; their count is the text analogue of the graph task's "distinct concepts".

Keys carry the embedder's kind: TF-IDF compares words, so its numbers are *lexical* diversity
(`lexical_*`); a sentence-embedding model gives *semantic* diversity (`semantic_*`). TF-IDF is the
fallback that needs nothing beyond scikit-learn; `minilm` needs the optional `sentence-transformers`
(`pip install mitigate[sciqa]`) and a local model folder, and never downloads anything.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from sklearn.cluster import AgglomerativeClustering
from sklearn.feature_extraction.text import TfidfVectorizer

from mitigate.core.fields import ConfigError
from mitigate.metrics.summary import TEXT_DIVERSITY_KEYS
from mitigate.registries import EMBEDDERS

register_embedder = EMBEDDERS.register

KINDS = ("semantic", "lexical")
MEASURES = ("cosine_distance", "vendi", "clusters")
# Every per-prompt key `answer_diversity` can write; summary.json reports them beside pass@k
# (`summary.SCALARS`), and a task without texts (the graph task) simply has none of them.
DIVERSITY_KEYS = TEXT_DIVERSITY_KEYS
assert DIVERSITY_KEYS == tuple(f"{kind}_{m}" for kind in KINDS for m in MEASURES)


# ----------------------------------------------------------------------------- embedders

@register_embedder("tfidf")
class TfidfEmbedder:
    """TF-IDF vectors of word unigrams and bigrams, fitted on the texts being compared (one prompt's
    answers), rows L2-normalised. Measures word overlap: lexical, not semantic, diversity."""

    kind = "lexical"

    def __init__(self, ngram_max: int = 2):
        self.ngram_max = ngram_max

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not any(t.strip() for t in texts):
            return np.zeros((len(texts), 0))
        vec = TfidfVectorizer(ngram_range=(1, self.ngram_max), token_pattern=r"(?u)\b\w+\b")
        try:
            return vec.fit_transform(texts).toarray()
        except ValueError:  # only stop-words or punctuation: no vocabulary
            return np.zeros((len(texts), 0))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@register_embedder("minilm")
class MiniLMEmbedder:
    """Sentence embeddings from a local sentence-transformers folder (e.g. all-MiniLM-L6-v2), loaded
    with `local_files_only`. `sha256`, when given, must match the folder's weights file, so a
    swapped or corrupted model is refused instead of silently changing the numbers."""

    kind = "semantic"

    def __init__(self, path: str = "", sha256: str = "", device: str = "cpu", batch_size: int = 64):
        try:
            from sentence_transformers import SentenceTransformer  # optional extra: mitigate[sciqa]
        except ImportError as e:
            raise ConfigError("embedder 'minilm' needs sentence-transformers: pip install 'mitigate[sciqa]' "
                              "(or use the 'tfidf' embedder, which reports lexical diversity)") from e
        folder = Path(path)
        if not path or not folder.is_dir():
            raise ConfigError(f"embedder 'minilm': model folder not found: '{path}' (a local sentence-transformers "
                              "folder; nothing is downloaded)")
        if sha256:
            weights = [p for p in (folder / "model.safetensors", folder / "pytorch_model.bin") if p.is_file()]
            if not weights:
                raise ConfigError(f"embedder 'minilm': no model.safetensors or pytorch_model.bin in '{path}'")
            got = file_sha256(weights[0])
            if got != sha256.lower():
                raise ConfigError(f"embedder 'minilm': {weights[0]} has sha256 {got}, expected {sha256}")
        self.model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        self.batch_size = batch_size

    def __call__(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                            show_progress_bar=False), dtype=np.float64)


def make_embedder(name: str, **settings):
    """An embedder by registered name (`tfidf`, `minilm`, or one registered by a plugin)."""
    return EMBEDDERS.get(name, "embedder").target(**settings)


# ----------------------------------------------------------------------------- the three numbers

def cosine_similarity_matrix(embeddings: np.ndarray) -> np.ndarray:
    """[n, n] cosine similarities. A zero vector (an empty answer) is treated as its own direction:
    similarity 1 to itself and to other zero vectors, 0 to everything else (K stays PSD)."""
    x = np.asarray(embeddings, dtype=np.float64).reshape(len(embeddings), -1)
    norm = np.linalg.norm(x, axis=1)
    zero = norm == 0
    unit = np.divide(x, norm[:, None], out=np.zeros_like(x), where=~zero[:, None])
    sim = np.clip(unit @ unit.T, -1.0, 1.0)
    sim[np.ix_(zero, zero)] = 1.0
    return sim


def mean_pairwise_cosine_distance(sim: np.ndarray) -> float:
    """Average of 1 - cos over pairs i < j; 0.0 for fewer than two answers."""
    n = len(sim)
    if n < 2:
        return 0.0
    upper = np.triu_indices(n, 1)
    return float(np.mean(1.0 - sim[upper]))


def vendi_score(sim: np.ndarray, q: float = 1.0) -> float:
    """exp(H_q(lambda)), lambda the eigenvalues of K / n (K a PSD similarity matrix with unit
    diagonal): q = 1 Shannon, q = inf 1 / max(lambda), otherwise log(sum lambda^q) / (1 - q).
    0.0 for no answers."""
    n = len(sim)
    if n == 0:
        return 0.0
    lam = np.clip(np.linalg.eigvalsh(np.asarray(sim, dtype=np.float64) / n), 0.0, None)
    lam = lam[lam > 0]
    if q == 1.0:
        return float(np.exp(-np.sum(lam * np.log(lam))))
    if np.isinf(q):
        return float(1.0 / lam.max())
    return float(np.exp(np.log(np.sum(lam**q)) / (1.0 - q)))


def cluster_labels(sim: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Agglomerative clusters on cosine distance (1 - sim) with average linkage, merged while the
    average distance between two clusters is below `threshold`. [n] labels."""
    n = len(sim)
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    dist = np.clip(1.0 - sim, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    model = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="average",
                                    distance_threshold=threshold)
    return model.fit_predict(dist).astype(np.int64)


def answer_diversity(texts: list[str], embedder, threshold: float = 0.5, q: float = 1.0) -> dict[str, float]:
    """Diversity of one prompt's correct answers: `<kind>_cosine_distance`, `<kind>_vendi` and
    `<kind>_clusters`, kind = "lexical" (TF-IDF) or "semantic" (a sentence-embedding model)."""
    kind = getattr(embedder, "kind", "semantic")
    if not texts:
        return {f"{kind}_cosine_distance": 0.0, f"{kind}_vendi": 0.0, f"{kind}_clusters": 0.0}
    sim = cosine_similarity_matrix(embedder(list(texts)))
    return {f"{kind}_cosine_distance": mean_pairwise_cosine_distance(sim),
            f"{kind}_vendi": vendi_score(sim, q),
            f"{kind}_clusters": float(len(set(cluster_labels(sim, threshold).tolist())))}
