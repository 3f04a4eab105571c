"""The study templates for real models (experiments/templates/*.yaml).

Each template is loaded and checked by ``bioviz.run.load_config`` as written, with only its
study folder and the sizes a small machine cannot hold changed. Before that, the test writes
into the study folder what a lab would put there: a model of the template's architecture with
random weights, at a tiny width but with the same classes and config keys, saved in the layout
the real weights come in (the paths the template names), and a few items of data. Then the
first stages run with the loaded config's sections (``bioviz run`` has no way to stop after a
stage): extract, train (a few steps) and encode. The store must hold the rows counted here
from the input (gene tokens per cell, 6-mers and 128-bp bins per sequence, grid cells per
scan), as wide as the model's own config says.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import anndata as ad
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import yaml

import bioviz as bv
from bioviz.cli import import_policy
from bioviz.run import load_config

pytestmark = pytest.mark.usefixtures("one_thread")

TEMPLATES = Path(__file__).parents[1] / "experiments" / "templates"
# a few steps of training on a small batch: the real max_steps / batch_size need real data
TRAIN = {"train": {"max_steps": 3, "batch_size": 8}}


@dataclass
class Expect:
    """What a builder wrote, and what the store made from it must hold."""

    rows: int | None                   # activation rows, counted from the input (None: see check)
    width: int                         # the layer's width, read from the model's own config
    overrides: dict = field(default_factory=dict)  # sizes that must shrink (never paths)
    per_scan: dict | None = None       # rows per subject (one scan each), for scans
    check: object = None               # more checks on (store, adapter), or None


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def named_paths(cfg: dict) -> list[str]:
    """Every relative path the template names under the study folder: models/..., data/..."""
    found = []

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str) and v.startswith(("models/", "data/")):
            found.append(v)

    walk([cfg["adapter"], cfg["data"], cfg["associate"]])
    return found


def clinical(folder: Path, subjects) -> None:
    """``data/clinical.csv``: one row per subject with the labels and covariates the templates name."""
    subjects = sorted(set(subjects))
    alternate = np.arange(len(subjects)) % 2
    pd.DataFrame({"subject_id": subjects, "diagnosis": np.where(alternate, "control", "case"),
                  "age": np.random.default_rng(1).integers(30, 80, len(subjects)),
                  "sex": np.where(alternate, "M", "F")}).to_csv(folder / "clinical.csv", index=False)


# -- single cell: a cohort of counts, a Geneformer-style and an scGPT-style vocabulary -------

N_VOCAB = 60          # genes the tiny models know
ENSEMBL = [f"ENSG{i:011d}" for i in range(N_VOCAB)]
SYMBOLS = [f"GENE{i}" for i in range(N_VOCAB)]
ALIAS = "ENSG99999999999"  # an older ID that Geneformer's ensembl_mapping_dict maps onto ENSEMBL[0]
UNKNOWN = ["ENSG88888888801", "ENSG88888888802"]  # genes no vocabulary knows


@pytest.fixture(scope="module")
def counts():
    """24 cells × (60 vocabulary genes + the alias + 2 unknown genes) of sparse integer counts,
    4 donors, two cell types."""
    rng = np.random.default_rng(0)
    x = rng.poisson(rng.gamma(0.6, 2.0, (24, N_VOCAB + 3))) * (rng.random((24, N_VOCAB + 3)) < 0.5)
    x[:, 0] += 1  # every cell expresses a vocabulary gene
    obs = pd.DataFrame({"donor_id": [f"D{i % 4}" for i in range(24)],
                        "cell_type": ["T cell", "monocyte"] * 12}, index=[f"cell{i}" for i in range(24)])
    return x.astype(np.float32), obs


def write_cells(folder: Path, counts) -> ad.AnnData:
    x, obs = counts
    var = pd.DataFrame({"feature_name": [*SYMBOLS, "OLDNAME", "UNKA", "UNKB"]}, index=[*ENSEMBL, ALIAS, *UNKNOWN])
    adata = ad.AnnData(sp.csr_matrix(x), obs=obs.copy(), var=var)
    folder.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(folder / "cells.h5ad")
    clinical(folder, obs["donor_id"])
    return adata


def gene_tokens_per_cell(x: np.ndarray, cap: int) -> np.ndarray:
    """Tokens a cell gets: its expressed vocabulary genes (the alias' counts added to the gene it
    maps to, unknown genes dropped), at most ``cap``."""
    vocab = x[:, :N_VOCAB].copy()
    vocab[:, 0] += x[:, N_VOCAB]
    return np.minimum((vocab > 0).sum(1), cap)


def save_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def geneformer(study: Path, counts, version: str) -> Expect:
    """Hugging Face `ctheodoris/Geneformer` layout: the model folder and the pickled dictionaries."""
    from transformers import BertConfig, BertForMaskedLM

    special = {"<pad>": 0, "<mask>": 1} if version == "V1" else {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
    tokens = {**special, **{g: i + len(special) for i, g in enumerate(ENSEMBL)}}
    rng = np.random.default_rng(2)
    medians = {g: np.float64(rng.uniform(0.5, 3.0)) for g in ENSEMBL}  # numpy floats, as Geneformer's own files
    mapping = {**{g: g for g in ENSEMBL}, ALIAS: ENSEMBL[0]}
    root = study / "models" / "Geneformer"
    if version == "V1":  # 6 layers, 2048 genes; the Genecorpus-30M dictionaries in their own folder
        model_dir, tag, layers, context = root / "Geneformer-V1-10M", "gc30M", 6, 2048
        dicts = root / "geneformer" / "gene_dictionaries_30m"
    else:  # 12 layers, 4096 tokens; the Genecorpus-104M dictionaries beside the package code
        model_dir, tag, layers, context = root / "Geneformer-V2-104M", "gc104M", 12, 4096
        dicts = root / "geneformer"
    save_pickle(dicts / f"token_dictionary_{tag}.pkl", tokens)
    save_pickle(dicts / f"gene_median_dictionary_{tag}.pkl", medians)
    save_pickle(dicts / f"ensembl_mapping_dict_{tag}.pkl", mapping)
    torch.manual_seed(0)
    # the real config's keys and architecture (BertForMaskedLM, relu), at width 16
    cfg = BertConfig(vocab_size=len(tokens), hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=context, hidden_act="relu", pad_token_id=0,
                     hidden_dropout_prob=0.02, attention_probs_dropout_prob=0.02, layer_norm_eps=1e-12)
    BertForMaskedLM(cfg).save_pretrained(model_dir)
    write_cells(study / "data", counts)
    per_cell = gene_tokens_per_cell(counts[0], context - (2 if version == "V2" else 0))

    def check(store, adapter):
        obs = store.obs
        # rows in cell order, each cell's gene tokens; <cls>/<eos> (V2) never become gene rows
        got = obs.groupby("cell_id", sort=False).size()
        assert got.reindex(counts[1].index).tolist() == per_cell.tolist()
        assert set(obs["gene_id"]) <= set(ENSEMBL) and ALIAS not in set(obs["gene_id"])
        subjects = obs.groupby("cell_id")["subject_id"].first().reindex(counts[1].index)
        assert subjects.tolist() == counts[1]["donor_id"].tolist()
        assert adapter.version == version and adapter.context == context

    width = json.loads((model_dir / "config.json").read_text())["hidden_size"]
    return Expect(int(per_cell.sum()), width, check=check)


def scgpt(study: Path, counts) -> Expect:
    """scGPT model-zoo layout: args.json, vocab.json, best_model.pt (a state dict with the
    flash-attention names its releases carry, and decoder weights embedding does not need)."""
    from bioviz.adapters.singlecell.scgpt import ScGPTModel

    model_dir = study / "models" / "scGPT_human"
    model_dir.mkdir(parents=True)
    vocab = {g: i for i, g in enumerate(SYMBOLS)} | {"<pad>": N_VOCAB, "<cls>": N_VOCAB + 1, "<eoc>": N_VOCAB + 2}
    # the released args.json's keys (whole-human: embsize 512, nheads 8, d_hid 512, nlayers 12)
    args = {"embsize": 16, "nheads": 2, "d_hid": 16, "nlayers": 12, "n_bins": 51, "dropout": 0.2,
            "pad_token": "<pad>", "pad_value": -2, "input_emb_style": "continuous", "max_seq_len": 1200,
            "fast_transformer": True, "pre_norm": False}
    torch.manual_seed(0)
    model = ScGPTModel(len(vocab), args["embsize"], args["nheads"], args["d_hid"], args["nlayers"],
                       padding_idx=vocab["<pad>"])
    state = {k.replace("self_attn.in_proj_", "self_attn.Wqkv."): v for k, v in model.state_dict().items()}
    state["decoder.fc.0.weight"] = torch.randn(16, 16)
    torch.save(state, model_dir / "best_model.pt")
    (model_dir / "vocab.json").write_text(json.dumps(vocab))
    (model_dir / "args.json").write_text(json.dumps(args))
    write_cells(study / "data", counts)
    x = counts[0]
    per_cell = np.minimum((x[:, :N_VOCAB] > 0).sum(1), 1200 - 1)  # symbols: the alias and unknowns map to nothing

    def check(store, adapter):
        got = store.obs.groupby("cell_id", sort=False).size()
        assert got.reindex(counts[1].index).tolist() == per_cell.tolist()
        assert set(store.obs["gene"]) <= set(SYMBOLS)
        ref = model.state_dict()["transformer_encoder.layers.11.self_attn.in_proj_weight"]
        assert torch.equal(adapter.model.state_dict()["transformer_encoder.layers.11.self_attn.in_proj_weight"], ref)

    return Expect(int(per_cell.sum()), args["embsize"], check=check)


# -- DNA: a few sequences of known lengths --------------------------------------------------


def windows_of(length: int, window: int, overlap: int) -> int:
    """Windows a sequence is cut into: one when it fits, else enough steps of (window -
    overlap) to reach its end, the last aligned to the end."""
    return 1 if length <= window else math.ceil((length - window) / (window - overlap)) + 1


def write_sequences(folder: Path, lengths: dict[str, int]) -> None:
    rng = np.random.default_rng(3)
    rows = [{"seq_id": name, "subject_id": f"S{i}", "chrom": "chr1", "start": 1000 * i, "end": 1000 * i + n,
             "strand": "+", "sequence": "".join(rng.choice(list("ACGT"), n))}
            for i, (name, n) in enumerate(lengths.items())]
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "sequences.tsv", sep="\t", index=False)
    clinical(folder, [r["subject_id"] for r in rows])


def nucleotide_transformer(study: Path) -> Expect:
    """`InstaDeepAI/nucleotide-transformer-500m-human-ref` layout: config.json, weights, vocab.txt."""
    from transformers import EsmConfig, EsmForMaskedLM

    model_dir = study / "models" / "nucleotide-transformer-500m-human-ref"
    # NT v1's vocabulary: 4 specials, the 4096 6-mers, the single bases and N (4105 tokens)
    vocab = ["<unk>", "<pad>", "<mask>", "<cls>", *("".join(p) for p in product("ATCG", repeat=6)),
             "A", "T", "C", "G", "N"]
    torch.manual_seed(0)
    cfg = EsmConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=12, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=1002, position_embedding_type="absolute",
                    pad_token_id=1, mask_token_id=2, token_dropout=False, emb_layer_norm_before=False,
                    layer_norm_eps=1e-12)
    EsmForMaskedLM(cfg).save_pretrained(model_dir)
    (model_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    lengths = {"locus_a": 13_000, "locus_b": 5_000, "locus_c": 9_001}
    write_sequences(study / "data", lengths)
    # the template's window (null): the model's 1000 positions less room for special tokens; its overlap
    window, overlap = (1000 - 2) * 6, 1200

    def check(store, adapter):
        assert adapter.window == window
        obs = store.obs
        for name, n in lengths.items():
            o = obs[obs.seq_id == name].sort_values(["start", "end"])
            n_windows = windows_of(n, window, overlap)
            assert o["window"].nunique() == n_windows, name
            # the stitched tokens cover the sequence without a hole: 6-mers, single bases where a
            # window's stretch does not divide by 6; where two windows' 6-mer grids meet, one
            # token of each may overlap the other
            start, end = o["start"].to_numpy() - o["start"].min(), o["end"].to_numpy() - o["start"].min()
            assert start[0] == 0 and end.max() == n and (start[1:] <= np.maximum.accumulate(end)[:-1]).all()
            assert ((end - start) <= 6).all() and (end - start == 6).mean() > 0.99
            assert math.ceil(n / 6) <= len(o) <= math.ceil(n / 6) + 2 * n_windows, name

    width = json.loads((model_dir / "config.json").read_text())["hidden_size"]
    return Expect(None, width, check=check)


def enformer(study: Path) -> Expect:
    """`EleutherAI/enformer-official-rough` layout: config.json + pytorch_model.bin."""
    enformer_pytorch = pytest.importorskip("enformer_pytorch")

    model_dir = study / "models" / "enformer-official-rough"
    model_dir.mkdir(parents=True)
    torch.manual_seed(0)
    # 64 bins of 128 bp (the real model: 1536), the centre 32 cropped for the heads (896)
    model = enformer_pytorch.Enformer.from_hparams(dim=48, depth=1, heads=2, output_heads={"human": 8, "mouse": 4},
                                                   target_length=32, num_downsamples=7, dim_divisible_by=8,
                                                   attn_dim_key=8)
    model.config.to_json_file(model_dir / "config.json")
    torch.save(model.state_dict(), model_dir / "pytorch_model.bin")
    window, overlap = 64 * 128, 2 * 16 * 128  # the template's ratio: overlap = twice the cropped flank
    # multiples of 128 bp, and (length - window) a multiple of it too: every window's bins fall
    # on one grid, so each 128-bp bin of a sequence is one row
    lengths = {"locus_a": 160 * 128, "locus_b": 64 * 128, "locus_c": 50 * 128}
    write_sequences(study / "data", lengths)

    def check(store, adapter):
        obs = store.obs
        for name, n in lengths.items():
            o = obs[obs.seq_id == name]
            assert o["window"].nunique() == windows_of(n, window, overlap), name
            s = np.sort(o["start"].to_numpy() - o["start"].min())
            assert (s == np.arange(n // 128) * 128).all() and ((o["end"] - o["start"]) == 128).all()

    width = json.loads((model_dir / "config.json").read_text())["dim"]
    return Expect(sum(n // 128 for n in lengths.values()), width,
                  {"adapter": {"init_args": {"window": window, "overlap": overlap}}}, check=check)


# -- 3D scans: two NIfTI files already on the template's grid, and a manifest ---------------


def write_scans(folder: Path, shape, spacing, *, ct: bool = False, n: int = 2) -> list[tuple[int, ...]]:
    """``n`` scans of ``shape`` voxels at ``spacing`` mm, RAS (what the templates' preprocessing
    resamples to, so the grid the model sees is ``shape``), an ellipsoid 'body' in a zero (or
    air, for CT) background; and ``manifest.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    ijk = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, np.float32) - 1)[:, None, None, None] / 2
    inside = (((ijk - centre) / (0.4 * np.array(shape, np.float32))[:, None, None, None]) ** 2).sum(0) < 1
    rows = []
    for i in range(n):
        body = rng.normal(40.0 if ct else 500.0, 15.0, shape)
        img = np.where(inside, body, -1000.0 if ct else 0.0).astype(np.float32)
        nib.save(nib.Nifti1Image(img, np.diag([*spacing, 1.0])), str(folder / f"scan{i}.nii.gz"))
        rows.append({"subject_id": f"S{i}", "image": f"scan{i}.nii.gz", "age": 50 + i, "sex": "FM"[i % 2]})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    clinical(folder, [r["subject_id"] for r in rows])
    return [tuple(shape)] * n


