"""The dashboard's pure parts: spec diff, best/last, columns, the form's spec, the cookie."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.core.errors import InvalidInput
from app.services import runs
from app.settings import Settings
from app.web import forms, session, views


def test_differing_fields_lists_only_what_differs() -> None:
    a = {"name": "a", "training": {"epochs": 5, "optimizer": {"lr": 0.1}},
         "model": {"layers": [{"units": 8}]}}
    b = {"name": "b", "training": {"epochs": 5, "optimizer": {"lr": 0.01}},
         "model": {"layers": [{"units": 8}, {"units": 4}]}}
    diff = dict(runs.differing_fields([a, b]))
    assert diff == {"training.optimizer.lr": [0.1, 0.01], "model.layers[1].units": [None, 4]}
    assert runs.differing_fields([a, a]) == []


def test_summary_minimises_losses_and_maximises_accuracy() -> None:
    rows = [{"epoch": 1, "t": 0.0, "loss": 1.0, "val_accuracy": 0.5, "lr": 0.1},
            {"epoch": 2, "t": 1.0, "loss": 0.4, "val_accuracy": 0.8, "lr": 0.05},
            {"epoch": 3, "t": 2.0, "loss": 0.6, "val_accuracy": 0.7, "lr": 0.01}]
    s = runs.summary(rows)
    assert s["loss"] == {"best": 0.4, "last": 0.6}
    assert s["val_accuracy"] == {"best": 0.8, "last": 0.7}
    assert s["lr"] == {"best": None, "last": 0.01}


def test_columns_and_chart_order() -> None:
    rows = [{"epoch": 1, "t": 0.5, "loss": 0.123456789}, {"epoch": 2, "t": 1.5}]
    assert runs.columns(rows, ["loss"]) == {"epoch": [1, 2], "t": [0.5, 1.5],
                                            "loss": [0.123457, None]}
    assert runs.chart_order(["lr", "epoch_time_s", "val_accuracy", "f1", "loss"]) == \
        ["loss", "val_accuracy", "f1", "lr", "epoch_time_s"]


def test_parse_ids_dedupes_and_caps() -> None:
    assert runs.parse_ids(["a,b", "a", " c "]) == ["a", "b", "c"]
    with pytest.raises(InvalidInput):
        runs.parse_ids([])
    with pytest.raises(InvalidInput) as exc:
        runs.parse_ids([",".join(f"j{i}" for i in range(21))])
    assert exc.value.detail[0]["path"] == "ids"


def test_build_spec_lays_common_fields_over_the_editor() -> None:
    spec = forms.build_spec('{"name": "x", "training": {"epochs": 3}}',
                            {"epochs": "7", "lr": "0.5", "name": ""})
    assert spec == {"name": "x", "training": {"epochs": 7, "optimizer": {"lr": 0.5}}}
    with pytest.raises(InvalidInput) as exc:
        forms.build_spec("a: [", {})
    assert exc.value.detail[0]["path"] == "spec"
    with pytest.raises(InvalidInput) as exc:
        forms.build_spec("{}", {"batch_size": "many"})
    assert exc.value.detail[0]["path"] == "training.batch_size"


def test_split_problems_puts_common_field_errors_beside_their_field() -> None:
    by_field, rest = forms.split_problems([
        {"loc": ["training", "epochs"], "path": "training.epochs", "message": "too small"},
        {"loc": ["model", "layers", 0, "units"], "path": "model.layers[0].units",
         "message": "bad"}])
    assert by_field == {"epochs": ["too small"]}
    assert [p["path"] for p in rest] == ["model.layers[0].units"]


def _request(settings: Settings, cookies: dict[str, str] | None = None) -> Any:
    app = SimpleNamespace(state=SimpleNamespace(settings=settings, web_serializer=None))
    return SimpleNamespace(app=app, cookies=cookies or {})


def test_cookie_round_trip_rejects_forgery(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    secret = session.load_secret(settings)
    assert (tmp_path / "web_secret").stat().st_mode & 0o777 == 0o600
    assert session.load_secret(settings) == secret  # generated once, then kept
    req = _request(settings)
    value = session._serializer(req).dumps({"csrf": "c1", "key": "trn_x"})
    assert session.read(_request(settings, {session.COOKIE: value})) == \
        session.WebSession("c1", "trn_x")
    other = Settings(data_dir=tmp_path, web_secret="another secret")
    assert session.read(_request(other, {session.COOKIE: value})) is None
    assert session.read(_request(settings, {session.COOKIE: value[:-2] + "xx"})) is None
    assert session.csrf_ok(session.WebSession("c1"), "c1")
    assert not session.csrf_ok(session.WebSession("c1"), "c2")
    assert not session.csrf_ok(None, "c1")


def test_formatting() -> None:
    assert views.fmt_seconds(5.3) == "5.3s"
    assert views.fmt_seconds(185) == "3m 05s"
    assert views.fmt_seconds(3720) == "1h 02m"
    assert views.best_text({"monitor": "val_loss", "value": 0.123456, "epoch": 4}) == \
        "val_loss 0.1235 (epoch 4)"
    assert views.fmt_bytes(2048) == "2.0 KiB"
