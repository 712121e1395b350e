"""Learnable bridges: shapes, placeholder insertion, frozen LM, save/load.

Everything runs on a tiny random Llama (32-d, 2 layers) with a 30-word word-level
tokenizer built in memory, so the whole file takes seconds and needs no weights.
"""

from __future__ import annotations

import json

import pytest
import torch

from bridges.bridged_lm import IGNORE_INDEX, BridgedLM
from bridges.projector import LinearProjector, MLPProjector
from bridges.query import QueryBridge, sincos_2d
from bridges.registry import create_bridge
from experts.errors import ConfigError

WORDS = (
    "<pad> <s> </s> <unk> a an the two ant ants bee on leaf green flower red yellow caption : describe image "
    "what is this ? . in of black ground"
).split()
PAD, BOS, EOS = 0, 1, 2
LM_DIM, FEAT_DIM = 32, 12
PROMPT = "<image> caption :"


def tiny_tokenizer(*, add_bos: bool = False):
    """A word-level fast tokenizer over :data:`WORDS`; ``add_bos`` makes it prepend ``<s>`` like Llama's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_lm(seed: int = 0, weight_std: float = 0.3):
    """A tiny random ``LlamaForCausalLM``; weights redrawn wide so logits depend on the input (no argmax ties)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=LM_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    lm = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in lm.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=gen) * weight_std)
    return lm.eval()


def tiny_model(
    bridge_kind: str = "mlp", *, seed: int = 0, add_bos: bool = False, lora=None, **bridge_config
) -> BridgedLM:
    torch.manual_seed(seed + 1)
    config = {"num_tokens": 2} if bridge_kind in ("linear", "mlp") else {"num_queries": 3, "hidden_dim": 16}
    config.update(bridge_config)
    bridge = create_bridge(bridge_kind, in_dim=FEAT_DIM, lm_dim=LM_DIM, **config)
    return BridgedLM(tiny_lm(seed), tiny_tokenizer(add_bos=add_bos), bridge, lm_name="tiny-llama", lora=lora)


