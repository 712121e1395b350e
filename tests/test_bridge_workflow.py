"""Stage-1 bridge training through the feature store, captions, the describe tool and the `bridge` CLI."""

from __future__ import annotations

import json
import re

import pytest
import torch
from test_bridges import LM_DIM, tiny_lm, tiny_tokenizer
from typer.testing import CliRunner

from agents.chat import ScriptedChatModel
from agents.planner import Planner
from agents.tools import ExpertToolbox
from bridges.bridged_lm import BridgedLM
from bridges.registry import create_bridge
from cache.store import DirectoryStore
from workflows.bridging import BridgeJob, CaptionPair, read_pairs
from workflows.cli import app

pytestmark = pytest.mark.slow

CAPTIONS = [
    "an ant on the green leaf",
    "a bee on the yellow flower",
    "two ants on the ground",
    "a bee in the red flower",
]


@pytest.fixture
def pairs(hymenoptera):
    ants = sorted((hymenoptera / "train" / "ants").iterdir())[:2]
    bees = sorted((hymenoptera / "train" / "bees").iterdir())[:2]
    images = [ants[0], bees[0], ants[1], bees[1]]
    return [CaptionPair(str(p), c) for p, c in zip(images, CAPTIONS)]


@pytest.fixture
def job(efficientnet, tmp_path):
    torch.manual_seed(0)
    bridge = create_bridge("mlp", in_dim=1280, lm_dim=LM_DIM, num_tokens=2)
    model = BridgedLM(tiny_lm(), tiny_tokenizer(), bridge, lm_name="tiny-llama")
    return BridgeJob(efficientnet, model, DirectoryStore(tmp_path / "store"), prompt="<image> caption :")


def counting(expert, monkeypatch) -> list[int]:
    calls: list[int] = []
    original = expert.predict

    def predict(images):
        calls.append(len(images))
        return original(images)

    monkeypatch.setattr(expert, "predict", predict)
    return calls


def test_epochs_train_on_stored_features_and_a_rerun_runs_no_vision_model(job, pairs, efficientnet, monkeypatch):
    calls = counting(efficientnet, monkeypatch)
    first = job.train(pairs, epochs=4, batch_size=4, lr=1e-2, seed=0)
    assert sum(calls) == 4  # each image through the expert once, for all four epochs
    assert first.history[-1]["train_loss"] < first.history[0]["train_loss"]
    calls.clear()
    job.train(pairs, epochs=2, batch_size=4, lr=1e-2, seed=0)
    assert calls == []  # a second run reads every feature from the store


def test_unreadable_training_images_are_left_out_and_reported(job, pairs, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    result = job.train([*pairs, CaptionPair(str(broken), "a bee")], epochs=1, batch_size=8)
    assert list(job.dropped) == [str(broken)] and "broken.jpg" in job.dropped[str(broken)]
    assert result.history[0]["train_loss"] > 0


def test_captions_come_from_the_bridged_lm_and_a_bad_image_fails_alone(job, pairs, tmp_path):
    missing = str(tmp_path / "missing.jpg")
    rows = job.caption([pairs[0].image, missing, pairs[1].image], max_new_tokens=6)
    assert [("caption" in r, "error" in r) for r in rows] == [(True, False), (False, True), (True, False)]
    vectors, _ = job.features([pairs[0].image])
    expected = job.model.generate(vectors[0][None], [job.prompt], 6)[0].strip()
    assert rows[0]["caption"] == expected and "missing.jpg" in rows[1]["error"]


def test_planner_can_describe_the_image_through_the_bridge(job, pairs):
    model = ScriptedChatModel(steps=[{"tool": "describe_image", "args": {}}, {"content": "Answer: an insect"}])
    toolbox = ExpertToolbox(describer=job.model, describer_expert=job.expert, describe_prompt=job.prompt)
    result = Planner(model, toolbox).run(pairs[0].image, "What is in the image?")
    step = result.trace.tool_steps[0]
    assert step.tool == "describe_image" and step.error is None
    expected = job.caption([pairs[0].image], max_new_tokens=32)[0]["caption"]
    assert step.evidence == {"type": "caption", "text": expected, "score": None}
    assert result.evidence_used == ["describe_image"]


def test_read_pairs_from_jsonl_and_csv(tmp_path):
    (tmp_path / "p.jsonl").write_text(
        '{"image": "a.jpg", "text": "an ant"}\n\n{"image": "/abs/b.jpg", "text": "a bee"}\n'
    )
    assert read_pairs(tmp_path / "p.jsonl") == [
        CaptionPair(str(tmp_path / "a.jpg"), "an ant"),
        CaptionPair("/abs/b.jpg", "a bee"),
    ]
    (tmp_path / "p.csv").write_text("image,text\nc.jpg,two ants\n")
    assert read_pairs(tmp_path / "p.csv") == [CaptionPair(str(tmp_path / "c.jpg"), "two ants")]
    (tmp_path / "bad.jsonl").write_text('{"image": "a.jpg"}\n')
    from experts import ConfigError

    with pytest.raises(ConfigError, match="row 1"):
        read_pairs(tmp_path / "bad.jsonl")


def test_bridge_cli_trains_on_real_smollm2_then_evaluates_and_captions(pairs, tmp_path, monkeypatch):
    """Real SmolLM2-135M + real EfficientNet-Lite0 features, end to end through the shell commands."""
    monkeypatch.setenv("EXPERTBRIDGE_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("EXPERTBRIDGE_OFFLINE", "1")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"image": p.image, "text": p.text}) + "\n" for p in pairs[:3]))
    out = tmp_path / "bridge"
    runner = CliRunner()
    res = runner.invoke(
        app, ["bridge", "train", str(data), "--out", str(out), "--epochs", "50", "--lr", "0.01", "--batch-size", "3"]
    )
    assert res.exit_code == 0, res.output
    # piped (not a terminal): plain progress lines, the first and the last at least, never a tqdm bar
    assert "bridge: 0/50 steps 0 s" in res.output and not re.search(r"bridge: +\d+%\|", res.output), res.output
    assert re.search(r"^bridge: 50/50 steps \(epoch=50, loss=\d+\.\d{4}\) \d+ s, done$", res.output, re.M)
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["train_loss"] < 0.2 * history[0]["train_loss"]
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "bridge.json",
        "bridge.safetensors",
        "history.json",
        "job.json",
        "train.json",
    ]
    res = runner.invoke(app, ["bridge", "eval", str(out), str(data)])
    assert res.exit_code == 0, res.output
    loss = float(re.findall(r"caption loss ([0-9.]+)", res.output)[-1])
    assert loss < 0.2 * history[0]["train_loss"]  # the saved + reloaded bridge keeps what it learned
    captions = tmp_path / "captions.jsonl"
    res = runner.invoke(app, ["bridge", "caption", str(out), pairs[0].image, "--out", str(captions)])
    assert res.exit_code == 0, res.output
    row = json.loads(captions.read_text())
    print(
        "trained:",
        pairs[0].text,
        "| generated:",
        row["caption"],
        "| loss",
        history[0]["train_loss"],
        "->",
        history[-1]["train_loss"],
    )
    assert row["caption"] == pairs[0].text  # greedy decoding reproduces the trained caption
