"""The one settings object of streamrec.

Every field can be set from the environment as ``STREAMREC_<FIELD_NAME>`` (upper case), or overridden by the
CLI. The field descriptions are the reference documentation: the README's settings table is generated from them
(``streamrec settings --markdown``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamrec.index.params import DEFAULT_EF_SEARCH, DEFAULT_N_CANDIDATES
from streamrec.model.config import DEFAULT_OPTIMISM, DEFAULT_SHOPPER_PRIOR, RankerCompression, TrainConfig
from streamrec.model.events import DEFAULT_EVENT_WEIGHTS, DEFAULT_HALF_LIFE_S, checked_event_weights

#: Settings an A/B variant may change: those that only shape what its users are shown. Everything else (topics,
#: state, broker, training) is the worker's and shared by every variant.
VARIANT_SETTINGS = (
    "top_k",
    "n_candidates",
    "covisitation_candidates",
    "item_knn_candidates",
    "hnsw_ef_search",
    "ivf_nprobe",
    "cold_start_prior_events",
    "diversity_weight",
    "max_per_category",
    "max_impressions_without_engagement",
    "deny_items",
    "tenant_deny_items",
    "exploration_share",
    "exploration_max_impressions",
)


class Variant(BaseModel):
    """One arm of an A/B test: a model and/or serving settings, and the share of users it serves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,40}$",
        description="Written in every recommendation (`variant`) and labelling the metrics.",
    )
    share: float = Field(gt=0, description="Relative share of users; shares are normalised over all variants.")
    artifacts_dir: Path | None = Field(
        None,
        description="The variant's model: a version directory (pinned) or a root whose `LATEST` is followed and "
        "hot-swapped. Unset: the worker's `artifacts_dir`.",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Serving settings that differ for this variant; only those in `VARIANT_SETTINGS`.",
    )


