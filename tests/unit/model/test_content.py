"""Content embeddings: item text, the two encoders, the ridge projection into item space and its file format."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from streamrec.model import content
from streamrec.model.content import (
    ContentModelUnavailable,
    ContentProjection,
    FieldVocabulary,
    HashedTextEncoder,
    MiniLMEncoder,
    embed_items,
    item_fields,
    item_text,
    load_encoder,
    ridge_regression,
)
from tests.paths import REPO


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    pytest.importorskip("sentence_transformers")
    if not content.text_model_available():
        pytest.skip("the bundled all-MiniLM-L6-v2 weights are not installed")
    return MiniLMEncoder()


@pytest.fixture()
def linear_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``Y = X A + c + noise``: text vectors, item embeddings, the true map ``A`` and offset ``c``."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 32))
    a = rng.normal(size=(32, 16))
    c = rng.normal(size=16) * 3
    y = x @ a + c + 0.01 * rng.normal(size=(400, 16))
    return x, y, a, c


# --- item text -----------------------------------------------------------------------------------------------
def test_item_text_list_attributes_and_ignored_fields() -> None:
    record = {
        "item_id": "i12345",
        "title": "Acme  Phone X",
        "category": "phones",
        "price": 199.99,
        "available": True,
        "ts": 1_700_000_000.5,
        "attributes": ["category:phones", "brand:Acme", "", "color:red"],
    }
    text = item_text(record)
    assert text == "Acme Phone X. phones. category:phones, brand:Acme, color:red"
    for excluded in ("i12345", "199", "1700000000", "True"):
        assert excluded not in text


def test_item_text_dict_attributes_missing_and_empty_parts() -> None:
    base = {"item_id": "i1", "title": "Trail Shoe", "category": "shoes", "price": 5.0, "ts": 3.0}
    assert item_text({**base, "attributes": {"brand": "Acme", "color": "", "size": 42}}) == (
        "Trail Shoe. shoes. brand: Acme, size: 42"
    )
    assert item_text(base) == "Trail Shoe. shoes"
    assert item_text({**base, "title": "", "attributes": []}) == "shoes"
    assert item_text({"item_id": "i9", "price": 1.0}) == ""


# --- hashed encoder ------------------------------------------------------------------------------------------
_SUBPROCESS_CODE = """
import hashlib, sys
from streamrec.model.content import HashedTextEncoder
vectors = HashedTextEncoder(256).encode(["Acme red running shoes", "stainless steel frying pan 28cm"])
sys.stdout.write(hashlib.sha256(vectors.tobytes()).hexdigest())
"""


def test_hashed_encoder_is_identical_across_processes() -> None:
    texts = ["Acme red running shoes", "stainless steel frying pan 28cm"]
    import hashlib

    here = hashlib.sha256(HashedTextEncoder(256).encode(texts).tobytes()).hexdigest()
    digests = []
    for seed in ("1", "987654"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", _SUBPROCESS_CODE],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        digests.append(result.stdout.strip())
    assert digests == [here, here]


def test_hashed_encoder_shape_norms_and_similarity() -> None:
    encoder = HashedTextEncoder(512)
    assert encoder.name == "hashed-512"
    assert encoder.dim == 512
    vectors = encoder.encode(["Red running shoes", "red RUNNING shoes for trail", "stainless steel frying pan", "!!"])
    assert vectors.shape == (4, 512)
    assert vectors.dtype == np.float32 and vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors[:3], axis=1), 1.0, rtol=1e-6)
    assert not vectors[3].any()  # no word tokens: zero row, not NaN
    assert vectors[0] @ vectors[1] > 0.5
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


def test_hashed_encoder_uses_bigrams_and_sublinear_tf() -> None:
    encoder = HashedTextEncoder(4096)
    # Same words in another order share every unigram but no bigram, so they are similar but not identical.
    forward, backward = encoder.encode(["acme blue phone", "phone blue acme"])
    assert 0.3 < forward @ backward < 0.9
    # Repeated features weigh 1 + log(tf), not tf: "shoe shoe shoe" is unigram "shoe" x3 and bigram "shoe shoe" x2.
    single, repeated = encoder.encode(["shoe", "shoe shoe shoe"])
    unigram, bigram = 1 + math.log(3), 1 + math.log(2)
    assert single @ repeated == pytest.approx(unigram / math.hypot(unigram, bigram), abs=1e-5)


def test_hashed_encoder_empty_input_and_invalid_dim() -> None:
    empty = HashedTextEncoder(64).encode([])
    assert empty.shape == (0, 64) and empty.dtype == np.float32
    with pytest.raises(ValueError, match="positive"):
        HashedTextEncoder(0)


# --- MiniLM --------------------------------------------------------------------------------------------------
def test_minilm_encodes_semantic_similarity(minilm: MiniLMEncoder) -> None:
    assert minilm.name == "all-MiniLM-L6-v2"
    assert minilm.dim == 384
    vectors = minilm.encode(["red running shoes", "blue trail running shoes", "stainless steel frying pan", " "])
    assert vectors.shape == (4, 384)
    assert vectors.dtype == np.float32 and vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors[:3], axis=1), 1.0, rtol=1e-5)
    assert not vectors[3].any()
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert minilm.encode([]).shape == (0, 384)


def test_load_encoder_names_round_trip(minilm: MiniLMEncoder) -> None:
    for encoder in (HashedTextEncoder(), HashedTextEncoder(64), minilm):
        loaded = load_encoder(encoder.name)
        assert loaded.name == encoder.name
        assert loaded.dim == encoder.dim
        texts = ["acme trail shoes", "frying pan"]
        np.testing.assert_allclose(loaded.encode(texts), encoder.encode(texts), atol=1e-6)
    assert load_encoder("hashed").name == "hashed-512"
    assert load_encoder("minilm").name == "all-MiniLM-L6-v2"
    assert [encoder.name for encoder in content.candidate_encoders("auto")] == ["hashed-512", "all-MiniLM-L6-v2"]
    assert [encoder.name for encoder in content.candidate_encoders("hashed-64")] == ["hashed-64"]
    for bad in ("hashed-0", "hashed-x", "word2vec", "", "auto"):
        with pytest.raises(ValueError, match="unknown text encoder"):
            load_encoder(bad)


def test_load_encoder_without_text_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(content, "text_model_available", lambda: False)
    assert [encoder.name for encoder in content.candidate_encoders("auto")] == ["hashed-512"]
    for name in ("minilm", "all-MiniLM-L6-v2"):
        with pytest.raises(ContentModelUnavailable, match=r"streamrec\[text\]"):
            load_encoder(name)
    assert issubclass(ContentModelUnavailable, RuntimeError)


# --- projection ----------------------------------------------------------------------------------------------
def test_projection_recovers_a_linear_map(linear_data: tuple[np.ndarray, ...]) -> None:
    x, y, a, c = linear_data
    projection = ContentProjection.fit(x, y, "synthetic", ridge=1.0, holdout=0.1, seed=0)
    quality = projection.quality
    assert quality["n_train"] == 360 and quality["n_holdout"] == 40
    assert quality["holdout_cosine"] > 0.99
    assert quality["holdout_cosine"] > quality["holdout_cosine_mean_item"] + 0.2
    assert quality["holdout_hit_rate@10"] > 0.9
    np.testing.assert_allclose(projection.weights, a, atol=0.05)
    np.testing.assert_allclose(projection.bias, c, atol=0.05)
    assert (projection.text_dim, projection.dim) == (32, 16)
    assert projection.target_norm == pytest.approx(float(np.median(np.linalg.norm(y, axis=1))))


def test_projection_quality_is_low_when_text_says_nothing() -> None:
    rng = np.random.default_rng(1)
    projection = ContentProjection.fit(rng.normal(size=(400, 32)), rng.normal(size=(400, 16)), "noise")
    assert projection.quality["holdout_cosine"] < 0.3
    assert projection.quality["holdout_hit_rate@10"] < 0.3


def test_projection_without_holdout_reports_counts_only(linear_data: tuple[np.ndarray, ...]) -> None:
    x, y, _, _ = linear_data
    projection = ContentProjection.fit(x, y, "synthetic", holdout=0.0)
    assert projection.quality == {"n_train": 400, "n_holdout": 0}


def test_project_rescales_to_target_norm_and_keeps_zero_rows(linear_data: tuple[np.ndarray, ...]) -> None:
    x, y, _, _ = linear_data
    projection = ContentProjection.fit(x, y, "synthetic", ridge=50.0)
    queries = np.vstack([x[:5], np.zeros((1, 32))])
    out = projection.project(queries)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == (6, 16)
    np.testing.assert_allclose(np.linalg.norm(out[:5], axis=1), projection.target_norm, rtol=1e-5)
    assert not out[5].any()
    raw = x[:5] @ projection.weights + projection.bias
    for row in range(5):  # rescaling changes the norm only, never the direction
        assert _cosine(out[row], raw[row]) == pytest.approx(1.0, abs=1e-5)
    assert projection.project(np.zeros((0, 32))).shape == (0, 16)
    with pytest.raises(ValueError, match="dimension 31"):
        projection.project(np.zeros((2, 31)))


def test_more_text_dimensions_than_items_still_give_the_closed_form() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 200)), rng.normal(size=(40, 8))  # more dimensions than items
    ridge = 0.7
    projection = ContentProjection.fit(x, y, "synthetic", ridge=ridge, holdout=0.0)
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    primal = np.linalg.solve(xc.T @ xc + ridge * np.eye(200), xc.T @ yc)
    np.testing.assert_allclose(projection.weights, primal, atol=1e-5)
    np.testing.assert_allclose(projection.bias, y.mean(axis=0) - x.mean(axis=0) @ primal, atol=1e-5)


_CLUSTERS = {
    "phones": (["smartphone", "phone", "android", "charger", "screen"], ["Acme", "Zentel"]),
    "shoes": (["running", "shoes", "sneaker", "trail", "laces"], ["Stride", "Peak"]),
    "kitchen": (["frying", "pan", "skillet", "steel", "cookware"], ["Chefco", "Ironware"]),
}


def _cluster_catalog(rng: np.random.Generator, per_cluster: int, start: int = 0) -> list[dict]:
    records = []
    for category, (words, brands) in _CLUSTERS.items():
        for _ in range(per_cluster):
            title = " ".join(rng.choice(words, size=3, replace=False))
            brand = str(rng.choice(brands))
            records.append(
                {
                    "item_id": f"i{start + len(records)}",
                    "title": f"{brand} {title}",
                    "category": category,
                    "price": float(rng.uniform(5, 500)),
                    "available": True,
                    "ts": 0.0,
                    "attributes": [f"category:{category}", f"brand:{brand}"],
                }
            )
    return records


def test_new_item_lands_near_its_own_cluster() -> None:
    rng = np.random.default_rng(3)
    encoder = HashedTextEncoder(512)
    catalog = _cluster_catalog(rng, per_cluster=40)  # 120 items, 512-dim text
    centres = rng.normal(size=(len(_CLUSTERS), 16)) * 2
    cluster_of = np.repeat(np.arange(len(_CLUSTERS)), 40)
    embeddings = centres[cluster_of] + 0.5 * rng.normal(size=(len(catalog), 16))
    text_vectors = encoder.encode([item_text(record) for record in catalog])
    projection = ContentProjection.fit(text_vectors, embeddings, encoder.name, ridge=1.0)
    assert projection.quality["holdout_cosine"] > 0.7

    new_items = _cluster_catalog(np.random.default_rng(4), per_cluster=5, start=1000)
    new_cluster = np.repeat(np.arange(len(_CLUSTERS)), 5)
    vectors = embed_items(new_items, encoder, projection)
    assert vectors.shape == (15, 16)
    nearest = np.argsort(-(vectors @ embeddings.T), axis=1)[:, :10]
    assert np.all(cluster_of[nearest] == new_cluster[:, None])
    # The rescaled new items compete with trained ones: their scores are not dwarfed by the catalogue's.
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), projection.target_norm, rtol=1e-5)


def test_embed_items_refuses_another_encoders_projection() -> None:
    encoder = HashedTextEncoder(64)
    rng = np.random.default_rng(5)
    projection = ContentProjection.fit(rng.normal(size=(30, 64)), rng.normal(size=(30, 4)), "hashed-512")
    with pytest.raises(ValueError, match="hashed-512"):
        embed_items([{"title": "phone"}], encoder, projection)


def test_fit_rejects_bad_inputs() -> None:
    x, y = np.ones((10, 4)), np.ones((10, 3))
    with pytest.raises(ValueError, match="same positive number"):
        ContentProjection.fit(x, y[:9], "e")
    with pytest.raises(ValueError, match="ridge"):
        ContentProjection.fit(x, y, "e", ridge=0.0)
    with pytest.raises(ValueError, match="holdout"):
        ContentProjection.fit(x, y, "e", holdout=1.0)
    with pytest.raises(ValueError, match="NaN"):
        ContentProjection.fit(np.full((10, 4), np.nan), y, "e")


# --- catalogue fields ----------------------------------------------------------------------------------------
def test_item_fields_are_exact_values_once() -> None:
    record = {"title": "ignored", "category": " Shoes ", "attributes": ["brand:Stride", "brand:Stride", "color:red"]}
    assert item_fields(record) == ["category:Shoes", "brand:Stride", "color:red"]
    assert item_fields({"attributes": {"brand": "Acme"}}) == ["brand: Acme"]
    assert item_fields({"title": "only a title"}) == []


def test_the_vocabulary_keeps_the_most_common_values_and_ignores_unknown_ones() -> None:
    records = [{"category": "a", "attributes": ["x"]}, {"category": "a", "attributes": ["y"]}, {"category": "b"}]
    vocabulary = FieldVocabulary.fit(records, max_values=3)
    assert vocabulary.values == ("category:a", "category:b", "x")  # 2 records, then ties by value
    rows = vocabulary.encode([{"category": "a", "attributes": ["x"]}, {"category": "c", "attributes": ["x"]},
                              {"category": "c"}])  # fmt: skip
    np.testing.assert_allclose(rows[0], [1 / math.sqrt(2), 0, 1 / math.sqrt(2)], rtol=1e-6)
    np.testing.assert_allclose(rows[1], [0, 0, 1])  # the unknown category adds nothing
    assert not rows[2].any()
    assert len(FieldVocabulary.fit(records, max_values=0)) == 0


def _branded_items(rng: np.random.Generator, n: int, brands: np.ndarray) -> tuple[list[dict], np.ndarray]:
    """Items whose embedding is their brand's vector plus noise; their titles are words shared by every brand."""
    brand_of = rng.integers(0, len(brands), size=n)
    words = ["soft", "large", "blue", "classic", "set", "pack", "new", "pro"]
    records = [
        {"item_id": f"i{k}", "title": " ".join(rng.choice(words, 3)), "attributes": [f"brand:b{brand_of[k]}"]}
        for k in range(n)
    ]
    return records, brands[brand_of] + 0.3 * rng.normal(size=(n, brands.shape[1]))