def cells_per_scan(shape, cell: int) -> int:
    """Rows a scan gives: the layer's grid cells (``cell`` voxels a side) that touch the scan."""
    return math.prod(math.ceil(s / cell) for s in shape)


def swinunetr(study: Path) -> Expect:
    """A SwinUNETR checkpoint as BrainSegFounder's training writes it: DDP ("module.") keys
    under "model_state_dict", beside the optimizer's state."""
    from monai.networks.nets import SwinUNETR

    tiny = {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}
    torch.manual_seed(0)
    net = SwinUNETR(in_channels=1, out_channels=1, spatial_dims=3, **tiny)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    (study / "models" / "BrainSegFounder").mkdir(parents=True)
    torch.save({"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
                "optimizer_state_dict": opt.state_dict()}, study / "models" / "BrainSegFounder" / "model.pt")
    shapes = write_scans(study / "data", (40, 48, 36), (1.0, 1.0, 1.0))
    # layers4: patch embedding 2 × four patch mergings of 2 = 32 voxels a cell, 16 × feature_size wide
    per_scan = [cells_per_scan(s, 32) for s in shapes]

    def check(store, adapter):
        key = "swinViT.layers4.0.blocks.0.attn.qkv.weight"
        assert torch.equal(adapter.model.state_dict()[key], net.state_dict()[key])

    shrink = {"adapter": {"init_args": {"network": {"init_args": tiny}, "roi_size": 64}}}  # 64³ windows, not 128³
    return Expect(sum(per_scan), 16 * tiny["feature_size"], shrink, dict(zip(["S0", "S1"], per_scan)), check)


