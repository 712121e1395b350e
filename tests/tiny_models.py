"""Tiny, randomly initialised stand-ins for real checkpoints, built offline in seconds.

:func:`write_dinov2_hub` writes a local torch.hub repo with DINOv2's entry point and
``forward_features`` API over timm's ViT-S/14 port (random weights); the tests and
``bench/experts.py`` load it with ``source="local"``.

:func:`build_tiny_blip` writes a BLIP image-captioning model with the real
architecture (``BlipForConditionalGeneration`` + ``BlipProcessor``) but a tiny
config and a 30-word vocabulary, so the captioner's whole load/generate/decode
path runs without the 1 GB hub checkpoint.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

#: BERT specials at the ids ``BertTokenizer`` expects, then BLIP's decoder bos ``[DEC]``.
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
WORDS = (
    "a an the of on in with picture photo dog cat bus man woman street road red blue ant bee sitting standing , . :"
).split()
VOCAB = SPECIALS + WORDS
PAD_ID, SEP_ID, DEC_ID = VOCAB.index("[PAD]"), VOCAB.index("[SEP]"), VOCAB.index("[DEC]")

IMAGE_SIZE = 64


def build_tiny_blip(out_dir: Path, *, seed: int = 0, weight_std: float = 0.3) -> Path:
    """Save a tiny random BLIP captioner (model + processor) to ``out_dir`` and return it.

    The default init (std 0.02, vision 1e-10) gives near-uniform logits that ignore
    the image, so every weight matrix is redrawn with ``weight_std``: captions then
    depend on the image and greedy argmaxes are far from ties.
    """
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file = out_dir.parent / f"{out_dir.name}-vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(vocab_file), bos_token="[DEC]")
    ids = tokenizer.convert_tokens_to_ids(SPECIALS)
    if ids != list(range(len(SPECIALS))) or tokenizer.bos_token_id != DEC_ID:
        raise AssertionError(f"tiny vocab ids do not line up: {dict(zip(SPECIALS, ids))}")
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}), tokenizer=tokenizer
    )

    config = BlipConfig(
        text_config={
            "vocab_size": len(VOCAB),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "bos_token_id": DEC_ID,
            "pad_token_id": PAD_ID,
            "sep_token_id": SEP_ID,
            "eos_token_id": SEP_ID,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 16,
        },
        projection_dim=32,
        image_text_hidden_size=32,
    )
    model = BlipForConditionalGeneration(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" not in name.lower() and "layer_norm" not in name.lower():
                param.copy_(torch.randn(param.shape, generator=gen) * weight_std)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


HUBCONF = textwrap.dedent(
    '''
    """A local stand-in for facebookresearch/dinov2: same ViT-S/14 (timm's port), same forward_features API."""
    import timm
    import torch

    dependencies = ["torch", "timm"]


    class _Dinov2(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224)

        def forward_features(self, x):
            tokens = self.vit.forward_features(x)  # final norm applied, like DINOv2's x_norm_*
            n = self.vit.num_prefix_tokens
            return {"x_norm_clstoken": tokens[:, 0], "x_norm_patchtokens": tokens[:, n:]}

        def forward(self, x):
            return self.forward_features(x)["x_norm_clstoken"]


    def dinov2_vits14(pretrained=True, **kwargs):
        if pretrained:
            raise RuntimeError("this test repo has no pretrained weights to download")
        torch.manual_seed(0)
        return _Dinov2()
    '''
)


def write_dinov2_hub(directory: str | Path) -> Path:
    """Write the stand-in ``hubconf.py`` into ``directory`` and return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hubconf.py").write_text(HUBCONF)
    return directory