def test_exact_field_columns_place_items_that_hashing_confuses() -> None:
    """400 brands hashed into 64 columns collide; a column per brand tells them apart."""
    rng = np.random.default_rng(6)
    brands = rng.normal(size=(400, 16))
    records, embeddings = _branded_items(rng, 4000, brands)
    encoder = HashedTextEncoder(64)
    text = encoder.encode([item_text(record) for record in records])
    hashed = ContentProjection.fit(text, embeddings, encoder.name)
    exact = ContentProjection.fit(text, embeddings, encoder.name, records=records, max_field_values=1000)
    assert len(exact.fields) == 400 and exact.text_dim == 64
    assert exact.quality["holdout_cosine"] > 0.9 > hashed.quality["holdout_cosine"] + 0.2
    new_records, new_embeddings = _branded_items(np.random.default_rng(7), 20, brands)
    rows = embed_items(new_records, encoder, exact)
    assert np.mean([_cosine(row, truth) for row, truth in zip(rows, new_embeddings, strict=True)]) > 0.9
    with pytest.raises(ValueError, match="record"):
        exact.project(text[:2])


def test_the_fit_in_chunks_is_the_closed_form(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    records, embeddings = _branded_items(rng, 50, rng.normal(size=(6, 4)) + 5.0)
    text = rng.normal(size=(50, 8)) + 3.0  # far from the origin: the centring must stay exact
    monkeypatch.setattr(content, "FIT_CHUNK_ROWS", 7)
    projection = ContentProjection.fit(text, embeddings, "e", ridge=0.5, holdout=0.2, records=records,
                                       max_field_values=10)  # fmt: skip
    features = np.hstack([text, projection.fields.encode(records)])
    weights, bias = ridge_regression(features, embeddings, 0.5)
    xc, yc = features - features.mean(axis=0), embeddings - embeddings.mean(axis=0)
    closed = np.linalg.solve(xc.T @ xc + 0.5 * np.eye(features.shape[1]), xc.T @ yc)
    np.testing.assert_allclose(weights, closed, atol=1e-8)
    np.testing.assert_allclose(projection.weights, closed, atol=1e-5)
    np.testing.assert_allclose(projection.bias, bias, atol=1e-5)
    assert projection.quality["n_train"] == 40 and projection.quality["n_holdout"] == 10


# --- persistence ---------------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path: Path, linear_data: tuple[np.ndarray, ...]) -> None:
    x, y, _, _ = linear_data
    projection = ContentProjection.fit(x, y, "hashed-32", ridge=2.5)
    path = tmp_path / "content.safetensors"
    projection.save(path)
    loaded = ContentProjection.load(path)
    assert loaded.encoder_name == "hashed-32"
    assert loaded.ridge == 2.5
    assert loaded.target_norm == projection.target_norm
    assert loaded.quality == projection.quality
    np.testing.assert_array_equal(loaded.weights, projection.weights)
    np.testing.assert_array_equal(loaded.project(x[:20]), projection.project(x[:20]))


def test_fields_survive_a_round_trip_and_version_1_files_still_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    records, embeddings = _branded_items(rng, 60, rng.normal(size=(5, 4)))
    text = rng.normal(size=(60, 8))
    projection = ContentProjection.fit(text, embeddings, "e", records=records, max_field_values=3)
    path = tmp_path / "content.safetensors"
    projection.save(path)
    loaded = ContentProjection.load(path)
    assert loaded.fields.values == projection.fields.values and len(loaded.fields) == 3
    np.testing.assert_array_equal(loaded.project(text[:5], records[:5]), projection.project(text[:5], records[:5]))
    old = tmp_path / "version-1.safetensors"
    _write(old, np.ones((8, 4), dtype=np.float32), np.zeros(4, dtype=np.float32))
    assert len(ContentProjection.load(old).fields) == 0 and ContentProjection.load(old).text_dim == 8


def _write(path: Path, weights: np.ndarray, bias: np.ndarray, **overrides: str) -> None:
    metadata = {
        "format": "streamrec.content_projection",
        "format_version": "1",
        "encoder_name": "hashed-8",
        "ridge": "1.0",
        "target_norm": "2.0",
        "quality": json.dumps({"n_train": 3}),
        **overrides,
    }
    save_file({"weights": weights, "bias": bias}, str(path), metadata=metadata)


def test_load_rejects_corrupt_and_inconsistent_files(tmp_path: Path) -> None:
    weights, bias = np.ones((8, 4), dtype=np.float32), np.zeros(4, dtype=np.float32)
    good = tmp_path / "good.safetensors"
    _write(good, weights, bias)
    assert ContentProjection.load(good).dim == 4  # the helper writes a valid file

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-10])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file at all")
    cases = {
        truncated: "cannot read",
        garbage: "cannot read",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError, match=message):
            ContentProjection.load(path)

    bad_files = {
        "shape": ((weights, np.zeros(5, dtype=np.float32)), {}, "does not match"),
        "nan": ((np.full((8, 4), np.nan, dtype=np.float32), bias), {}, "NaN"),
        "dtype": ((weights.astype(np.float64), bias), {}, "float32"),
        "format": ((weights, bias), {"format": "something-else"}, "not a content projection"),
        "norm": ((weights, bias), {"target_norm": "nan"}, "target_norm"),
        "quality": ((weights, bias), {"quality": "[1, 2]"}, "quality"),
        "fields": ((weights, bias), {"format_version": "2", "field_values": "[1]"}, "field_values"),
        "version": ((weights, bias), {"format_version": "3"}, "version"),
    }
    for name, ((w, b), overrides, message) in bad_files.items():
        path = tmp_path / f"{name}.safetensors"
        _write(path, w, b, **overrides)
        with pytest.raises(ValueError, match=message):
            ContentProjection.load(path)

    with pytest.raises(FileNotFoundError):
        ContentProjection.load(tmp_path / "missing.safetensors")


