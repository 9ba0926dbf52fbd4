"""Fine-tuning on mined pairs, the saved model directory, and reindex with aliases.

Training runs on a tiny randomly initialised BERT that uses the bundled model's
tokenizer, so a few epochs take seconds on a CPU. Collections are Milvus Lite
files under tmp_path.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from semsearch import SemanticSearch
from semsearch.cli import main
from semsearch.encoder import Encoder
from semsearch.errors import ConfigError, LoadError, ModelMismatchError
from semsearch.finetune import ContrastiveTrainer, FinetuneConfig, finetune, save_model
from semsearch.models import resolve_model
from semsearch.pairs import (
    TrainingPair,
    mine_collection_pairs,
    mine_hard_negatives,
    read_pairs,
    sample_batches,
    split_held_out,
)
from semsearch.reindex import reindex
from semsearch.store import MilvusStore

DOCS = {
    "lighthouse.md": (
        "# Lighthouses\n\n"
        "## Beams\n\n"
        "A lighthouse guides ships at night with a rotating beam of light. "
        "The lens concentrates the lamp into a narrow horizontal beam.\n\n"
        "## Keepers\n\n"
        "Keepers lived in the tower and trimmed the wicks every few hours. "
        "Most lighthouses are automated and need no keeper today.\n"
    ),
    "bread.md": (
        "# Sourdough\n\n"
        "## Starter\n\n"
        "A sourdough starter is a culture of wild yeast and lactic acid bacteria. "
        "Bakers feed it flour and water every day to keep it active.\n\n"
        "## Baking\n\n"
        "The dough rises slowly overnight and bakes in a very hot oven. "
        "Steam in the first minutes lets the crust expand before it sets.\n"
    ),
    "volcano.md": (
        "# Volcanoes\n\n"
        "## Eruptions\n\n"
        "A volcano erupts when magma rises through cracks in the crust. "
        "Gas dissolved in the magma expands and drives the eruption upwards.\n\n"
        "## Lava\n\n"
        "Basaltic lava is runny and flows far from the vent before it cools. "
        "Rhyolitic lava is thick and tends to explode instead of flowing.\n"
    ),
}

TRAIN_PAIRS = [
    ("how do ships find the coast at night", "A lighthouse beam guides ships."),
    ("what feeds a sourdough starter", "Bakers feed the starter flour and water."),
    ("why do volcanoes erupt", "Magma rises and gas expands in an eruption."),
    ("what do glaciers do to valleys", "Glaciers carve valleys as the ice flows."),
    (
        "how do bees share flower locations",
        "Honeybees dance to show where flowers are.",
    ),
    ("what makes bread crust expand", "Steam lets the crust expand before it sets."),
    ("who trimmed lighthouse wicks", "Keepers trimmed the wicks every few hours."),
    ("which lava flows far", "Basaltic lava is runny and flows far."),
    ("what is a comet made of", "A comet is a ball of ice and dust."),
    ("why is the sky blue", "Air scatters blue sunlight more than red."),
    ("how do plants make sugar", "Photosynthesis turns light and CO2 into sugar."),
    ("what causes tides", "The moon's gravity pulls the oceans into tides."),
    ("how do vaccines work", "Vaccines train the immune system on an antigen."),
    ("what is a prime number", "A prime has no divisors but one and itself."),
    ("how do magnets attract iron", "Magnetic fields align the domains in iron."),
    ("what do owls eat", "Owls hunt mice, voles and insects at night."),
]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT with random weights and the bundled model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    base = resolve_model()
    tokenizer = AutoTokenizer.from_pretrained(base.path, local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    directory = tmp_path_factory.mktemp("tiny-bert")
    model = BertModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_encoder(tiny_model_dir: Path) -> Encoder:
    return Encoder(tiny_model_dir, device="cpu")


@pytest.fixture()
def docs_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture()
def ingested(tmp_path: Path, docs_dir: Path, encoder: Encoder) -> str:
    """A Lite file whose collection "docs" contains DOCS embedded by the bundled model."""
    uri = str(tmp_path / "docs.db")
    # Chunks of 40 tokens split each document at its sections, so chunks carry
    # heading paths.
    with SemanticSearch(
        uri=uri, collection="docs", encoder=encoder, chunk_size=40, chunk_overlap=0
    ) as engine:
        report = engine.ingest([docs_dir])
    assert report.ok
    return uri


def _pairs() -> list[TrainingPair]:
    return [TrainingPair(anchor, positive) for anchor, positive in TRAIN_PAIRS]


def _tiny_config(**changes: object) -> FinetuneConfig:
    values: dict[str, object] = {
        "epochs": 6,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.0,
        "held_out": 0.0,
        "patience": 6,
        "device": "cpu",
        "max_length": 32,
    }
    values.update(changes)
    return FinetuneConfig(**values)  # type: ignore[arg-type]


def _trained_model(tiny_model_dir: Path, out: Path, seed: int = 0) -> Path:
    finetune(_pairs(), out, model=tiny_model_dir, config=_tiny_config(seed=seed))
    return out


# -- pairs -----------------------------------------------------------------------


def test_read_pairs_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"anchor": "a", "positive": "p"}\n\n'
        '{"anchor": "b", "positive": "q", "negative": "n"}\n',
        encoding="utf-8",
    )
    pairs = read_pairs(path)
    assert pairs == [TrainingPair("a", "p"), TrainingPair("b", "q", "n")]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"anchor": "a"}', "'positive' must be a non-empty string"),
        ('{"anchor": "a", "positive": " "}', "'positive' must be a non-empty string"),
        ('{"anchor": "a", "positive": "p", "negative": 3}', "'negative' must be"),
        ('["a", "p"]', "not a JSON object"),
        ('{"anchor": "a", "positive": ', "invalid JSON"),
    ],
)
def test_read_pairs_bad_record_names_line(
    tmp_path: Path, line: str, reason: str
) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"anchor": "x", "positive": "y"}\n' + line + "\n", encoding="utf-8"
    )
    with pytest.raises(LoadError, match=r"pairs\.jsonl:2: ") as caught:
        read_pairs(path)
    assert reason in str(caught.value)


def test_read_pairs_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_pairs(tmp_path / "absent.jsonl")


def test_sample_batches_no_repeated_text() -> None:
    shared = "the same passage"
    pairs = [TrainingPair(f"anchor {i}", f"passage {i}") for i in range(10)]
    pairs += [TrainingPair(f"other anchor {i}", shared) for i in range(4)]
    pairs += [TrainingPair("anchor 0", "a passage of its own")]
    pairs += [TrainingPair("negative user", "passage x", negative="passage 3")]

    batches = sample_batches(pairs, batch_size=8, seed=1)

    used = sorted(i for batch in batches for i in batch)
    assert used == list(range(len(pairs)))
    for batch in batches:
        texts = [text for i in batch for text in pairs[i].texts()]
        assert len(texts) == len(set(texts)), batch


def test_sample_batches_one_pair_per_group() -> None:
    pairs = [TrainingPair(f"a{i}", f"p{i}", group=f"doc{i % 3}") for i in range(9)]
    for batch in sample_batches(pairs, batch_size=4, seed=0):
        groups = [pairs[i].group for i in batch]
        assert len(groups) == len(set(groups)), batch


def test_split_held_out_keeps_groups_apart() -> None:
    pairs = [TrainingPair(f"a{i}", f"p{i}", group=f"doc{i // 2}") for i in range(40)]
    train, held_out = split_held_out(pairs, 0.25, seed=3)
    assert len(held_out) == 10
    assert {p.group for p in train}.isdisjoint({p.group for p in held_out})
    assert split_held_out(pairs, 0.25, seed=3) == (train, held_out)


def test_mine_pairs_headings_and_titles(ingested: str) -> None:
    with MilvusStore(ingested, "docs") as store:
        pairs = mine_collection_pairs(store)
    by_anchor = {pair.anchor: pair for pair in pairs}

    keepers = by_anchor["Lighthouses > Keepers"]
    assert keepers.positive.startswith("Keepers lived in the tower")
    assert keepers.group == "lighthouse.md"
    title = by_anchor["Sourdough"]
    assert not title.positive.startswith("#")
    assert "Sourdough" not in title.positive.split("\n")[0]
    assert title.group == "bread.md"


def test_mine_pairs_sentence_and_rest(ingested: str) -> None:
    with MilvusStore(ingested, "docs") as store:
        pairs = mine_collection_pairs(store)
    sentences = [pair for pair in pairs if pair.anchor.endswith(".")]
    assert sentences
    for pair in sentences:
        assert pair.anchor not in pair.positive
        assert "#" not in pair.anchor


def test_mine_pairs_batches_without_duplicates(ingested: str) -> None:
    with MilvusStore(ingested, "docs") as store:
        pairs = mine_collection_pairs(store)
    assert len({(p.anchor, p.positive) for p in pairs}) == len(pairs)
    for batch in sample_batches(pairs, batch_size=8, seed=0):
        texts = [text for i in batch for text in pairs[i].texts()]
        assert len(texts) == len(set(texts)), batch


def test_mine_hard_negatives_other_documents(ingested: str, encoder: Encoder) -> None:
    with MilvusStore(ingested, "docs") as store:
        pairs = mine_collection_pairs(store)
        with_negatives = mine_hard_negatives(pairs, encoder, store)
        texts_by_doc = {
            row["text"].strip(): row["doc_id"]
            for row in store.query("", ["text", "doc_id"])
        }
    assert len(with_negatives) == len(pairs)
    for pair in with_negatives:
        assert pair.negative != pair.positive
        assert texts_by_doc[pair.negative] != pair.group


# -- training ----------------------------------------------------------------------


def test_finetune_loss_goes_down(tmp_path: Path, tiny_model_dir: Path) -> None:
    result = finetune(
        _pairs(), tmp_path / "out", model=tiny_model_dir, config=_tiny_config()
    )
    losses = [epoch.loss for epoch in result.epochs[1:]]
    assert len(losses) == 6
    assert losses[-1] < losses[0] * 0.7, losses


def test_finetune_held_out_metrics_reported(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    config = _tiny_config(held_out=0.25, epochs=2, patience=2)
    result = finetune(_pairs(), tmp_path / "out", model=tiny_model_dir, config=config)
    assert result.held_out_pairs == 4
    assert result.train_pairs == 12
    for epoch in result.epochs:
        assert 0.0 <= epoch.recall_at_1 <= 1.0
        assert 0.25 <= epoch.mrr <= 1.0
    assert result.best_epoch in (1, 2)


def test_finetune_triplet_loss_goes_down(tmp_path: Path, tiny_model_dir: Path) -> None:
    pairs = _pairs()
    triplets = [
        TrainingPair(
            p.anchor, p.positive, negative=pairs[(i + 1) % len(pairs)].positive
        )
        for i, p in enumerate(pairs)
    ]
    result = finetune(
        triplets,
        tmp_path / "out",
        model=tiny_model_dir,
        config=_tiny_config(loss="triplet"),
    )
    assert result.epochs[-1].loss < result.epochs[1].loss


def test_finetune_triplet_needs_negatives(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="needs a negative"):
        finetune(
            _pairs(),
            tmp_path / "out",
            model=tiny_model_dir,
            config=_tiny_config(loss="triplet"),
        )


def _gradients_after(trainer: ContrastiveTrainer, backward) -> dict[str, torch.Tensor]:
    trainer.model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    backward()
    return {
        name: parameter.grad.clone()
        for name, parameter in trainer.model.named_parameters()
        if parameter.grad is not None
    }


def _assert_same_gradients(
    expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]
) -> None:
    assert expected.keys() == actual.keys()
    assert len(expected) > 10
    for name, gradient in expected.items():
        assert gradient.abs().max() > 0, name
        torch.testing.assert_close(actual[name], gradient, rtol=1e-4, atol=1e-6)


def test_cached_gradients_match_whole_batch(tiny_model_dir: Path) -> None:
    pairs = _pairs()[:6]
    with_negatives = [
        TrainingPair(p.anchor, p.positive, negative=pairs[(i + 2) % 6].positive)
        for i, p in enumerate(pairs)
    ]
    trainer = ContrastiveTrainer(tiny_model_dir, _tiny_config())
    # Without dropout, embedding in pieces changes nothing but the memory used.
    trainer.model.eval()
    for batch in (pairs, with_negatives):
        whole = _gradients_after(trainer, lambda: trainer.loss(batch).backward())
        pieces = _gradients_after(
            trainer, lambda: trainer.backward_cached(batch, 4, lambda loss: loss)
        )
        _assert_same_gradients(whole, pieces)


def test_cached_gradients_replay_dropout(tiny_model_dir: Path) -> None:
    pairs = _pairs()[:4]
    trainer = ContrastiveTrainer(tiny_model_dir, _tiny_config())
    trainer.model.train()
    whole = _gradients_after(trainer, lambda: trainer.loss(pairs).backward())
    # One piece draws the same dropout masks as the whole batch, in both passes.
    cached = _gradients_after(
        trainer, lambda: trainer.backward_cached(pairs, 4, lambda loss: loss)
    )
    _assert_same_gradients(whole, cached)
    # The loss comes back as computed, not as scaled for backpropagation.
    trainer.model.eval()
    loss = float(trainer.loss(pairs).detach())
    scaled = trainer.backward_cached(pairs, 2, lambda value: value * 3)
    assert scaled == pytest.approx(loss, rel=1e-5)


def test_finetune_mini_batches_loss_goes_down(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    config = _tiny_config(batch_size=8, mini_batch_size=3)
    result = finetune(_pairs(), tmp_path / "out", model=tiny_model_dir, config=config)
    losses = [epoch.loss for epoch in result.epochs[1:]]
    assert losses[-1] < losses[0] * 0.7, losses
    assert result.config["mini_batch_size"] == 3


@pytest.mark.parametrize(
    ("size", "message"),
    [(0, "invalid mini_batch_size 0"), (4, "4 is not smaller than batch_size 4")],
)
def test_finetune_rejects_bad_mini_batch_size(
    tmp_path: Path, tiny_model_dir: Path, size: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        finetune(
            _pairs(),
            tmp_path / "out",
            model=tiny_model_dir,
            config=_tiny_config(mini_batch_size=size),
        )


def test_finetune_early_stopping_keeps_best(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # A learning rate this high wrecks the model after the first epochs, so the
    # held-out MRR drops and training stops before the last epoch.
    config = _tiny_config(held_out=0.25, epochs=8, patience=1, learning_rate=0.5)
    result = finetune(_pairs(), tmp_path / "out", model=tiny_model_dir, config=config)
    trained = result.epochs[1:]
    best = max(trained, key=lambda epoch: epoch.mrr)
    assert result.best_epoch == best.epoch
    assert len(trained) == result.best_epoch + 1


def test_saved_model_reloads_identically(tmp_path: Path, tiny_model_dir: Path) -> None:
    import torch

    trainer = ContrastiveTrainer(tiny_model_dir, _tiny_config())
    out = tmp_path / "out"
    finetune(_pairs(), out, trainer=trainer)
    texts = [positive for _, positive in TRAIN_PAIRS] + ["an unseen sentence"]

    trainer.model.eval()
    with torch.inference_mode():
        in_memory = trainer.embed(texts, kind="passage").numpy()
    reloaded = Encoder(out, device="cpu").encode_passages(texts)

    cosines = (in_memory * reloaded).sum(axis=1)
    assert cosines.min() >= 0.9999


def test_saved_model_directory_layout(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = _trained_model(tiny_model_dir, tmp_path / "out")
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "modules.json",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
        "semsearch_finetune.json",
    ):
        assert (out / name).is_file(), name
    config_mode = (out / "config.json").stat().st_mode
    assert (out / "model.safetensors").stat().st_mode == config_mode
    spec = resolve_model(out)
    assert spec.pooling == "mean"
    assert spec.normalize
    assert spec.max_seq_length == 128


def test_saved_model_loads_in_sentence_transformers(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    out = _trained_model(tiny_model_dir, tmp_path / "out")
    texts = ["a lighthouse beam", "wild yeast in a starter"]
    theirs = SentenceTransformer(str(out), device="cpu").encode(texts)
    ours = Encoder(out, device="cpu").encode_passages(texts)
    assert np.allclose(np.linalg.norm(theirs, axis=1), 1.0, atol=1e-5)
    assert (theirs * ours).sum(axis=1).min() >= 0.9999


def test_saved_model_fingerprint_differs(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = _trained_model(tiny_model_dir, tmp_path / "out")
    base = Encoder(tiny_model_dir, device="cpu").fingerprint
    tuned = Encoder(out, device="cpu").fingerprint
    assert tuned["weights_sha256"] != base["weights_sha256"]
    assert tuned["dim"] == base["dim"]


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_average_weights_script(tmp_path: Path, tiny_model_dir: Path, share) -> None:
    tuned = _trained_model(tiny_model_dir, tmp_path / "tuned")
    out = tmp_path / "averaged"
    script = Path(__file__).resolve().parents[1] / "scripts" / "average_model_weights.py"
    subprocess.run(
        [sys.executable, str(script), str(tuned), str(out), "--base",
         str(tiny_model_dir), "--share", str(share)],
        check=True, capture_output=True,
    )  # fmt: skip
    texts = ["the keeper trims the wick", "ships pass the lighthouse at night"]
    base_vectors = Encoder(tiny_model_dir, device="cpu").encode_passages(texts)
    tuned_vectors = Encoder(tuned, device="cpu").encode_passages(texts)
    averaged = Encoder(out, device="cpu")
    vectors = averaged.encode_passages(texts)
    expected = {0.0: base_vectors, 1.0: tuned_vectors}.get(share)
    if expected is not None:
        np.testing.assert_allclose(vectors, expected, atol=1e-5)
    else:
        assert not np.allclose(vectors, base_vectors, atol=1e-4)
        assert not np.allclose(vectors, tuned_vectors, atol=1e-4)
    record = json.loads((out / "semsearch_finetune.json").read_text())
    assert record["weights_sha256"] == averaged.fingerprint["weights_sha256"]
    assert record["averaged_with_base"]["share"] == share


def test_average_weights_script_rejects_other_architecture(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "average_model_weights.py"
    # The tiny model against the bundled all-MiniLM-L6-v2: same names, other shapes.
    result = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir), str(tmp_path / "out")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "the models differ in architecture" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_save_model_writes_prompts(tmp_path: Path, tiny_model_dir: Path) -> None:
    from dataclasses import replace

    trainer = ContrastiveTrainer(tiny_model_dir, _tiny_config())
    spec = replace(trainer.spec, query_prefix="query: ", passage_prefix="passage: ")
    out = save_model(trainer.model, trainer.tokenizer, spec, tmp_path / "out")
    reloaded = resolve_model(out)
    assert reloaded.query_prefix == "query: "
    assert reloaded.passage_prefix == "passage: "


# -- reindex ---------------------------------------------------------------------


def _hits_are_valid(hits: list) -> bool:
    return bool(hits) and all(
        hit.id and hit.text and -1.0001 <= hit.score <= 1.0001 for hit in hits
    )


def test_reindex_points_alias_at_new_collection(
    ingested: str, tiny_encoder: Encoder
) -> None:
    with MilvusStore(ingested, "docs") as store:
        old_fingerprint = store.fingerprint()
        rows_before = store.count()
        result = reindex(store, tiny_encoder)
        target = store.alias_target()

    suffix = str(tiny_encoder.fingerprint["weights_sha256"])[:12]
    old_suffix = str(old_fingerprint["weights_sha256"])[:12]
    assert result.new_collection == f"docs_{suffix}"
    assert target == result.new_collection
    assert result.old_collection == f"docs_{old_suffix}"
    assert result.rows == rows_before
    with MilvusStore(ingested, result.old_collection) as old:
        assert old.count() == rows_before


def test_reindex_copies_fields_and_metadata(
    ingested: str, tiny_encoder: Encoder
) -> None:
    with MilvusStore(ingested, "docs") as store:
        store.require()
        fields = [f for f in store.field_names() if f not in ("vector", "sparse")]
        before = {row["id"]: row for row in store.query("", fields)}
        reindex(store, tiny_encoder)
        after = {row["id"]: row for row in store.query("", fields)}
        vectors = store.vectors(list(after))
    assert after == before
    assert any(row["metadata"].get("headings") for row in after.values())
    assert {len(vector) for vector in vectors.values()} == {tiny_encoder.dim}


def test_reindex_search_uses_new_model(
    ingested: str, tiny_encoder: Encoder, tiny_model_dir: Path, encoder: Encoder
) -> None:
    with MilvusStore(ingested, "docs") as store:
        reindex(store, tiny_encoder)
    with SemanticSearch(
        uri=ingested, collection="docs", model=tiny_model_dir
    ) as engine:
        assert _hits_are_valid(engine.search("lava", k=3))
    old_model = SemanticSearch(uri=ingested, collection="docs", encoder=encoder)
    with old_model as engine, pytest.raises(ModelMismatchError):
        engine.search("lava", k=3)


def test_reindex_old_collection_answers_during_copy(
    ingested: str, tiny_encoder: Encoder, encoder: Encoder
) -> None:
    answers = []
    with SemanticSearch(uri=ingested, collection="docs", encoder=encoder) as engine:

        def search_old(copied: int, total: int) -> None:
            answers.append(engine.search("how do lighthouses guide ships", k=3))

        with MilvusStore(ingested, "docs") as store:
            reindex(store, tiny_encoder, batch_rows=2, on_progress=search_old)
    assert len(answers) >= 2
    for hits in answers:
        assert hits[0].doc_id == "lighthouse.md"


def test_reindex_concurrent_searches(
    tmp_path: Path, ingested: str, tiny_encoder: Encoder, tiny_model_dir: Path
) -> None:
    second_dir = _trained_model(tiny_model_dir, tmp_path / "second", seed=1)
    second = Encoder(second_dir, device="cpu")
    with MilvusStore(ingested, "docs") as store:
        reindex(store, tiny_encoder)

    answers: list[list] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def search_loop() -> None:
        try:
            with SemanticSearch(
                uri=ingested, collection="docs", encoder=tiny_encoder
            ) as engine:
                engine.search("volcano", k=3)
                while not done.is_set():
                    answers.append(engine.search_many(["lava", "sourdough"], k=3))
        except BaseException as exc:  # noqa: BLE001 (the asserts below report it)
            errors.append(exc)

    # The store opens the Milvus Lite file before the thread does, because two
    # threads that open the same file at once race to start its server.
    with MilvusStore(ingested, "docs") as store:
        store.require()
        thread = threading.Thread(target=search_loop)
        thread.start()
        try:
            result = reindex(store, second, batch_rows=2)
        finally:
            done.set()
            thread.join(timeout=60)

    assert not errors, errors
    assert answers
    for batch in answers:
        assert all(_hits_are_valid(hits) for hits in batch)
    with MilvusStore(ingested, "docs") as store:
        assert store.alias_target() == result.new_collection
        store.check_fingerprint(second.fingerprint)


def test_reindex_drop_old(ingested: str, tiny_encoder: Encoder) -> None:
    with MilvusStore(ingested, "docs") as store:
        result = reindex(store, tiny_encoder, drop_old=True)
        names = store.client.list_collections()
    assert names == [result.new_collection]


def test_reindex_same_model_rejected(ingested: str, encoder: Encoder) -> None:
    with MilvusStore(ingested, "docs") as store:
        with pytest.raises(ConfigError, match="already embedded with this model"):
            reindex(store, encoder)
        assert store.alias_target() is None


# -- command line ------------------------------------------------------------------


def test_finetune_command_from_collection(
    tmp_path: Path, ingested: str, tiny_model_dir: Path
) -> None:
    out = tmp_path / "tuned"
    args = ["--uri", ingested, "--model", str(tiny_model_dir), "--device", "cpu"]
    args += ["finetune", "--from-collection", "docs", "--out", str(out)]
    args += ["--batch-size", "4", "--epochs", "2", "--lr", "1e-3", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["train_pairs"] + payload["held_out_pairs"] >= 10
    assert payload["epochs"][1]["loss"] > 0
    assert (out / "modules.json").is_file()


def test_finetune_command_triplet_from_collection(
    tmp_path: Path, ingested: str, tiny_model_dir: Path
) -> None:
    out = tmp_path / "tuned"
    args = ["--uri", ingested, "--device", "cpu", "finetune"]
    args += ["--from-collection", "docs", "--out", str(out), "--loss", "triplet"]
    args += ["--max-pairs", "6", "--batch-size", "3", "--max-length", "32", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["config"]["loss"] == "triplet"
    # Without a terminal, progress comes as plain lines on stderr.
    assert "before training: held-out recall@1" in result.stderr
    assert "epoch 1: loss" in result.stderr


def test_finetune_command_mnr_with_mined_negatives(
    tmp_path: Path, ingested: str
) -> None:
    args = ["--uri", ingested, "--device", "cpu", "finetune"]
    args += ["--from-collection", "docs", "--out", str(tmp_path / "tuned")]
    args += ["--hard-negatives", "--max-pairs", "6", "--batch-size", "3"]
    args += ["--max-length", "32", "--held-out", "0", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["config"]["loss"] == "mnr"
    assert payload["train_negatives"] == payload["train_pairs"] > 0


def test_finetune_command_negatives_need_collection(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"anchor": "a", "positive": "p"}\n', encoding="utf-8")
    args = ["finetune", "--pairs", str(pairs), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, [*args, "--hard-negatives"])
    assert result.exit_code == 2
    assert "--hard-negatives mines from a collection" in result.output


def test_finetune_command_mini_batch_not_smaller(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"anchor": "a", "positive": "p"}\n', encoding="utf-8")
    args = ["finetune", "--pairs", str(pairs), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(
        main, [*args, "--batch-size", "4", "--mini-batch-size", "4"]
    )
    assert result.exit_code == 2
    assert "--mini-batch-size 4 is not smaller than --batch-size 4" in result.output
    assert not (tmp_path / "o").exists()


def test_finetune_command_needs_one_source(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["finetune", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "exactly one of --pairs FILE or --from-collection" in result.output


def test_finetune_command_bad_pairs_line(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        '{"anchor": "a", "positive": "p"}\n{"anchor": "b"}\n', encoding="utf-8"
    )
    args = ["finetune", "--pairs", str(pairs), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "pairs.jsonl:2:" in result.output


def test_finetune_command_rejects_full_output(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"anchor": "a", "positive": "p"}\n', encoding="utf-8")
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x", encoding="utf-8")
    args = ["finetune", "--pairs", str(pairs), "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "not empty" in result.output


def test_reindex_command_json(ingested: str, tiny_model_dir: Path) -> None:
    args = ["--uri", ingested, "--collection", "docs", "--model", str(tiny_model_dir)]
    args += ["--device", "cpu", "reindex", "--to-collection", "docs_tiny", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["new_collection"] == "docs_tiny"
    assert payload["alias"] == "docs"
    search = CliRunner().invoke(
        main,
        [
            "--uri",
            ingested,
            "-c",
            "docs",
            "--model",
            str(tiny_model_dir),
            "--device",
            "cpu",
        ]
        + ["search", "lava", "--json", "-k", "2"],
    )
    assert search.exit_code == 0, search.output
    assert len(search.stdout.splitlines()) == 2
