"""PEFT interoperability: lorabench adapters exported as PEFT folders, PEFT folders read back.

Every round trip runs on the tiny BERT (and GPT-2, whose Conv1D stores its weight transposed)
with a classification head, in float64: export -> ``peft.PeftModel.from_pretrained`` gives
lorabench's logits (1e-5), and a PEFT-made adapter saved with ``save_pretrained`` ->
``load_adapter`` gives PEFT's. Folders written in lorabench 0.1's layout (PEFT's file names
with lorabench's contents) still load and export.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import build_model, logits, make_batch

from lorabench.models import head_parameter_names, reset_head
from lorabench.variants import (
    ConfigError,
    PeftFormatError,
    attach,
    export_peft,
    load_adapter,
)
from lorabench.variants.adapter import (
    CONFIG_FILE,
    HEAD_FILE,
    LEGACY_CONFIG_FILE,
    LEGACY_WEIGHTS_FILE,
    WEIGHTS_FILE,
)

peft = pytest.importorskip("peft")
pytestmark = [
    pytest.mark.peft,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

ATOL = 1e-5
BATCH = make_batch(batch=3)

# variant, its config, and how many ranks to prune/use (AdaLoRA's mask, DyLoRA's export rank)
CASES = {
    "lora": ("lora", {"r": 4, "alpha": 16.0}),
    "rslora": ("lora", {"r": 4, "alpha": 16.0, "use_rslora": True}),
    "dora": ("dora", {"r": 4, "alpha": 8.0}),
    "vera": ("vera", {"r": 8}),
    "vera-seed-only": ("vera", {"r": 8, "save_projection": False}),
    "adalora": ("adalora", {"r": 6, "target_r": 3, "alpha": 12.0}),
    "dylora": ("dylora", {"r": 6, "alpha": 8.0}),
}


def trained(variant: str, family: str = "bert", **config):
    """A model with ``variant`` attached and trained-like: every trainable tensor moved away from
    its initial value (B no longer zero, VeRA's b no longer zero, AdaLoRA's lambda set and half
    its triplets pruned), and a task head other than the base model's."""
    model = build_model(family)
    adapter = attach(model, variant, **config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in adapter.layers.values():
            for name in layer.trainable_names:
                p = getattr(layer, name)
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
            if variant == "adalora":  # prune every other triplet, as the allocator would
                layer.rank_mask[::2] = False
                layer.lora_E[::2] = 0.0
        reset_head(model, 11)
    if variant == "dylora":
        adapter.set_eval_rank(3)
    return model, adapter


def save_with_head(adapter, model, folder: Path) -> Path:
    """What the runner keeps for a run: the adapter and its trained head beside it."""
    adapter.save(folder)
    wanted = set(head_parameter_names(model))
    head = {n: p.detach().contiguous() for n, p in model.named_parameters() if n in wanted}
    save_file(head, str(folder / HEAD_FILE))
    return folder


def peft_logits(folder: Path, family: str = "bert") -> torch.Tensor:
    model = peft.PeftModel.from_pretrained(build_model(family), str(folder))
    with torch.no_grad():
        return logits(model.eval(), BATCH)


def ours(model) -> torch.Tensor:
    with torch.no_grad():
        return logits(model, BATCH)


def base_logits(family: str = "bert") -> torch.Tensor:
    return ours(build_model(family))


# -- export -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("case", list(CASES))
def test_export_gives_lorabench_logits_in_peft(case, family, tmp_path):
    variant, config = CASES[case]
    model, adapter = trained(variant, family, **config)
    expected = ours(model)
    assert not torch.allclose(expected, base_logits(family), atol=1e-3)  # it changes the outputs

    # From the attached adapter (its model's head goes along) ...
    export_peft(adapter, tmp_path / "from-adapter")
    torch.testing.assert_close(
        peft_logits(tmp_path / "from-adapter", family), expected, atol=ATOL, rtol=0
    )
    # ... and from a saved folder, without the model.
    folder = save_with_head(adapter, model, tmp_path / "saved")
    export_peft(folder, tmp_path / "from-folder")
    torch.testing.assert_close(
        peft_logits(tmp_path / "from-folder", family), expected, atol=ATOL, rtol=0
    )

    config_json = json.loads((tmp_path / "from-folder" / "adapter_config.json").read_text())
    assert config_json["modules_to_save"] == (["classifier"] if family == "bert" else ["score"])
    # Export's output reads back into lorabench too.
    back = load_adapter(build_model(family), tmp_path / "from-folder")
    torch.testing.assert_close(ours(back.model), expected, atol=ATOL, rtol=0)


def test_exported_files_follow_peft_layout(tmp_path):
    _, adapter = trained("adalora", r=6, target_r=3)
    export_peft(adapter, tmp_path / "ada")
    config = json.loads((tmp_path / "ada" / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA" and config["init_r"] == 6
    name = "bert.encoder.layer.0.attention.self.query"
    assert config["rank_pattern"][f"{name}.lora_E"] == [False, True] * 3
    loaded = peft.PeftModel.from_pretrained(build_model("bert"), str(tmp_path / "ada"))
    assert loaded.peft_config["default"].rank_pattern[f"{name}.lora_E"] == [False, True] * 3
    assert loaded.base_model.model.get_submodule(name).lora_E["default"].shape == (3, 1)

    _, adapter = trained("vera", r=8)
    export_peft(adapter, tmp_path / "vera")
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "vera" / "adapter_model.safetensors")))
    assert {"base_model.vera_A", "base_model.vera_B"} <= keys
    assert f"base_model.model.{name}.vera_lambda_b" in keys
    assert "base_model.model.classifier.weight" in keys