class MedicalNetBottleneck(torch.nn.Module):
    """MedicalNet's (Tencent/MedicalNet, models/resnet.py) bottleneck block, written out here as
    the reference the template's MONAI network is compared with: a dilated 3×3×3 middle convolution."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=stride, dilation=dilation, padding=dilation, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (self.downsample(x) if self.downsample is not None else x))


class MedicalNetResNet(torch.nn.Module):
    """MedicalNet's ResNet (shortcut B) with its segmentation head: layer3 and layer4 keep
    stride 1 and dilate by 2 and 4."""

    def __init__(self, layers, planes):
        super().__init__()
        nn = torch.nn
        self.inplanes = planes[0]
        self.conv1 = nn.Conv3d(1, planes[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(planes[0])
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(planes[0], layers[0])
        self.layer2 = self._make_layer(planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(planes[2], layers[2], dilation=2)
        self.layer4 = self._make_layer(planes[3], layers[3], dilation=4)
        self.conv_seg = nn.Sequential(nn.ConvTranspose3d(planes[3] * 4, 8, 2, stride=2), nn.BatchNorm3d(8),
                                      nn.ReLU(), nn.Conv3d(8, 2, 1, bias=False))

    def _make_layer(self, planes, blocks, stride=1, dilation=1):
        nn = torch.nn
        down = None
        if stride != 1 or self.inplanes != planes * 4:
            down = nn.Sequential(nn.Conv3d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                 nn.BatchNorm3d(planes * 4))
        out = [MedicalNetBottleneck(self.inplanes, planes, stride, dilation, down)]
        self.inplanes = planes * 4
        out += [MedicalNetBottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*out)

    def upto(self, x, last: str):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            if name == last:
                return x


def medicalnet(study: Path) -> Expect:
    """MedicalNet's checkpoint layout: {"state_dict": {"module.conv1.weight": ...}} (trained
    under DataParallel), its segmentation head included."""
    from bioviz.hooks import capture

    tiny = {"layers": [1, 1, 1, 1], "block_inplanes": [4, 8, 16, 32]}  # doubling, as 64..512
    torch.manual_seed(0)
    ref = MedicalNetResNet(tiny["layers"], tiny["block_inplanes"]).eval()
    for m in ref.modules():  # BatchNorm statistics that are not the identity
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    (study / "models" / "MedicalNet").mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}},
               study / "models" / "MedicalNet" / "resnet_50_23dataset.pth")
    shapes = write_scans(study / "data", (48, 56, 44), (1.5, 1.5, 1.5))
    # conv1 stride 2, max-pool 2, layer2 stride 2: 8 voxels a cell; patch 2 pools 2³ cells
    per_scan = [cells_per_scan(s, 16) for s in shapes]

    def check(store, adapter):
        # the template's MONAI network loaded from MedicalNet's file computes MedicalNet's layer2
        # exactly, and not its layer4 (strided in MONAI, dilated in MedicalNet): why layer2
        x = torch.randn(1, 1, 32, 32, 32)
        with torch.no_grad(), capture(adapter.model, ["layer2", "layer4"]) as cap:
            adapter.model(x)
            got = cap.pop()
            want2, want4 = ref.upto(x, "layer2"), ref.upto(x, "layer4")
        torch.testing.assert_close(got["layer2"], want2, rtol=1e-4, atol=1e-5)
        assert got["layer4"].shape != want4.shape

    shrink = {"adapter": {"init_args": {"network": {"init_args": tiny}}}}
    return Expect(sum(per_scan), tiny["block_inplanes"][1] * 4, shrink, dict(zip(["S0", "S1"], per_scan)), check)


def spleen_inference_json(channels) -> dict:
    """The model zoo's spleen_ct_segmentation configs/inference.json, as published (its
    $expressions included: only network_def, preprocessing and inferer are read), with the
    UNet's channels shrunk."""
    return {
        "imports": ["$import glob", "$import numpy", "$import os"],
        "bundle_root": ".", "image_key": "image", "output_dir": "$@bundle_root + '/eval'",
        "output_ext": ".nii.gz", "output_dtype": "$numpy.float32", "output_postfix": "trans",
        "separate_folder": True, "load_pretrain": True, "dataset_dir": "/workspace/data/Task09_Spleen",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                        "channels": channels, "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch"},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "@image_key"},
            {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
            {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "@image_key", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "@image_key", "a_min": -57, "a_max": 164, "b_min": 0,
             "b_max": 1, "clip": True},
            {"_target_": "EnsureTyped", "keys": "@image_key"}]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 4, "overlap": 0.5},
        "checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                             "load_dict": {"model": "@network"}},
    }


