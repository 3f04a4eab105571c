"""adapters/volume/evidence.py and refine.feature_target: feature maps over the original scans,
checked against planted truth (a feature planted on one cell, an atlas split at x = 0, lesion
masks), numpy means of the written NIfTIs, a hooked forward pass, the completeness of
integrated gradients, and, on the MNI152 phantom cohort with the shipped demo model, the
issue's bar: the lesion feature's refined maps reach Dice >= 0.5 against the planted masks."""

from __future__ import annotations

import types

import anndata as ad
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from test_volume_common import SEGRESNET, mni

import bioviz as bv
from bioviz.adapters.volume import VolumeAdapter, read_atlas, volume_evidence
from bioviz.adapters.volume.refine import attribution_map, feature_target, healthy_baseline
from bioviz.errors import InputError
from bioviz.sae import SAEConfig, build_sae

pytestmark = pytest.mark.usefixtures("one_thread")

LAYER = "down_layers.1"  # SegResNet: stride 2, 16 channels
PRE = {"preset": "mri", "pixdim": [6, 6, 6]}
SITE = np.array([30.0, -18.0, 20.0])  # planted lesion and feature: right hemisphere, MNI mm


def write_scans(folder, labels=("a", "b", "a", "b"), las=(1, 2), masks=True, crop=None):
    """Template scans (6 mm) with a dark ball at SITE in label-'b' scans (mask saved); scans in
    ``las`` stored with the first axis flipped (LAS), scan ``crop`` one slice shorter."""
    folder.mkdir(parents=True, exist_ok=True)
    data, aff = mni(6.0)
    world = np.einsum("ij,j...->i...", aff[:3, :3], np.indices(data.shape)) + aff[:3, 3, None, None, None]
    ball = np.sqrt(((world - SITE[:, None, None, None]) ** 2).sum(0)) <= 18
    rng = np.random.default_rng(0)
    rows = []
    for i, lab in enumerate(labels):
        img = data * (1 + 0.05 * i) + rng.normal(0, 10, data.shape) * (data > 0)
        mask = (ball & (data > 0)).astype(np.uint8)
        if lab == "b":
            img = np.where(mask > 0, 0.4 * img, img)
        a = aff.copy()
        if i in las:
            img, mask = img[::-1], mask[::-1]
            a = aff @ np.array([[-1, 0, 0, data.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
        if i == crop:
            img, mask = img[:, :, :-1], mask[:, :, :-1]
        nib.save(nib.Nifti1Image(np.ascontiguousarray(img, np.float32), a), str(folder / f"s{i}.nii.gz"))
        row = {"subject_id": f"S{i}", "image": f"s{i}.nii.gz", "group": lab}
        if masks:
            nib.save(nib.Nifti1Image(np.ascontiguousarray(mask), a), str(folder / f"s{i}_mask.nii.gz"))
            row["mask"] = f"s{i}_mask.nii.gz" if lab == "b" else ""
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def feature_table(store, layer=LAYER):
    """f0: 2.0 on each scan's cell nearest SITE (0 elsewhere); f1: silent; f2: random."""
    obs = store.obs.reset_index(drop=True)
    obs.index = obs.index.astype(str)
    xyz = obs[["world_x", "world_y", "world_z"]].to_numpy(np.float64)
    codes = np.zeros((len(obs), 3), np.float32)
    for _, idx in obs.groupby("sample_id", observed=True).indices.items():
        codes[idx[np.argmin(((xyz[idx] - SITE) ** 2).sum(1))], 0] = 2.0
    codes[:, 2] = np.random.default_rng(1).random(len(obs)).astype(np.float32)
    return ad.AnnData(sp.csr_matrix(codes), obs=obs, var=pd.DataFrame(index=["f0", "f1", "f2"]),
                      uns={"bioviz": {"layer": layer}})


def subjects_of(manifest):
    return pd.read_csv(manifest, dtype={"subject_id": str}).set_index("subject_id")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("vol_ev")
    manifest = write_scans(root / "cohort")
    torch.manual_seed(0)
    adapter = VolumeAdapter(SEGRESNET, preprocess=PRE)
    store = bv.extract(adapter, manifest, LAYER, root / "store", progress=False)
    sae = build_sae(SAEConfig(architecture="relu", d_in=store.dim(LAYER), d_sae=3, seed=0,
                              provenance={"layer": LAYER}))
    return types.SimpleNamespace(root=root, manifest=manifest, adapter=adapter, store=store,
                                 ft=feature_table(store), subjects=subjects_of(manifest), sae=sae)


def atlas_files(folder):
    """Labels on the scans' MNI grid: 1 where x < 0 (left), 2 where x >= 0 (right)."""
    data, aff = mni(6.0)
    x = aff[0, 0] * np.arange(data.shape[0]) + aff[0, 3]
    labels = np.broadcast_to(np.where(x < 0, 1, 2)[:, None, None], data.shape).astype(np.int16)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(labels), aff), str(folder / "atlas.nii.gz"))
    (folder / "atlas.tsv").write_text("index\tname\n1\tleft hemisphere\n2\tright hemisphere\n")
    return folder / "atlas.nii.gz", folder / "atlas.tsv"


@pytest.fixture(scope="module")
def mapped(small):
    """Raw maps of f0 (planted) and f1 (silent) on every scan, with an atlas, written."""
    out = small.root / "ev"
    out.mkdir()
    atlas = atlas_files(small.root)
    tables, skipped = volume_evidence(small.adapter, small.ft, ["f0", "f1"], data=small.manifest,
                                      subjects=small.subjects, label="group", out=out, atlas=atlas,
                                      n_maps=4, figures=("png",), progress=False)
    return types.SimpleNamespace(out=out, maps=tables["maps"], groups=tables["map_groups"], skipped=skipped)


def test_peak_coordinates_and_atlas_region_are_the_planted_ones(small, mapped):
    maps = mapped.maps
    f0 = maps[(maps["feature"] == "f0") & (maps["kind"] == "raw")]
    assert len(f0) == 4 and set(maps["kind"]) == {"raw"}
    obs = small.ft.obs
    for _, r in f0.iterrows():
        img = nib.load(mapped.out / r["nifti"])
        scan = nib.load(small.manifest.parent / f"s{r['sample_id'][1:]}.nii.gz")
        assert img.shape == scan.shape and np.allclose(img.affine, scan.affine)
        # independent: numpy's argmax inside the head, through the written file's affine
        m, a = img.get_fdata(), scan.get_fdata()
        p = np.unravel_index(np.argmax(np.where(a > a.min(), m, -np.inf)), m.shape)
        xyz = (img.affine @ [*p, 1.0])[:3]
        assert [r["peak_i"], r["peak_j"], r["peak_k"]] == list(p)
        np.testing.assert_allclose([r["peak_x_mm"], r["peak_y_mm"], r["peak_z_mm"]], xyz, atol=1e-4)
        # the planted cell's centre (12 mm cells on 6 mm voxels): the peak is a voxel beside it
        rows = obs[obs["sample_id"] == r["sample_id"]]
        cell = rows.iloc[int(np.argmax(small.ft[rows.index, "f0"].X.toarray().ravel()))]
        assert np.all(np.abs(xyz - cell[["world_x", "world_y", "world_z"]].to_numpy(float)) <= 3 + 1e-3)
        assert r["region"] == "right hemisphere"  # x > 0 also in the LAS-stored scans
        assert r["activation_max"] == pytest.approx(2.0)
        assert r["activation_mean"] == pytest.approx(2.0 / len(rows))
        assert (mapped.out / r["montage"]).is_file() and pd.isna(r["montage_svg"])
    las = {f"S{i}" for i in (1, 2)}
    assert las <= set(f0["sample_id"])
    # the lesion masks: a peak at the planted site is inside them, in both orientations
    b = f0[f0["label_value"] == "b"]
    assert b["pointing_hit"].tolist() == [True, True] and (b["peak_distance_mm"] == 0).all()
    assert f0.loc[f0["label_value"] == "a", "dice"].isna().all()  # no mask, no agreement
    silent = maps[maps["feature"] == "f1"]
    assert len(silent) == 4 and silent["peak_x_mm"].isna().all() and silent["region"].isna().all()
    assert not silent["pointing_hit"].dropna().astype(bool).any()
    assert "map_region" not in mapped.skipped


def test_group_maps_are_the_mean_of_the_written_maps(mapped):
    maps, groups = mapped.maps, mapped.groups
    g = groups[groups["feature"] == "f0"].set_index("label_value")
    assert sorted(g.index) == ["a", "b"] and (g["n_scans"] == 2).all()
    for value in ("a", "b"):
        members = maps[(maps["feature"] == "f0") & (maps["label_value"] == value)]
        imgs = [nib.as_closest_canonical(nib.load(mapped.out / p)) for p in members["nifti"]]
        want = np.mean([i.get_fdata() for i in imgs], axis=0)
        got = nib.load(mapped.out / g.loc[value, "nifti"])
        np.testing.assert_allclose(got.get_fdata(), want, rtol=1e-6, atol=1e-7)
        assert np.allclose(got.affine, imgs[0].affine)
    assert g.loc["b", "dice"] == pytest.approx(maps.loc[(maps["feature"] == "f0") & (maps["label_value"] == "b"),
                                                        "dice"].mean())
    assert g.loc["b", "region"] == "right hemisphere" and g.loc["b", "n_masks"] == 2
    assert np.isnan(g.loc["a", "dice"])


def test_each_label_level_is_mapped_then_the_strongest(small):
    tables, _ = volume_evidence(small.adapter, small.ft, ["f2"], data=small.manifest, subjects=small.subjects,
                                label="group", n_maps=2, progress=False)
    got = tables["maps"]
    obs = small.ft.obs
    peak = pd.Series(small.ft[:, "f2"].X.toarray().ravel()).groupby(obs["sample_id"].to_numpy()).mean()
    lab = small.subjects["group"]
    want = {peak[[s for s in peak.index if lab[s] == v]].idxmax() for v in ("a", "b")}
    assert set(got["sample_id"]) == want and set(got["label_value"]) == {"a", "b"}
    one, _ = volume_evidence(small.adapter, small.ft, ["f2"], data=small.manifest, n_maps=1, progress=False)
    assert one["maps"]["sample_id"].tolist() == [peak.idxmax()]


def test_feature_target_matches_a_hooked_forward_and_ig_is_complete(small):
    adapter, sae = small.adapter, small.sae
    cohort = adapter.read_cohort(small.manifest)
    scan = cohort.find("S1")  # LAS-stored, lesion
    x = adapter.prepare_scan(scan)["image"].as_tensor().float()
    fn = feature_target(adapter, sae, LAYER, 1, scan, data=cohort)
    # independent: a plain forward hook, the cells that touch the scan, rows = cells
    seen = []
    h = adapter.model.get_submodule(LAYER).register_forward_hook(lambda _m, _i, o: seen.append(o))
    try:
        pad = [p for s in reversed(x.shape[1:]) for p in (0, -s % adapter.divisor)]
        with torch.no_grad():
            adapter.model(torch.nn.functional.pad(x[None], pad))
    finally:
        h.remove()
    n = [-(-s // 2) for s in x.shape[1:]]
    rows = seen[0][0, :, :n[0], :n[1], :n[2]].flatten(1).T
    with torch.no_grad():
        want = float(sae.encode(rows)[:, 1].sum())
        got = fn(torch.stack([x, x]))
    assert got.shape == (2,) and float(got[0]) == pytest.approx(want, rel=1e-5) and want > 0
    base = healthy_baseline(adapter, ["S0", "S3"], data=cohort, progress=False)
    att = attribution_map(adapter.model, x, base, target=fn, n_steps=64, sigma_vox=0, signed=True)
    with torch.no_grad():
        change = float(fn(x[None])[0] - fn(base[None])[0])
    # completeness, up to the quadrature error at the network's ReLU kinks (a few %)
    assert abs(float(att.double().sum()) - change) <= 0.05 * abs(change)


def test_refined_maps_land_on_the_original_grid_beside_the_raw_ones(small, tmp_path):
    tables, skipped = volume_evidence(small.adapter, small.ft, ["f2"], data=small.manifest, sae=small.sae,
                                      subjects=small.subjects, label="group", out=tmp_path, n_maps=2,
                                      n_steps=4, figures=(), progress=False)
    maps = tables["maps"]
    assert "refined_maps" not in skipped and sorted(maps["kind"].unique()) == ["raw", "refined"]
    for _, r in maps[maps["kind"] == "refined"].iterrows():
        img = nib.load(tmp_path / r["nifti"])
        scan = nib.load(small.manifest.parent / f"s{r['sample_id'][1:]}.nii.gz")
        assert img.shape == scan.shape and np.allclose(img.affine, scan.affine)
        assert (img.get_fdata() >= 0).all() and r["peak_value"] > 0 and pd.isna(r["montage"])
    assert set(tables["map_groups"]["kind"]) == {"raw", "refined"}


@pytest.mark.parametrize("levels", [("a", "b"), ("control", "case")])
def test_the_baseline_is_the_control_level(small, levels):
    # S0 alone has the control level: integrating from it to itself attributes nothing
    subjects = small.subjects.assign(group=[levels[0]] + [levels[1]] * 3)
    tables, _ = volume_evidence(small.adapter, small.ft, ["f2"], data=small.manifest, sae=small.sae,
                                subjects=subjects, label="group", n_maps=4, n_steps=2, progress=False)
    refined = tables["maps"].query("kind == 'refined'").set_index("sample_id")
    assert np.isnan(refined.loc["S0", "peak_value"])
    assert (refined.drop(index="S0")["peak_value"] > 0).all()


def test_skipped_reasons(small, tmp_path):
    kw = {"data": small.manifest, "n_maps": 2, "progress": False}
    _, why = volume_evidence(small.adapter, small.ft, ["f0"], subjects=small.subjects, label="group", **kw)
    assert "no SAE" in why["refined_maps"] and "no atlas" in why["map_region"]
    assert "map_groups" not in why and "map_agreement" not in why
    _, why = volume_evidence(small.adapter, small.ft, ["f0"], sae=small.sae, **kw)
    assert "no lesion-free reference" in why["refined_maps"] and "no label" in why["map_groups"]
    # scans on different grids: no group means
    other = write_scans(tmp_path / "crop", crop=3)
    st = bv.extract(small.adapter, other, LAYER, tmp_path / "s_crop", progress=False)
    tab, why = volume_evidence(small.adapter, feature_table(st), ["f0"], data=other, subjects=subjects_of(other),
                               label="group", n_maps=4, progress=False)
    assert "register the scans to a template" in why["map_groups"] and len(tab["map_groups"]) == 0
    assert len(tab["maps"]) == 4
    # no masks in the cohort: no agreement
    bare = write_scans(tmp_path / "bare", masks=False)
    st = bv.extract(small.adapter, bare, LAYER, tmp_path / "s_bare", progress=False)
    tab, why = volume_evidence(small.adapter, feature_table(st), ["f0"], data=bare, n_maps=1, progress=False)
    assert "no masks" in why["map_agreement"] and tab["maps"]["dice"].isna().all()
    # rows pooled per scan: no raw map; without an SAE nothing at all
    pooled = VolumeAdapter(SEGRESNET, preprocess=PRE, layout="scan")
    st = bv.extract(pooled, small.manifest, LAYER, tmp_path / "s_pool", progress=False)
    tab, why = volume_evidence(pooled, feature_table(st), ["f0"], data=small.manifest, progress=False)
    assert "layout='scan'" in why["raw_maps"] and "maps" in why and tab == {}
    tab, why = volume_evidence(pooled, feature_table(st), ["f2"], data=small.manifest, sae=small.sae,
                               subjects=small.subjects, label="group", n_maps=1, n_steps=2, progress=False)
    assert set(tab["maps"]["kind"]) == {"refined"} and "maps" not in why


def test_bad_input(small, tmp_path):
    kw = {"data": small.manifest, "progress": False}
    with pytest.raises(InputError, match="'f99' not in the FeatureTable"):
        volume_evidence(small.adapter, small.ft, ["f0", "f99"], **kw)
    bare = small.ft.copy()
    bare.obs = bare.obs.drop(columns=["grid_i", "voxel_k"])
    with pytest.raises(InputError, match=r"lack columns \['grid_i', 'voxel_k'\]"):
        volume_evidence(small.adapter, bare, ["f0"], **kw)
    with pytest.raises(InputError, match="n_maps must be a positive integer"):
        volume_evidence(small.adapter, small.ft, ["f0"], n_maps=0, **kw)
    with pytest.raises(InputError, match="label='stage' is not a column"):
        volume_evidence(small.adapter, small.ft, ["f0"], subjects=small.subjects, label="stage", **kw)
    with pytest.raises(InputError, match="pass data="):
        volume_evidence(VolumeAdapter(SEGRESNET, preprocess=PRE), small.ft, ["f0"], progress=False)
    other = write_scans(tmp_path / "other", labels=("a", "b"), las=())
    with pytest.raises(InputError, match=r"samples \['S2', 'S3'\] of the FeatureTable are not in the cohort"):
        volume_evidence(small.adapter, small.ft, ["f0"], data=other, progress=False)
    names = tmp_path / "names.tsv"
    names.write_text("index\tname\n1\tleft\n")
    missing = tmp_path / "no_atlas.nii.gz"
    with pytest.raises(InputError, match=f"atlas image not found: {missing}"):
        VolumeAdapter(SEGRESNET, preprocess=PRE, atlas=(missing, names))
    img, _ = atlas_files(tmp_path)
    with pytest.raises(InputError, match="atlas names table not found: .*nowhere.tsv"):
        read_atlas((img, tmp_path / "nowhere.tsv"))
    (tmp_path / "bad.tsv").write_text("index\tname\none\tleft\n")
    with pytest.raises(InputError, match="must hold integer labels"):
        read_atlas((img, tmp_path / "bad.tsv"))
    with pytest.raises(InputError, match="atlas: expected"):
        read_atlas("atlas.nii.gz")
    assert "atlas" not in VolumeAdapter(SEGRESNET, preprocess=PRE, atlas=(img, names)).config()


# -- the bar: the MNI152 phantom cohort and the shipped demo model ---------------------


def lesion_feature(ft, subjects):
    """The feature whose per-subject mean (bioviz.aggregate's default) best separates label 1
    from label 0, by Mann-Whitney AUROC: chosen without the masks."""
    from scipy.stats import mannwhitneyu

    codes = pd.DataFrame(ft.X.toarray(), columns=list(ft.var_names))
    per = codes.groupby(ft.obs["subject_id"].astype(str).to_numpy()).mean()
    y = subjects.loc[per.index, "label"].to_numpy() == 1
    auc = {f: mannwhitneyu(per.loc[y, f], per.loc[~y, f]).statistic / (y.sum() * (~y).sum()) for f in per}
    return max(auc, key=auc.get), max(auc.values())


def test_maps_are_shared_out_among_the_label_levels():
    """Hand-worked: the feature is highest in the three controls; four maps go two to each level
    (each level's strongest first), so lesion scans are mapped and scored against their masks."""
    from bioviz.adapters.volume.evidence import _pick

    score = pd.Series({"c1": 9.0, "c2": 8.0, "c3": 7.0, "l1": 1.0, "l2": 3.0, "l3": 2.0})
    labels = {"c1": "control", "c2": "control", "c3": "control", "l1": "lesion", "l2": "lesion", "l3": None}
    assert _pick(score, labels, ["control", "lesion"], 4) == ["c1", "c2", "l2", "l1"]
    assert _pick(score, labels, ["control", "lesion"], 7) == ["c1", "c2", "c3", "l2", "l3", "l1"]
    assert _pick(score, None, None, 2) == ["c1", "c2"]


def test_maps_none_maps_every_scan_and_bad_counts_are_named(small):
    tables, _ = volume_evidence(small.adapter, small.ft, ["f2"], data=small.manifest, n_maps=None, progress=False)
    assert sorted(tables["maps"]["sample_id"]) == sorted(set(small.ft.obs["sample_id"].astype(str)))
    with pytest.raises(InputError, match="maps"):
        VolumeAdapter(network=SEGRESNET, preprocess=PRE, maps=0)