class Settings(BaseSettings):
    """Configuration of a streamrec worker, the CLI and training."""

    # hide_input_in_errors: a validation error would otherwise quote the raw input, passwords included.
    model_config = SettingsConfigDict(
        env_prefix="STREAMREC_", env_nested_delimiter="__", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    # --- Kafka -------------------------------------------------------------------------------------------
    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma separated `host:port`."
    )
    events_topic: str = Field("events", description="Input topic of user events (key = user id).")
    recommendations_topic: str = Field(
        "recommendations", description="Output topic of recommendations (key = user id)."
    )
    dead_letter_topic: str = Field(
        "events.dlq",
        description="Topic receiving every rejected input message: original bytes plus a machine-readable "
        "reason in the headers `streamrec.reason` and `streamrec.detail`.",
    )
    items_topic: str = Field(
        "items",
        description="Catalog topic (key = item id, compacted): `{item_id, title, category, price, available, ts, "
        "attributes}`. Every worker reads all of it; new items become recommendable and unavailable ones are "
        "dropped between two batches.",
    )
    state_topic: str = Field(
        "streamrec.user-state",
        description="Changelog topic of user state (key = user id, same partition as the input). Create it "
        "compacted on Apache Kafka; a worker restores its partitions' users from it on assignment.",
    )
    aggregates_topic: str = Field(
        "streamrec.aggregates",
        description="Topic through which workers share what their events add to trending, co-visitation and "
        "exposure (key = worker id), so that every worker serves the whole shop's aggregates; every worker reads "
        "all of it, from the beginning at start-up.",
    )
    aggregates_retention_s: float = Field(
        2 * 86_400.0,
        gt=0,
        description="How long the aggregates topic keeps records when streamrec creates it: what a restarted "
        "worker reads back (trending fades within hours; long-term co-occurrence comes from the trained item-kNN).",
    )
    share_aggregates: bool = Field(
        True,
        description="Publish this worker's aggregate additions and apply the other workers'. Off: each worker "
        "counts only the events of its own partitions.",
    )
    consumer_group: str = Field(
        "streamrec", description="Consumer group id of the workers; scale out by starting more workers."
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest",
        description="Where a consumer group without committed offsets starts reading, as in Kafka Streams.",
    )
    topic_partitions: int = Field(
        8, ge=1, description="Partitions of the topics that `streamrec` creates when they do not exist."
    )
    replication_factor: int = Field(1, ge=1, description="Replication factor of topics created by streamrec.")
    session_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Consumer group session timeout. Apache Kafka rejects values under 6 s by default; the "
        "embedded test broker holds each group join for half of it, so tests use 2 s.",
    )
    heartbeat_interval_s: float = Field(
        3.0, gt=0, description="Consumer heartbeat interval; keep it at most a third of the session timeout."
    )
    max_poll_interval_s: float = Field(
        300.0, gt=0, description="Longest time between polls before the consumer leaves the group."
    )
    producer_linger_ms: int = Field(
        5, ge=0, description="Producer linger: how long a send waits to share a request with others."
    )
    compression: Literal["none", "gzip"] = Field(
        "none", description="Compression of produced messages (gzip saves bandwidth at some CPU cost)."
    )

    # --- Kafka security --------------------------------------------------------------------------------------
    # Every Kafka client streamrec creates (worker, catalog feed, state restore, topic admin, replay and catalog
    # tools, faust) gets these through stream/runtime/security.py. Secrets are SecretStr, so dumps and reprs
    # mask them; secret files are read when a client is created, so a rotated mounted secret is picked up.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How clients talk to the brokers: `PLAINTEXT`, `SSL` (TLS), `SASL_PLAINTEXT` (SASL "
        "authentication without encryption) or `SASL_SSL` (SASL over TLS).",
    )
    ssl_cafile: Path | None = Field(
        None,
        description="PEM file of the CA certificates that signed the brokers' certificates (TLS protocols); "
        "unset: the system's trusted CAs.",
    )
    ssl_certfile: Path | None = Field(
        None,
        description="PEM file of this client's certificate chain, for brokers that require client certificates "
        "(mutual TLS). It may also hold the private key.",
    )
    ssl_keyfile: Path | None = Field(
        None, description="PEM file of the private key of `ssl_certfile`, when that file does not hold it."
    )
    ssl_key_password: SecretStr | None = Field(
        None, description="Password of an encrypted private key; never printed (prefer `ssl_key_password_file`)."
    )
    ssl_key_password_file: Path | None = Field(
        None, description="File holding the private key's password (one trailing newline is ignored)."
    )
    ssl_check_hostname: bool = Field(
        True,
        description="Check that a broker's certificate names the host the client connected to. Turn off only "
        "for brokers whose certificates lack their addresses; the chain is still verified.",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] = Field(
        "PLAIN",
        description="SASL mechanism of the `SASL_*` protocols. `PLAIN` and `SCRAM-*` use `sasl_username` and a "
        "password; `OAUTHBEARER` sends the token of `sasl_oauth_token_file`.",
    )
    sasl_username: str | None = Field(None, description="SASL user name (`PLAIN`, `SCRAM-SHA-256/512`).")
    sasl_password: SecretStr | None = Field(
        None,
        description="SASL password; never printed. Give it here or in `sasl_password_file`, not both.",
    )
    sasl_password_file: Path | None = Field(
        None,
        description="File holding the SASL password, e.g. a mounted Kubernetes Secret (one trailing newline is "
        "ignored); read each time streamrec creates a client, so a rotated secret reaches the next client.",
    )
    sasl_oauth_token_file: Path | None = Field(
        None,
        description="File holding the OAUTHBEARER access token (JWT); re-read on every token request, so a "
        "sidecar that refreshes it keeps the clients authenticated.",
    )

    @model_validator(mode="after")
    def _kafka_security_is_consistent(self) -> Settings:
        problems = kafka_security_problems(self)
        if problems:
            raise ValueError("Kafka security settings: " + "; ".join(problems))
        return self

    # --- Micro-batching ------------------------------------------------------------------------------------
    batch_max_events: int = Field(
        500,
        ge=1,
        description="Most events processed together: one FAISS search and one ranker forward per batch. "
        "Larger batches raise throughput and latency.",
    )
    batch_max_wait_ms: int = Field(
        20, ge=0, description="Longest a poll waits for more events before a partial batch is processed."
    )

    # --- Validation ----------------------------------------------------------------------------------------
    max_payload_bytes: int = Field(
        16_384, ge=256, description="Events larger than this are rejected with reason `payload_too_large`."
    )
    max_id_length: int = Field(256, ge=1, description="Longest accepted user, item, event or session id.")
    min_event_ts: float = Field(
        946_684_800.0,
        description="Earliest accepted event time (epoch seconds; default 2000-01-01). Older events are "
        "rejected with reason `timestamp_out_of_range`.",
    )
    max_clock_skew_s: float = Field(
        86_400.0, ge=0, description="How far in the future (by the worker's clock) an event time may lie."
    )

    reject_key_mismatch: bool = Field(
        True,
        description="Dead-letter events whose Kafka key is set but differs from `user_id` (reason "
        "`key_mismatch`): user state is partitioned by key, so such events would split a user's state.",
    )

    # --- User state ----------------------------------------------------------------------------------------
    event_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS),
        description="Weight of each event type in the user's interest vector (JSON in the environment).",
    )
    interest_half_life_s: float = Field(
        DEFAULT_HALF_LIFE_S,
        gt=0,
        description="Event-time half-life of interest: an event this much older than the newest counts half.",
    )
    max_recent_items: int = Field(50, ge=1, description="Length of each user's recent-item sequence fed to the ranker.")
    max_bought_items: int = Field(
        1000, ge=0, description="Most recent purchases remembered per user, never recommended again."
    )
    user_idle_ttl_s: float | None = Field(
        30 * 86_400.0,
        gt=0,
        description="Users with no event for this many seconds (worker clock) are evicted: dropped from memory "
        "and tombstoned in the state topic, so compaction removes them; a later event starts them afresh. Unset: "
        "users are kept forever.",
    )
    trending_half_life_s: float = Field(
        3_600.0, gt=0, description="Event-time half-life of the real-time popularity counts (trending)."
    )

    # --- Retrieval and ranking ------------------------------------------------------------------------------
    top_k: int = Field(20, ge=1, le=1000, description="Items per published recommendation.")
    n_candidates: int = Field(
        DEFAULT_N_CANDIDATES, ge=1, description="Candidates retrieved from the ANN index and re-scored by the ranker."
    )
    covisitation_candidates: int = Field(
        100,
        ge=0,
        description="Candidates added from co-visitation (items touched right after the user's last few items, "
        "learned from the stream) next to the ANN ones; 0 turns this source off.",
    )
    item_knn_candidates: int = Field(
        100,
        ge=0,
        description="Candidates added from the model's item-kNN (items most co-occurring with the user's recent "
        "items in the training data, and most often following them where training chose transitions; as many "
        "recent items as the memory training chose) when the model blends it into the ranker's scores; 0 turns "
        "this source off.",
    )
    covisitation_window: int = Field(
        3, ge=1, description="How many of the user's latest items vote for co-visitation candidates."
    )
    hnsw_ef_search: int = Field(
        DEFAULT_EF_SEARCH, ge=1, description="HNSW search breadth: higher is more exact and slower."
    )
    ivf_nprobe: int | None = Field(
        None,
        ge=1,
        description="Cells probed per query by ivf and ivfpq indexes; unset: what the model was trained with "
        "(16 for ivf, 5/8 of the cells for ivfpq).",
    )
    torch_threads: int = Field(
        1, ge=1, description="Intra-op threads of the ranker. One per worker process scales best per core."
    )
    ranker_compression: RankerCompression = Field(
        "none",
        description="Form of the sequence ranker a worker serves: `none` (float32, as trained); `int8` (its Linear "
        "layers quantised to int8 when the model loads); `distilled` (the smaller student `streamrec distill` adds to "
        "a model version; a version without one is refused, at start and at a swap); `distilled_int8` (both). "
        "Retrieval always uses the float item table. For the whole worker: variants on one model version share its "
        "ranker. Measured on Beauty (`bench/bench_compression.py`): int8 keeps served quality (+0.2 % NDCG@10) but "
        "is slower for small batches (1.01 vs 0.70 ms for 3 users) and only 8 % faster for 100; distilled (1 block, "
        "1 head) costs 1.1 % of served NDCG@10 for a 25 % (3 users) to 46 % (100 users) faster ranker.",
    )

    # --- Catalog, cold start, rules, diversity, exploration -------------------------------------------------
    max_live_items: int = Field(
        100_000,
        ge=0,
        description="Most catalog items a worker adds to its index from their content between two trainings "
        "(each costs one embedding row); later new items are served only through trending until retraining.",
    )
    new_item_learning_events: int = Field(
        32,
        ge=0,
        description="Events on a live item (one added from its content since the model loaded) that move its row "
        "from its text toward the ranker states of the users who picked it: re-embedded at 1, 2, 4, ... events up "
        "to this many, each move a new index row (README, new items). 0 keeps every live item at its content row "
        "until the next training.",
    )
    new_item_shopper_prior: float = Field(
        DEFAULT_SHOPPER_PRIOR,
        gt=0,
        description="Weight of a live item's content row against the mean state of its shoppers, in events: at "
        "this many events the two count alike.",
    )
    new_item_optimism: float = Field(
        DEFAULT_OPTIMISM,
        ge=0,
        le=1,
        description="How far beyond its expected score a live item's learned row is served. 0: at the length the "
        "shopper map's held-out cosine for its count of shoppers gives, the score the row is expected to earn "
        "(README, new items: the rest of the catalogue pays nothing measurable); 1: at a trained row's full "
        "length, which shows new items to far more of their shoppers at a cost in hit rate for everything else.",
    )
    cold_start_prior_events: float = Field(
        0.5,
        ge=0,
        description="Blend of trending into personalised results: a user with n events on known items gets the "
        "personalised list weighted n / (n + this) and context trending the rest (rank fusion). 0 turns the "
        "blend off (personalised as soon as one known item is touched).",
    )
    diversity_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="MMR trade-off λ: each slot maximises (1 − λ)·relevance − λ·(similarity to items already "
        "chosen). 0 keeps the ranked order; see the README for the measured cost in hit rate.",
    )
    max_per_category: int = Field(
        0,
        ge=0,
        description="Most items of one category in a list (0: no cap); item clusters stand in for "
        "categories the catalog does not give.",
    )
    max_impressions_without_engagement: int = Field(
        0,
        ge=0,
        description="Stop recommending an item to a user after it was in this many of their published lists "
        "without the user touching it (0: off). Counts published lists, so enable it when every list is shown.",
    )
    deny_items: list[str] = Field(
        default_factory=list, description="Items never recommended to anyone (JSON list in the environment)."
    )
    tenant_deny_items: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Items never recommended within a tenant: `{tenant: [item, ...]}`; the tenant is the event's "
        "`context.tenant`. An event's `context.exclude_items` adds per-request exclusions.",
    )
    exploration_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Share of each list's slots given to exploration: under-exposed items chosen by Thompson "
        "sampling, marked `explore: true` in the output.",
    )
    exploration_max_impressions: int = Field(
        100, ge=1, description="Items shown at least this often by this worker are no longer explored."
    )
    segment_label_limit: int = Field(
        64,
        ge=0,
        description="Segment ids label the per-segment metrics only when the model has at most this many "
        "segments, keeping Prometheus series bounded.",
    )
    random_seed: int | None = Field(
        None, description="Seed of exploration's random draws (None: fresh each start); fixed in tests."
    )

    # --- Experiments and online evaluation ------------------------------------------------------------------
    variants: list[Variant] = Field(
        default_factory=list,
        description='A/B variants served at once, as JSON: `[{"name": "control", "share": 0.5}, {"name": '
        '"fresh", "share": 0.5, "artifacts_dir": "/models/candidate", "overrides": {"exploration_share": '
        "0.1}}]`. Users are assigned by a stable hash of their id, so every worker and restart agrees. Empty: one "
        "variant, `default`, serving `artifacts_dir` with these settings.",
    )
    variant_salt: str = Field(
        "streamrec",
        min_length=1,
        description="Mixed into the hash that assigns users to variants: change it to draw a fresh split of users "
        "for a new experiment.",
    )
    online_eval_window_s: float | None = Field(
        1_800.0,
        gt=0,
        description="Online evaluation: an event at most this many seconds (event time) after the list its user "
        "was last shown is checked against that list (`streamrec_online_*` metrics: hits at 5/10/20, rank, "
        "source and explanation of the hit). Unset: off (the last list is still kept per user, for the read path).",
    )

    # --- Worker ---------------------------------------------------------------------------------------------
    artifacts_dir: Path | None = Field(
        None, description="Model artifact directory written by `streamrec train` (required by the worker)."
    )
    model_poll_interval_s: float = Field(
        10.0,
        ge=0,
        description="How often a worker checks the artifact directory's `LATEST` for a new model version to swap "
        "in without a restart; 0 disables hot swapping.",
    )
    runtime: Literal["kafka", "faust"] = Field(
        "kafka",
        description="Stream runtime: `kafka` is the bare aiokafka micro-batch loop (measured fastest, see "
        "bench/), `faust` runs the same pipeline as a faust-streaming agent.",
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address of the Prometheus `/metrics` server; `0.0.0.0` to expose it."
    )
    metrics_port: int = Field(9400, ge=0, le=65535, description="Port of `/metrics`; 0 disables it.")

    # --- Delivery and recovery ------------------------------------------------------------------------------
    producer_max_request_bytes: int = Field(
        1_048_576,
        ge=65_536,
        description="Largest request a producer sends (Kafka's `max.request.size`); keep it at most the broker's "
        "`message.max.bytes`.",
    )
    dead_letter_max_bytes: int = Field(
        262_144,
        ge=1_024,
        description="Most bytes of a rejected message copied into its dead letter. A larger payload is cut to this "
        "size and marked with the headers `streamrec.truncated` and `streamrec.original_size`; the original stays "
        "at `streamrec.source` (topic/partition/offset) while the events topic retains it. Must leave 64 KiB of "
        "`producer_max_request_bytes` for key and headers.",
    )
    delivery_timeout_s: float = Field(
        120.0,
        gt=0,
        description="How long a batch's output may keep failing to reach the broker (retried with backoff, readiness "
        "false meanwhile) before the worker exits non-zero for its supervisor to restart it. Its input offsets stay "
        "uncommitted, so nothing accepted is lost.",
    )
    restore_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Longest the restore of assigned partitions' user state may take. A restore that fails or runs "
        "out of time stops the worker with a non-zero exit instead of serving those users with empty state.",
    )
    shutdown_timeout_s: float = Field(
        15.0,
        gt=0,
        description="After SIGTERM or SIGINT, how long the worker may take to finish its batch, commit and leave the "
        "group before it exits anyway (non-zero).",
    )

    # --- Training ---------------------------------------------------------------------------------------------
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="Training hyper-parameters for `streamrec train`, one variable per field (`STREAMREC_TRAIN__DIM`, "
        "...; listed below). The serving settings `event_weights`, `interest_half_life_s`, `max_recent_items`, "
        "`hnsw_ef_search`, `ivf_nprobe` and `n_candidates` override their training twins, so that a model is "
        "trained as it is served.",
    )

    @model_validator(mode="after")
    def _dead_letters_fit_in_a_request(self) -> Settings:
        if self.dead_letter_max_bytes + 65_536 > self.producer_max_request_bytes:
            raise ValueError(
                f"dead_letter_max_bytes ({self.dead_letter_max_bytes}) must leave 64 KiB of "
                f"producer_max_request_bytes ({self.producer_max_request_bytes}) for key and headers"
            )
        return self

    @model_validator(mode="after")
    def _variants_are_consistent(self) -> Settings:
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique: {names}")
        for variant in self.variants:
            variant_settings(self, variant)
        return self

    @field_validator("event_weights")
    @classmethod
    def _weights_cover_event_types(cls, weights: dict[str, float]) -> dict[str, float]:
        return checked_event_weights(weights)


