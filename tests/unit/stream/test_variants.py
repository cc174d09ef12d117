"""A/B variants: stable assignment by hash, shares honoured, settings overrides checked at start-up."""

from __future__ import annotations

import collections

import pytest
from pydantic import ValidationError

from streamrec.stream.settings import Settings, Variant, variant_settings
from streamrec.stream.variants import DEFAULT_VARIANT, VariantAssigner, variants_of


def _variants(*shares: float) -> list[Variant]:
    return [Variant(name=f"v{i}", share=share) for i, share in enumerate(shares)]


def test_a_user_keeps_their_variant_and_shares_are_honoured() -> None:
    assigner = VariantAssigner(_variants(0.8, 0.2), salt="exp-1")
    users = [f"user-{n}" for n in range(20_000)]
    first = [assigner.assign(user) for user in users]
    again = VariantAssigner(_variants(0.8, 0.2), salt="exp-1")  # another worker, or after a restart
    assert [again.assign(user) for user in users] == first
    counts = collections.Counter(first)
    assert 0.78 < counts["v0"] / len(users) < 0.82


def test_a_new_salt_draws_an_independent_split() -> None:
    users = [f"user-{n}" for n in range(20_000)]
    one = VariantAssigner(_variants(1, 1), salt="exp-1")
    two = VariantAssigner(_variants(1, 1), salt="exp-2")
    same = sum(one.assign(user) == two.assign(user) for user in users) / len(users)
    assert 0.47 < same < 0.53  # independent halves agree on about half the users


def test_without_variants_everyone_is_served_by_the_default() -> None:
    variants = variants_of(Settings())
    assert [variant.name for variant in variants] == [DEFAULT_VARIANT]
    assigner = VariantAssigner(variants, "streamrec")
    assert {assigner.assign(f"u{n}") for n in range(100)} == {DEFAULT_VARIANT}


def test_overrides_apply_to_the_variant_only() -> None:
    settings = Settings(
        top_k=10, variants=[{"name": "a", "share": 1}, {"name": "b", "share": 1, "overrides": {"top_k": 5}}]
    )
    a, b = settings.variants
    assert variant_settings(settings, a).top_k == 10
    assert variant_settings(settings, b).top_k == 5
    assert settings.top_k == 10


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ([{"name": "a", "share": 1}, {"name": "a", "share": 1}], "unique"),
        ([{"name": "a", "share": 1, "overrides": {"events_topic": "x"}}], "may change only"),
        ([{"name": "a", "share": 1, "overrides": {"exploration_share": 2}}], "variant 'a': exploration_share"),
        ([{"name": "a b", "share": 1}], "name"),
        ([{"name": "a", "share": 0}], "share"),
    ],
)
def test_bad_variants_are_refused_at_start_up(variants: list[dict], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(variants=variants)


def test_variants_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "STREAMREC_VARIANTS",
        '[{"name": "control", "share": 3}, {"name": "explore", "share": 1, "overrides": {"exploration_share": 0.2}}]',
    )
    settings = Settings()
    assert [(v.name, v.share) for v in settings.variants] == [("control", 3.0), ("explore", 1.0)]
    assert variant_settings(settings, settings.variants[1]).exploration_share == 0.2


def test_a_variant_naming_the_workers_own_model_directory_shares_it(tmp_path) -> None:
    from streamrec.stream.variants import own_model_dir

    models = tmp_path / "models"
    models.mkdir()
    settings = Settings(
        artifacts_dir=models,
        variants=[
            {"name": "a", "share": 1},
            {"name": "b", "share": 1, "artifacts_dir": str(tmp_path / "models" / ".." / "models")},
            {"name": "c", "share": 1, "artifacts_dir": str(tmp_path / "candidate")},
        ],
    )
    a, b, c = settings.variants
    assert own_model_dir(settings, a) is None and own_model_dir(settings, b) is None
    assert own_model_dir(settings, c) == (tmp_path / "candidate").resolve()