def test_dylora_exports_at_the_chosen_rank(tmp_path):
    model, adapter = trained("dylora", r=6)
    for rank in (1, 6):
        adapter.set_eval_rank(rank)
        export_peft(adapter, tmp_path / f"r{rank}", rank=rank)
        config = json.loads((tmp_path / f"r{rank}" / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["r"] == rank
        torch.testing.assert_close(
            peft_logits(tmp_path / f"r{rank}"), ours(model), atol=ATOL, rtol=0
        )
    with pytest.raises(ConfigError, match=r"outside 1\.\.6"):
        export_peft(adapter, tmp_path / "r7", rank=7)
    _, lora = trained("lora", r=4)
    with pytest.raises(ConfigError, match="only to nested-rank variants"):
        export_peft(lora, tmp_path / "lora", rank=2)


@pytest.mark.parametrize("variant", ["sora", "increlora"])
def test_variants_without_a_peft_type_are_refused(variant, tmp_path):
    _, adapter = trained(variant, r=4)
    with pytest.raises(PeftFormatError, match=rf"{variant!r} has no PEFT counterpart") as info:
        export_peft(adapter, tmp_path / "out")
    for supported in ("adalora", "dora", "dylora", "lora", "vera"):
        assert f"{supported} (" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_export_refuses_to_overwrite_a_lorabench_0_1_folder(tmp_path):
    model, adapter = trained("lora", r=4)
    old = legacy_folder(adapter, model, tmp_path / "old")
    with pytest.raises(PeftFormatError, match="would overwrite it"):
        export_peft(old, old)


# -- import -------------------------------------------------------------------------------------
def peft_made(config, family: str = "bert"):
    """A PEFT model of ``config`` with every adapter tensor and its head moved from init."""
    model = peft.get_peft_model(build_model(family), config)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "ranknum" not in name:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return model.eval()


PEFT_CASES = {
    "lora": lambda: peft.LoraConfig(
        r=4, lora_alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"]
    ),
    "rslora": lambda: peft.LoraConfig(
        r=4,
        lora_alpha=16,
        use_rslora=True,
        target_modules=["query", "value"],
        modules_to_save=["classifier"],
    ),
    "dora": lambda: peft.LoraConfig(
        r=4,
        lora_alpha=8,
        use_dora=True,
        target_modules=["query", "key", "value"],
        modules_to_save=["classifier"],
    ),
    "vera": lambda: peft.VeraConfig(
        r=8, target_modules=["query", "value"], modules_to_save=["classifier"]
    ),
    "vera-seed-only": lambda: peft.VeraConfig(
        r=8,
        target_modules=["query", "value"],
        save_projection=False,
        modules_to_save=["classifier"],
    ),
}


@pytest.mark.parametrize("case", list(PEFT_CASES))
def test_peft_saved_adapters_load_with_peft_logits(case, tmp_path):
    peft_model = peft_made(PEFT_CASES[case]())
    expected = ours(peft_model)
    assert not torch.allclose(expected, base_logits(), atol=1e-3)
    peft_model.save_pretrained(str(tmp_path))
    adapter = load_adapter(build_model("bert"), tmp_path)
    torch.testing.assert_close(ours(adapter.model), expected, atol=ATOL, rtol=0)
    assert adapter.name == {"rslora": "lora", "vera-seed-only": "vera"}.get(case, case)
    # PEFT's target_modules choose exactly these modules here: kept as the patterns.
    assert adapter.config.target_modules == sorted(peft_model.peft_config["default"].target_modules)
    # And it saves in lorabench's own layout, never PEFT's names.
    adapter.save(tmp_path / "ours")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]


def test_peft_adalora_with_a_pruned_rank_pattern_loads(tmp_path):
    """PEFT's own allocator prunes (update_and_allocate), save_pretrained keeps only the kept
    triplets; load_adapter puts them back into a lorabench AdaLoRA with the same outputs."""
    config = peft.AdaLoraConfig(
        init_r=6, target_r=2, tinit=0, tfinal=0, deltaT=1, total_step=3, lora_alpha=12,
        target_modules=["query", "value"], modules_to_save=["classifier"],
    )  # fmt: skip
    peft_model = peft.get_peft_model(build_model("bert"), config)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    for step in range(1, 4):
        batch = make_batch(batch=4, seed=step)
        peft_model(**batch).loss.backward()
        optimizer.step()
        peft_model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    peft_model.eval()
    pattern = peft_model.peft_config["default"].rank_pattern
    assert pattern and sum(sum(v) for v in pattern.values()) == 2 * 4  # target_r x 4 matrices
    expected = ours(peft_model)
    peft_model.save_pretrained(str(tmp_path))

    adapter = load_adapter(build_model("bert"), tmp_path)
    torch.testing.assert_close(ours(adapter.model), expected, atol=ATOL, rtol=0)
    assert adapter.name == "adalora" and sum(adapter.ranks().values()) == 8
    # And back out to PEFT: the same pattern, the same logits.
    export_peft(adapter, tmp_path / "again")
    torch.testing.assert_close(peft_logits(tmp_path / "again"), expected, atol=ATOL, rtol=0)


def test_unsupported_peft_adapters_are_refused_by_name(tmp_path):
    ia3 = peft.get_peft_model(
        build_model("bert"),
        peft.IA3Config(target_modules=["query", "value"], feedforward_modules=[]),
    )
    ia3.save_pretrained(str(tmp_path / "ia3"))
    with pytest.raises(
        PeftFormatError, match=r"'IA3' adapter.*reads PEFT types ADALORA, LORA, VERA"
    ):
        load_adapter(build_model("bert"), tmp_path / "ia3")

    patterned = peft.get_peft_model(
        build_model("bert"),
        peft.LoraConfig(r=4, target_modules=["query", "value"], rank_pattern={"query": 2}),
    )
    patterned.save_pretrained(str(tmp_path / "patterned"))
    model = build_model("bert")
    with pytest.raises(PeftFormatError, match="rank_pattern"):
        load_adapter(model, tmp_path / "patterned")
    assert not hasattr(model, "lorabench_variant")  # nothing attached


# -- lorabench's own layout ---------------------------------------------------------------------
def legacy_folder(adapter, model, folder: Path) -> Path:
    """A folder as lorabench 0.1 wrote it: PEFT's file names, lorabench's contents."""
    save_with_head(adapter, model, folder)
    (folder / CONFIG_FILE).rename(folder / LEGACY_CONFIG_FILE)
    (folder / WEIGHTS_FILE).rename(folder / LEGACY_WEIGHTS_FILE)
    assert "variant" in json.loads((folder / LEGACY_CONFIG_FILE).read_text())
    return folder


def test_saved_folders_are_never_mistaken_for_peft(tmp_path):
    model, adapter = trained("lora", r=4)
    folder = save_with_head(adapter, model, tmp_path / "a")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [CONFIG_FILE, WEIGHTS_FILE, HEAD_FILE]
    )
    assert not (folder / "adapter_config.json").exists()
    with pytest.raises(ValueError, match=r"Can't find 'adapter_config\.json'"):
        peft.PeftModel.from_pretrained(build_model("bert"), str(folder))


