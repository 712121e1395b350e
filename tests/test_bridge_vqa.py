"""Bridges on VQA: pairs and scoring, the Q-Former's key-padding mask through BridgedLM, the
target-only loss, short-answer decoding, the report — and (slow) a real bridge trained on a
tiny easy-VQA subset through the CLI, scored on held-out questions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_bridges import FEAT_DIM, PROMPT, features, tiny_model

from bridges.bridged_lm import BridgedLM, pad_features
from bridges.lm_loss import body_and_head
from bridges.query import QueryBridge, sincos_2d
from experts.errors import ConfigError
from workflows.bridging import VQAEval
from workflows.vqa import VQAPair, normalize_answer, read_vqa, read_vqa_pairs, score_answers


# ---------------------------------------------------------------------- data and scoring
def test_vqa_pairs_from_jsonl_and_csv_with_kinds(tmp_path):
    (tmp_path / "q.jsonl").write_text(
        '{"image": "a.png", "question": "what color is the shape?", "answer": "red"}\n\n'
        '{"image": "/abs/b.png", "question": "how many?", "answer": "2", "kind": "count"}\n'
    )
    assert read_vqa_pairs(tmp_path / "q.jsonl") == [
        VQAPair(str(tmp_path / "a.png"), "what color is the shape?", "red", "color"),
        VQAPair("/abs/b.png", "how many?", "2", "count"),
    ]
    (tmp_path / "q.csv").write_text("image,question,answer\nc.png,is there not a red shape?,no\n")
    assert read_vqa_pairs(tmp_path / "q.csv") == [
        VQAPair(str(tmp_path / "c.png"), "is there not a red shape?", "no", "negated")
    ]
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png", "question": "q?"}\n')
    with pytest.raises(ConfigError, match="row 1"):
        read_vqa_pairs(tmp_path / "bad.jsonl")
    with pytest.raises(ConfigError, match="easy-vqa"):
        read_vqa("easy-vqa:test:many")


def test_easy_vqa_source_is_stratified_and_seeded():
    pairs = read_vqa("easy-vqa:test:40")
    assert len(pairs) == 40 and {p.kind for p in pairs} == {"shape", "color", "presence", "negated"}
    assert sum(p.kind == "negated" for p in pairs) == 10
    assert read_vqa("easy-vqa:test:40") == pairs and read_vqa("easy-vqa:test:40", seed=1) != pairs
    assert all(Path(p.image).is_file() for p in pairs[:3])


def test_exact_match_of_normalized_answers_per_kind_and_confusion():
    assert normalize_answer(" The  Red!\n") == "red" and normalize_answer("a circle.") == "circle"
    pairs = [
        VQAPair("a", "what shape is in the image?", "circle"),
        VQAPair("b", "what shape is in the image?", "triangle"),
        VQAPair("c", "is there a red shape?", "yes"),
        VQAPair("d", "is no circle present?", "no"),
    ]
    score = score_answers(pairs, ["Circle.", "circle", "yes", ""])
    assert (score.correct, score.total) == (2, 4) and score.accuracy == 0.5
    assert score.per_kind == {"shape": (1, 2), "presence": (1, 1), "negated": (0, 1)}
    assert score.confusion[("triangle", "circle")] == 1 and score.confusion[("no", "")] == 1
    assert score.to_dict()["per_kind"]["shape"]["accuracy"] == 0.5
    with pytest.raises(ConfigError):
        score_answers(pairs, ["yes"])


# ---------------------------------------------------------------------- Q-Former masks through BridgedLM
def test_pad_features_masks_the_padding():
    feats, mask = pad_features([torch.ones(4, 3), torch.full((9, 3), 2.0), torch.ones(3)])
    assert feats.shape == (3, 9, 3)
    assert mask.sum(dim=1).tolist() == [5, 0, 8]
    assert feats[0, 4:].abs().sum() == 0 and feats[2, 0].tolist() == [1.0, 1.0, 1.0]
    same, none = pad_features([torch.ones(4, 3), torch.ones(4, 3)])
    assert none is None and same.shape == (2, 4, 3)


@pytest.mark.parametrize("pos_2d", [False, True])
def test_bridged_lm_batches_images_with_different_patch_counts_through_the_mask(pos_2d):
    """A 2×2 and a 3×3 patch grid in one batch give each image exactly its soft tokens alone."""
    model = tiny_model("query", pos_2d=pos_2d)
    gen = torch.Generator().manual_seed(0)
    small, large = torch.randn(4, FEAT_DIM, generator=gen), torch.randn(9, FEAT_DIM, generator=gen)
    together = model.soft_tokens([small, large])
    alone = torch.cat([model.soft_tokens(small[None]), model.soft_tokens(large[None])])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    # without the mask the zero padding would be read as patches: a different answer
    padded, _ = pad_features([small, large])
    assert not torch.allclose(model.bridge(padded)[0], alone[0], atol=1e-3)
    # the loss runs on such a batch
    assert torch.isfinite(model.loss([small, large], [PROMPT, PROMPT], ["an ant", "a bee"]))


def test_pos_2d_gives_each_row_its_own_grid():
    bridge = QueryBridge(FEAT_DIM, 8, num_queries=2, hidden_dim=8, num_layers=1, num_heads=2, pos_2d=True)
    mask = torch.tensor([[False] * 4 + [True] * 5, [False] * 9])
    pos = bridge._positions(2, 9, mask)
    torch.testing.assert_close(pos[0, :4], sincos_2d(2, 8))
    torch.testing.assert_close(pos[1], sincos_2d(3, 8))
    assert pos[0, 4:].abs().sum() == 0
    with pytest.raises(ConfigError, match="square"):
        bridge._positions(1, 9, torch.tensor([[False] * 5 + [True] * 4]))


def test_projectors_refuse_mixed_patch_counts():
    model = tiny_model("mlp")
    with pytest.raises(ConfigError, match="different patch counts"):
        model.soft_tokens([torch.randn(4, FEAT_DIM), torch.randn(9, FEAT_DIM)])


# ---------------------------------------------------------------------- loss and decoding
@pytest.mark.parametrize("add_bos", [False, True])
def test_target_only_logits_give_the_lms_own_loss(add_bos):
    model = tiny_model("mlp", add_bos=add_bos)
    feats = torch.randn(3, FEAT_DIM, generator=torch.Generator().manual_seed(2))
    prompts, targets = [PROMPT, "what is this ? <image>", PROMPT], ["an ant", "a bee on the leaf", "two"]
    inputs = model.build_inputs(feats, prompts, targets)
    reference = model.lm(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask, labels=inputs.labels)
    torch.testing.assert_close(model.loss(feats, prompts, targets), reference.loss, atol=1e-5, rtol=1e-5)
    assert body_and_head(model.lm)[0] is model.lm.model


def test_generate_cuts_answers_at_a_stop_string(monkeypatch):
    model = tiny_model("mlp")
    feats = torch.randn(2, FEAT_DIM, generator=torch.Generator().manual_seed(3))
    free = model.generate(feats, [PROMPT, PROMPT], 6)
    assert all(free)
    first_word = free[0].split()[0]
    cut = model.generate(feats, [PROMPT, PROMPT], 6, stop=[" "])  # a stop string that is not one token
    assert cut[0] == first_word
    # a single-token stop string also ends decoding: the LM is asked to stop on its id
    seen = {}
    original = model.lm.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(model.lm, "generate", spy)
    model.generate(feats, [PROMPT, PROMPT], 3, stop=["ant"])
    assert seen["eos_token_id"] == [model.tokenizer.eos_token_id, model.tokenizer.convert_tokens_to_ids("ant")]


# ---------------------------------------------------------------------- report
def test_vqa_report_has_kinds_confusion_examples_and_loss_curve(tmp_path):
    import easy_vqa as ev

    image = next(iter(ev.get_test_image_paths().values()))
    pairs = [
        VQAPair(image, "what shape is in the image?", "circle"),
        VQAPair(image, "what color is the shape?", "red"),
        VQAPair(image, "is there a <b>red</b> shape?", "yes"),
    ]
    preds = ["circle", "brown", "yes"]
    evaluation = VQAEval(score_answers(pairs, preds), pairs, preds, 0.3)
    history = [{"epoch": 1, "train_loss": 2.0, "val_loss": None, "steps": 2, "step_losses": [3.0, 1.0]},
               {"epoch": 2, "train_loss": 0.5, "val_loss": None, "steps": 2, "step_losses": [0.6, 0.4]}]  # fmt: skip
    from workflows.bridge_report import confusion_table, write_vqa_report

    page = write_vqa_report(tmp_path, evaluation, history=history, title="t")
    text = page.read_text()
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert "66.7%" in text and "&lt;b&gt;red&lt;/b&gt;" in text and "<b>red</b>" not in text
    assert text.count("data:image/png;base64,") == 3
    labels, counts = confusion_table(evaluation.score)
    assert labels == ["circle", "red", "yes", "brown"]
    assert counts[labels.index("red")] == [0, 0, 0, 1]
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["correct"] == 2 and summary["seconds_per_answer"] == pytest.approx(0.1)


def test_a_read_out_answers_with_the_one_answer_whose_first_token_the_soft_token_reads_as(monkeypatch):
    """``bridge eval --read-out``: no LM run; the head's token on the last soft token, named by the answer it
    starts. A token that starts two answers names neither (it stays the bare token, scored as it is)."""
    from workflows.bridging import BridgeJob

    model = tiny_model("mlp")
    job = BridgeJob(None, model, prompt="<image> {question}", task="vqa")  # type: ignore[arg-type]
    answers = ["ant", "red flower", "two ants", "bee"]
    pairs = [VQAPair(f"{i}.png", "what is this ?", a) for i, a in enumerate(answers)]
    vectors = list(features(len(pairs)))
    monkeypatch.setattr(job, "features", lambda images: (vectors, {}))

    def token(word: str) -> int:
        return model.tokenizer(word, add_special_tokens=False).input_ids[0]

    read = [token("ant"), token("red"), token("two"), token("green")]
    seen = []
    monkeypatch.setattr(model, "read_out", lambda feats, prompts: seen.append(prompts) or read)
    assert job.answer(pairs, read_out=True) == ["ant", "red flower", "two ants", "green"]
    assert seen == [["<image> what is this ?"] * 4]
    assert job._answers_by_first_token({"red", "red flower", "bee"}) == {token("bee"): "bee"}
    assert job.evaluate_vqa(pairs, read_out=True).score.correct == 3


# ---------------------------------------------------------------------- real weights, end to end
@pytest.mark.slow
def test_real_bridge_learns_its_training_questions_and_is_scored_on_held_out_ones(tmp_path, monkeypatch):
    """SmolLM2-135M (frozen) + EfficientNet-Lite0 features, through `bridge train` / `bridge eval`."""
    from typer.testing import CliRunner

    from cache.store import DirectoryStore
    from workflows.bridging import BridgeJob
    from workflows.cli import app

    monkeypatch.setenv("EXPERTBRIDGE_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("EXPERTBRIDGE_OFFLINE", "1")
    train = read_vqa("easy-vqa:train:12", seed=5)
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"image": p.image, "question": p.question, "answer": p.answer}) + "\n" for p in train)
    )
    out = tmp_path / "bridge"
    runner = CliRunner()
    args = ["bridge", "train", str(data), "--out", str(out), "--kind", "mlp", "--image-size", "128"]
    res = runner.invoke(app, [*args, "--epochs", "40", "--batch-size", "12", "--lr", "0.01", "--warmup-steps", "2"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "train.json").read_text())
    assert summary["task"] == "vqa" and summary["pairs"] == 12 and summary["steps"] == 40
    assert 0.5 < summary["profile"]["lm_share"] < 1.0 and summary["peak_rss_mb"] > 100

    job = BridgeJob.load(out, store=DirectoryStore(tmp_path / "store"))
    trained = job.evaluate_vqa(train)
    print("trained answers:", list(zip([p.answer for p in train], trained.predictions)))
    assert trained.predictions == [p.answer for p in train]  # pinned: every training question answered right

    held_out = read_vqa("easy-vqa:test:40")
    res = runner.invoke(app, ["bridge", "eval", str(out), "easy-vqa:test:40", "--report", str(tmp_path / "report")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report" / "eval.json").read_text())
    assert report["total"] == 40 and sum(k["total"] for k in report["per_kind"].values()) == 40
    again = job.evaluate_vqa(held_out)
    assert (
        report["correct"]
        == again.score.correct
        == sum(normalize_answer(a) == normalize_answer(p.answer) for a, p in zip(again.predictions, held_out))
    )
    assert (tmp_path / "report" / "loss.png").is_file() and "Examples" in (
        tmp_path / "report" / "report.html"
    ).read_text()

    # a deliberately broken bridge (its output layer zeroed) scores lower on what the trained one got right
    with torch.no_grad():
        job.model.bridge.net[-1].weight.zero_()
        job.model.bridge.net[-1].bias.zero_()
    broken = job.evaluate_vqa(train)
    assert broken.score.correct < trained.score.correct
    assert isinstance(job.model, BridgedLM)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kind", "mlp", "--features", "patches", "--question-aware"], "--question-aware"),
        (["--kind", "mlp", "--pos-2d"], "--pos-2d"),
        (["--kind", "mlp", "--question-fusion", "product"], "--question-fusion"),
        (["--kind", "mlp", "--question-norm"], "--question-norm"),
        (["--kind", "query", "--question-aware", "--question-norm"], "--question-norm"),
    ],
)
def test_bridge_options_for_another_kind_are_a_usage_error(tmp_path, monkeypatch, flags, message):
    from typer.testing import CliRunner

    from workflows.cli import app

    monkeypatch.setenv("EXPERTBRIDGE_STORE_DIR", str(tmp_path / "store"))
    res = CliRunner().invoke(app, ["bridge", "train", "easy-vqa:train:8", "--out", str(tmp_path / "b"), *flags])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "b").exists()  # nothing trained, nothing written


def test_read_out_on_caption_pairs_is_a_usage_error_before_any_model_loads(tmp_path):
    from typer.testing import CliRunner

    from workflows.cli import app

    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"image": str(tmp_path / "a.png"), "text": "an ant"}) + "\n")
    res = CliRunner().invoke(app, ["bridge", "eval", str(tmp_path / "no-bridge"), str(captions), "--read-out"])
    assert res.exit_code == 2 and "--read-out scores VQA answers" in res.output, res.output
