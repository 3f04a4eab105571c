"""Subject-level design: the clinical join, label kinds and case levels, missing values,
covariates (one-hot against pandas, collinearity against numpy's rank), strata, and every
refusal of a bad clinical table with the column and the subjects named."""

import warnings

import numpy as np
import pandas as pd
import pytest

from bioviz.analysis.clinical import check_survival, design
from bioviz.errors import InputError

IDS = [f"P{i:02d}" for i in range(24)]


def _obs(n=24, seed=0):
    """Subjects' obs as aggregate() gives it: n_rows and subject-level columns."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"n_rows": rng.integers(20, 200, n),
                         "site": np.tile(["A", "B", "C"], n // 3 + 1)[:n],
                         "sex": np.tile(["F", "M"], n // 2 + 1)[:n]}, index=IDS[:n])


def _clinical(n=24, seed=1):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "subject_id": IDS[:n],
        "response": np.tile(["responder", "non-responder"], n // 2 + 1)[:n],
        "treated": np.tile([True, True, False, False], n // 4 + 1)[:n],
        "relapse": np.tile([0, 1, 1, 0], n // 4 + 1)[:n],
        "age": rng.normal(60, 10, n),
        "grade": np.tile([1, 2, 3, 2], n // 4 + 1)[:n],
        "os_months": rng.exponential(30, n) + 0.5,
        "death": np.tile([1, 0, 1], n // 3 + 1)[:n],
    })


def _quiet(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return design(**kw)


def test_label_kinds_levels_and_case_levels():
    d = design(_obs(), ["response", "treated", "relapse", "age", "grade",
                        {"column": "grade", "kind": "continuous", "name": "grade_num"},
                        {"name": "OS", "time": "os_months", "event": "death"}],
               clinical=_clinical())
    by = {o.name: o for o in d.outcomes}
    clin = _clinical().set_index("subject_id").loc[d.subjects]
    assert [by[k].kind for k in by] == ["binary", "binary", "binary", "continuous",
                                        "categorical", "continuous", "survival"]
    # case levels: the second sorted string, True, 1
    assert by["response"].levels == ["non-responder", "responder"]
    np.testing.assert_array_equal(by["response"].y, clin["response"] == "responder")
    assert by["treated"].levels == ["False", "True"]
    np.testing.assert_array_equal(by["treated"].y, clin["treated"].to_numpy())
    np.testing.assert_array_equal(by["relapse"].y, clin["relapse"] == 1)
    np.testing.assert_array_equal(by["grade"].y, clin["grade"] - 1)
    assert by["grade"].levels == ["1", "2", "3"] and by["grade"].y.dtype == np.int64
    np.testing.assert_array_equal(by["age"].y, clin["age"])
    np.testing.assert_array_equal(by["OS"].y, clin["os_months"])
    np.testing.assert_array_equal(by["OS"].event, clin["death"] == 1)
    notes = d.notes["labels"]
    assert notes["response"]["case_rule"] == "second of the sorted levels"
    assert notes["treated"]["case_rule"] == "True" and notes["relapse"]["case_rule"] == "1"
    assert notes["grade"]["kind_inferred"] and not notes["grade_num"]["kind_inferred"]
    assert notes["response"]["counts"] == {"non-responder": 12, "responder": 12}


def test_case_against_control_whatever_the_sort_order():
    clin = _clinical().assign(dx=np.tile(["Control", "Case"], 12), ok=np.tile(["no", "yes"], 12))
    d = design(_obs(), ["dx", "ok"], clinical=clin)
    assert d.outcomes[0].levels == ["Control", "Case"] and d.outcomes[1].levels == ["no", "yes"]
    np.testing.assert_array_equal(d.outcomes[0].y, clin["dx"] == "Case")
    assert d.notes["labels"]["dx"]["case_rule"] == "named 'case'"


def test_given_case_level_and_two_level_categorical_becomes_binary():
    d = design(_obs(), [{"column": "response", "case": "non-responder"},
                        {"column": "sex", "kind": "categorical"}], clinical=_clinical())
    resp, sex = d.outcomes
    assert resp.levels == ["responder", "non-responder"] and d.notes["labels"]["response"][
        "case_rule"] == "given"
    np.testing.assert_array_equal(resp.y, _clinical()["response"] == "non-responder")
    assert sex.kind == "binary" and sex.levels == ["F", "M"]


def test_clinical_csv_joins_on_text_ids_and_its_columns_win(tmp_path):
    obs = _obs()
    obs.index = [f"00{i}" for i in range(24)]  # ids with leading zeros
    obs["age"] = -1.0  # stale: the clinical table's age replaces it
    clin = _clinical().assign(subject_id=[f"00{i}" for i in range(24)])
    clin = clin.iloc[3:].copy()  # 3 subjects have no clinical row
    clin.loc[len(clin) + 100] = clin.iloc[0].to_dict() | {"subject_id": "0099"}  # nor features
    clin.to_csv(tmp_path / "clinical.csv", index=False)
    with pytest.warns(UserWarning, match=r"21 subjects in common; 3 subjects with features "
                                         r"have no clinical row \(000, 001, 002\).*1 clinical "
                                         r"rows have no features \(0099\)"):
        d = design(obs, ["age"], clinical=tmp_path / "clinical.csv")
    assert list(d.subjects) == [f"00{i}" for i in range(3, 24)]
    np.testing.assert_allclose(d.outcomes[0].y, clin["age"].to_numpy()[:-1])
    np.testing.assert_array_equal(d.rows, np.arange(3, 24))
    assert d.notes["only_in_features"] == {"count": 3, "ids": ["000", "001", "002"]}
    assert d.notes["only_in_clinical"] == {"count": 1, "ids": ["0099"]}
    assert d.notes["clinical_replaces_obs_columns"] == ["age"]
    assert list(d.clinical.index) == list(d.subjects) and (d.clinical["age"] > 0).all()
    assert "n_rows" in d.clinical.columns and "response" in d.clinical.columns


def test_join_refusals_name_the_ids():
    clin = _clinical()
    dup = pd.concat([clin, clin.iloc[[4, 7]]])
    with pytest.raises(InputError, match=r"more than one row for subjects P04, P07"):
        design(_obs(), ["age"], clinical=dup)
    other = clin.assign(subject_id=[f"S-{i}" for i in range(24)])
    with pytest.raises(InputError, match=r"no subject in common: the features' subjects look "
                                         r"like P00, P01, P02, P03, P04 and 19 more.*S-0, S-1"):
        design(_obs(), ["age"], clinical=other)
    with pytest.raises(InputError, match=r"no subject id column 'subject_id'; its columns are "
                                         r"patient, response.*pass subject_key="):
        design(_obs(), ["age"], clinical=clin.rename(columns={"subject_id": "patient"}))
    d = design(_obs(), ["age"], clinical=clin.rename(columns={"subject_id": "patient"}),
               subject_key="patient")
    assert len(d.subjects) == 24
    keyed = clin.set_index("subject_id")  # the ids as the index, named subject_key
    assert len(design(_obs(), ["age"], clinical=keyed).subjects) == 24
    with pytest.raises(InputError, match=r"label 'ages', covariate 'bmi': no such column; the "
                                         r"subjects' obs has n_rows, site, sex; the clinical "
                                         r"table has response, treated"):
        design(_obs(), ["ages"], covariates=["bmi"], clinical=clin)
    with pytest.raises(InputError, match=r"more than one row for subjects P01"):
        design(pd.concat([_obs(), _obs().iloc[[1]]]), ["sex"])


def test_missing_values_drop_subjects_with_a_warning_and_ids_in_notes():
    clin = _clinical()
    clin.loc[[2, 5], "age"] = np.nan
    clin.loc[[5, 9], "grade"] = np.nan
    with pytest.warns(UserWarning, match=r"3 subjects are left out for missing values: 'age': 2 "
                                         r"\(P02, P05\); 'grade': 2 \(P05, P09\)"):
        d = design(_obs(), ["response"], covariates=["age", "grade"], clinical=clin)
    assert d.notes["dropped_missing"] == {"age": ["P02", "P05"], "grade": ["P05", "P09"]}
    assert len(d.subjects) == 21 and "P05" not in d.subjects
    assert d.covariates.shape == (21, 2) and not np.isnan(d.covariates).any()
    clin.loc[range(12, 24), "age"] = np.nan
    with pytest.raises(InputError, match=r"only 10 of 24 subjects have every value needed "
                                         r"\(at least min_subjects=12.*'age': 14 \(P02, P05, "
                                         r"P12, P13, P14 and 9 more\)"):
        design(_obs(), ["response"], covariates=["age"], clinical=clin, min_subjects=12)


def test_label_refusals_give_counts_per_level():
    clin = _clinical()
    with pytest.raises(InputError, match=r"label 'flag' has one value \(yes\)"):
        design(_obs(), ["flag"], clinical=clin.assign(flag="yes"))
    rare = clin.assign(stage=["I"] * 12 + ["II"] * 11 + ["III"])
    with pytest.raises(InputError, match=r"label 'stage': level\(s\) \['III'\] have fewer than 2 "
                                         r"subjects \(counts per level: \{'I': 12, 'II': 11, "
                                         r"'III': 1\}\)"):
        design(_obs(), ["stage"], clinical=rare)
    # one case left once the missing are dropped
    one = clin.assign(resp=["yes"] + ["no"] * 20 + [np.nan] * 3)
    with pytest.raises(InputError, match=r"'yes'\] have fewer than 2.*'no': 20, 'yes': 1"):
        _quiet(subjects_obs=_obs(), labels=["resp"], clinical=one)
    names = clin.assign(doctor=[f"dr{i}" for i in range(24)])
    with pytest.raises(InputError, match=r"label 'doctor' has 24 distinct non-numeric values.*"
                                         r"'kind'"):
        design(_obs(), ["doctor"], clinical=names)
    with pytest.raises(InputError, match=r"label 'grade' is binary but has 3 levels"):
        design(_obs(), [{"column": "grade", "kind": "binary"}], clinical=clin)
    with pytest.raises(InputError, match=r"case='yes' is not one of its levels \['non-responder', "
                                         r"'responder'\]"):
        design(_obs(), [{"column": "response", "case": "yes"}], clinical=clin)
    with pytest.raises(InputError, match=r"label 'age' is not a finite number for 2 subjects: "
                                         r"P01 \('old'\), P03 \('n/a'\)"):
        bad = clin.astype({"age": object})
        bad.loc[[1, 3], "age"] = ["old", "n/a"]
        design(_obs(), [{"column": "age", "kind": "continuous"}], clinical=bad)
    with pytest.raises(InputError, match=r"kind='ordinal'"):
        design(_obs(), [{"column": "grade", "kind": "ordinal"}], clinical=clin)
    with pytest.raises(InputError, match=r"used twice"):
        design(_obs(), ["age", {"column": "grade", "name": "age"}], clinical=clin)


def test_covariates_one_hot_like_pandas_numeric_as_is():
    d = design(_obs(), ["response"], covariates=["site", "age", "treated", "n_rows"],
               clinical=_clinical())
    clin = _clinical().set_index("subject_id").join(_obs())
    want = pd.get_dummies(clin[["site"]], drop_first=True, dtype=float)
    assert d.covariate_names == ["site[B]", "site[C]", "age", "treated[True]", "n_rows"]
    np.testing.assert_array_equal(d.covariates[:, :2], want.to_numpy())
    np.testing.assert_array_equal(d.covariates[:, 2], clin["age"])
    np.testing.assert_array_equal(d.covariates[:, 3], clin["treated"].astype(float))
    np.testing.assert_array_equal(d.covariates[:, 4], clin["n_rows"])
    assert d.covariates.dtype == np.float64
    assert design(_obs(), ["response"], clinical=_clinical()).covariates is None


def test_collinear_covariates_are_refused_naming_them():
    clin = _clinical()
    rng = np.random.default_rng(5)
    cases = {
        # a copy of the label, a one-hot level equal to it, a near-copy of a continuous label
        "resp_copy": (["response"], clin.assign(resp_copy=clin["response"]),
                      r"covariate\(s\) resp_copy\[responder\] and label 'response'"),
        "age2": (["age"], clin.assign(age2=clin["age"] * 2 + rng.normal(0, 0.01, 24)),
                 r"covariate\(s\) age2 and label 'age'"),
        "female": (["response"], clin.assign(female=(_obs()["sex"] == "F").to_numpy().astype(int)),
                   r"covariates sex\[M\], female are collinear"),
    }
    for cov, (labels, table, match) in cases.items():
        covs = ["sex", cov] if cov == "female" else [cov]
        with pytest.raises(InputError, match=match):
            design(_obs(), labels, covariates=covs, clinical=table)
    # correlated but not collinear: kept
    near = clin.assign(age_noisy=clin["age"] + rng.normal(0, 5, 24))
    d = design(_obs(), ["response"], covariates=["age", "age_noisy"], clinical=near)
    assert np.linalg.matrix_rank(np.column_stack([np.ones(24), d.covariates])) == 3
    with pytest.raises(InputError, match=r"covariate 'response' is also a label"):
        design(_obs(), ["response"], covariates=["response"], clinical=clin)
    with pytest.raises(InputError, match=r"covariate 'const' is constant \(3\)"):
        design(_obs(), ["response"], covariates=["const"], clinical=clin.assign(const=3))
    with pytest.raises(InputError, match=r"need at least 5 subjects, there are 4"):
        design(_obs(4), ["age"], covariates=["n_rows", "relapse"], clinical=clin.iloc[:4],
               min_subjects=2)


def test_collinearity_agrees_with_numpy_rank():
    # random designs with and without a planted dependency: refused exactly when the
    # design with intercept (and the label) is rank deficient
    rng = np.random.default_rng(7)
    for trial in range(12):
        X = rng.normal(size=(24, 3))
        if trial % 2:
            X[:, 2] = X[:, 0] - 0.5 * X[:, 1] + 3
        table = pd.DataFrame(X, columns=["a", "b", "c"], index=IDS).assign(
            y=rng.normal(size=24), subject_id=IDS)
        full = np.column_stack([np.ones(24), X, table["y"]])
        deficient = np.linalg.matrix_rank(full) < full.shape[1]
        try:
            design(_obs(), ["y"], covariates=["a", "b", "c"], clinical=table)
            refused = False
        except InputError as e:
            assert "a, b, c are collinear" in str(e)
            refused = True
        assert refused == deficient, trial


def test_strata_codes_and_a_label_that_never_varies_within_one():
    d = design(_obs(), ["age"], strata="site", clinical=_clinical())
    np.testing.assert_array_equal(d.strata, pd.Series(_obs()["site"]).map(
        {"A": 0, "B": 1, "C": 2}).to_numpy())
    assert d.strata_name == "site" and d.notes["strata"]["counts"] == {"A": 8, "B": 8, "C": 8}
    confounded = _clinical().assign(arm=np.where(_obs()["site"] == "A", "drug", "placebo"))
    with pytest.raises(InputError, match=r"label 'arm' does not vary within any stratum of "
                                         r"'site'"):
        design(_obs(), ["arm"], strata="site", clinical=confounded)
    with pytest.raises(InputError, match=r"'site' is both a covariate and the strata"):
        design(_obs(), ["age"], covariates=["site"], strata="site", clinical=_clinical())


def test_check_survival_names_the_subjects_and_values():
    ids = [f"S{i}" for i in range(9)]
    t = [5, "12mo", None, -3, 0, 0, 0, 0, 0]
    with pytest.raises(InputError) as e:
        check_survival(t, [1] * 9, time_name="os", event_name="dead", subjects=ids)
    msg = str(e.value)
    assert "survival time 'os'" in msg
    assert "missing or not a number for 2 subjects: S1 ('12mo'), S2 (None)" in msg
    assert "is negative for 1 subjects: S3 (-3)" in msg
    assert "is zero" in msg and "5 subjects: S4 (0), S5 (0), S6 (0), S7 (0), S8 (0)" in msg
    with pytest.raises(InputError, match=r"survival time 'os' is infinite for 1 subjects: S1"):
        check_survival([1.0, np.inf, 2.0], [1, 0, 1], time_name="os", event_name="dead",
                       subjects=ids[:3])
    with pytest.raises(InputError, match=r"event 'dead' is not 0/1 for 2 subjects: S1 \(2\), "
                                         r"S2 \('yes'\).*1 = event observed"):
        check_survival([1, 2, 3], [1, 2, "yes"], time_name="os", event_name="dead",
                       subjects=ids[:3])
    with pytest.raises(InputError, match=r"event 'dead' has no events among the 3 subjects"):
        check_survival([1, 2, 3], [0, 0, 0], time_name="os", event_name="dead", subjects=ids[:3])
    t, ev = check_survival(pd.Series([1.5, 2, 3]), pd.Series([True, False, True]),
                           time_name="os", event_name="dead", subjects=ids[:3])
    assert t.dtype == np.float64 and ev.dtype == bool and ev.tolist() == [True, False, True]
    _, ev = check_survival([1, 2], [1.0, 0.0], time_name="os", event_name="dead",
                           subjects=ids[:2])
    assert ev.tolist() == [True, False]
    with pytest.raises(InputError, match=r"'os' has 2 values, 'dead' 3"):
        check_survival([1, 2], [1, 0, 1], time_name="os", event_name="dead", subjects=ids[:3])


def test_survival_label_in_design_drops_missing_and_refuses_bad_times():
    clin = _clinical()
    clin.loc[3, "os_months"] = np.nan  # truly missing: dropped
    with pytest.warns(UserWarning, match=r"'os_months': 1 \(P03\)"):
        d = design(_obs(), [{"name": "OS", "time": "os_months", "event": "death"}],
                   clinical=clin)
    assert "P03" not in d.subjects and d.notes["labels"]["OS"]["n_events"] == int(
        clin.drop(index=3)["death"].sum())
    clin.loc[5, "os_months"] = -2
    with pytest.raises(InputError, match=r"'os_months' is negative for 1 subjects: P05 \(-2"):
        _quiet(subjects_obs=_obs(), labels=[{"name": "OS", "time": "os_months",
                                             "event": "death"}], clinical=clin)
    with pytest.raises(InputError, match=r"survival label"):
        design(_obs(), [{"name": "OS", "time": "os_months"}], clinical=clin)


def test_reference_level_follows_the_case_rules():
    from bioviz.analysis.clinical import reference_level

    assert reference_level(["CN", "AD", "CN"], "dx", case="AD")[2] == "CN"
    assert reference_level(["CN", "AD"], "dx")[2] == "AD"  # no rule names a case: second sorted is
    assert reference_level(["control", "case"], "dx")[2] == "control"
    assert reference_level([0, 1, 1], "lesion")[2] == 0 and not reference_level([True, False], "x")[2]
    assert reference_level(["a", "b", "c", "a"], "site") == ("categorical", ["a", "b", "c"], "a")
    assert reference_level(["AD", "CN", "MCI"], "dx", reference="CN")[2] == "CN"
    assert reference_level(np.linspace(0, 1, 30), "age")[::2] == ("continuous", None)
    with pytest.raises(InputError, match="reference='X' is not one of its levels"):
        reference_level(["AD", "CN"], "dx", reference="X")
    with pytest.raises(InputError, match="1 distinct value"):
        reference_level(["AD", "AD"], "dx")
