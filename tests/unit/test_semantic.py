"""Semantic diversity among correct answers: cosine distances, the Vendi score of order q and
agglomerative clusters against hand-computed values; the TF-IDF embedder labelled lexical; the
optional sentence-transformers embedder from a local folder, with its hash check."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from mitigate.core.fields import ConfigError
from mitigate.metrics.semantic import (
    EMBEDDERS,
    MiniLMEmbedder,
    answer_diversity,
    cluster_labels,
    cosine_similarity_matrix,
    file_sha256,
    make_embedder,
    mean_pairwise_cosine_distance,
    vendi_score,
)

SQ2 = math.sqrt(2.0)


def test_cosine_similarity_and_mean_pairwise_distance_by_hand():
    sim = cosine_similarity_matrix(np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]))
    np.testing.assert_allclose(sim, [[1, 0, 1 / SQ2], [0, 1, 1 / SQ2], [1 / SQ2, 1 / SQ2, 1]], atol=1e-12)
    # pairs: 1 - 0, 1 - 1/sqrt2, 1 - 1/sqrt2
    assert mean_pairwise_cosine_distance(sim) == pytest.approx((3 - SQ2) / 3)
    assert mean_pairwise_cosine_distance(sim[:1, :1]) == 0.0 and mean_pairwise_cosine_distance(np.zeros((0, 0))) == 0.0


def test_zero_vectors_are_their_own_direction():
    sim = cosine_similarity_matrix(np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]))
    np.testing.assert_allclose(sim, [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    assert np.all(np.linalg.eigvalsh(sim) > -1e-12)  # still positive semi-definite


def test_vendi_score_by_hand():
    # K = [[1, s], [s, 1]]: eigenvalues of K / 2 are (1 + s) / 2 and (1 - s) / 2
    k = np.array([[1.0, 0.5], [0.5, 1.0]])
    lam = np.array([0.75, 0.25])
    assert vendi_score(k, q=1) == pytest.approx(math.exp(-(lam * np.log(lam)).sum()))  # 1.7548
    assert vendi_score(k, q=1) == pytest.approx(1.75476, abs=1e-5)
    assert vendi_score(k, q=2) == pytest.approx(1 / (0.75**2 + 0.25**2))  # 1.6
    assert vendi_score(k, q=0.5) == pytest.approx((math.sqrt(0.75) + math.sqrt(0.25)) ** 2)
    assert vendi_score(k, q=math.inf) == pytest.approx(1 / 0.75)
    assert vendi_score(np.ones((4, 4))) == pytest.approx(1.0)  # all the same: one effective answer
    assert vendi_score(np.eye(5)) == pytest.approx(5.0) and vendi_score(np.eye(5), q=2) == pytest.approx(5.0)
    assert vendi_score(np.zeros((0, 0))) == 0.0


def test_agglomerative_clusters_by_threshold():
    # two tight groups 90 degrees apart: within-group cosine distance ~0.005, across ~1
    x = np.array([[1.0, 0.1], [1.0, 0.0], [1.0, -0.1], [0.0, 1.0], [0.1, 1.0]])
    sim = cosine_similarity_matrix(x)
    labels = cluster_labels(sim, threshold=0.5)
    assert len(set(labels.tolist())) == 2 and len(set(labels[:3])) == 1 and labels[3] == labels[4] != labels[0]
    assert len(set(cluster_labels(sim, threshold=1e-6).tolist())) == 5
    assert len(set(cluster_labels(sim, threshold=1.5).tolist())) == 1
    assert cluster_labels(sim[:1, :1]).tolist() == [0] and cluster_labels(np.zeros((0, 0))).tolist() == []


def test_tfidf_is_labelled_lexical_and_gives_the_extremes():
    emb = make_embedder("tfidf")
    same = answer_diversity(["The mitochondrion makes ATP."] * 4, emb)
    assert same == pytest.approx({"lexical_cosine_distance": 0.0, "lexical_vendi": 1.0, "lexical_clusters": 1.0})
    disjoint = answer_diversity(["alpha beta", "gamma delta", "epsilon zeta"], emb)
    assert disjoint == pytest.approx({"lexical_cosine_distance": 1.0, "lexical_vendi": 3.0, "lexical_clusters": 3.0})
    partial = answer_diversity(["cells make energy", "cells make energy", "plants use light"], emb)
    assert partial["lexical_cosine_distance"] == pytest.approx(2 / 3)
    assert partial["lexical_clusters"] == 2.0 and 1.0 < partial["lexical_vendi"] < 2.0
    # empty and punctuation-only answers do not crash: they are one direction of their own
    odd = answer_diversity(["", "...", "real words here"], emb)
    assert odd["lexical_clusters"] == 2.0
    assert answer_diversity([], emb) == {"lexical_cosine_distance": 0.0, "lexical_vendi": 0.0, "lexical_clusters": 0.0}


def test_embedder_registry():
    assert {"tfidf", "minilm"} <= set(EMBEDDERS.names())
    with pytest.raises(ConfigError, match="unknown embedder 'tfidff'.*tfidf"):
        make_embedder("tfidff")


def test_minilm_without_the_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'mitigate\[sciqa\]'"):
        MiniLMEmbedder("/anything")


def test_minilm_from_a_local_folder_with_hash_check(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    try:  # sentence-transformers >= 6; before it, `sentence_transformers.models`
        from sentence_transformers.sentence_transformer import modules as st_models
    except ImportError:
        from sentence_transformers import models as st_models
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizers.BertNormalizer(), pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(["cells make energy", "plants use light"], trainers.WordPieceTrainer(
        vocab_size=100, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(bert)
    BertTokenizerFast(tokenizer_object=tok).save_pretrained(bert)
    word = st_models.Transformer(str(bert))
    folder = tmp_path / "minilm"
    dim = (getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension)()
    st.SentenceTransformer(modules=[word, st_models.Pooling(dim, "mean"), st_models.Normalize()]).save(str(folder))
    digest = file_sha256(folder / "model.safetensors")
    emb = make_embedder("minilm", path=str(folder), sha256=digest)
    vectors = emb(["cells make energy", "plants use light", "cells make energy"])
    assert vectors.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    res = answer_diversity(["cells make energy"] * 3, emb)
    assert res["semantic_clusters"] == 1.0 and res["semantic_cosine_distance"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="expected 0000"):
        make_embedder("minilm", path=str(folder), sha256="0000")
    with pytest.raises(ConfigError, match="model folder not found"):
        make_embedder("minilm", path=str(tmp_path / "missing"))