def monai_bundle(study: Path) -> Expect:
    from monai.networks.nets import UNet

    bundle = study / "models" / "spleen_ct_segmentation"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    cfg = spleen_inference_json([4, 4, 8, 8, 16])
    (bundle / "configs" / "inference.json").write_text(json.dumps(cfg, indent=4))
    net = {k: v for k, v in cfg["network_def"].items() if k != "_target_"}
    torch.manual_seed(0)
    torch.save(UNet(**net).state_dict(), bundle / "models" / "model.pt")
    shapes = write_scans(study / "data", (50, 50, 40), (1.5, 1.5, 2.0), ct=True)
    per_scan = [cells_per_scan(s, 16) for s in shapes]  # four stride-2 levels down
    width = json.loads((bundle / "configs" / "inference.json").read_text())["network_def"]["channels"][3]
    return Expect(sum(per_scan), width, per_scan=dict(zip(["S0", "S1"], per_scan)))


BUILDERS = {
    "geneformer_v1": lambda study, counts: geneformer(study, counts, "V1"),
    "geneformer_v2": lambda study, counts: geneformer(study, counts, "V2"),
    "scgpt": scgpt,
    "nucleotide_transformer_v1": lambda study, counts: nucleotide_transformer(study),
    "enformer": lambda study, counts: enformer(study),
    "swinunetr_brainsegfounder": lambda study, counts: swinunetr(study),
    "medicalnet_resnet50": lambda study, counts: medicalnet(study),
    "monai_bundle_spleen_ct": lambda study, counts: monai_bundle(study),
}


