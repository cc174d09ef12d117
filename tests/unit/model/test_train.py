"""Training end to end on data with known structure, and the artifact directory it publishes."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from streamrec.model.artifacts import (
    CURVE_FILE,
    INDEX_FILE,
    ITEM_IDS_FILE,
    ITEM_KNN_FILE,
    LATEST_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    SEGMENTS_FILE,
    load_artifacts,
)
from streamrec.model.baselines import Histories
from streamrec.model.config import TrainConfig
from streamrec.model.evaluate import interest_vectors, training_summary
from streamrec.model.event_log import EventLog
from streamrec.model.events import Event, EventType
from streamrec.model.splits import leave_one_out
from streamrec.model.train import (
    RefitStart,
    _refit,
    attach_item_knn,
    build_vocabulary,
    evaluation_users,
    first_fit_windows,
    fit_blend,
    interest_queries,
    reindex,
    train_artifacts,
    type_weights,
    validation_sample,
    validation_users,
)
from streamrec.stream.user_state import InterestModel

N_CATEGORIES, PER_CATEGORY = 6, 20
# No refit: most tests here read the early-stopped model; the refit has tests of its own.
CONFIG = TrainConfig(
    dim=32, max_len=20, layers=1, heads=2, batch_size=64, max_epochs=20, patience=4, seed=7, refit=False
)


def changed(config: TrainConfig, **changes: object) -> TrainConfig:
    """``config`` with ``changes``, validated as a new configuration is."""
    return TrainConfig(**(config.model_dump() | changes))


def structured_log(n_users: int = 300, seed: int = 0) -> EventLog:
    """Users walk through one category in a fixed order (item k -> k + 1), sometimes clicking.

    Popularity is nearly flat, so it cannot beat chance; the successor rule is learnable by a sequence model,
    and the category by the interest vector.
    """
    rng = np.random.default_rng(seed)
    events = []
    for user in range(n_users):
        category, position = rng.integers(N_CATEGORIES), rng.integers(PER_CATEGORY)
        ts = 1.7e9 + rng.uniform(0, 10 * 86_400)
        for _ in range(rng.integers(8, 16)):
            item = f"i{category * PER_CATEGORY + position}"
            events.append(Event(f"u{user}", item, EventType.VIEW, ts))
            ts += rng.uniform(30, 600)
            if rng.random() < 0.3:
                events.append(Event(f"u{user}", item, EventType.CLICK, ts))
                ts += rng.uniform(30, 600)
            position = (position + 1) % PER_CATEGORY if rng.random() < 0.85 else rng.integers(PER_CATEGORY)
    return EventLog.from_events(events, name="structured")


@pytest.fixture(scope="module")
def log() -> EventLog:
    return structured_log()


@pytest.fixture(scope="module")
def trained(log: EventLog, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_artifacts(log, tmp_path_factory.mktemp("train"), CONFIG, progress=False)


def manifest_of(directory: Path) -> dict:
    return orjson.loads((directory / MANIFEST_FILE).read_bytes())


def test_ranker_and_interest_vector_beat_popularity(trained: Path) -> None:
    test = manifest_of(trained)["metrics"]["test"]
    popularity = test["popularity"]["HR@10"]
    assert test["ranker"]["HR@10"] > popularity + 0.3
    assert test["retrieval"]["HR@10"] > popularity + 0.1
    assert test["retrieve_rerank"]["HR@10"] > popularity + 0.3
    assert test["ranker"]["NDCG@10"] > test["popularity"]["NDCG@10"]


def test_artifact_directory_and_manifest(trained: Path, log: EventLog) -> None:
    root = trained.parent
    assert (root / LATEST_FILE).read_text().strip() == trained.name
    assert {p.name for p in trained.iterdir()} == {
        MODEL_FILE, ITEM_IDS_FILE, INDEX_FILE, CURVE_FILE, MANIFEST_FILE, ITEM_KNN_FILE, SEGMENTS_FILE,
    }  # fmt: skip
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging or temporary files left
    assert (trained / CURVE_FILE).read_bytes().startswith(b"\x89PNG")
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in trained.iterdir())  # readable by a worker user

    manifest = manifest_of(trained)
    fingerprint = log.fingerprint()
    assert manifest["format_version"] == 1
    assert manifest["version"] == trained.name
    assert trained.name.endswith("-" + fingerprint[:8])
    assert datetime.fromisoformat(manifest["created_at"]).tzinfo is not None
    assert manifest["data_fingerprint"] == fingerprint
    assert manifest["dataset"] == "structured"
    assert (
        manifest["n_items"] == N_CATEGORIES * PER_CATEGORY == len(orjson.loads((trained / ITEM_IDS_FILE).read_bytes()))
    )
    assert manifest["dim"] == 32
    assert manifest["ranker_config"] == {
        "n_items": 120, "dim": 32, "max_len": 20, "n_layers": 1, "n_heads": 2, "dropout": 0.2,
        "norm": CONFIG.norm, "ffn_factor": CONFIG.ffn_factor, "filter_mix": CONFIG.filter_mix,
        "positions": CONFIG.positions,
    }  # fmt: skip
    assert manifest["train_config"]["event_weights"] == CONFIG.event_weights
    assert manifest["train_config"]["half_life_s"] == CONFIG.half_life_s
    assert manifest["index"]["kind"] == "flat" and manifest["index"]["recall@100"] == pytest.approx(1.0)
    for name in ("ranker", "retrieval", "popularity"):
        assert {"HR@10", "NDCG@10", "MRR"} <= set(manifest["metrics"]["test"][name])
    assert set(manifest["files"]) == {MODEL_FILE, ITEM_IDS_FILE, INDEX_FILE, CURVE_FILE, ITEM_KNN_FILE, SEGMENTS_FILE}
    assert sum(manifest["segments"]["users_per_segment"]) == manifest["data"]["users"]
    assert "content" not in manifest  # trained without a catalog: new items cannot be embedded
    # The item-kNN's memory and blend weight are the grid's best pair by validation NDCG@10.
    by_memory = manifest["blend_validation"]["NDCG@10_by_memory"]
    assert set(by_memory) == {f"n_recent={n},decay={d:g}" for n, d in CONFIG.item_knn_recency}
    best = max(value for by_weight in by_memory.values() for value in by_weight.values())
    knn = manifest["item_knn"]
    by_weight = manifest["blend_validation"]["NDCG@10"]
    assert by_weight == by_memory[f"n_recent={knn['n_recent']},decay={knn['decay']:g}"]
    assert set(by_weight) == {str(float(w)) for w in CONFIG.blend_weights}
    assert by_weight[str(manifest["blend_weight"])] == best
    by_transition = manifest["blend_validation"]["NDCG@10_by_transition_weight"]
    assert by_transition[str(knn["transition_weight"])] == by_weight
    assert set(by_transition) == {str(float(w)) for w in CONFIG.item_knn_transition_weights}
    assert best == max(value for row in by_transition.values() for value in row.values())
    assert knn["max_neighbors"] == 200
    assert (knn["n_recent"], knn["decay"]) in CONFIG.item_knn_recency
    history = manifest["training"]["history"]
    assert 1 <= manifest["training"]["best_epoch"] <= len(history) <= CONFIG.max_epochs


def test_training_is_deterministic_and_publishes_a_new_version(trained: Path, log: EventLog) -> None:
    config = changed(CONFIG, max_epochs=2)
    first = train_artifacts(log, trained.parent / "again", config, progress=False)
    second = train_artifacts(log, trained.parent / "again", config, progress=False)
    assert first != second and first.parent == second.parent
    assert (second.parent / LATEST_FILE).read_text().strip() == second.name
    assert first.is_dir()  # an older version stays until someone removes it
    assert manifest_of(first)["metrics"]["test"] == manifest_of(second)["metrics"]["test"]


def test_training_query_is_the_workers_interest_vector(log: EventLog) -> None:
    """The loss's query at every event equals what ``stream/user_state.py`` computes incrementally."""
    config = TrainConfig(half_life_s=900.0)  # short, so the decay really matters over these sessions
    item_ids = build_vocabulary(log)
    row_of = {item: row for row, item in enumerate(item_ids)}
    table = np.random.default_rng(1).normal(size=(len(item_ids), 8)).astype(np.float32)
    interest = InterestModel(table, row_of, config.event_weights, config.half_life_s, 50, 0, "v")
    user_events = [e for e in log.events() if e.user_id == "u3"]
    state = interest.new_state("u3")
    expected = []
    for event in user_events:
        interest.apply(state, event)
        assert state.vector is not None
        expected.append(state.vector.copy())

    split = leave_one_out(log, row_of)
    user = split.users.tolist().index("u3")
    span = slice(split.offsets[user], split.offsets[user + 1])
    weights = torch.tensor(type_weights(config)[split.event_types[span]])
    stamps = split.timestamps[span]
    exponent = torch.tensor((stamps - stamps[-1]) / config.half_life_s, dtype=torch.float32)
    embedded = torch.from_numpy(table[split.items[span]])
    queries = interest_queries(embedded[None], weights[None], exponent[None])[0].numpy()
    np.testing.assert_allclose(queries, np.stack(expected), rtol=1e-4, atol=1e-5)

    # The evaluation path (whole history, numpy) agrees too.
    offline = interest_vectors(
        split, split.offsets[:-1], split.offsets[1:], table, type_weights(config), config.half_life_s
    )
    np.testing.assert_allclose(offline[user], expected[-1], rtol=1e-4, atol=1e-5)