def features(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, FEAT_DIM, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- bridge shapes
@pytest.mark.parametrize("cls", [LinearProjector, MLPProjector])
def test_projector_pooled_input_gives_num_tokens(cls):
    out = cls(FEAT_DIM, LM_DIM, num_tokens=3)(features(2))
    assert out.shape == (2, 3, LM_DIM)


@pytest.mark.parametrize("cls", [LinearProjector, MLPProjector])
def test_projector_patch_input_gives_one_token_per_patch(cls):
    assert cls(FEAT_DIM, LM_DIM)(torch.randn(2, 7, FEAT_DIM)).shape == (2, 7, LM_DIM)
    with pytest.raises(ConfigError, match="num_tokens"):
        cls(FEAT_DIM, LM_DIM, num_tokens=2)(torch.randn(2, 7, FEAT_DIM))
    with pytest.raises(ConfigError, match="expected features"):
        cls(FEAT_DIM, LM_DIM)(torch.randn(2, 7, FEAT_DIM + 1))


def test_mlp_projector_is_linear_gelu_linear():
    net = MLPProjector(FEAT_DIM, LM_DIM, num_tokens=2, hidden_dim=20).net
    assert [type(m).__name__ for m in net] == ["Linear", "GELU", "Linear"]
    assert (net[0].in_features, net[0].out_features, net[2].out_features) == (FEAT_DIM, 20, 2 * LM_DIM)


@pytest.mark.parametrize("shape", [(2, FEAT_DIM), (2, 9, FEAT_DIM)])
def test_query_bridge_outputs_num_queries(shape):
    bridge = QueryBridge(FEAT_DIM, LM_DIM, num_queries=5, hidden_dim=16, num_layers=2, num_heads=4)
    assert bridge(torch.randn(*shape)).shape == (2, 5, LM_DIM)


def test_query_bridge_pos_2d_needs_a_square_grid():
    bridge = QueryBridge(FEAT_DIM, LM_DIM, num_queries=4, hidden_dim=16, pos_2d=True)
    assert bridge(torch.randn(2, 16, FEAT_DIM)).shape == (2, 4, LM_DIM)
    with pytest.raises(ConfigError, match="square"):
        bridge(torch.randn(2, 10, FEAT_DIM))
    with pytest.raises(ConfigError, match="divisible by 4"):
        QueryBridge(FEAT_DIM, LM_DIM, hidden_dim=18, num_heads=2, pos_2d=True)


def test_sincos_2d_distinguishes_rows_and_columns():
    pe = sincos_2d(3, 8)
    assert pe.shape == (9, 8)
    assert len({tuple(row.tolist()) for row in pe}) == 9  # every patch gets its own code
    # first half encodes the row: patches 0 and 1 share row 0, patches 0 and 3 share column 0
    assert torch.equal(pe[0, :4], pe[1, :4]) and torch.equal(pe[0, 4:], pe[3, 4:])


def test_query_bridge_key_padding_mask_ignores_padded_patches():
    torch.manual_seed(0)
    bridge = QueryBridge(FEAT_DIM, LM_DIM, num_queries=3, hidden_dim=16).eval()
    real = torch.randn(1, 5, FEAT_DIM)
    padded = torch.cat([real, 100 * torch.randn(1, 3, FEAT_DIM)], dim=1)
    mask = torch.tensor([[False] * 5 + [True] * 3])
    with torch.no_grad():
        torch.testing.assert_close(bridge(padded, key_padding_mask=mask), bridge(real))
        assert not torch.allclose(bridge(padded), bridge(real))


@pytest.mark.parametrize(
    "kind,config",
    [
        ("linear", {"num_tokens": 2}),
        ("mlp", {"num_tokens": 4, "hidden_dim": 8}),
        ("query", {"num_queries": 3, "hidden_dim": 16, "num_layers": 1, "num_heads": 2, "pos_2d": True}),
    ],
)
def test_create_bridge_config_round_trips_through_json(kind, config):
    bridge = create_bridge(kind, in_dim=FEAT_DIM, lm_dim=LM_DIM, **config)
    saved = json.loads(json.dumps(bridge.config))
    assert saved["kind"] == kind
    rebuilt = create_bridge(**saved)
    assert type(rebuilt) is type(bridge) and rebuilt.config == bridge.config


def test_create_bridge_rejects_unknown_kind_and_arguments():
    with pytest.raises(ConfigError, match="unknown bridge kind"):
        create_bridge("qformer-xl", in_dim=4, lm_dim=4)
    with pytest.raises(ConfigError, match="num_queries"):
        create_bridge("mlp", in_dim=4, lm_dim=4, num_queries=3)
    with pytest.raises(ConfigError, match="lm_dim"):
        create_bridge("linear", in_dim=4)


# ---------------------------------------------------------------------- inputs
def _ids(model: BridgedLM, text: str) -> list[int]:
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("kind", ["linear", "query"])
def test_soft_tokens_land_exactly_at_the_placeholder(kind):
    model = tiny_model(kind)
    prompts = ["describe the <image> caption :", "<image> what is this ?", "a <image> ."]
    targets = ["an ant", "a bee on a green leaf", "two ants"]
    feats = features(3)
    inputs = model.build_inputs(feats, prompts, targets)
    soft = model.soft_tokens(feats)
    k = soft.shape[1]
    embed = model.lm.get_input_embeddings()

    assert inputs.image_positions == [2, 0, 1]
    for i, (prompt, target) in enumerate(zip(prompts, targets)):
        before, after = prompt.split("<image>")
        b_ids, a_ids, t_ids = _ids(model, before), _ids(model, after), _ids(model, target) + [EOS]
        pos = inputs.image_positions[i]
        n = len(b_ids) + k + len(a_ids) + len(t_ids)
        row = inputs.inputs_embeds[i]
        # soft tokens exactly where the placeholder was; text embeddings around them
        assert torch.equal(row[pos : pos + k], soft[i])
        assert torch.equal(row[:pos], embed(torch.tensor(b_ids, dtype=torch.long)))
        assert torch.equal(row[pos + k : n], embed(torch.tensor(a_ids + t_ids, dtype=torch.long)))
        # labels only on the target and EOS; right padding masked out
        labels = inputs.labels[i].tolist()
        assert labels == [IGNORE_INDEX] * (n - len(t_ids)) + t_ids + [IGNORE_INDEX] * (row.shape[0] - n)
        assert inputs.attention_mask[i].tolist() == [1] * n + [0] * (row.shape[0] - n)
    assert inputs.attention_mask[1].all()  # the longest row has no padding


def test_generation_inputs_are_left_padded_without_labels():
    model = tiny_model("mlp")
    inputs = model.build_inputs(features(2), ["describe the <image> caption :", "<image> ."])
    assert inputs.labels is None
    soft = model.soft_tokens(features(2))
    lengths = [2 + 2 + 2, 0 + 2 + 1]  # before + k + after
    width = inputs.inputs_embeds.shape[1]
    assert width == max(lengths)
    for i, n in enumerate(lengths):
        assert inputs.attention_mask[i].tolist() == [0] * (width - n) + [1] * n
        pos = inputs.image_positions[i]
        assert torch.equal(inputs.inputs_embeds[i, pos : pos + 2], soft[i])
    assert inputs.image_positions == [2, 3]


def test_prompt_without_placeholder_gets_the_image_prepended():
    model = tiny_model("mlp")
    with_ph = model.build_inputs(features(1), ["<image> caption :"], ["an ant"])
    without = model.build_inputs(features(1), ["caption :"], ["an ant"])
    assert without.image_positions == [0]
    assert torch.equal(with_ph.inputs_embeds, without.inputs_embeds)
    assert torch.equal(with_ph.labels, without.labels)


def test_two_placeholders_are_a_config_error():
    model = tiny_model("mlp")
    with pytest.raises(ConfigError, match="2 '<image>' placeholders"):
        model.build_inputs(features(1), ["<image> and <image>"], ["an ant"])


def test_tokenizer_bos_stays_in_front_of_the_image():
    model = tiny_model("mlp", add_bos=True)
    inputs = model.build_inputs(features(1), ["<image> caption :"], ["an ant"])
    embed = model.lm.get_input_embeddings()
    assert inputs.image_positions == [1]
    assert torch.equal(inputs.inputs_embeds[0, 0], embed(torch.tensor(BOS)))
    assert inputs.labels[0].tolist()[-3:] == [WORDS.index("an"), WORDS.index("ant"), EOS]


def test_mismatched_batch_sizes_are_config_errors():
    model = tiny_model("mlp")
    with pytest.raises(ConfigError, match="3 images but 2 prompts"):
        model.build_inputs(features(3), [PROMPT] * 2)
    with pytest.raises(ConfigError, match="targets"):
        model.build_inputs(features(2), [PROMPT] * 2, ["an ant"])


def test_bridge_lm_dim_must_match_the_lm():
    with pytest.raises(ConfigError, match="lm_dim"):
        BridgedLM(tiny_lm(), tiny_tokenizer(), create_bridge("linear", in_dim=FEAT_DIM, lm_dim=LM_DIM + 1))


# ---------------------------------------------------------------------- gradients
def test_only_the_bridge_learns_and_features_are_detached():
    import timm

    model = tiny_model("mlp")
    vision = timm.create_model("test_efficientnet", pretrained=False, num_classes=0).eval()
    lm_before = {n: p.detach().clone() for n, p in model.lm.named_parameters()}
    bridge_before = {n: p.detach().clone() for n, p in model.bridge.named_parameters()}
    vision_before = {n: p.detach().clone() for n, p in vision.named_parameters()}
    assert all(not p.requires_grad for p in model.lm.parameters()) and not model.lm.training

    # features computed *with* autograd through the vision model: the bridge must still stop there
    pooled = vision(torch.randn(2, 3, 32, 32))
    assert pooled.requires_grad
    model.bridge = model.bridge.to(torch.float32)
    proj = torch.nn.Linear(pooled.shape[1], FEAT_DIM)  # fixed map to the bridge's input size
    feats = proj(pooled)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = model.loss(feats, [PROMPT] * 2, ["an ant", "a bee"])
    loss.backward()
    optimizer.step()

    assert all(p.grad is None for p in vision.parameters())
    assert all(p.grad is None for p in proj.parameters())
    assert all(p.grad is None for p in model.lm.parameters())
    assert all(torch.equal(p, lm_before[n]) for n, p in model.lm.named_parameters())
    assert all(torch.equal(p, vision_before[n]) for n, p in vision.named_parameters())
    assert any(not torch.equal(p, bridge_before[n]) for n, p in model.bridge.named_parameters())
    assert {id(p) for p in model.parameters()} == {id(p) for p in model.bridge.parameters()}


# ---------------------------------------------------------------------- generate / save / load
def test_batched_generation_matches_one_at_a_time():
    model = tiny_model("mlp")
    prompts = ["describe the <image> caption :", "<image> ."]
    batched = model.generate(features(2), prompts, max_new_tokens=6)
    singles = [model.generate(features(2)[i : i + 1], [p], max_new_tokens=6)[0] for i, p in enumerate(prompts)]
    assert batched == singles
    assert all(isinstance(text, str) for text in batched) and any(batched)


@pytest.mark.parametrize("kind", ["mlp", "query"])
def test_save_load_gives_identical_loss_and_generation(tmp_path, kind):
    model = tiny_model(kind)
    feats, prompts, targets = features(3), [PROMPT, "what is this <image> ?", PROMPT], ["an ant", "a bee", "a leaf"]
    path = model.save(tmp_path / "bridge")

    assert sorted(p.name for p in path.iterdir()) == ["bridge.json", "bridge.safetensors"]
    meta = json.loads((path / "bridge.json").read_text())
    assert meta["bridge"] == model.bridge.config and meta["lm"] == "tiny-llama"
    assert (meta["feature_dim"], meta["lm_dim"], meta["image_token"]) == (FEAT_DIM, LM_DIM, "<image>")
    assert meta["format_version"] == 1

    loaded = BridgedLM.load(path, model.lm, model.tokenizer)
    with torch.no_grad():
        assert torch.equal(loaded.loss(feats, prompts, targets), model.loss(feats, prompts, targets))
    assert loaded.generate(feats, prompts, max_new_tokens=5) == model.generate(feats, prompts, max_new_tokens=5)


def test_load_rejects_missing_files_and_unknown_versions(tmp_path):
    model = tiny_model("linear")
    with pytest.raises(ConfigError, match="not a saved bridge"):
        BridgedLM.load(tmp_path, model.lm, model.tokenizer)
    path = model.save(tmp_path / "b")
    meta = json.loads((path / "bridge.json").read_text())
    (path / "bridge.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ConfigError, match="format_version"):
        BridgedLM.load(path, model.lm, model.tokenizer)


@pytest.mark.parametrize("kind", ["mlp", "query"])
def test_a_tiny_config_asking_for_a_huge_bridge_costs_no_memory(tmp_path, kind):
    """bridge.json is a file the user only reads: in_dim=10**9 is refused before anything is allocated."""
    import resource

    model = tiny_model(kind)
    path = model.save(tmp_path / "b")
    meta = json.loads((path / "bridge.json").read_text())
    meta["bridge"]["in_dim"] = 10**9  # an MLP of 10**9 x lm_dim floats: gigabytes if built for real
    (path / "bridge.json").write_text(json.dumps(meta))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError, match="do not match the bridge its config describes"):
        BridgedLM.load(path, model.lm, model.tokenizer)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: < 200 MB


def test_soft_tokens_take_the_embedding_dtype():
    model = tiny_model("mlp")
    model.lm.to(torch.bfloat16)
    inputs = model.build_inputs(features(2), [PROMPT] * 2, ["an ant", "a bee"])
    assert inputs.inputs_embeds.dtype == torch.bfloat16
    assert next(model.bridge.parameters()).dtype == torch.float32  # the bridge still trains in fp32
    loss = model.loss(features(2), [PROMPT] * 2, ["an ant", "a bee"])
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------------- question-aware bridges
def _soft_rows(model: BridgedLM, feats, prompts, targets=None) -> list[torch.Tensor]:
    inputs = model.build_inputs(feats, prompts, targets)
    k = getattr(model.bridge, "num_tokens", None) or model.bridge.num_queries
    return [inputs.inputs_embeds[i, p : p + k] for i, p in enumerate(inputs.image_positions)]


@pytest.mark.parametrize("kind", ["mlp", "query"])
def test_a_question_aware_bridge_reads_the_question_and_never_the_answer(kind):
    model, plain = tiny_model(kind, question_aware=True), tiny_model(kind)
    same_image = features(1).repeat(2, 1)
    prompts = ["<image> what is this ?", "<image> describe the caption ."]
    with torch.no_grad():
        asked = _soft_rows(model, same_image, prompts)
        assert not torch.allclose(asked[0], asked[1])  # same image, different question → different soft tokens
        unasked = _soft_rows(plain, same_image, prompts)
        assert torch.allclose(unasked[0], unasked[1], atol=1e-6)
        # The target (the answer) is appended after the question for training: it must not reach the bridge.
        trained = _soft_rows(model, same_image, prompts, ["an ant", "a bee"])
    assert all(torch.allclose(a, t) for a, t in zip(asked, trained))


def test_a_question_aware_projector_pools_only_real_question_tokens():
    bridge = MLPProjector(FEAT_DIM, LM_DIM, num_tokens=2, question_aware=True)
    image, question = features(1), torch.randn(1, 3, LM_DIM)
    padded = torch.cat([question, torch.randn(1, 2, LM_DIM)], dim=1)
    mask = torch.tensor([[True, True, True, False, False]])
    with torch.no_grad():
        assert torch.allclose(bridge(image, question=question), bridge(image, question=padded, question_mask=mask))
    with pytest.raises(ConfigError, match="question-aware"):
        bridge(image)
    one_token = MLPProjector(FEAT_DIM, LM_DIM, num_tokens=1, question_aware=True)
    with pytest.raises(ConfigError, match="pooled"):
        one_token(torch.randn(1, 4, FEAT_DIM), question=question)


def test_a_question_aware_query_bridge_ignores_question_padding_and_needs_the_question():
    bridge = QueryBridge(FEAT_DIM, LM_DIM, num_queries=3, hidden_dim=16, num_layers=1, num_heads=2, question_aware=True)
    patches, question = torch.randn(2, 4, FEAT_DIM), torch.randn(2, 3, LM_DIM)
    padded = torch.cat([question, torch.randn(2, 2, LM_DIM)], dim=1)
    mask = torch.tensor([[True, True, True, False, False]] * 2)
    with torch.no_grad():
        out = bridge(patches, question=question)
        assert out.shape == (2, 3, LM_DIM)  # only the queries come out, not the question's tokens
        assert torch.allclose(out, bridge(patches, question=padded, question_mask=mask), atol=1e-6)
        reordered = bridge(patches, question=question.flip(1))
    assert not torch.allclose(out, reordered, atol=1e-4)  # word order reaches the queries (1-D positions)
    with pytest.raises(ConfigError, match="question-aware"):
        bridge(patches)


@pytest.mark.parametrize("kind", ["mlp", "query"])
def test_a_question_aware_bridge_saves_and_loads(tmp_path, kind):
    model = tiny_model(kind, question_aware=True)
    feats, prompts, targets = features(2), [PROMPT, "what is this <image> ?"], ["an ant", "a bee"]
    loaded = BridgedLM.load(model.save(tmp_path / "bridge"), model.lm, model.tokenizer)
    assert loaded.question_aware and loaded.bridge.config["question_aware"] is True
    with torch.no_grad():
        assert torch.equal(loaded.loss(feats, prompts, targets), model.loss(feats, prompts, targets))
    assert "question_aware" not in tiny_model(kind).bridge.config  # bridges saved before it load unchanged


def test_profiling_a_training_step_of_a_question_aware_bridge_times_the_bridge_with_its_question():
    from bridges.training import profile_step

    model = tiny_model("mlp", question_aware=True)
    pairs = [
        (features(2)[i], p, t) for i, (p, t) in enumerate([(PROMPT, "an ant"), ("what is this <image> ?", "a bee")])
    ]
    profile = profile_step(model, pairs, repeats=1)
    assert profile["step_s"] > 0 and profile["bridge_s"] > 0 and 0.0 <= profile["lm_share"] <= 1.0
    assert all(p.grad is None for p in model.parameters())  # profiling trains nothing


def test_profiling_a_first_stage_step_never_runs_the_lm_decoder():
    from bridges.lm_loss import body_and_head
    from bridges.training import profile_step

    model = tiny_model("mlp")
    pairs = [(features(2)[i], PROMPT, t) for i, t in enumerate(["an ant", "a bee"])]
    body = body_and_head(model.lm)[0] or model.lm
    calls = []
    hook = body.register_forward_hook(lambda *_: calls.append(1))
    try:
        profile_step(model, pairs, repeats=1, answer_token_weight=1.0, lm_weight=0.0)  # the run's own loss
        assert calls == []
        profile_step(model, pairs, repeats=1)  # the default: the LM's loss
        assert calls == [1]
    finally:
        hook.remove()


def test_a_product_fused_projector_multiplies_image_and_question_and_saves_its_fusion(tmp_path):
    bridge = MLPProjector(FEAT_DIM, LM_DIM, num_tokens=2, question_aware=True, question_fusion="product")
    image, question = features(1), torch.randn(1, 3, LM_DIM)
    with torch.no_grad():
        out = bridge(image, question=question)
        fused = torch.tanh(bridge.fuse_image(image)) * torch.tanh(bridge.fuse_question(question.mean(1)))
        assert torch.allclose(out, bridge.net(fused).reshape(1, 2, LM_DIM))
        zero_question = bridge(image, question=torch.zeros_like(question))
    assert not torch.allclose(out, zero_question)
    model = tiny_model("mlp", question_aware=True, question_fusion="product")
    loaded = BridgedLM.load(model.save(tmp_path / "bridge"), model.lm, model.tokenizer)
    assert loaded.bridge.config["question_fusion"] == "product"
    assert "question_fusion" not in tiny_model("mlp", question_aware=True).bridge.config
    for bad in ({"question_fusion": "sum", "question_aware": True}, {"question_fusion": "product"}):
        with pytest.raises(ConfigError, match="question_fusion"):
            MLPProjector(FEAT_DIM, LM_DIM, **bad)


def test_a_normalized_question_ignores_the_lm_embedding_scale_and_is_saved(tmp_path):
    normed = MLPProjector(FEAT_DIM, LM_DIM, question_aware=True, question_fusion="product", question_norm=True)
    plain = MLPProjector(FEAT_DIM, LM_DIM, question_aware=True, question_fusion="product")
    plain.load_state_dict(normed.state_dict())  # no parameters of its own: old bridges load as before
    image, question = features(2), torch.randn(2, 3, LM_DIM)
    with torch.no_grad():
        assert torch.allclose(normed(image, question=question), normed(image, question=question / 6), atol=1e-4)
        assert not torch.allclose(plain(image, question=question), plain(image, question=question / 6), atol=1e-3)
    assert normed.config["question_norm"] is True and "question_norm" not in plain.config
    model = tiny_model("mlp", question_aware=True, question_fusion="product", question_norm=True)
    assert BridgedLM.load(model.save(tmp_path / "bridge"), model.lm, model.tokenizer).bridge.question_norm
    with pytest.raises(ConfigError, match="question_norm"):
        MLPProjector(FEAT_DIM, LM_DIM, question_norm=True)


def test_without_the_lm_loss_the_lm_never_runs_and_the_loss_is_the_answer_token_loss():
    model = tiny_model("mlp")
    feats, prompts, targets = features(2), [PROMPT] * 2, ["an ant", "a bee"]
    calls = []
    model.lm.register_forward_hook(lambda *_: calls.append(1))
    model.lm.model.register_forward_hook(lambda *_: calls.append(1))
    loss = model.loss(feats, prompts, targets, answer_token_weight=1.0, lm_weight=0.0)
    assert calls == []
    inputs = model.build_inputs(feats, prompts, targets)
    assert torch.allclose(loss, model.answer_token_loss(inputs, targets))
    model.loss(feats, prompts, targets)
    assert calls  # the LM's loss runs the LM
    with pytest.raises(ConfigError, match="nothing to train"):
        model.loss(feats, prompts, targets, lm_weight=0.0)