def test_every_template_is_tested():
    assert sorted(p.stem for p in TEMPLATES.glob("*.yaml")) == sorted(BUILDERS)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_template_first_stages_on_a_random_weight_model(name, tmp_path, monkeypatch, counts):
    template = yaml.safe_load((TEMPLATES / f"{name}.yaml").read_text())
    study = tmp_path / "study"
    study.mkdir()
    expect = BUILDERS[name](study, counts)
    # the layout the builder wrote is the one the template documents: every path it names exists
    for path in named_paths(template):
        assert (study / path).exists(), f"{name}: the template names {path}, missing from the real layout"
    cfg = merge(template, {"study": str(study), **merge(TRAIN, expect.overrides)})
    loaded = load_config(cfg)
    assert loaded.config["layer"] == template["layer"]  # the template's layer, valid for the tiny model
    monkeypatch.chdir(study)  # relative paths are relative to the study folder, as in bioviz run
    with import_policy(False):
        adapter = loaded.adapter.build()
    layer = loaded.config["layer"]
    store = bv.extract(adapter, loaded.build_data(), layer, "store", progress=False, **loaded.section("extract"))

    assert store.dim(layer) == expect.width
    if expect.rows is not None:
        assert store.n_rows == expect.rows
    if expect.per_scan is not None:
        assert store.obs.groupby("subject_id").size().to_dict() == expect.per_scan
    if expect.check is not None:
        expect.check(store, adapter)

    # a few steps of training and the encoding, with the template's SAE
    kw = loaded.section("train")
    saes = bv.train("store", layer, sae=loaded.section("sae"), output_dir="sae", seed=loaded.seed,
                    trainer={"enable_progress_bar": False, **(kw.pop("trainer") or {})}, **kw)
    d_sae = int(expect.width * template["sae"]["expansion_factor"])
    assert saes[0].cfg.d_in == expect.width and saes[0].cfg.d_sae == d_sae
    (folder,) = [p.parent for p in Path("sae").glob("*/sae.json")]
    table = bv.encode(str(folder), "store", layer, out="features.h5ad", progress=False, **loaded.section("encode"))
    assert table.shape == (store.n_rows, d_sae)