def test_config_and_data_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="event_weights"):
        TrainConfig(event_weights={"view": 1.0})
    with pytest.raises(ValueError):
        TrainConfig(half_life_s=0)
    too_short = EventLog.from_events([Event("u", "a", EventType.VIEW, 1.0), Event("u", "b", EventType.VIEW, 2.0)])
    with pytest.raises(ValueError, match="3 interactions"):
        train_artifacts(too_short, tmp_path, CONFIG, progress=False)
    assert build_vocabulary(structured_log(n_users=5), min_item_count=10_000) == []


def test_blending_can_be_turned_off(log: EventLog) -> None:
    split = leave_one_out(log, {item: row for row, item in enumerate(build_vocabulary(log))})
    for weights in ((), (0.0,)):
        assert fit_blend(None, split, 120, changed(CONFIG, blend_weights=weights)) == (None, {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="blend_weights"):
        changed(CONFIG, blend_weights=(-1.0,))


class _NoRanker:
    """A ranker without an opinion: every item scores 0, so only the item-kNN orders the catalogue."""

    def score_users(self, histories: Histories) -> np.ndarray:
        return np.zeros((len(histories), 200), dtype=np.float32)


def test_validation_chooses_the_item_knn_memory_that_sees_the_signal() -> None:
    # Each user's taste is a group of items: two of them first, then five items of a shared noise pool, then two
    # more of the group (validation and test). Only a memory reaching six items back sees the taste.
    rng = np.random.default_rng(5)
    events: list[Event] = []
    for user in range(400):
        group = rng.integers(10)
        taste = [f"g{group}-{i}" for i in rng.choice(10, 4, replace=False)]
        noise = [f"n{i}" for i in rng.choice(100, 5, replace=False)]
        for step, item in enumerate([*taste[:2], *noise, *taste[2:]]):
            events.append(Event(f"u{user}", item, EventType.BUY, float(step)))
    log = EventLog.from_events(events)
    vocabulary = build_vocabulary(log)
    assert len(vocabulary) <= 200
    split = leave_one_out(log, {item: row for row, item in enumerate(vocabulary)})
    config = changed(CONFIG, item_knn_recency=((2, 0.6), (10, 1.0)), blend_weights=(0.0, 1.0))
    _, manifest = fit_blend(_NoRanker(), split, 200, config)  # type: ignore[arg-type]
    assert (manifest["item_knn"]["n_recent"], manifest["item_knn"]["decay"]) == (10, 1.0)
    by_memory = manifest["blend_validation"]["NDCG@10_by_memory"]
    assert by_memory["n_recent=10,decay=1"]["1.0"] > 2 * by_memory["n_recent=2,decay=0.6"]["1.0"]
    for recency in ((), ((0, 0.5),), ((3, 0.0),), ((3, 1.5),)):
        with pytest.raises(ValueError, match="item_knn_recency"):
            changed(CONFIG, item_knn_recency=recency)


def test_validation_weighs_in_the_transitions_where_shoppers_move_in_an_order() -> None:
    # Every user walks five steps along a ring of 50 items. From the last item, the cosine ties the item before it
    # (still in the history, so still ranked) with the one after it; only the transitions tell which comes next.
    rng = np.random.default_rng(7)
    events = [
        Event(f"u{user}", f"i{(start + step) % 50}", EventType.VIEW, float(step))
        for user, start in enumerate(rng.integers(0, 50, 400))
        for step in range(5)
    ]
    log = EventLog.from_events(events)
    row_of = {item: row for row, item in enumerate(build_vocabulary(log))}
    split = leave_one_out(log, row_of)
    config = changed(
        CONFIG, item_knn_recency=((1, 1.0),), blend_weights=(0.0, 1.0), item_knn_transition_weights=(0.0, 1.0)
    )
    served, manifest = fit_blend(_NoRanker(), split, 200, config)  # type: ignore[arg-type]
    assert manifest["item_knn"]["transition_weight"] == 1.0
    by_weight = manifest["blend_validation"]["NDCG@10_by_transition_weight"]
    assert by_weight["1.0"]["1.0"] > by_weight["0.0"]["1.0"] + 0.1  # the tie costs about 0.18 of NDCG@10
    assert served is not None
    first, second = row_of["i0"], row_of["i1"]
    following, preceding = served.similarities_of_pairs(np.array([first, second]), np.array([second, first]))
    assert following > preceding  # the served similarity is directed too
    with pytest.raises(ValueError, match="item_knn_transition_weights"):
        changed(CONFIG, item_knn_transition_weights=(-1.0,))


def test_attach_item_knn_publishes_a_new_version_of_an_old_artifact(trained: Path, log: EventLog) -> None:
    attached = attach_item_knn(trained, log)
    assert attached.parent == trained.parent and attached != trained
    assert (trained.parent / LATEST_FILE).read_text().strip() == attached.name
    old, new = manifest_of(trained), manifest_of(attached)
    assert new["derived_from"] == trained.name
    assert new["blend_weight"] == old["blend_weight"] and new["blend_validation"] == old["blend_validation"]
    assert {name: digest for name, digest in new["files"].items() if name != MANIFEST_FILE} == old["files"]
    artifacts = load_artifacts(attached)
    assert artifacts.item_knn is not None and artifacts.blend_weight == old["blend_weight"]


def test_reindex_rebuilds_only_the_index_with_the_new_settings(trained: Path) -> None:
    reindexed = reindex(trained, changed(CONFIG, index_kind="ivf", ivf_nlist=3, nprobe=2))
    assert (trained.parent / LATEST_FILE).read_text().strip() == reindexed.name
    old, new = manifest_of(trained), manifest_of(reindexed)
    assert old["index"]["kind"] == "flat" and new["derived_from"] == trained.name
    assert new["index"] == {"kind": "ivf", "file": INDEX_FILE, "params": {"nlist": 3, "nprobe": 2}}
    assert new["train_config"]["index_kind"] == "ivf" and new["train_config"]["dim"] == old["train_config"]["dim"]
    unchanged = {name: digest for name, digest in new["files"].items() if name not in (MANIFEST_FILE, INDEX_FILE)}
    assert unchanged == {name: digest for name, digest in old["files"].items() if name != INDEX_FILE}
    assert new["metrics"] == old["metrics"]
    artifacts = load_artifacts(reindexed)
    assert artifacts.index.kind == "ivf" and artifacts.index.search_params["nprobe"] == 2
    # Every item is still found as its own best match... of an index that probes all its cells.
    artifacts.index.set_search_params(1, 3)
    table = artifacts.item_embeddings
    exact = (table @ table.T).argmax(axis=1)
    assert np.array_equal(artifacts.index.search(table, 1)[1][:, 0], exact)
    with pytest.raises(ValueError, match="at least 1,000 items"):
        reindex(trained, changed(CONFIG, index_kind="ivfpq"))


def test_a_catalog_gives_the_artifacts_a_content_projection(trained_artifacts: Path, shop) -> None:
    """The session model was trained with the simulated shop's catalog (tests/conftest.py)."""
    from streamrec.model.artifacts import load_artifacts
    from streamrec.model.content import item_text, load_encoder

    artifacts = load_artifacts(trained_artifacts)
    assert artifacts.content is not None and artifacts.segments is not None
    assert artifacts.manifest["content"]["encoder"] == artifacts.content.encoder_name == "hashed-512"
    assert artifacts.manifest["content"]["items"] == len(shop[1])
    # The projection places an item's text nearer to its own learned embedding than the average item is.
    encoder = load_encoder(artifacts.content.encoder_name)
    # The map with the shop's field columns was fitted too, and the better of the two on held-out items kept.
    candidates = artifacts.manifest["content"]["candidates"]
    assert [c["field_values"] > 0 for c in candidates] == [False, True]
    best = max(candidates, key=lambda c: c["holdout_cosine"])
    assert len(artifacts.content.fields) == artifacts.manifest["content"]["field_values"] == best["field_values"]
    projected = artifacts.content.project(encoder.encode([item_text(record) for record in shop[1]]), shop[1])
    learned = artifacts.item_embeddings[[artifacts.row_of[record["item_id"]] for record in shop[1]]]
    unit = learned / np.linalg.norm(learned, axis=1, keepdims=True)
    own = np.einsum("id,id->i", projected, unit)
    assert own.mean() > (projected @ unit.T).mean() + 0.1


def test_the_sampled_softmax_learns_the_sequence_too(log: EventLog, tmp_path: Path) -> None:
    # 120 items, 32 shared negatives: a quarter of the catalogue per batch; the table updated sparsely.
    config = changed(
        CONFIG, softmax="sampled", sampled_negatives=32, sparse_table_min_items=0, blend_weights=(0.0,), n_segments=0
    )
    manifest = manifest_of(train_artifacts(log, tmp_path, config, progress=False))
    assert manifest["training"]["softmax"] == "sampled" and manifest["training"]["sparse_table_updates"]
    test = manifest["metrics"]["test"]
    assert test["ranker"]["HR@10"] > test["popularity"]["HR@10"] + 0.3
    assert test["retrieval"]["HR@10"] > test["popularity"]["HR@10"] + 0.1


def test_the_interest_vector_can_learn_through_a_sampled_softmax_beside_the_full_one(
    log: EventLog, tmp_path: Path
) -> None:
    config = changed(CONFIG, retrieval_softmax="sampled", sampled_negatives=32, blend_weights=(0.0,), n_segments=0)
    manifest = manifest_of(train_artifacts(log, tmp_path, config, progress=False))
    training = manifest["training"]
    assert (training["softmax"], training["retrieval_softmax"]) == ("full", "sampled")
    test = manifest["metrics"]["test"]
    assert test["ranker"]["HR@10"] > test["popularity"]["HR@10"] + 0.3
    assert test["retrieval"]["HR@10"] > test["popularity"]["HR@10"] + 0.1


def test_the_interest_vector_learns_from_a_share_of_the_positions(log: EventLog, tmp_path: Path) -> None:
    config = changed(CONFIG, retrieval_share=0.25, blend_weights=(0.0,), n_segments=0)
    manifest = manifest_of(train_artifacts(log, tmp_path, config, progress=False))
    test = manifest["metrics"]["test"]
    assert test["ranker"]["HR@10"] > test["popularity"]["HR@10"] + 0.3
    assert test["retrieval"]["HR@10"] > test["popularity"]["HR@10"] + 0.1


def test_evaluation_ranks_every_user_within_the_score_budget_and_a_fixed_sample_above() -> None:
    assert evaluation_users(500, 1_000, CONFIG).tolist() == list(range(500))
    tight = changed(CONFIG, eval_max_scores=100_000)
    sample = evaluation_users(500, 1_000, tight)
    assert len(sample) == 100 and len(set(sample.tolist())) == 100 and sample.max() < 500
    assert (evaluation_users(500, 1_000, tight) == sample).all()  # every pass of a run ranks the same users


def test_a_refit_learns_the_validation_items_for_as_many_epochs_as_early_stopping_chose(log: EventLog, tmp_path: Path):
    config = changed(CONFIG, refit=True, max_epochs=4, blend_weights=(0.0, 4.0))
    manifest = manifest_of(train_artifacts(log, tmp_path, config, progress=False))
    training = manifest["training"]
    refit = training["refit"]
    assert refit["epochs"] == training["best_epoch"] == len(refit["history"])
    # An evaluation report says the published model saw the validation items.
    summary = training_summary(manifest)
    assert summary["trained_before"] == "test" and summary["refit_epochs"] == refit["epochs"]
    knn = manifest["item_knn"]
    assert summary["item_knn"] == {key: knn[key] for key in ("n_recent", "decay", "transition_weight")}
    chosen = summary["blend_validation_ndcg@10"][str(knn["transition_weight"])]
    assert chosen == manifest["blend_validation"]["NDCG@10"]
    with pytest.raises(ValueError, match="refit on the validation items"):
        attach_item_knn(tmp_path, log)  # a weight chosen on items its ranker learned would be biased
    # Every user adds the validation item as a target, so the refit has at least as many windows.
    assert refit["training_windows"] >= manifest["data"]["training_windows"]
    assert set(manifest["blend_validation"]["NDCG@10"]) == {"0.0", "4.0"}  # chosen on the early-stopped model
    assert manifest["metrics"]["test"]["ranker"]["HR@10"] > manifest["metrics"]["test"]["popularity"]["HR@10"] + 0.3


def test_validation_users_hold_out_their_validation_item_while_every_other_user_trains_on_theirs(
    log: EventLog, tmp_path: Path
) -> None:
    config = changed(CONFIG, validation_users=0.25, refit=True, max_epochs=4, blend_weights=(0.0, 4.0))
    split = leave_one_out(log, {item: row for row, item in enumerate(build_vocabulary(log))})
    validating = validation_users(split.n_users, config)
    assert validating is not None and len(validating) == round(0.25 * split.n_users)
    assert (validation_users(split.n_users, config) == validating).all()  # seeded: reblend and distil find them
    assert (validation_sample(split.n_users, 120, config) == validating).all()
    others = np.setdiff1d(np.arange(split.n_users), validating)

    windows = first_fit_windows(split, config)
    trained = np.zeros(split.n_events, dtype=bool)
    for end, length in zip(windows.ends, windows.lengths, strict=True):
        trained[end - length : end] |= windows.targets[end - length : end] >= 0
    # The event before each validation item is a training target for the other users, never for the validation users.
    last_train = split.valid_start - 1
    assert trained[last_train[others]].any() and not trained[last_train[validating]].any()
    assert not (windows.targets[last_train[validating]] >= 0).any()

    directory = train_artifacts(log, tmp_path, config, progress=False)
    manifest = manifest_of(directory)
    training = manifest["training"]
    assert training["validation_users"] == len(validating) and "refit" not in training  # one fit, published
    assert training_summary(manifest)["trained_before"] == f"test except the {len(validating)} validation users"
    assert manifest["metrics"]["test"]["ranker"]["users"] == split.n_users  # tested on every user
    assert manifest["metrics"]["test"]["ranker"]["HR@10"] > manifest["metrics"]["test"]["popularity"]["HR@10"] + 0.3
    # Its blend was chosen on items its ranker never learned, so it can be chosen again.
    reblended = manifest_of(attach_item_knn(directory, log))
    assert reblended["blend_weight"] in (0.0, 4.0)


def test_a_refit_depends_on_the_epochs_chosen_not_on_what_ran_before_it(log: EventLog) -> None:
    """Early stopping runs past the best epoch by ``patience`` epochs, consuming random numbers: the published model
    must not depend on how many."""
    split = leave_one_out(log, {item: row for row, item in enumerate(build_vocabulary(log))})
    config = changed(CONFIG, refit=True)
    first, _ = _refit(split, config, 120, 2, progress=False)
    torch.rand(1_000)  # what extra first-fit epochs would have drawn
    np.random.default_rng(0).random(1_000)
    again, _ = _refit(split, config, 120, 2, progress=False)
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_refit_can_train_the_early_stopped_model_on(trained: Path, log: EventLog, tmp_path: Path) -> None:
    split = leave_one_out(log, {item: row for row, item in enumerate(build_vocabulary(log))})
    config = changed(CONFIG, refit=True, refit_epochs=1)
    early = load_artifacts(trained)
    temperature = manifest_of(trained)["training"]["history"][-1]["retrieval_temperature"]
    _, fresh = _refit(split, config, 120, 1, progress=False)
    best = manifest_of(trained)["training"]["best_epoch"]
    start = RefitStart(early.ranker, temperature, "the early-stopped model", best)
    continued, record = _refit(split, config, 120, 1, progress=False, start=start)
    assert continued is early.ranker and record["from"] == "the early-stopped model"
    # A trained model starts where a fresh one ends many epochs later: its first epoch's loss is far lower.
    assert record["history"][0]["ranking_loss"] < 0.8 * fresh["history"][0]["ranking_loss"]
    manifest = manifest_of(train_artifacts(log, tmp_path, changed(config, max_epochs=3), progress=False))
    refit = manifest["training"]["refit"]
    assert refit["epochs"] == len(refit["history"]) == 1 and refit["from"] == "the early-stopped model"
    assert training_summary(manifest)["refit_from"] == "the early-stopped model"
    assert manifest["metrics"]["test"]["ranker"]["HR@10"] > manifest["metrics"]["test"]["popularity"]["HR@10"] + 0.3


def test_a_refit_can_resume_the_first_fit_from_a_share_of_the_chosen_epochs(
    log: EventLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamrec.model.train as training

    starts: list[RefitStart | None] = []
    refit = training._refit

    def recorded(*args: object, **kwargs: object) -> object:
        starts.append(args[5] if len(args) > 5 else None)
        return refit(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(training, "_refit", recorded)
    config = changed(CONFIG, refit=True, refit_resume=0.5, max_epochs=4, patience=10)
    manifest = manifest_of(train_artifacts(log, tmp_path, config, progress=False))
    best, refit = manifest["training"]["best_epoch"], manifest["training"]["refit"]
    resumed = best // 2
    assert best >= 2  # this log keeps improving for a few epochs, so the refit resumes from a trained epoch
    assert refit["from"] == f"the first fit's epoch {resumed}"
    assert refit["epochs"] == len(refit["history"]) == best - resumed
    # It starts at the interest-vector temperature the first fit had at that epoch.
    (start,) = starts
    assert start is not None and start[1] == manifest["training"]["history"][resumed - 1]["retrieval_temperature"]
    # Resumed from epoch `resumed`, the refit's first epoch is as far along as the first fit's next one (a fresh
    # model's first loss is the first fit's first, 13 % higher on this log).
    first_fit = [epoch["ranking_loss"] for epoch in manifest["training"]["history"]]
    assert refit["history"][0]["ranking_loss"] < 1.02 * first_fit[resumed] < 0.95 * first_fit[0]
    assert training_summary(manifest)["refit_from"] == f"the first fit's epoch {resumed}"
    assert manifest["metrics"]["test"]["ranker"]["HR@10"] > manifest["metrics"]["test"]["popularity"]["HR@10"] + 0.3
    assert not list(Path(tempfile.gettempdir()).glob("streamrec-resume-*"))


def test_a_sampled_warmup_trains_the_first_epochs_of_each_fit_with_the_sampled_softmax(
    log: EventLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamrec.model.train as training

    used: list[tuple[int, str, str]] = []  # (epoch, ranker's softmax, interest vector's): first fit, then refit
    epoch = training._Trainer.epoch

    def recorded(self: training._Trainer, number: int, rng: np.random.Generator, progress: bool) -> dict:
        ranking, retrieval = self.softmaxes(number)
        used.append((number, ranking.name, retrieval.name))
        return epoch(self, number, rng, progress)

    monkeypatch.setattr(training._Trainer, "epoch", recorded)
    config = changed(
        CONFIG,
        refit=True,
        sampled_warmup_epochs=2,
        sampled_negatives=32,
        max_epochs=4,
        patience=10,
        blend_weights=(0.0,),
    )
    manifest = manifest_of(train_artifacts(log, tmp_path, config, progress=False))
    best = manifest["training"]["best_epoch"]
    assert best >= 3  # this log keeps improving past the warm-up
    fit, refit = used[:4], used[4:]
    assert fit == [(1, "sampled", "sampled"), (2, "sampled", "sampled"), (3, "full", "full"), (4, "full", "full")]
    # Early stopping scores the full-softmax epochs only.
    assert ["val_ranker_NDCG@10" in epoch for epoch in manifest["training"]["history"]] == [False, False, True, True]
    assert refit == fit[:best]  # a fresh refit warms up the same way
    assert manifest["metrics"]["test"]["ranker"]["HR@10"] > manifest["metrics"]["test"]["popularity"]["HR@10"] + 0.3


@pytest.mark.parametrize(
    ("limit", "last_epoch"),
    [({"time_budget_s": 1e-6, "max_epochs": 5}, 1), ({"max_epochs": 2}, 2)],
    ids=["time budget", "max epochs"],
)
def test_training_that_ends_during_the_warmup_ends_on_a_scored_epoch(
    log: EventLog, tmp_path: Path, limit: dict[str, float], last_epoch: int
) -> None:
    config = changed(CONFIG, sampled_warmup_epochs=3, sampled_negatives=32, blend_weights=(0.0,), **limit)
    manifest = manifest_of(train_artifacts(log, tmp_path, config, progress=False))
    training = manifest["training"]
    assert training["epochs"] == training["best_epoch"] == last_epoch
    assert ["val_ranker_NDCG@10" in epoch for epoch in training["history"]] == [False] * (last_epoch - 1) + [True]


def test_a_refit_that_starts_from_the_first_fit_counts_its_epochs_in_the_warmup(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamrec.model.train as training

    warmups: list[int] = []
    init = training._Trainer.__init__

    def recorded(self: training._Trainer, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        warmups.append(self.warmup_epochs)

    monkeypatch.setattr(training._Trainer, "__init__", recorded)
    split = leave_one_out(log, {item: row for row, item in enumerate(build_vocabulary(log))})
    config = changed(CONFIG, sampled_warmup_epochs=3, sampled_negatives=32)
    n_items = len(build_vocabulary(log))
    model, _ = _refit(split, config, n_items, 1, False)
    _refit(split, config, n_items, 1, False, RefitStart(model, 5.0, "the first fit's epoch 2", 2))
    _refit(split, config, n_items, 1, False, RefitStart(model, 5.0, "the early-stopped model", 4))
    sampled = changed(config, softmax="sampled")
    _refit(split, sampled, n_items, 1, False)
    _refit(split, changed(config, sampled_negatives=n_items), n_items, 1, False)
    # Nothing to warm up where the softmax is sampled anyway, or where the negatives would be the whole catalogue.
    assert warmups == [3, 1, 0, 0, 0]


def test_weight_averaging_scores_and_publishes_the_average_of_the_full_softmax_epochs(
    log: EventLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamrec.model.train as training
    from streamrec.model.weight_average import WeightAverage

    trainers: list[training._Trainer] = []
    live: list[torch.Tensor] = []  # the item table training goes on from, after each epoch
    restarts: list[int] = []
    epoch, restart = training._Trainer.epoch, WeightAverage.restart

    def recorded(self: training._Trainer, number: int, rng: np.random.Generator, progress: bool) -> dict:
        trainers.append(self)
        losses = epoch(self, number, rng, progress)
        live.append(self.model.item_embeddings().detach().clone())
        return losses

    def restarted(self: WeightAverage, steps_per_epoch: int) -> None:
        restarts.append(len(live) + 1)
        restart(self, steps_per_epoch)

    monkeypatch.setattr(training._Trainer, "epoch", recorded)
    monkeypatch.setattr(WeightAverage, "restart", restarted)
    config = changed(
        CONFIG,
        weight_average_epochs=0.5,
        sampled_warmup_epochs=1,
        sampled_negatives=32,
        max_epochs=3,
        patience=10,
        blend_weights=(0.0,),
    )
    manifest = manifest_of(train_artifacts(log, tmp_path, config, progress=False))
    assert manifest["training"]["best_epoch"] == 3  # this log keeps improving: the last epoch's average is kept
    # The average starts again at the warm-up's epoch and at the first full-softmax epoch, then runs on.
    assert restarts == [1, 2]
    published = load_artifacts(tmp_path).ranker.item_embeddings().detach()
    average = trainers[-1].average
    assert average is not None
    assert torch.equal(published, average.average[0][: published.shape[0]])
    assert not torch.allclose(published, live[-1])
    # Three epochs, one of them the warm-up: well above popularity, not yet where longer training gets.
    assert manifest["metrics"]["test"]["ranker"]["HR@10"] > manifest["metrics"]["test"]["popularity"]["HR@10"] + 0.15


def test_a_refit_publishes_its_weight_average(log: EventLog, monkeypatch: pytest.MonkeyPatch) -> None:
    import streamrec.model.train as training

    trainers: list[training._Trainer] = []
    init = training._Trainer.__init__

    def recorded(self: training._Trainer, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        trainers.append(self)

    monkeypatch.setattr(training._Trainer, "__init__", recorded)
    split = leave_one_out(log, {item: row for row, item in enumerate(build_vocabulary(log))})
    n_items = len(build_vocabulary(log))
    averaged, _ = _refit(split, changed(CONFIG, weight_average_epochs=0.5), n_items, 2, False)
    plain, _ = _refit(split, CONFIG, n_items, 2, False)
    average = trainers[0].average
    assert average is not None and trainers[1].average is None
    assert torch.equal(averaged.item_embeddings().detach(), average.average[0][:n_items])
    assert not torch.allclose(averaged.item_embeddings(), plain.item_embeddings())
