"""Pruning by stored-logit metrics (confidence, top-2 margin; easy or hard), with no teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lpldstore import ConfigError, PruningPlan, open_store, prune, verify_store
from lpldstore.cli import main
from lpldstore.testing import fill, make_store
from lpldstore.tools.label_metrics import entry_scores, row_scores, select_by_metric

PLAN = PruningPlan(num_images=20, batch_size=4, epochs=6)  # 30 entries


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("metric") / "full.zarr"
    with make_store(path, plan=PLAN) as writer:
        fill(writer)
    return path


def test_row_scores_are_the_top_probability_and_the_top_two_gap() -> None:
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]))
    np.testing.assert_allclose(row_scores(logits, "confidence"), [0.7, 0.4])
    np.testing.assert_allclose(row_scores(logits, "margin"), [0.5, 0.05])
    np.testing.assert_allclose(row_scores(2 * logits, "confidence", temperature=2.0), [0.7, 0.4])


def test_easy_keeps_the_highest_scores_and_hard_the_lowest(parent: Path) -> None:
    with open_store(parent) as store:
        for metric in ("confidence", "margin"):
            scores = entry_scores(store, metric)
            easy = select_by_metric(store, 5, metric, "easy")
            hard = select_by_metric(store, 5, metric, "hard")
            assert easy.strategy == hard.strategy == "selected"
            assert (
                easy.num_kept
                == hard.num_kept
                == PruningPlan.from_dict(PLAN.to_dict() | {"ratio": 5}).num_kept
            )
            picked_easy, picked_hard = scores[easy.kept_ids], scores[hard.kept_ids]
            rest_easy = np.delete(scores, easy.kept_ids)
            rest_hard = np.delete(scores, hard.kept_ids)
            assert picked_easy.min() >= rest_easy.max()
            assert picked_hard.max() <= rest_hard.min()
            assert not set(easy.kept_ids.tolist()) & set(hard.kept_ids.tolist())


def test_prune_by_metric_writes_exactly_the_selected_entries(parent: Path, tmp_path: Path) -> None:
    out = prune(parent, tmp_path / "easy.zarr", ratio=5, metric="margin", keep="easy")
    with open_store(parent) as p, open_store(out) as child:
        expected = select_by_metric(p, 5, "margin", "easy")
        assert child.plan == expected
        assert child.plan.to_dict()["selection"] == list(expected.selection)
        for position, gid in enumerate(expected.kept_ids.tolist()):
            epoch, batch = divmod(gid, PLAN.batches_per_epoch)
            np.testing.assert_array_equal(child.entry_at(position).logits, p.entry(epoch, batch).logits)
    assert verify_store(out).ok
    # The prefix plan at the same ratio keeps other entries: the metric was not ignored.
    prefix = prune(parent, tmp_path / "prefix.zarr", ratio=5)
    with open_store(prefix) as s:
        assert s.plan.kept_ids.tolist() != expected.kept_ids.tolist()


def test_the_cli_prunes_by_metric_and_errors_say_what_was_expected(
    parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hard.zarr"
    assert (
        main(["prune", str(parent), str(out), "--ratio", "6", "--metric", "confidence", "--keep", "hard"])
        == 0
    )
    assert "(selected x6)" in capsys.readouterr().out
    with open_store(out) as s:
        assert s.num_entries == 5
    with pytest.raises(ConfigError, match="takes a ratio and no strategy"):
        prune(parent, tmp_path / "x.zarr", budget="1MB", metric="confidence")
    with pytest.raises(ConfigError, match="holds only 5"):
        prune(out, tmp_path / "y.zarr", ratio=2, metric="margin")
    with open_store(parent) as store, pytest.raises(ConfigError, match="Expected a pruning metric"):
        select_by_metric(store, 5, "entropy", "easy")  # type: ignore[arg-type]


def test_selected_plans_validate_and_round_trip() -> None:
    plan = PruningPlan.from_dict(PLAN.to_dict() | {"strategy": "selected", "selection": [3, 7, 29]})
    assert plan.num_kept == 3
    assert plan.kept_keys.tolist() == [[0, 3], [1, 2], [5, 4]]
    assert PruningPlan.from_dict(plan.to_dict()) == plan
    assert "selection" not in PLAN.to_dict()  # other plans' records are unchanged
    for bad in ([], [3, 3], [7, 3], [30]):
        with pytest.raises(ConfigError, match=r"plan\.selection"):
            PruningPlan.from_dict(PLAN.to_dict() | {"strategy": "selected", "selection": bad})
    with pytest.raises(ConfigError, match=r"plan\.selection"):
        PruningPlan.from_dict(PLAN.to_dict() | {"selection": [1]})