@pytest.mark.parametrize("variant", ["lora", "adalora"])
def test_folders_of_the_previous_layout_still_load_and_export(variant, tmp_path):
    config = {"r": 6, "target_r": 3} if variant == "adalora" else {"r": 4}
    model, adapter = trained(variant, **config)
    expected = ours(model)
    old = legacy_folder(adapter, model, tmp_path / "old")
    loaded = load_adapter(build_model("bert"), old)
    torch.testing.assert_close(ours(loaded.model), expected, atol=0, rtol=0)
    export_peft(old, tmp_path / "peft")
    torch.testing.assert_close(peft_logits(tmp_path / "peft"), expected, atol=ATOL, rtol=0)


# -- the command line ---------------------------------------------------------------------------
def test_cli_exports_a_folder_and_a_run_id(tmp_path, cli_main, capsys):
    model, adapter = trained("dora", r=4)
    expected = ours(model)
    run_id = "0123456789abcdef"
    folder = save_with_head(adapter, model, tmp_path / "runs" / "adapters" / run_id)

    assert cli_main(["export", str(folder), "--format", "peft", "--out", str(tmp_path / "a")]) == 0
    assert "PEFT LORA (use_dora)" in capsys.readouterr().out
    torch.testing.assert_close(peft_logits(tmp_path / "a"), expected, atol=ATOL, rtol=0)

    argv = ["export", run_id[:6], "--results", str(tmp_path / "runs"), "--out", str(tmp_path / "b")]
    assert cli_main(argv) == 0
    torch.testing.assert_close(peft_logits(tmp_path / "b"), expected, atol=ATOL, rtol=0)

    argv = ["export", "feedbeef", "--results", str(tmp_path / "runs"), "--out", str(tmp_path / "c")]
    assert cli_main(argv) == 2
    assert "no run id under" in capsys.readouterr().err
    assert cli_main(["export", str(folder), "--rank", "2", "--out", str(tmp_path / "d")]) == 2
    assert "nested-rank" in capsys.readouterr().err


def test_cli_exports_dylora_at_a_rank_and_refuses_sora(tmp_path, cli_main, capsys):
    model, adapter = trained("dylora", r=6)
    save_with_head(adapter, model, tmp_path / "dy")
    argv = ["export", str(tmp_path / "dy"), "--rank", "2", "--out", str(tmp_path / "o")]
    assert cli_main(argv) == 0
    adapter.set_eval_rank(2)
    torch.testing.assert_close(peft_logits(tmp_path / "o"), ours(model), atol=ATOL, rtol=0)

    model, adapter = trained("sora", r=4)
    save_with_head(adapter, model, tmp_path / "sora")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli_main(["export", str(tmp_path / "sora"), "--out", str(tmp_path / "s")])
    assert code == 2
    err = capsys.readouterr().err
    assert "'sora' has no PEFT counterpart" in err and "Supported: adalora" in err