def variant_settings(settings: Settings, variant: Variant) -> Settings:
    """``settings`` with ``variant``'s overrides applied and validated (raises ``ValueError`` naming the variant)."""
    unknown = sorted(set(variant.overrides) - set(VARIANT_SETTINGS))
    if unknown:
        raise ValueError(
            f"variant {variant.name!r} overrides {', '.join(unknown)}: a variant may change only "
            f"{', '.join(VARIANT_SETTINGS)}"
        )
    if not variant.overrides:
        return settings
    fields = {name: getattr(settings, name) for name in type(settings).model_fields}
    try:
        return type(settings).model_validate({**fields, **variant.overrides, "variants": []})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"variant {variant.name!r}: {problems}") from None


def settings_markdown_table() -> str:
    """The settings reference as a Markdown table, for the README."""
    rows = ["| env var | default | description |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if name == "train":
            rows.append(f"| `STREAMREC_TRAIN__*` | | {field.description} |")
            for sub, sub_field in TrainConfig.model_fields.items():
                default = sub_field.get_default(call_default_factory=True)
                rows.append(f"| `STREAMREC_TRAIN__{sub.upper()}` | `{default}` | {sub_field.description} |")
            continue
        default = field.get_default(call_default_factory=True)
        rows.append(f"| `STREAMREC_{name.upper()}` | `{default}` | {field.description} |")
        if name == "variants":  # the fields of each variant object
            for sub, sub_field in Variant.model_fields.items():
                default = "required" if sub_field.is_required() else sub_field.get_default(call_default_factory=True)
                rows.append(f"| `STREAMREC_VARIANTS[].{sub}` | `{default}` | {sub_field.description} |")
    return "\n".join(rows)


def read_secret_file(path: Path) -> str:
    """The secret held in ``path``, without the trailing newline that ``echo`` and most editors add.

    Raises ``ValueError`` naming the file (never its content) when it is missing, unreadable or empty.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc.__class__.__name__}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret


def kafka_security_problems(settings: Settings) -> list[str]:
    """Every inconsistency in the Kafka security settings, each as a sentence naming the settings to change.

    A setting that the chosen protocol would ignore is a problem too: a password that is silently not used is how
    a client ends up talking plaintext to a broker that was meant to be secured.
    """
    problems: list[str] = []
    protocol = settings.security_protocol
    uses_tls = protocol in ("SSL", "SASL_SSL")
    uses_sasl = protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    tls_given = [
        name
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password", "ssl_key_password_file")
        if getattr(settings, name) is not None
    ]
    if tls_given and not uses_tls:
        problems.append(f"{', '.join(tls_given)} set but security_protocol {protocol} does not use TLS")
    if settings.ssl_keyfile is not None and settings.ssl_certfile is None:
        problems.append("ssl_keyfile set without ssl_certfile (the certificate it belongs to)")
    if settings.ssl_key_password is not None and settings.ssl_key_password_file is not None:
        problems.append("ssl_key_password given both inline and as ssl_key_password_file: keep one")
    if (settings.ssl_key_password or settings.ssl_key_password_file) and settings.ssl_certfile is None:
        problems.append("a private key password is set without ssl_certfile")

    sasl_given = [
        name
        for name in ("sasl_username", "sasl_password", "sasl_password_file", "sasl_oauth_token_file")
        if getattr(settings, name) is not None
    ]
    if sasl_given and not uses_sasl:
        problems.append(f"{', '.join(sasl_given)} set but security_protocol {protocol} does not use SASL")
    if uses_sasl and settings.sasl_mechanism == "OAUTHBEARER":
        if settings.sasl_oauth_token_file is None:
            problems.append("sasl_mechanism OAUTHBEARER needs sasl_oauth_token_file")
        password_given = [n for n in ("sasl_username", "sasl_password", "sasl_password_file") if n in sasl_given]
        if password_given:
            problems.append(f"{', '.join(password_given)} set but OAUTHBEARER authenticates with a token only")
    elif uses_sasl:
        mechanism = settings.sasl_mechanism
        if not settings.sasl_username:
            problems.append(f"{protocol} with {mechanism} needs sasl_username")
        if settings.sasl_password is None and settings.sasl_password_file is None:
            problems.append(f"{protocol} with {mechanism} needs sasl_password or sasl_password_file")
        if settings.sasl_password is not None and settings.sasl_password_file is not None:
            problems.append("sasl_password given both inline and as sasl_password_file: keep one")
        if settings.sasl_password is not None and not settings.sasl_password.get_secret_value():
            problems.append("sasl_password is empty")
        if settings.sasl_oauth_token_file is not None:
            problems.append(f"sasl_oauth_token_file set but sasl_mechanism is {mechanism}, not OAUTHBEARER")

    # Files are checked now, at start-up, rather than on the first connection attempt deep inside a client.
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(settings, name)
        if path is not None:
            try:
                with path.open("rb"):
                    pass
            except OSError as exc:
                problems.append(f"{name}: cannot read {path}: {exc.strerror or exc}")
    for name in ("ssl_key_password_file", "sasl_password_file", "sasl_oauth_token_file"):
        path = getattr(settings, name)
        if path is not None:
            try:
                read_secret_file(path)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
    return problems