def test_the_projection_is_fitted_on_a_bounded_sample_of_items() -> None:
    from streamrec.model.config import TrainConfig
    from streamrec.model.train import fit_content_projection

    rng = np.random.default_rng(0)
    item_ids = [f"i{n}" for n in range(400)]
    catalog = [{"item_id": item, "title": f"thing {n % 37} model {n}", "category": f"c{n % 5}"} for n, item in
               enumerate(item_ids)]  # fmt: skip
    embeddings = rng.normal(size=(400, 8)).astype(np.float32)
    config = TrainConfig(content_encoder="hashed", content_fit_max_items=120)
    projection, manifest = fit_content_projection(catalog, item_ids, embeddings, config)
    assert projection is not None and manifest["content"]["items"] == 120
    _, everything = fit_content_projection(
        catalog, item_ids, embeddings, config.model_copy(update={"content_fit_max_items": 1000})
    )
    assert everything["content"]["items"] == 400


def _ids(records: list[dict]) -> list[str]:
    return [record["item_id"] for record in records]


def test_the_training_keeps_field_columns_only_where_they_place_held_out_items_better() -> None:
    from streamrec.model.config import TrainConfig
    from streamrec.model.train import fit_content_projection

    config = TrainConfig(content_encoder="hashed-64")
    rng = np.random.default_rng(10)
    branded, by_brand = _branded_items(rng, 2000, rng.normal(size=(300, 8)))  # the brand says it all
    projection, manifest = fit_content_projection(branded, _ids(branded), by_brand, config)
    assert projection is not None and len(projection.fields) == manifest["content"]["field_values"] == 300
    candidates = {c["field_values"]: c["holdout_cosine"] for c in manifest["content"]["candidates"]}
    assert set(candidates) == {0, 300} and candidates[300] > candidates[0]

    words, word_vectors = [f"w{k}" for k in range(40)], rng.normal(size=(40, 8))
    chosen = [rng.choice(40, 3, replace=False) for _ in range(600)]
    titled = [
        {"item_id": f"t{k}", "title": " ".join(words[w] for w in ws), "attributes": [f"c{rng.integers(50)}"]}
        for k, ws in enumerate(chosen)
    ]  # fmt: skip  (the title says it all, the colour is noise)
    by_title = np.array([word_vectors[ws].sum(axis=0) for ws in chosen]) + 0.1 * rng.normal(size=(600, 8))
    config = config.model_copy(update={"content_encoder": "hashed"})  # words apart: 512 columns for 40 words
    projection, manifest = fit_content_projection(titled, _ids(titled), by_title, config)
    assert projection is not None and len(projection.fields) == manifest["content"]["field_values"] == 0
    assert [c["field_values"] for c in manifest["content"]["candidates"]] == [0, 50]
    text_only = fit_content_projection(titled, _ids(titled), by_title,
                                       config.model_copy(update={"content_field_values": 0}))[1]  # fmt: skip
    assert [c["field_values"] for c in text_only["content"]["candidates"]] == [0]


def test_a_costlier_projection_must_place_held_out_items_clearly_better() -> None:
    from streamrec.model.train import CONTENT_CHOICE_MARGIN, choose_content_projection

    def scored(cosine: float | None) -> ContentProjection:
        quality = {"n_train": 9, "n_holdout": 1} | ({} if cosine is None else {"holdout_cosine": cosine})
        return ContentProjection(np.ones((4, 2)), np.zeros(2), 1.0, "e", 1.0, quality)

    cheap, slightly, clearly = scored(0.30), scored(0.30 + CONTENT_CHOICE_MARGIN / 2), scored(0.35)
    assert choose_content_projection([cheap, slightly]) is cheap
    assert choose_content_projection([cheap, slightly, clearly]) is clearly
    assert choose_content_projection([cheap, clearly, scored(0.355)]) is clearly  # measured against the choice
    unmeasured = scored(None)
    assert choose_content_projection([unmeasured, scored(None)]) is unmeasured  # too few items held out: the cheapest
