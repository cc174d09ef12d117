"""What serving a model takes, once per loaded model and once per A/B variant.

:class:`ServedModel` holds what depends on a model version alone (item table and index, interest model,
co-visitation in the model's rows, ranker): variants that serve the same version share one, so a settings-only
experiment costs no second copy of the index. :class:`ServedVariant` adds what the variant's settings shape:
the candidate sources, the business rules, exploration and the list builder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from streamrec.index.covisitation import CoVisitation
from streamrec.model.compress import with_compressed_ranker
from streamrec.stream.catalog import Catalog
from streamrec.stream.explain import Explainer, co_occurrence_of
from streamrec.stream.explore import Explorer, ExposureStats
from streamrec.stream.item_table import ItemTable
from streamrec.stream.new_items import NewItemLearner
from streamrec.stream.online_eval import ListStatistics
from streamrec.stream.rank import served_ranker
from streamrec.stream.retrieve import Retriever
from streamrec.stream.rules import RuleSet
from streamrec.stream.select import ListBuilder
from streamrec.stream.settings import Settings
from streamrec.stream.trending import TrendingBoard
from streamrec.stream.user_state import InterestModel

if TYPE_CHECKING:
    from streamrec.model.artifacts import ModelArtifacts


class ServedModel:
    """One loaded model version, ready to retrieve and rank."""

    def __init__(self, settings: Settings, artifacts: ModelArtifacts) -> None:
        self.artifacts = artifacts
        self.items = ItemTable(artifacts, settings.max_live_items)
        self.interest = InterestModel.from_settings(
            settings, self.items.embeddings, self.items.row_of, artifacts.version
        )
        # Co-visitation is counted in the model's rows, so a new model starts it afresh from the stream.
        self.covisitation = CoVisitation(len(artifacts.item_ids), window=settings.covisitation_window)
        # The ranker in the form `ranker_compression` asks for (int8, the distilled student): the item table,
        # index and interest model above stay the float ones of the version, which retrieval needs.
        self.ranker = served_ranker(with_compressed_ranker(artifacts, settings.ranker_compression), self.items)
        # The shoppers' map was fitted on the trained ranker's states: live items learn from those.
        self.state_encoder, self.max_history = artifacts.ranker, artifacts.ranker.config.max_len
        shoppers = artifacts.shoppers.with_optimism(settings.new_item_optimism) if artifacts.shoppers else None
        self.new_items = NewItemLearner(
            self.items, shoppers, settings.new_item_shopper_prior, settings.new_item_learning_events
        )
        self.co_occurrence = co_occurrence_of(self.covisitation, artifacts.item_knn)
        self.segments = artifacts.segments
        #: Set when a variant serving this model reads co-visitation candidates: only then does the stream feed it.
        self.counts_covisitation = False

    @property
    def counted_covisitation(self) -> CoVisitation | None:
        return self.covisitation if self.counts_covisitation else None

    def items_grew(self) -> None:
        """Live items joined the table: the interest model and co-visitation must see the new rows."""
        self.interest = replace(self.interest, embeddings=self.items.embeddings)
        self.covisitation.grow(len(self.items))


class ServedVariant:
    """One A/B variant: its settings over a served model, sharing the stream's trending and exposure."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        model: ServedModel,
        catalog: Catalog,
        trending: TrendingBoard,
        exposure: ExposureStats,
        category_of: Callable[[str, ItemTable | None], str | None],
    ) -> None:
        self.name, self.settings, self.model = name, settings, model
        self.retriever = Retriever.for_model(settings, model.artifacts, model.items, model.covisitation)
        self.rules = RuleSet.from_settings(settings, catalog)
        self.explorer = Explorer(
            settings.exploration_share, settings.exploration_max_impressions, settings.random_seed, exposure
        )
        explainer = Explainer(model.items, model.co_occurrence, catalog.title_of)
        self.lists = ListBuilder(
            settings,
            self.rules,
            self.explorer,
            trending,
            model.items,
            explainer,
            lambda item_id: category_of(item_id, model.items),
        )
        self.statistics = ListStatistics(name, model.items, settings.random_seed)
        if settings.covisitation_candidates:
            model.counts_covisitation = True

    def use_search_params(self) -> None:
        """The variant's search breadth on its (possibly shared) index, before its retrieval (a no-op when
        already in force)."""
        self.model.items.index.set_search_params(self.settings.hnsw_ef_search, self.settings.ivf_nprobe)
